"""MaskGAN (Phan et al., MICCAI 2023): structure-preserving unpaired MR-CT translation.

A CycleGAN (two generators A->B and B->A, two unconditional 70x70 PatchGANs, least-squares GAN)
whose generators are split into a *content generator* and a *mask generator* sharing one
ResNet-9 trunk (c7s1-64, two stride-2 downsamplings, 9 residual blocks). The content head
upsamples to `n_content` content maps C_i in [-1, 1] (tanh); the mask head upsamples to
`n_content + 1` attention maps A (softmax over channels, so they sum to 1 per pixel). The last
attention map selects the input itself, which copies the source background; the others select
the content maps (the released configuration has 5 attention maps: 4 content + 1 background):

    y = sum_i A_i * C_i + A_bg * x,        foreground attention  fg(x) = 1 - A_bg(x)

Losses of the generators G_AB and G_BA, with fg_AB / fg_BA their foreground attention and M_x
the coarse mask of x (`dfbk.baselines.maskgan_masks`):

    L = L_lsgan(D_B(G_AB(a)), 1) + L_lsgan(D_A(G_BA(b)), 1)
      + lambda_cyc * (|G_BA(G_AB(a)) - a|_1 + |G_AB(G_BA(b)) - b|_1)            cycle, 10
      + lambda_cyc * lambda_idt * (|G_AB(b) - b|_1 + |G_BA(a) - a|_1)           identity, 10 * 0.5
      + lambda_mask * (|fg_AB(a) - M_a|_1 + |fg_BA(b) - M_b|_1)                 mask, 1.0
      + lambda_shape(t) * (|fg_BA(G_AB(a)) - fg_AB(a)|_1
                           + |fg_AB(G_BA(b)) - fg_BA(b)|_1)                     shape, 0.5 ramped

The identity weight follows CycleGAN's convention (0.5 multiplies the cycle weight: 5 in all).
The mask loss (L1, mean over pixels) pulls the mask generator's foreground attention onto the
extracted mask; the released code writes it as |A_bg - (1 - M_x)|_1 (its data loader inverts the
masks to background = 1), the same loss. The cycle shape-consistency loss uses the reverse
generator's mask head as the differentiable shape extractor: the shape it reads from the
translated image must match the shape the forward generator outlined on the source (which the
mask loss ties to M_x), as in the released code. Its weight rises linearly from 0 to 0.5 over
training (the released code ramps it once per epoch, here per step). Adam 2e-4, betas
(0.5, 0.999), gradient-norm clipping at 1.0, image history pools of 50 for the discriminators,
40 epochs constant + 40 epochs linear decay at batch size 4.

Checked against the released code (github.com/HieuPhan33/MaskGAN, `models/networks.py`,
`data/unaligned_dataset.py`, `data/base_dataset.py`, `README.md`, `test.py`):
- Initialisation: `init_net` has its `init_weights` call commented out, so the encoder, both
  heads and the discriminators keep PyTorch's default initialisation; only the residual blocks
  of the attention generator draw N(0, 0.02) weights with zero biases (`resnet_block.weight_init`
  called by `ResnetGenerator_Att`). Followed here (tiny, phantom T1->T2 at 64x64, 7 training
  subjects, 250 steps: SSIM 0.706; with N(0, 0.02) everywhere 0.714; identity 0.618).
- Augmentation: the README's training command passes `--no_flip` (and `--preprocess
  resize_pad_crop`, a deterministic resize/pad/centre crop to 224): no flips (`augment: none`).
- Unpaired partners ("position-based selection", commit "position based strategy", 2024): the
  preprocessing writes every slice i of an n-slice volume (after resampling to 214 slices and
  padding 5 each side: n = 224) with its relative position round(i / n, 2); the loader draws the
  partner B uniformly among all training B slices, of any volume, whose rounded relative
  position lies within +-0.03 (inclusive; `--position_based_range 3`, percent) of A's. The
  shared loader's unpaired mode implements the partner draw (`dfbk.data.slices.loader`).
- Inference: `test.py` calls `model.eval()` only with `--eval` (not in the README), so it runs
  in training mode; with instance norm without running statistics and no dropout (the attention
  generator has none) the two modes give the same output, so `translate` simply runs it.

Deviations, also in `describe()`:
- Masks are computed on the fly per batch on CPU with scipy.ndimage (threshold, closing, hole
  filling, largest component, a 1-pixel dilation) for both domains instead of being precomputed
  by a preprocessing step; the store's `mask` is not used, so both domains are treated alike.
- Shape loss: the released code's B-side term compares the wrong pair (A_bg of G_BA(b) with the
  A-cycle's map); we use the symmetric pair. Its discriminator clipping call clips the
  generators' parameters (a no-op for D); we clip both at 1.0.
- 2-D slices at the store's slice size; no resize/pad/crop-224 augmentation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfbk.baselines.maskgan_masks import batch_masks
from dfbk.methods.base import Batch, Knowledge, Method, to_signed, to_unit
from dfbk.methods.gan import ImagePool, gan_loss, set_requires_grad
from dfbk.methods.registry import register_method
from dfbk.methods.schedules import linear_decay
from dfbk.networks.resnet import ResnetBlock, resnet_decoder, resnet_encoder
from dfbk.networks.unet import PatchDiscriminator, init_weights, norm_layer


class AttentionOutput(NamedTuple):
    """image (B,1,H,W) in [-1,1]; content (B,n,H,W) in [-1,1]; attention (B,n+1,H,W), sums to 1."""

    image: Tensor
    content: Tensor
    attention: Tensor

    @property
    def foreground(self) -> Tensor:
        """1 - A_bg: where the output comes from content maps rather than the input."""
        return 1.0 - self.attention[:, -1:]


def attention_upsampler(ngf: int, n_up: int, out_channels: int, norm: str) -> nn.Sequential:
    """Mask-generator head: transposed-conv upsamplings as in the content decoder, then a 1x1
    convolution to the attention logits (no tanh: the softmax must be able to saturate)."""
    layers: list[nn.Module] = []
    for i in reversed(range(n_up)):
        width = ngf * 2 ** (i + 1)
        layers += [
            nn.ConvTranspose2d(width, width // 2, 3, 2, 1, output_padding=1),
            norm_layer(norm, width // 2),
            nn.ReLU(True),
        ]
    layers.append(nn.Conv2d(ngf, out_channels, 1))
    return nn.Sequential(*layers)


class AttentionResnetGenerator(nn.Module):
    """ResNet trunk, content head (n_content maps) and mask head (n_content + 1 attention maps).

    (B, 1, H, W) in [-1, 1] -> AttentionOutput; H, W divisible by 4.
    """

    def __init__(
        self, ngf: int = 64, n_blocks: int = 9, n_content: int = 4, norm: str = "instance"
    ):
        super().__init__()
        width = ngf * 4
        self.encoder = resnet_encoder(1, ngf, 2, norm)
        self.blocks = nn.Sequential(*[ResnetBlock(width, norm) for _ in range(n_blocks)])
        self.content_head = resnet_decoder(n_content, ngf, 2, norm)
        self.attention_head = attention_upsampler(ngf, 2, n_content + 1, norm)

    def forward(self, x: Tensor) -> AttentionOutput:
        features = self.blocks(self.encoder(x))
        content = self.content_head(features)
        attention = torch.softmax(self.attention_head(features).float(), dim=1)
        image = (attention[:, :-1] * content).sum(1, keepdim=True) + attention[:, -1:] * x
        return AttentionOutput(image, content, attention)


@register_method("maskgan")
class MaskGAN(Method):
    PAIRED = False  # unpaired by design: the trainer draws targets independently of sources
    PRESETS = {
        # CPU demo at 64x64: a step runs the generators on 6 batches (3 passes each way) and
        # the discriminators on 6, so batch 8 and a narrow, shallow trunk keep a step near
        # pix2pix-tiny's cost (~0.15 s on one thread). lr 1e-3: at 2e-4 the narrow attention
        # head barely moves in 400 steps (phantom T1->T2 at 48x48, 300 steps: SSIM 0.73 at 1e-3,
        # 0.66 at 2e-4, identity 0.63).
        "tiny": {
            "augment": "none",  # released training command: --no_flip
            "steps": 250,
            "batch_size": 8,
            "ema_decay": None,
            "ngf": 8,
            "n_blocks": 3,
            "n_content": 4,
            "ndf": 16,
            "n_layers_d": 3,
            "norm": "instance",
            "lr": 1e-3,
            "beta1": 0.5,
            "decay_start": 125,
            "grad_clip": 1.0,
            "gan_mode": "lsgan",
            "lambda_cycle": 10.0,
            "lambda_identity": 0.5,
            "lambda_mask": 1.0,
            "lambda_shape": 0.5,
            "pool_size": 50,
            "mask_threshold": 0.1,
            "mask_closing": 2,
            "mask_dilation": 1,
        },
        # Published: ResNet-9, ngf 64, 5 attention maps, batch 4, 40 + 40 epochs (constant, then
        # linear decay). Epochs -> steps: 80 * n_train_slices / 4; 200k steps = 80 epochs of 10k
        # slices (set `steps` and `decay_start` = steps / 2 to the dataset's size).
        "paper": {
            "augment": "none",  # released training command: --no_flip
            "steps": 200_000,
            "batch_size": 4,
            "ema_decay": None,
            "ngf": 64,
            "n_blocks": 9,
            "n_content": 4,
            "ndf": 64,
            "n_layers_d": 3,
            "norm": "instance",
            "lr": 2e-4,
            "beta1": 0.5,
            "decay_start": 100_000,
            "grad_clip": 1.0,
            "gan_mode": "lsgan",
            "lambda_cycle": 10.0,
            "lambda_identity": 0.5,
            "lambda_mask": 1.0,
            "lambda_shape": 0.5,
            "pool_size": 50,
            "mask_threshold": 0.1,
            "mask_closing": 2,
            "mask_dilation": 1,
        },
    }

    def __init__(self, hparams: dict) -> None:
        super().__init__(hparams)
        h = self.hparams
        gen = lambda: AttentionResnetGenerator(h["ngf"], h["n_blocks"], h["n_content"], h["norm"])  # noqa: E731
        disc = lambda: PatchDiscriminator(1, h["ndf"], h["n_layers_d"], h["norm"])  # noqa: E731
        self.gen_ab, self.gen_ba = gen(), gen()
        self.disc_a, self.disc_b = disc(), disc()  # D_A judges domain A (source), D_B domain B
        for generator in (self.gen_ab, self.gen_ba):  # released init: see the module docstring
            init_weights(generator.blocks)
        self.pool_a, self.pool_b = ImagePool(h["pool_size"]), ImagePool(h["pool_size"])
        betas = (h["beta1"], 0.999)
        self.opt_g = torch.optim.Adam(self.generator_parameters(), lr=h["lr"], betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator_parameters(), lr=h["lr"], betas=betas)
        rule = linear_decay(h["steps"], h["decay_start"])
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, rule)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, rule)

    def generator_parameters(self) -> list[nn.Parameter]:
        return [*self.gen_ab.parameters(), *self.gen_ba.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [*self.disc_a.parameters(), *self.disc_b.parameters()]

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"g": self.opt_g, "d": self.opt_d}

    def schedulers(self) -> dict[str, Any]:
        return {"g": self.sched_g, "d": self.sched_d}

    # ----- losses -------------------------------------------------------------------------
    def masks(self, images: Tensor) -> Tensor:
        """Coarse masks (B, 1, H, W) in {0, 1} of [0, 1] slices (scipy, CPU, per batch)."""
        h = self.hparams
        return batch_masks(images, h["mask_threshold"], h["mask_closing"], h["mask_dilation"])

    def shape_weight(self, step: int) -> float:
        """lambda_shape ramped linearly from 0 to its value over the whole run."""
        return self.hparams["lambda_shape"] * min(1.0, step / max(1, self.hparams["steps"]))

    def generator_losses(
        self, real_a: Tensor, real_b: Tensor, mask_a: Tensor, mask_b: Tensor, step: int
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """All generator terms (see the module docstring) and the fakes (fake_b, fake_a).

        Inputs in [-1, 1]; both generators run on concatenated batches (instance norm is per
        sample, so this equals separate calls): G_AB on (a, b) -> fake_b, identity b; G_BA on
        (b, a, fake_b) -> fake_a, identity a, reconstruction of a; G_AB on fake_a -> rec. of b.
        """
        h, n = self.hparams, real_a.shape[0]
        with self.autocast():
            g_out = self.gen_ab(torch.cat([real_a, real_b]))
            fake_b, idt_b = g_out.image[:n], g_out.image[n:]
            f_out = self.gen_ba(torch.cat([real_b, real_a, fake_b]))
            fake_a, idt_a, rec_a = f_out.image[:n], f_out.image[n : 2 * n], f_out.image[2 * n :]
            g_rec = self.gen_ab(fake_a)
            adv = gan_loss(self.disc_b(fake_b).float(), True, h["gan_mode"]) + gan_loss(
                self.disc_a(fake_a).float(), True, h["gan_mode"]
            )
        fg_g, fg_f = g_out.foreground[:n], f_out.foreground[:n]  # masks outlined on a and b
        losses = {
            "adv": adv,
            "cycle": h["lambda_cycle"]
            * (F.l1_loss(rec_a.float(), real_a) + F.l1_loss(g_rec.image.float(), real_b)),
            "identity": h["lambda_cycle"]
            * h["lambda_identity"]
            * (F.l1_loss(idt_b.float(), real_b) + F.l1_loss(idt_a.float(), real_a)),
            "mask": h["lambda_mask"] * (F.l1_loss(fg_g, mask_a) + F.l1_loss(fg_f, mask_b)),
            "shape": self.shape_weight(step)
            * (F.l1_loss(f_out.foreground[2 * n :], fg_g) + F.l1_loss(g_rec.foreground, fg_f)),
        }
        losses["total"] = sum(losses.values())
        return losses, fake_b.detach(), fake_a.detach()

    def discriminator_loss(
        self, real_a: Tensor, real_b: Tensor, fake_a: Tensor, fake_b: Tensor
    ) -> Tensor:
        """LSGAN, halved per discriminator as in CycleGAN; fakes drawn through the pools."""
        mode = self.hparams["gan_mode"]
        fake_a, fake_b = self.pool_a.query(fake_a), self.pool_b.query(fake_b)
        with self.autocast():
            terms = []
            for disc, real, fake in ((self.disc_a, real_a, fake_a), (self.disc_b, real_b, fake_b)):
                terms.append(
                    0.5
                    * (
                        gan_loss(disc(real).float(), True, mode)
                        + gan_loss(disc(fake).float(), False, mode)
                    )
                )
        return terms[0] + terms[1]

    # ----- the step -----------------------------------------------------------------------
    def update_generators(
        self, real_a: Tensor, real_b: Tensor, mask_a: Tensor, mask_b: Tensor, step: int
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """One Adam step of both generators (discriminators frozen); returns losses and fakes."""
        set_requires_grad(self.disc_a, False)
        set_requires_grad(self.disc_b, False)
        self.opt_g.zero_grad(set_to_none=True)
        losses, fake_b, fake_a = self.generator_losses(real_a, real_b, mask_a, mask_b, step)
        losses["total"].backward()
        nn.utils.clip_grad_norm_(self.generator_parameters(), self.hparams["grad_clip"])
        self.opt_g.step()
        return losses, fake_b, fake_a

    def training_step(self, batch: Batch, step: int) -> dict[str, float]:
        mask_a, mask_b = self.masks(batch.source), self.masks(batch.target)
        real_a, real_b = to_signed(batch.source), to_signed(batch.target)
        losses, fake_b, fake_a = self.update_generators(real_a, real_b, mask_a, mask_b, step)
        set_requires_grad(self.disc_a, True)
        set_requires_grad(self.disc_b, True)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d = self.discriminator_loss(real_a, real_b, fake_a, fake_b)
        loss_d.backward()
        nn.utils.clip_grad_norm_(self.discriminator_parameters(), self.hparams["grad_clip"])
        self.opt_d.step()
        self.sched_g.step()
        self.sched_d.step()
        return {
            "loss_g": losses["total"].item(),
            **{f"loss_g_{k}": v.item() for k, v in losses.items() if k != "total"},
            "loss_d": loss_d.item(),
            "shape_weight": self.shape_weight(step),
        }

    @torch.no_grad()
    def translate(
        self, source: Tensor, knowledge: Knowledge | None = None, seeds: Tensor | None = None
    ) -> Tensor:
        with self.autocast():
            return to_unit(self.gen_ab(to_signed(source)).image.float())

    def describe(self) -> dict[str, Any]:
        h = self.hparams
        return {
            "training": "unpaired: partner slice from another subject at a similar relative "
            "position (released position-based selection)",
            "generator": f"ResNet-{h['n_blocks']} trunk, {h['n_content']} content maps + "
            f"{h['n_content'] + 1} softmax attention maps (last one copies the input)",
            "identity_weight": "lambda_identity * lambda_cycle (CycleGAN convention): "
            f"{h['lambda_identity'] * h['lambda_cycle']:g}",
            "shape_loss": "L1 between the reverse generator's foreground attention on the "
            "translated image and the forward generator's on the source; weight ramped "
            "linearly 0 -> lambda_shape over `steps`",
            "init": "as released: PyTorch default, N(0, 0.02) in the generators' residual blocks",
            "augment": h["augment"],
            "inference": "mode-independent: instance norm without running statistics and no "
            "dropout, so the released train-mode test gives the same output",
            "deviations": [
                "masks computed on the fly per batch (scipy.ndimage on CPU: threshold "
                f"{h['mask_threshold']}, closing {h['mask_closing']}, hole filling, largest "
                f"component, dilation {h['mask_dilation']} px; released masks are undilated) "
                "instead of a precomputing step; both domains, the store's mask unused",
                "shape loss symmetric (released code pairs the B-side term wrongly); ramp per "
                "step instead of per epoch",
                "gradient clipping 1.0 on generators and discriminators (released code's D "
                "clipping acts on the generators' parameters)",
                "2-D slices at the store's size; no resize/pad/crop-224 augmentation",
            ],
        }
