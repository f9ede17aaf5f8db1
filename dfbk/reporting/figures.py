"""Qualitative comparison figure like the paper's Figure 3, for several slices and every seed.

Per chosen slice and per seed, two rows: source | target | each method's prediction of that
seed, with that slice's PSNR/SSIM over the foreground in the corner; below, |prediction -
target| per method on one fixed colour scale (0-0.5), so a brighter map means a larger error
in every panel alike. Subject and slices are chosen by rule, not by eye, so the figure cannot
be cherry-picked per method: the first test subject with a lesion (else the first test
subject); its slice with the largest lesion area, its slice with the most foreground (anatomy),
and slices far from those along the axis that still hold at least half that foreground. Drawn
with matplotlib's object API on an Agg canvas (no display, no global pyplot state) and written
as PNG and PDF; slices are shown with x to the right and anterior up.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dfbk.data.io import atomic_path
from dfbk.data.outputs import check_file_outputs
from dfbk.data.slices.splits import read_split
from dfbk.data.slices.store import SliceStore
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


ANATOMY_FRACTION = 0.5  # anatomy slices hold at least half the subject's largest foreground


def pick_slices(store: SliceStore, subject: str, count: int = 3) -> list[tuple[int, str]]:
    """Up to `count` (offset within the subject, reason) pairs, distinct, in this order:

    the largest lesion area (when the subject has a lesion), the most foreground (anatomy;
    merged into the first when it is the same slice), then, among slices with at least half
    that foreground (so not a sliver at the top of the head), those farthest along the axis
    from the slices already chosen. Ties go to the first slice, so the choice is reproducible.
    """
    start, stop = store.subject_range(subject)
    foreground = (np.asarray(store.mask[start:stop]) > 0).sum(axis=(1, 2))
    lesion = (np.asarray(store.label[start:stop]) > 0).sum(axis=(1, 2))
    best = int(np.argmax(foreground))
    chosen: list[tuple[int, str]] = []
    if lesion.any():
        k = int(np.argmax(lesion))
        chosen.append((k, "largest lesion" + (", most foreground" if k == best else "")))
    if best not in {k for k, _ in chosen}:
        chosen.append((best, "most foreground"))
    candidates = np.flatnonzero(foreground >= max(1, ANATOMY_FRACTION * foreground[best]))
    while len(chosen) < count:
        taken = np.array([k for k, _ in chosen])
        free = np.setdiff1d(candidates, taken)
        if free.size == 0:
            break
        distance = np.abs(free[:, None] - taken[None, :]).min(axis=1)
        chosen.append((int(free[np.argmax(distance)]), "anatomy away from the others"))
    return chosen[:count]


def _show(ax, image: np.ndarray, title: str, **kwargs):
    """imshow an (H, W) store slice with its first axis (x) horizontal, anterior up."""
    handle = ax.imshow(image.T, origin="lower", interpolation="nearest", **kwargs)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return handle


def _corner(ax, text: str) -> None:
    box = {"facecolor": "black", "alpha": 0.6, "pad": 2}
    ax.text(0.03, 0.97, text, color="white", fontsize=7, va="top", ha="left",
            transform=ax.transAxes, bbox=box)  # fmt: skip


def _draw(panels: list[dict], methods: list[str], title: str) -> Figure:
    """Two rows per panel (slice x seed): images, then error maps; columns source, target, methods.

    Each panel: {"label", "source", "target", "lesion", "preds": {method: (H, W)},
    "scores": {method: (psnr, ssim)}, "first": whether to draw source and target}.
    """
    ncols = 2 + len(methods)
    nrows = 2 * len(panels)
    fig = Figure(
        figsize=(PANEL_INCHES * ncols + 0.9, PANEL_INCHES * nrows + 0.4), layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    heat = None
    for row, panel in enumerate(panels):
        top, bottom = axes[2 * row], axes[2 * row + 1]
        for ax in (*top[:2], *bottom[:2]):
            ax.set_axis_off()
        if panel["first"]:
            _show(top[0], panel["source"], panel["names"][0], cmap="gray", vmin=0.0, vmax=1.0)
            _show(top[1], panel["target"], panel["names"][1], cmap="gray", vmin=0.0, vmax=1.0)
            if panel["lesion"].any():
                top[1].contour(panel["lesion"].T, levels=[0.5], colors="red", linewidths=0.6,
                               origin="lower")  # fmt: skip
        top[0].text(-0.08, 0.5, panel["label"], rotation=90, va="center", ha="right",
                    fontsize=8, transform=top[0].transAxes)  # fmt: skip
        for col, method in enumerate(methods, start=2):
            if method not in panel["preds"]:
                top[col].set_axis_off()
                bottom[col].set_axis_off()
                continue
            pred = panel["preds"][method]
            _show(top[col], pred, method, cmap="gray", vmin=0.0, vmax=1.0)
            p, s = panel["scores"][method]
            _corner(top[col], f"PSNR {p:.2f} dB\nSSIM {s:.4f}")
            heat = _show(bottom[col], np.abs(pred - panel["target"]), f"|{method} − target|",
                         cmap="inferno", vmin=0.0, vmax=ERROR_VMAX)  # fmt: skip
    if heat is not None:
        fig.colorbar(heat, ax=list(axes[:, -1]), shrink=0.5, label="absolute error")
    fig.suptitle(title, fontsize=10)
    return fig


FORMATS = ("png", "pdf")


def save_figure(fig: Figure, out: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write `fig` beside `out` in each format (same stem), each atomically (temporary, rename)."""
    written = []
    for fmt in formats:
        path = Path(out).with_suffix(f".{fmt}")
        tmp = atomic_path(path)
        try:
            fig.savefig(tmp, format=fmt, dpi=150)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(path)
        fig.set_layout_engine("none")  # keep the solved layout: solving it is ~3/4 of a save
    return written


