"""Per-slice visual knowledge: a BiomedCLIP-shaped open_clip model (conftest `fake_biomedclip`:
tiny, random, built per session)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network in tests

import pytest
import torch

from dfbk.errors import ConfigError
from dfbk.knowledge.vision import resolve_vision
from dfbk.methods import Batch, build_method
from dfbk.methods.base import Knowledge, count_parameters

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _offline_empty_cache(empty_hf):
    """Every test here runs offline with an empty Hugging Face cache."""


def slices(seed: int, batch: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, size, size, generator=g)


def text_knowledge(dim: int) -> Knowledge:
    g = torch.Generator().manual_seed(3)
    return Knowledge(torch.randn(8, dim, generator=g), torch.arange(8) < 6)


def test_vision_tower_gives_patch_tokens_per_slice(fake_biomedclip):
    tower, reason = resolve_vision("auto", fake_biomedclip)
    assert tower is not None and reason.startswith("on: BiomedCLIP image tower, 64-d")
    assert tower.size == (160, 160) and tower.width == 64
    assert tower.mean[0] == pytest.approx(0.48145466)
    images = slices(0)
    tokens = tower.encode(images)
    assert tokens.shape == (2, 1 + (160 // 16) ** 2, 64)  # CLS + 10x10 patches
    assert torch.isfinite(tokens).all()
    assert not torch.allclose(tokens[0], tokens[1], atol=1e-3)  # knowledge differs per slice
    assert torch.equal(tower.encode(images[:1]), tokens[:1])  # per slice, batch-independent
    assert not any(p.requires_grad for p in tower.trunk.parameters())


def test_absent_weights_are_a_recorded_choice_or_an_error(tmp_path):
    tower, reason = resolve_vision("auto", None)
    assert tower is None and "BiomedCLIP image tower not available" in reason
    assert "hf download" in reason  # says how to provide it
    assert resolve_vision("off", None) == (
        None,
        "off (visual_knowledge: off): text token states only",
    )
    with pytest.raises(ConfigError, match="visual_knowledge: on, but .*folder not found"):
        resolve_vision("on", tmp_path / "absent")
    with pytest.raises(ConfigError, match="unknown value 'yes'"):
        resolve_vision("yes", None)
    method = build_method("dfbk", "tiny", {"visual_knowledge": "auto", "knowledge_dim": 24})
    assert method.hparams["visual_knowledge"] == "off" and method.hparams["visual_dim"] == 0
    assert "not available" in method.describe()["visual_knowledge"]


def build_visual(folder, **overrides):
    torch.manual_seed(0)
    hparams = {"visual_knowledge": "auto", "biomedclip_dir": str(folder), "knowledge_dim": 24}
    return build_method("dfbk", "tiny", {**hparams, "batch_size": 2, **overrides})


def test_visual_tokens_join_the_keys_and_stay_out_of_the_model(fake_biomedclip):
    method = build_visual(fake_biomedclip)
    assert method.hparams["visual_knowledge"] == "on" and method.hparams["visual_dim"] == 64
    assert "image tokens" in method.describe()["kg_choices"]
    text_only = build_visual(fake_biomedclip, visual_knowledge="off")
    # the frozen tower is not in the state dict, the parameter count or the optimiser
    names = set(method.state_dict())
    assert not any("trunk" in name for name in names)
    assert names - set(text_only.state_dict()) == {
        f"net.knowledge_tokens.visual.{key}"
        for key in ("0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias")
    }
    projection = (64 * 2) + (64 * 24 + 24) + 24 * 2
    assert count_parameters(method) == count_parameters(text_only) + projection
    optimised = {id(p) for group in method.opt.param_groups for p in group["params"]}
    assert all(id(p) not in optimised for p in method._vision.trunk.parameters())
    # keys: 8 text tokens (6 real) + 101 visual tokens, different for the two slices
    source, knowledge = slices(1), text_knowledge(24)
    visual = method.visual_tokens(source * 2 - 1)
    keys, mask, _ = method.net.knowledge_tokens(knowledge.tokens, knowledge.mask, visual, source)
    assert keys.shape == (2, 8 + 101, 24) and mask.sum(dim=1).tolist() == [107, 107]
    assert torch.equal(keys[0, :8], keys[1, :8]) and not torch.allclose(keys[0, 8:], keys[1, 8:])


def test_visual_tokens_are_computed_once_per_source_and_training_runs(fake_biomedclip):
    method = build_visual(fake_biomedclip)
    tower, calls = method._vision, []
    encode = tower.encode
    tower.encode = lambda images: calls.append(images.shape[0]) or encode(images)
    try:
        source, knowledge = slices(2), text_knowledge(24)
        method.eval()
        out = method.translate(source, knowledge)
        assert out.shape == source.shape and len(calls) == 1  # 15 denoiser calls, one encode
        method.train()
        batch = Batch(source, 1 - source, torch.ones_like(source), knowledge)
        for step in range(2):
            method.training_step(batch, step)
        assert len(calls) == 3  # one per training step
        grad = method.net.knowledge_tokens.visual[1].weight.grad
        assert grad is not None and grad.abs().sum() > 0  # visual tokens shape the output
    finally:
        tower.encode = encode


def test_checkpoint_rebuild_needs_the_tower_it_was_trained_with(fake_biomedclip, tmp_path):
    method = build_visual(fake_biomedclip)
    cls = type(method)
    clone = cls(dict(method.hparams))  # as rebuild_method does from a checkpoint
    clone.load_state_dict(method.state_dict())
    assert clone.hparams["visual_knowledge"] == "on"
    moved = {**method.hparams, "biomedclip_dir": str(tmp_path / "gone")}
    with pytest.raises(ConfigError, match="visual_knowledge: on, but"):
        cls(moved)
