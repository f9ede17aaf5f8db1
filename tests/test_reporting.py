"""Tables (aggregation, seed and subject spread, tests, bold, power, formats) and the figure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter

from dfbk.data.io import write_nifti
from dfbk.data.slices.store import write_store
from dfbk.errors import DataError
from dfbk.evaluation.statistics import holm
from dfbk.reporting.captions import caption_notes, training_frame
from dfbk.reporting.figures import make_comparison_figure, pick_subject
from dfbk.reporting.significance import ONE_SEED, table_tests
from dfbk.reporting.tables import (
    collect_results,
    metric_header,
    power_report,
    table_metrics,
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
    # seed means over subjects: SSIM 0.85 and 0.87 -> seed std 0.01 * sqrt(2); PSNR 29 and 29
    assert csv.loc["dfbk", "ssim_fg_seed_std"] == pytest.approx(0.02 / np.sqrt(2))
    assert csv.loc["dfbk", "psnr_fg_seed_std"] == 0.0
    assert np.isnan(csv.loc["pix2pix", "psnr_fg_seed_std"])  # one seed: no seed spread
    assert csv.loc["pix2pix", "mae_fg_mean"] == pytest.approx(0.02)
    assert csv.loc["pix2pix", "mae_fg_std"] == 0.0
    md = paths["md"].read_text()
    assert md.startswith("Proto.") and "seed-averaged value" in md
    assert "29.00 ± 2.83 (0.00)" in md and "0.8600 ± 0.0707 (0.0141)" in md
    assert "| 24.50 ± 0.71 " in md  # one seed: no parenthesis
    # pix2pix has one seed, so no difference from it can be resolved and nothing is bold (the
    # table used to bold dfbk's PSNR and SSIM and pix2pix's MAE here)
    assert "**" not in md and "No difference between rows was resolved" in md
    assert not csv.filter(like="_bold").to_numpy().any()
    tex = paths["tex"].read_text()
    assert r"\caption{Proto." in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"29.00 $\pm$ 2.83 (0.00)" in tex and r"\textbf" not in tex and "pix2pix" in tex


def _frame(cells: dict, direction="a-to-b", metric="ssim_fg", dataset="d") -> pd.DataFrame:
    """Long results frame from {method: seeds x subjects array}; psnr_fg = 20 + 20 * value."""
    rows = []
    for method, array in cells.items():
        for seed, values in enumerate(np.atleast_2d(array)):
            for j, value in enumerate(values):
                rows.append({"dataset": dataset, "direction": direction, "method": method,
                             "seed": seed, "subject": f"s{j}", metric: value,
                             "psnr_fg": 20 + 20 * value})  # fmt: skip
    return pd.DataFrame(rows)


def _cells(n_seeds, shift=0.0, seed_sd=0.01, rng=0, n_subjects=10):
    """seeds x subjects: shared subject difficulty, a seed offset of SD `seed_sd`, residual."""
    gen = np.random.default_rng(rng)
    subjects = np.random.default_rng(99).normal(0.6, 0.05, n_subjects)
    offsets = gen.normal(0, 1, (n_seeds, 1))
    offsets = (offsets - offsets.mean()) / offsets.std(ddof=1) if n_seeds > 1 else 0 * offsets
    return subjects + shift + seed_sd * offsets + gen.normal(0, 0.002, (n_seeds, n_subjects))


def _bold_rows(md: str) -> list[bool]:
    return ["**" in line for line in md.splitlines() if line.startswith("| d ")]


def test_bold_is_per_dataset_and_direction(tmp_path):
    """a beats b clearly (8 seeds, effect 5x the seed SD) in one direction, b beats a in the
    other: each direction's winner is bold, in both metric columns."""
    df = pd.concat([
        _frame({"a": _cells(8, 0.05, rng=1), "b": _cells(8, 0.0, rng=2)}),
        _frame({"a": _cells(8, 0.0, rng=3), "b": _cells(8, 0.05, rng=4)}, direction="b-to-a"),
    ])  # fmt: skip
    md = write_comparison_table(df, tmp_path / "t", ("psnr_fg", "ssim_fg"))["md"].read_text()
    assert _bold_rows(md) == [True, False, False, True]
    assert md.count("**") == 2 * 2 * 2 and "Bold: the row whose difference" in md


