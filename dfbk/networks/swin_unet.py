"""ResShift's Swin-UNet denoiser, with DFB and Knowledge Guidance as switches (docs/method.md §2–4).

Layout (ResShift `UNetModelSwin`, patch size 1): a 3×3 stem; per level `num_res_blocks`
ResBlocks with timestep FiLM (scale-shift norm), the first one followed by a Swin layer on the
chosen levels, then a stride-2 conv; a middle block ResBlock–Swin–ResBlock; a decoder with
`num_res_blocks + 1` ResBlocks per level, each taking one encoder skip by concatenation (the
first followed by Swin on the chosen levels), nearest ×2 + 3×3 conv up; GroupNorm–SiLU–conv out.

DFB (dfbk/networks/dfb.py) sits on every skip tensor of the `dfb_levels` and on the middle
block's output (`dfb_bottleneck`); without DFB, Knowledge Guidance attends on the full feature
map at those same places (docs/method.md §4). Levels count from 0 (full resolution); negative
values count from the lowest resolution, so the default (-2, -1) means "the two lowest-resolution
skips" at any depth. With KG, the pooled text knowledge also feeds the timestep embedding.
DFB/KG work at an inner width of about `dfb_inner_ratio` × the feature width (a bottleneck, so
the ablation rows differ by at most ~10 % in parameters at the paper preset).

forward(x, t, knowledge, knowledge_mask, visual): x = concat(scaled x_t, source) (B, 2, H, W),
t (B,) long 0-based, knowledge (K, D) or (B, K, D) text token states or None, knowledge_mask
(K,) or (B, K) bool (None: all real), visual (B, N, visual_dim) per-slice image tokens (only
when built with visual_dim > 0) -> predicted x0 (B, 1, H, W). H and W must be divisible by
2**(levels-1); Swin pads maps that are not whole windows (e.g. 12×12 from 48×48 slices).
`diagnostics()` names each DFB/KG module's statistics of the last training forward.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfbk.networks.blocks import ResBlock, group_norm, timestep_embedding
from dfbk.networks.dfb import DFB_VARIANTS, DynamicFrequencyBalance
from dfbk.networks.knowledge_guidance import (
    KnowledgeEmbedding,
    KnowledgeGuidance,
    KnowledgeTokens,
    inner_width,
    rms,
)
from dfbk.networks.swin import SwinLayer


@dataclass(frozen=True)
class SwinUNetConfig:
    """Every architecture choice of the denoiser; built from a method's hyperparameters."""

    in_channels: int = 2
    out_channels: int = 1
    channels: int = 160
    channel_mults: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    dropout: float = 0.0
    swin_levels: tuple[int, ...] = (1, 2, 3)
    swin_embed_dim: int = 192
    swin_depth: int = 2
    window_size: int = 8
    head_channels: int = 32
    mlp_ratio: float = 4.0
    dfb: str | None = None  # "full" | "low" | "high" | "static" | None
    kg: bool = False
    kg_gate: bool = True
    kg_global: bool = True
    knowledge_dim: int = 512
    dfb_levels: tuple[int, ...] = (-2, -1)
    dfb_bottleneck: bool = True
    dfb_global_max_tokens: int = 1024
    dfb_inner_ratio: float = 0.25
    visual_dim: int = 0  # width of per-slice image tokens (768 BiomedCLIP ViT-B/16); 0 = none
    wavelet_backend: str = "conv"

    @classmethod
    def from_hparams(cls, hparams: dict) -> SwinUNetConfig:
        """Pick the architecture keys out of a method's hyperparameters (lists become tuples)."""
        values = {f.name: hparams[f.name] for f in fields(cls) if f.name in hparams}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def levels(self, chosen: tuple[int, ...], what: str) -> frozenset[int]:
        """Level indices in 0..n-1 (negative ones count from the lowest resolution)."""
        n = len(self.channel_mults)
        bad = [level for level in chosen if not -n <= level < n]
        if bad:
            raise ValueError(f"{what} {bad} out of range for {n} levels (0..{n - 1} or -{n}..-1)")
        return frozenset(level % n for level in chosen)


