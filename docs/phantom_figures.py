"""Figures and numbers of docs/phantom.md: one axial slice of each dataset-shaped phantom beside
its tissue maps, the copy-the-input baseline under each dataset's protocol (whole brain and by
region), the tissue and lesion contrast of each sequence beside the ranges the cited literature
gives, lesion volumes, histogram peaks, vessels, and the tissue-clustering ratios that compare
with one real BraTS case.

    python docs/phantom_figures.py --out docs/images  # a few minutes on one core
    python docs/phantom_figures.py --segmentation    # the downstream segmentation check only

Numbers are printed as Markdown tables; the figures are written as PNG.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage, signal  # noqa: E402
from scipy.cluster.vq import kmeans2  # noqa: E402

from dfbk.data.phantom.anatomy import make_phantom_anatomy  # noqa: E402
from dfbk.data.phantom.layouts import make_layout_subject  # noqa: E402
from dfbk.data.phantom.tissues import (  # noqa: E402
    lesion_literature_ratio_range,
    literature_ratio_range,
)
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
RATIOS = [("t1n", "wm", "gm"), ("t1n", "csf", "wm"), ("t1c", "wm", "gm"), ("t2w", "gm", "wm"),
          ("t2w", "csf", "gm"), ("t2f", "gm", "wm"), ("t2f", "csf", "wm")]  # fmt: skip
LESIONS = [("t1n", "necrosis", 1), ("t1c", "enhancing", 3), ("t2w", "necrosis", 1),
           ("t2f", "necrosis", 1), ("t1n", "oedema", 2), ("t2w", "oedema", 2),
           ("t2f", "oedema", 2)]  # fmt: skip
# One real BraTS 2023 case (issue 23: raw intensities, the same tissue clustering on both): a
# pointer, not a target.
REAL_CASE = {"t2w CSF/GM": 2.55, "t2w GM/WM": 1.16, "t2f CSF/WM": 0.58, "t2w oedema/WM": 1.35,
             "t2f oedema/WM": 1.49, "t1n necrosis/WM": 0.91, "oedema ml": 11.0}  # fmt: skip


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


def interior(subject, tissue: str) -> np.ndarray:
    """Interior of a pure tissue (>= 80 % of the voxel and of its 6 neighbours), away from the
    lesion: the tests' measure, little pulled by blur and partial volume."""
    near_lesion = ndimage.binary_dilation(subject.label > 0, iterations=3)
    return ndimage.binary_erosion(subject.tissues[tissue] >= PURE) & ~near_lesion


def tissue_ratios(subject) -> dict[str, tuple[float, tuple[float, float] | None]]:
    """Pure-tissue mean ratios per sequence (`RATIOS`) and the literature range of each."""
    t1n_3d = subject.protocol["t1n"].kind == "irgre"
    out = {}
    for m, a, b in RATIOS:
        ratio = subject.images[m][interior(subject, a)].mean()
        ratio /= subject.images[m][interior(subject, b)].mean()
        nulled = m == "t2f" and a == "csf"
        known = None if nulled else literature_ratio_range(m, a, b, subject.field_t, t1n_3d)
        out[f"{m} {a.upper()}/{b.upper()}"] = (float(ratio), known)
    return out


def lesion_ratios(subject) -> dict[str, tuple[float, tuple[float, float] | None]]:
    """Mean over each BraTS label / interior white matter, and the literature range (`LESIONS`)."""
    t1n_3d = subject.protocol["t1n"].kind == "irgre"
    wm = interior(subject, "wm")
    out = {}
    for m, lesion, label in LESIONS:
        ratio = subject.images[m][subject.label == label].mean() / subject.images[m][wm].mean()
        known = (
            lesion_literature_ratio_range(m, lesion, subject.field_t, t1n_3d)
            if lesion != "enhancing"
            else None
        )
        out[f"{m} {lesion}/WM"] = (float(ratio), known)
    return out


def lesion_volumes(subject, voxel_mm: float) -> dict[str, float]:
    ml = voxel_mm**3 / 1000
    return {n: float((subject.label == k).sum() * ml) for k, n in LABEL_NAMES.items()}


LABEL_NAMES = {1: "necrosis", 2: "oedema", 3: "enhancing"}


