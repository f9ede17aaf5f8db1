"""Downstream segmentation check (as the BraSyn challenge scores synthesis): does a segmenter
trained on real target images still find the tumour, lesion or tissue in the translations?

Why: PSNR and SSIM reward a plausible average; a radiologist or a downstream model needs the
structures. A small 2-D U-Net is trained once per dataset and target modality on the real
target slices of the training split (labels from the slice store), then applied to every
method's translations of the test split; Dice per label against the store's labels, per test
subject, is written as `dice.csv` beside the run's metrics (`results/evaluate/{run}/`), where
the comparison tables read it. Each row also holds the same segmenter's Dice on the subject's
real target images (`ceiling_dice_*`): the ceiling a translation can reach.

Labels: BraTS 1 necrosis, 2 oedema, 3 enhancing; ISLES 1 stroke lesion; the generic phantom
also 4 stroke. Columns are named by label (`dice_necrosis`, ...). A label absent from both the
reference and the prediction of a subject scores Dice 1 (BraTS convention); absent from one of
them, 0.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from dfbk.data.io import write_text
from dfbk.data.slices.splits import read_split
from dfbk.data.slices.store import SliceStore
from dfbk.errors import DataError

SEGMENTER_VERSION = 1
# adapter name (the store's provenance) -> label value -> column name
LABEL_NAMES: dict[str, dict[int, str]] = {
    "brats2023": {1: "necrosis", 2: "oedema", 3: "enhancing"},
    "isles2015": {1: "lesion"},
    "phantom": {1: "necrosis", 2: "oedema", 3: "enhancing", 4: "stroke"},
}
CEILING_PREFIX = "ceiling_"  # columns of the segmenter's Dice on the real target images


def label_names(store: SliceStore, labels: list[int]) -> dict[int, str]:
    """Column name of each label value for the store's dataset ('label<k>' when not known)."""
    adapter = store.meta.get("provenance", {}).get("config", {}).get("adapter", "")
    names = LABEL_NAMES.get(adapter, {})
    return {k: names.get(k, f"label{k}") for k in labels}


def dice_scores(pred: np.ndarray, ref: np.ndarray, labels: list[int]) -> dict[int, float]:
    """Dice of each label between two integer label arrays of the same shape.

    Both empty: 1.0 (nothing to find, nothing found); one empty: 0.0.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, reference {ref.shape}")
    scores = {}
    for label in labels:
        p, r = pred == label, ref == label
        total = int(p.sum()) + int(r.sum())
        scores[label] = 1.0 if total == 0 else 2.0 * float((p & r).sum()) / total
    return scores


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SegmentationUNet(nn.Module):
    """(B, 1, H, W) image -> (B, classes, H, W) logits; H, W divisible by 2**(len(widths)-1)."""

    def __init__(self, classes: int, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.widths = tuple(widths)
        self.down = nn.ModuleList()
        prev = 1
        for width in widths:
            self.down.append(_block(prev, width))
            prev = width
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(prev, width, 2, stride=2))
            self.merge.append(_block(2 * width, width))
            prev = width
        self.head = nn.Conv2d(prev, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge, strict=True):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def _class_map(labels: list[int]) -> np.ndarray:
    """Lookup from stored label value to class index (0 background)."""
    lookup = np.zeros(256, dtype=np.int64)
    for k, value in enumerate(labels, start=1):
        lookup[value] = k
    return lookup


def train_segmenter(
    store: SliceStore,
    subjects: list[str],
    modality: str,
    labels: list[int],
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    widths: tuple[int, ...] = (16, 32, 64),
    patch: int | None = 64,
) -> SegmentationUNet:
    """Fit the U-Net on the real `modality` slices of `subjects` against the store's labels.

    Cross-entropy plus soft Dice (small lesions would otherwise be ignored); slices with a label
    are drawn half the time so the lesion is seen at all. Like the translators, it trains on
    random `patch` x `patch` crops (one position per batch; None: whole slices) and segments
    whole slices. Seeded by `seed`.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = store.indices(subjects)
    if rows.size == 0:
        raise DataError(f"{store.root}: no training slices for the segmenter")
    lesion_rows = rows[np.asarray(store.label[rows].reshape(len(rows), -1).max(1) > 0)]
    lookup = _class_map(labels)
    model = SegmentationUNet(len(labels) + 1, widths)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    images, label_map = store.images(modality), store.label
    model.train()
    for _ in range(steps):
        pool = lesion_rows if lesion_rows.size and rng.random() < 0.5 else rows
        batch = np.sort(rng.choice(pool, size=batch_size))
        window = (slice(None), slice(None), slice(None))
        if patch is not None and patch < min(store.size):
            top, left = (int(rng.integers(0, n - patch + 1)) for n in store.size)
            window = (slice(None), slice(top, top + patch), slice(left, left + patch))
        x = torch.from_numpy(np.array(images[batch][window], dtype=np.float32)[:, None])
        y = torch.from_numpy(lookup[np.asarray(label_map[batch][window])])
        logits = model(x)
        probs = logits.softmax(1)[:, 1:]
        onehot = nn.functional.one_hot(y, len(labels) + 1).permute(0, 3, 1, 2)[:, 1:].float()
        overlap = (probs * onehot).sum((0, 2, 3))
        soft_dice = (2 * overlap + 1) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)
        loss = nn.functional.cross_entropy(logits, y) + (1 - soft_dice).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    return model


