"""DFBK's networks: Haar transform, Swin window attention, DFB, Knowledge Guidance, the methods."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch

from dfbk.errors import ConfigError
from dfbk.methods import Batch, build_method
from dfbk.methods.base import Knowledge
from dfbk.methods.dfbk import ABLATIONS
from dfbk.networks.blocks import timestep_embedding
from dfbk.networks.dfb import DynamicFrequencyBalance
from dfbk.networks.knowledge_guidance import (
    KnowledgeEmbedding,
    KnowledgeGuidance,
    prepare_knowledge,
)
from dfbk.networks.swin import SwinBlock, WindowAttention, shift_mask, window_partition
from dfbk.networks.wavelets import HaarWavelet, haar_dwt, haar_idwt

torch.set_num_threads(1)
ABLATION_METHODS = ["resshift", *ABLATIONS]
CHANNELS, EMB = 32, 64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def switch_on(module: torch.nn.Module, std: float = 0.1) -> int:
    """Give the zero-initialised output projections of DFB/KG random weights (as after some
    training), so every branch contributes; returns how many projections were set."""
    projections = []
    for sub in module.modules():
        if isinstance(sub, DynamicFrequencyBalance):
            projections += [p for p in (sub.low_out, getattr(sub, "high_out", None)) if p]
        elif isinstance(sub, KnowledgeGuidance):
            projections.append(sub.out)
        elif isinstance(sub, KnowledgeEmbedding):
            projections.append(sub.mlp[-1])
    with torch.no_grad():
        for layer in projections:
            layer.weight.normal_(0, std)
    return len(projections)


def dfb(variant: str = "full", knowledge_dim: int | None = None, **kwargs):
    return DynamicFrequencyBalance(
        CHANNELS, EMB, variant, head_channels=16, knowledge_dim=knowledge_dim, inner=16, **kwargs
    )


def keys(batch: int, n_tokens: int, dim: int, real: int | None = None):
    """(keys (B, K, D), mask (B, K)) with the last K - real tokens padding."""
    mask = torch.arange(n_tokens) < (n_tokens if real is None else real)
    return prepare_knowledge(torch.randn(n_tokens, dim), mask, batch, dim, torch.zeros(1))


def step_embedding(steps: list[int]) -> torch.Tensor:
    return timestep_embedding(torch.tensor(steps), EMB)


# ----- Haar wavelets -------------------------------------------------------------------------
def test_haar_round_trip_is_exact():
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    low, highs = haar_dwt(x)
    assert low.shape == (2, 3, 4, 3) and highs.shape == (2, 3, 3, 4, 3)
    assert torch.allclose(haar_idwt(low, highs), x, atol=1e-12, rtol=0)
    x32 = x.float()
    assert torch.allclose(haar_idwt(*haar_dwt(x32)), x32, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 4, 16, 16)])
def test_haar_bands_equal_pytorch_wavelets(shape):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pytorch_wavelets imports pkg_resources
        from pytorch_wavelets import DWTForward
    x = torch.randn(*shape)
    ref_low, ref_highs = DWTForward(J=1, wave="haar", mode="zero")(x)
    low, highs = haar_dwt(x)
    assert torch.allclose(low, ref_low, atol=1e-6)
    assert torch.allclose(highs, ref_highs[0], atol=1e-6)  # same band order and signs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        library = HaarWavelet("pytorch_wavelets")
    assert torch.allclose(library.idwt(low, highs), x, atol=1e-5)
    assert library.state_dict() == {}  # both backends give the same checkpoints


def test_haar_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even H and W"):
        haar_dwt(torch.randn(1, 1, 7, 8))


# ----- Swin window attention -----------------------------------------------------------------
def test_window_attention_equals_timm_with_shift_mask():
    from timm.models.swin_transformer import SwinTransformerBlock
    from timm.models.swin_transformer import WindowAttention as TimmWindowAttention

    ours, ref = WindowAttention(32, 2, 4), TimmWindowAttention(32, 2, window_size=4)
    ref.qkv.load_state_dict(ours.qkv.state_dict())
    ref.proj.load_state_dict(ours.proj.state_dict())
    ref.relative_position_bias_table.data.copy_(ours.bias_table.data)
    tokens = window_partition(torch.randn(2, 32, 8, 8), 4)
    timm_mask = SwinTransformerBlock(32, (8, 8), 2, window_size=4, shift_size=2).attn_mask
    assert torch.equal(shift_mask(8, 8, 4, 2), timm_mask)
    for mask in (None, timm_mask):
        expected = ref(tokens.flatten(0, 1), mask=mask).view_as(tokens)
        assert torch.allclose(ours(tokens, 4, mask), expected, atol=1e-5)


@pytest.mark.parametrize(("shifted", "affected"), [(False, 16), (True, 64)])
def test_swin_block_pads_partial_windows_and_masks_the_padding(shifted, affected):
    block = SwinBlock(32, 2, window=8, shifted=shifted)
    block.norm1, block.norm2 = torch.nn.Identity(), torch.nn.Identity()  # keep it local
    x = torch.randn(1, 32, 12, 12)  # 12 = 1.5 windows: padded to 16
    poked = x.clone()
    poked[:, :, 10, 10] += 5.0
    changed = (block(poked) - block(x)).abs().sum(dim=1)[0] > 1e-5
    # exactly the real tokens of the poked token's window: rows/cols 8..11, or 4..11 shifted
    assert int(changed.sum()) == affected
    assert not changed[:4, :4].any()


# ----- Dynamic Frequency Balance -------------------------------------------------------------
@pytest.mark.parametrize("variant", ["full", "low", "high", "static"])
def test_dfb_is_identity_at_init(variant):
    module = dfb(variant, knowledge_dim=24)
    x = torch.randn(2, CHANNELS, 16, 16)
    out = module(x, step_embedding([0, 9]), keys(2, 12, 24, real=9))
    assert torch.equal(out, x)


def test_dfb_balance_weights_follow_the_timestep():
    module = dfb("full")
    switch_on(module)
    x = torch.randn(1, CHANNELS, 16, 16).expand(2, -1, -1, -1)  # same map, two steps
    emb = step_embedding([0, 14])
    weights = module.balance_weights(x, emb)
    assert torch.allclose(weights.sum(dim=1), torch.ones(2))
    assert not torch.allclose(weights[0], weights[1], atol=1e-4)
    out = module(x, emb)
    assert not torch.allclose(out[0], out[1])


def test_dfb_static_weights_are_half():
    module = dfb("static")
    assert module.balance is None
    weights = module.balance_weights(torch.randn(3, CHANNELS, 8, 8), step_embedding([0, 5, 9]))
    assert torch.equal(weights, torch.full((3, 2), 0.5))


def test_dfb_variants_change_which_bands_contribute():
    x, emb = torch.randn(2, CHANNELS, 16, 16), step_embedding([2, 7])
    low_only, high_only, full = dfb("low"), dfb("high"), dfb("full")
    assert not hasattr(low_only, "high_gate") and low_only.low_attention is not None
    assert high_only.low_attention is None and hasattr(high_only, "high_gate")
    assert high_only.low_out is None  # no attention and no KG: nothing to add to the low band
    for module in (low_only, high_only, full):
        switch_on(module)
    d_low, d_highs = low_only.deltas(x)
    assert torch.equal(d_highs, torch.zeros_like(d_highs)) and d_low.abs().sum() > 0
    d_low, d_highs = high_only.deltas(x)
    assert torch.equal(d_low, torch.zeros_like(d_low)) and d_highs.abs().sum() > 0
    d_low, d_highs = full.deltas(x)
    assert d_low.abs().sum() > 0 and d_highs.abs().sum() > 0
    _, delta_highs = haar_dwt(low_only(x, emb) - x)
    assert delta_highs.abs().max() < 1e-5  # the low variant leaves F's high bands untouched
    delta_low, _ = haar_dwt(high_only(x, emb) - x)
    assert delta_low.abs().max() < 1e-5  # and the high variant F's low band


# ----- Knowledge Guidance --------------------------------------------------------------------
def test_kg_gate_can_be_switched_off():
    gated, ungated = (
        dfb("full", knowledge_dim=24),
        dfb("full", knowledge_dim=24, knowledge_gate=False),
    )
    assert gated.knowledge_gate is not None and ungated.knowledge_gate is None
    missing, unexpected = ungated.load_state_dict(gated.state_dict(), strict=False)
    assert not missing and all(key.startswith("knowledge_gate.") for key in unexpected)
    for module in (gated, ungated):
        switch_on(module)
    x, emb = torch.randn(2, CHANNELS, 16, 16), step_embedding([1, 3])
    tokens = keys(2, 6, 24)
    assert not torch.allclose(gated(x, emb, tokens), ungated(x, emb, tokens))
    assert dfb("low", knowledge_dim=24).knowledge_gate is None  # no high bands: nothing to gate


@pytest.mark.parametrize("knowledge_dim", [384, 768, 7])
def test_kg_output_depends_on_knowledge_of_any_width(knowledge_dim):
    x, emb = torch.randn(2, CHANNELS, 16, 16), step_embedding([4, 4])
    for module in (
        dfb("full", knowledge_dim=knowledge_dim),
        KnowledgeGuidance(CHANNELS, knowledge_dim, inner=16, head_channels=16),
    ):
        switch_on(module)
        first, second = keys(2, 5, knowledge_dim), keys(2, 5, knowledge_dim)
        assert not torch.allclose(module(x, emb, first), module(x, emb, second))


def test_kg_ignores_padding_tokens():
    module = KnowledgeGuidance(CHANNELS, 24, inner=16, head_channels=16)
    switch_on(module)
    x, emb = torch.randn(2, CHANNELS, 8, 8), step_embedding([0, 1])
    tokens, mask = keys(2, 9, 24, real=6)
    poked = tokens.clone()
    poked[:, 6:] += 100.0  # padding content must not matter
    assert torch.allclose(module(x, emb, (tokens, mask)), module(x, emb, (poked, mask)))
    poked = tokens.clone()
    poked[:, 2] += 1.0
    assert not torch.allclose(module(x, emb, (tokens, mask)), module(x, emb, (poked, mask)))


@pytest.mark.parametrize("variant", ["full", "high", "low"])
def test_kg_share_is_knowledge_s_part_of_the_module_output_change(variant):
    """kg_share = RMS(what the output change loses without KG) / RMS(output change), measured
    by running the module again with the knowledge term zeroed; and the high-band gate sees
    L' = L + U (docs/method.md §3.3), so zeroing the knowledge leaves the gate as it was."""
    module = dfb(variant, knowledge_dim=24)
    switch_on(module, std=0.3)
    with torch.no_grad():
        for layer in (module.low_out, getattr(module, "high_out", None)):
            if layer is not None:
                layer.bias.normal_(0, 0.1)  # biases are not KG's: they must not count
    x, emb, tokens = torch.randn(2, CHANNELS, 16, 16), step_embedding([2, 7]), keys(2, 6, 24)
    gate_inputs = []
    if module.use_high:
        module.high_gate.register_forward_hook(lambda m, inp, out: gate_inputs.append(inp[0]))
    module.train()
    with torch.no_grad():
        change = module(x, emb, tokens) - x
        share = float(module.stats["kg_share"])
        attend = module.knowledge.forward
        module.knowledge.forward = lambda *args: torch.zeros_like(attend(*args))
        without = module(x, emb, tokens) - x
    expected = float((change - without).pow(2).mean().sqrt() / change.pow(2).mean().sqrt())
    assert 0.01 < expected and share == pytest.approx(expected, rel=1e-4)  # float32 sums
    if module.use_high:
        assert torch.equal(gate_inputs[0], gate_inputs[1])  # the gate never sees A
    module.eval()
    module.stats.clear()
    with torch.no_grad():
        module(x, emb, tokens)
    assert "kg_share" not in module.stats  # inference computes no diagnostics


