"""MLflow tracking: jobs write JSON files, one serialised step imports them idempotently.

`dfbk.tracking.store` needs only the standard library (Snakemake uses it while building the
DAG); the importer names below load MLflow (a few seconds) on first use.
"""

from __future__ import annotations

from typing import Any

from dfbk.tracking.store import default_tracking_uri, missing_runs

__all__ = [
    "default_tracking_uri",
    "import_run",
    "import_runs",
    "load_logged_model",
    "missing_runs",
    "run_key",
]
_LAZY = {
    "import_run": "mlflow_import",
    "import_runs": "mlflow_import",
    "run_key": "inputs",
    "load_logged_model": "models",
}


def __getattr__(name: str) -> Any:
    """Import MLflow (and torch) only when a function that needs them is asked for."""
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"dfbk.tracking.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'dfbk.tracking' has no attribute {name!r}")