def test_bold_only_where_the_best_row_beats_every_other_row(tmp_path):
    """a and b tie, both far above c: a is best by its mean but not resolved from b, so
    nothing is bold; once b drops too, a is bold."""
    tie = {"a": _cells(8, 0.051, rng=1), "b": _cells(8, 0.05, rng=2), "c": _cells(8, 0.0, rng=3)}
    tests, bold = table_tests(_frame(tie), ["ssim_fg"], {"ssim_fg": True})
    assert not bold["ssim_fg"].any()
    by_pair = {frozenset((r.method, r.versus)): r.p_holm for r in tests.itertuples()}
    assert by_pair[frozenset("ac")] < 0.05 < by_pair[frozenset("ab")]  # c is beaten, b is not
    md = write_comparison_table(_frame(tie), tmp_path / "t", ("ssim_fg",))["md"].read_text()
    assert "**" not in md and "No row differs significantly from every other row" in md
    clear = {**tie, "b": _cells(8, 0.0, rng=2)}
    tests, bold = table_tests(_frame(clear), ["ssim_fg"], {"ssim_fg": True})
    assert bold.set_index("method")["ssim_fg"].to_dict() == {"a": True, "b": False, "c": False}
    assert len(tests) == 2  # a against b and against c; b against c is no claim of the table


def test_one_seed_row_is_never_tested_nor_bold(tmp_path):
    """dfbk with 8 seeds far above a one-seed row: no p, the reason instead, nothing bold."""
    df = _frame({"dfbk": _cells(8, 0.2, rng=1), "once": _cells(1, 0.0, rng=2)})
    paths = write_comparison_table(df, tmp_path / "t", ("ssim_fg",), significance_vs="dfbk")
    md = paths["md"].read_text()
    line = next(line for line in md.splitlines() if "| once " in line)
    assert ONE_SEED in line and "**" not in md
    csv = pd.read_csv(paths["csv"]).set_index("method")
    assert csv.loc["once", "test (SSIM vs dfbk)"] == ONE_SEED
    assert np.isnan(
        csv.loc["once", ["p (SSIM vs dfbk)", "p_Holm (SSIM vs dfbk)"]].astype(float)
    ).all()
    assert csv.loc["once", "diff (SSIM vs dfbk)"] == pytest.approx(-0.2, abs=0.01)


def test_a_table_with_one_row_per_direction_has_nothing_to_test(tmp_path):
    df = _frame({"dfbk": _cells(3, rng=1)})
    paths = write_comparison_table(df, tmp_path / "t", ("psnr_fg", "ssim_fg"), "", "dfbk")
    md = paths["md"].read_text()
    assert "all 0 p-values" in md and "No difference between rows was resolved" in md
    assert "**" not in md and "| —" in md