@torch.no_grad()
def segment(model: SegmentationUNet, slices: np.ndarray, labels: list[int]) -> np.ndarray:
    """Stored label values predicted for (S, H, W) slices in [0, 1]."""
    values = np.array([0, *labels], dtype=np.uint8)
    out = []
    for start in range(0, len(slices), 32):
        x = torch.from_numpy(np.array(slices[start : start + 32], dtype=np.float32)[:, None])
        out.append(model(x).argmax(1).numpy())
    return values[np.concatenate(out)]


def save_segmenter(model: SegmentationUNet, labels: list[int], meta: dict, path: Path) -> None:
    """State and recipe in one file, written under a temporary name then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = {"version": SEGMENTER_VERSION, "widths": list(model.widths), "labels": labels}
    torch.save({**payload, "meta": meta, "state": model.state_dict()}, tmp)
    os.replace(tmp, path)


def load_segmenter(path: Path) -> tuple[SegmentationUNet, list[int], dict]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = SegmentationUNet(len(payload["labels"]) + 1, tuple(payload["widths"]))
        model.load_state_dict(payload["state"])
    except (OSError, RuntimeError, KeyError, TypeError) as err:
        raise DataError(f"{path}: unreadable segmenter ({err})") from None
    model.eval()
    return model, list(payload["labels"]), payload["meta"]


def dice_table(
    model: SegmentationUNet,
    labels: list[int],
    store: SliceStore,
    subjects: list[str],
    volumes: dict[str, np.ndarray],
) -> pd.DataFrame:
    """Per-subject Dice of each label on `volumes` (subject -> (S, H, W) in [0, 1]).

    Columns: subject, then `dice_<label name>` in label order (`label_names`).
    """
    names = label_names(store, labels)
    rows = []
    for subject in subjects:
        start, stop = store.subject_range(subject)
        reference = np.asarray(store.label[start:stop])
        scores = dice_scores(segment(model, volumes[subject], labels), reference, labels)
        rows.append({"subject": subject, **{f"dice_{names[k]}": v for k, v in scores.items()}})
    return pd.DataFrame(rows)


def run_key(dice_csv: Path) -> dict[str, str]:
    """(dataset, direction, method, seed) of `{dataset}/{direction}/{method}/seed-{s}/dice.csv`."""
    parts = Path(dice_csv).parts
    if len(parts) < 5 or not parts[-2].startswith("seed-"):
        raise DataError(f"{dice_csv}: not in a {{dataset}}/{{direction}}/{{method}}/seed-N/ folder")
    dataset, direction, method, seed = parts[-5:-1]
    return {"dataset": dataset, "direction": direction, "method": method, "seed": seed[5:]}


def tabulate(dice_files: list[Path], out_stem: Path) -> pd.DataFrame:
    """Mean and SD over test subjects of each label's Dice, per dataset, direction and method.

    Seeds are averaged per subject first (as the comparison table does); each direction with
    `ceiling_dice_*` columns gets a "real target" row (the segmenter on the real images). Written as
    `{out_stem}.csv` (numbers) and `{out_stem}.md` (mean ± std); returns the CSV's frame.
    """
    frames = []
    for path in dice_files:
        frame = pd.read_csv(path, dtype={"subject": str})
        frames.append(frame.assign(**run_key(path)))
    if not frames:
        raise DataError("no dice.csv given: nothing to tabulate")
    from dfbk.reporting.tables import with_ceiling_rows

    data = with_ceiling_rows(pd.concat(frames, ignore_index=True))
    groups = ["dataset", "direction", "method"]
    columns = [c for c in data.columns if c.startswith("dice_")]  # label order
    per_subject = data.groupby([*groups, "subject"], sort=False)[columns].mean().reset_index()
    summary = per_subject.groupby(groups, sort=False)[columns].agg(["mean", "std"])
    summary.columns = [f"{c}_{stat}" for c, stat in summary.columns]
    summary = summary.reset_index()
    summary["n_subjects"] = per_subject.groupby(groups, sort=False).size().to_numpy()
    out_stem = Path(out_stem)
    write_text(out_stem.with_suffix(".csv"), summary.to_csv(index=False))
    header = [*groups, *(f"Dice {c[5:]}" for c in columns), "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        cells = [str(row[g]) for g in groups]
        cells += [
            "—"
            if np.isnan(row[f"{c}_mean"])
            else f"{row[f'{c}_mean']:.3f} ± {np.nan_to_num(row[f'{c}_std']):.3f}"
            for c in columns
        ]
        lines.append("| " + " | ".join([*cells, str(row["n_subjects"])]) + " |")
    caption = (
        "Downstream segmentation check: Dice per label of a 2-D U-Net trained on the real "
        "target images of the training split, applied to each method's translations of the test "
        "split (mean ± std over test subjects; a label absent from both scores 1); 'real "
        "target': the same segmenter on the real target images, the ceiling."
    )
    write_text(out_stem.with_suffix(".md"), "\n".join([caption, "", *lines]) + "\n")
    return summary


# ----- command line (python -m dfbk.evaluation.segmentation {train,score,table} ...) ------------
def real_targets(store: SliceStore, subjects: list[str], modality: str) -> dict[str, np.ndarray]:
    """subject -> (S, H, W) real `modality` slices of the store."""
    images = store.images(modality)
    return {s: np.asarray(images[slice(*store.subject_range(s))]) for s in subjects}


def _train(args: argparse.Namespace) -> None:
    store = SliceStore(args.store)
    labels = [int(v) for v in store.meta["provenance"]["config"]["label_values"] if int(v) > 0]
    if not labels:
        raise DataError(f"{args.store}: dataset has no labels to segment")
    split = read_split(args.split)
    model = train_segmenter(
        store, split["train"], args.modality, labels, args.steps, seed=args.seed
    )
    # The ceiling (this segmenter on the real test targets) is the same for every run scored
    # with it: computed once here and kept in the file, not once per scored run.
    test = list(split["test"])
    ceiling = dice_table(model, labels, store, test, real_targets(store, test, args.modality))
    meta = {
        "store": store.fingerprint,
        "modality": args.modality,
        "steps": args.steps,
        "ceiling": {"subjects": test, "rows": ceiling.to_dict("records")},
    }
    save_segmenter(model, labels, meta, args.out)


def _score(args: argparse.Namespace) -> None:
    from dfbk.evaluation.evaluate import load_prediction

    store = SliceStore(args.store)
    model, labels, meta = load_segmenter(args.model)
    for key, wanted in (("store", store.fingerprint), ("modality", args.modality)):
        if meta.get(key) != wanted:
            raise DataError(
                f"{args.model}: segmenter made for {key} {meta.get(key)!r}, asked to score "
                f"{wanted!r} ({args.store}); retrain it"
            )
    subjects = read_split(args.split)["test"]
    kept = meta.get("ceiling") or {}
    if kept.get("subjects") == list(subjects):
        ceiling = pd.DataFrame(kept["rows"])
    else:  # another split's test subjects (or an older file): the ceiling for these
        ceiling = dice_table(
            model, labels, store, subjects, real_targets(store, subjects, args.modality)
        )
    if args.pred is None:  # the real target images only: the segmenter's own ceiling
        table = ceiling
    else:
        volumes = {s: load_prediction(store, args.pred, s) for s in subjects}
        table = dice_table(model, labels, store, subjects, volumes)
        ceiling = ceiling.set_index("subject").add_prefix(CEILING_PREFIX)
        table = table.join(ceiling, on="subject")
    write_text(args.out, table.to_csv(index=False))
    means = {c: float(table[c].mean()) for c in table.columns if c.startswith("dice_")}
    print(json.dumps(means))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("train", help="fit the segmenter on the training split's real targets")
    p.add_argument("store", type=Path)
    p.add_argument("split", type=Path)
    p.add_argument("modality")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train)
    p = verbs.add_parser(
        "score", help="Dice per test subject of a run's translations and of the real targets"
    )
    p.add_argument("store", type=Path)
    p.add_argument("split", type=Path)
    p.add_argument("modality")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--pred", type=Path, help="translation folder (default: the real targets)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_score)
    p = verbs.add_parser("table", help="mean ± std Dice per dataset, direction and method")
    p.add_argument("dice", type=Path, nargs="+", help="dice.csv files of the runs")
    p.add_argument("--out-stem", type=Path, required=True)
    p.set_defaults(func=lambda a: tabulate(a.dice, a.out_stem))
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
