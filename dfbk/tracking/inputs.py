"""What each MLflow run will hold, read from the results tree without MLflow.

The results tree is the experiment's key (``results/{stage}/{dataset}/{direction}/{method}/
seed-{n}``), so one run's files are found from its training folder alone:

* the seed run: ``train/…/run.json``, ``train_log.jsonl``, ``model.pt``; ``evaluate/…/
  metrics.json`` and ``subjects.csv``; the benchmark TSVs of its train, translate and evaluate
  jobs (``benchmarks/{rule}/{run}.tsv``);
* its training stages (ResViT's pretraining): found by following ``run.json["init_from"]``
  back, stage by stage (``train/…/stage-{name}/``), never by listing folders;
* the (dataset, direction, method) group and the per-config summary are computed from these.

Every file that shapes a run's params or metrics goes into its data hash; figures, tables and
checkpoints (uploaded files that may be replaced in place) into its artifacts hash.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfbk.errors import DataError
from dfbk.training.records import finite, last_pass, read_json, read_jsonl

_logger = logging.getLogger(__name__)

# Bump when the mapping from files to params/metrics changes: every run is then re-imported.
IMPORT_FORMAT = "3"
_KEY_PART = re.compile(r"^[A-Za-z0-9_.-]+$")
RUN_FIELDS = ("dataset", "direction", "method", "seed")
# Jobs of one seed whose Snakemake benchmark TSVs become that run's system metrics; a rule
# without a `benchmark:` (or a run made outside the workflow) simply has no file.
SEED_BENCHMARK_RULES = ("train_method", "translate_test_set", "evaluate_predictions")
STAGE_BENCHMARK_RULE = "train_method_stage"
# Snakemake benchmark columns (all MB or seconds, snakemake/benchmark.py) -> metric names.
BENCHMARK_COLUMNS = {
    "s": "wall_s",
    "max_rss": "max_rss_mb",
    "max_vms": "max_vms_mb",
    "max_uss": "max_uss_mb",
    "max_pss": "max_pss_mb",
    "io_in": "io_in_mb",
    "io_out": "io_out_mb",
    "mean_load": "mean_load",
    "cpu_time": "cpu_time_s",
}
TABLE_NAMES = ("comparison", "ablation")
TABLE_FORMATS = ("md", "csv", "tex")
SUMMARY_KEY = "summary"
CHUNK_BYTES = 1 << 20


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
class RunInputs:
    """Everything one MLflow run will hold, read and checked before MLflow is touched.

    ``kind`` is ``seed`` (one training job and its evaluation), ``stage`` (an earlier training
    stage of a seed, nested under it), ``group`` (the seeds of one method, their parent) or
    ``summary`` (tables and figures of the whole config).
    """

    key: str
    kind: str
    run: dict[str, Any]
    data_sha: str
    train_log: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: list[tuple[Path, str]] = field(default_factory=list)  # (file, artifact dir)
    artifacts_sha: str = ""
    start_ms: int = 0
    end_ms: int = 0
    log_restarts: list[int] = field(default_factory=list)  # steps where a new pass began
    benchmarks: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # rule -> rows
    parent_key: str | None = None
    model: Path | None = None  # the checkpoint logged as artifact model/ (None: external)
    train_dir: Path | None = None
    stages: list[RunInputs] = field(default_factory=list)


def file_sha(named_files: Iterable[tuple[str, Path]], *extra: str) -> str:
    """Hash of file names and contents (plus the import format and `extra`), order-sensitive.

    Files are read in 1-MiB chunks (an external baseline's checkpoint folder may be large).
    """
    digest = hashlib.sha256(f"dfbk-import-{IMPORT_FORMAT}\n".encode())
    for text in extra:
        digest.update(f"{text}\n".encode())
    for name, path in named_files:
        digest.update(f"{name}\n{path.stat().st_size}\n".encode())
        with path.open("rb") as stream:
            while chunk := stream.read(CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


def results_root(train_dir: Path) -> Path | None:
    """``results`` of ``results/train/{dataset}/{direction}/{method}/seed-{n}``, else None."""
    train_dir = Path(train_dir)
    parents = train_dir.parents
    if len(parents) > 4 and parents[3].name == "train" and train_dir.name.startswith("seed-"):
        return parents[4]
    return None


def read_benchmark(path: Path) -> list[dict[str, float]]:
    """Rows of a Snakemake benchmark TSV as metric name -> value ("NA"/"-" cells skipped).

    One row per repeat (``benchmark: repeat(…, n)``); values are MB and seconds as Snakemake
    writes them. A file without the ``s`` column is refused, naming it.
    """
    with path.open(newline="") as stream:
        reader = csv.DictReader(stream, delimiter="\t")
        if reader.fieldnames is None or "s" not in reader.fieldnames:
            raise DataError(f"{path}: not a Snakemake benchmark TSV (no 's' column)")
        rows = []
        for number, row in enumerate(reader, start=2):
            values = {}
            for column, name in BENCHMARK_COLUMNS.items():
                text = (row.get(column) or "").strip()
                if text in ("", "NA", "-"):
                    continue
                try:
                    values[name] = float(text)
                except ValueError:
                    raise DataError(f"{path}:{number}: {column}={text!r} is not a number") from None
            rows.append(values)
    return rows


def _benchmarks(files: Mapping[str, Path]) -> dict[str, list[dict[str, float]]]:
    return {rule: read_benchmark(path) for rule, path in files.items()}


def _check_identity(run: Mapping[str, Any], run_path: Path) -> str:
    for name in RUN_FIELDS:
        if name not in run:
            raise DataError(f"{run_path}: missing key {name!r}")
    return run_key(*(run[name] for name in RUN_FIELDS))


def _read_log(log_path: Path) -> tuple[list[dict[str, Any]], list[int]]:
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
    return train_log, restarts


def _window(run: Mapping[str, Any], end_ms: int) -> int:
    """Start time: the end of training minus its wall time."""
    wall = run.get("wall_seconds")
    return end_ms - int(1000 * wall if finite(wall) else 0)


def _stage_chain(train_dir: Path, run: Mapping[str, Any]) -> list[Path]:
    """Stage folders this run was initialised from, earliest first (``init_from`` links)."""
    chain: list[Path] = []
    init_from = run.get("init_from")
    while isinstance(init_from, str) and init_from:
        name = Path(init_from).parent.name
        if not name.startswith("stage-"):
            break  # initialised from something else (not a stage of this run)
        stage_dir = train_dir / name
        if stage_dir in chain:
            raise DataError(f"{stage_dir / 'run.json'}: init_from forms a loop")
        chain.insert(0, stage_dir)
        init_from = read_json(stage_dir / "run.json").get("init_from")
    return chain


def load_stage(stage_dir: Path, seed_key: str, root: Path | None) -> RunInputs:
    """A training stage of a seed run (no evaluation of its own), nested under that run."""
    run_path, log_path = stage_dir / "run.json", stage_dir / "train_log.jsonl"
    run = read_json(run_path)
    if _check_identity(run, run_path) != seed_key:
        raise DataError(f"{run_path}: describes {_check_identity(run, run_path)}, not {seed_key}")
    stage = str(run.get("stage") or stage_dir.name.removeprefix("stage-"))
    bench = {}
    if root is not None:
        path = root / "benchmarks" / STAGE_BENCHMARK_RULE / seed_key / f"{stage}.tsv"
        if path.is_file():
            bench[STAGE_BENCHMARK_RULE] = path
    train_log, restarts = _read_log(log_path)
    files = [("run.json", run_path), ("train_log.jsonl", log_path)]
    files += [(f"benchmark:{rule}", path) for rule, path in bench.items()]
    end_ms = int(run_path.stat().st_mtime * 1000)
    return RunInputs(
        key=f"{seed_key}/stage-{stage}",
        kind="stage",
        run=run,
        data_sha=file_sha(files),
        artifacts=[(run_path, "inputs")],
        artifacts_sha=file_sha([("inputs/run.json", run_path)]),
        train_log=train_log,
        log_restarts=restarts,
        benchmarks=_benchmarks(bench),
        start_ms=_window(run, end_ms),
        end_ms=end_ms,
        parent_key=seed_key,
    )


def _stat_print(path: Path, artifact_dir: str) -> str:
    """Name, size and mtime of a checkpoint, in place of its bytes in the artifacts hash.

    Checkpoints are written only by the job that writes run.json (a new checkpoint means a new
    data hash and a new run anyway), and reading every paper-preset checkpoint (hundreds of MB,
    ~180 runs) on each import would cost minutes.
    """
    info = path.stat()
    return f"{artifact_dir}/{path.name} {info.st_size} {info.st_mtime_ns}"


def _model_artifacts(train_dir: Path, run: Mapping[str, Any]) -> list[tuple[Path, str]]:
    """The checkpoint as artifacts under ``model/``: dfbk's ``model.pt``, or the whole
    checkpoint folder of an external baseline (its own format; dfbk.inference.external)."""
    if run.get("external"):
        folder = train_dir / "checkpoint"
        if not folder.is_dir():
            raise DataError(f"{folder}: missing (or import without models: --no-models)")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        return [(p, str(Path("model") / p.parent.relative_to(folder))) for p in files]
    model = train_dir / "model.pt"
    if not model.is_file():
        raise DataError(f"{model}: missing (or import without models: --no-models)")
    return [(model, "model")]


def load_seed(
    train_dir: Path, eval_dir: Path, figures: Sequence[Path] = (), log_model: bool = False
) -> RunInputs:
    """Read a seed run's files, check run.json and metrics.json agree, hash them.

    With ``log_model`` the folder's ``model.pt`` (the evaluated checkpoint; an external
    baseline's ``checkpoint/`` folder) must exist.
    """
    train_dir, eval_dir = Path(train_dir), Path(eval_dir)
    run_path, log_path = train_dir / "run.json", train_dir / "train_log.jsonl"
    metrics_path = eval_dir / "metrics.json"
    run, metrics = read_json(run_path), read_json(metrics_path)
    key = _check_identity(run, run_path)
    for name in RUN_FIELDS:
        if name in metrics and metrics[name] != run[name]:
            raise DataError(
                f"{metrics_path}: {name}={metrics[name]!r} but {run_path} says {run[name]!r}"
            )
    root = results_root(train_dir)
    bench = {}
    for rule in SEED_BENCHMARK_RULES if root is not None else ():
        path = root / "benchmarks" / rule / f"{key}.tsv"
        if path.is_file():
            bench[rule] = path
    data_files = [("run.json", run_path), ("train_log.jsonl", log_path)]
    data_files.append(("metrics.json", metrics_path))
    data_files += [(f"benchmark:{rule}", path) for rule, path in bench.items()]
    artifacts = [(run_path, "inputs"), (metrics_path, "inputs")]  # params uncut
    artifacts += [(Path(figure), "figures") for figure in figures]
    if (eval_dir / "subjects.csv").is_file():
        artifacts.append((eval_dir / "subjects.csv", "evaluation"))
    model = _model_artifacts(train_dir, run) if log_model else []
    artifacts += model
    for path, _ in artifacts:
        if not path.is_file():
            raise DataError(f"{path}: figure or artifact missing")
    train_log, restarts = _read_log(log_path)
    end_ms = int(run_path.stat().st_mtime * 1000)
    return RunInputs(
        key=key,
        kind="seed",
        run=run,
        data_sha=file_sha(data_files),
        train_log=train_log,
        log_restarts=restarts,
        metrics=metrics,
        artifacts=artifacts,
        artifacts_sha=file_sha(
            ((f"{d}/{p.name}", p) for p, d in artifacts if (p, d) not in model),
            *(_stat_print(p, d) for p, d in model),
        ),
        start_ms=_window(run, end_ms),
        end_ms=int(metrics_path.stat().st_mtime * 1000),
        benchmarks=_benchmarks(bench),
        parent_key=key.rsplit("/", 1)[0],
        model=model[0][0] if model and not run.get("external") else None,
        train_dir=train_dir,
        stages=[load_stage(d, key, root) for d in _stage_chain(train_dir, run)],
    )


def _seed_stats(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n-1) over seeds; no std from a single seed."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def group_inputs(seeds: Sequence[RunInputs]) -> RunInputs:
    """Parent of one method's seeds: each summary metric's mean and std over the seeds.

    ``{name}_mean`` is the mean of the seeds' test-set means (the table's number when every
    seed saw the same subjects); ``{name}_seed_std`` the sample std across seeds (seed-to-seed
    spread, not the table's spread over subjects); ``n_seeds`` how many finite values there
    were. Its data hash is the seeds' keys and hashes: a new or retrained seed recreates it.
    """
    key = seeds[0].parent_key
    values: dict[str, list[float]] = {}
    for seed in seeds:
        for name, stats in (seed.metrics.get("summary") or {}).items():
            if isinstance(stats, Mapping) and finite(stats.get("mean")):
                values.setdefault(name, []).append(float(stats["mean"]))
        if finite(seed.run.get("wall_seconds")):
            values.setdefault("wall_seconds", []).append(float(seed.run["wall_seconds"]))
    summary = {}
    for name, items in values.items():
        mean, std = _seed_stats(items)
        summary[name] = {"mean": mean, "seed_std": std, "n_seeds": len(items)}
    first = seeds[0].run
    presets = sorted({str(s.run.get("preset")) for s in seeds})
    run = {name: first[name] for name in RUN_FIELDS[:3]}
    run |= {"seeds": sorted(s.run["seed"] for s in seeds), "preset": ", ".join(presets)}
    return RunInputs(
        key=str(key),
        kind="group",
        run=run,
        metrics={"seed_summary": summary},
        data_sha=file_sha((), *sorted(f"{s.key} {s.data_sha}" for s in seeds)),
        start_ms=min(s.start_ms for s in seeds),
        end_ms=max(s.end_ms for s in seeds),
    )


def summary_inputs(seeds: Sequence[RunInputs], figures: Sequence[Path]) -> RunInputs | None:
    """The config's summary run: comparison and ablation tables (md/csv/tex) and figures.

    Tables are read from ``results/tables/`` of the seeds' results tree (a config without an
    ablation has no ablation table). None when the runs do not sit in one results tree.
    """
    roots = {results_root(s.train_dir) if s.train_dir else None for s in seeds}
    root = roots.pop() if len(roots) == 1 else None
    if root is None:
        return None
    artifacts = [
        (root / "tables" / f"{name}.{ext}", "tables")
        for name in TABLE_NAMES
        for ext in TABLE_FORMATS
        if (root / "tables" / f"{name}.{ext}").is_file()
    ]
    # figures/{dataset}/{direction}.png: one artifact folder per dataset, names stay unique
    artifacts += [(Path(p), f"figures/{Path(p).parent.name}") for p in dict.fromkeys(figures)]
    for path, _ in artifacts:
        if not path.is_file():
            raise DataError(f"{path}: figure missing")
    keys = sorted(s.key for s in seeds)
    run = {
        "results_dir": str(root),
        "datasets": sorted({s.run["dataset"] for s in seeds}),
        "directions": sorted({f"{s.run['dataset']}/{s.run['direction']}" for s in seeds}),
        "methods": sorted({s.run["method"] for s in seeds}),
        "seeds": sorted({s.run["seed"] for s in seeds}),
        "n_runs": len(seeds),
    }
    return RunInputs(
        key=SUMMARY_KEY,
        kind="summary",
        run=run,
        data_sha=file_sha((), str(root), *keys),
        artifacts=artifacts,
        artifacts_sha=file_sha((f"{d}/{p.name}", p) for p, d in artifacts),
        start_ms=min(s.start_ms for s in seeds),
        end_ms=max(s.end_ms for s in seeds),
    )
