"""Caption notes and training columns drawn from the runs themselves (their `run.json`), so a
table always says how it was made.

- which knowledge encoder DFBK actually used (BiomedCLIP or the offline fallback, and why);
- how each method was trained where that differs from paired supervision (MaskGAN and SynDiff
  train unpaired as published);
- each method's training budget (steps × batch size), so a budget-starved row reads as such,
  and, for the ResShift-family rows, how it compares with ResShift's released recipe (batch 64,
  500,000 iterations, fp32: the method's `describe.released_recipe`);
- which checkpoint was evaluated ("last" or "best"), and whether every run used the same rule;
- per row: steps, batch size, parameter count and training FLOPs per step (`training_frame`);
  a run.json without a field gives "n/a", never a crash.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dfbk.methods.registry import FLOOR_METHODS

TRAINING_KEYS = ("dataset", "direction", "method")


def _knowledge_note(runs: list[dict]) -> str | None:
    used = {}
    for run in runs:
        info = run.get("knowledge") or {}
        if info.get("encoder"):
            note = info["encoder"]
            if info.get("requested") and info["requested"] != info["encoder"]:
                note += f" (requested {info['requested']}"
                if info.get("fallback_reason"):
                    note += f"; fallback: {info['fallback_reason']}"
                note += ")"
            used[note] = None
    if not used:
        return None
    return "Knowledge Guidance text encoder: " + "; ".join(used) + "."


def _training_notes(runs: list[dict]) -> list[str]:
    notes: dict[str, str] = {}
    for run in runs:
        training = (run.get("describe") or {}).get("training")
        if training:
            notes[run["method"]] = training
    return [f"{method}: trained {how}." for method, how in sorted(notes.items())]


def _batch_size(run: dict):
    if run.get("batch_size") is not None:
        return run["batch_size"]
    return (run.get("hparams") or {}).get("batch_size")


def _joined(values) -> str | int | float | None:
    """One value when the seeds of a row agree, else all of them ("200/400"); None if none."""
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else "/".join(map(str, distinct))


def _si(value, unit: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):  # seeds disagree
        return value
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}".strip()
    return f"{value:.3g} {unit}".strip()


def training_frame(run_files: list[Path]) -> pd.DataFrame | None:
    """Per dataset × direction × method: steps, batch_size, n_parameters,
    train_flops_per_step, evaluated_checkpoint, and the display columns "Params" and
    "Train FLOPs/step" ("n/a" where run.json lacks them). None without run files."""
    rows = []
    for path in map(Path, run_files):
        run = json.loads(path.read_text())
        rows.append({
            **{k: run.get(k) for k in TRAINING_KEYS},
            "steps": run.get("steps"),
            "batch_size": _batch_size(run),
            "n_parameters": run.get("n_parameters"),
            "train_flops_per_step": run.get("train_flops_per_step"),
            "evaluated_checkpoint": run.get("evaluated_checkpoint"),
        })  # fmt: skip
    if not rows:
        return None
    frame = pd.DataFrame(rows, dtype=object)
    out = []
    for key, part in frame.groupby(list(TRAINING_KEYS), sort=False):
        row = dict(zip(TRAINING_KEYS, key, strict=True))
        for column in ("steps", "batch_size", "n_parameters", "train_flops_per_step",
                       "evaluated_checkpoint"):  # fmt: skip
            row[column] = _joined(part[column])
        row["Params"] = _si(row["n_parameters"], "")
        row["Train FLOPs/step"] = _si(row["train_flops_per_step"], "FLOP")
        out.append(row)
    return pd.DataFrame(out, dtype=object)


def _budget_note(training: pd.DataFrame) -> str:
    """'Training budget (steps × batch size): dfbk 600 × 8; pix2pix 200 × 16.'

    The floors have no steps (their batch size is only how many slices the one fitting pass
    reads at a time), so they are named apart instead of as '0 × 64'.
    """
    per_method: dict[str, dict[str, None]] = {}
    floors: dict[str, None] = {}
    for row in training.to_dict("records"):  # iterrows turns None into NaN
        if row["method"] in FLOOR_METHODS:
            floors[row["method"]] = None
            continue
        steps = "n/a" if row["steps"] is None else row["steps"]
        batch = "n/a" if row["batch_size"] is None else row["batch_size"]
        per_method.setdefault(row["method"], {})[f"{steps} × {batch}"] = None
    items = [f"{m} {', '.join(b)}" for m, b in per_method.items()]
    text = "Training budget (steps × batch size): " + "; ".join(items) + "." if items else ""
    if floors:
        text += (
            f" Floors ({', '.join(floors)}): no training steps; mean and linear are fitted in "
            "one pass over every training slice."
        )
    return text.strip()


def _recipe_note(runs: list[dict]) -> str | None:
    """'resshift, dfbk trained 300000 × 16 with bf16 autocast, 15 % of the training samples of
    ResShift's released recipe (batch 64 as microbatches of 16, ..., fp32; ...).' Only runs whose
    method names a released recipe (`describe.released_recipe`) take part."""
    budgets: dict[str, list[str]] = {}
    recipe = None
    for run in runs:
        mine = (run.get("describe") or {}).get("released_recipe")
        steps, batch = run.get("steps"), _batch_size(run)
        if not mine or steps is None or batch is None:
            continue
        recipe = mine
        amp = (run.get("speed") or {}).get("amp_bf16")
        share = steps * batch / (mine["steps"] * mine["batch_size"])
        how = f"{steps} × {batch} {'with bf16 autocast' if amp else 'in fp32'}, "
        how += f"{100 * share:.3g} % of the training samples"
        methods = budgets.setdefault(how, [])
        if run["method"] not in methods:
            methods.append(run["method"])
    if recipe is None:
        return None
    items = "; ".join(f"{', '.join(methods)} trained {how}" for how, methods in budgets.items())
    return (
        f"{items} of ResShift's released recipe (batch {recipe['batch_size']} as microbatches "
        f"of {recipe['microbatch']} with gradient accumulation, {recipe['steps']:,} iterations, "
        f"{recipe['precision']}; docs/method.md says where and why the presets differ)."
    )


def _checkpoint_note(training: pd.DataFrame) -> str:
    rules = dict.fromkeys(str(v) for v in training["evaluated_checkpoint"] if v is not None)
    missing = training["evaluated_checkpoint"].isna().any()
    if not rules:
        return "Evaluated checkpoint: not recorded in run.json."
    if len(rules) == 1 and not missing:
        return f"Evaluated checkpoint: {next(iter(rules))}, the same rule for every method."
    per_method = {
        row["method"]: row["evaluated_checkpoint"] or "not recorded"
        for row in training.to_dict("records")
    }
    listed = "; ".join(f"{m} {c}" for m, c in per_method.items())
    return f"Evaluated checkpoint differs between runs: {listed}."


def caption_notes(run_files: list[Path]) -> str:
    """Sentences to append to a table caption, from the runs' run.json files."""
    runs = [json.loads(Path(p).read_text()) for p in run_files]
    parts = [_knowledge_note(runs), *_training_notes(runs)]
    training = training_frame(run_files)
    if training is not None:
        parts += [_budget_note(training), _recipe_note(runs), _checkpoint_note(training)]
    return " ".join(p for p in parts if p)
