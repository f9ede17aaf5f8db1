"""How much a trained model's prediction depends on what its knowledge says.

The measure: the RMS change of the denoiser's x0 prediction (in [-1, 1]) at fixed noisy inputs
(every 2nd diffusion step, fixed noise; no sampling randomness) when the knowledge the model
was trained with is replaced by
- the prompts of another modality (a meaningful swap, e.g. T2 -> FLAIR);
- other prompts of the same modality (should matter little);
- random tokens of equal norm drawn around the trained tokens (their per-feature mean and
  spread: in the encoder's distribution, without its content);
- isotropic random tokens of equal norm (far outside any sentence's token states).
A model whose knowledge carries meaning changes clearly more under the swap than under
in-distribution random tokens or same-modality rewording.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dfbk.diffusion import resshift as rs
from dfbk.methods.base import Knowledge, to_signed


def random_tokens_like(knowledge: Knowledge, seed: int) -> Knowledge:
    """Gaussian tokens with the real tokens' per-feature mean and spread, each of its token's
    norm; same mask."""
    gen = torch.Generator().manual_seed(seed)
    tokens = knowledge.tokens.float().cpu()
    real = tokens if knowledge.mask is None else tokens[knowledge.mask.cpu()]
    noise = real.mean(0) + real.std(0) * torch.randn(tokens.shape, generator=gen)
    noise = noise / noise.norm(dim=-1, keepdim=True) * tokens.norm(dim=-1, keepdim=True)
    return Knowledge(noise, knowledge.mask)


def isotropic_tokens_like(knowledge: Knowledge, seed: int) -> Knowledge:
    """Isotropic Gaussian tokens, each of its token's norm; same mask."""
    tokens = knowledge.tokens.float().cpu()
    noise = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(seed))
    noise = noise / noise.norm(dim=-1, keepdim=True) * tokens.norm(dim=-1, keepdim=True)
    return Knowledge(noise, knowledge.mask)


def fixed_predictor(
    method, source: Tensor, target: Tensor, seed: int = 0
) -> Callable[[Knowledge], Tensor]:
    """knowledge -> x0 prediction of a ResShift-family `method` at fixed noisy inputs.

    source, target: (B, 1, H, W) in [0, 1]; the B slices are noised at steps 0, 2, 4, ...
    (cycled) with noise drawn from `seed`.
    """
    x0, y = to_signed(target), to_signed(source)
    t = torch.arange(0, 2 * len(x0), 2) % method.schedule.num_steps
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x_t = rs.q_sample(x0, y, t.to(x0.device), method.schedule, noise.to(x0.device))

    @torch.no_grad()
    def predict(knowledge: Knowledge) -> Tensor:
        return method.denoise(x_t, y, t.to(x0.device), knowledge.to(x0.device))

    return predict


def rms_change(a: Tensor, b: Tensor) -> float:
    """Root mean square of a - b."""
    return float((a - b).float().pow(2).mean().sqrt())


def knowledge_effects(
    predict: Callable[[Knowledge], Tensor],
    trained: Knowledge,
    alternatives: dict[str, Knowledge],
    random_draws: int = 8,
) -> dict[str, float]:
    """RMS prediction change for each alternative knowledge and for random tokens (mean, max)."""
    base = predict(trained)
    out = {"output_rms": float(base.float().pow(2).mean().sqrt())}
    for name, knowledge in alternatives.items():
        out[name] = rms_change(predict(knowledge), base)
    random = [
        rms_change(predict(random_tokens_like(trained, s)), base) for s in range(random_draws)
    ]
    out["random_tokens_mean"] = sum(random) / len(random)
    out["random_tokens_max"] = max(random)
    out["isotropic_tokens"] = rms_change(predict(isotropic_tokens_like(trained, 0)), base)
    return out
