"""ResViT baseline: translation, a generator step, checkpoints, the shared ViT, the two stages."""

from __future__ import annotations

import pytest
import torch
from fakes import random_batch
from timm.models.vision_transformer import Block, VisionTransformer

from dfbk.errors import ConfigError, TrainingError
from dfbk.methods.base import Batch, to_signed
from dfbk.methods.registry import build_method, get_method_class

SIZE = 32
SMALL = {
    "batch_size": 2,
    "steps": 4,
    "decay_start": 2,
    "img_size": SIZE,
    "ngf": 4,
    "ndf": 8,
    "vit_depth": 2,
    "vit_hidden": 16,
    "vit_heads": 2,
    "vit_mlp": 32,
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def resvit(stage: str | None = None, **overrides):
    return build_method(
        "resvit", "tiny", {**SMALL, **overrides}, module="dfbk.baselines.resvit", stage=stage
    )


@pytest.mark.parametrize("stage", [None, "pretrain"])
def test_translate_shape_and_range(stage):
    torch.manual_seed(0)
    method = resvit(stage)
    method.training_step(random_batch(SIZE), 0)
    method.eval()
    for size in (SIZE, 2 * SIZE):  # other sizes resample the positional embedding
        source = random_batch(size, 1).source
        pred = method.translate(source)
        assert pred.shape == source.shape
        assert float(pred.min()) >= 0.0 and float(pred.max()) <= 1.0
    with pytest.raises(ValueError, match="divisible by"):
        method.translate(torch.rand(1, 1, SIZE + 2, SIZE + 2))


def generator_objective(method, batch: Batch) -> float:
    src, tgt = to_signed(batch.source), to_signed(batch.target)
    with torch.no_grad():
        return float(method.generator_loss(src, tgt, method.generator(src))["loss_g"])


@pytest.mark.parametrize("stage", [None, "pretrain"])
def test_one_generator_step_decreases_the_generator_objective(stage):
    torch.manual_seed(0)
    method = resvit(stage, vit_dropout=0.0, lr=1e-4)  # no dropout: the objective is exact
    method.train()  # batch statistics, so evaluation forwards do not change the outputs
    batch = random_batch(SIZE)
    discriminator = {k: v.clone() for k, v in method.discriminator.state_dict().items()}
    method.opt_d.param_groups[0]["lr"] = 0.0  # hold D fixed for this step
    before = generator_objective(method, batch)
    method.training_step(batch, 0)
    after = generator_objective(method, batch)
    for key, value in method.discriminator.state_dict().items():
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(value, discriminator[key]), key
    assert after < before


@pytest.mark.parametrize("stage", [None, "pretrain"])
def test_checkpoint_round_trip(stage):
    torch.manual_seed(0)
    method = resvit(stage)
    batch = random_batch(SIZE)
    method.training_step(batch, 0)
    method.eval()
    pred = method.translate(batch.source)
    torch.manual_seed(1)  # a fresh instance starts from other weights
    clone = resvit(stage)
    clone.load_state_dict(method.state_dict())
    clone.eval()
    assert torch.equal(clone.translate(batch.source), pred)


def test_art_blocks_1_and_6_share_one_vit():
    method = resvit()
    arts = method.generator.arts
    assert len(arts) == 9
    with_vit = [i + 1 for i, art in enumerate(arts) if art.vit is not None]
    assert with_vit == [1, 6]
    assert arts[0].vit is arts[5].vit
    first, sixth = list(arts[0].vit.parameters()), list(arts[5].vit.parameters())
    assert len(first) == len(sixth) > 0
    assert all(p is q for p, q in zip(first, sixth, strict=True))
    # each shared tensor is optimised once
    params = [p for group in method.opt_g.param_groups for p in group["params"]]
    assert len({id(p) for p in params}) == len(params)
    assert sum(1 for p in params if any(p is q for q in first)) == len(first)
    # the other per-block parts (down-sampling, embedding, CC) are not shared
    assert arts[0].branch is not arts[5].branch and arts[0].compress is not arts[5].compress


def count_block_calls(monkeypatch) -> list[int]:
    calls = [0]
    forward = Block.forward

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Block, "forward", counting)
    return calls


