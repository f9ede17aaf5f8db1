"""MLflow tracking: jobs write JSON files, one serialised step imports them idempotently.

`dfbk.tracking.store` needs only the standard library (Snakemake uses it while building the
DAG); the importer names below load MLflow (a few seconds) on first use.
"""

from __future__ import annotations

from typing import Any

from dfbk.tracking.store import default_tracking_uri, missing_runs

__all__ = ["default_tracking_uri", "import_run", "import_runs", "missing_runs", "run_key"]


def __getattr__(name: str) -> Any:
    """Import MLflow only when an importer function is asked for."""
    if name in ("import_run", "import_runs", "run_key"):
        from dfbk.tracking import mlflow_import

        return getattr(mlflow_import, name)
    raise AttributeError(f"module 'dfbk.tracking' has no attribute {name!r}")
