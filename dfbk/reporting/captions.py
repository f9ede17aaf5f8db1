"""Caption notes drawn from the runs themselves, so a table always says how it was made.

Which knowledge encoder DFBK actually used (BiomedCLIP or the offline fallback, and why), and
how each method was trained where that differs from paired supervision (MaskGAN and SynDiff
train unpaired as published), come from each run's `run.json`.
"""

from __future__ import annotations

import json
from pathlib import Path


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


def caption_notes(run_files: list[Path]) -> str:
    """Sentences to append to a table caption, from the runs' run.json files."""
    runs = [json.loads(Path(p).read_text()) for p in run_files]
    parts = [_knowledge_note(runs), *_training_notes(runs)]
    return " ".join(p for p in parts if p)
