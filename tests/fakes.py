"""Fakes the tests (and bench/faults/replay.py) share: a random batch and a micro config.

Import as `from fakes import ...` (pytest puts tests/ on the path; bench scripts add it).
"""

from __future__ import annotations

from typing import Any


def random_batch(size: int, seed: int = 0, shifted: bool = False, batch: int = 2):
    """A (batch, 1, size, size) Batch: uniform source, target its inverse (rolled by 3 if
    `shifted`, so a network must move content), an all-ones mask."""
    import torch

    from dfbk.methods.base import Batch

    g = torch.Generator().manual_seed(seed)
    source = torch.rand(batch, 1, size, size, generator=g)
    target = (1 - source).roll(3, dims=-1) if shifted else 1 - source
    return Batch(source=source, target=target, mask=torch.ones_like(source))


def micro_config(
    results_dir: str,
    methods: dict[str, Any],
    directions: list[str],
    *,
    subjects: int = 5,
    voxel_mm: float = 3.5,
    size: int = 64,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    raw_dir: str = "resources/raw",
    train: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """A one-dataset phantom workflow config small enough for a CPU test, GPUs off.

    `train` entries join the CPU defaults; other keyword arguments are top-level keys.
    """
    return {
        "results_dir": results_dir,
        "raw_dir": raw_dir,
        "seeds": [0],
        "datasets": {
            "phantom": {
                "phantom": {"subjects": subjects, "voxel_mm": voxel_mm, "seed": 0},
                "size": [size, size],
                "split": {"seed": 0, "fractions": list(fractions)},
                "directions": list(directions),
            }
        },
        "methods": methods,
        "train": {"device": "cpu", "threads": 1, "gpus": 0, **(train or {})},
        **top,
    }
