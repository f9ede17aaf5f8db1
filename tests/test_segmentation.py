"""Downstream segmentation check: Dice against an independent count on a hand-made case, and a
segmenter that learns the phantom's lesion from real target slices and reports per-subject Dice.
"""

import numpy as np
import pandas as pd
import pytest
import torch

from dfbk.evaluation.segmentation import (
    SegmentationUNet,
    dice_scores,
    dice_table,
    load_segmenter,
    real_targets,
    save_segmenter,
    segment,
    train_segmenter,
)


def test_dice_on_a_hand_made_case_matches_counting_by_hand():
    ref = np.zeros((1, 6, 6), np.uint8)
    pred = np.zeros_like(ref)
    ref[0, 1:4, 1:4] = 1  # 9 voxels
    pred[0, 2:5, 2:5] = 1  # 9 voxels, 4 shared
    ref[0, 5, 0] = 2  # label 2 only in the reference
    # label 3: absent from both
    scores = dice_scores(pred, ref, [1, 2, 3])
    assert scores[1] == pytest.approx(2 * 4 / (9 + 9))
    assert scores[2] == 0.0
    assert scores[3] == 1.0
    # independent formulation: F1 from true/false positives and negatives, element by element
    tp = fp = fn = 0
    for p, r in zip(pred.ravel(), ref.ravel(), strict=True):
        tp += int(p == 1 and r == 1)
        fp += int(p == 1 and r != 1)
        fn += int(p != 1 and r == 1)
    assert scores[1] == pytest.approx(tp / (tp + 0.5 * (fp + fn)))


def test_dice_pools_a_subject_volume_not_a_mean_of_slices():
    """BraTS scores Dice per subject volume: voxel sets pooled over slices (here 8/9, where a
    mean over slices would give 1/2)."""
    ref = np.zeros((2, 5, 5), np.uint8)
    pred = np.zeros_like(ref)
    ref[0, 1:3, 1:3] = pred[0, 1:3, 1:3] = 3  # slice 0: 4 voxels, all found
    ref[1, 4, 4] = 3  # slice 1: 1 voxel, missed
    ref_set = {tuple(v) for v in np.argwhere(ref == 3)}
    pred_set = {tuple(v) for v in np.argwhere(pred == 3)}
    expected = 2 * len(ref_set & pred_set) / (len(ref_set) + len(pred_set))
    assert dice_scores(pred, ref, [3])[3] == pytest.approx(expected) == pytest.approx(8 / 9)


def test_dice_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        dice_scores(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), [1])


def test_unet_keeps_the_slice_size_and_round_trips_through_a_file(tmp_path):
    model = SegmentationUNet(4).eval()
    x = torch.rand(2, 1, 32, 32)
    assert model(x).shape == (2, 4, 32, 32)
    save_segmenter(model, [1, 2, 3], {"modality": "t2f"}, tmp_path / "seg.pt")
    clone, labels, meta = load_segmenter(tmp_path / "seg.pt")
    assert labels == [1, 2, 3] and meta == {"modality": "t2f"}
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))
    assert not list(tmp_path.glob(".*tmp"))


def test_segmenter_finds_the_phantom_lesion_in_real_targets_not_in_blank_ones(phantom_store):
    """Trained briefly on the training split's real T2, it finds lesions in the test subjects'
    real T2 better than in an all-zero 'translation'."""
    store, split_path = phantom_store
    from dfbk.data.slices.splits import read_split

    split = read_split(split_path)
    labels = [1, 2, 3, 4]
    model = train_segmenter(
        store, split["train"], "t2w", labels, steps=40, batch_size=4, widths=(8, 16)
    )
    test = split["test"]
    real = real_targets(store, test, "t2w")
    blank = {s: np.zeros_like(v) for s, v in real.items()}
    on_real = dice_table(model, labels, store, test, real)
    on_blank = dice_table(model, labels, store, test, blank)
    names = ["necrosis", "oedema", "enhancing", "stroke"]  # the phantom's labels 1-4
    assert list(on_real.columns) == ["subject", *(f"dice_{n}" for n in names)]
    assert list(on_real["subject"]) == test
    present = [
        f"dice_{names[k - 1]}"
        for k in labels
        if any((np.asarray(store.label[slice(*store.subject_range(s))]) == k).any() for s in test)
    ]
    assert present, "the test subject should carry a lesion"
    assert on_real[present].to_numpy().mean() > on_blank[present].to_numpy().mean()
    assert segment(model, real[test[0]], labels).dtype == np.uint8


