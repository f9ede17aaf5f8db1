"""The floors (dfbk.baselines.floors): fitted by the shared trainer from the whole training split,
reproduced from their checkpoint by predict, and marked in the comparison table."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from dfbk.data.slices.splits import read_split, write_or_check_split
from dfbk.data.slices.store import write_store
from dfbk.errors import ConfigError
from dfbk.inference.predict import predict_test_set
from dfbk.methods.registry import FLOOR_METHODS, build_method
from dfbk.reporting.tables import FLOOR_MARK, write_comparison_table
from dfbk.training.checkpoint import load_checkpoint, rebuild_method
from dfbk.training.trainer import Trainer, TrainSpec

SIZE = 48
SUBJECTS = {"s0": 9, "s1": 7, "s2": 8, "s3": 6, "s4": 5}  # uneven: no batch divides the split
A, B = 0.12, 0.7  # the affine map the linear floor must recover


@pytest.fixture(scope="module")
def floor_store(tmp_path_factory):
    """Brain-like slices: a disc whose radius varies by slice (so some positions are foreground
    in a few training slices only, the corners never), source uniform in (0.05, 1] inside it,
    target = A + B * source inside, 0 outside."""
    n = sum(SUBJECTS.values())
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    radius = rng.uniform(0.25, 0.45, n) * SIZE
    mask = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < radius[:, None, None] ** 2
    mask = mask.astype(np.uint8)
    source = rng.uniform(0.05, 1.0, (n, SIZE, SIZE)).astype(np.float32) * mask
    target = ((A + B * source) * mask).astype(np.float32)
    root = tmp_path_factory.mktemp("floors")
    store = write_store(
        root / "store", {"t1n": source, "t2w": target}, mask, np.zeros_like(mask), SUBJECTS
    )
    write_or_check_split(root / "splits.json", store.subjects, {"train": 3, "val": 1, "test": 1}, 0)
    return store, root / "splits.json"


def train_floor(floor_store, folder, method: str) -> TrainSpec:
    store, split = floor_store
    spec = TrainSpec(dataset="custom", direction="t1n-to-t2w", method=method, seed=0,
                     store_dir=store.root, split_path=split, out_dir=folder / "out",
                     checkpoint_dir=folder / "ckpt", device="cpu")  # fmt: skip
    Trainer(spec).run()
    return spec


def training_arrays(floor_store):
    store, split = floor_store
    idx = store.indices(read_split(split)["train"])
    source, target = store.images("t1n")[idx], store.images("t2w")[idx]
    return source.astype(np.float64), target.astype(np.float64), store.mask[idx] > 0


def test_the_floors_are_registered_cpu_only_and_in_the_catalog():
    from dfbk.methods.catalog import load_catalog

    catalog = load_catalog()
    for name in FLOOR_METHODS:
        assert catalog[name].cpu_only and catalog[name].parameters == {"tiny": 0, "paper": 0}
    assert catalog["mean"].presets["tiny"]["patch_size"] is None


def test_linear_floor_recovers_a_known_affine_map(floor_store, tmp_path):
    """Targets are exactly A + B * source in float32, so the float64 fit is exact up to the
    float32 rounding of the stored target (half an ulp of values below 1: 6e-8)."""
    spec = train_floor(floor_store, tmp_path, "linear")
    a, b = load_checkpoint(spec.out_dir / "model.pt")["state"]["coefficients"].tolist()
    assert a == pytest.approx(A, abs=1e-6) and b == pytest.approx(B, abs=1e-6)
    run = json.loads((spec.out_dir / "run.json").read_text())
    assert run["steps"] == 0 and run["describe"]["b"] == pytest.approx(B, abs=1e-6)
    assert run["best_val_ssim"] > 0.99  # the map is the truth here


def test_linear_fit_matches_numpy_least_squares_on_noisy_batches_of_any_size():
    """Streamed moments give numpy's one-shot least squares, whatever the batch cut."""
    from dfbk.methods.base import Batch

    g = torch.Generator().manual_seed(3)
    source = torch.rand(23, 1, 32, 32, generator=g)
    target = (0.3 - 0.4 * source + 0.05 * torch.randn(source.shape, generator=g)).clamp(0, 1)
    mask = (torch.rand(source.shape, generator=g) > 0.3).float()
    x, y = source[mask > 0].double().numpy(), target[mask > 0].double().numpy()
    slope, intercept = np.polyfit(x, y, 1)
    for cut in (1, 5, 23):
        method = build_method("linear")
        method.fit_split(
            Batch(source[i : i + cut], target[i : i + cut], mask[i : i + cut])
            for i in range(0, 23, cut)
        )
        a, b = method.coefficients.tolist()
        assert a == pytest.approx(intercept, abs=1e-10) and b == pytest.approx(slope, abs=1e-10)


def test_mean_floor_is_the_hand_computed_mean_image(floor_store, tmp_path):
    """Every training slice counted once (the split has no batch-size multiple), foreground
    only; never-foreground positions take the overall foreground mean."""
    spec = train_floor(floor_store, tmp_path, "mean")
    _, target, fg = training_arrays(floor_store)
    count = fg.sum(0)
    overall = target[fg].mean()
    expected = np.where(count > 0, (target * fg).sum(0) / np.maximum(count, 1), overall)
    state = load_checkpoint(spec.out_dir / "model.pt")["state"]
    assert (count == 0).any() and (count > 0).any()  # both branches are exercised
    np.testing.assert_allclose(state["mean_image"].numpy(), expected, rtol=0, atol=1e-12)
    assert float(state["overall_mean"]) == pytest.approx(overall, abs=1e-12)


