"""evaluate: score one run's test predictions against the slice store, per slice and per subject.

Inputs (docs/design.md, data flow 5-6): `pred_dir/{subject}.nii.gz`, float32 (H, W, S) in [0, 1] on
the subject's prepared grid (affine `store.subject_affine(subject)`), where volume[..., k] is
store slice `start + k`. The reference is the store's target modality, (S, H, W).

Outputs in `out_dir`, each written atomically:
- `slices.csv`: subject, store_index, slice (axial index in the canonical volume), then
  `{metric}_{region}` for every slice;
- `subjects.csv`: subject, then `{metric}_{region}`, computed on the whole subject volume
  (PSNR from the volume MSE, SSIM averaged over the region pixels of all slices, MAE over the
  region voxels) — not a mean of slice values, so slices with little foreground weigh little;
  for BraTS, ISLES and SynthRAD CT also the challenge's own volume scores (`official_*`);
  HFEN and GMSD (`hfen_*`, `gmsd_*`, foreground and lesion) for every dataset;
- `metrics.json`: the run info, the protocol used, mean/std/n over subjects, and FID (or why
  it is absent).
A prediction outside [0, 1] (the data range PSNR and SSIM assume, and the contract of
docs/external.md) by more than float32 rounding (`RANGE_TOLERANCE`) is refused, naming the file
and the range found; within it, values are clipped onto [0, 1]. The test subjects' reference,
mask and label slices must match the digests the store records (`SliceStore.verify`). The
phantom is scored by the generic protocol below; BraTS, ISLES and SynthRAD by their own
(`dfbk.evaluation.protocols`), named in metrics.json and the table caption.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from dfbk.data.io import load_image, write_text
from dfbk.data.normalise import ct_to_hu, is_ct
from dfbk.data.slices.splits import read_split
from dfbk.data.slices.store import SliceStore
from dfbk.errors import DataError
from dfbk.evaluation.metrics import PROTOCOL, ssim_map
from dfbk.evaluation.protocols import (
    GENERIC_CAPTION,
    GENERIC_NAME,
    Protocol,
    protocol_for,
    region_scores,
)
from dfbk.evaluation.structure import PROTOCOL as STRUCTURE_PROTOCOL
from dfbk.evaluation.structure import structure_scores

METRICS = ("psnr", "ssim", "mae")
REGIONS = {
    "full": "every pixel of the prepared slice",
    "fg": "foreground (head/body) mask of the slice store",
    "lesion": "lesion label > 0; NaN where the slice or subject has no lesion voxel",
}
HU_SCALE_NOTE = "mae_hu_fg: MAE in Hounsfield units over fg, after mapping [0, 1] back to HU"
# A prediction may leave [0, 1] by float32 rounding only: a value computed as a rescale
# ((x + 1) / 2, x * slope + intercept, a weighted mean of tiles) carries a few roundings of at
# most one ulp of 1.0 (float32 eps) each. Four such ulps bound that; more is a range error,
# e.g. a tanh output in [-1, 1] never mapped back.
RANGE_TOLERANCE = 4 * float(np.finfo(np.float32).eps)


def parse_direction(direction: str) -> tuple[str, str]:
    """'t1n-to-t2w' -> ('t1n', 't2w')."""
    parts = direction.split("-to-")
    if len(parts) != 2 or not all(parts):
        raise DataError(f"direction '{direction}' is not of the form '{{source}}-to-{{target}}'")
    return parts[0], parts[1]


def load_prediction(store: SliceStore, pred_dir: Path, subject: str) -> np.ndarray:
    """The subject's prediction as (S, H, W) float64 in [0, 1], checked against the store.

    The array is taken in its stored axis order (no reorientation): the contract is
    volume[..., k] <-> store slice start + k. A wrong shape or affine means a prediction made
    for another grid or subject, and values outside [0, 1] beyond `RANGE_TOLERANCE` one made
    in another range, so either is refused with the file named.
    """
    path = Path(pred_dir) / f"{subject}.nii.gz"
    if not path.exists():
        raise DataError(f"{path}: prediction for test subject '{subject}' is missing")
    image = load_image(path)
    data = np.asarray(image.get_fdata(dtype=np.float32), dtype=np.float64)
    start, stop = store.subject_range(subject)
    expected = (*store.size, stop - start)
    if data.shape != expected:
        raise DataError(f"{path}: prediction shape {data.shape}, expected (H, W, S) = {expected}")
    if not np.allclose(image.affine, store.subject_affine(subject), atol=1e-3):
        raise DataError(f"{path}: affine differs from the slice store's grid for '{subject}'")
    if not np.isfinite(data).all():
        raise DataError(f"{path}: {int((~np.isfinite(data)).sum())} voxels are NaN or infinite")
    low, high = float(data.min()), float(data.max())
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise DataError(
            f"{path}: prediction values span [{low:.6g}, {high:.6g}], outside the contract's "
            "[0, 1] (map the method's output range back to [0, 1]; docs/external.md)"
        )
    return np.clip(np.moveaxis(data, -1, 0), 0.0, 1.0)  # rounding only (RANGE_TOLERANCE)


def _region_scores(
    sq: np.ndarray, ab: np.ndarray, smap: np.ndarray, region: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-slice arrays and whole-volume values of PSNR, SSIM and MAE over one region."""
    return region_scores(sq, ab, smap, region, data_range=1.0)


