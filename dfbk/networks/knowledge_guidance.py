"""Knowledge Guidance (KG): inject frozen text-encoder knowledge into the denoiser (METHOD.md §4).

Knowledge arrives as K tokens of width D (a (K, D) tensor, the same for every sample, or
(B, K, D)); D is the text encoder's width (512 for BiomedCLIP, 384 for MiniLM) and is projected
to the feature width inside each module, so any encoder works. Three parts:
- `KnowledgeCrossAttention`: queries from a feature map (the DFB low band, or the full map when
  DFB is off), keys/values from the knowledge tokens; DFB adds its output fully to the low band
  and, through `KnowledgeGate`, to the high bands (see dfbk/networks/dfb.py).
- `KnowledgeGuidance`: the no-DFB ablation (`dfbk-no-dfb`): the same attention on the full map,
  added as F + gamma * Attn(F, k) with gamma a learned scalar starting at 0 (identity at init,
  like DFB), at the same levels DFB would sit.
- `KnowledgeEmbedding`: global guidance, an MLP of the mean-pooled tokens added to the timestep
  embedding, so every ResBlock's FiLM sees the target modality's description.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfbk.networks.diffusion_unet import group_norm


def prepare_knowledge(knowledge: Tensor | None, batch: int, dim: int, like: Tensor) -> Tensor:
    """Validate knowledge tokens and broadcast them to (B, K, D) in `like`'s dtype and device.

    (K, D) is shared by the whole batch (one description per target modality); (1, K, D) and
    (B, K, D) are accepted too. A missing or mis-sized embedding is a clear error, not a fallback.
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
    return knowledge.to(device=like.device, dtype=like.dtype).expand(batch, -1, -1)


class KnowledgeCrossAttention(nn.Module):
    """Cross-attention: feature-map tokens (queries) attend to knowledge tokens (keys/values).

    x (B, C, h, w), knowledge (B, K, D) -> (B, C, h, w). Keys/values are projected from D to C,
    so the encoder's width never constrains the network's.
    """

    def __init__(self, channels: int, knowledge_dim: int, head_channels: int = 32) -> None:
        super().__init__()
        self.num_heads = max(1, channels // head_channels)
        if channels % self.num_heads:
            raise ValueError(f"width {channels} is not divisible by {self.num_heads} heads")
        self.norm = group_norm(channels)
        self.knowledge_norm = nn.LayerNorm(knowledge_dim)  # encoders differ in scale
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(knowledge_dim, channels)
        self.value = nn.Linear(knowledge_dim, channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor, knowledge: Tensor) -> Tensor:
        b, c, h, w = x.shape
        heads = self.num_heads
        split = lambda t: t.view(b, -1, heads, c // heads).transpose(1, 2)  # noqa: E731
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, hw, C)
        knowledge = self.knowledge_norm(knowledge)
        q, k, v = (
            split(self.query(tokens)),
            split(self.key(knowledge)),
            split(self.value(knowledge)),
        )
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return self.proj(out).transpose(1, 2).reshape(b, c, h, w)


class KnowledgeGate(nn.Module):
    """sigmoid(Conv1x1(H)): the high-band features decide where knowledge may add detail.

    Keeps knowledge from over-enhancing high frequencies (METHOD.md §4, high bands).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, high: Tensor) -> Tensor:
        return torch.sigmoid(self.proj(high))


class KnowledgeGuidance(nn.Module):
    """KG without DFB: F + gamma * CrossAttn(F, knowledge) on the full map, gamma starting at 0."""

    def __init__(self, channels: int, knowledge_dim: int, head_channels: int = 32) -> None:
        super().__init__()
        self.attention = KnowledgeCrossAttention(channels, knowledge_dim, head_channels)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, emb: Tensor, knowledge: Tensor | None = None) -> Tensor:
        """x (B, C, H, W), emb unused (same call signature as DFB), knowledge (B, K, D)."""
        if knowledge is None:
            raise ValueError("KnowledgeGuidance needs knowledge tokens")
        return x + self.gamma * self.attention(x, knowledge)


class KnowledgeEmbedding(nn.Module):
    """Global KG: MLP(mean over tokens) -> (B, emb_dim), added to the timestep embedding."""

    def __init__(self, knowledge_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(knowledge_dim),
            nn.Linear(knowledge_dim, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )

    def forward(self, knowledge: Tensor) -> Tensor:
        return self.mlp(knowledge.mean(dim=1))
