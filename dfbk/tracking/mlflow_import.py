"""Import finished runs (JSON/JSONL files written by jobs) into MLflow, idempotently.

Jobs never talk to MLflow: a training job writes ``run.json`` and ``train_log.jsonl``, an
evaluation job writes ``metrics.json`` (and ``subjects.csv``). One serialised workflow rule then
calls :func:`import_runs`, so a cluster of jobs never contends for the tracking store.

Idempotency. Each run has a stable key ``{dataset}/{direction}/{method}/seed-{seed}`` stored as
tag ``dfbk.run_key``; re-import finds the run by that tag. MLflow offers no way to delete a metric
history, and logging the same (key, step) again appends a second point whenever the timestamp
differs (checked on the SQLAlchemy store of MLflow 3.17; REST and other stores give no promise at
all). Params are immutable: a different value raises. So we never log into an existing run twice:

* tag ``dfbk.imported_sha`` is a hash of the run's data files (``run.json``, ``train_log.jsonl``,
  ``metrics.json``) and of :data:`IMPORT_FORMAT`; it is set last, after every param and metric.
  A run whose tag matches is left alone. A run whose tag differs or is missing (inputs changed, or
  an earlier import died half-way) is deleted and recreated from scratch, under the same key.
  Deleting is a soft delete; ``mlflow gc`` purges deleted runs and their artifacts.
* tag ``dfbk.artifacts_sha`` hashes the artifacts (figures, ``subjects.csv``). Figures are
  redrawn whenever any method of their (dataset, direction) finishes, so a changed figure is
  re-uploaded into the existing run (same artifact path, overwritten) instead of recreating it;
  the run id then stays stable.
* A run deleted in MLflow (UI, ``mlflow runs delete``) whose data hash still matches is restored
  (same run id); a purged one is created afresh. The workflow notices such runs without MLflow
  (:func:`dfbk.tracking.store.missing_runs`) and reruns the import.

Training logs. A trainer killed after its last checkpoint and resumed writes the steps since that
checkpoint again, and two trainers on one checkpoint folder interleave their lines. Steps must
rise, so a step that is not above the previous one starts a new pass: the rows of the old pass
from that step on are dropped and the later pass is kept (the last complete pass). Each run's
record in the output JSON and its tag ``dfbk.log_restarts`` name the steps where this happened,
and a warning says so.

Outages. HTTP retries are bounded (:data:`dfbk.tracking.store.HTTP_RETRY_DEFAULTS`); a SQLite
store that another process holds locked is retried for :data:`LOCKED_RETRY_SECONDS` (the import is
idempotent, so redoing it is safe). Either way the failure is one :class:`DataError` line naming
the store, not a traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from dfbk.errors import DataError
from dfbk.tracking.files import (
    finite,
    last_pass,
    read_json,
    read_jsonl,
    window_means,
    write_json_atomic,
)
from dfbk.tracking.store import (
    DATA_SHA_TAG,
    bound_http_retries,
    default_tracking_uri,
    sqlite_path,
)

__all__ = ["default_tracking_uri", "import_run", "import_runs", "run_key"]
_logger = logging.getLogger(__name__)

RUN_KEY_TAG = "dfbk.run_key"
ARTIFACTS_SHA_TAG = "dfbk.artifacts_sha"
LOG_RESTARTS_TAG = "dfbk.log_restarts"
# Bump when the mapping from files to params/metrics changes: every run is then re-imported.
IMPORT_FORMAT = "2"
# Loss curves are imported as at most this many points per loss (means over equal windows of
# steps): a paper-scale run logs 300k steps, and the whole grid would otherwise put ~10^8
# points into the database. The full per-step log stays in train_log.jsonl beside the run.
MAX_CURVE_POINTS = 1000
# MLflow limits (mlflow.utils.validation): param value length, entities per log_batch call.
MAX_PARAM_CHARS = 6000
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
LOCK_TIMEOUT_SECONDS = 3600.0
# How long a SQLite store locked by another process (an `mlflow ui` writing, a stuck import of
# another checkout) is retried before the import gives up with one line; MLflow itself waits up
# to 20 s (busy_timeout) per attempt. DFBK_TRACKING_LOCKED_SECONDS overrides it.
LOCKED_RETRY_SECONDS = 60.0
_KEY_PART = re.compile(r"^[A-Za-z0-9_.-]+$")
_RUN_FIELDS = ("dataset", "direction", "method", "seed")


def run_key(dataset: str, direction: str, method: str, seed: int) -> str:
    """Stable key of a run, ``{dataset}/{direction}/{method}/seed-{seed}``; the path is the key.

    Parts are restricted to ``[A-Za-z0-9_.-]`` so the key is safe inside an MLflow filter string.
    """
    for name, part in (("dataset", dataset), ("direction", direction), ("method", method)):
        if not isinstance(part, str) or not _KEY_PART.match(part):
            raise DataError(f"run key: {name} {part!r} must match [A-Za-z0-9_.-]+")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"run key: seed {seed!r} must be an integer")
    return f"{dataset}/{direction}/{method}/seed-{seed}"


@dataclass(frozen=True)
class _RunInputs:
    """Everything one run contributes, read and checked before MLflow is touched."""

    key: str
    run: dict[str, Any]
    train_log: list[dict[str, Any]]
    metrics: dict[str, Any]
    data_sha: str
    artifacts: list[tuple[Path, str]] = field(default_factory=list)  # (file, artifact dir)
    artifacts_sha: str = ""
    train_end_ms: int = 0
    eval_end_ms: int = 0
    log_restarts: list[int] = field(default_factory=list)  # steps where a new pass began


def _sha256(named_files: Iterable[tuple[str, Path]]) -> str:
    """Hash of file names and contents (plus the import format), order-sensitive."""
    digest = hashlib.sha256(f"dfbk-import-{IMPORT_FORMAT}\n".encode())
    for name, path in named_files:
        digest.update(f"{name}\n{path.stat().st_size}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _load_inputs(train_dir: Path, eval_dir: Path, figures: Sequence[Path]) -> _RunInputs:
    """Read a run's files, check run.json and metrics.json describe the same run, hash them."""
    run_path, log_path = train_dir / "run.json", train_dir / "train_log.jsonl"
    metrics_path = eval_dir / "metrics.json"
    run, metrics = read_json(run_path), read_json(metrics_path)
    for name in _RUN_FIELDS:
        if name not in run:
            raise DataError(f"{run_path}: missing key {name!r}")
        if name in metrics and metrics[name] != run[name]:
            raise DataError(
                f"{metrics_path}: {name}={metrics[name]!r} but {run_path} says {run[name]!r}"
            )
    data_files = [("run.json", run_path), ("train_log.jsonl", log_path)]
    data_files.append(("metrics.json", metrics_path))
    artifacts = [(Path(figure), "figures") for figure in figures]
    if (eval_dir / "subjects.csv").is_file():
        artifacts.append((eval_dir / "subjects.csv", "evaluation"))
    for path, _ in artifacts:
        if not path.is_file():
            raise DataError(f"{path}: figure or artifact missing")
    train_log, restarts = last_pass(read_jsonl(log_path))
    if restarts:
        _logger.warning(
            "%s: steps go back %d time(s) (at steps %s): a resumed or second trainer wrote it; "
            "importing the last pass (%d rows)",
            log_path,
            len(restarts),
            ", ".join(map(str, restarts[:10])) + (", ..." if len(restarts) > 10 else ""),
            len(train_log),
        )
    return _RunInputs(
        key=run_key(*(run[name] for name in _RUN_FIELDS)),
        run=run,
        train_log=train_log,
        log_restarts=restarts,
        metrics=metrics,
        data_sha=_sha256(data_files),
        artifacts=artifacts,
        artifacts_sha=_sha256((f"{d}/{p.name}", p) for p, d in artifacts),
        train_end_ms=int(run_path.stat().st_mtime * 1000),
        eval_end_ms=int(metrics_path.stat().st_mtime * 1000),
    )


