"""Per-dataset evaluation protocols: how each dataset's own challenge scores a synthesis.

The embedded phantom keeps the generic protocol of `dfbk.evaluation.evaluate` (intensities in
[0, 1]; full image, foreground and lesion regions). The real datasets are scored as their
communities do, so the numbers can be set beside published ones; the protocol's name and
caption are written into metrics.json and the table caption.

- BraTS 2023 (as in the BraTS 2023 synthesis challenge, BraSyn): prediction and reference are
  normalised together by the *reference's* 0.5th/99.5th percentiles inside the brain mask
  (clip, scale to [0, 1]), voxels outside the mask set to 0; PSNR (data range 1), SSIM and MAE
  inside the brain mask; SSIM also inside the tumour label and in the brain outside it.
- ISLES 2015: the same, with the stroke lesion label as the region.
- SynthRAD 2023, CT target: predictions mapped back to HU; MAE in HU inside the body mask;
  PSNR on HU clipped to [-1024, 3000], data range 4024, MSE inside the mask; SSIM on clipped
  HU with voxels outside the mask set to -1024 and shifted by +1024 to [0, 4024] (SSIM's
  stabilising constants assume non-negative data), data range 4024, averaged over the mask.
  Written from this description (the challenge's own code is GPL) and checked on a
  hand-computed fixture in tests/test_protocols.py. MR targets of SynthRAD are scored like
  BraTS inside the body mask (there is no lesion label).
SSIM is the project's (`dfbk.evaluation.metrics`): per axial slice, Gaussian window sigma 1.5,
K1 0.01, K2 0.03, the 5-pixel slice border left out of every mean.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dfbk.data.normalise import CT_WINDOW_HU, MR_PERCENTILES, ct_to_hu, is_ct
from dfbk.errors import DataError
from dfbk.evaluation.metrics import psnr_from_mse, ssim_interior, ssim_map

CT_RANGE_HU = CT_WINDOW_HU[1] - CT_WINDOW_HU[0]  # 4024


def region_scores(
    sq: np.ndarray,
    ab: np.ndarray,
    smap: np.ndarray,
    region: np.ndarray,
    data_range: float = 1.0,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-slice arrays and whole-volume values of PSNR, SSIM and MAE over one region.

    sq, ab, smap: (S, H, W) squared error, absolute error and local SSIM. Sums and counts are
    taken per slice first, so volume values are exact pooled means (PSNR from the volume MSE,
    SSIM averaged over the region's interior pixels of all slices).
    """
    inside = region & ssim_interior(region.shape)
    n = region.sum(axis=(1, 2)).astype(float)
    n_in = inside.sum(axis=(1, 2)).astype(float)
    sq_sum = (sq * region).sum(axis=(1, 2))
    ab_sum = (ab * region).sum(axis=(1, 2))
    ss_sum = (smap * inside).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_slice = {
            "psnr": np.array([psnr_from_mse(m, data_range) for m in sq_sum / n]),
            "ssim": ss_sum / n_in,
            "mae": ab_sum / n,
        }
    total, total_in = n.sum(), n_in.sum()
    volume = {
        "psnr": psnr_from_mse(sq_sum.sum() / total, data_range) if total else math.nan,
        "ssim": float(ss_sum.sum() / total_in) if total_in else math.nan,
        "mae": float(ab_sum.sum() / total) if total else math.nan,
    }
    return per_slice, volume