def test_tests_against_the_reference_with_intervals_and_power(tmp_path):
    """Δ [95 % CI] and Holm p per row in the table, raw p and variance components in the csv,
    and the caption's power sentence from the same numbers."""
    df = _frame({"dfbk": _cells(4, 0.03, rng=1), "resshift": _cells(4, 0.0, rng=2),
                 "no-kg": _cells(4, 0.029, rng=3)})  # fmt: skip
    paths = write_comparison_table(df, tmp_path / "t", ("psnr_fg", "ssim_fg"), "", "dfbk")
    md = paths["md"].read_text()
    assert "Δ SSIM vs dfbk [95 % CI]" in md and "p_Holm (SSIM vs dfbk)" in md
    assert "p (SSIM vs dfbk)" not in md  # raw p in the csv only
    csv = pd.read_csv(paths["csv"]).set_index("method")
    row = csv.loc["resshift"]
    assert row["diff (SSIM vs dfbk)"] == pytest.approx(-0.03, abs=0.002)  # row - reference
    assert row["ci_low (SSIM vs dfbk)"] < row["diff (SSIM vs dfbk)"] < row["ci_high (SSIM vs dfbk)"]
    assert row["test (SSIM vs dfbk)"] == "paired" and row["n_seeds_ref (SSIM vs dfbk)"] == 4
    # constructed: seed SD 0.01 per row -> SD of a one-seed difference sqrt(2) * 0.01
    assert row["run_sd (SSIM vs dfbk)"] == pytest.approx(np.sqrt(2) * 0.01, rel=0.1)
    assert row["p_Holm (SSIM vs dfbk)"] >= row["p (SSIM vs dfbk)"]
    assert csv.loc["no-kg", "p_Holm (SSIM vs dfbk)"] > 0.05  # 0.001 apart: unresolved
    assert np.isinf(csv.loc["no-kg", "seeds_needed (SSIM vs dfbk)"]) or (
        csv.loc["no-kg", "seeds_needed (SSIM vs dfbk)"] > 100
    )
    detectable = row["detectable (SSIM vs dfbk)"]
    assert f"resshift {detectable:.4f} (the observed" in md and "80 % power" in md
    needed = int(row["seeds_needed (SSIM vs dfbk)"])
    assert f"needs {needed} seeds" in md and 2 <= needed <= 4  # resolved at 4 seeds already
    assert np.isnan(csv.loc["dfbk", "p (SSIM vs dfbk)"])  # the reference has no test row
    with pytest.raises(DataError, match="mae_hu_fg"):
        write_comparison_table(df, tmp_path / "u", ("mae_hu_fg",))


def test_holm_family_spans_directions_metrics_and_bold_tests(tmp_path):
    """Two directions x two metrics x two rows against dfbk, plus the bold tests: one family."""
    df = pd.concat([
        _frame({"dfbk": _cells(3, 0.05, rng=1), "a": _cells(3, rng=2),
                "b": _cells(3, 0.06, rng=3)}),
        _frame({"dfbk": _cells(3, 0.0, rng=4), "a": _cells(3, rng=5),
                "b": _cells(3, 0.01, rng=6)}, direction="b-to-a"),
    ])  # fmt: skip
    higher = {"psnr_fg": True, "ssim_fg": True}
    tests, _ = table_tests(df, ["psnr_fg", "ssim_fg"], higher, "dfbk", ["psnr_fg", "ssim_fg"])
    np.testing.assert_allclose(tests["p_holm"], holm(tests["p"].to_numpy()))
    # per direction and metric: dfbk vs a, dfbk vs b (reference), best b vs a (bold) -> 3 x 4
    assert len(tests) == 12 and tests["p"].notna().all()
    assert (tests.role == "bold").sum() == 4
    paths = write_comparison_table(df, tmp_path / "t", ("psnr_fg", "ssim_fg"), "", "dfbk")
    assert "all 12 p-values of the table" in paths["md"].read_text()
    csv = pd.read_csv(paths["csv"])
    shown = csv["p_Holm (SSIM vs dfbk)"].dropna().sort_values().to_numpy()
    family = tests[(tests.metric == "ssim_fg") & (tests.role == "reference")]
    np.testing.assert_allclose(shown, np.sort(family["p_holm"].to_numpy()))