def _param_value(value: Any) -> str:
    """Strings as they are, everything else as JSON; cut to MLflow's 6000-char limit.

    The full, uncut values stay in the run.json artifact logged beside the params.
    """
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if len(text) > MAX_PARAM_CHARS:
        marker = "...[truncated]"
        text = text[: MAX_PARAM_CHARS - len(marker)] + marker
    return text


def _flatten(prefix: str, value: Any) -> dict[str, str]:
    """Nested dicts become dotted keys (``hparams.optim.lr``); leaves become param strings."""
    if not isinstance(value, Mapping) or not value:
        return {prefix: _param_value(value)}
    flat: dict[str, str] = {}
    for key, item in value.items():
        flat.update(_flatten(f"{prefix}.{key}", item))
    return flat


def _params(inputs: _RunInputs) -> list[Param]:
    """Run identity, recipe (hparams, describe), environment and evaluation protocol."""
    run = inputs.run
    flat: dict[str, str] = {}
    for name in ("dataset", "direction", "method", "seed", "preset", "n_parameters", "steps"):
        flat[name] = _param_value(run.get(name))
    for name in ("device", "dfbk_version", "torch_version", "knowledge_encoder"):
        flat[name] = _param_value(run.get(name))
    for name in (  # the budget and the rule the table's numbers come from (trainer run.json)
        "batch_size", "patch_size", "augment", "processes", "train_flops_per_step",
        "evaluated_checkpoint", "evaluated_step", "best_step",
    ):  # fmt: skip
        if name in run:
            flat[name] = _param_value(run.get(name))
    for section in ("hparams", "describe", "speed"):
        flat.update(_flatten(section, run.get(section) or {}))
    flat.update(_flatten("protocol", inputs.metrics.get("protocol") or {}))
    return [Param(key, value) for key, value in flat.items()]