def test_pretrain_stage_has_no_transformer_compute(monkeypatch):
    calls = count_block_calls(monkeypatch)
    full = resvit()
    full.training_step(random_batch(SIZE), 0)
    assert calls[0] == 2 * SMALL["vit_depth"]  # two ART blocks, one generator forward
    assert all(p.grad is not None for p in full.generator.vit.parameters())

    calls[0] = 0
    pretrain = resvit("pretrain")
    assert pretrain.hparams["stage"] == "pretrain" and pretrain.hparams["lr"] == 2e-4
    pretrain.training_step(random_batch(SIZE), 0)
    pretrain.translate(random_batch(SIZE).source)
    assert calls[0] == 0
    assert pretrain.generator.vit is None
    assert not any(isinstance(m, Block) for m in pretrain.modules())
    assert set(pretrain.generator.state_dict()) == full.generator.cnn_keys()
    assert "none" in pretrain.describe()["transformer"]


def test_init_from_stage_transfers_the_cnn_weights():
    torch.manual_seed(0)
    pretrain = resvit("pretrain")
    pretrain.training_step(random_batch(SIZE), 0)
    state = pretrain.state_dict()
    torch.manual_seed(1)
    full = resvit()
    before = {k: v.clone() for k, v in full.state_dict().items()}
    cnn = full.generator.cnn_keys()
    full.init_from_stage(state)
    after = full.generator.state_dict()
    for key, value in after.items():
        expected = state[f"generator.{key}"] if key in cnn else before[f"generator.{key}"]
        assert torch.equal(value, expected), key
    assert sum(not torch.equal(state[f"generator.{k}"], before[f"generator.{k}"]) for k in cnn)
    for key, value in full.discriminator.state_dict().items():  # D starts afresh
        assert torch.equal(value, before[f"discriminator.{key}"])
    incomplete = {k: v for k, v in state.items() if not k.startswith("generator.arts.3.")}
    with pytest.raises(TrainingError, match="missing CNN weights"):
        resvit().init_from_stage(incomplete)


def reference_vit(depth: int = SMALL["vit_depth"]) -> VisionTransformer:
    """A timm ViT of the configured size, as a published checkpoint would be stored."""
    grid = SIZE // 16
    return VisionTransformer(
        img_size=grid,
        patch_size=1,
        in_chans=16 * SMALL["ngf"],  # the ART down-sampling's output: 4 x the bottleneck
        embed_dim=SMALL["vit_hidden"],
        depth=depth,
        num_heads=SMALL["vit_heads"],
        mlp_ratio=SMALL["vit_mlp"] / SMALL["vit_hidden"],
        num_classes=0,
    )


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_vit_weights_load_from_a_local_file(tmp_path, suffix):
    torch.manual_seed(0)
    state = reference_vit().state_dict()
    path = tmp_path / f"vit{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    torch.manual_seed(1)
    method = resvit(vit_weights=str(path))
    vit = method.generator.vit.state_dict()
    assert set(vit) == {k for k in state if k.startswith(("blocks.", "norm."))}
    assert all(torch.equal(value, state[key]) for key, value in vit.items())
    for art in (method.generator.arts[0], method.generator.arts[5]):
        assert torch.equal(art.branch.embed.weight, state["patch_embed.proj.weight"])
        assert torch.equal(art.branch.pos_embed, state["pos_embed"][:, 1:])  # class token dropped
    described = method.describe()
    assert described["vit_init"] == f"file {path}"
    assert described["patch_embed"] == "loaded" and described["pos_embed"].startswith("loaded")
    assert resvit().describe()["vit_init"] == "random"


