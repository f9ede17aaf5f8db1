"""Per-dataset evaluation protocols: how each dataset's own challenge scores a synthesis.

Every run is scored by two named protocols, side by side, and the table says which columns
follow which:
- a 2-D slice protocol (the DFBK paper's style, `*-slice2d`): per axial slice, SSIM with the
  project's Gaussian window (`dfbk.evaluation.metrics`: sigma 1.5, K1 0.01, K2 0.03, the
  5-pixel slice border left out), volume values pooled over the subject's slices; these are
  the unprefixed columns (`psnr_fg`, `ssim_fg`, ...);
- the challenge's own protocol, recomputed from its published definition
  (`dfbk.evaluation.official`: `synthrad2023-official`, `brasyn-official`), on the 3-D
  volume; columns prefixed `official_`. The phantom has no challenge and only the first.

2-D protocols:
- `slice2d` (the phantom): intensities in [0, 1] as stored; full image, foreground, lesion.
- BraTS 2023 (`brats2023-slice2d`): prediction and reference are normalised together by the
  *reference's* 0.5th/99.5th percentiles inside the brain mask (clip, scale to [0, 1]),
  voxels outside the mask set to 0; PSNR (data range 1), SSIM and MAE inside the brain mask;
  SSIM also inside the tumour label and in the brain outside it.
- ISLES 2015 (`isles2015-slice2d`): the same, with the stroke lesion label as the region.
- SynthRAD 2023, CT target (`synthrad2023-slice2d`): predictions mapped back to HU; MAE in HU
  inside the body mask; PSNR on HU clipped to [-1024, 3000], data range 4024, MSE inside the
  mask; SSIM on clipped HU with voxels outside the mask set to -1024 and shifted by +1024 to
  [0, 4024], data range 4024, averaged over the mask. MR targets of SynthRAD
  (`synthrad2023-mr-slice2d`) are scored like BraTS inside the body mask (no lesion label).
Structure metrics (HFEN, GMSD; `dfbk.evaluation.structure`) are added for every protocol on
the store's [0, 1] intensities, over the foreground and the lesion.
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
from dfbk.evaluation.official import (
    BRASYN_CAPTION,
    SYNTHRAD_CAPTION,
    brasyn_official,
    synthrad_official,
)

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
    """A named scoring rule: what `score` computes, in words for captions and metrics.json.

    `official` names the challenge protocol scored beside it (`official_*` columns), if any.
    """

    name: str
    caption: str
    mask: str
    lesion: str | None = None
    hu: bool = False
    official: str | None = None

    def score(
        self, pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, label: np.ndarray
    ) -> tuple[pd.DataFrame, dict[str, float]]:
        """The 2-D protocol's per-slice frame and volume values of one subject."""
        if self.hu:
            return score_synthrad_ct(pred, ref, mask)
        return score_mr(pred, ref, mask, label if self.lesion else None)

    def score_official(
        self, pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, label: np.ndarray
    ) -> dict[str, float]:
        """The challenge protocol's volume values (`official_*`); {} without one."""
        if self.official == SYNTHRAD_OFFICIAL:
            return synthrad_official(ct_to_hu(pred), ct_to_hu(ref), mask)
        if self.official == BRASYN_OFFICIAL:
            return brasyn_official(pred, ref, mask, label if self.lesion else None)
        return {}

    def describe(self) -> dict:
        regions = {"fg": self.mask}
        if self.lesion:
            outside = f"{self.mask} outside the {self.lesion}"
            regions |= {"lesion": self.lesion, "nonlesion": outside}
        official = None
        if self.official == SYNTHRAD_OFFICIAL:
            official = {"name": SYNTHRAD_OFFICIAL, "caption": SYNTHRAD_CAPTION}
        elif self.official == BRASYN_OFFICIAL:
            official = {
                "name": BRASYN_OFFICIAL,
                "caption": BRASYN_CAPTION.format(lesion=self.lesion or "lesion label"),
            }
        return {"name": self.name, "caption": self.caption, "regions": regions,
                "official": official}  # fmt: skip