def _curve_metrics(inputs: _RunInputs) -> list[Metric]:
    """One point per loss per logged step; ``time`` (seconds) places the point in wall time.

    ``time`` is read as seconds since training start, or as a Unix time when it is that large;
    the start is estimated as the end of training (run.json's mtime) minus ``wall_seconds``.
    """
    wall = inputs.run.get("wall_seconds")
    start_ms = inputs.train_end_ms - int(1000 * wall if finite(wall) else 0)
    metrics = []
    for row in window_means(inputs.train_log, MAX_CURVE_POINTS):
        elapsed = row.get("time")
        if not finite(elapsed):
            timestamp = start_ms
        elif elapsed > 1e9:
            timestamp = int(elapsed * 1000)
        else:
            timestamp = start_ms + int(elapsed * 1000)
        for name, value in row.items():
            if name not in ("step", "time") and finite(value):
                metrics.append(Metric(name, float(value), timestamp, row["step"]))
    return metrics


def _final_metrics(inputs: _RunInputs) -> list[Metric]:
    """Summary ``{name}_mean`` / ``{name}_std`` and ``wall_seconds``; NaN values are skipped."""
    values: dict[str, Any] = {"wall_seconds": inputs.run.get("wall_seconds")}
    for name, stats in (inputs.metrics.get("summary") or {}).items():
        if isinstance(stats, Mapping):
            values[f"{name}_mean"] = stats.get("mean")
            values[f"{name}_std"] = stats.get("std")
    step = int(inputs.run.get("steps") or 0)
    return [
        Metric(name, float(value), inputs.eval_end_ms, step)
        for name, value in values.items()
        if finite(value)
    ]


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items (MLflow caps entities per batch)."""
    for begin in range(0, len(items), size):
        yield items[begin : begin + size]


def _find_runs(
    client: MlflowClient, experiment_id: str, key: str, view: int = ViewType.ACTIVE_ONLY
) -> list[Run]:
    """Runs carrying this run key (active: normally zero or one), oldest first."""
    runs: list[Run] = []
    page_token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
            run_view_type=view,
            order_by=["attributes.start_time ASC"],
            page_token=page_token,
        )
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def _create_run(client: MlflowClient, experiment_id: str, inputs: _RunInputs) -> str:
    """Create a fresh run and log params and metrics; the data hash tag is set last."""
    run = inputs.run
    tags = {RUN_KEY_TAG: inputs.key, **{name: str(run[name]) for name in _RUN_FIELDS}}
    if inputs.log_restarts:
        tags[LOG_RESTARTS_TAG] = json.dumps(inputs.log_restarts[:100])  # tags are short
    wall = run.get("wall_seconds")
    start_ms = inputs.train_end_ms - int(1000 * wall if finite(wall) else 0)
    run_id = client.create_run(
        experiment_id, start_time=start_ms, tags=tags, run_name=inputs.key
    ).info.run_id
    for params in _chunks(_params(inputs), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=list(params), synchronous=True)
    metrics = _curve_metrics(inputs) + _final_metrics(inputs)
    for batch in _chunks(metrics, MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=list(batch), synchronous=True)
    return run_id


def _upload_artifacts(
    client: MlflowClient, run_id: str, inputs: _RunInputs, train_dir: Path, eval_dir: Path
) -> None:
    """Upload figures, subjects.csv and the raw inputs (uncut params); overwrite in place."""
    client.log_artifact(run_id, str(train_dir / "run.json"), "inputs")
    client.log_artifact(run_id, str(eval_dir / "metrics.json"), "inputs")
    for path, artifact_dir in inputs.artifacts:
        client.log_artifact(run_id, str(path), artifact_dir)
    client.log_batch(
        run_id, tags=[RunTag(ARTIFACTS_SHA_TAG, inputs.artifacts_sha)], synchronous=True
    )


def import_run(
    client: MlflowClient,
    experiment_id: str,
    train_dir: Path,
    eval_dir: Path,
    figures: Sequence[Path] = (),
) -> str:
    """Import one run (train_dir + eval_dir + figures) and return its MLflow run id.

    An existing run with the same key and the same data hash is kept (its artifacts refreshed
    if they changed); otherwise old runs with the key are deleted and one is created afresh,
    because MLflow can neither change a param nor remove logged metric points.
    """
    train_dir, eval_dir = Path(train_dir), Path(eval_dir)
    inputs = _load_inputs(train_dir, eval_dir, figures)
    existing = _find_runs(client, experiment_id, inputs.key)
    keep = next((r for r in existing if r.data.tags.get(DATA_SHA_TAG) == inputs.data_sha), None)
    for stale in existing:
        if stale is not keep:
            client.delete_run(stale.info.run_id)
    if keep is None:
        deleted = _find_runs(client, experiment_id, inputs.key, ViewType.DELETED_ONLY)
        keep = next(
            (r for r in reversed(deleted) if r.data.tags.get(DATA_SHA_TAG) == inputs.data_sha),
            None,
        )
        if keep is not None:  # deleted in MLflow by hand, inputs unchanged: bring it back
            client.restore_run(keep.info.run_id)
    if keep is not None:
        if keep.data.tags.get(ARTIFACTS_SHA_TAG) != inputs.artifacts_sha:
            _upload_artifacts(client, keep.info.run_id, inputs, train_dir, eval_dir)
        return keep.info.run_id
    run_id = _create_run(client, experiment_id, inputs)
    _upload_artifacts(client, run_id, inputs, train_dir, eval_dir)
    client.log_batch(run_id, tags=[RunTag(DATA_SHA_TAG, inputs.data_sha)], synchronous=True)
    client.set_terminated(run_id, status="FINISHED", end_time=inputs.eval_end_ms)
    return run_id


def _ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """Experiment id by name; created (artifacts beside a SQLite db) or restored if deleted."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    db_path = sqlite_path(tracking_uri)
    # Without this, runs of a SQLite store would put artifacts in ./mlruns of whatever the cwd is.
    location = (db_path.parent / "mlartifacts").as_uri() if db_path else None
    return client.create_experiment(name, artifact_location=location)


