"""External baselines: a method whose code lives outside this package, run as two commands.

Researchers often want the authors' own code in its own environment rather than a
reimplementation. `methods.<name>.external` in the config declares such a method as a train
and a translate command (templates with `{placeholders}`), optionally with a conda
environment file or a container image; workflow/rules/external.smk turns them into jobs with
the same log, benchmark, resources and SLURM treatment as the package's own methods, and
`record` / `collect` below check what the commands wrote and give it the layout evaluation,
tables, figures and MLflow read (docs/external.md has the whole contract).

Placeholders, each replaced by a shell-quoted value:
- both commands: `{store}` (slice store folder), `{split}` (splits.json), `{direction}`,
  `{source}`, `{target}`, `{seed}`, `{preset}` (the preset name), `{params}` (the method's
  `overrides` as a JSON object), `{checkpoint}` (the checkpoint folder), `{threads}`, `{gpus}`;
- translate only: `{predictions}` (the folder to write `{subject}.nii.gz` into).
Literal braces are doubled (`{{` and `}}`), as in Python's str.format.

This module imports neither torch nor the method modules: the Snakefile calls its checks
while planning.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import string
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dfbk.errors import ConfigError, DataError, DfbkError

COMMON_PLACEHOLDERS = (
    "store",
    "split",
    "direction",
    "source",
    "target",
    "seed",
    "preset",
    "params",
    "checkpoint",
    "threads",
    "gpus",
)
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "train": COMMON_PLACEHOLDERS,
    "translate": (*COMMON_PLACEHOLDERS, "predictions"),
}
# What each command must name: the folder it writes (else it cannot know where).
REQUIRED: dict[str, tuple[str, ...]] = {"train": ("checkpoint",), "translate": ("predictions",)}
# Method settings that describe a Python class; an external method has none.
CLASS_ONLY_KEYS = ("module", "stages")
# common.smk's `method` wildcard: an external name must match it to reach evaluate and tables.
METHOD_NAME = re.compile(r"[a-z0-9_\-]+")
TRAIN_LOG = "train_log.jsonl"  # optional in the checkpoint folder: per-step losses for MLflow


def external_methods(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`methods.<name>.external` blocks by method name (methods without one are left out)."""
    return {
        name: settings["external"]
        for name, settings in config.get("methods", {}).items()
        if isinstance(settings, Mapping) and settings.get("external") is not None
    }


def placeholders(template: str, key: str) -> list[str]:
    """Field names of a command template; a malformed or non-plain field is a ConfigError."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ConfigError(
            f"{key}: not a valid command template ({err}); a literal brace is {{{{ or }}}}"
        ) from None
    names = []
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if not name or spec or conversion:
            raise ConfigError(f"{key}: placeholder {{{name}}} must be a bare name, no ! or :")
        names.append(name)
    return names


def check_external_methods(config: Mapping[str, Any], registered: list[str]) -> None:
    """Refuse an external method whose name, settings or command templates cannot work.

    `registered` is the registry's list (built-in and `module` methods): an external name
    must not shadow one, since the registry name is the results key. Called from
    dfbk.plan.checks.check_config, so each error is one line naming the key.
    """
    for name, spec in external_methods(config).items():
        prefix = f"methods.{name}"
        if not METHOD_NAME.fullmatch(name):
            raise ConfigError(
                f"{prefix}: a method name is lower-case letters, digits, '_' and '-' "
                "(it is a path segment and a wildcard of every rule)"
            )
        if name in registered:
            raise ConfigError(
                f"{prefix}.external: '{name}' is a registered method; give the external "
                "baseline a name of its own (it keys the results folders)"
            )
        settings = config["methods"][name]
        for key in CLASS_ONLY_KEYS:
            if key in settings:
                raise ConfigError(
                    f"{prefix}.{key}: only for a method class in Python; an external method "
                    "runs its own commands"
                )
        if spec.get("conda") and spec.get("container"):
            raise ConfigError(f"{prefix}.external: give conda or container, not both")
        for phase, allowed in PLACEHOLDERS.items():
            key = f"{prefix}.external.{phase}"
            names = placeholders(spec[phase], key)
            unknown = sorted(set(names) - set(allowed))
            if unknown:
                raise ConfigError(
                    f"{key}: unknown placeholder {{{unknown[0]}}}; known: "
                    + ", ".join(f"{{{p}}}" for p in allowed)
                )
            missing = [p for p in REQUIRED[phase] if p not in names]
            if missing:
                raise ConfigError(
                    f"{key}: the command must name {{{missing[0]}}}, the folder it writes"
                )
        env = spec.get("conda")
        if env and looks_like_file(env) and not Path(env).is_file():
            raise ConfigError(f"{prefix}.external.conda: {env}: environment file not found")


def looks_like_file(env: str) -> bool:
    """A conda spec naming a file (env.yaml) rather than an existing environment's name."""
    return env.endswith((".yaml", ".yml")) or "/" in env


