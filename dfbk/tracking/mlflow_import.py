"""Import finished runs (JSON/JSONL files written by jobs) into MLflow, idempotently.

Jobs never talk to MLflow: a training job writes ``run.json`` and ``train_log.jsonl``, an
evaluation job writes ``metrics.json`` (and ``subjects.csv``), Snakemake writes each job's
benchmark TSV. One serialised workflow rule then calls :func:`import_runs`, so a cluster of jobs
never contends for the tracking store. What the experiment holds (docs/tracking.md):

* a **group** run per (dataset, direction, method), key ``{dataset}/{direction}/{method}``:
  every summary metric's mean and standard deviation over the seeds;
* nested in it, a **seed** run per training job, key ``…/seed-{n}``: params, environment tags
  (commit, dirty flag, user, host, GPU, torch/CUDA, from ``run.json["environment"]``), loss
  curves, test-set metrics, benchmark TSVs as ``system/…`` metrics, figures, ``subjects.csv``
  and the checkpoint as artifact ``model/model.pt`` (optionally registered);
* nested in a seed run, a **stage** run per earlier training stage (ResViT's pretraining),
  key ``…/seed-{n}/stage-{name}``;
* one **summary** run, key ``summary``: the comparison and ablation tables (md/csv/tex) and
  every figure.

Idempotency. Each run's key is tag ``dfbk.run_key``; re-import finds the run by it and keeps it
when its data hash matches (:mod:`dfbk.tracking.mlflow_runs`), else replaces it. A run deleted
in MLflow whose data still matches is restored (same id); the workflow notices such runs
without MLflow (:func:`dfbk.tracking.store.missing_runs`) and reruns the import.

Training logs. A trainer killed after its last checkpoint and resumed writes the steps since that
checkpoint again; the last pass is kept (:func:`dfbk.training.records.last_pass`), and the run's
record and its tag ``dfbk.log_restarts`` name the steps where a new pass began.

Outages. HTTP retries are bounded (:data:`dfbk.tracking.store.HTTP_RETRY_DEFAULTS`); a SQLite
store that another process holds locked is retried for :data:`LOCKED_RETRY_SECONDS` (the import is
idempotent, so redoing it is safe). Either way the failure is one :class:`DataError` line naming
the store, not a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from filelock import FileLock, Timeout
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from dfbk.errors import DataError
from dfbk.tracking.inputs import (
    IMPORT_FORMAT,
    RUN_FIELDS,
    RunInputs,
    group_inputs,
    load_seed,
    run_key,
    summary_inputs,
)
from dfbk.tracking.mlflow_runs import (
    ARTIFACTS_SHA_TAG,
    LOG_RESTARTS_TAG,
    RUN_KEY_TAG,
    RUN_KIND_TAG,
    ensure_run,
    register_model,
)
from dfbk.tracking.store import (
    DATA_SHA_TAG,
    bound_http_retries,
    default_tracking_uri,
    sqlite_path,
)
from dfbk.training.records import read_json, write_json_atomic

__all__ = ["default_tracking_uri", "import_run", "import_runs", "run_key"]
__all__ += ["ARTIFACTS_SHA_TAG", "DATA_SHA_TAG", "IMPORT_FORMAT", "RUN_KEY_TAG", "RUN_KIND_TAG"]
_logger = logging.getLogger(__name__)

LOCK_TIMEOUT_SECONDS = 3600.0
# How long a SQLite store locked by another process (an `mlflow ui` writing, a stuck import of
# another checkout) is retried before the import gives up with one line; MLflow itself waits up
# to 20 s (busy_timeout) per attempt. DFBK_TRACKING_LOCKED_SECONDS overrides it.
LOCKED_RETRY_SECONDS = 60.0


def import_run(
    client: MlflowClient,
    experiment_id: str,
    train_dir: Path,
    eval_dir: Path,
    figures: Sequence[Path] = (),
    log_model: bool = False,
) -> str:
    """Import one seed run (and its stages) without its group; return its MLflow run id.

    An existing run with the same key and the same data hash is kept (its artifacts refreshed
    if they changed); otherwise old runs with the key are deleted and one is created afresh,
    because MLflow can neither change a param nor remove logged metric points.
    """
    inputs = load_seed(Path(train_dir), Path(eval_dir), figures, log_model)
    run_id = ensure_run(client, experiment_id, inputs).info.run_id
    for stage in inputs.stages:
        ensure_run(client, experiment_id, stage, run_id)
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
        key = run_key(*(run.get(name) for name in RUN_FIELDS))
        if key in seen:
            raise DataError(f"{train_dir} and {seen[key]} both describe run {key}")
        seen[key] = Path(train_dir)


def import_runs(
    runs: list[tuple[Path, Path]],
    figures: dict[tuple[str, str], list[Path]],
    tracking_uri: str,
    experiment: str,
    out_json: Path,
    log_models: bool = True,
    register_models: bool = False,
) -> list[dict]:
    """Import (train_dir, eval_dir) pairs into one experiment; write and return the run list.

    ``figures`` maps (dataset, direction) to the PNGs logged with every run of that pair (and
    all of them with the summary run). ``log_models`` logs each seed's ``model.pt`` as artifact
    ``model/``; ``register_models`` also registers it (one model version per seed).
    A file lock serialises importers of one store, so concurrent calls neither corrupt SQLite
    nor create the same run twice.

    The list holds one record per MLflow run: the seed runs in the order given, then stage,
    group and summary runs. ``kind`` says which, ``n_metrics`` counts the run's distinct metric
    keys, ``data_sha`` is its data hash (the workflow checks the store against it) and
    ``log_restarts`` the steps where its training log began a new pass.
    A store that cannot be reached, or stays locked, ends in one :class:`DataError` line.
    """
    if register_models and not log_models:
        raise DataError("tracking: register_models needs log_models (a version points at model/)")
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
                records = _import_all(
                    runs, figures, tracking_uri, experiment, log_models, register_models
                )
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


def _record(inputs: RunInputs, run: Run) -> dict:
    """What out_json says about one run, as the store holds it."""
    restarts = run.data.tags.get(LOG_RESTARTS_TAG)
    return {
        "run_key": run.data.tags[RUN_KEY_TAG],
        "run_id": run.info.run_id,
        "kind": inputs.kind,
        "n_metrics": len(run.data.metrics),
        "data_sha": run.data.tags[DATA_SHA_TAG],
        "log_restarts": json.loads(restarts) if restarts else [],
    }


def _import_all(
    runs: list[tuple[Path, Path]],
    figures: dict[tuple[str, str], list[Path]],
    tracking_uri: str,
    experiment: str,
    log_models: bool,
    register_models: bool,
) -> list[dict]:
    """Import every run with one client (the caller holds the lock); return the records.

    Everything is read and checked before the store is touched; parents are ensured before
    their children so a child is created with its parent link.
    """
    seeds = []
    for train_dir, eval_dir in runs:
        run = read_json(Path(train_dir) / "run.json")
        pair_figures = figures.get((run.get("dataset"), run.get("direction")), [])
        seeds.append(load_seed(Path(train_dir), Path(eval_dir), pair_figures, log_models))
    groups: dict[str, list[RunInputs]] = {}
    for seed in seeds:
        groups.setdefault(str(seed.parent_key), []).append(seed)
    all_figures = [path for paths in figures.values() for path in paths]
    summary = summary_inputs(seeds, all_figures)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _ensure_experiment(client, experiment, tracking_uri)
    by_key: dict[str, dict] = {}
    later: list[dict] = []
    for members in groups.values():
        group = group_inputs(members)
        group_run = ensure_run(client, experiment_id, group)
        for seed in members:
            seed_run = ensure_run(client, experiment_id, seed, group_run.info.run_id)
            by_key[seed.key] = _record(seed, seed_run)
            for stage in seed.stages:
                stage_run = ensure_run(client, experiment_id, stage, seed_run.info.run_id)
                later.append(_record(stage, stage_run))
            if register_models and not seed.run.get("external"):  # no dfbk checkpoint
                register_model(client, seed, seed_run)
        later.append(_record(group, group_run))
    if summary is not None:
        later.append(_record(summary, ensure_run(client, experiment_id, summary)))
    order = {"stage": 0, "group": 1, "summary": 2}
    later.sort(key=lambda record: order[record["kind"]])  # stable: input order within a kind
    return [by_key[seed.key] for seed in seeds] + later
