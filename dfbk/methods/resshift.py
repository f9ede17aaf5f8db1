"""resshift: ResShift residual-shifting diffusion in pixel space, x0-prediction with MSE.

The ablation floor of DFBK: the same diffusion (T=15, kappa 2.0, min noise 0.04,
sqrt(eta_T) 0.99, power 0.3) and the same Swin-UNet denoiser (docs/method.md §2), with neither DFB
nor Knowledge Guidance, so the ablation table isolates what DFB and KG add. The source y is
concatenated to the scaled x_t. `paper` follows ResShift's optimiser (AdamW 5e-5, EMA 0.999);
`tiny` uses lr 1e-3 because on CPU budgets 5e-5 does not converge in minutes.
`SWIN_UNET_PRESETS` are shared with the DFBK methods (dfbk/methods/dfbk.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dfbk.diffusion import resshift as rs
from dfbk.diffusion.noise import SliceNoise, noise_for
from dfbk.methods.base import Batch, Knowledge, Method, to_signed, to_unit
from dfbk.methods.registry import register_method
from dfbk.networks.swin_unet import SwinUNet, SwinUNetConfig

DIFFUSION_DEFAULTS = {
    "num_steps": 15,
    "kappa": 2.0,
    "min_noise_level": 0.04,
    "sqrt_eta_max": 0.99,
    "power": 0.3,
}

# Training and Swin-UNet hyperparameters shared by `resshift` and every DFBK variant.
# paper: docs/method.md §2 plus ResShift's published config where it is silent (mlp_ratio 4, Swin
# depth 2, 32 channels per head -> 6 heads at width 192, warm-up 5000 steps, weight decay 0,
# no gradient clipping). Swin levels are indices (0 = full resolution, negative = from the
# lowest): docs/method.md's "32, 16, 8" does not exist in a 1,2,2,4 U-Net on 256x256 (its levels
# are 256/128/64/32), so `paper` keeps three Swin levels, the three lowest (128, 64, 32), as
# ResShift puts Swin on every level of the same layout in its 64x64 latent space.
# tiny: cheap enough for one CPU core (bench/bench_dfbk.py measures the step time).
# augment hflip: ResShift's released training data (configs/*.yaml: `hflip: True` /
# `use_hflip: True`, `rotation`/`use_rot: False`) flips left-right and never rotates.
# ResShift's released training recipe (zsyOAOA/ResShift, configs/realsr_swinunet_realesrgan256.yaml:
# train.batch 64 as microbatches of 16 with gradient accumulation, iterations 500,000,
# use_fp16 False). The `paper` preset keeps its optimiser, learning rate, warm-up and EMA but
# trains 300,000 steps at batch 16 under bf16 autocast: docs/method.md, "Optimisation", says
# where and why; table captions state it beside each run's own budget.
RELEASED_RECIPE = {"steps": 500_000, "batch_size": 64, "microbatch": 16, "precision": "fp32"}

SWIN_UNET_PRESETS = {
    "tiny": {
        **DIFFUSION_DEFAULTS,
        "augment": "hflip",
        "steps": 300,  # demo budget: SSIM 0.87 on phantom T1->T2 (identity 0.36)
        "batch_size": 8,
        "ema_decay": 0.99,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "warmup_steps": 20,
        "grad_clip": 1.0,
        "channels": 16,
        "channel_mults": [1, 2, 2],
        "num_res_blocks": 1,
        "dropout": 0.0,
        "swin_levels": [-1],
        "swin_embed_dim": 32,
        "swin_depth": 2,
        "window_size": 8,
        "head_channels": 16,
        "mlp_ratio": 2.0,
        "sample_seed": 0,
    },
    "paper": {
        **DIFFUSION_DEFAULTS,
        "augment": "hflip",
        "steps": 300_000,
        "batch_size": 16,
        "ema_decay": 0.999,
        "lr": 5e-5,
        "weight_decay": 0.0,
        "warmup_steps": 5000,
        "grad_clip": 0.0,
        "channels": 160,
        "channel_mults": [1, 2, 2, 4],
        "num_res_blocks": 2,
        "dropout": 0.0,
        "swin_levels": [1, 2, 3],
        "swin_embed_dim": 192,
        "swin_depth": 2,
        "window_size": 8,
        "head_channels": 32,
        "mlp_ratio": 4.0,
        "sample_seed": 0,
    },
}


class ResShiftBase(Method):
    """Diffusion mechanics shared by `resshift` and the DFBK variants: subclasses build `net`."""

    # translate() takes `noise=` (per-slice canvases cropped per tile;
    # dfbk/inference/sliding_window.py)
    SAMPLES_NOISE = True

    def __init__(self, hparams: dict) -> None:
        super().__init__(hparams)
        h = self.hparams
        self.schedule = rs.make_schedule(
            h["num_steps"], h["kappa"], h["min_noise_level"], h["sqrt_eta_max"], h["power"]
        )
        self.net = self.build_network()
        self.opt = torch.optim.AdamW(
            self.net.parameters(), lr=h["lr"], weight_decay=h["weight_decay"]
        )
        warmup = max(1, int(h["warmup_steps"]))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min(1.0, (s + 1) / warmup)
        )

    def build_network(self) -> torch.nn.Module:
        raise NotImplementedError

    def denoise(self, x_t: Tensor, y: Tensor, t: Tensor, knowledge: Tensor | None = None) -> Tensor:
        """f(x_t, y, t, k) -> x0: scale x_t, concatenate the source, run the network.

        `knowledge` ((K, D) tokens or None) goes to the network, which ignores it unless its
        Knowledge Guidance is on.
        """
        inputs = torch.cat([rs.scale_input(x_t, t, self.schedule), y], dim=1)
        with self.autocast():
            return self.net(inputs, t, knowledge).float()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": self.opt}

    def schedulers(self) -> dict:
        return {"net": self.sched}

    def ema_network(self) -> torch.nn.Module:
        return self.net

    def training_step(self, batch: Batch, step: int) -> dict[str, float]:
        x0, y = to_signed(batch.target), to_signed(batch.source)
        denoiser = lambda x_t, y_, t: self.denoise(x_t, y_, t, batch.knowledge)  # noqa: E731
        loss = rs.training_loss(denoiser, x0, y, self.schedule)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.hparams.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.hparams["grad_clip"])
        self.opt.step()
        self.sched.step()
        return {"loss_mse": loss.item()}

    @torch.no_grad()
    def translate(
        self,
        source: Tensor,
        knowledge: Knowledge | None = None,
        seeds: Tensor | None = None,
        *,
        noise: SliceNoise | None = None,
    ) -> Tensor:
        """Sample x0 given the source; slice i draws its noise from the stream of `seeds[i]`.

        `noise` (tiled inference) replaces the streams built from `seeds`: it crops each tile's
        noise from its slice's canvas. Without either, seeds come from `sample_seed` and the
        position in the batch (reproducible, but not batch-independent).
        """
        y = to_signed(source)
        streams = noise_for(seeds, int(self.hparams.get("sample_seed", 0)), y, noise)
        denoiser = lambda x_t, y_, t: self.denoise(x_t, y_, t, knowledge)  # noqa: E731
        return to_unit(rs.sample(denoiser, y, self.schedule, noise=streams.spatial))


@register_method("resshift")
class ResShift(ResShiftBase):
    """ResShift with ResShift's Swin-UNet denoiser (no DFB, no Knowledge Guidance)."""

    PRESETS = SWIN_UNET_PRESETS

    def build_network(self) -> torch.nn.Module:
        return SwinUNet(SwinUNetConfig.from_hparams(self.hparams))

    def describe(self) -> dict:
        return {
            "denoiser": "ResShift Swin-UNet (dfbk/networks/swin_unet.py)",
            "dfb": None,
            "kg": False,
            "swin_levels": "level indices; paper: 128/64/32 at 256x256 "
            "(docs/method.md's 32/16/8 do not exist in a 1,2,2,4 U-Net at 256x256)",
            "lr_schedule": "linear warm-up, then constant",
            "released_recipe": dict(RELEASED_RECIPE),
        }
