"""Figures and numbers of docs/phantom.md: one axial slice of each dataset-shaped phantom beside
its tissue maps, and the copy-the-input baseline under each dataset's protocol.

    python docs/phantom_figures.py --out docs/images  # a few minutes on one core

Numbers are printed as a Markdown table; the figures are written as PNG.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dfbk.data.phantom_layouts import make_layout_subject  # noqa: E402
from dfbk.evaluation.protocols import score_mr  # noqa: E402

PANELS = {
    "brats2023": ("t1n", "t1c", "t2w", "t2f"),
    "isles2015": ("t2f", "t1n", "t2w", "dwi"),
    "synthrad2023": ("t1n", "ct"),
}
TITLES = {"t1n": "T1", "t1c": "T1c", "t2w": "T2", "t2f": "FLAIR", "dwi": "DWI", "ct": "CT (HU)"}
DEMO_SEEDS = {"brats2023": 0, "isles2015": 1, "synthrad2023": 2}  # config/config.yaml
COPY = {"brats2023": [("t1n", "t2f"), ("t1n", "t2w")], "isles2015": [("t2f", "dwi")]}


def _normalise(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(volume[mask], (0.5, 99.5))
    return np.where(mask, np.clip((volume - lo) / (hi - lo), 0, 1), 0.0)


def copy_ssim(subject, source: str, target: str) -> float:
    """Foreground SSIM of the source copied as the target, per axial slice (BraTS protocol)."""
    mask = subject.head_mask > 0
    keep = mask.mean(axis=(0, 1)) >= 0.05
    to_slices = lambda v: np.moveaxis(v[:, :, keep], 2, 0)  # noqa: E731
    src = to_slices(_normalise(subject.images[source], mask))
    ref = to_slices(_normalise(subject.images[target], mask))
    _, volume = score_mr(src, ref, to_slices(mask), to_slices(subject.label > 0))
    return volume["ssim_fg"]


def figure(layout: str, subject, out: Path) -> None:
    """Images of one axial slice (top) and its tissue fractions (bottom)."""
    z = int(np.argmax((subject.label > 0).sum(axis=(0, 1)))) if subject.label.any() else None
    z = subject.label.shape[2] // 2 + 5 if z is None else z
    images = PANELS[layout]
    tissue = subject.tissues
    lesion = sum(tissue[t] for t in ("necrosis", "oedema", "enhancing", "stroke"))
    maps = {"GM": tissue["gm"], "WM": tissue["wm"], "CSF": tissue["csf"], "lesion": lesion}
    if layout == "synthrad2023":
        maps["bone"] = tissue["bone"]
    columns = max(len(images), len(maps))
    fig, axes = plt.subplots(2, columns, figsize=(2.4 * columns, 5.0))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, modality in zip(axes[0], images, strict=False):
        image = subject.images[modality][:, :, z].T
        if modality == "ct":
            ax.imshow(image, origin="lower", cmap="gray", vmin=-200, vmax=1200)
        else:
            ax.imshow(image, origin="lower", cmap="gray", vmax=np.percentile(image, 99.5))
        ax.set_title(TITLES[modality])
    for ax, (name, fraction) in zip(axes[1], maps.items(), strict=False):
        ax.imshow(fraction[:, :, z].T, origin="lower", cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"{name} fraction")
    fig.suptitle(f"{layout}-like phantom {subject.name}, axial slice {z}")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--subjects", type=int, default=8, help="BraTS-like subjects (demo: 8)")
    parser.add_argument("--voxel-mm", type=float, default=2.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for layout in PANELS:
        count = args.subjects if layout == "brats2023" else 2
        for index in range(count):
            start = time.perf_counter()
            seed = DEMO_SEEDS[layout]
            subject = make_layout_subject(layout, index, seed=seed, voxel_mm=args.voxel_mm)
            seconds = time.perf_counter() - start
            if index == 0:
                figure(layout, subject, args.out / f"phantom_{layout}.png")
            scores = {f"{s}->{t}": copy_ssim(subject, s, t) for s, t in COPY.get(layout, [])}
            rows.append((layout, subject.name, subject.label.shape, seconds, scores))
    print("| layout | subject | grid | seconds | copy-baseline SSIM (foreground) |")
    print("|---|---|---|---|---|")
    for layout, name, shape, seconds, scores in rows:
        text = ", ".join(f"{k} {v:.3f}" for k, v in scores.items()) or "—"
        print(f"| {layout} | {name} | {'x'.join(map(str, shape))} | {seconds:.1f} | {text} |")


if __name__ == "__main__":
    main()