def test_table_averages_seeds_per_subject_then_subjects(tmp_path):
    from dfbk.evaluation.segmentation import tabulate

    def run(method, seed, rows):
        folder = tmp_path / "segment" / "brats2023" / "t1n-to-t2f" / method / f"seed-{seed}"
        folder.mkdir(parents=True)
        lines = ["subject,dice_1,dice_2"] + [f"{s},{a},{b}" for s, a, b in rows]
        (folder / "dice.csv").write_text("\n".join(lines) + "\n")
        return folder / "dice.csv"

    files = [
        run("dfbk", 0, [("007", 0.5, 1.0), ("009", 0.7, 0.0)]),
        run("resshift", 0, [("007", 0.2, 0.2), ("009", 0.2, 0.2)]),
        run("dfbk", 1, [("007", 0.7, 1.0), ("009", 0.9, 0.0)]),
        run("identity", 0, [("007", 0.1, 0.2), ("009", 0.3, 0.4)]),
    ]
    ceiling = pd.read_csv(files[1]).assign(ceiling_dice_1=[0.9, 0.7], ceiling_dice_2=[1.0, 1.0])
    ceiling.to_csv(files[1], index=False)  # the real targets' Dice, scored beside resshift
    summary = tabulate(files, tmp_path / "tables" / "segmentation").set_index("method")
    assert summary.loc["real target", "dice_1_mean"] == pytest.approx(0.8)
    # dfbk: subject means over seeds 0.6 and 0.8 -> mean 0.7, SD (n-1) 0.1414
    assert summary.loc["dfbk", "dice_1_mean"] == pytest.approx(0.7)
    assert summary.loc["dfbk", "dice_1_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert summary.loc["identity", "dice_2_mean"] == pytest.approx(0.3)
    assert summary.loc["dfbk", "n_subjects"] == 2
    markdown = (tmp_path / "tables" / "segmentation.md").read_text()
    assert "| brats2023 | t1n-to-t2f | dfbk | 0.700 ± 0.141 | 0.500 ± 0.707 | 2 |" in markdown
    assert "| real target | 0.800 ± 0.141 | 1.000 ± 0.000 | 2 |" in markdown
    assert (tmp_path / "tables" / "segmentation.csv").exists()


def test_score_uses_the_ceiling_kept_by_training_and_refuses_another_modalitys_segmenter(
    phantom_store, tmp_path
):
    """`train` keeps the segmenter's Dice on the real test targets (the ceiling) in its file,
    equal to scoring them directly; `score` reads it from there for the same test subjects (a
    value planted in the file comes back), and refuses a segmenter made for another modality,
    naming the file."""
    from dfbk.data.slices.splits import read_split
    from dfbk.errors import DataError
    from dfbk.evaluation.segmentation import main

    store, split_path = phantom_store
    model_path = tmp_path / "segmenter-t2w.pt"
    main(
        ["train", str(store.root), str(split_path), "t2w", "--out", str(model_path)]
        + ["--steps", "3"]
    )
    model, labels, meta = load_segmenter(model_path)
    test = read_split(split_path)["test"]
    direct = dice_table(model, labels, store, test, real_targets(store, test, "t2w"))
    assert meta["ceiling"]["subjects"] == test
    pd.testing.assert_frame_equal(pd.DataFrame(meta["ceiling"]["rows"]), direct)

    planted = [{**row, "dice_oedema": 0.123} for row in meta["ceiling"]["rows"]]
    save_segmenter(
        model, labels, {**meta, "ceiling": {"subjects": test, "rows": planted}}, model_path
    )
    out = tmp_path / "dice.csv"
    main(
        ["score", str(store.root), str(split_path), "t2w", "--model", str(model_path)]
        + ["--out", str(out)]
    )
    assert pd.read_csv(out)["dice_oedema"].tolist() == [0.123] * len(test)

    save_segmenter(model, labels, {**meta, "modality": "t1n"}, model_path)
    with pytest.raises(DataError, match=f"{model_path}: segmenter made for modality 't1n'"):
        main(
            ["score", str(store.root), str(split_path), "t2w", "--model", str(model_path)]
            + ["--out", str(out)]
        )
