"""The shared trainer: outputs, exact resume after a crash, NaN stop keeping the last checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import kill_at_step, train_spec

from dfbk.data.slices.loader import PARTNER_WINDOW, SliceBatcher
from dfbk.errors import TrainingError
from dfbk.training.checkpoint import load_checkpoint
from dfbk.training.trainer import Trainer, TrainSpec

OVERRIDES = {"steps": 6, "batch_size": 4, "decay_start": 3}


def spec_for(phantom_store, tmp_path, name: str, **kwargs) -> TrainSpec:
    overrides = {**OVERRIDES, **kwargs.pop("overrides", {}), "num_downs": 4, "ngf": 8, "ndf": 8}
    fields = {"overrides": overrides, "checkpoint_every": 2, **kwargs}
    return train_spec(phantom_store, tmp_path / name, **fields)


def final_state(spec: TrainSpec) -> dict:
    return load_checkpoint(spec.out_dir / "model.pt")["state"]


def test_training_writes_model_run_and_log(phantom_store, tmp_path):
    spec = spec_for(phantom_store, tmp_path, "plain")
    Trainer(spec).run()
    payload = load_checkpoint(spec.out_dir / "model.pt")
    assert payload["method"] == "pix2pix" and payload["direction"] == "t1n-to-t2w"
    assert payload["target"]["modality"] == "t2w" and payload["step"] == 6
    lines = (spec.out_dir / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(6))
    run = json.loads((spec.out_dir / "run.json").read_text())
    assert run["n_parameters"] > 0 and run["hparams"]["steps"] == 6


def test_a_method_with_no_steps_is_validated_once_and_finishes(phantom_store, tmp_path):
    """identity trains for 0 steps: the loop never validates, so the end must (the demo's bug)."""
    spec = train_spec(phantom_store, tmp_path / "id", "identity")
    Trainer(spec).run()
    run = json.loads((spec.out_dir / "run.json").read_text())
    assert run["steps"] == 0 and run["best_step"] == 0
    assert 0.0 < run["best_val_ssim"] < 1.0  # the copy scores something, not perfection
    assert load_checkpoint(spec.out_dir / "best.pt")["step"] == 0


@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        ("dea_gan", {"num_downs": 4, "ngf": 8, "ndf": 8, "edge_ramp_steps": 1}),
        ("maskgan", {"n_blocks": 1, "ngf": 4, "ndf": 4}),
    ],
)
def test_methods_with_an_image_pool_validate_and_finish(phantom_store, tmp_path, method, overrides):
    """An image pool is non-tensor extra state: validation must copy it, not .detach() it."""
    overrides = {"steps": 2, "batch_size": 2, "decay_start": 1, **overrides}
    spec = train_spec(phantom_store, tmp_path / method, method, overrides=overrides)
    Trainer(spec).run()
    run = json.loads((spec.out_dir / "run.json").read_text())
    assert run["best_step"] == 2 and np.isfinite(run["best_val_ssim"])


