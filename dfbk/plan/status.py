"""dfbk status: which runs of a config are done, running, failed or pending, with their metrics.

Why the results tree and not Snakemake: `snakemake -n --summary` builds the whole DAG (for the
paper grid, hundreds of jobs and a config check that takes seconds), and still cannot tell a
job that is running now from one that died: a killed job leaves the same "incomplete" marker as
a live one. The facts read here are each exact:
- outputs are written atomically (temporary name, then rename), so their presence is exact;
- a trainer holds an fcntl lock on `checkpoints/<run>/.lock` (`dfbk.training.guard.FolderLock`)
  that the kernel drops when the process dies, so probing it tells running from crashed
  without pid or clock heuristics;
- a live Snakemake lists the outputs it will make in `.snakemake/locks/*.output.lock` of its
  working directory (this command's working directory) and deletes the list when it ends, so a
  missing output in that list is queued or being made, not failed. A Snakemake killed with
  SIGKILL leaves its list behind; `snakemake --unlock` clears it, for this command as for
  Snakemake itself;
- each rule's log sits at a fixed path, so a log without its output and outside a live
  Snakemake's list is a failed (or interrupted) job, and its last line says why.
The list of runs is the workflow's own (`dfbk.plan.grid`, which the Snakefile binds: comparison
runs, then ablation runs, once each).

States, first match wins: done (evaluate/<run>/metrics.json), running (a training lock held by
a live process, or a stage with a log in a live Snakemake's list), failed (a stage's log exists
but its output does not), pending (nothing yet, queued, or a finished stage waiting for the
next). Metrics: the evaluation summary when done, else the latest validation line of the
training log (`train_log.jsonl`).
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dfbk.errors import ConfigError
from dfbk.plan import grid as run_grid
from dfbk.plan.schema import DEFAULT_CONFIG, SCHEMA

STATES = ("done", "running", "failed", "pending")
# The stages of one run: (results folder, output inside results/<folder>/<run>, the rules whose
# logs/<rule>/<run>.log belong to it: built-in methods, then external ones; external.smk).
STAGES = (
    ("train", "run.json", ("train_method", "train_external", "record_external_run")),
    ("translate", "predictions.json", ("translate_test_set", "collect_external_predictions")),
    ("evaluate", "metrics.json", ("evaluate_predictions",)),
)
SUMMARY_KEYS = ("psnr_fg", "ssim_fg", "mae_fg")


@dataclass
class RunStatus:
    """One (dataset, direction, method, seed) run: its state, where it stands and its metrics."""

    dataset: str
    direction: str
    method: str
    seed: int
    state: str = "pending"
    stage: str = ""
    detail: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.direction}/{self.method}/seed-{self.seed}"


def load_config(path: Path | None) -> dict[str, Any]:
    """The config as the Snakefile sees it: schema-checked, with the schema's defaults filled."""
    from dfbk.plan.checks import validate_config

    path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the config ({err})") from err
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a YAML mapping")
    try:
        validate_config(config, SCHEMA)  # one pass: checks and fills the schema's defaults
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    return config


def lock_held(lock: Path) -> bool:
    """True when a live process holds the trainer's fcntl lock on `lock` (probe, then let go)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def last_validation(log: Path) -> dict[str, float]:
    """step and val_* of the last validated line of a JSONL training log (torn lines skipped)."""
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return {}
    steps: dict[str, float] = {}
    for text in reversed(lines):
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue
        if not isinstance(line, dict):
            continue
        if not steps and "step" in line:
            steps = {"step": int(line["step"]) + 1}  # the log's step counts from 0
        if any(k.startswith("val_") for k in line):
            found = {k: float(v) for k, v in line.items() if k.startswith("val_")}
            return {"step": steps.get("step", int(line.get("step", 0)) + 1), **found}
    return steps


def last_line(log: Path) -> str:
    """The log's last non-empty line (a failed job's error), cut to 160 characters."""
    try:
        lines = [t.strip() for t in log.read_text(errors="replace").splitlines() if t.strip()]
    except OSError:
        return ""
    return lines[-1][:160] if lines else ""


def snakemake_outputs(workdir: Path) -> set[str]:
    """Absolute paths of the outputs a live Snakemake in `workdir` is making or will make."""
    paths: set[str] = set()
    for lock in sorted((Path(workdir) / ".snakemake" / "locks").glob("*.output.lock")):
        try:
            lines = lock.read_text().splitlines()
        except OSError:  # removed as we read: that Snakemake just ended
            continue
        paths |= {os.path.abspath(Path(workdir) / t.strip()) for t in lines if t.strip()}
    return paths


def _stage_logs(results: Path, key: str, rules: tuple[str, ...]) -> list[Path]:
    """Existing logs of a stage's rules (and of extra training stages, for the train stage)."""
    logs = [results / "logs" / rule / f"{key}.log" for rule in rules]
    if "train_method" in rules:  # an extra stage (e.g. pretrain) that has not finished
        stages = sorted((results / "logs" / "train_method_stage" / key).glob("*.log"))
        done = results / "train" / key
        logs += [s for s in stages if not (done / f"stage-{s.stem}" / "run.json").is_file()]
    return [log for log in logs if log.is_file()]


