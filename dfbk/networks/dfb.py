"""Dynamic Frequency Balance (DFB): re-weight a feature map's wavelet bands per step (METHOD.md §3).

For a feature map F (B, C, H, W) and the step embedding e (B, E):
1. LL, [LH, HL, HH] = HaarDWT(F)                                   (orthonormal, exact inverse)
2. LL' = LL + Attn(GroupNorm(LL))     global MHSA on the half-resolution map; non-overlapping
                                      window attention once the map exceeds `global_max_tokens`
3. H = Conv1x1([LH, HL, HH]);  G = sigmoid(Conv3x3([H, LL']));  H' = Conv1x1(G * H) -> 3 bands
   (the low band decides which high responses are anatomy and which are noise; H has the
   feature width C, and LL' here already includes KG's low-band term when KG is on)
4. [w_L, w_H] = softmax(MLP([mean-pool(F), e]))                    per sample and per step
5. out = F + gamma * IDWT(2 w_L LL', 2 w_H H'),  gamma a learned scalar initialised to 0

With Knowledge Guidance (METHOD.md §4) the cross-attention A = Attn(LL', k) is added fully to
the low band (LL' += A) and, gated by sigmoid(Conv1x1(H)) (or ungated when the gate is off), to
the high features before they are mapped back to three bands (G * H + gate * A).

Variants for the ablation (`variant`): "full"; "low" — the high bands contribute nothing
(H' = 0; their modules, and KG's high-band gate, are not built); "high" — no low-band attention
(LL' = LL, KG still adds A to it); "static" — w fixed at 0.5/0.5 (no balance MLP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfbk.networks.diffusion_unet import group_norm
from dfbk.networks.knowledge_guidance import KnowledgeCrossAttention, KnowledgeGate
from dfbk.networks.swin import window_partition, window_reverse
from dfbk.networks.wavelets import HaarWavelet

DFB_VARIANTS = ("full", "low", "high", "static")


class LowBandAttention(nn.Module):
    """Multi-head self-attention over the whole map, or within windows when the map is large.

    Global attention sees the whole anatomy at once (the point of step 2); past
    `global_max_tokens` tokens its cost grows quadratically, so it falls back to windows.
    """

    def __init__(
        self, channels: int, head_channels: int = 32, global_max_tokens: int = 1024, window: int = 8
    ) -> None:
        super().__init__()
        self.num_heads = max(1, channels // head_channels)
        if channels % self.num_heads:
            raise ValueError(f"width {channels} is not divisible by {self.num_heads} heads")
        self.global_max_tokens, self.window = global_max_tokens, window
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, h, w) -> Attn(Norm(x)) (B, C, h, w); the caller adds the residual."""
        b, c, h, w = x.shape
        tiled = h * w > self.global_max_tokens
        if tiled and (h % self.window or w % self.window):
            raise ValueError(f"a {h}x{w} low band is not divisible into {self.window}-windows")
        normed = self.norm(x)
        if tiled:
            tokens = window_partition(normed, self.window)  # (B, nW, n, C)
        else:
            tokens = normed.flatten(2).transpose(1, 2)[:, None]  # (B, 1, hw, C)
        nw, n, heads = tokens.shape[1], tokens.shape[2], self.num_heads
        qkv = self.qkv(tokens).view(b * nw, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        out = self.proj(out.transpose(1, 2).reshape(b, nw, n, c))
        if tiled:
            return window_reverse(out, self.window, h, w)
        return out[:, 0].transpose(1, 2).reshape(b, c, h, w)


class DynamicFrequencyBalance(nn.Module):
    """DFB on one feature map; identity at initialisation (gamma = 0). See the module docstring.

    knowledge_dim None: no Knowledge Guidance inside this module.
    """

    def __init__(
        self,
        channels: int,
        emb_dim: int,
        variant: str = "full",
        head_channels: int = 32,
        global_max_tokens: int = 1024,
        window: int = 8,
        knowledge_dim: int | None = None,
        knowledge_gate: bool = True,
        wavelet_backend: str = "conv",
    ) -> None:
        super().__init__()
        if variant not in DFB_VARIANTS:
            raise ValueError(f"unknown DFB variant '{variant}'; known: {', '.join(DFB_VARIANTS)}")
        self.variant = variant
        self.use_low, self.use_high = variant != "high", variant != "low"
        self.wavelet = HaarWavelet(wavelet_backend)
        self.low_attention = (
            LowBandAttention(channels, head_channels, global_max_tokens, window)
            if self.use_low
            else None
        )
        if self.use_high:
            self.high_in = nn.Conv2d(3 * channels, channels, 1)
            self.high_gate = nn.Conv2d(2 * channels, channels, 3, padding=1)
            self.high_out = nn.Conv2d(channels, 3 * channels, 1)
        self.balance = (
            nn.Sequential(
                nn.Linear(channels + emb_dim, channels), nn.SiLU(), nn.Linear(channels, 2)
            )
            if variant != "static"
            else None
        )
        self.knowledge = (
            KnowledgeCrossAttention(channels, knowledge_dim, head_channels)
            if knowledge_dim is not None
            else None
        )
        gated = self.knowledge is not None and self.use_high and knowledge_gate
        self.knowledge_gate = KnowledgeGate(channels) if gated else None
        self.gamma = nn.Parameter(torch.zeros(()))

    def balance_weights(self, x: Tensor, emb: Tensor) -> Tensor:
        """(B, 2) weights [w_L, w_H] summing to 1: softmax(MLP([mean-pool(F), e])), or 0.5/0.5."""
        if self.balance is None:
            return x.new_full((x.shape[0], 2), 0.5)
        pooled = torch.cat([x.mean(dim=(2, 3)), emb.to(x.dtype)], dim=1)
        return torch.softmax(self.balance(pooled).float(), dim=1).to(x.dtype)

    def bands(self, x: Tensor, knowledge: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Enhanced bands before balancing: LL' (B, C, h, w) and H' (B, C, 3, h, w)."""
        low, highs = self.wavelet.dwt(x)
        if self.low_attention is not None:
            low = low + self.low_attention(low)
        attended = None
        if self.knowledge is not None:
            if knowledge is None:
                raise ValueError("DFB with Knowledge Guidance needs knowledge tokens")
            attended = self.knowledge(low, knowledge)
            low = low + attended
        if not self.use_high:
            return low, torch.zeros_like(highs)
        b, c, h, w = low.shape
        high = self.high_in(highs.reshape(b, 3 * c, h, w))
        refined = torch.sigmoid(self.high_gate(torch.cat([high, low], dim=1))) * high
        if attended is not None:
            gate = self.knowledge_gate(high) if self.knowledge_gate is not None else 1.0
            refined = refined + gate * attended
        return low, self.high_out(refined).view(b, c, 3, h, w)

    def forward(self, x: Tensor, emb: Tensor, knowledge: Tensor | None = None) -> Tensor:
        """x (B, C, H, W), emb (B, E), knowledge (B, K, D) or None -> (B, C, H, W)."""
        low, highs = self.bands(x, knowledge)
        weights = 2.0 * self.balance_weights(x, emb)
        w_low, w_high = weights[:, 0, None, None, None], weights[:, 1, None, None, None, None]
        return x + self.gamma * self.wavelet.idwt(w_low * low, w_high * highs)
