"""Ea-GAN (Yu et al., IEEE TMI 2019): edge-aware conditional GANs for cross-modality MR synthesis.

pix2pix-style U-Net generator and PatchGAN, least-squares GAN loss, plus a Sobel edge-map term:

    L_G = L_lsgan(D(x, G(x)[, S(G(x))]), 1) + 300 |y - G(x)|_1 + lambda_e(t) |S(y) - S(G(x))|_1

where S is the Sobel edge magnitude and lambda_edge rises linearly from 0 to 100 over the first
20 epochs (`edge_ramp_steps`). Two variants, one class (`variant` hyperparameter):
- gEa-GAN (`ea_gan`, variant "g"): edges only in the generator loss; D sees (source, image).
- dEa-GAN (`dea_gan`, variant "d"): D also sees the edge map, (source, image, S(image)), so edge
  similarity is learned adversarially as well.
Adam 2e-4, beta1 0.5; 100 epochs at constant lr, then 50 of linear decay to 0.

Deviations from the published (3-D, PyTorch) code, recorded in `describe()`:
- 2-D port: the published networks are 3-D (U-Net on 128^3 patches, 3-D Sobel in three
  directions). Here slices are 2-D: 2-D U-Net (8 downsamplings at 256x256), 2-D PatchGAN, and the
  2-D Sobel magnitude S = sqrt(Gx^2 + Gy^2) with the standard 3x3 kernels (unscaled; the 3-D
  kernel divided by 4, as the published code does, gives the same 4*h response to a step of h).
- Edge map as in the paper, the raw magnitude: the code additionally squashes it to
  2*tanh(S) - 1 and pads with -1; we pad by replicating the border (no spurious border edges).
- Image pool on the discriminator's fake input only, for both variants. The released gEa-GAN
  does exactly this (`gea_gan_model.py`: a pool of `--pool_size` 4 images, queried for the fake
  pair in `backward_D`). The released dEa-GAN (`dea_gan_model.py`) also pushes the *real*
  triplets through that same pool in `backward_D`, and queries it again in `backward_G`; the
  pool rebuilds its output from `.data`, so there the generator's adversarial loss carries no
  gradient at all and dEa-GAN's generator is trained by the L1 and edge terms alone. We keep
  the adversarial gradient (the paper's objective) and the gEa-GAN pool.
- No random label smoothing: the released `GANLoss_smooth` draws a random target once and
  caches it, i.e. a fixed random target. The paper's plain LSGAN targets 1/0 are used.

Checked against the released code (github.com/by-lab/Ea-GANs: `models/`, `data/aligned_dataset.py`,
`options/`, `train_*.sh`, `test.py`), and followed here:
- Augmentation: the aligned loader flips source and target together along the last image axis
  with probability 1/2 unless `--no_flip`, which the training scripts do not pass
  (`augment: hflip`).
- Initialisation: `init_net` / `weights_init`, N(0, 0.02) convolution weights, N(1, 0.02) norm
  scales, convolution biases left at PyTorch's default.
- Inference: the test model calls `netG.eval()` (`inference: eval`: running batch-norm
  statistics, no dropout).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dfbk.errors import ConfigError
from dfbk.methods.base import Batch, Knowledge, Method, to_signed, to_unit
from dfbk.methods.gan import (
    ImagePool,
    check_inference_mode,
    gan_loss,
    run_generator,
    set_requires_grad,
)
from dfbk.methods.registry import register_method
from dfbk.methods.schedules import linear_decay
from dfbk.networks.unet import PatchDiscriminator, UNetGenerator, init_weights

VARIANTS = ("g", "d")

# Sobel kernels for d/dx (columns) and d/dy (rows); a unit step gives a response of 4.
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = _SOBEL_X.t().contiguous()


def sobel_edges(image: Tensor) -> Tensor:
    """2-D Sobel gradient magnitude sqrt(Gx^2 + Gy^2) per channel, border replicated.

    image: (B, C, H, W) -> (B, C, H, W), >= 0. A vertical step of height h between two columns
    gives 4*h on the two columns beside the step and 0 in flat regions. Differentiable; the
    gradient at flat regions (magnitude 0) is 0, not NaN.
    """
    channels = image.shape[1]
    kernel = torch.stack([_SOBEL_X, _SOBEL_Y]).to(image.device, image.dtype)
    kernel = kernel.unsqueeze(1).repeat(channels, 1, 1, 1)  # (2C, 1, 3, 3), grouped per channel
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    grads = F.conv2d(padded, kernel, groups=channels)  # (B, 2C, H, W): gx, gy per channel
    grads = grads.unflatten(1, (channels, 2))
    return torch.linalg.vector_norm(grads, dim=2)


def edge_weight(step: int, full_weight: float, ramp_steps: int) -> float:
    """Edge-loss weight at `step`: linear from 0 to `full_weight` over `ramp_steps`, then flat.

    The published code raises lambda_sobel by lambda/20 after each of the first 20 epochs; this
    is the same ramp, continuous in steps.
    """
    if ramp_steps <= 0:
        return float(full_weight)
    return float(full_weight) * min(1.0, max(0, step) / ramp_steps)


_BASE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "augment": "hflip",  # released loader flips unless --no_flip
        "inference": "eval",  # released test: netG.eval()
        "pool_size": 4,  # released --pool_size default; D's fake input only
        "steps": 400,
        "batch_size": 16,
        "ema_decay": None,
        "ngf": 12,  # one-thread CPU budget (~0.15 s per step at batch 16)
        "ndf": 12,
        "num_downs": 6,  # 64x64 -> 1x1
        "norm": "batch",
        "dropout": 0.5,
        "lr": 1e-3,  # CPU budget: 2e-4 (paper) is far from converged in 400 steps
        "beta1": 0.5,
        "lambda_l1": 300.0,
        "lambda_edge": 100.0,
        "edge_ramp_steps": 53,  # 20/150 of the run, as in the paper
        "decay_start": 267,  # 100/150 of the run
        "gan_mode": "lsgan",
    },
    "paper": {
        "augment": "hflip",  # released loader flips unless --no_flip
        "inference": "eval",  # released test: netG.eval()
        "pool_size": 4,  # released --pool_size default; D's fake input only
        # Epochs -> steps at a nominal 1,000 steps per epoch (set `steps`, `decay_start` and
        # `edge_ramp_steps` from the training-set size: epoch = n_train_slices / batch_size).
        "steps": 150_000,  # 100 epochs constant + 50 epochs linear decay
        "batch_size": 6,  # published training scripts
        "ema_decay": None,
        "ngf": 64,
        "ndf": 64,
        "num_downs": 8,  # 2-D U-Net at 256x256 (the 3-D code: 7 at 128^3)
        "norm": "batch",
        "dropout": 0.5,
        "lr": 2e-4,
        "beta1": 0.5,
        "lambda_l1": 300.0,
        "lambda_edge": 100.0,
        "edge_ramp_steps": 20_000,  # 20 epochs
        "decay_start": 100_000,  # 100 epochs
        "gan_mode": "lsgan",
    },
}


def _presets(variant: str) -> dict[str, dict[str, Any]]:
    return {name: {**preset, "variant": variant} for name, preset in _BASE_PRESETS.items()}


@register_method("ea_gan")
class EaGAN(Method):
    """gEa-GAN by default; `variant: "d"` (registered as `dea_gan`) gives dEa-GAN."""

    PRESETS = _presets("g")

    def __init__(self, hparams: dict) -> None:
        super().__init__(hparams)
        h = self.hparams
        if h["variant"] not in VARIANTS:
            raise ConfigError(
                f"method '{self.name}': variant must be one of {VARIANTS}, got {h['variant']!r}"
            )
        self.generator = UNetGenerator(1, 1, h["num_downs"], h["ngf"], h["norm"], h["dropout"])
        d_channels = 3 if h["variant"] == "d" else 2  # (source, image[, edges(image)])
        self.discriminator = PatchDiscriminator(d_channels, h["ndf"], 3, h["norm"])
        init_weights(self, zero_bias=False)  # released: biases keep PyTorch's default
        check_inference_mode(self.name, self.inference)
        self.pool = ImagePool(h["pool_size"])
        betas = (h["beta1"], 0.999)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=h["lr"], betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=h["lr"], betas=betas)
        rule = linear_decay(h["steps"], h["decay_start"])
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, rule)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, rule)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"g": self.opt_g, "d": self.opt_d}

    def schedulers(self) -> dict:
        return {"g": self.sched_g, "d": self.sched_d}

    def describe(self) -> dict[str, Any]:
        return {
            "variant": "dEa-GAN" if self.hparams["variant"] == "d" else "gEa-GAN",
            "augment": self.hparams["augment"],
            "inference": f"{self.inference} mode (released test: eval)",
            "init": "N(0, 0.02) weights, default biases, N(1, 0.02) norm scales (released)",
            "deviations": [
                "2-D port of the 3-D method: 2-D U-Net/PatchGAN, 2-D Sobel magnitude "
                "sqrt(Gx^2+Gy^2)",
                "raw Sobel magnitude as in the paper (code: 2*tanh(S)-1, -1 padding); "
                "replicate padding",
                "image pool on D's fake input only (released dEa-GAN also pools real inputs "
                "and detaches the generator's adversarial term); no label smoothing (a fixed "
                "random target in the released code): plain LSGAN targets",
                "edge-weight ramp continuous in steps instead of once per epoch",
            ],
        }

    # ----- pieces of the step ---------------------------------------------------------------
    def discriminator_input(self, source: Tensor, image: Tensor) -> Tensor:
        """(source, image) for gEa-GAN; (source, image, Sobel(image)) for dEa-GAN."""
        parts = [source, image]
        if self.hparams["variant"] == "d":
            parts.append(sobel_edges(image))
        return torch.cat(parts, 1)

    def generator_losses(
        self, source: Tensor, target: Tensor, fake: Tensor, step: int
    ) -> dict[str, Tensor]:
        """The generator objective on signed images; D is read, not trained, here."""
        h = self.hparams
        with self.autocast():
            logits = self.discriminator(self.discriminator_input(source, fake))
        loss_gan = gan_loss(logits.float(), True, h["gan_mode"])
        fake = fake.float()
        loss_l1 = F.l1_loss(fake, target)
        loss_edge = F.l1_loss(sobel_edges(fake), sobel_edges(target))
        weight = edge_weight(step, h["lambda_edge"], h["edge_ramp_steps"])
        total = loss_gan + h["lambda_l1"] * loss_l1 + weight * loss_edge
        return {"loss_g": total, "loss_g_gan": loss_gan, "loss_l1": loss_l1, "loss_edge": loss_edge}

    def generator_objective(self, batch: Batch, step: int) -> Tensor:
        """Total generator loss on a batch (what one generator update decreases)."""
        source, target = to_signed(batch.source), to_signed(batch.target)
        with self.autocast():
            fake = self.generator(source)
        return self.generator_losses(source, target, fake, step)["loss_g"]

    def _update_discriminator(self, source: Tensor, target: Tensor, fake: Tensor) -> Tensor:
        mode = self.hparams["gan_mode"]
        set_requires_grad(self.discriminator, True)
        self.opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            d_real = self.discriminator(self.discriminator_input(source, target))
            fakes = self.pool.query(self.discriminator_input(source, fake.detach()))
            d_fake = self.discriminator(fakes)
        loss_d = 0.5 * (
            gan_loss(d_real.float(), True, mode) + gan_loss(d_fake.float(), False, mode)
        )
        loss_d.backward()
        self.opt_d.step()
        return loss_d

    # ----- the interface --------------------------------------------------------------------
    def training_step(self, batch: Batch, step: int) -> dict[str, float]:
        source, target = to_signed(batch.source), to_signed(batch.target)
        with self.autocast():
            fake = self.generator(source)
        loss_d = self._update_discriminator(source, target, fake)
        set_requires_grad(self.discriminator, False)
        self.opt_g.zero_grad(set_to_none=True)
        losses = self.generator_losses(source, target, fake, step)
        losses["loss_g"].backward()
        self.opt_g.step()
        set_requires_grad(self.discriminator, True)
        self.sched_g.step()
        self.sched_d.step()
        out = {key: value.item() for key, value in losses.items()}
        out["loss_d"] = loss_d.item()
        out["edge_weight"] = edge_weight(
            step, self.hparams["lambda_edge"], self.hparams["edge_ramp_steps"]
        )
        return out

    @torch.no_grad()
    def translate(
        self, source: Tensor, knowledge: Knowledge | None = None, seeds: Tensor | None = None
    ) -> Tensor:
        with self.autocast():
            out = run_generator(
                self.generator, self.generator, to_signed(source), self.inference, seeds
            )
        return to_unit(out.float())

    @property
    def inference(self) -> str:
        # checkpoints written before the key existed were translated in eval mode
        return self.hparams.get("inference", "eval")


@register_method("dea_gan")
class DEaGAN(EaGAN):
    """dEa-GAN: the same class with the variant-"d" preset table (D also sees the edge map)."""

    PRESETS = _presets("d")
