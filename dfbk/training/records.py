"""The files jobs write, read and checked without MLflow: run and metrics JSON, training logs.

A training log (`train_log.jsonl`, one JSON object with an integer `step` per line) may hold
more than one pass over the same steps: a trainer killed after its last checkpoint and resumed
writes the steps since that checkpoint again, and two trainers on one checkpoint folder would
interleave their lines. :func:`last_pass` keeps, for every step, the row of the last pass.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from dfbk.errors import DataError


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, failing with a message that names the file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read one JSON object per line; blank lines are skipped (an empty log is allowed)."""
    if not path.is_file():
        raise DataError(f"{path}: missing (write an empty file for methods without training)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not valid JSON ({error})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise DataError(f"{path}:{number}: expected an object with an integer 'step'")
        rows.append(row)
    return rows


def last_pass(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """Rows with strictly rising steps, later passes replacing earlier ones; and restart steps.

    A row whose step is not above the last kept step begins a new pass (a resumed or second
    trainer): kept rows from that step on belong to an abandoned pass and are dropped.
    """
    kept: list[dict[str, Any]] = []
    steps: list[int] = []
    restarts: list[int] = []
    for row in rows:
        step = row["step"]
        if steps and step <= steps[-1]:
            restarts.append(step)
            cut = bisect.bisect_left(steps, step)
            del kept[cut:], steps[cut:]
        kept.append(row)
        steps.append(step)
    return kept, restarts


def finite(value: Any) -> bool:
    """True for real numbers MLflow can store faithfully (NaN/Inf are skipped, not mangled)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def window_means(rows: list[dict[str, Any]], max_points: int) -> list[dict[str, Any]]:
    """Rows averaged over consecutive windows so at most `max_points` remain.

    Each window is reported at its last step and time; short logs pass through unchanged.
    """
    if len(rows) <= max_points:
        return rows
    size = -(-len(rows) // max_points)  # ceil
    merged = []
    for start in range(0, len(rows), size):
        window = rows[start : start + size]
        out = {"step": window[-1]["step"], "time": window[-1].get("time")}
        for name in {k for row in window for k in row} - {"step", "time"}:
            values = [row[name] for row in window if finite(row.get(name))]
            if values:
                out[name] = sum(values) / len(values)
        merged.append(out)
    return merged


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=2)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