def _lock_path(tracking_uri: str, out_json: Path) -> Path:
    """Lock beside the SQLite database (shared by every importer of it), else beside out_json."""
    db_path = sqlite_path(tracking_uri)
    if db_path is not None:
        return db_path.with_name(db_path.name + ".lock")
    return Path(out_json).resolve().parent / ".mlflow-import.lock"


def _check_unique_keys(runs: Sequence[tuple[Path, Path]]) -> None:
    """Two inputs with one key would replace each other on every import; refuse up front."""
    seen: dict[str, Path] = {}
    for train_dir, _ in runs:
        run = read_json(Path(train_dir) / "run.json")
        key = run_key(*(run.get(name) for name in _RUN_FIELDS))
        if key in seen:
            raise DataError(f"{train_dir} and {seen[key]} both describe run {key}")
        seen[key] = Path(train_dir)


def import_runs(
    runs: list[tuple[Path, Path]],
    figures: dict[tuple[str, str], list[Path]],
    tracking_uri: str,
    experiment: str,
    out_json: Path,
) -> list[dict]:
    """Import (train_dir, eval_dir) pairs into one experiment; write and return the run list.

    ``figures`` maps (dataset, direction) to the PNGs logged with every run of that pair.
    A file lock serialises importers of one store, so concurrent calls neither corrupt SQLite
    nor create the same run twice. ``n_metrics`` counts the run's distinct metric keys,
    ``data_sha`` is the run's data hash (the workflow checks the store against it) and
    ``log_restarts`` the steps where its training log began a new pass.
    A store that cannot be reached, or stays locked, ends in one :class:`DataError` line.
    """
    _check_unique_keys(runs)
    out_json = Path(out_json)
    db_path = sqlite_path(tracking_uri)
    if db_path is not None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    bound_http_retries()
    lock = FileLock(str(_lock_path(tracking_uri, out_json)), timeout=LOCK_TIMEOUT_SECONDS)
    budget = float(os.environ.get("DFBK_TRACKING_LOCKED_SECONDS") or LOCKED_RETRY_SECONDS)
    start = time.monotonic()
    deadline = start + budget
    while True:
        try:
            with lock:
                records = _import_all(runs, figures, tracking_uri, experiment)
                write_json_atomic(out_json, records)
            return records
        except Timeout:
            raise DataError(f"{lock.lock_file}: another import held the lock too long") from None
        except (MlflowException, SQLAlchemyError) as error:  # SQLite errors at store start-up
            message = " ".join(str(error).split())
            if "database is locked" in message and time.monotonic() < deadline:
                _logger.warning("%s: database is locked; retrying the import", db_path)
                time.sleep(2.0)
                continue
            elapsed = time.monotonic() - start
            raise DataError(_outage_message(tracking_uri, message, elapsed)) from None


