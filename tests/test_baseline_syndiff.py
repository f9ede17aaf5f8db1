"""SynDiff baseline: schedule numbers, 4-step sampling, lazy R1, paired and unpaired training."""

from __future__ import annotations

import math

import pytest
import torch
from fakes import random_batch

from dfbk.methods.base import to_signed
from dfbk.methods.registry import build_method, get_method_class

MODULE = "dfbk.baselines.syndiff"
VARIANTS = ["syndiff", "syndiff_paired"]
SIZE = 32
# Shrunken widths: every test runs in about a second on one CPU thread.
SMALL = {
    "batch_size": 2, "steps": 20, "nf": 8, "ch_mult": [1, 2], "image_size": SIZE, "nz": 8,
    "z_emb_dim": 16, "n_mlp": 1, "ndf": 4, "disc_downs": 2, "t_emb_dim": 16,
    "translator_ngf": 4, "translator_blocks": 1, "cycle_ndf": 4,
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def build(name: str = "syndiff", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_method(name, "tiny", {**SMALL, **overrides}, module=MODULE)


def test_both_names_are_one_class_with_the_training_mode_as_data():
    unpaired = get_method_class("syndiff", module=MODULE)
    paired = get_method_class("syndiff_paired", module=MODULE)
    assert issubclass(paired, unpaired)
    assert not [key for key, value in vars(paired).items() if callable(value)]  # presets only
    # PAIRED tells the shared trainer whether to feed independently drawn targets
    assert unpaired.PAIRED is False and paired.PAIRED is True
    assert all(p["paired"] is False for p in unpaired.PRESETS.values())
    assert all(p["paired"] is True for p in paired.PRESETS.values())
    a, b = build("syndiff"), build("syndiff_paired")
    assert a.paired is False and b.paired is True
    assert a.describe()["training_mode"].startswith("unpaired")
    assert b.describe()["training_mode"].startswith("paired")
    assert hasattr(a, "to_source") and not hasattr(b, "to_source")


def test_schedule_is_ddgan_vp_with_four_steps():
    from dfbk.baselines.syndiff import make_vp_schedule

    sched = make_vp_schedule(4, beta_min=0.1, beta_max=20.0)
    # closed form: alpha_bar(s) = exp(-0.1 s - 9.95 s^2) at s = 1e-3 + 0.999 k / 4,
    # relative to s_0 (the clean level)
    s = [1e-3 + 0.999 * k / 4 for k in range(5)]
    log_ab = [-0.1 * x - 9.95 * x**2 for x in s]
    expected = [math.exp(v - log_ab[0]) for v in log_ab[1:]]
    assert sched.alpha_bars.tolist() == pytest.approx(expected, rel=1e-9)
    assert sched.alpha_bars.tolist() == pytest.approx(
        [0.52174, 0.078676, 0.0034289, 4.319e-5], rel=1e-3
    )
    assert sched.betas.tolist() == pytest.approx([0.47826, 0.84921, 0.95642, 0.98740], rel=1e-4)
    ratios = [x / p for x, p in zip(expected, [1.0] + expected[:-1], strict=True)]
    assert sched.betas.tolist() == pytest.approx([1 - r for r in ratios])
    assert torch.all(sched.betas.diff() > 0) and torch.all(sched.alpha_bars.diff() < 0)
    assert float(sched.alpha_bars[-1]) < 1e-4  # x_T is practically pure noise
    c0, ct, var = sched.posterior_coefficients  # at t = 1 the posterior is x0_hat itself
    assert (float(c0[0]), float(ct[0]), float(var[0])) == pytest.approx((1.0, 0.0, 0.0))


def test_forward_pair_has_the_marginal_of_step_t():
    from dfbk.baselines.syndiff import make_vp_schedule, q_sample_pair

    sched = make_vp_schedule()
    x0 = torch.full((4000, 1, 4, 4), 0.5)
    for index in range(4):
        k = torch.full((4000,), index)
        g = torch.Generator().manual_seed(index)
        noises = torch.randn(2, *x0.shape, generator=g, dtype=torch.float64).float()
        _, x_t = q_sample_pair(x0, k, sched, noises[0], noises[1])
        ab = float(sched.alpha_bars[index])
        assert float(x_t.mean()) == pytest.approx(0.5 * math.sqrt(ab), abs=0.01)
        assert float(x_t.std()) == pytest.approx(math.sqrt(1 - ab), abs=0.01)


@pytest.mark.parametrize("name", VARIANTS)
def test_translate_runs_exactly_four_generator_evaluations(name):
    method = build(name)
    method.eval()
    calls = []
    hook = method.gen_target.register_forward_hook(lambda *_: calls.append(1))
    pred = method.translate(random_batch(SIZE).source)
    hook.remove()
    assert len(calls) == 4 == method.schedule.num_steps
    assert pred.shape == (2, 1, SIZE, SIZE)
    assert float(pred.min()) >= 0.0 and float(pred.max()) <= 1.0


@pytest.mark.parametrize("name", VARIANTS)
def test_r1_penalty_only_every_tenth_step(name):
    batch = random_batch(SIZE)
    method = build(name)
    steps = [0, 1, 5, 9, 10, 11, 19, 20] if name == "syndiff_paired" else [9, 10]
    applied = [method.training_step(batch, step)["loss_r1"] > 0 for step in steps]
    assert applied == [step % 10 == 0 for step in steps]
    if name == "syndiff":
        return
    # and it acts on the update: gamma 1 and gamma 0 agree exactly off the lazy steps only
    for step, penalised in [(3, False), (10, True)]:
        with_r1, without = build(name, r1_gamma=1.0), build(name, r1_gamma=0.0)
        for method in (with_r1, without):
            torch.manual_seed(step)
            method.training_step(batch, step)
        pairs = zip(with_r1.disc_target.parameters(), without.disc_target.parameters(), strict=True)
        assert all(torch.equal(p, q) for p, q in pairs) != penalised, step


@pytest.mark.parametrize("name", VARIANTS)
def test_one_generator_update_decreases_its_objective(name):
    method = build(name, lr_g=1e-4)
    batch = random_batch(SIZE, 1)
    a, b = to_signed(batch.source), to_signed(batch.target)

    def objective() -> float:
        torch.manual_seed(7)  # same t, noise and z for every evaluation
        with torch.no_grad():
            return method.generator_losses(a, b)["loss_g"].item()

    d_before = [p.clone() for net in method.discriminators for p in net.parameters()]
    before = objective()
    torch.manual_seed(7)
    reported = method.generator_step(a, b)["loss_g"]
    after = objective()
    assert reported == pytest.approx(before, rel=1e-5)
    assert after < before
    d_after = [p for net in method.discriminators for p in net.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(d_before, d_after, strict=True))


@pytest.mark.parametrize("name", VARIANTS)
def test_one_training_step_updates_the_networks_of_its_mode(name):
    method = build(name)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    losses = method.training_step(random_batch(SIZE), 0)
    assert all(math.isfinite(v) for v in losses.values())
    cycle_keys = {"loss_cycle", "loss_g_cycle_adv", "loss_d_cycle"}
    assert cycle_keys <= losses.keys() if name == "syndiff" else not cycle_keys & losses.keys()
    changed = {
        k.split(".")[0] for k, v in method.state_dict().items() if not torch.equal(v, before[k])
    }
    expected = {"gen_target", "disc_target"}
    if name == "syndiff":
        expected |= {"gen_source", "disc_source", "to_target", "to_source",
                     "disc_cycle_target", "disc_cycle_source"}  # fmt: skip
    assert changed == expected


@pytest.mark.parametrize("name", VARIANTS)
def test_checkpoint_round_trip_gives_identical_translation(name):
    method = build(name)
    method.training_step(random_batch(SIZE), 0)
    method.eval()
    source = random_batch(SIZE, 3).source
    pred = method.translate(source)
    fresh = build(name, seed=1)
    fresh.eval()
    assert not torch.equal(fresh.translate(source), pred)
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.translate(source), pred)