SYNTHRAD_OFFICIAL = "synthrad2023-official"
BRASYN_OFFICIAL = "brasyn-official"
GENERIC_NAME = "slice2d"
GENERIC_CAPTION = (
    "slice2d protocol (phantom): intensities in [0, 1] as stored; per axial slice, volume "
    "values pooled over the subject's slices; PSNR with data range 1, SSIM with a Gaussian "
    "window (sigma 1.5, K1 0.01, K2 0.03, 5-pixel slice border excluded), MAE in [0, 1] units."
)
_MR_TEXT = (
    "per axial slice, prediction and reference normalised to [0, 1] by the reference's "
    "0.5/99.5 percentiles inside the {mask}; PSNR (data range 1), 2-D Gaussian SSIM and MAE "
    "inside the {mask}"
)
BRATS = Protocol(
    "brats2023-slice2d",
    "brats2023-slice2d protocol (BraTS 2023): "
    + _MR_TEXT.format(mask="brain mask")
    + "; SSIM also inside and outside the tumour label (seg > 0).",
    mask="brain mask (non-zero voxels)",
    lesion="tumour label (seg > 0)",
    official=BRASYN_OFFICIAL,
)
ISLES = Protocol(
    "isles2015-slice2d",
    "isles2015-slice2d protocol (ISLES 2015, as BraTS): "
    + _MR_TEXT.format(mask="brain mask")
    + "; SSIM also inside and outside the stroke lesion label (OT > 0).",
    mask="brain mask (non-zero voxels)",
    lesion="stroke lesion label (OT > 0)",
    official=BRASYN_OFFICIAL,
)
SYNTHRAD_CT = Protocol(
    "synthrad2023-slice2d",
    "synthrad2023-slice2d protocol (SynthRAD 2023 sCT): predictions mapped back to HU; MAE in "
    "HU inside the body mask; PSNR on HU clipped to [-1024, 3000] with data range 4024 inside "
    "the mask; 2-D Gaussian SSIM per axial slice on clipped HU (outside the mask set to -1024, "
    "shifted to [0, 4024]), averaged over the mask.",
    mask="SynthRAD body mask (mask.nii.gz)",
    hu=True,
    official=SYNTHRAD_OFFICIAL,
)
SYNTHRAD_MR = Protocol(
    "synthrad2023-mr-slice2d",
    "synthrad2023-mr-slice2d protocol (SynthRAD 2023 MR targets; the challenge scores sCT "
    "only): " + _MR_TEXT.format(mask="body mask") + ".",
    mask="SynthRAD body mask (mask.nii.gz)",
)


def protocol_for(dataset: str | None, target: str) -> Protocol | None:
    """The dataset's protocol for this target modality; None: the generic [0, 1] protocol."""
    if dataset == "synthrad2023":
        return SYNTHRAD_CT if is_ct(target) else SYNTHRAD_MR
    return {"brats2023": BRATS, "isles2015": ISLES}.get(dataset or "")


def protocol_notes(metrics_files: list[Path]) -> str:
    """Caption sentences naming the protocol of every column, from the runs' metrics.json.

    The 2-D protocols' captions and the challenge protocols' captions, each once, in first-
    seen order, then which columns follow which and how HFEN/GMSD are computed.
    """
    slice2d: dict[str, None] = {}
    official: dict[str, None] = {}
    structure = False
    for path in map(Path, metrics_files):
        protocol = json.loads(path.read_text()).get("protocol") or {}
        if protocol.get("caption"):
            slice2d[protocol["caption"]] = None
        if (protocol.get("official") or {}).get("caption"):
            official[protocol["official"]["caption"]] = None
        structure |= "structure" in protocol
    parts = [*slice2d]
    if official:
        parts += [*official, "Columns marked [official] follow the challenge protocol named for "
                  "their dataset (— where a dataset has none); all other columns follow the "
                  "dataset's 2-D slice protocol."]  # fmt: skip
    if structure:
        parts.append(
            "HFEN: relative L2 norm of the Laplacian-of-Gaussian (15x15, sigma 1.5) filtered "
            "error; GMSD: gradient magnitude similarity deviation (Prewitt, 2x downsampled, "
            "c = 0.0026); both per axial slice on [0, 1] intensities, lower is better."
        )
    return " ".join(parts)
