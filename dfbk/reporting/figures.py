"""Qualitative comparison figure like the paper's Figure 3.

Top row: source | target | each method's prediction, with that slice's PSNR/SSIM over the
foreground in the corner; bottom row: |prediction - target| per method on one fixed colour
scale (0-0.5), so a brighter map means a larger error in every panel alike. The slice is
chosen by rule, not by eye: the first test subject with a lesion (else the first test
subject), and its slice with the most foreground, lesion slices preferred — so the figure
cannot be cherry-picked per method. Drawn with matplotlib's object API on an Agg canvas (no
display, no global pyplot state); slices are shown with x to the right and anterior up.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dfbk.data.io import atomic_path
from dfbk.data.splits import read_split
from dfbk.data.store import SliceStore
from dfbk.errors import DataError
from dfbk.evaluation.evaluate import load_prediction, parse_direction
from dfbk.evaluation.metrics import psnr, ssim

ERROR_VMAX = 0.5
PANEL_INCHES = 2.2


def pick_subject(store: SliceStore, test_subjects: list[str]) -> str:
    """First test subject with any lesion voxel, else the first test subject."""
    if not test_subjects:
        raise DataError(f"{store.root}: no test subject to draw")
    for subject in test_subjects:
        start, stop = store.subject_range(subject)
        if np.asarray(store.label[start:stop]).any():
            return subject
    return test_subjects[0]


def pick_slice(store: SliceStore, subject: str) -> int:
    """Offset (within the subject) of the slice with most foreground, lesion slices first."""
    start, stop = store.subject_range(subject)
    foreground = (np.asarray(store.mask[start:stop]) > 0).sum(axis=(1, 2))
    has_lesion = (np.asarray(store.label[start:stop]) > 0).any(axis=(1, 2))
    if has_lesion.any():
        foreground = np.where(has_lesion, foreground, -1)
    return int(np.argmax(foreground))


def _show(ax, image: np.ndarray, title: str, **kwargs):
    """imshow an (H, W) store slice with its first axis (x) horizontal, anterior up."""
    handle = ax.imshow(image.T, origin="lower", interpolation="nearest", **kwargs)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return handle


def _draw(images: dict, errors: dict, scores: dict, lesion: np.ndarray, title: str) -> Figure:
    """Lay out the two rows; `images` holds source, target and then each method in order."""
    ncols = len(images)
    fig = Figure(figsize=(PANEL_INCHES * ncols + 0.6, PANEL_INCHES * 2 + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, ncols, squeeze=False)
    heat = None
    for col, (name, image) in enumerate(images.items()):
        _show(axes[0, col], image, name, cmap="gray", vmin=0.0, vmax=1.0)
        if name in scores:
            p, s = scores[name]
            axes[0, col].text(0.03, 0.97, f"PSNR {p:.2f} dB\nSSIM {s:.4f}", color="white",
                              fontsize=7, va="top", ha="left", transform=axes[0, col].transAxes,
                              bbox={"facecolor": "black", "alpha": 0.6, "pad": 2})  # fmt: skip
        if name in errors:
            heat = _show(axes[1, col], errors[name], f"|{name} − target|", cmap="inferno",
                         vmin=0.0, vmax=ERROR_VMAX)  # fmt: skip
        else:
            axes[1, col].set_axis_off()
    if lesion.any():
        axes[0, 1].contour(lesion.T, levels=[0.5], colors="red", linewidths=0.6, origin="lower")
    if heat is not None:
        fig.colorbar(heat, ax=list(axes[1, :]), shrink=0.8, label="absolute error")
    fig.suptitle(title, fontsize=10)
    return fig


def make_comparison_figure(
    store_dir: Path,
    split_path: Path,
    direction: str,
    pred_dirs: dict[str, Path],
    out_png: Path,
    subject: str | None = None,
) -> Path:
    """Draw source | target | methods and their error maps for one slice; write `out_png`.

    pred_dirs: method name -> folder of that run's `{subject}.nii.gz` predictions (the
    evaluate stage's input). PSNR/SSIM in the corners are over the slice's foreground.
    """
    if not pred_dirs:
        raise DataError("no prediction folders given: nothing to compare")
    store = SliceStore(store_dir)
    source_mod, target_mod = parse_direction(direction)
    subject = subject or pick_subject(store, read_split(split_path)["test"])
    start, _ = store.subject_range(subject)
    k = pick_slice(store, subject)
    target = np.asarray(store.images(target_mod)[start + k], dtype=np.float64)
    fg = np.asarray(store.mask[start + k]) > 0
    images = {source_mod: np.asarray(store.images(source_mod)[start + k]), target_mod: target}
    errors, scores = {}, {}
    for method, pred_dir in pred_dirs.items():
        pred = load_prediction(store, Path(pred_dir), subject)[k]
        images[method] = pred
        errors[method] = np.abs(pred - target)
        scores[method] = (psnr(pred, target, mask=fg), ssim(pred, target, mask=fg))
    lesion = np.asarray(store.label[start + k]) > 0
    title = (
        f"{store.meta.get('dataset', '')} {direction}: {subject}, slice {k} "
        "(PSNR/SSIM over the foreground)"
    )
    fig = _draw(images, errors, scores, lesion, title)
    out_png = Path(out_png)
    tmp = atomic_path(out_png)
    try:
        fig.savefig(tmp, format="png", dpi=150)
        os.replace(tmp, out_png)
    finally:
        tmp.unlink(missing_ok=True)
    return out_png