def test_kg_without_dfb_is_identity_at_init():
    module = KnowledgeGuidance(CHANNELS, 24, inner=16, head_channels=16)
    x = torch.randn(2, CHANNELS, 8, 8)
    assert torch.equal(module(x, step_embedding([0, 1]), keys(2, 3, 24)), x)


def test_knowledge_of_the_wrong_width_or_mask_is_refused():
    with pytest.raises(ValueError, match="knowledge_dim=512"):
        prepare_knowledge(torch.randn(3, 384), None, 2, 512, torch.zeros(1))
    with pytest.raises(ValueError, match="mask hides every token"):
        prepare_knowledge(torch.randn(3, 8), torch.zeros(3, dtype=torch.bool), 2, 8, torch.zeros(1))
    with pytest.raises(ValueError, match="does not fit 3 tokens"):
        prepare_knowledge(torch.randn(3, 8), torch.ones(4, dtype=torch.bool), 2, 8, torch.zeros(1))


# ----- the methods ---------------------------------------------------------------------------
def tiny_batch(method, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    source = torch.rand(2, 1, 64, 64, generator=g)
    knowledge = None
    if method.hparams.get("kg"):  # two prompts of 7 and 5 tokens, padded to 7
        states = torch.randn(14, method.hparams["knowledge_dim"], generator=g)
        knowledge = Knowledge(states, torch.arange(14) % 7 < torch.tensor([7] * 7 + [5] * 7))
    return Batch(
        source=source, target=1 - source, mask=torch.ones_like(source), knowledge=knowledge
    )


@pytest.mark.parametrize("name", ABLATION_METHODS)
def test_tiny_shapes_and_gradient_flow(name):
    method = build_method(name, "tiny", {"batch_size": 2})
    projections = switch_on(method.net)
    assert (projections > 0) == (name != "resshift")
    batch = tiny_batch(method)
    t = torch.tensor([0, 14])
    assert method.denoise(batch.source, batch.source, t, batch.knowledge).shape == (2, 1, 64, 64)
    method.train()
    assert math.isfinite(method.training_step(batch, 0)["loss_mse"])
    for param_name, param in method.net.named_parameters():
        assert param.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"
        # every DFB/KG weight contributes; without DFB's balance MLP the t-embedding (and so the
        # global KG path) only reaches ResBlock outputs, zero-initialised (ADM): no gradient at
        # step 0
        global_path = param_name.startswith("knowledge_embed")
        if (
            "fusion" in param_name
            or "knowledge" in param_name
            and not (global_path and method.hparams["dfb"] in (None, "static"))
        ):
            assert param.grad.abs().sum() > 0, f"{param_name} got an all-zero gradient"


def test_checkpoint_round_trip_translates_identically():
    method = build_method("dfbk", "tiny", {"batch_size": 2})
    switch_on(method.net)
    batch = tiny_batch(method)
    method.training_step(batch, 0)
    method.eval()
    expected = method.translate(batch.source, batch.knowledge)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    clone = build_method("dfbk", "tiny", {"batch_size": 2})
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    clone.eval()
    assert torch.equal(clone.translate(batch.source, batch.knowledge), expected)


def test_kg_method_without_knowledge_says_what_is_missing():
    method = build_method("dfbk", "tiny", {"batch_size": 2})
    batch = tiny_batch(method)
    batch.knowledge = None
    with pytest.raises(ConfigError, match="no knowledge embedding was given.*knowledge rule"):
        method.training_step(batch, 0)
    with pytest.raises(ConfigError, match="Knowledge Guidance"):
        method.translate(batch.source)
    no_kg = build_method("dfbk-no-kg", "tiny", {"batch_size": 2})
    assert no_kg.translate(batch.source).shape == batch.source.shape


def test_paper_preset_is_method_md_section_2():
    from dfbk.methods.registry import get_method_class

    for name in ABLATION_METHODS:
        paper = get_method_class(name).PRESETS["paper"]
        assert paper["channels"] == 160 and paper["channel_mults"] == [1, 2, 2, 4]
        assert paper["num_res_blocks"] == 2 and paper["swin_embed_dim"] == 192
        assert paper["window_size"] == 8 and paper["swin_embed_dim"] // paper["head_channels"] == 6
        assert (paper["lr"], paper["ema_decay"], paper["steps"], paper["batch_size"]) == (
            5e-5, 0.999, 300_000, 16,
        )  # fmt: skip


def test_networks_run_on_48x48_slices_and_under_bf16_autocast():
    method = build_method("dfbk", "tiny", {"batch_size": 2})
    switch_on(method.net)
    x, t, tokens = torch.randn(2, 2, 48, 48), torch.tensor([0, 14]), torch.randn(3, 512)
    assert method.net(x, t, tokens).shape == (2, 1, 48, 48)  # Swin pads 12x12 maps
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method.net(x[..., :32, :32], t, tokens)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    with pytest.raises(ValueError, match="divisible by 4"):
        method.net(torch.randn(1, 2, 50, 50), t[:1], tokens)