def _by_seed(pred_dirs: dict) -> dict[int | None, dict[str, Path]]:
    """{seed: {method: folder}} from {method: folder} (one unnamed seed) or {method: {seed:
    folder}}; methods keep their given order."""
    seeds: dict[int | None, dict[str, Path]] = {}
    for method, given in pred_dirs.items():
        for seed, folder in given.items() if isinstance(given, dict) else [(None, given)]:
            seeds.setdefault(seed, {})[method] = Path(folder)
    return dict(sorted(seeds.items(), key=lambda item: -1 if item[0] is None else item[0]))


def make_comparison_figure(
    store_dir: Path,
    split_path: Path,
    direction: str,
    pred_dirs: dict[str, Path] | dict[str, dict[int, Path]],
    out_png: Path,
    subject: str | None = None,
    slices: int = 3,
    formats: tuple[str, ...] = FORMATS,
) -> Path:
    """Draw source | target | methods and their error maps for the chosen slices and every
    seed; write `out_png` and the other `formats` beside it (same stem).

    pred_dirs: method name -> folder of that run's `{subject}.nii.gz` predictions (one seed),
    or method -> {seed: folder}. PSNR/SSIM in the corners are over the slice's foreground.
    """
    if not pred_dirs:
        raise DataError("no prediction folders given: nothing to compare")
    formats = tuple(dict.fromkeys((Path(out_png).suffix.lstrip(".") or "png", *formats)))
    folders = [f for runs in _by_seed(pred_dirs).values() for f in runs.values()]
    inputs = [("slice store", store_dir), ("split", split_path)]
    inputs += [("predictions folder", folder) for folder in folders]
    check_file_outputs([Path(out_png).with_suffix(f".{f}") for f in formats], "figure", inputs)
    store = SliceStore(store_dir)
    source_mod, target_mod = parse_direction(direction)
    subject = subject or pick_subject(store, read_split(split_path)["test"])
    start, _ = store.subject_range(subject)
    seeds = _by_seed(pred_dirs)
    methods = list(pred_dirs)
    volumes = {
        (seed, m): load_prediction(store, folder, subject)
        for seed, runs in seeds.items()
        for m, folder in runs.items()
    }
    panels = []
    for k, why in pick_slices(store, subject, slices):
        target = np.asarray(store.images(target_mod)[start + k], dtype=np.float64)
        fg = np.asarray(store.mask[start + k]) > 0
        for position, (seed, runs) in enumerate(seeds.items()):
            preds = {m: volumes[seed, m][k] for m in runs}
            panels.append({
                "label": f"slice {k} ({why})" + ("" if seed is None else f", seed {seed}"),
                "names": (source_mod, target_mod),
                "source": np.asarray(store.images(source_mod)[start + k]),
                "target": target,
                "lesion": np.asarray(store.label[start + k]) > 0,
                "preds": preds,
                "scores": {m: (psnr(v, target, mask=fg), ssim(v, target, mask=fg))
                           for m, v in preds.items()},
                "first": position == 0,
            })  # fmt: skip
    title = (
        f"{store.meta.get('dataset', '')} {direction}: test subject {subject} "
        "(PSNR/SSIM over the foreground)"
    )
    fig = _draw(panels, methods, title)
    return save_figure(fig, Path(out_png), formats)[0]
