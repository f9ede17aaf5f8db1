"""Subject-level train/val/test split: seeded, written once, never recomputed silently.

Splitting by subject (not slice) keeps neighbouring slices of one head out of both train and
test. The split file is created the first time and afterwards only read back; if the subject
list or the split settings changed, the user must delete it on purpose.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from dfbk.data.io import write_text
from dfbk.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


def compute_split(
    subjects: list[str], fractions: dict[str, float], seed: int
) -> dict[str, list[str]]:
    """Shuffle sorted subject names with `seed`; val and test get at least one subject each.

    `fractions` are relative shares (normalised by their sum); negative, non-finite or all-zero
    shares are a ConfigError.
    """
    names = sorted(set(subjects))
    if len(names) < 3:
        raise DataError(f"need at least 3 subjects for a train/val/test split, got {len(names)}")
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    shares = [fractions.get(k, 0.0) for k in SPLITS]
    if not all(math.isfinite(v) and v >= 0 for v in shares) or sum(shares) <= 0:
        raise ConfigError(
            f"split fractions (train, val, test) {shares}: need numbers of at least 0 "
            "with a sum above 0"
        )
    total = sum(shares)
    n_test = max(1, round(len(names) * fractions.get("test", 0.0) / total))
    n_val = max(1, round(len(names) * fractions.get("val", 0.0) / total))
    n_train = len(names) - n_test - n_val
    if n_train < 1:
        raise DataError(f"{len(names)} subjects leave no training subject after val/test")
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


def write_or_check_split(
    path: Path, subjects: list[str], fractions: dict[str, float], seed: int
) -> dict[str, list[str]]:
    """Create `path` once; later calls return it if it still matches, else raise."""
    path = Path(path)
    settings = {"seed": seed, "fractions": {k: float(fractions.get(k, 0.0)) for k in SPLITS}}
    if path.exists():
        stored = _load(path)
        stored_subjects = sorted(s for k in SPLITS for s in stored[k])
        if stored_subjects != sorted(set(subjects)) or stored.get("settings") != settings:
            raise DataError(
                f"{path}: existing split was made for other subjects or settings; it is never "
                "recomputed silently — delete the file to re-split on purpose"
            )
        return {k: stored[k] for k in SPLITS}
    split = compute_split(subjects, fractions, seed)
    try:
        write_text(path, json.dumps({"settings": settings, **split}, indent=2) + "\n")
    except OSError as err:  # disk full, permissions: one line, no temporary left
        raise DataError(f"{path}: cannot write the split ({err.strerror or err})") from None
    return split


def _load(path: Path) -> dict:
    """A split file's JSON with its three subject lists; a corrupt file is a DataError."""
    try:
        stored = json.loads(path.read_text())
        if not all(isinstance(stored[k], list) for k in SPLITS):
            raise TypeError("subject lists are not lists")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"{path}: unreadable split file ({type(err).__name__}: {err}); delete it to re-split"
        ) from None
    return stored


def read_split(path: Path) -> dict[str, list[str]]:
    """Read a split file written by `write_or_check_split`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: split file not found (run the split_subjects rule first)")
    stored = _load(path)
    return {k: list(stored[k]) for k in SPLITS}
