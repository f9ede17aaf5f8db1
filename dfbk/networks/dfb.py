"""Dynamic Frequency Balance (DFB): re-weight wavelet bands per step (docs/method.md §3).

For a feature map F (B, C, H, W), the step embedding e (B, E) and an inner width r (about C/4,
a bottleneck that keeps DFB + KG within ~10 % of ResShift's parameters):
1. LL, [LH, HL, HH] = HaarDWT(F)                                   (orthonormal, exact inverse)
2. low band, global structure: L = In(GroupNorm(LL)) (C -> r); U = Attn(L), global MHSA on the
   half-resolution map (non-overlapping window attention past `global_max_tokens` tokens);
   L' = L + U  (the inner picture of LL').
   With KG: A = CrossAttn(L', knowledge) (dfbk/networks/knowledge_guidance.py), added to the
   low-band update U.
3. high bands, keep structure and drop noise: H = Conv1x1([LH, HL, HH]) (3C -> r);
   G = sigmoid(DWConv3x3(Conv1x1([H, L'])))  (the low band decides which high responses are
   anatomy; the gate sees L' = L + U, never the knowledge term A); with KG the attention
   output is added through the gate sigmoid(Conv1x1(H)).
4. [w_L, w_H] = softmax(MLP([mean-pool(F), e]))                    per sample and per step
5. out = F + IDWT(2 w_L dL, 2 w_H dH), dL = OutL(U + A) (r -> C), dH = OutH(G * H + gate * A)
   (r -> 3C): the enhanced bands are LL + dL and highs + dH. OutL and OutH are zero-initialised
   1x1 projections: identity at init, but (unlike a zero scalar gamma that multiplies every
   internal gradient by 0) their own gradients are not zero, so the module switches on after
   the first step and the internals learn from the second.

Variants for the ablation (`variant`): "full"; "low" — the high bands contribute nothing
(dH = 0; their modules, and KG's high-band gate, are not built); "high" — no low-band attention
(U = 0; KG still adds A to the low band); "static" — w fixed at 0.5/0.5 (no balance MLP).
`stats` holds detached statistics of the last training forward for the training log:
gain = RMS(out - F) / RMS(F), w_low, and kg_share = RMS(KG's term of out - F) / RMS(out - F).
A enters out - F only linearly (through OutL, OutH without their biases, the balance weights
and the IDWT; the gate does not see it), so KG's term, IDWT(2 w_L OutL(A), 2 w_H OutH(gate * A))
without biases, is exactly what the module's output change would lose without KG: the share
of the module's effect that is knowledge, after the projections that decide what reaches the
output (the attention's own size, before them, says nothing about that).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfbk.networks.blocks import group_norm
from dfbk.networks.knowledge_guidance import KnowledgeCrossAttention, rms
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

    def forward(self, x: Tensor) -> Tensor:
        """(B, r, h, w) -> Attn(Norm(x)) (B, r, h, w), heads concatenated (the caller projects)."""
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
        out = out.transpose(1, 2).reshape(b, nw, n, c)
        if tiled:
            return window_reverse(out, self.window, h, w)
        return out[:, 0].transpose(1, 2).reshape(b, c, h, w)


class DynamicFrequencyBalance(nn.Module):
    """DFB on one feature map; identity at initialisation. See the module docstring.

    knowledge_dim None: no Knowledge Guidance inside this module. inner: the width r.
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
        inner: int | None = None,
    ) -> None:
        super().__init__()
        if variant not in DFB_VARIANTS:
            raise ValueError(f"unknown DFB variant '{variant}'; known: {', '.join(DFB_VARIANTS)}")
        r = inner or channels
        self.variant = variant
        self.use_low, self.use_high = variant != "high", variant != "low"
        self.wavelet = HaarWavelet(wavelet_backend)
        self.low_norm = group_norm(channels)
        self.low_in = nn.Conv2d(channels, r, 1)
        self.low_attention = (
            LowBandAttention(r, head_channels, global_max_tokens, window) if self.use_low else None
        )
        self.knowledge = (
            KnowledgeCrossAttention(r, knowledge_dim, r, head_channels)
            if knowledge_dim is not None
            else None
        )
        self.low_out = (
            _zero(nn.Conv2d(r, channels, 1)) if self.use_low or self.knowledge is not None else None
        )
        if self.use_high:
            self.high_in = nn.Conv2d(3 * channels, r, 1)
            self.high_gate = nn.Sequential(
                nn.Conv2d(2 * r, r, 1), nn.Conv2d(r, r, 3, padding=1, groups=r)
            )
            self.high_out = _zero(nn.Conv2d(r, 3 * channels, 1))
        self.balance = (
            nn.Sequential(nn.Linear(channels + emb_dim, r), nn.SiLU(), nn.Linear(r, 2))
            if variant != "static"
            else None
        )
        gated = self.knowledge is not None and self.use_high and knowledge_gate
        self.knowledge_gate = nn.Conv2d(r, r, 1) if gated else None
        self.stats: dict[str, Tensor] = {}

    def balance_weights(self, x: Tensor, emb: Tensor) -> Tensor:
        """(B, 2) weights [w_L, w_H] summing to 1: softmax(MLP([mean-pool(F), e])), or 0.5/0.5."""
        if self.balance is None:
            return x.new_full((x.shape[0], 2), 0.5)
        pooled = torch.cat([x.mean(dim=(2, 3)), emb.to(x.dtype)], dim=1)
        return torch.softmax(self.balance(pooled).float(), dim=1).to(x.dtype)

    def deltas(
        self, x: Tensor, knowledge: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Band updates before balancing: dL (B, C, h, w) and dH (B, C, 3, h, w)."""
        return self._bands(x, knowledge)[:2]

    def _bands(
        self, x: Tensor, knowledge: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
        """dL, dH and, in training with KG, KG's own terms of them (detached, for `stats`)."""
        low, highs = self.wavelet.dwt(x)
        inner = self.low_in(self.low_norm(low))  # L
        update = self.low_attention(inner) if self.low_attention is not None else None
        if update is not None:
            inner = inner + update  # L' = L + U: the gate and KG's queries see this
        attended = None
        if self.knowledge is not None:
            if knowledge is None:
                raise ValueError("DFB with Knowledge Guidance needs knowledge tokens")
            attended = self.knowledge(inner, *knowledge)
            update = attended if update is None else update + attended
        d_low = self.low_out(update) if update is not None else torch.zeros_like(low)
        observe = attended is not None and self.training
        kg_low = _linear_part(self.low_out, attended) if observe else None
        if not self.use_high:
            kg = (kg_low, torch.zeros_like(highs)) if observe else None
            return d_low, torch.zeros_like(highs), kg
        b, c, h, w = low.shape
        high = self.high_in(highs.reshape(b, 3 * c, h, w))
        refined = torch.sigmoid(self.high_gate(torch.cat([high, inner], dim=1))) * high
        kg = None
        if attended is not None:
            gate = torch.sigmoid(self.knowledge_gate(high)) if self.knowledge_gate else 1.0
            refined = refined + gate * attended
            if observe:
                kg_high = _linear_part(self.high_out, gate * attended).view(b, c, 3, h, w)
                kg = (kg_low, kg_high)
        return d_low, self.high_out(refined).view(b, c, 3, h, w), kg

    def forward(
        self, x: Tensor, emb: Tensor, knowledge: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """x (B, C, H, W), emb (B, E), knowledge (keys (B, K, D), mask (B, K)) -> (B, C, H, W)."""
        d_low, d_highs, kg = self._bands(x, knowledge)
        weights = self.balance_weights(x, emb)
        w_low = 2.0 * weights[:, 0, None, None, None]
        w_high = 2.0 * weights[:, 1, None, None, None, None]
        delta = self.wavelet.idwt(w_low * d_low, w_high * d_highs)
        if self.training:
            self.stats["gain"] = rms(delta) / rms(x).clamp_min(1e-12)
            self.stats["w_low"] = weights[:, 0].detach().float().mean()
            if kg is not None:
                with torch.no_grad():
                    kg_delta = self.wavelet.idwt(w_low * kg[0], w_high * kg[1])
                self.stats["kg_share"] = rms(kg_delta) / rms(delta).clamp_min(1e-12)
        return x + delta


def _linear_part(projection: nn.Conv2d, x: Tensor) -> Tensor:
    """The projection's weight applied to x, without its bias: x's own term of the output
    (projection(a + x) = projection(a) + this), detached."""
    with torch.no_grad():
        return F.conv2d(x, projection.weight)


def _zero(layer: nn.Conv2d) -> nn.Conv2d:
    """Zero-initialise a projection: its branch adds nothing at init, yet gets a gradient."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer
