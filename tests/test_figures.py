"""Figures: slices chosen by lesion and anatomy, a pair of rows per seed, PNG and PDF, training
curves, and the report texts the workflow points at."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
from conftest import REPO
from test_reporting import SUBJECTS, store_with_preds  # noqa: F401 (fixture)

from dfbk import cli
from dfbk.reporting.curves import make_loss_curves, read_curves, smooth
from dfbk.reporting.figures import make_comparison_figure, pick_slices


def png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_slices_by_lesion_then_anatomy(store_with_preds):  # noqa: F811
    store, _, _ = store_with_preds
    # sub-b: offset 0 has no foreground, 1 the only lesion, 2 the most foreground
    assert pick_slices(store, "sub-b") == [
        (1, "largest lesion"),
        (2, "most foreground"),
        (3, "anatomy away from the others"),
    ]
    assert len(pick_slices(store, "sub-b", count=4)) == 3  # offset 0: no foreground, never
    # sub-a: no lesion, equal foreground: the first slice, then the farthest, then the middle
    assert [k for k, _ in pick_slices(store, "sub-a")] == [0, 2, 1]
    assert pick_slices(store, "sub-b", count=1) == [(1, "largest lesion")]


def test_every_seed_gets_rows_and_a_pdf(store_with_preds, tmp_path):  # noqa: F811
    store, split, pred_dirs = store_with_preds
    figures = tmp_path / "figures"
    figures.mkdir()
    args = (store.root, split, "t1n-to-t2w")
    one = make_comparison_figure(*args, pred_dirs, figures / "one.png", slices=1)
    seeds = {m: {0: folder, 1: folder} for m, folder in pred_dirs.items()}
    two = make_comparison_figure(*args, seeds, figures / "two.png", slices=1)
    (w1, h1), (w2, h2) = png_size(one), png_size(two)
    assert w1 == w2 and h2 > 1.8 * h1  # 1 slice x 2 seeds x 2 rows vs 1 x 1 x 2
    for stem in ("one", "two"):
        assert (figures / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in figures.iterdir()) == [
        "one.pdf",
        "one.png",
        "two.pdf",
        "two.png",
    ]


def _log(path, steps, terms, val_every, seed):
    rng = np.random.default_rng(seed)
    lines = []
    for step in range(steps):
        line = {"step": step, "time": 0.1 * step}
        line.update({t: float(1 / (step + 1) + 0.1 * rng.random()) for t in terms})
        if (step + 1) % val_every == 0:
            line["val_ssim"] = 0.5 + step / (4 * steps)
        line["diag_gate"] = 0.3
        lines.append(json.dumps(line))
    path.mkdir(parents=True, exist_ok=True)
    (path / "train_log.jsonl").write_text("\n".join(lines) + '\n{"step": 4')  # torn last line
    return path


def test_loss_curves_from_training_logs(tmp_path, capsys):
    runs = {
        "pix2pix": {s: _log(tmp_path / f"p{s}", 120, ("loss_G", "loss_D"), 40, s) for s in (0, 1)},
        "dfbk": {0: _log(tmp_path / "d0", 80, ("loss",), 20, 3)},
        "identity": {0: tmp_path / "identity"},  # no log: named, not fatal
    }
    curves = read_curves(tmp_path / "p0" / "train_log.jsonl")
    assert set(curves) == {"loss_G", "loss_D", "val_ssim"}  # no step/time/diag_
    assert curves["val_ssim"][0].tolist() == [40, 80, 120]  # 1-based steps; torn line skipped
    assert len(curves["loss_G"][0]) == 120
    out = make_loss_curves(runs, tmp_path / "curves.png", "phantom t1n-to-t2w")
    assert png_size(out)[0] > 500 and (tmp_path / "curves.pdf").read_bytes()[:5] == b"%PDF-"
    # the workflow passes bare run folders: method and seed come from .../METHOD/seed-N
    bare = _log(tmp_path / "train" / "dfbk-no-kg" / "seed-2", 30, ("loss",), 10, 4)
    argv = ["curves", str(tmp_path / "cli.png"), "--run", f"dfbk@2={tmp_path / 'd0'}"]
    assert cli.main([*argv, "--run", str(bare)]) == 0 and (tmp_path / "cli.pdf").is_file()
    assert "cli.png" in capsys.readouterr().out
    for bad in ("dfbk@x=somewhere", str(tmp_path / "d0")):
        assert cli.main(["curves", str(tmp_path / "bad.png"), "--run", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--run {bad}: expected METHOD=PATH" in err
    assert not (tmp_path / "bad.png").exists()


def test_smoothing_keeps_levels_and_damps_noise():
    flat = np.full(500, 0.25)
    np.testing.assert_allclose(smooth(flat), flat, rtol=0, atol=1e-15)  # edges renormalised
    noise = np.random.default_rng(0).standard_normal(5000)
    assert smooth(noise).std() < 0.2 * noise.std()  # a 100-point mean: std / 10
    assert smooth(np.arange(10.0)).tolist() == list(range(10))  # short runs: raw values


def test_figure_verb_takes_seeds(store_with_preds, tmp_path, capsys):  # noqa: F811
    store, split, pred_dirs = store_with_preds
    out = tmp_path / "cli.png"
    argv = ["figure", str(store.root), str(split), "t1n-to-t2w", str(out)]
    argv += [f"--prediction={m}@{s}={d}" for m, d in pred_dirs.items() for s in (0, 3)]
    assert cli.main([*argv, "--slices", "1", "--formats", "png", "pdf"]) == 0
    assert out.is_file() and out.with_suffix(".pdf").is_file()
    with pytest.raises(SystemExit):
        cli.main(["figure", "--help"])
    assert "example:" in capsys.readouterr().out


def test_report_texts_exist_for_the_workflow():
    snakefile = (REPO / "Snakefile").read_text()
    assert re.search(r'^report: "workflow/report/workflow.rst"$', snakefile, re.M)
    assert "snakemake.config" in (REPO / "workflow/report/workflow.rst").read_text()
    rules = (REPO / "workflow/rules/report.smk").read_text()
    for caption in re.findall(r'caption="\.\./report/([a-z_]+\.rst)"', rules):
        assert (REPO / "workflow/report" / caption).is_file(), caption
    assert "_curves.png" in rules and "{direction}}.pdf" in rules
