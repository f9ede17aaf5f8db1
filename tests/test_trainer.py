"""The shared trainer: outputs, exact resume after a crash, NaN stop keeping the last checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from dfbk.errors import TrainingError
from dfbk.training.checkpoint import load_checkpoint
from dfbk.training.trainer import Trainer, TrainSpec

OVERRIDES = {"steps": 6, "batch_size": 4, "decay_start": 3}


def spec_for(phantom_store, tmp_path, name: str, **kwargs) -> TrainSpec:
    store, split = phantom_store
    overrides = dict(OVERRIDES)
    overrides.update(kwargs.pop("overrides", {}))
    return TrainSpec(
        dataset="phantom",
        direction="t1n-to-t2w",
        method="pix2pix",
        seed=0,
        store_dir=store.root,
        split_path=split,
        out_dir=tmp_path / name / "out",
        checkpoint_dir=tmp_path / name / "ckpt",
        preset="tiny",
        overrides={**overrides, "num_downs": 4, "ngf": 8, "ndf": 8},
        checkpoint_every=2,
        device="cpu",
        **kwargs,
    )


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


def test_resume_after_a_crash_is_bit_identical(phantom_store, tmp_path, monkeypatch):
    reference = spec_for(phantom_store, tmp_path, "reference")
    Trainer(reference).run()

    crashed = spec_for(phantom_store, tmp_path, "crashed")
    trainer = Trainer(crashed)
    original = trainer.method.training_step

    def crash_at_five(batch, step):
        if step == 5:
            raise KeyboardInterrupt("simulated kill")
        return original(batch, step)

    monkeypatch.setattr(trainer.method, "training_step", crash_at_five)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert load_checkpoint(crashed.checkpoint_dir / "last.pt")["step"] == 4
    assert not (crashed.out_dir / "model.pt").exists()
    monkeypatch.undo()

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
    store, split = phantom_store
    spec = TrainSpec(
        dataset="phantom",
        direction="t1n-to-t2w",
        method="resshift",
        seed=0,
        store_dir=store.root,
        split_path=split,
        out_dir=tmp_path / "ema" / "out",
        checkpoint_dir=tmp_path / "ema" / "ckpt",
        preset="tiny",
        overrides={"steps": 3, "batch_size": 2, "ema_decay": 0.5},
        device="cpu",
    )
    trainer = Trainer(spec)
    trainer.run()
    inference = load_checkpoint(spec.out_dir / "model.pt")["state"]
    training = load_checkpoint(spec.checkpoint_dir / "last.pt")["state"]
    ema = trainer.ema.module.state_dict()
    key = next(k for k in inference if k.startswith("net.") and inference[k].is_floating_point())
    assert torch.equal(inference[key], ema[key.removeprefix("net.")])
    assert not torch.equal(inference[key], training[key])