def conda_env(spec: Mapping[str, Any]) -> str | None:
    """The conda spec for Snakemake: a file as an absolute path (config paths are relative to
    the working directory, Snakemake's own to the rule file), a name or folder as given."""
    env = spec.get("conda")
    if not env:
        return None
    return str(Path(env).resolve()) if looks_like_file(env) else env


def render_command(template: str, values: Mapping[str, Any]) -> str:
    """The command with every placeholder replaced by its shell-quoted value."""
    return template.format_map({k: shlex.quote(str(v)) for k, v in values.items()})


def command_values(
    settings: Mapping[str, Any],
    run: Mapping[str, Any],
    paths: Mapping[str, str],
    threads: int,
    gpus: int,
) -> dict[str, Any]:
    """Placeholder values of one run: `run` has dataset, direction and seed; `paths` the
    store, split, checkpoint (and predictions) paths."""
    source, target = str(run["direction"]).split("-to-")
    return {
        **paths,
        "direction": run["direction"],
        "source": source,
        "target": target,
        "seed": run["seed"],
        "preset": settings.get("preset", "tiny"),
        "params": json.dumps(settings.get("overrides") or {}, sort_keys=True),
        "threads": threads,
        "gpus": gpus,
    }


def external_gpus(config: Mapping[str, Any], method: str) -> int:
    """GPUs per external job: methods.<name>.external.gpus, else train.gpus (default 1)."""
    spec = config["methods"][method]["external"]
    return int(spec.get("gpus", config.get("train", {}).get("gpus", 1)))


def external_container(config: Mapping[str, Any], method: str) -> str:
    """The method's image, else the workflow's own (used under --sdm apptainer only)."""
    return config["methods"][method]["external"].get("container") or config["container"]


def external_command(
    config: Mapping[str, Any],
    phase: str,
    wildcards: Mapping[str, Any],
    input: Mapping[str, str],
    output: Mapping[str, str],
    threads: int,
    gpus: int,
) -> str:
    """The `phase` ("train" or "translate") command of one job, placeholders filled in.

    `input` and `output` are the job's (Snakemake's named lists): store, split and, to
    translate, the checkpoint folder; the folder the command writes.
    """
    paths = {"store": input["store"], "split": input["split"]}
    if phase == "train":
        paths["checkpoint"] = output["checkpoint"]
    else:
        paths |= {"checkpoint": input["checkpoint"], "predictions": output["predictions"]}
    settings = config["methods"][wildcards["method"]]
    values = command_values(settings, wildcards, paths, threads, gpus)
    return render_command(settings["external"][phase], values)


