"""Knowledge Guidance (KG): the denoiser attends over knowledge tokens (docs/method.md §4).

Knowledge is a *sequence* of tokens, never one vector (softmax over a single key is 1, so the
attention output would be the same at every position — a learned constant):
- text: the frozen encoder's token states of several prompts describing the target modality,
  (K, D) with a (K,) padding mask, shared by the batch (D = 768 BiomedCLIP, 384 MiniLM);
- visual (optional): per-slice patch tokens of BiomedCLIP's image tower, (B, N, Dv), projected
  to D by `KnowledgeTokens` and appended to the keys, so the knowledge differs between samples.

Parts:
- `KnowledgeTokens`: validates and broadcasts the text tokens, LayerNorms them, appends the
  projected visual tokens and returns keys (B, K', D) + mask (B, K') + the masked mean of the
  text tokens (the pooled text embedding for the global path).
- `KnowledgeCrossAttention`: queries from a feature map, keys/values from the tokens, at an
  inner width r (bottleneck, so the capacity stays within ~10 % of ResShift); padding masked.
- `KnowledgeGuidance`: KG without DFB (`dfbk-no-dfb`): F + Out(CrossAttn(F, k)) on the full map,
  Out a zero-initialised 1×1 projection r -> C (identity at init, yet its own gradient is not
  zero, so the branch switches on after the first step).
- `KnowledgeEmbedding`: global path, MLP(pooled text) added to the timestep embedding; its last
  layer is zero-initialised likewise.
Each module keeps detached statistics of its last training forward (`stats`) for the log.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfbk.networks.blocks import group_norm


def inner_width(channels: int, ratio: float, head_channels: int) -> int:
    """Bottleneck width r: about `ratio` * channels, a whole number (>= 1) of heads."""
    heads = max(1, -(-round(channels * ratio) // head_channels))  # ceil
    return heads * head_channels


def rms(x: Tensor) -> Tensor:
    """Root mean square as a detached float32 scalar (for the training log)."""
    return x.detach().float().pow(2).mean().sqrt()


def prepare_knowledge(
    knowledge: Tensor | None, mask: Tensor | None, batch: int, dim: int, like: Tensor
) -> tuple[Tensor, Tensor]:
    """Validate text tokens and broadcast them to (B, K, D) + mask (B, K) bool.

    Tokens (K, D) are shared by the batch; (1, K, D) and (B, K, D) are accepted too. mask None
    means every token is real. A missing or mis-sized embedding is a clear error, not a fallback.
    """
    if knowledge is None:
        raise ValueError(
            "Knowledge Guidance is on but no knowledge tokens were given: the knowledge "
            "embedding (knowledge rule output) is missing"
        )
    if knowledge.dim() == 2:
        knowledge = knowledge.unsqueeze(0)
    if knowledge.dim() != 3 or knowledge.shape[0] not in (1, batch):
        raise ValueError(
            f"knowledge tokens must be (K, D) or (B, K, D) with B={batch}; "
            f"got shape {tuple(knowledge.shape)}"
        )
    if knowledge.shape[-1] != dim:
        raise ValueError(
            f"knowledge tokens have width {knowledge.shape[-1]} but the model was built with "
            f"knowledge_dim={dim}; set knowledge_dim from the knowledge cache's encoder"
        )
    n_tokens = knowledge.shape[1]
    if mask is None:
        mask = torch.ones(n_tokens, dtype=torch.bool, device=like.device)
    mask = mask.to(device=like.device, dtype=torch.bool)
    if mask.dim() == 1:
        mask = mask.unsqueeze(0)
    if mask.shape[-1] != n_tokens or mask.shape[0] not in (1, batch):
        raise ValueError(f"knowledge mask {tuple(mask.shape)} does not fit {n_tokens} tokens")
    # checked where it costs no device sync (the knowledge cache checks every prompt too)
    if mask.device.type == "cpu" and not mask.any(dim=-1).all():
        raise ValueError("knowledge mask hides every token of a sample")
    tokens = knowledge.to(device=like.device, dtype=like.dtype).expand(batch, -1, -1)
    return tokens, mask.expand(batch, -1)


class KnowledgeTokens(nn.Module):
    """Text tokens (+ visual tokens) -> keys (B, K', D), mask (B, K'), pooled text (B, D)."""

    def __init__(self, knowledge_dim: int, visual_dim: int = 0) -> None:
        super().__init__()
        self.dim = knowledge_dim
        self.norm = nn.LayerNorm(knowledge_dim)  # encoders differ in scale
        self.visual = (
            nn.Sequential(
                nn.LayerNorm(visual_dim),
                nn.Linear(visual_dim, knowledge_dim),
                nn.LayerNorm(knowledge_dim),
            )
            if visual_dim
            else None
        )

    def forward(
        self, text: Tensor, mask: Tensor | None, visual: Tensor | None, like: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch = like.shape[0]
        tokens, mask = prepare_knowledge(text, mask, batch, self.dim, like)
        weights = mask.to(tokens.dtype)[..., None]
        pooled = (tokens * weights).sum(1) / weights.sum(1)
        keys = self.norm(tokens)
        if self.visual is not None:
            if visual is None or visual.dim() != 3 or visual.shape[0] != batch:
                raise ValueError(
                    f"the model was built with visual knowledge; expected (B={batch}, N, "
                    f"{self.visual[0].normalized_shape[0]}) visual tokens, got "
                    f"{None if visual is None else tuple(visual.shape)}"
                )
            seen = self.visual(visual.to(like.dtype))
            keys = torch.cat([keys, seen], dim=1)
            mask = torch.cat([mask, mask.new_ones(seen.shape[:2])], dim=1)
        return keys, mask, pooled


class KnowledgeCrossAttention(nn.Module):
    """Feature-map tokens (queries) attend to knowledge tokens (keys/values) at width r.

    x (B, C, h, w), keys (B, K, D), mask (B, K) -> (B, r, h, w), before any output projection
    (the caller owns it: DFB mixes it into its bands, `KnowledgeGuidance` adds it to F).
    """

    def __init__(
        self, channels: int, knowledge_dim: int, inner: int, head_channels: int = 32
    ) -> None:
        super().__init__()
        if inner % head_channels:
            raise ValueError(f"inner width {inner} is not a multiple of {head_channels}")
        self.num_heads, self.inner = inner // head_channels, inner
        self.norm = group_norm(channels)
        self.query = nn.Linear(channels, inner)
        self.key = nn.Linear(knowledge_dim, inner)
        self.value = nn.Linear(knowledge_dim, inner)

    def _qkv(self, x: Tensor, keys: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, heads = x.shape[0], self.num_heads
        split = lambda t: t.view(b, t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, hw, C)
        return split(self.query(tokens)), split(self.key(keys)), split(self.value(keys))

    def forward(self, x: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        b, _, h, w = x.shape
        q, k, v = self._qkv(x, keys)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return out.transpose(1, 2).reshape(b, h * w, self.inner).transpose(1, 2).view(b, -1, h, w)

    @torch.no_grad()
    def attention_weights(self, x: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """(B, heads, hw, K) softmax weights, written out (tests and figures, not training)."""
        q, k, _ = self._qkv(x, keys)
        logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        return logits.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(dim=-1)


class KnowledgeGuidance(nn.Module):
    """KG without DFB: F + Out(CrossAttn(F, k)) on the full map, Out zero-initialised."""

    def __init__(
        self, channels: int, knowledge_dim: int, inner: int, head_channels: int = 32
    ) -> None:
        super().__init__()
        self.attention = KnowledgeCrossAttention(channels, knowledge_dim, inner, head_channels)
        self.out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.stats: dict[str, Tensor] = {}

    def forward(
        self, x: Tensor, emb: Tensor, knowledge: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """x (B, C, H, W), emb unused (same call as DFB), knowledge (keys, mask)."""
        if knowledge is None:
            raise ValueError("KnowledgeGuidance needs knowledge tokens")
        delta = self.out(self.attention(x, *knowledge))
        if self.training:
            self.stats = {"gain": rms(delta) / rms(x).clamp_min(1e-12)}
        return x + delta


class KnowledgeEmbedding(nn.Module):
    """Global KG: MLP(pooled text tokens) -> (B, emb_dim), added to the timestep embedding."""

    def __init__(self, knowledge_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(knowledge_dim),
            nn.Linear(knowledge_dim, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.mlp(pooled)