def cluster_ratios(subject) -> dict[str, float]:
    """Ratios between three tissue clusters (k-means on the T1 and T2 intensities of the brain
    away from the tumour, ordered by T1: CSF, GM, WM), the way one real case was measured."""
    keep = (subject.head_mask > 0) & ~ndimage.binary_dilation(subject.label > 0, iterations=3)
    x = np.stack([subject.images[m][keep].astype(np.float64) for m in ("t1n", "t2w")], 1)
    x = (x - x.mean(0)) / x.std(0)
    start = np.stack(
        [np.percentile(x[:, 0], [10, 50, 90]), np.percentile(x[:, 1], [90, 50, 10])], 1
    )
    centres, labels = kmeans2(x, start, minit="matrix", seed=np.random.default_rng(0))
    order = np.argsort(centres[:, 0])
    classes = {n: labels == order[i] for i, n in enumerate(("csf", "gm", "wm"))}
    mean = {
        (m, n): float(subject.images[m][keep][c].mean())
        for m in ("t1n", "t2w", "t2f")
        for n, c in classes.items()
    }
    return {
        "t1n WM/GM": mean["t1n", "wm"] / mean["t1n", "gm"],
        "t2w CSF/GM": mean["t2w", "csf"] / mean["t2w", "gm"],
        "t2w GM/WM": mean["t2w", "gm"] / mean["t2w", "wm"],
        "t2f CSF/WM": mean["t2f", "csf"] / mean["t2f", "wm"],
    }


def histogram_peaks(subject, modality: str) -> tuple[int, bool]:
    """Peaks of the brain histogram (prominence >= 5 % of the highest; lesion excluded), and
    whether one lies within 6 % of each of the grey- and white-matter interior means (the test)."""
    brain = (subject.head_mask > 0) & ~ndimage.binary_dilation(subject.label > 0, iterations=3)
    values = subject.images[modality][brain]
    counts, edges = np.histogram(values, 128, range=tuple(np.percentile(values, (0.5, 99.5))))
    counts = ndimage.gaussian_filter1d(counts.astype(float), 1.5)
    peaks, _ = signal.find_peaks(counts, prominence=0.05 * counts.max())
    centres = 0.5 * (edges[1:] + edges[:-1])[peaks]
    both = all(
        np.any(np.abs(centres / subject.images[modality][interior(subject, t)].mean() - 1) < 0.06)
        for t in ("gm", "wm")
    )
    return len(peaks), bool(both)


def vessel_numbers(subject, voxel_mm: float) -> tuple[float, float, float]:
    """Vessel volume (ml), and vessel / interior white matter on T1c and on FLAIR."""
    vessel = subject.tissues.get("vessel", np.zeros(1))
    mask = vessel >= 0.5
    if not mask.any():
        return 0.0, float("nan"), float("nan")
    wm = interior(subject, "wm")
    return (
        float(vessel.sum() * voxel_mm**3 / 1000),
        float(subject.images["t1c"][mask].mean() / subject.images["t1c"][wm].mean()),
        float(subject.images["t2f"][mask].mean() / subject.images["t2f"][wm].mean()),
    )


def _span(values) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


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
    if tissue["vessel"].any():
        maps["vessel"] = tissue["vessel"]
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