# ----- jobs run in the package's environment after each external command ----------------
def record_run(
    checkpoint: Path,
    out_dir: Path,
    run: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> Path:
    """Check the checkpoint folder and write `run.json` and `train_log.jsonl` into `out_dir`.

    The folder must hold at least one file (a command that exits 0 but wrote nothing failed).
    A `train_log.jsonl` in it (one JSON object with an integer `step` per line) becomes the
    run's training log, so MLflow shows its curves; otherwise the log is empty. Nothing is
    written when a check fails.
    """
    from dfbk.data.io import write_text
    from dfbk.training.records import read_jsonl

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not checkpoint.is_dir():
        raise DataError(f"{checkpoint}: the external train command wrote no checkpoint folder")
    if not any(p.is_file() for p in checkpoint.rglob("*")):
        raise DataError(
            f"{checkpoint}: the external train command left the checkpoint folder empty"
        )
    log_path = checkpoint / TRAIN_LOG
    log_text = log_path.read_text() if log_path.is_file() else ""
    if log_text:
        read_jsonl(log_path)  # one line naming the file and line when malformed
    spec = settings["external"]
    info = {
        "dataset": run["dataset"],
        "direction": run["direction"],
        "method": run["method"],
        "seed": int(run["seed"]),
        "stage": None,
        "preset": settings.get("preset", "tiny"),
        "hparams": dict(settings.get("overrides") or {}),
        "describe": {"training": "by its own external command (methods.<name>.external)"},
        "external": {
            "train": spec["train"],
            "translate": spec["translate"],
            "environment": spec.get("conda") or spec.get("container") or "workflow's own",
            "checkpoint": str(checkpoint),
        },
        "n_parameters": None,  # no Python class to count: the tables show it as missing
        "steps": (settings.get("overrides") or {}).get("steps"),
        "evaluated_checkpoint": None,  # the external code decides what it keeps
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / TRAIN_LOG, log_text)
    write_text(out_dir / "run.json", json.dumps(info, indent=2) + "\n")
    return out_dir / "run.json"


def collect_predictions(
    raw_dir: Path, store_dir: Path, split_path: Path, out_dir: Path, method: str, direction: str
) -> dict[str, Any]:
    """Check one NIfTI per test subject on the store's grid, then publish them to `out_dir`.

    Every file is read as evaluation will (`dfbk.evaluation.evaluate.load_prediction`: present,
    (H, W, S) shape, the subject's affine, finite), so a wrong prediction fails here, naming
    the file, and `out_dir` is written whole (temporary folder, then rename) or not at all.
    """
    from dfbk.data.io import write_text
    from dfbk.data.outputs import claim_folder, mark, publish, staging_folder
    from dfbk.data.slices.splits import read_split
    from dfbk.data.slices.store import SliceStore
    from dfbk.evaluation.evaluate import load_prediction

    raw_dir = Path(raw_dir)
    inputs = {"external predictions": raw_dir, "slice store": store_dir, "split": split_path}
    out_dir = claim_folder(out_dir, "predict", inputs)
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: the external translate command wrote no predictions folder")
    store = SliceStore(store_dir)
    subjects = read_split(split_path)["test"]
    for subject in subjects:
        load_prediction(store, raw_dir, subject)
    tmp = staging_folder(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for subject in subjects:
            shutil.copyfile(raw_dir / f"{subject}.nii.gz", tmp / f"{subject}.nii.gz")
        index = {
            "method": method,
            "direction": direction,
            "subjects": subjects,
            "slice_size": list(store.size),
            "external": str(raw_dir),
        }
        write_text(tmp / "predictions.json", json.dumps(index, indent=2) + "\n")
        mark(tmp, "predict")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, out_dir, "predict")
    return index


def main(argv: list[str] | None = None) -> None:
    """`python -m dfbk.inference.external {record,collect}`: the check jobs of external.smk."""
    parser = argparse.ArgumentParser(
        prog="python -m dfbk.inference.external",
        description="Check an external method's outputs and give them the benchmark's layout.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    rec = verbs.add_parser("record", help="checkpoint folder -> run.json and train_log.jsonl")
    rec.add_argument("checkpoint", type=Path)
    rec.add_argument("out_dir", type=Path)
    rec.add_argument("--run", required=True, help="JSON: dataset, direction, method, seed")
    rec.add_argument("--settings", required=True, help="JSON: methods.<name> of the config")
    col = verbs.add_parser("collect", help="check and publish one NIfTI per test subject")
    col.add_argument("raw_dir", type=Path)
    col.add_argument("store", type=Path)
    col.add_argument("split", type=Path)
    col.add_argument("out_dir", type=Path)
    col.add_argument("--method", required=True)
    col.add_argument("--direction", required=True)
    args = parser.parse_args(argv)
    try:
        if args.verb == "record":
            run, settings = json.loads(args.run), json.loads(args.settings)
            print(record_run(args.checkpoint, args.out_dir, run, settings))
        else:
            index = collect_predictions(
                args.raw_dir, args.store, args.split, args.out_dir, args.method, args.direction
            )
            print(f"{len(index['subjects'])} test predictions in {args.out_dir}")
    except (DfbkError, OSError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