def _outage_message(tracking_uri: str, message: str, elapsed: float) -> str:
    """One line naming the store and what went wrong (MLflow's text cut to 300 characters)."""
    db_path = sqlite_path(tracking_uri)
    if db_path is not None and "database is locked" in message:
        return (
            f"{db_path}: database is locked by another process (waited {elapsed:.0f} s; "
            "a busy `mlflow ui` or import?); rerun when it is free"
        )
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    if len(message) > 300:
        message = message[:297] + "..."
    hint = f" (after {retries} retries)" if tracking_uri.startswith(("http:", "https:")) else ""
    return f"tracking store {tracking_uri} failed{hint}: {message}"


def _import_all(
    runs: list[tuple[Path, Path]],
    figures: dict[tuple[str, str], list[Path]],
    tracking_uri: str,
    experiment: str,
) -> list[dict]:
    """Import every run with one client (the caller holds the lock); return the records."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _ensure_experiment(client, experiment, tracking_uri)
    records = []
    for train_dir, eval_dir in runs:
        run_info = read_json(Path(train_dir) / "run.json")
        pair = (run_info["dataset"], run_info["direction"])
        run_id = import_run(client, experiment_id, train_dir, eval_dir, figures.get(pair, []))
        run = client.get_run(run_id)
        restarts = run.data.tags.get(LOG_RESTARTS_TAG)
        records.append(
            {
                "run_key": run.data.tags[RUN_KEY_TAG],
                "run_id": run_id,
                "n_metrics": len(run.data.metrics),
                "data_sha": run.data.tags[DATA_SHA_TAG],
                "log_restarts": json.loads(restarts) if restarts else [],
            }
        )
    return records