def score_subject(
    pred: np.ndarray, ref: np.ndarray, regions: dict[str, np.ndarray], ct_target: bool
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Metrics of one subject: a (S,)-row frame of slice values and a dict of volume values."""
    sq, ab = (pred - ref) ** 2, np.abs(pred - ref)
    smap = ssim_map(pred, ref)
    slice_cols: dict[str, np.ndarray] = {}
    volume: dict[str, float] = {}
    for name, region in regions.items():
        per_slice, whole = _region_scores(sq, ab, smap, region)
        for metric in METRICS:
            slice_cols[f"{metric}_{name}"] = per_slice[metric]
            volume[f"{metric}_{name}"] = whole[metric]
    if ct_target:
        hu_err = np.abs(ct_to_hu(pred).astype(np.float64) - ct_to_hu(ref).astype(np.float64))
        fg = regions["fg"]
        n = fg.sum(axis=(1, 2))
        hu_sum = (hu_err * fg).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            slice_cols["mae_hu_fg"] = hu_sum / n
        volume["mae_hu_fg"] = float(hu_sum.sum() / n.sum()) if n.sum() else math.nan
    return pd.DataFrame(slice_cols), volume


def summarise(subjects: pd.DataFrame, columns: list[str]) -> dict[str, dict]:
    """mean, std (ddof 1; 0 for a single subject) and n over subjects, skipping NaN."""
    summary = {}
    for col in columns:
        values = subjects[col].to_numpy(dtype=float)
        values = values[~np.isnan(values)]
        n = int(values.size)
        summary[col] = {
            "mean": float(values.mean()) if n else None,
            "std": float(values.std(ddof=1)) if n > 1 else (0.0 if n else None),
            "n": n,
        }
    return summary


def _protocol(store: SliceStore, target: str, ct_target: bool) -> dict:
    protocol = {
        "name": GENERIC_NAME,
        "caption": GENERIC_CAPTION,
        **PROTOCOL,
        "normalisation": store.meta["normalisation"][target],
        "regions": dict(REGIONS),
        "prediction_clip": [0.0, 1.0],
        "per_subject": "pooled over all slices of the subject volume",
    }
    if ct_target:
        protocol["mae_hu"] = HU_SCALE_NOTE
    return protocol


def _score(
    store: SliceStore,
    protocol: Protocol | None,
    subject: str,
    pred: np.ndarray,
    ref: np.ndarray,
    ct_target: bool,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """One subject's scores by the dataset's protocol, or the generic [0, 1] one (phantom)."""
    start, stop = store.subject_range(subject)
    mask = np.asarray(store.mask[start:stop]) > 0
    label = np.asarray(store.label[start:stop]) > 0
    if protocol is None:
        regions = {"full": np.ones(ref.shape, dtype=bool), "fg": mask, "lesion": label}
        frame, volume = score_subject(pred, ref, regions, ct_target)
    else:
        try:
            frame, volume = protocol.score(pred, ref, mask, label)
            volume |= protocol.score_official(pred, ref, mask, label)
        except DataError as err:
            raise DataError(f"{store.root}: subject '{subject}': {err}") from err
    per_slice, whole = structure_scores(pred, ref, {"fg": mask, "lesion": label})
    for column, values in per_slice.items():
        frame[column] = values
    return frame, volume | whole


def evaluate_predictions(
    store_dir: Path,
    pred_dir: Path,
    split_path: Path,
    direction: str,
    out_dir: Path,
    run_info: dict,
    fid: bool | None = None,
) -> dict:
    """Score every test subject's prediction; write slices.csv, subjects.csv, metrics.json.

    The protocol follows the store's dataset (`dfbk.evaluation.protocols`; the generic one
    for the phantom). FID over all test slices is added when `fid` is True, or with None when
    pytorch-fid's Inception weights are present (`dfbk.evaluation.fid`); otherwise metrics.json
    says why it is absent. Returns the metrics.json content:
    {**run_info, "protocol", "summary", "n_subjects", "fid"}.
    """
    from dfbk.data.outputs import check_file_outputs
    from dfbk.evaluation.fid import FidAccumulator, fid_unavailable_reason

    outputs = [Path(out_dir) / name for name in ("slices.csv", "subjects.csv", "metrics.json")]
    inputs = {"slice store": store_dir, "predictions folder": pred_dir, "split": split_path}
    check_file_outputs(outputs, "evaluate", inputs)  # never into the store or the predictions
    store = SliceStore(store_dir)
    _, target = parse_direction(direction)
    reference = store.images(target)
    ct_target = is_ct(target)
    protocol = protocol_for(store.meta.get("dataset"), target)
    test = read_split(split_path)["test"]
    if not test:
        raise DataError(f"{split_path}: the test split is empty")
    store.verify(test, [target, "mask", "label"])  # what is scored against, as prepared
    reason = fid_unavailable_reason() if fid is not False else "FID disabled for this run"
    accumulator = FidAccumulator() if reason is None else None
    slice_index = store.manifest.set_index("index")["slice"]
    slice_frames, subject_rows = [], []
    for subject in test:
        start, stop = store.subject_range(subject)
        pred = load_prediction(store, pred_dir, subject)
        ref = np.asarray(reference[start:stop], dtype=np.float64)
        frame, volume = _score(store, protocol, subject, pred, ref, ct_target)
        if accumulator is not None:
            accumulator.add(ref, pred)
        frame.insert(0, "slice", slice_index.loc[start : stop - 1].to_numpy())
        frame.insert(0, "store_index", np.arange(start, stop))
        frame.insert(0, "subject", subject)
        slice_frames.append(frame)
        subject_rows.append({"subject": subject, **volume})
    slices, subjects = pd.concat(slice_frames, ignore_index=True), pd.DataFrame(subject_rows)
    metric_cols = [c for c in subjects.columns if c != "subject"]
    result = {
        "dataset": store.meta.get("dataset"),
        "direction": direction,
        **run_info,
        "n_subjects": len(test),
        "protocol": (
            _protocol(store, target, ct_target)
            if protocol is None
            else {**protocol.describe(), "normalisation": store.meta["normalisation"][target]}
        )
        | {"structure": STRUCTURE_PROTOCOL},
        "summary": summarise(subjects, metric_cols),
        "fid": {"value": None, "reason": reason} if accumulator is None else accumulator.result(),
    }
    out_dir = Path(out_dir)
    write_text(out_dir / "slices.csv", slices.to_csv(index=False))
    write_text(out_dir / "subjects.csv", subjects.to_csv(index=False))
    write_text(out_dir / "metrics.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result
