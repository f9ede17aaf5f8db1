"""pix2pix (Isola et al., CVPR 2017): conditional GAN, U-Net generator, 70x70 PatchGAN.

Loss: vanilla GAN (BCE) + 100 * L1; the discriminator sees (source, target) pairs and its
loss is halved, as published. Adam lr 2e-4, betas (0.5, 0.999); `paper` keeps the published
batch size 1 and 200 epochs (100 constant + 100 linear decay, expressed in steps by the user's
dataset size via `steps`), `tiny` is a CPU-sized version with the same losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dfbk.methods.base import Batch, Knowledge, Method, to_signed, to_unit
from dfbk.methods.gan import gan_loss, set_requires_grad
from dfbk.methods.registry import register_method
from dfbk.methods.schedules import linear_decay
from dfbk.networks.unet import PatchDiscriminator, UNetGenerator, init_weights


@register_method("pix2pix")
class Pix2Pix(Method):
    PRESETS = {
        "tiny": {
            "steps": 400,
            "batch_size": 16,
            "ema_decay": None,
            "ngf": 16,
            "ndf": 16,
            "num_downs": 6,
            "norm": "batch",
            "dropout": 0.5,
            "lr": 1e-3,  # 2e-4 (paper) leaves a 400-step CPU run far from converged
            "beta1": 0.5,
            "lambda_l1": 100.0,
            "gan_mode": "vanilla",
            "decay_start": 200,
        },
        "paper": {
            "steps": 200_000,
            "batch_size": 1,
            "ema_decay": None,
            "ngf": 64,
            "ndf": 64,
            "num_downs": 8,
            "norm": "batch",
            "dropout": 0.5,
            "lr": 2e-4,
            "beta1": 0.5,
            "lambda_l1": 100.0,
            "gan_mode": "vanilla",
            "decay_start": 100_000,
        },
    }

    def __init__(self, hparams: dict) -> None:
        super().__init__(hparams)
        h = self.hparams
        self.generator = UNetGenerator(1, 1, h["num_downs"], h["ngf"], h["norm"], h["dropout"])
        self.discriminator = PatchDiscriminator(2, h["ndf"], 3, h["norm"])
        init_weights(self)
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

    def training_step(self, batch: Batch, step: int) -> dict[str, float]:
        src, tgt = to_signed(batch.source), to_signed(batch.target)
        with self.autocast():
            fake = self.generator(src)
        # discriminator: real pairs -> 1, fake pairs -> 0
        set_requires_grad(self.discriminator, True)
        self.opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            d_real = self.discriminator(torch.cat([src, tgt], 1))
            d_fake = self.discriminator(torch.cat([src, fake.detach()], 1))
            loss_d = 0.5 * (
                gan_loss(d_real, True, self.hparams["gan_mode"])
                + gan_loss(d_fake, False, self.hparams["gan_mode"])
            )
        loss_d.backward()
        self.opt_d.step()
        # generator: fool D, stay close in L1
        set_requires_grad(self.discriminator, False)
        self.opt_g.zero_grad(set_to_none=True)
        with self.autocast():
            loss_gan = gan_loss(
                self.discriminator(torch.cat([src, fake], 1)), True, self.hparams["gan_mode"]
            )
            loss_l1 = F.l1_loss(fake.float(), tgt)
            loss_g = loss_gan + self.hparams["lambda_l1"] * loss_l1
        loss_g.backward()
        self.opt_g.step()
        self.sched_g.step()
        self.sched_d.step()
        return {
            "loss_g": loss_g.item(),
            "loss_g_gan": loss_gan.item(),
            "loss_l1": loss_l1.item(),
            "loss_d": loss_d.item(),
        }

    @torch.no_grad()
    def translate(
        self, source: Tensor, knowledge: Knowledge | None = None, seeds: Tensor | None = None
    ) -> Tensor:
        with self.autocast():
            return to_unit(self.generator(to_signed(source)).float())
