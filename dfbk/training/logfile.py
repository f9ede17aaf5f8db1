"""The JSONL training log and small text outputs, written so that a crash cannot poison a rerun.

The log gets one JSON line per step, appended. A kill or a full disk can leave a torn last line;
on resume that line is dropped (it belongs to a step after the checkpoint anyway) and the kept
lines are written to a temporary file and renamed, so a kill during the rewrite leaves the old
log intact. Write failures are one TrainingError naming the file, with no temporary left.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TextIO

from dfbk.data.io import atomic_path, file_mode
from dfbk.errors import TrainingError


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` to a temporary sibling, then rename; a failure removes the temporary."""
    path = Path(path)
    tmp = atomic_path(path)
    try:
        tmp.write_text(text)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as err:
        raise TrainingError(f"{path}: cannot write ({err.strerror or err})") from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def append_line(log: TextIO, path: Path, text: str, flush: bool = False) -> None:
    """Append one line to the open log; a failed write names the log file."""
    try:
        log.write(text + "\n")
        if flush:
            log.flush()
    except OSError as err:
        raise TrainingError(f"{path}: cannot write training log ({err.strerror or err})") from err


def flush_log(log: TextIO, path: Path) -> None:
    """Flush the open log (before a checkpoint, so the log never lags the saved step)."""
    try:
        log.flush()
    except OSError as err:
        raise TrainingError(f"{path}: cannot write training log ({err.strerror or err})") from err


def read_log(path: Path) -> list[tuple[dict, str]]:
    """(record, line) pairs; a torn last line is dropped, a bad line elsewhere names the file."""
    lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("no integer 'step'")
        except ValueError as err:
            if number == len(lines):  # torn by a kill or a full disk: the step is redone
                break
            raise TrainingError(
                f"{path}: line {number} is not a log record ({err}); delete the checkpoint "
                "folder to train from scratch"
            ) from err
        records.append((record, line))
    return records


def truncate_log(path: Path, step: int) -> None:
    """Keep only records before `step` (those after the checkpoint we resume from), atomically."""
    path = Path(path)
    if not path.exists():
        return
    kept = [line for record, line in read_log(path) if record["step"] < step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))