def test_power_verb_prints_each_pair(tmp_path, capsys):
    """`dfbk power RESULTS_DIR`: per pair the difference, seed and subject SD, detectable
    difference and seeds needed; a one-seed row says why it has none; an empty folder is a
    one-line error."""
    from dfbk.cli import main

    evaluate = tmp_path / "results" / "evaluate"
    for method, array in (("dfbk", _cells(3, 0.03, rng=1)), ("resshift", _cells(3, rng=2)),
                          ("pix2pix", _cells(1, rng=3))):  # fmt: skip
        for seed, values in enumerate(array):
            rows = [{"subject": f"s{j}", "ssim_fg": v, "psnr_fg": 20 + 20 * v}
                    for j, v in enumerate(values)]  # fmt: skip
            _write_run(evaluate, method, seed, rows)
    assert main(["power", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| phantom")]
    assert len(lines) == 4  # (resshift, pix2pix) - dfbk on SSIM and PSNR
    resshift = next(line for line in lines if "resshift − dfbk" in line and "ssim_fg" in line)
    cells = [c.strip() for c in resshift.split("|")[1:-1]]
    assert cells[4:6] == ["3/3", "10"] and float(cells[6]) == pytest.approx(-0.03, abs=0.003)
    assert float(cells[9]) > 0 and cells[10].isdigit()
    assert any(ONE_SEED in line for line in lines if "pix2pix" in line)
    assert power_report(tmp_path / "results").splitlines()[0] == out.splitlines()[0]
    assert main(["power", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("dfbk power: error:")
        and "metrics.json" in err
        and len(err.splitlines()) == 1
    )


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


def test_budget_line_states_the_paper_preset_against_resshift_s_released_recipe(tmp_path):
    """The ResShift-family rows name their budget beside the released recipe (batch 64 as 4 x 16,
    500,000 iterations, fp32); a method without a released recipe is not in that sentence."""
    from dfbk.methods import build_method

    recipe = build_method("resshift", "tiny").describe()["released_recipe"]
    assert recipe == build_method("dfbk", "tiny").describe()["released_recipe"]
    assert recipe == {"steps": 500_000, "batch_size": 64, "microbatch": 16, "precision": "fp32"}
    describe = {"released_recipe": recipe}
    runs = [
        _write_run_json(tmp_path, m, 0, steps=300_000, batch_size=16, describe=describe,
                        speed={"amp_bf16": True})
        for m in ("resshift", "dfbk")
    ] + [_write_run_json(tmp_path, "pix2pix", 0, steps=200_000, batch_size=1)]  # fmt: skip
    caption = caption_notes(runs)
    # 300,000 x 16 = 4.8 M samples of 500,000 x 64 = 32 M: 15 %
    assert (
        "resshift, dfbk trained 300000 × 16 with bf16 autocast, 15 % of the training samples of "
        "ResShift's released recipe (batch 64 as microbatches of 16 with gradient accumulation, "
        "500,000 iterations, fp32;" in caption
    )
    assert "pix2pix trained" not in caption
    assert "released recipe" not in caption_notes(runs[2:])


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
    'real target' row (the ceiling, never bold nor tested); a dataset without labels shows '—'."""
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
    # pix2pix has the best Dice but one seed: not resolved, so not bold (it used to be)
    assert "| 0.800 ± 0.141 " in lines[("brats2023", "t1n-to-t2w", "pix2pix")]
    assert "0.900 ± 0.141" in lines[("brats2023", "t1n-to-t2w", "real target")]
    assert "**" not in md  # the ceiling is a reference, not a contender
    synthrad = lines[("synthrad2023", "t1n-to-t2w", "dfbk")].split("|")
    assert synthrad[header.index("Dice oedema ↑")].strip() == "—"  # no labels, no Dice


def test_dice_file_of_other_subjects_is_refused_naming_it(tmp_path):
    path = _write_run(tmp_path, "dfbk", 0, [{"subject": "s1", "ssim_fg": 0.5}])
    pd.DataFrame({"subject": ["s7"], "dice_lesion": [0.5]}).to_csv(
        path.parent / "dice.csv", index=False
    )
    with pytest.raises(DataError, match=r"dice\.csv: subjects differ"):
        collect_results([path])
