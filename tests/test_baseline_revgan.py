"""RevGAN baseline (paired): invertible core, both directions, memory-saving backward."""

from __future__ import annotations

import copy

import pytest
import torch
from fakes import random_batch
from torch import Tensor

from dfbk.methods.registry import build_method

MODULE = "dfbk.baselines.revgan"
SIZE = 32
SMALL = {"ngf": 4, "ndf": 4, "n_blocks": 3, "batch_size": 2, "steps": 10}


def build(**overrides):
    return build_method("revgan", "tiny", {**SMALL, **overrides}, module=MODULE)


def make_core(dtype: torch.dtype, memory_saving: bool, channels: int = 8, seed: int = 0):
    from dfbk.baselines.revgan import ReversibleCore

    torch.manual_seed(seed)
    return ReversibleCore(channels, 9, "instance", memory_saving).to(dtype)


def test_translate_shape_and_range():
    torch.manual_seed(0)
    method = build()
    batch = random_batch(SIZE, shifted=True)
    method.training_step(batch, 0)
    pred = method.translate(batch.source)
    assert pred.shape == batch.source.shape
    assert float(pred.min()) >= 0.0 and float(pred.max()) <= 1.0
    assert float(pred.std()) > 0.0


@pytest.mark.parametrize("memory_saving", [False, True])
def test_one_generator_update_decreases_the_generator_objective(memory_saving):
    torch.manual_seed(0)
    method = build(lr=1e-4, memory_saving=memory_saving)
    batch = random_batch(SIZE, shifted=True)
    before = method.generator_objective(batch)
    method.opt_g.zero_grad(set_to_none=True)
    before.backward()
    method.opt_g.step()  # generator only; both discriminators stay fixed
    with torch.no_grad():
        after = method.generator_objective(batch)
    assert float(after) < float(before.detach())


def test_checkpoint_round_trip():
    torch.manual_seed(0)
    method = build()
    batch = random_batch(SIZE, shifted=True)
    method.training_step(batch, 0)
    expected = method.translate(batch.source)
    torch.manual_seed(123)
    fresh = build()
    assert not torch.equal(fresh.translate(batch.source), expected)
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.translate(batch.source), expected)


def inversion_tolerance(core, activations: Tensor) -> float:
    """Rounding budget of running the core forward and back, from the dtype's epsilon.

    Each of the 2 * n_blocks couplings adds F or G forward and subtracts it back: two rounded
    operations on values bounded by the activations' magnitude M, i.e. at most eps * M per
    coupling, plus what F and G (instance norms) pass on from the error of their already
    reconstructed input. Measured: 5-12 eps * M in float32 and float64 alike (platforms,
    thread counts and seeds differ in the last bits); allowed: 2 eps * M per coupling.
    """
    couplings = 2 * len(core.blocks)
    eps = torch.finfo(activations.dtype).eps
    return 2 * couplings * eps * float(activations.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_core_inverts_to_float_precision(dtype):
    core = make_core(dtype, memory_saving=False)
    x = torch.randn(2, 8, 12, 12, dtype=dtype, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = core(x)
        assert (y - x).abs().max() > 0.1  # the core is not (close to) the identity
        # a wrong inverse misses by O(1); rounding stays within ~1e-4 (float32) of |y| ~ 10
        tol = inversion_tolerance(core, torch.cat([x, y]))
        torch.testing.assert_close(core(y, inverse=True), x, rtol=0, atol=tol)
        x_back = core(x, inverse=True)
        tol = inversion_tolerance(core, torch.cat([x, x_back]))
        torch.testing.assert_close(core(x_back), x, rtol=0, atol=tol)


def test_both_directions_use_their_own_encoder_and_decoder_and_the_shared_core():
    torch.manual_seed(0)
    gen = build().generator
    a, b = torch.rand(2, 1, SIZE, SIZE) * 2 - 1, torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    fake_b, fake_a = gen.a_to_b(a), gen.b_to_a(b)
    assert fake_b.shape == a.shape and fake_a.shape == b.shape
    assert torch.isfinite(fake_b).all() and torch.isfinite(fake_a).all()
    fake_b.sum().backward()
    grads = {n: p.grad for n, p in gen.named_parameters()}
    assert all(grads[n] is None for n in grads if n.startswith(("encoder_b", "decoder_a")))
    assert all(grads[n] is not None for n in grads if n.startswith(("encoder_a", "decoder_b")))
    assert all(grads[n] is not None for n in grads if n.startswith("core"))
    # B->A runs the same core inverted: the inverse undoes the A->B core on A's features
    gen = gen.double()
    with torch.no_grad():
        feats = gen.encoder_a(a.double())
        torch.testing.assert_close(
            gen.core(gen.core(feats), inverse=True), feats, atol=1e-10, rtol=0
        )


@pytest.mark.parametrize("inverse", [False, True])
def test_memory_saving_gradients_equal_plain_autograd(inverse):
    plain = make_core(torch.float64, memory_saving=False)
    saving = copy.deepcopy(plain)
    saving.memory_saving = True
    x = torch.randn(2, 8, 10, 10, dtype=torch.float64)
    weight = torch.randn(2, 8, 10, 10, dtype=torch.float64)
    results = []
    for core in (plain, saving):
        xi = x.clone().requires_grad_(True)
        out = core(xi, inverse=inverse)
        (out * weight).sum().backward()
        results.append((out.detach(), xi.grad, [p.grad for p in core.parameters()]))
    assert "MemorySaving" in type(saving(x.requires_grad_(True)).grad_fn).__name__
    (out_p, gx_p, gp_p), (out_s, gx_s, gp_s) = results
    torch.testing.assert_close(out_s, out_p, rtol=0, atol=1e-12)
    torch.testing.assert_close(gx_s, gx_p, rtol=1e-9, atol=1e-10)
    assert all(g is not None for g in gp_s)
    for g_s, g_p in zip(gp_s, gp_p, strict=True):
        torch.testing.assert_close(g_s, g_p, rtol=1e-9, atol=1e-10)


def test_memory_saving_model_gradients_match_in_float32():
    batch = random_batch(SIZE, shifted=True)
    grads = []
    for memory_saving in (False, True):
        torch.manual_seed(0)
        method = build(memory_saving=memory_saving)
        method.generator_objective(batch).backward()
        grads.append(torch.cat([p.grad.flatten() for p in method.generator.parameters()]))
    # float32 reconstruction rounding (~1e-6 relative) perturbs the recomputed activations
    assert float((grads[1] - grads[0]).norm()) <= 1e-4 * float(grads[0].norm())


def test_memory_saving_keeps_far_fewer_activations():
    def saved_bytes(core) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        x = torch.randn(2, 8, 16, 16, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            core(x)
        return total

    plain = make_core(torch.float32, memory_saving=False)
    saving = make_core(torch.float32, memory_saving=True)
    assert saved_bytes(saving) * 10 < saved_bytes(plain)