def reference_normalise(
    pred: np.ndarray, ref: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Clip and scale both volumes by the reference's [0.5, 99.5] percentiles in the mask.

    Outside the mask both are set to 0, so background never counts as structure.
    """
    values = ref[mask]
    if values.size == 0:
        raise DataError("empty mask: cannot compute the reference percentiles")
    lo, hi = np.percentile(values, MR_PERCENTILES)
    if hi <= lo:
        raise DataError(f"reference is constant ({lo}) inside the mask: cannot normalise")

    def scale(volume: np.ndarray) -> np.ndarray:
        return np.where(mask, (np.clip(volume, lo, hi) - lo) / (hi - lo), 0.0)

    return scale(pred), scale(ref)


def _collect(columns: dict, volume: dict, wanted: dict[str, tuple], results: dict) -> None:
    """Copy `{metric}_{region}` entries named in `wanted` out of per-region results."""
    for column, (metric, region) in wanted.items():
        per_slice, whole = results[region]
        columns[column] = per_slice[metric]
        volume[column] = whole[metric]


def score_mr(
    pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, label: np.ndarray | None
) -> tuple[pd.DataFrame, dict[str, float]]:
    """BraSyn-style scores of one subject (S, H, W); lesion columns only with a label."""
    pred_n, ref_n = reference_normalise(pred, ref, mask)
    sq, ab = (pred_n - ref_n) ** 2, np.abs(pred_n - ref_n)
    smap = ssim_map(pred_n, ref_n, 1.0)
    regions = {"fg": mask}
    wanted = {f"{m}_fg": (m, "fg") for m in ("psnr", "ssim", "mae")}
    if label is not None:
        regions["lesion"] = mask & label
        regions["nonlesion"] = mask & ~label
        wanted |= {"ssim_lesion": ("ssim", "lesion"), "ssim_nonlesion": ("ssim", "nonlesion")}
    results = {name: region_scores(sq, ab, smap, region) for name, region in regions.items()}
    columns: dict[str, np.ndarray] = {}
    volume: dict[str, float] = {}
    _collect(columns, volume, wanted, results)
    return pd.DataFrame(columns), volume


def score_synthrad_ct(
    pred: np.ndarray, ref: np.ndarray, mask: np.ndarray
) -> tuple[pd.DataFrame, dict[str, float]]:
    """SynthRAD 2023 sCT scores of one subject; pred/ref in [0, 1] store units, (S, H, W)."""
    lo, hi = CT_WINDOW_HU
    pred_hu = np.clip(ct_to_hu(pred).astype(np.float64), lo, hi)
    ref_hu = np.clip(ct_to_hu(ref).astype(np.float64), lo, hi)
    sq, ab = (pred_hu - ref_hu) ** 2, np.abs(pred_hu - ref_hu)
    shifted_pred = np.where(mask, pred_hu, lo) - lo
    shifted_ref = np.where(mask, ref_hu, lo) - lo
    smap = ssim_map(shifted_pred, shifted_ref, CT_RANGE_HU)
    per_slice, whole = region_scores(sq, ab, smap, mask, CT_RANGE_HU)
    columns = {
        "psnr_fg": per_slice["psnr"],
        "ssim_fg": per_slice["ssim"],
        "mae_hu_fg": per_slice["mae"],
        "mae_fg": per_slice["mae"] / CT_RANGE_HU,  # [0, 1] units, the tables' common column
    }
    volume = {
        "psnr_fg": whole["psnr"],
        "ssim_fg": whole["ssim"],
        "mae_hu_fg": whole["mae"],
        "mae_fg": whole["mae"] / CT_RANGE_HU,
    }
    return pd.DataFrame(columns), volume


@dataclass(frozen=True)
class Protocol:
    """A named scoring rule: what `score` computes, in words for captions and metrics.json."""

    name: str
    caption: str
    mask: str
    lesion: str | None = None
    hu: bool = False

    def score(
        self, pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, label: np.ndarray
    ) -> tuple[pd.DataFrame, dict[str, float]]:
        if self.hu:
            return score_synthrad_ct(pred, ref, mask)
        return score_mr(pred, ref, mask, label if self.lesion else None)

    def describe(self) -> dict:
        regions = {"fg": self.mask}
        if self.lesion:
            outside = f"{self.mask} outside the {self.lesion}"
            regions |= {"lesion": self.lesion, "nonlesion": outside}
        return {"name": self.name, "caption": self.caption, "regions": regions}


_MR_TEXT = (
    "prediction and reference normalised to [0, 1] by the reference's 0.5/99.5 percentiles "
    "inside the {mask}; PSNR (data range 1), SSIM and MAE inside the {mask}"
)
BRATS = Protocol(
    "brats2023-brasyn",
    "BraTS 2023 (BraSyn) protocol: "
    + _MR_TEXT.format(mask="brain mask")
    + "; SSIM also inside and outside the tumour label (seg > 0).",
    mask="brain mask (non-zero voxels)",
    lesion="tumour label (seg > 0)",
)
ISLES = Protocol(
    "isles2015-brasyn",
    "ISLES 2015 protocol (as BraTS): "
    + _MR_TEXT.format(mask="brain mask")
    + "; SSIM also inside and outside the stroke lesion label (OT > 0).",
    mask="brain mask (non-zero voxels)",
    lesion="stroke lesion label (OT > 0)",
)
SYNTHRAD_CT = Protocol(
    "synthrad2023-hu",
    "SynthRAD 2023 protocol (sCT): predictions mapped back to HU; MAE in HU inside the body "
    "mask; PSNR on HU clipped to [-1024, 3000] with data range 4024 inside the mask; SSIM on "
    "clipped HU (outside the mask set to -1024, shifted to [0, 4024]), averaged over the mask.",
    mask="SynthRAD body mask (mask.nii.gz)",
    hu=True,
)
SYNTHRAD_MR = Protocol(
    "synthrad2023-mr",
    "SynthRAD 2023 MR targets: " + _MR_TEXT.format(mask="body mask") + ".",
    mask="SynthRAD body mask (mask.nii.gz)",
)


def protocol_for(dataset: str | None, target: str) -> Protocol | None:
    """The dataset's protocol for this target modality; None: the generic [0, 1] protocol."""
    if dataset == "synthrad2023":
        return SYNTHRAD_CT if is_ct(target) else SYNTHRAD_MR
    return {"brats2023": BRATS, "isles2015": ISLES}.get(dataset or "")


def protocol_notes(metrics_files: list[Path]) -> str:
    """The distinct protocol captions of the runs in a table, in first-seen order."""
    captions: dict[str, None] = {}
    for path in map(Path, metrics_files):
        caption = (json.loads(path.read_text()).get("protocol") or {}).get("caption")
        if caption:
            captions[caption] = None
    return " ".join(captions)
