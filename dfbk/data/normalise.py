"""Intensity normalisation to [0, 1], one rule per modality family (docs/design.md, data flow 2).

MR has no absolute units, so each volume is clipped to the 0.5th/99.5th percentiles of its
foreground voxels and scaled to [0, 1]. CT is in Hounsfield units, so a fixed window
[-1024, 3000] HU (SynthRAD 2023's) maps linearly to [0, 1] and back for MAE in HU.
"""

from __future__ import annotations

import numpy as np

CT_MODALITIES = frozenset({"ct"})
CT_WINDOW_HU = (-1024.0, 3000.0)
MR_PERCENTILES = (0.5, 99.5)


def is_ct(modality: str) -> bool:
    return modality.lower() in CT_MODALITIES


def normalisation_name(modality: str) -> str:
    """Short name stored in the data contract of the slice store and checkpoints."""
    if is_ct(modality):
        return "ct-hu-1024-3000"
    return "mr-p{:g}-p{:g}".format(*MR_PERCENTILES)


def normalise_mr(volume: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Clip to the [0.5, 99.5] percentiles of foreground voxels and scale to [0, 1]."""
    values = volume[foreground > 0]
    if values.size == 0:
        raise ValueError("empty foreground mask: cannot compute MR percentiles")
    lo, hi = np.percentile(values, MR_PERCENTILES)
    if hi <= lo:
        raise ValueError(f"constant foreground intensity ({lo}): cannot normalise")
    return ((np.clip(volume, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def normalise_ct(volume_hu: np.ndarray) -> np.ndarray:
    """Clip to [-1024, 3000] HU and scale linearly to [0, 1]."""
    lo, hi = CT_WINDOW_HU
    return ((np.clip(volume_hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def ct_to_hu(unit: np.ndarray) -> np.ndarray:
    """Inverse of `normalise_ct` for values in [0, 1]."""
    lo, hi = CT_WINDOW_HU
    return (np.asarray(unit, dtype=np.float32) * (hi - lo) + lo).astype(np.float32)


def normalise(volume: np.ndarray, modality: str, foreground: np.ndarray) -> np.ndarray:
    """Dispatch on the modality: CT by its HU window, everything else as MR."""
    if is_ct(modality):
        return normalise_ct(volume)
    return normalise_mr(volume, foreground)
