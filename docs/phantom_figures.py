"""Figures and numbers of docs/phantom.md: one axial slice of each dataset-shaped phantom beside
its tissue maps, the copy-the-input baseline under each dataset's protocol (whole brain and by
region), and the tissue contrast of each sequence.

    python docs/phantom_figures.py --out docs/images  # a few minutes on one core

Numbers are printed as Markdown tables; the figures are written as PNG.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from dfbk.data.phantom.layouts import make_layout_subject  # noqa: E402
from dfbk.evaluation.metrics import ssim_interior, ssim_map  # noqa: E402
from dfbk.evaluation.protocols import reference_normalise, score_mr  # noqa: E402

PANELS = {
    "brats2023": ("t1n", "t1c", "t2w", "t2f"),
    "isles2015": ("t2f", "t1n", "t2w", "dwi"),
    "synthrad2023": ("t1n", "ct"),
}
TITLES = {"t1n": "T1", "t1c": "T1c", "t2w": "T2", "t2f": "FLAIR", "dwi": "DWI", "ct": "CT (HU)"}
DEMO_SEEDS = {"brats2023": 0, "isles2015": 1, "synthrad2023": 2}  # config/config.yaml
COPY = {"brats2023": [("t1n", "t2f"), ("t1n", "t2w")], "isles2015": [("t2f", "dwi")]}
PURE = 0.8  # a voxel counts as one tissue when that tissue fills >= 80% of it (as the tests)
RATIOS = {"t1n": (("wm", "gm"), ("csf", "wm")), "t2w": (("gm", "wm"), ("csf", "gm")),
          "t2f": (("gm", "wm"), ("csf", "wm"))}  # fmt: skip


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


def copy_ssim_by_region(subject, source: str, target: str) -> dict[str, tuple[float, float]]:
    """Mean of the copy's SSIM map and share of the brain, per region: the band within 3 voxels
    of the skull-stripped edge, the tumour, CSF-holding voxels (> 20 %), grey/white matter."""
    mask = subject.head_mask > 0
    keep = mask.mean(axis=(0, 1)) >= 0.05
    to_slices = lambda v: np.moveaxis(v[:, :, keep], 2, 0)  # noqa: E731
    brain = to_slices(mask)
    src = to_slices(_normalise(subject.images[source], mask))
    ref = to_slices(_normalise(subject.images[target], mask))
    smap = ssim_map(*reference_normalise(src, ref, brain), 1.0)
    inside = brain & ssim_interior(brain.shape)
    edge = inside & ~ndimage.binary_erosion(brain, iterations=3)
    t = {k: to_slices(v) for k, v in subject.tissues.items()}
    lesion = inside & ~edge & ((t["necrosis"] + t["oedema"] + t["enhancing"]) > 0.2)
    csf = inside & ~edge & ~lesion & (t["csf"] > 0.2)
    regions = {"edge": edge, "tumour": lesion, "CSF": csf, "GM/WM": inside & ~(edge | lesion | csf)}
    total = inside.sum()
    return {k: (float(smap[r].mean()), r.sum() / total) for k, r in regions.items() if r.any()}


def tissue_ratios(subject) -> dict[str, float]:
    """Pure-tissue mean ratios per sequence (`RATIOS`), e.g. 't2f GM/WM'."""

    def mean(modality: str, tissue: str) -> float:
        return float(subject.images[modality][subject.tissues[tissue] >= PURE].mean())

    return {
        f"{m} {a.upper()}/{b.upper()}": mean(m, a) / mean(m, b)
        for m, pairs in RATIOS.items()
        for a, b in pairs
    }


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
    rows, regions, ratios, hu = [], [], [], []
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
            if layout == "brats2023":
                regions.append(copy_ssim_by_region(subject, "t1n", "t2f"))
                ratios.append(tissue_ratios(subject))
            if layout == "synthrad2023":
                tissues = ("bone", "gm", "wm", "csf", "fat")
                hu.append(
                    {t: subject.images["ct"][subject.tissues[t] >= PURE].mean() for t in tissues}
                )
    print("| layout | subject | grid | seconds | copy-baseline SSIM (foreground) |")
    print("|---|---|---|---|---|")
    for layout, name, shape, seconds, scores in rows:
        text = ", ".join(f"{k} {v:.3f}" for k, v in scores.items()) or "—"
        print(f"| {layout} | {name} | {'x'.join(map(str, shape))} | {seconds:.1f} | {text} |")
    print("\nBraTS-like T1 copied as FLAIR, SSIM map by region: mean (share of the brain)")
    for k in regions[0]:
        parts = [f"{r[k][0]:.3f} ({r[k][1]:.2f})" for r in regions if k in r]
        print(f"- {k}: " + ", ".join(parts))
    print("\nBraTS-like pure-tissue ratios (range over subjects); SynthRAD-like CT in HU")
    for k in ratios[0]:
        values = [r[k] for r in ratios]
        print(f"- {k}: {min(values):.2f}-{max(values):.2f}")
    for k in hu[0]:
        print(f"- CT {k}: " + ", ".join(f"{h[k]:.1f}" for h in hu))


if __name__ == "__main__":
    main()
