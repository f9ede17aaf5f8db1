"""One MLflow run from its :class:`~dfbk.tracking.inputs.RunInputs`, created once and kept.

MLflow offers no way to delete a metric history, logging the same (key, step) again appends a
second point whenever the timestamp differs, and params are immutable. So a run is never
logged into twice: tag ``dfbk.imported_sha`` (the data hash) is set last; a run whose tag
matches is kept, any other run with its key is deleted and the run created afresh. Tags are
mutable, so a kept run's parent link (``mlflow.parentRunId``) is repointed when its parent had
to be recreated, and changed artifacts (figures, tables, checkpoints) are uploaded in place.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException

from dfbk.tracking.inputs import RUN_FIELDS, RunInputs
from dfbk.tracking.store import DATA_SHA_TAG
from dfbk.training.records import finite, window_means

RUN_KEY_TAG = "dfbk.run_key"
RUN_KIND_TAG = "dfbk.run_kind"
ARTIFACTS_SHA_TAG = "dfbk.artifacts_sha"
LOG_RESTARTS_TAG = "dfbk.log_restarts"
PARENT_TAG = "mlflow.parentRunId"  # what the UI nests runs by
# run.json["environment"] (written where training ran) -> tags; mlflow.* ones the UI shows
# in its own columns (User, Source commit).
ENVIRONMENT_TAGS = {
    "git_commit": "mlflow.source.git.commit",
    "git_dirty": "dfbk.git_dirty",
    "user": "mlflow.user",
    "host": "dfbk.host",
    "gpu_model": "dfbk.gpu_model",
    "gpu_count": "dfbk.gpu_count",
    "torch_version": "dfbk.torch_version",
    "cuda_version": "dfbk.cuda_version",
    "cudnn_version": "dfbk.cudnn_version",
    "python_version": "dfbk.python_version",
}
# Loss curves are imported as at most this many points per loss (means over equal windows of
# steps): a paper-scale run logs 300k steps, and the whole grid would otherwise put ~10^8
# points into the database. The full per-step log stays in train_log.jsonl beside the run.
MAX_CURVE_POINTS = 1000
# MLflow limits (mlflow.utils.validation): param value length, entities per log_batch call.
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 5000
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100


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


def _params(inputs: RunInputs) -> list[Param]:
    """Run identity, recipe (hparams, describe), environment and evaluation protocol."""
    run = inputs.run
    if inputs.kind in ("group", "summary"):
        return [Param(key, _param_value(value)) for key, value in run.items()]
    flat: dict[str, str] = {}
    for name in ("dataset", "direction", "method", "seed", "preset", "n_parameters", "steps"):
        flat[name] = _param_value(run.get(name))
    for name in ("device", "dfbk_version", "torch_version", "knowledge_encoder"):
        flat[name] = _param_value(run.get(name))
    for name in (  # the budget and the rule the table's numbers come from (trainer run.json)
        "batch_size", "patch_size", "augment", "processes", "train_flops_per_step",
        "evaluated_checkpoint", "evaluated_step", "best_step", "stage", "init_from",
    ):  # fmt: skip
        if name in run:
            flat[name] = _param_value(run.get(name))
    for section in ("hparams", "describe", "speed"):
        flat.update(_flatten(section, run.get(section) or {}))
    if inputs.kind == "seed":
        flat.update(_flatten("protocol", inputs.metrics.get("protocol") or {}))
    return [Param(key, value) for key, value in flat.items()]


def _tags(inputs: RunInputs, parent_id: str | None) -> dict[str, str]:
    """Key, kind, identity, parent link and (seed/stage runs) where training ran."""
    run = inputs.run
    tags = {RUN_KEY_TAG: inputs.key, RUN_KIND_TAG: inputs.kind}
    tags |= {name: str(run[name]) for name in RUN_FIELDS if name in run and name != "seed"}
    if inputs.kind in ("seed", "stage"):
        tags["seed"] = str(run["seed"])
        environment = {"torch_version": run.get("torch_version")}
        environment |= run.get("environment") or {}
        for name, tag in ENVIRONMENT_TAGS.items():
            value = environment.get(name)
            if value is not None:
                text = str(value).lower() if isinstance(value, bool) else str(value)
                tags[tag] = text[:MAX_TAG_CHARS]
    if inputs.log_restarts:
        tags[LOG_RESTARTS_TAG] = json.dumps(inputs.log_restarts[:100])  # tags are short
    if parent_id is not None:
        tags[PARENT_TAG] = parent_id
    return tags


def _curve_metrics(inputs: RunInputs) -> list[Metric]:
    """One point per loss per logged step; ``time`` (seconds) places the point in wall time.

    ``time`` is read as seconds since training start, or as a Unix time when it is that large;
    the start is the end of training (run.json's mtime) minus ``wall_seconds``.
    """
    metrics = []
    for row in window_means(inputs.train_log, MAX_CURVE_POINTS):
        elapsed = row.get("time")
        if not finite(elapsed):
            timestamp = inputs.start_ms
        elif elapsed > 1e9:
            timestamp = int(elapsed * 1000)
        else:
            timestamp = inputs.start_ms + int(elapsed * 1000)
        for name, value in row.items():
            if name not in ("step", "time") and finite(value):
                metrics.append(Metric(name, float(value), timestamp, row["step"]))
    return metrics


def _final_metrics(inputs: RunInputs) -> list[Metric]:
    """Summary metrics: a seed's ``{name}_mean``/``_std``, a group's mean and seed std."""
    values: dict[str, Any] = {}
    if inputs.kind in ("seed", "stage"):
        values["wall_seconds"] = inputs.run.get("wall_seconds")
    for name, stats in (inputs.metrics.get("summary") or {}).items():
        if isinstance(stats, Mapping):
            values[f"{name}_mean"] = stats.get("mean")
            values[f"{name}_std"] = stats.get("std")
    for name, stats in (inputs.metrics.get("seed_summary") or {}).items():
        values[f"{name}_mean"] = stats["mean"]
        values[f"{name}_seed_std"] = stats["seed_std"]
    if inputs.kind == "group":
        values["n_seeds"] = len(inputs.run["seeds"])
    step = int(inputs.run.get("steps") or 0)
    return [
        Metric(name, float(value), inputs.end_ms, step)
        for name, value in values.items()
        if finite(value)
    ]


def _system_metrics(inputs: RunInputs) -> list[Metric]:
    """Snakemake benchmark rows as ``system/{rule}/{name}`` (MLflow's System metrics tab).

    Step = repeat number (``benchmark: repeat(…)``); time = end of the run's job.
    """
    return [
        Metric(f"system/{rule}/{name}", value, inputs.end_ms, repeat)
        for rule, rows in inputs.benchmarks.items()
        for repeat, row in enumerate(rows)
        for name, value in row.items()
    ]


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items (MLflow caps entities per batch)."""
    for begin in range(0, len(items), size):
        yield items[begin : begin + size]


def find_runs(
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


def _create_run(
    client: MlflowClient, experiment_id: str, inputs: RunInputs, parent_id: str | None
) -> str:
    """Create a fresh run and log params and metrics (the data hash tag comes last)."""
    run_id = client.create_run(
        experiment_id,
        start_time=inputs.start_ms,
        tags=_tags(inputs, parent_id),
        run_name=inputs.key,
    ).info.run_id
    for params in _chunks(_params(inputs), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=list(params), synchronous=True)
    metrics = _curve_metrics(inputs) + _final_metrics(inputs) + _system_metrics(inputs)
    for batch in _chunks(metrics, MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=list(batch), synchronous=True)
    return run_id


def _upload_artifacts(client: MlflowClient, run_id: str, inputs: RunInputs) -> None:
    """Upload the raw inputs (uncut params), figures, tables, checkpoint; overwrite in place."""
    for path, artifact_dir in inputs.artifacts:
        client.log_artifact(run_id, str(path), artifact_dir)
    client.log_batch(
        run_id, tags=[RunTag(ARTIFACTS_SHA_TAG, inputs.artifacts_sha)], synchronous=True
    )


def ensure_run(
    client: MlflowClient, experiment_id: str, inputs: RunInputs, parent_id: str | None = None
) -> Run:
    """The run for ``inputs``: kept if its data hash matches, else created afresh.

    ``parent_id`` (None: leave the parent link as it is) nests the run in the UI. A kept run
    is returned as found (one request fewer per run on re-import); its params, metrics and
    key tags are what the store holds, its artifact tags may be older.
    """
    existing = find_runs(client, experiment_id, inputs.key)
    keep = next((r for r in existing if r.data.tags.get(DATA_SHA_TAG) == inputs.data_sha), None)
    for stale in existing:
        if stale is not keep:
            client.delete_run(stale.info.run_id)
    if keep is None:
        deleted = find_runs(client, experiment_id, inputs.key, ViewType.DELETED_ONLY)
        keep = next(
            (r for r in reversed(deleted) if r.data.tags.get(DATA_SHA_TAG) == inputs.data_sha),
            None,
        )
        if keep is not None:  # deleted in MLflow by hand, inputs unchanged: bring it back
            client.restore_run(keep.info.run_id)
    if keep is not None:
        run_id = keep.info.run_id
        if parent_id is not None and keep.data.tags.get(PARENT_TAG) != parent_id:
            client.set_tag(run_id, PARENT_TAG, parent_id, synchronous=True)
        if keep.data.tags.get(ARTIFACTS_SHA_TAG, "") != inputs.artifacts_sha:
            _upload_artifacts(client, run_id, inputs)
        return keep
    run_id = _create_run(client, experiment_id, inputs, parent_id)
    _upload_artifacts(client, run_id, inputs)
    client.log_batch(run_id, tags=[RunTag(DATA_SHA_TAG, inputs.data_sha)], synchronous=True)
    client.set_terminated(run_id, status="FINISHED", end_time=inputs.end_ms)
    return client.get_run(run_id)


def registered_name(inputs: RunInputs) -> str:
    """Registry name of a seed run's model: ``dfbk.{dataset}.{direction}.{method}``."""
    return "dfbk." + ".".join(str(inputs.run[name]) for name in RUN_FIELDS[:3])


def register_model(client: MlflowClient, inputs: RunInputs, run: Run) -> str:
    """One model version per seed, pointing at the run's ``model/`` artifact; its version.

    A version whose run was replaced (the seed retrained) is deleted, so each seed has exactly
    one version and re-import adds none.
    """
    name = registered_name(inputs)
    try:
        client.create_registered_model(
            name, description="dfbk checkpoints, one version per seed (docs/tracking.md)"
        )
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    versions = client.search_model_versions(f"name = '{name}'")
    mine = [v for v in versions if v.tags.get(RUN_KEY_TAG) == inputs.key]
    run_id = run.info.run_id
    keep = next((v for v in mine if v.run_id == run_id), None)
    for stale in mine:
        if stale is not keep:
            client.delete_model_version(name, stale.version)
    if keep is not None:
        return str(keep.version)
    source = f"{run.info.artifact_uri}/model"
    tags = {RUN_KEY_TAG: inputs.key, "seed": str(inputs.run["seed"])}
    version = client.create_model_version(name, source, run_id=run_id, tags=tags)
    return str(version.version)
