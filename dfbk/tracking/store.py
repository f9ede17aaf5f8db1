"""The tracking store seen without MLflow: its URI, bounded retries, and a cheap health check.

This module imports only the standard library, so Snakemake can call :func:`missing_runs` while
it builds the DAG (importing MLflow costs seconds on every dry run).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import MutableMapping
from pathlib import Path

DATA_SHA_TAG = "dfbk.imported_sha"

# MLflow's own defaults retry an unreachable server 7 times with backoff factor 2 and wait up to
# 120 s per request: about 4 minutes before the traceback. An import is cheap to redo (it is
# idempotent), so a short budget and a clear error serve better: 2 retries, 1-2-s backoff,
# 20 s per request. Values the user exported win.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def bound_http_retries(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`HTTP_RETRY_DEFAULTS` where unset (before MLflow reads them); return the values.

    MLflow reads these variables on every request, so setting them in this process is enough.
    """
    environ = os.environ if environ is None else environ
    for name, value in HTTP_RETRY_DEFAULTS.items():
        if not environ.get(name, "").strip():
            environ[name] = value
    return {name: environ[name] for name in HTTP_RETRY_DEFAULTS}


def default_tracking_uri(results_dir: Path) -> str:
    """MLflow URI: ``MLFLOW_TRACKING_URI`` if set, else SQLite at ``<results_dir>/mlflow.db``.

    SQLite is the default because MLflow >= 3.13 refuses file stores; four slashes (absolute
    path) so the database does not move with the working directory.
    """
    from_env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if from_env:
        return from_env
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """Database file of a ``sqlite:///`` URI (absolute with four slashes), else None."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    path = tracking_uri[len(prefix) :].split("?", 1)[0]
    return Path(path).resolve() if path and path != ":memory:" else None


def missing_runs(imported_json: Path, tracking_uri: str) -> list[str] | None:
    """Run keys ``imported_json`` lists that the store no longer holds as imported; None if unknown.

    A run counts as held when it is active and carries the data hash recorded at import. Only
    SQLite stores are checked (read-only, 2-s busy timeout); for a server, or a store that is
    busy or unreadable, the answer is None: nothing can be said without MLflow or the network.
    A missing or unreadable ``imported_json`` gives [] (the import runs anyway).
    """
    try:
        records = json.loads(Path(imported_json).read_text())
        wanted = {r["run_id"]: (r["run_key"], r.get("data_sha")) for r in records}
    except (OSError, ValueError, TypeError, KeyError):
        return []
    db_path = sqlite_path(tracking_uri)
    if db_path is None:
        return None
    if not wanted:
        return []
    if not db_path.is_file():
        return sorted(key for key, _ in wanted.values())
    try:
        connection = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True, timeout=2.0)
        try:
            marks = ",".join("?" * len(wanted))
            rows = connection.execute(
                "SELECT runs.run_uuid, tags.value FROM runs LEFT JOIN tags"
                " ON tags.run_uuid = runs.run_uuid AND tags.key = ?"
                f" WHERE runs.lifecycle_stage = 'active' AND runs.run_uuid IN ({marks})",
                [DATA_SHA_TAG, *wanted],
            ).fetchall()
        finally:
            connection.close()
    except sqlite3.Error:
        return None
    held: dict[str, str | None] = dict(rows)
    return sorted(
        key
        for run_id, (key, sha) in wanted.items()
        if run_id not in held or held[run_id] is None or (sha and held[run_id] != sha)
    )
