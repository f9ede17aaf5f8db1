"""MLflow tracking: jobs write JSON files, one serialised step imports them idempotently.

Importing this package imports MLflow (a few seconds); import it only where tracking is used.
"""

from dfbk.tracking.mlflow_import import (
    default_tracking_uri,
    import_run,
    import_runs,
    run_key,
)

__all__ = ["default_tracking_uri", "import_run", "import_runs", "run_key"]