def segmentation_check(voxel_mm: float) -> None:
    """The downstream segmentation check of docs/phantom.md on the demo's BraTS-like store (7
    subjects, 96 x 96, the config's split): a segmenter trained on the real FLAIR of the training
    split, Dice on the test split's real FLAIR, the same blurred, and T1 copied as FLAIR."""
    from dfbk.data.phantom.layouts import generate_layout_dataset
    from dfbk.data.slices.prepare import prepare_dataset
    from dfbk.data.slices.splits import compute_split
    from dfbk.data.slices.store import SliceStore
    from dfbk.evaluation.segmentation import dice_table, real_targets, train_segmenter

    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "raw", Path(tmp) / "store"
        generate_layout_dataset("brats2023", raw, 7, DEMO_SEEDS["brats2023"], voxel_mm)
        prepare_dataset("brats2023", raw, out, ["t1n", "t2f"], (96, 96), min_foreground=0.22)
        store = SliceStore(out)
        split = compute_split(store.subjects, {"train": 0.58, "val": 0.14, "test": 0.28}, 0)
        start = time.process_time()
        model = train_segmenter(store, split["train"], "t2f", [1, 2, 3], 200)
        print(f"segmenter: {len(split['train'])} training subjects, {len(split['test'])} test, "
              f"{time.process_time() - start:.0f} s of CPU")  # fmt: skip
        test = split["test"]
        real = real_targets(store, test, "t2f")
        blurred = {k: ndimage.gaussian_filter(v, (0, 1.5, 1.5)) for k, v in real.items()}
        rows = {
            "real FLAIR (ceiling)": real,
            "real FLAIR blurred (Gaussian, sigma 1.5 pixels)": blurred,
            "T1 copied (identity)": real_targets(store, test, "t1n"),
        }
        print("| prediction | necrosis | oedema | enhancing |\n|---|---|---|---|")
        for name, volumes in rows.items():
            table = dice_table(model, [1, 2, 3], store, test, volumes)
            cells = []
            for column in ("dice_necrosis", "dice_oedema", "dice_enhancing"):
                values = table[column].to_numpy(dtype=float)
                cells.append(f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}")
            print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--subjects", type=int, default=8, help="BraTS-like subjects (demo: 8)")
    parser.add_argument("--voxel-mm", type=float, default=2.0)
    parser.add_argument("--segmentation", action="store_true", help="the segmentation check only")
    args = parser.parse_args()
    if args.segmentation:
        segmentation_check(args.voxel_mm)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rows, regions, hu, brats = [], [], [], []
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
                brats.append(
                    {
                        "name": subject.name,
                        "setting": f"{subject.field_t:g} T, T1 "
                        + ("3-D GRE" if subject.protocol["t1n"].kind == "irgre" else "2-D SE"),
                        "pure": tissue_ratios(subject),
                        "lesion": lesion_ratios(subject),
                        "volume": lesion_volumes(subject, args.voxel_mm),
                        "cluster": cluster_ratios(subject),
                        "peaks": {m: histogram_peaks(subject, m) for m in ("t1n", "t2w")},
                        "vessel": vessel_numbers(subject, args.voxel_mm),
                    }
                )
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
    for pair in COPY["brats2023"]:
        key = "->".join(pair)
        values = [scores[key] for layout, *_, scores in rows if layout == "brats2023"]
        print(f"- BraTS-like {key}: mean {np.mean(values):.3f} ({_span(values)})")
    print("\nBraTS-like T1 copied as FLAIR, SSIM map by region: mean (share of the brain)")
    for k in regions[0]:
        parts = [f"{r[k][0]:.3f} ({r[k][1]:.2f})" for r in regions if k in r]
        print(f"- {k}: " + ", ".join(parts))
    print("\nBraTS-like subjects: field strength and native T1")
    print(", ".join(f"{b['name'][-9:-4]} {b['setting']}" for b in brats))
    print("\n| ratio | phantom (range over subjects) | literature range (per subject) | out |")
    print("|---|---|---|---|")
    for group in ("pure", "lesion"):
        for key in brats[0][group]:
            values = [b[group][key][0] for b in brats]
            known = [b[group][key][1] for b in brats]
            if known[0] is None:
                print(f"| {key} | {_span(values)} | — | |")
                continue
            lo, hi = min(k[0] for k in known), max(k[1] for k in known)
            out = sum(not (k[0] <= v <= k[1]) for v, k in zip(values, known, strict=True))
            print(f"| {key} | {_span(values)} | {lo:.2f}-{hi:.2f} | {out} |")
    print("\nTissue clustering (k-means on T1 and T2) beside the real BraTS case")
    for key in brats[0]["cluster"]:
        values = [b["cluster"][key] for b in brats]
        real = REAL_CASE.get(key)
        print(f"- {key}: {_span(values)}" + (f" (real case {real})" if real else ""))
    print("\nLesion volumes (ml) per subject")
    for name in LABEL_NAMES.values():
        values = [b["volume"][name] for b in brats]
        print(
            f"- {name}: "
            + ", ".join(f"{v:.1f}" for v in values)
            + f"; median {np.median(values):.1f}"
        )
    more = [
        make_phantom_anatomy(
            i, DEMO_SEEDS["brats2023"], args.voxel_mm, "tumour", structure=True, head=False,
            extent_mm=(240.0, 240.0, 155.0),
        )[1]
        for i in range(args.subjects, 4 * args.subjects)
    ]  # fmt: skip
    enhancing = [b["volume"]["enhancing"] for b in brats]
    enhancing += [(lab == 3).sum() * args.voxel_mm**3 / 1000 for lab in more]
    q1, q2, q3 = np.percentile(enhancing, (25, 50, 75))
    print(f"- enhancing over {len(enhancing)} subjects: median {q2:.1f}, IQR {q1:.1f}-{q3:.1f}")
    print("\nHistogram peaks of the brain (count; GM and WM peaks both found)")
    for m in ("t1n", "t2w"):
        print(f"- {m}: " + ", ".join(f"{b['peaks'][m][0]} {b['peaks'][m][1]}" for b in brats))
    print("\nVessels: volume (ml), vessel/WM on T1c, on FLAIR")
    print(", ".join(f"{v[0]:.1f} {v[1]:.2f} {v[2]:.2f}" for v in (b["vessel"] for b in brats)))
    print("\nSynthRAD-like CT in HU")
    for k in hu[0]:
        print(f"- CT {k}: " + ", ".join(f"{h[k]:.1f}" for h in hu))


if __name__ == "__main__":
    main()