def test_vit_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "deeper.pt"
    torch.save(reference_vit(depth=3).state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit the configured ViT"):
        resvit(vit_weights=str(path))
    with pytest.raises(ConfigError, match="file not found"):
        resvit(vit_weights=str(tmp_path / "absent.pt"))


def test_vit_dropout_and_initialisation_follow_the_released_code():
    torch.manual_seed(0)
    assert get_method_class("resvit").resolve_hparams("paper")["init"] == "released"
    method = resvit(init="released").requires_grad_(False)
    assert method.hparams["vit_dropout"] == 0.1 and method.hparams["vit_attention_dropout"] == 0.0
    for block in method.generator.vit.blocks:
        # released Attention: attention_dropout_rate (0.0) on the weights AND the output
        assert block.attn.attn_drop.p == 0.0 and block.attn.proj_drop.p == 0.0
        assert block.mlp.drop1.p == 0.1 and block.mlp.drop2.p == 0.1
        for fc in (block.mlp.fc1, block.mlp.fc2):  # Xavier-uniform weights, N(0, 1e-6) biases
            bound = (6.0 / (fc.in_features + fc.out_features)) ** 0.5
            assert 0.9 * bound < float(fc.weight.abs().max()) <= bound
            assert float(fc.bias.abs().max()) < 1e-4
    branches = [art.branch for art in method.generator.arts if art.branch is not None]
    assert all(b.dropout.p == 0.1 and not b.pos_embed.any() for b in branches)
    # generator convolutions feeding a batch norm have no bias (released use_bias = False)
    convs = [
        m
        for m in method.generator.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]
    with_bias = [m for m in convs if m.bias is not None]
    assert {id(m) for m in with_bias} == {id(method.generator.decoder[-2])} | {
        id(b.embed) for b in branches
    }
    # PyTorch's default (Kaiming-uniform) generator weights, N(0, 0.02) discriminator weights
    first = method.generator.encoder[1].weight
    assert float(first.abs().max()) <= 1.0 / (first[0].numel() ** 0.5)
    assert float(first.std()) > 0.05
    d_weight = method.discriminator.model[2].weight
    assert 0.015 < float(d_weight.std()) < 0.025
    # tiny's "normal": N(0, 0.02) generator convolutions (faster in a CPU budget)
    normal = resvit(init="normal").generator.arts[2].residual.block[1].weight.detach()
    assert 0.018 < float(normal.std()) < 0.022
    with pytest.raises(ConfigError, match="init"):
        resvit(init="xavier")


def test_train_mode_inference_runs_each_slice_as_the_released_test_script():
    import copy

    torch.manual_seed(0)
    method = resvit(inference="train")  # the paper preset's value (tiny: eval, batch 8)
    assert get_method_class("resvit").resolve_hparams("paper")["inference"] == "train"
    method.training_step(random_batch(SIZE), 0)
    method.eval()
    state = {k: v.clone() for k, v in method.state_dict().items()}
    source = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    seeds = torch.tensor([5, 6, 7])
    pred = method.translate(source, seeds=seeds)
    # a slice's prediction does not depend on its batch, and repeats with its seed
    assert torch.equal(method.translate(source[1:2], seeds=seeds[1:2]), pred[1:2])
    assert not torch.equal(method.translate(source, seeds=seeds + 1), pred)  # dropout is on
    # the released behaviour: the generator in train mode on one slice, seeded
    reference = copy.deepcopy(method.generator).train()
    torch.manual_seed(6)
    with torch.no_grad():
        expected = (reference(to_signed(source[1:2])) + 1) / 2
    torch.testing.assert_close(pred[1:2], expected.clamp(0, 1), rtol=0, atol=1e-6)
    # inference changes nothing: running statistics and the layers' modes are as before
    assert all(torch.equal(v, state[k]) for k, v in method.state_dict().items())
    assert not any(m.training for m in method.modules())
    method.hparams["inference"] = "eval"  # running statistics, no dropout: seeds do not matter
    evaluated = method.translate(source, seeds=seeds)
    assert torch.equal(method.translate(source, seeds=seeds + 1), evaluated)
    assert not torch.equal(evaluated, pred)
    with pytest.raises(ConfigError, match="inference"):
        resvit(inference="test")
