"""Tables (aggregation, bold, formats, Wilcoxon) and the comparison figure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter
from scipy.stats import wilcoxon

from dfbk.data.io import write_nifti
from dfbk.data.slices.store import write_store
from dfbk.errors import DataError
from dfbk.evaluation.statistics import holm
from dfbk.reporting.captions import caption_notes, training_frame
from dfbk.reporting.figures import make_comparison_figure, pick_subject
from dfbk.reporting.tables import (
    collect_results,
    metric_header,
    table_metrics,
    wilcoxon_vs,
    write_comparison_table,
)


def _write_run(root, method, seed, rows, dataset="phantom", direction="t1n-to-t2w"):
    """A run folder as the evaluate stage leaves it: metrics.json + subjects.csv."""
    run = root / dataset / direction / method / f"seed-{seed}"
    run.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(run / "subjects.csv", index=False)
    info = {"dataset": dataset, "direction": direction, "method": method, "seed": seed}
    (run / "metrics.json").write_text(json.dumps({**info, "summary": {}}))
    return run / "metrics.json"


@pytest.fixture
def two_methods(tmp_path):
    """dfbk (2 seeds) is better in PSNR and SSIM, pix2pix better in MAE; 2 subjects."""
    files = [
        _write_run(tmp_path, "dfbk", 0, [
            {"subject": "s1", "psnr_fg": 30.0, "ssim_fg": 0.90, "mae_fg": 0.030},
            {"subject": "s2", "psnr_fg": 28.0, "ssim_fg": 0.80, "mae_fg": 0.050}]),
        _write_run(tmp_path, "dfbk", 1, [
            {"subject": "s1", "psnr_fg": 32.0, "ssim_fg": 0.92, "mae_fg": 0.030},
            {"subject": "s2", "psnr_fg": 26.0, "ssim_fg": 0.82, "mae_fg": 0.050}]),
        _write_run(tmp_path, "pix2pix", 0, [
            {"subject": "s1", "psnr_fg": 25.0, "ssim_fg": 0.70, "mae_fg": 0.020},
            {"subject": "s2", "psnr_fg": 24.0, "ssim_fg": 0.60, "mae_fg": 0.020}]),
    ]  # fmt: skip
    return collect_results(files)


def test_collect_results_rows(two_methods):
    df = two_methods
    assert list(df.columns[:5]) == ["dataset", "direction", "method", "seed", "subject"]
    assert len(df) == 6
    assert set(df.method) == {"dfbk", "pix2pix"}


def test_comparison_table_values_and_bold(two_methods, tmp_path):
    paths = write_comparison_table(two_methods, tmp_path / "out" / "table", caption="Proto.")
    assert {k: p.exists() for k, p in paths.items()} == {"md": True, "csv": True, "tex": True}
    csv = pd.read_csv(paths["csv"]).set_index("method")
    # seeds averaged per subject first: dfbk s1 = 31, s2 = 27 -> mean 29, std sqrt(8)
    assert csv.loc["dfbk", "psnr_fg_mean"] == pytest.approx(29.0)
    assert csv.loc["dfbk", "psnr_fg_std"] == pytest.approx(np.sqrt(8.0))
    assert csv.loc["dfbk", "psnr_fg_n"] == 2 and csv.loc["dfbk", "n_seeds"] == 2
    assert csv.loc["pix2pix", "mae_fg_mean"] == pytest.approx(0.02)
    assert csv.loc["pix2pix", "mae_fg_std"] == 0.0
    md = paths["md"].read_text()
    assert md.startswith("Proto.") and "averaged over seeds" in md
    assert "**29.00 ± 2.83**" in md and "24.50 ± 0.71" in md and "**24.50" not in md
    assert "**0.8600 ± 0.0707**" in md
    assert "**0.0200 ± 0.0000**" in md and "**0.0400" not in md
    tex = paths["tex"].read_text()
    assert r"\caption{Proto." in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"\textbf{29.00 $\pm$ 2.83}" in tex and r"\textbf{0.0200 $\pm$ 0.0000}" in tex
    assert r"\textbf{24.50" not in tex and r"pix2pix" in tex


def test_bold_is_per_dataset_and_direction(tmp_path):
    rows = [{"subject": "s1", "psnr_fg": 20.0, "ssim_fg": 0.5, "mae_fg": 0.1}]
    worse = [{"subject": "s1", "psnr_fg": 10.0, "ssim_fg": 0.4, "mae_fg": 0.2}]
    files = [_write_run(tmp_path, "a", 0, rows), _write_run(tmp_path, "b", 0, worse),
             _write_run(tmp_path, "a", 0, worse, direction="t2w-to-t1n"),
             _write_run(tmp_path, "b", 0, rows, direction="t2w-to-t1n")]  # fmt: skip
    md = write_comparison_table(collect_results(files), tmp_path / "t")["md"].read_text()
    lines = [line for line in md.splitlines() if line.startswith("| phantom")]
    assert ["**20.00" in line for line in lines] == [True, False, False, True]


def _paired_frame(n_subjects: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_subjects):
        base = rng.random()
        for method, shift in (("dfbk", 0.05), ("pix2pix", 0.0), ("same", 0.05)):
            rows.append({"dataset": "d", "direction": "a-to-b", "method": method, "seed": 0,
                         "subject": f"s{i}", "ssim_fg": base + shift + 0.01 * rng.random(),
                         "psnr_fg": 20 + base})  # fmt: skip
    return pd.DataFrame(rows)


def test_wilcoxon_matches_scipy_on_the_same_pairs():
    df = _paired_frame(8)
    result = wilcoxon_vs(df, "dfbk", "ssim_fg").set_index("method")
    assert set(result.index) == {"pix2pix", "same"}
    ref = df[df.method == "dfbk"].set_index("subject")["ssim_fg"]
    other = df[df.method == "pix2pix"].set_index("subject")["ssim_fg"].loc[ref.index]
    assert result.loc["pix2pix", "p_value"] == pytest.approx(wilcoxon(ref, other).pvalue)
    assert result.loc["pix2pix", "n_pairs"] == 8
    # every difference zero (psnr is method-independent here) -> undefined, NaN
    assert wilcoxon_vs(df, "dfbk", "psnr_fg")["p_value"].isna().all()
    # fewer than two pairs -> NaN
    assert wilcoxon_vs(_paired_frame(1), "dfbk", "ssim_fg")["p_value"].isna().all()


def test_comparison_table_significance_column(tmp_path):
    paths = write_comparison_table(
        _paired_frame(8), tmp_path / "t", ("psnr_fg", "ssim_fg"), significance_vs="dfbk"
    )
    md = paths["md"].read_text()
    assert "p_Holm (SSIM vs dfbk)" in md and "p_Holm (PSNR vs dfbk)" in md
    assert "p (SSIM vs dfbk)" not in md  # raw p in the csv only
    assert "Holm-adjusted over the 2 comparisons" in md  # PSNR's p are undefined (NaN)
    csv = pd.read_csv(paths["csv"]).set_index("method")
    assert np.isnan(csv.loc["dfbk", "p (SSIM vs dfbk)"])
    raw = csv.loc[["pix2pix", "same"], "p (SSIM vs dfbk)"].to_numpy()
    assert 0 < raw[0] < 0.05
    lo, hi = sorted(raw)  # two finite p: Holm gives 2 lo and max(2 lo, hi)
    adjusted = csv.loc[["pix2pix", "same"], "p_Holm (SSIM vs dfbk)"].to_numpy()
    np.testing.assert_allclose(sorted(adjusted), [min(1, 2 * lo), min(1, max(2 * lo, hi))])
    with pytest.raises(DataError, match="mae_hu_fg"):
        write_comparison_table(_paired_frame(2), tmp_path / "u", ("mae_hu_fg",))


def test_holm_family_spans_datasets_and_metrics(tmp_path):
    """Two directions x two metrics x two methods: one family of up to 8 p-values."""
    a = _paired_frame(8, seed=1)
    b = _paired_frame(8, seed=2).assign(direction="b-to-a")
    df = pd.concat([a, b], ignore_index=True)
    df["psnr_fg"] += np.where(df.method == "dfbk", 1.0, 0.0) + np.arange(len(df)) * 1e-3
    paths = write_comparison_table(df, tmp_path / "t", ("psnr_fg", "ssim_fg"), "", "dfbk")
    csv = pd.read_csv(paths["csv"])
    raw_cols = ["p (SSIM vs dfbk)", "p (PSNR vs dfbk)"]
    raw = csv[raw_cols].to_numpy().ravel()
    adjusted = csv[[c.replace("p (", "p_Holm (") for c in raw_cols]].to_numpy().ravel()
    np.testing.assert_allclose(adjusted, holm(raw))
    assert np.isfinite(raw).sum() == 8 and f"over the {8} comparisons" in paths["md"].read_text()


def test_metric_headers_name_the_protocol():
    assert metric_header("official_ssim_fg") == "SSIM fg [official] ↑"
    assert metric_header("official_mae_hu_fg") == "MAE fg (HU) [official] ↓"
    assert (
        metric_header("hfen_lesion") == "HFEN lesion ↓" and metric_header("gmsd_fg") == "GMSD fg ↓"
    )
    df = pd.DataFrame({"psnr_fg": [1.0], "official_ssim_fg": [np.nan], "gmsd_fg": [0.1],
                       "hfen_lesion": [0.2]})  # fmt: skip
    assert table_metrics(df) == ["psnr_fg", "gmsd_fg", "hfen_lesion"]  # all-NaN column dropped


def _write_run_json(root, method, seed, **fields):
    path = root / "train" / method / f"seed-{seed}" / "run.json"
    path.parent.mkdir(parents=True)
    info = {"dataset": "phantom", "direction": "t1n-to-t2w", "method": method, "seed": seed,
            "hparams": {"batch_size": 4}, **fields}  # fmt: skip
    path.write_text(json.dumps(info))
    return path


def test_training_budget_columns_and_caption(two_methods, tmp_path):
    runs = [
        _write_run_json(tmp_path, "dfbk", 0, steps=600, batch_size=8, n_parameters=1_234_567,
                        train_flops_per_step=2.5e12, evaluated_checkpoint="last"),
        _write_run_json(tmp_path, "dfbk", 1, steps=600, batch_size=8, n_parameters=1_234_567,
                        train_flops_per_step=2.5e12, evaluated_checkpoint="last"),
        _write_run_json(tmp_path, "pix2pix", 0, steps=200),  # an older run.json: fields absent
    ]  # fmt: skip
    training = training_frame(runs)
    caption = caption_notes(runs)
    assert "Training budget (steps × batch size): dfbk 600 × 8; pix2pix 200 × 4." in caption
    assert "Evaluated checkpoint differs between runs: dfbk last; pix2pix not recorded." in caption
    paths = write_comparison_table(  # the reference method has no p row; its budget stays
        two_methods, tmp_path / "abl", caption=caption, significance_vs="dfbk",
        training=training, capacity=True,
    )  # fmt: skip
    md = paths["md"].read_text()
    assert "| Params" in md and "Train FLOPs/step" in md
    assert "1.23 M" in md and "2.5 TFLOP" in md and md.count("n/a") >= 2
    csv = pd.read_csv(paths["csv"]).set_index("method")
    assert csv.loc["dfbk", "steps"] == 600 and csv.loc["dfbk", "batch_size"] == 8
    assert csv.loc["dfbk", "n_parameters"] == 1_234_567
    assert csv.loc["pix2pix", "batch_size"] == 4 and np.isnan(csv.loc["pix2pix", "n_parameters"])
    comparison = write_comparison_table(two_methods, tmp_path / "cmp", training=training)
    assert "Params" not in comparison["md"].read_text()  # comparison: csv and caption only
    assert "steps" in pd.read_csv(comparison["csv"]).columns


def test_same_checkpoint_rule_is_stated(tmp_path):
    runs = [_write_run_json(tmp_path, m, 0, steps=10, evaluated_checkpoint="best")
            for m in ("a", "b")]  # fmt: skip
    assert "Evaluated checkpoint: best, the same rule for every method." in caption_notes(runs)
    old = [_write_run_json(tmp_path / "old", "a", 0, steps=10)]
    assert "Evaluated checkpoint: not recorded in run.json." in caption_notes(old)


# ---------------------------------------------------------------- figure

SUBJECTS = {"sub-a": 3, "sub-b": 4}


@pytest.fixture
def store_with_preds(tmp_path):
    n, size = sum(SUBJECTS.values()), 32
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] - size / 2
    disk = (xx**2 + yy**2) < 12**2
    texture = gaussian_filter(rng.random((n, size, size)), (0, 1.5, 1.5))
    t1n = np.where(disk, 0.3 + texture, 0).clip(0, 1).astype(np.float32)
    t2w = np.where(disk, 1 - t1n, 0).astype(np.float32)
    mask = np.broadcast_to(disk, (n, size, size)).astype(np.uint8).copy()
    mask[3, :, :] = 0
    mask[5, 4:28, 4:28] = 1  # most foreground of sub-b, but no lesion
    label = np.zeros_like(mask)
    label[4, 14:18, 14:18] = 1  # sub-b's only lesion slice
    store = write_store(tmp_path / "store", {"t1n": t1n, "t2w": t2w}, mask, label, SUBJECTS)
    split = tmp_path / "splits.json"
    split.write_text(json.dumps({"train": [], "val": [], "test": list(SUBJECTS)}))
    pred_dirs = {}
    for method, noise in (("dfbk", 0.02), ("pix2pix", 0.1)):
        for subject in SUBJECTS:
            start, stop = store.subject_range(subject)
            vol = np.clip(t2w[start:stop] + rng.normal(0, noise, (stop - start, size, size)), 0, 1)
            write_nifti(np.moveaxis(vol, 0, -1).astype(np.float32), store.subject_affine(subject),
                        tmp_path / method / f"{subject}.nii.gz")  # fmt: skip
        pred_dirs[method] = tmp_path / method
    return store, split, pred_dirs


def test_figure_picks_the_lesion_subject(store_with_preds):
    store, _, _ = store_with_preds
    assert pick_subject(store, list(SUBJECTS)) == "sub-b"
    assert pick_subject(store, ["sub-a"]) == "sub-a"


def test_figure_written(store_with_preds, tmp_path):
    store, split, pred_dirs = store_with_preds
    out = make_comparison_figure(store.root, split, "t1n-to-t2w", pred_dirs, tmp_path / "f.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".f.png")]


def test_tables_verb_with_run_files(tmp_path):
    """`dfbk tables --capacity` end to end: protocol and budget notes, Holm, capacity columns."""
    from dfbk.cli import main

    rows = {m: [{"subject": f"s{i}", "psnr_fg": 20.0 + i + d, "ssim_fg": 0.5 + 0.01 * i + d / 10,
                 "mae_fg": 0.1, "hfen_fg": 0.3 - d / 10, "gmsd_fg": 0.1} for i in range(6)]
            for m, d in (("dfbk", 1.0), ("resshift", 0.0))}  # fmt: skip
    metrics = [_write_run(tmp_path / "ev", m, 0, r) for m, r in rows.items()]
    runs = [
        _write_run_json(tmp_path, "dfbk", 0, steps=50, n_parameters=2_000_000,
                        train_flops_per_step=1e9, evaluated_checkpoint="last"),
        _write_run_json(tmp_path, "resshift", 0, steps=50, evaluated_checkpoint="last"),
    ]  # fmt: skip
    args = [
        "tables",
        *map(str, metrics),
        "--runs",
        *map(str, runs),
        "--out-stem",
        str(tmp_path / "abl"),
    ]
    assert main([*args, "--caption", "Ablation.", "--capacity"]) == 0
    md = (tmp_path / "abl.md").read_text()
    assert md.startswith("Ablation.") and "50 × 4" in md and "last, the same rule" in md
    assert "| Params" in md and "2 M" in md and "1 GFLOP" in md and "HFEN fg ↓" in md
    assert "p_Holm (SSIM vs dfbk)" in md


def test_dice_columns_with_a_real_target_row_only_where_labels_exist(tmp_path):
    """dice.csv beside a run's metrics adds per-label Dice; each labelled direction gets a
    'real target' row (the ceiling, never bold); a dataset without labels shows '—'."""
    metric = {"psnr_fg": 20.0, "ssim_fg": 0.5, "mae_fg": 0.1}
    dice = {  # method, seed -> (s1, s2) Dice of oedema; ceiling 1.0 and 0.8 in every run
        ("dfbk", 0): (0.8, 0.6),
        ("dfbk", 1): (0.6, 0.4),
        ("pix2pix", 0): (0.9, 0.7),
    }
    files = []
    for (method, seed), (d1, d2) in dice.items():
        rows = [{"subject": s, **metric} for s in ("s1", "s2")]
        path = _write_run(tmp_path, method, seed, rows, dataset="brats2023")
        table = {"subject": ["s1", "s2"], "dice_oedema": [d1, d2]}
        table["ceiling_dice_oedema"] = [1.0, 0.8]
        pd.DataFrame(table).to_csv(path.parent / "dice.csv", index=False)
        files.append(path)
    files.append(_write_run(tmp_path, "dfbk", 0, [{"subject": "s9", **metric}], "synthrad2023"))
    df = collect_results(files)
    assert "dice_oedema" in table_metrics(df)
    paths = write_comparison_table(df, tmp_path / "t", significance_vs="dfbk")
    csv = pd.read_csv(paths["csv"])
    assert list(csv["method"]) == ["dfbk", "pix2pix", "real target", "dfbk"]
    assert "ceiling_dice_oedema_mean" not in csv.columns
    ceiling = csv[csv.method == "real target"].iloc[0]
    # by hand: dfbk subjects (0.8+0.6)/2 = 0.7 and (0.6+0.4)/2 = 0.5 -> 0.6 ± sd(0.7, 0.5)
    dfbk = csv[(csv.method == "dfbk") & (csv.dataset == "brats2023")].iloc[0]
    assert dfbk["dice_oedema_mean"] == pytest.approx(0.6)
    assert dfbk["dice_oedema_std"] == pytest.approx(np.std([0.7, 0.5], ddof=1))
    assert ceiling["dice_oedema_mean"] == pytest.approx(0.9)
    assert np.isnan(ceiling["ssim_fg_mean"])
    md = paths["md"].read_text()
    lines = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in md.splitlines()
             if line.startswith("| ")}  # fmt: skip
    header = [c.strip() for c in md.splitlines()[2].split("|")]
    assert "Dice oedema ↑" in header and "the ceiling" in md
    assert "**0.800 ± 0.141**" in lines[("brats2023", "t1n-to-t2w", "pix2pix")]
    assert "0.900 ± 0.141" in lines[("brats2023", "t1n-to-t2w", "real target")]
    assert "**0.900" not in md  # the ceiling is a reference, not the best method
    synthrad = lines[("synthrad2023", "t1n-to-t2w", "dfbk")].split("|")
    assert synthrad[header.index("Dice oedema ↑")].strip() == "—"  # no labels, no Dice


def test_dice_file_of_other_subjects_is_refused_naming_it(tmp_path):
    path = _write_run(tmp_path, "dfbk", 0, [{"subject": "s1", "ssim_fg": 0.5}])
    pd.DataFrame({"subject": ["s7"], "dice_lesion": [0.5]}).to_csv(
        path.parent / "dice.csv", index=False
    )
    with pytest.raises(DataError, match=r"dice\.csv: subjects differ"):
        collect_results([path])