def run_status(results: Path, run: dict[str, Any], scheduled: set[str] | None = None) -> RunStatus:
    """The state of one run, from its outputs, training lock, logs and Snakemake's lock list."""
    status = RunStatus(**run)
    key = status.key
    metrics = results / "evaluate" / key / "metrics.json"
    if metrics.is_file():
        try:
            summary = json.loads(metrics.read_text()).get("summary", {})
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"{metrics}: unreadable metrics ({err})") from err
        status.state, status.stage = "done", "evaluate"
        status.metrics = {k: summary[k]["mean"] for k in SUMMARY_KEYS if k in summary}
        return status
    checkpoints = results / "checkpoints" / key
    locks = sorted(checkpoints.glob("**/.lock")) if checkpoints.is_dir() else []
    live = [lock for lock in locks if lock_held(lock)]
    if live:
        status.state, status.stage = "running", "train"
        stage = live[0].parent.relative_to(checkpoints).as_posix()
        status.detail = "" if stage == "." else stage
        status.metrics = last_validation(live[0].parent / "train_log.jsonl")
        return status
    scheduled = scheduled or set()
    for folder, output, rules in STAGES:
        if (results / folder / key / output).is_file():
            status.stage = folder
            continue
        logs = _stage_logs(results, key, rules)
        prefix = os.path.abspath(results / folder / key)
        queued = any(p == prefix or p.startswith(prefix + os.sep) for p in scheduled)
        if queued:
            status.state = "running" if logs else "pending"
            status.stage, status.detail = folder, "" if logs else "queued by snakemake"
        elif logs:
            log = max(logs, key=lambda p: p.stat().st_mtime)  # the latest attempt's log
            status.state, status.stage, status.detail = "failed", folder, last_line(log)
        break
    if status.state != "failed":
        status.metrics = last_validation(checkpoints / "train_log.jsonl")
    return status


def collect_status(config: dict[str, Any], workdir: Path | None = None) -> list[RunStatus]:
    """The state of every configured run under the config's results_dir (relative paths, as
    for Snakemake, from `workdir`, default the current directory)."""
    workdir = Path.cwd() if workdir is None else Path(workdir)
    results = workdir / config["results_dir"]
    scheduled = snakemake_outputs(workdir)
    return [run_status(results, run, scheduled) for run in run_grid.runs(config)]


def format_status(statuses: list[RunStatus]) -> str:
    """A fixed-width table (run, state, stage, metrics or a failure's last log line), totals."""
    rows = []
    for s in statuses:
        shown = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.metrics.items()
        )
        rows.append((s.key, s.state, s.stage or "-", " ".join(filter(None, (shown, s.detail)))))
    width = max([len(r[0]) for r in rows] + [3])
    lines = [f"{'run':<{width}}  {'state':<8}{'stage':<10}metrics / detail"]
    lines += [f"{k:<{width}}  {st:<8}{sg:<10}{info}".rstrip() for k, st, sg, info in rows]
    counts = {state: sum(s.state == state for s in statuses) for state in STATES}
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()) + f" of {len(rows)}")
    return "\n".join(lines)
