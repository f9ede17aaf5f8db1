"""Knowledge Guidance attends: weights vary over positions and tokens, gradients reach q and k.

Uses the real MiniLM token states of the default prompts (many tokens, padding mask), the
regime in which a single pooled vector failed: softmax over one key is 1 everywhere.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from dfbk.knowledge import DEFAULT_PROMPTS, encode_prompts
from dfbk.methods import Batch, build_method
from dfbk.networks.knowledge_guidance import KnowledgeCrossAttention, prepare_knowledge

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def t2():
    return encode_prompts(DEFAULT_PROMPTS["t2w"], "minilm")


def test_attention_weights_differ_across_positions_and_skip_padding(t2):
    torch.manual_seed(0)
    knowledge = t2.as_knowledge()
    assert (~knowledge.mask).any() and int(knowledge.mask.sum()) > 50  # padded, many tokens
    attention = KnowledgeCrossAttention(32, t2.dim, inner=32, head_channels=16)
    x = torch.randn(2, 32, 8, 8)
    keys, mask = prepare_knowledge(knowledge.tokens, knowledge.mask, 2, t2.dim, x)
    weights = attention.attention_weights(x, torch.nn.LayerNorm(t2.dim)(keys), mask)
    assert weights.shape == (2, 2, 64, knowledge.tokens.shape[0])
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 64), atol=1e-5)
    assert torch.equal(
        weights[..., ~knowledge.mask], torch.zeros_like(weights[..., ~knowledge.mask])
    )
    spread = weights.std(dim=2)  # over the 64 positions, per sample, head and token
    assert float(spread.max()) > 1e-3 and float(weights.max()) < 1.0
    # the output differs between positions; with one key it would be the same everywhere
    with torch.no_grad():
        out = attention(x, keys, mask)
        single = attention(x, keys[:, :1], mask[:, :1])
    assert float(out.flatten(2).std(dim=2).mean()) > 1e-3
    assert float(single.flatten(2).std(dim=2).max()) < 1e-5


@pytest.mark.parametrize("name", ["dfbk", "dfbk-no-dfb"])
def test_gradients_reach_query_and_key_projections(name, t2):
    torch.manual_seed(0)
    method = build_method(name, "tiny", {"batch_size": 2, "knowledge_dim": t2.dim})
    source = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = Batch(source, 1 - source, torch.ones_like(source), t2.as_knowledge())
    method.train()
    for step in range(2):  # step 0 moves the zero-initialised output projections off zero
        method.training_step(batch, step)
    grads = {
        param_name: param.grad
        for param_name, param in method.net.named_parameters()
        if param_name.endswith(("query.weight", "key.weight", "value.weight"))
    }
    assert len(grads) == 3 * 5  # three projections in each of the five KG places
    for param_name, grad in grads.items():
        assert grad is not None and float(grad.abs().sum()) > 0, param_name