@pytest.mark.parametrize("name", ["mean", "linear"])
def test_floor_checkpoint_round_trips_through_predict(floor_store, tmp_path, name):
    """predict rebuilds the floor from model.pt alone and writes what the fitted method
    predicts: zero outside the source's foreground."""
    store, split = floor_store
    spec = train_floor(floor_store, tmp_path, name)
    payload = load_checkpoint(spec.out_dir / "model.pt")
    rebuilt = rebuild_method(payload, spec.out_dir / "model.pt")
    out = tmp_path / "pred"
    index = predict_test_set(spec.out_dir / "model.pt", store.root, split, out, device="cpu")
    (subject,) = index["subjects"]
    volume = nib.load(str(out / f"{subject}.nii.gz")).get_fdata()
    source = np.asarray(store.images("t1n")[store.indices([subject])])
    with torch.no_grad():
        expected = rebuilt.translate(torch.from_numpy(source)[:, None])[:, 0].numpy()
    assert volume.shape == (SIZE, SIZE, len(source))
    np.testing.assert_allclose(np.moveaxis(volume, -1, 0), expected, rtol=0, atol=1e-6)
    assert (expected[source == 0] == 0).all() and expected[source > 0].min() > 0
    if name == "linear":  # the truth, up to float32 storage
        np.testing.assert_allclose(expected, np.where(source > 0, A + B * source, 0), atol=2e-6)


def test_mean_image_is_centred_on_another_grid():
    method = build_method("mean")
    method.mean_image = torch.arange(16, dtype=torch.float64).reshape(4, 4) / 16
    source = torch.ones(1, 1, 2, 6)
    out = method.translate(source)[0, 0]
    assert out[:, 0].eq(0).all() and out[:, -1].eq(0).all()  # padded columns
    torch.testing.assert_close(out[:, 1:5], method.mean_image[1:3].float())  # cropped rows


# ----- the comparison table ----------------------------------------------------------------
def _frame(rows: dict[str, float], n_seeds: int = 4, n_subjects: int = 8) -> pd.DataFrame:
    """Long results frame: each method's SSIM fg = its level + a shared subject effect + a
    little noise; PSNR fg = 10 + 20 * SSIM except `linear`, which leads PSNR."""
    gen = np.random.default_rng(5)
    subject = gen.normal(0, 0.03, n_subjects)
    out = []
    for method, level in rows.items():
        for seed in range(n_seeds):
            values = level + subject + gen.normal(0, 0.002, n_subjects)
            for j, value in enumerate(values):
                psnr = 40.0 if method == "linear" else 10 + 20 * value
                out.append({"dataset": "d", "direction": "a-to-b", "method": method,
                            "seed": seed, "subject": f"s{j}", "ssim_fg": value,
                            "psnr_fg": psnr + gen.normal(0, 0.01)})  # fmt: skip
    return pd.DataFrame(out)


def test_floors_are_never_bold_and_a_row_below_a_floor_is_marked(tmp_path):
    """linear leads PSNR by far but is a floor: that column has no bold. `weak` beats identity
    but not mean on SSIM: it stays, marked; `strong` beats every floor and is bold in SSIM."""
    df = _frame({"identity": 0.30, "mean": 0.45, "linear": 0.40, "weak": 0.35, "strong": 0.60})
    paths = write_comparison_table(df, tmp_path / "t", ("ssim_fg", "psnr_fg"))
    md = paths["md"].read_text()
    lines = {
        line.split("|")[3].strip(): line for line in md.splitlines() if line.startswith("| d ")
    }
    assert set(lines) == {"identity", "mean", "linear", f"weak{FLOOR_MARK}", "strong"}
    assert all("**" not in lines[m] for m in FLOOR_METHODS)
    assert lines["strong"].count("**") == 2  # bold in SSIM only: PSNR's best row is a floor
    assert f"{FLOOR_MARK} does not beat every floor on the mean SSIM fg" in md
    csv = pd.read_csv(paths["csv"]).set_index("method")
    assert csv.loc["weak", "beats_floors"] == False  # noqa: E712
    assert csv.loc["strong", "beats_floors"] == True  # noqa: E712
    assert csv.loc[list(FLOOR_METHODS), "beats_floors"].isna().all()
    assert (
        not csv[[c for c in csv.columns if c.endswith("_bold")]]
        .loc[list(FLOOR_METHODS)]
        .any(axis=None)
    )
    tex = paths["tex"].read_text()
    assert f"weak{FLOOR_MARK}" in tex


def test_no_mark_and_no_floor_note_without_floor_rows(tmp_path):
    df = _frame({"weak": 0.35, "strong": 0.60})
    md = write_comparison_table(df, tmp_path / "t", ("ssim_fg",))["md"].read_text()
    assert FLOOR_MARK not in md and "Floors (" not in md


def test_a_floor_is_never_the_reference(tmp_path):
    df = _frame({"identity": 0.30, "strong": 0.60})
    with pytest.raises(ConfigError, match="significance_vs: 'identity' is a floor"):
        write_comparison_table(df, tmp_path / "t", ("ssim_fg",), significance_vs="identity")
    assert not (tmp_path / "t.md").exists()


def test_the_budget_caption_names_the_floors_apart(tmp_path):
    """A floor's batch size is only its read chunk: the caption does not call it '0 × 64'."""
    from dfbk.reporting.captions import caption_notes

    runs = []
    for method, steps, batch in (("dfbk", 600, 8), ("identity", 0, 1), ("mean", 0, 64)):
        path = tmp_path / method / "run.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"dataset": "d", "direction": "a-to-b", "method": method,
                                    "seed": 0, "steps": steps, "batch_size": batch}))  # fmt: skip
        runs.append(path)
    caption = caption_notes(runs)
    assert "Training budget (steps × batch size): dfbk 600 × 8." in caption
    assert "Floors (identity, mean): no training steps" in caption and "0 × 64" not in caption