class ResSwin(nn.Module):
    """A ResBlock with timestep FiLM, optionally followed by a Swin layer (ResShift's pairing)."""

    def __init__(self, res: ResBlock, swin: SwinLayer | None) -> None:
        super().__init__()
        self.res, self.swin = res, swin

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.res(x, emb)
        return self.swin(h) if self.swin is not None else h


class Downsample(nn.Module):
    """Stride-2 3×3 conv (ResShift's conv_resample); takes emb only for a uniform call."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2 then 3×3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class SwinUNet(nn.Module):
    """Time-conditioned Swin-UNet predicting x0; see the module docstring for the layout."""

    def __init__(self, config: SwinUNetConfig) -> None:
        super().__init__()
        if config.dfb is not None and config.dfb not in DFB_VARIANTS:
            raise ValueError(f"unknown dfb '{config.dfb}'; known: {', '.join(DFB_VARIANTS)}, null")
        self.config = c = config
        self.swin_levels = c.levels(c.swin_levels, "swin_levels")
        self.dfb_levels = c.levels(c.dfb_levels, "dfb_levels")
        self.emb_dim = emb_dim = 4 * c.channels
        self.time_embed = nn.Sequential(
            nn.Linear(c.channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        use_global = c.kg and c.kg_global
        self.knowledge_tokens = KnowledgeTokens(c.knowledge_dim, c.visual_dim) if c.kg else None
        self.knowledge_embed = KnowledgeEmbedding(c.knowledge_dim, emb_dim) if use_global else None
        self.global_stats: dict[str, Tensor] = {}
        self.stem = nn.Conv2d(c.in_channels, c.channels, 3, padding=1)
        skip_widths, skip_levels = self._build_encoder()
        width = skip_widths[-1]
        self.middle = nn.ModuleList(
            [
                ResSwin(self._res(width, width), self._swin(width)),
                ResSwin(self._res(width, width), None),
            ]
        )
        self._build_decoder(list(skip_widths), width)
        self.head = nn.Sequential(
            group_norm(c.channels), nn.SiLU(), nn.Conv2d(c.channels, c.out_channels, 3, padding=1)
        )
        self.skip_fusion = nn.ModuleDict()
        for index, (skip_width, level) in enumerate(zip(skip_widths, skip_levels, strict=True)):
            module = self._fusion(skip_width) if level in self.dfb_levels else None
            if module is not None:
                self.skip_fusion[str(index)] = module
        self.mid_fusion = self._fusion(width) if c.dfb_bottleneck else None

    # ----- construction -------------------------------------------------------------------
    def _res(self, in_ch: int, out_ch: int) -> ResBlock:
        return ResBlock(in_ch, out_ch, self.emb_dim, self.config.dropout)

    def _swin(self, width: int) -> SwinLayer:
        c = self.config
        heads = max(1, c.swin_embed_dim // c.head_channels)
        return SwinLayer(width, c.swin_embed_dim, heads, c.window_size, c.swin_depth, c.mlp_ratio)

    def _fusion(self, width: int) -> nn.Module | None:
        """The module on one skip/bottleneck: DFB (with KG inside), KG alone, or nothing."""
        c = self.config
        inner = inner_width(width, c.dfb_inner_ratio, c.head_channels)
        if c.dfb is not None:
            return DynamicFrequencyBalance(
                width, self.emb_dim, c.dfb, c.head_channels, c.dfb_global_max_tokens,
                c.window_size, c.knowledge_dim if c.kg else None, c.kg_gate, c.wavelet_backend,
                inner,
            )  # fmt: skip
        if c.kg:
            return KnowledgeGuidance(width, c.knowledge_dim, inner, c.head_channels)
        return None

    def _build_encoder(self) -> tuple[list[int], list[int]]:
        """Encoder blocks; returns the width and level of every skip tensor, in push order."""
        c = self.config
        self.encoder = nn.ModuleList()
        widths, levels, width = [c.channels], [0], c.channels
        for level, mult in enumerate(c.channel_mults):
            for block in range(c.num_res_blocks):
                swin = (
                    self._swin(c.channels * mult)
                    if block == 0 and level in self.swin_levels
                    else None
                )
                self.encoder.append(ResSwin(self._res(width, c.channels * mult), swin))
                width = c.channels * mult
                widths.append(width)
                levels.append(level)
            if level < len(c.channel_mults) - 1:
                self.encoder.append(Downsample(width))
                widths.append(width)
                levels.append(level + 1)
        return widths, levels

    def _build_decoder(self, skip_widths: list[int], width: int) -> None:
        c = self.config
        self.decoder, self.upsamplers = nn.ModuleList(), nn.ModuleDict()
        for level, mult in reversed(list(enumerate(c.channel_mults))):
            for block in range(c.num_res_blocks + 1):
                out = c.channels * mult
                swin = self._swin(out) if block == 0 and level in self.swin_levels else None
                self.decoder.append(ResSwin(self._res(width + skip_widths.pop(), out), swin))
                width = out
            if level > 0:
                self.upsamplers[str(len(self.decoder) - 1)] = Upsample(width)

    # ----- forward ------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        t: Tensor,
        knowledge: Tensor | None = None,
        knowledge_mask: Tensor | None = None,
        visual: Tensor | None = None,
    ) -> Tensor:
        c = self.config
        factor = 2 ** (len(c.channel_mults) - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"Swin-UNet with {len(c.channel_mults)} levels needs H and W divisible by "
                f"{factor}; got {tuple(x.shape[-2:])} (pad the slices in prepare)"
            )
        emb = self.time_embed(timestep_embedding(t, c.channels))
        tokens = None
        if self.knowledge_tokens is not None:
            keys, mask, pooled = self.knowledge_tokens(knowledge, knowledge_mask, visual, x)
            tokens = (keys, mask)
            if self.knowledge_embed is not None:
                shift = self.knowledge_embed(pooled)
                if self.training:
                    self.global_stats = {"gain": rms(shift) / rms(emb).clamp_min(1e-12)}
                emb = emb + shift
        h = self.stem(x)
        skips = [self._fuse(0, h, emb, tokens)]
        for block in self.encoder:
            h = block(h, emb)
            skips.append(self._fuse(len(skips), h, emb, tokens))
        for block in self.middle:
            h = block(h, emb)
        if self.mid_fusion is not None:
            h = self.mid_fusion(h, emb, tokens)
        for index, block in enumerate(self.decoder):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if str(index) in self.upsamplers:
                h = self.upsamplers[str(index)](h)
        return self.head(h)

    def _fuse(
        self, index: int, h: Tensor, emb: Tensor, tokens: tuple[Tensor, Tensor] | None
    ) -> Tensor:
        module = self.skip_fusion[str(index)] if str(index) in self.skip_fusion else None
        return h if module is None else module(h, emb, tokens)

    def fusion_modules(self) -> dict[str, nn.Module]:
        """DFB/KG modules by log name: "skip{i}" (i = skip tensor index) and "mid"."""
        named = {f"skip{index}": module for index, module in self.skip_fusion.items()}
        if self.mid_fusion is not None:
            named["mid"] = self.mid_fusion
        return named

    def diagnostics(self) -> dict[str, float]:
        """Statistics of the last training forward: per module gain (RMS(out - F) / RMS(F)),
        DFB's mean w_low, KG's share of DFB's output change, the global KG path's gain; and the
        norm of each zero-initialised output projection (0 at init: whether the module switched
        on)."""
        out: dict[str, float] = {}
        for name, module in self.fusion_modules().items():
            kind = "dfb" if isinstance(module, DynamicFrequencyBalance) else "kg"
            for key, value in module.stats.items():
                prefix = "kg" if key == "kg_share" else kind
                out[f"{prefix}.{name}.{key.removeprefix('kg_')}"] = float(value)
            projections = [
                getattr(module, attr)
                for attr in ("low_out", "high_out", "out")
                if getattr(module, attr, None) is not None
            ]
            norm = sum(float(p.weight.detach().float().norm() ** 2) for p in projections) ** 0.5
            out[f"{kind}.{name}.out_norm"] = norm
        for key, value in self.global_stats.items():
            out[f"kg.global.{key}"] = float(value)
        return out