def test_resume_after_a_crash_is_bit_identical(phantom_store, tmp_path):
    reference = spec_for(phantom_store, tmp_path, "reference")
    Trainer(reference).run()

    crashed = spec_for(phantom_store, tmp_path, "crashed")
    kill_at_step(Trainer(crashed), 5)
    assert load_checkpoint(crashed.checkpoint_dir / "last.pt")["step"] == 4
    assert not (crashed.out_dir / "model.pt").exists()

    resumed = Trainer(crashed)  # a fresh process would build exactly this
    resumed.run()
    a, b = final_state(reference), final_state(crashed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [
        json.loads(x)["step"]
        for x in (crashed.out_dir / "train_log.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(6))  # no duplicated log lines after resume


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(
    phantom_store, tmp_path, monkeypatch
):
    spec = spec_for(phantom_store, tmp_path, "nan")
    trainer = Trainer(spec)
    original = trainer.method.training_step

    def nan_at_three(batch, step):
        losses = original(batch, step)
        return {**losses, "loss_g": float("nan")} if step == 3 else losses

    monkeypatch.setattr(trainer.method, "training_step", nan_at_three)
    with pytest.raises(TrainingError, match=r"non-finite loss at step 3.*last\.pt"):
        trainer.run()
    assert load_checkpoint(spec.checkpoint_dir / "last.pt")["step"] == 2
    assert not (spec.out_dir / "model.pt").exists()


def test_resume_refuses_a_checkpoint_from_other_settings(phantom_store, tmp_path):
    spec = spec_for(phantom_store, tmp_path, "changed")
    Trainer(spec).run()
    other = spec_for(phantom_store, tmp_path, "changed", overrides={"lr": 5e-4})
    with pytest.raises(TrainingError, match="other data or settings.*hparams"):
        Trainer(other).run()


def test_ema_weights_are_what_inference_uses(phantom_store, tmp_path):
    overrides = {"steps": 3, "batch_size": 2, "ema_decay": 0.5}
    spec = train_spec(
        phantom_store, tmp_path / "ema", "resshift", overrides=overrides, val_every=0, val_slices=2
    )
    trainer = Trainer(spec)
    trainer.run()
    inference = load_checkpoint(spec.out_dir / "model.pt")["state"]
    training = load_checkpoint(spec.checkpoint_dir / "last.pt")["state"]
    ema = trainer.ema.module.state_dict()
    key = next(k for k in inference if k.startswith("net.") and inference[k].is_floating_point())
    assert torch.equal(inference[key], ema[key.removeprefix("net.")])
    assert not torch.equal(inference[key], training[key])


def test_validation_is_logged_and_best_and_last_are_kept(phantom_store, tmp_path, monkeypatch):
    spec = spec_for(phantom_store, tmp_path, "val", val_every=2, val_slices=3)
    trainer = Trainer(spec)
    monkeypatch.setattr(trainer.method, "diagnostics", lambda: {"gate": 0.25})
    trainer.run()
    records = [json.loads(x) for x in (spec.out_dir / "train_log.jsonl").read_text().splitlines()]
    validated = [r["step"] for r in records if "val_ssim" in r]
    assert validated == [1, 3, 5]  # after steps 2, 4 and 6
    assert all(r["diag_gate"] == 0.25 for r in records)
    run = json.loads((spec.out_dir / "run.json").read_text())
    best_step = max(validated, key=lambda s: records[s]["val_ssim"]) + 1
    assert run["best_step"] == best_step and run["evaluated_checkpoint"] == "last"
    assert run["best_val_ssim"] == records[best_step - 1]["val_ssim"]
    assert run["evaluated_step"] == 6 and run["val_slices"] == 3
    assert run["train_flops_per_step"] > 0 and run["n_parameters"] > 0
    assert (run["batch_size"], run["patch_size"], run["augment"]) == (4, None, "hflip")
    best = load_checkpoint(spec.out_dir / "best.pt")
    model = load_checkpoint(spec.out_dir / "model.pt")
    assert (best["checkpoint"], best["step"]) == ("best", best_step)
    assert (model["checkpoint"], model["step"]) == ("last", 6)
    assert model["fingerprint"]["split_sha256"] == best["fingerprint"]["split_sha256"]


@pytest.mark.parametrize(("patch", "tile", "tiles"), [(32, (32, 32), 4), (None, (48, 48), 1)])
def test_validation_runs_the_network_on_the_tiles_the_test_set_is_translated_in(
    phantom_store, tmp_path, monkeypatch, patch, tile, tiles
):
    """A patch-trained method is validated in its training tile (half-overlapping 32x32 tiles
    of the 48x48 slices: a 2x2 grid), as `dfbk predict` translates the test set, so best.pt is
    picked by the score the test will measure; a whole-slice method sees whole slices."""
    overrides = {"patch_size": patch} if patch else {}
    trainer = Trainer(spec_for(phantom_store, tmp_path, "tiles", overrides=overrides, val_slices=3))
    seen = []
    original = trainer.method.translate

    def recording(source, knowledge=None, seeds=None, **extra):
        seen.append(tuple(source.shape))
        return original(source, knowledge, seeds, **extra)

    monkeypatch.setattr(trainer.method, "translate", recording)
    pred = trainer.validator.predict(trainer.method, None)
    assert pred.shape == (3, 48, 48) and np.isfinite(pred).all()
    assert {shape[-2:] for shape in seen} == {tile}
    assert sum(shape[0] for shape in seen) == 3 * tiles


def test_evaluate_best_makes_the_best_step_model_pt(phantom_store, tmp_path):
    spec = spec_for(phantom_store, tmp_path, "best", val_every=2, evaluate="best")
    Trainer(spec).run()
    run = json.loads((spec.out_dir / "run.json").read_text())
    model = load_checkpoint(spec.out_dir / "model.pt")
    assert run["evaluated_checkpoint"] == "best" and model["step"] == run["best_step"]
    best = load_checkpoint(spec.out_dir / "best.pt")["state"]
    assert all(torch.equal(model["state"][k], best[k]) for k in best)


def test_validation_never_changes_the_training_trajectory(phantom_store, tmp_path, monkeypatch):
    often = spec_for(phantom_store, tmp_path, "often", val_every=1)
    once = spec_for(phantom_store, tmp_path, "once", val_every=0)
    trainer = Trainer(often)
    original = trainer.method.translate

    def translate_in_train_mode(source, knowledge=None, seeds=None):
        trainer.method.train()  # as pix2pix's released test script: BatchNorm stats move
        trainer.method.generator(source * 2 - 1)
        torch.rand(3)  # and a sampler draws from the global RNG
        return original(source, knowledge, seeds)

    monkeypatch.setattr(trainer.method, "translate", translate_in_train_mode)
    trainer.run()
    monkeypatch.undo()
    Trainer(once).run()
    a, b = final_state(often), final_state(once)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_augment_and_patch_size_come_from_the_method_settings(phantom_store, tmp_path):
    store, _ = phantom_store
    spec = spec_for(
        phantom_store, tmp_path, "patch", overrides={"augment": "none", "patch_size": 32}
    )
    trainer = Trainer(spec)
    batcher = trainer.batcher
    assert batcher.flip is False and batcher.patch_size == 32
    batch = batcher.batch(3)
    assert batch.source.shape[-2:] == (32, 32)
    idx, corners = batcher.batch_indices(3), batcher.crop_corners(3, 4)
    for i, (y, x) in enumerate(corners):  # one position for source, target and mask; no flip
        window = (slice(y, y + 32), slice(x, x + 32))
        full = {
            "source": store.images("t1n")[idx[i]],
            "target": store.images("t2w")[idx[i]],
            "mask": store.mask[idx[i]],
        }
        for name, image in full.items():
            expected = torch.from_numpy(image[window].astype("float32"))
            assert torch.equal(getattr(batch, name)[i, 0], expected), name
    assert not np.array_equal(batcher.crop_corners(3, 4), batcher.crop_corners(4, 4))


def test_unpaired_partners_come_from_a_similar_level_of_any_training_subject(phantom_store):
    store, split_path = phantom_store
    train = json.loads(split_path.read_text())["train"]
    batcher = SliceBatcher(store, "t1n", "t2w", train, batch_size=4, seed=1, paired=False)
    ranges = {s: store.subject_range(s) for s in train}

    def where(index):
        subject = next(s for s, (a, b) in ranges.items() if a <= index < b)
        a, b = ranges[subject]
        return subject, (index - a) / (b - a - 1)

    seen = set()
    for step in range(5):
        for own, partner in zip(
            batcher.batch_indices(step), batcher.unpaired_indices(step), strict=True
        ):
            (_, r1), (_, r2) = where(own), where(partner)
            assert abs(r1 - r2) <= PARTNER_WINDOW + 1e-9  # MaskGAN's released rule: +-0.03
            seen.add(where(partner)[0])
    assert len(seen) > 1  # partners come from several subjects, not the source's own
    assert np.array_equal(batcher.unpaired_indices(2), batcher.unpaired_indices(2))


def test_flops_are_counted_through_autograd_grad_as_torch_counts_them():
    from torch.utils.flop_counter import FlopCounterMode

    from dfbk.training.flops import counted

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 8, 3, padding=1)
    x = torch.randn(2, 1, 16, 16)

    def plain_step():
        return conv(x).square().sum()

    def r1_step():  # SynDiff's R1 penalty: a gradient of the output w.r.t. the input
        real = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(conv(real).sum(), real, create_graph=True)
        return grad.square().sum()

    with FlopCounterMode(display=False) as reference:
        expected = plain_step()
    value, flops = counted(plain_step)
    assert flops == reference.get_total_flops() == 2 * 2 * 8 * 16 * 16 * 9
    assert torch.equal(value, expected)
    value, flops = counted(r1_step)  # FlopCounterMode's module hooks raise here
    assert flops > 0 and torch.equal(value, r1_step())
