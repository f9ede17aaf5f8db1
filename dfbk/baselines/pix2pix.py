"""pix2pix (Isola et al., CVPR 2017): conditional GAN, U-Net generator, 70x70 PatchGAN.

Loss: vanilla GAN (BCE) + 100 * L1; the discriminator sees (source, target) pairs and its
loss is halved, as published. Adam lr 2e-4, betas (0.5, 0.999); `paper` keeps the published
batch size 1 and 200 epochs (100 constant + 100 linear decay, expressed in steps by the user's
dataset size via `steps`), `tiny` is a CPU-sized version with the same losses.

Checked against the released code (github.com/junyanz/pytorch-CycleGAN-and-pix2pix:
`data/base_dataset.py`, `models/networks.py`, `test.py`) and the paper:
- Augmentation: `get_transform` flips left-right with probability 1/2 unless `--no_flip`
  (the same flip for source and target of a pair), on by default: `augment: hflip`.
- Initialisation: `init_net` -> `init_weights`, N(0, 0.02) weights, zero biases, N(1, 0.02)
  batch-norm scales (`dfbk.networks.unet.init_weights`).
- Inference: `test.py` calls `model.eval()` only with `--eval` (off by default), and the paper
  (Sec. 3.3) runs the generator "in exactly the same manner as during the training phase":
  dropout on, batch norm on the statistics of the test batch of size 1. `inference: train`
  does this slice by slice (dropout from the slice's seed); `inference: eval` uses running
  statistics and no dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dfbk.methods.base import Batch, Knowledge, Method, to_signed, to_unit
from dfbk.methods.gan import check_inference_mode, gan_loss, run_generator, set_requires_grad
from dfbk.methods.registry import register_method
from dfbk.methods.schedules import linear_decay
from dfbk.networks.unet import PatchDiscriminator, UNetGenerator, init_weights


@register_method("pix2pix")
class Pix2Pix(Method):
    PRESETS = {
        "tiny": {
            "augment": "hflip",  # released default (no --no_flip)
            # eval: tiny trains at batch 16, so batch norm's training statistics are not one
            # slice's (phantom T1->T2, 400 steps: SSIM 0.843 eval, 0.748 slice-by-slice train)
            "inference": "eval",
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
            "augment": "hflip",  # released default (no --no_flip)
            "inference": "train",  # the paper and released test.py
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
        check_inference_mode(self.name, self.inference)
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
            out = run_generator(
                self.generator, self.generator, to_signed(source), self.inference, seeds
            )
        return to_unit(out.float())

    @property
    def inference(self) -> str:
        # checkpoints written before the key existed were translated in eval mode
        return self.hparams.get("inference", "eval")

    def describe(self) -> dict:
        return {
            "augment": self.hparams["augment"],
            "inference": INFERENCE_NOTES[self.inference],
            "init": "N(0, 0.02) weights, zero biases, N(1, 0.02) batch-norm scales (released)",
        }


INFERENCE_NOTES = {
    "train": "train mode, slice by slice, as the paper and the released test.py: dropout "
    "active with the slice's seed, batch norm on the slice's own statistics",
    "eval": "eval mode: running batch-norm statistics, no dropout (released test.py: train mode)",
}
