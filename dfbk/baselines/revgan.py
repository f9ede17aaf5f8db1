"""RevGAN (van der Ouderaa & Worrall, CVPR 2019), paired variant: one invertible core, two ways.

Generator A->B = decoder_B(core(encoder_A(a))), B->A = decoder_A(core^-1(encoder_B(b))). The
encoders and decoders are CycleGAN's (c7s1-ngf, two stride-2 convolutions / two transposed
convolutions, c7s1-1, tanh); each direction has its own. The core, shared by both directions,
is a stack of 9 reversible residual blocks with additive coupling (RevNet; Gomez et al. 2017):
split the channels into (x1, x2), then

    y1 = x1 + F(x2),   y2 = x2 + G(y1)        inverse:  x2 = y2 - G(y1),   x1 = y1 - F(x2)

with F, G = reflect-pad, conv3x3, InstanceNorm, ReLU, reflect-pad, conv3x3, InstanceNorm on half
the channels, no dropout, so the core is exactly invertible (up to float rounding). Losses are
pix2pix's in each direction: vanilla GAN on a (source, image) PatchGAN per direction, plus
100 * L1; the discriminator loss is halved. Adam 2e-4, beta1 0.5, constant then linear decay.
Translation uses the A->B path (A = the trainer's source modality).

Memory-saving backward (the paper's point): with `memory_saving`, the core runs inside a
custom autograd Function that keeps only the core's output; the backward pass reconstructs each
block's input from its output with the exact inverse, evaluating F and G once each for their
vector-Jacobian products (RevNet, Gomez et al. 2017), so activation memory does not grow with the
number of blocks. Gradients equal plain autograd's up to float rounding (tested). The Function
runs the core in float32 even under bf16 autocast, since reconstruction in bf16 would be too
inexact.

Checked against the released code (github.com/tychovdo/RevGAN: `models/paired_revgan_model.py`,
`models/networks.py`, `data/aligned_dataset.py`, `test.py`), and followed here:
- Augmentation: the paired model uses the aligned loader, which flips source and target
  together left-right with probability 1/2 unless `--no_flip` (`augment: hflip`).
- Initialisation: `init_net` -> `init_weights`, N(0, 0.02) weights, zero biases (as here).
- Inference: `test.py` never calls `eval()`, so instance norm normalises by each image's own
  statistics even though it tracks running ones; our instance norm has no running statistics,
  so `translate` gives the released test's output in either mode (no dropout in the model).

Deviations, recorded in `describe()`: InstanceNorm without running statistics (the published
code tracks them, which makes eval-mode output depend on training batches); the memory-saving
core computes in float32 under autocast. Kept from the published code: the generator is updated
before the discriminators in each step, no image pool, one Adam for all generator parts and one
for both discriminators. The `tiny` preset shrinks the core to 4 blocks and the batch to 8 (two
directions per step on one CPU thread).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfbk.methods.base import Batch, Knowledge, Method, to_signed, to_unit
from dfbk.methods.gan import gan_loss, set_requires_grad
from dfbk.methods.registry import register_method
from dfbk.methods.schedules import linear_decay
from dfbk.networks.resnet import resnet_decoder, resnet_encoder
from dfbk.networks.unet import PatchDiscriminator, init_weights, norm_layer


def _residual_function(channels: int, norm: str) -> nn.Sequential:
    """F or G of a reversible block: a ResNet block's body without the skip and dropout."""
    return nn.Sequential(
        nn.ReflectionPad2d(1),
        nn.Conv2d(channels, channels, 3),
        norm_layer(norm, channels),
        nn.ReLU(True),
        nn.ReflectionPad2d(1),
        nn.Conv2d(channels, channels, 3),
        norm_layer(norm, channels),
    )


def _vjp(fn: nn.Module, inp: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor, dict]:
    """fn(inp) and the vector-Jacobian products of grad_out w.r.t. inp and fn's parameters."""
    inp = inp.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(inp)
    params = [p for p in fn.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out, (inp, *params), grad_out)
    return out.detach(), grads[0], {id(p): g for p, g in zip(params, grads[1:], strict=True)}


class AdditiveCouplingBlock(nn.Module):
    """Reversible residual block (B, C, H, W) -> (B, C, H, W), C even; exact inverse."""

    def __init__(self, channels: int, norm: str = "instance") -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"reversible block needs an even channel count, got {channels}")
        self.f = _residual_function(channels // 2, norm)
        self.g = _residual_function(channels // 2, norm)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=1)
        y1 = x1 + self.f(x2)
        y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], dim=1)

    def inverse(self, y: Tensor) -> Tensor:
        y1, y2 = y.chunk(2, dim=1)
        x2 = y2 - self.g(y1)
        x1 = y1 - self.f(x2)
        return torch.cat([x1, x2], dim=1)

    def backprop(self, out: Tensor, grad_out: Tensor, inverse: bool):
        """From this block's output and dL/d(output): (its input, dL/d(input), dL/d(params)).

        RevNet's backward (Gomez et al. 2017, Alg. 1): the input is reconstructed with the
        exact inverse while F and G are each evaluated once, with a graph, for their VJPs.
        `inverse` says which map produced `out` (the block's forward or its inverse).
        """
        a, b = out.chunk(2, dim=1)
        grad_a, grad_b = grad_out.chunk(2, dim=1)
        if not inverse:  # out = (y1, y2); y2 = x2 + G(y1), y1 = x1 + F(x2)
            g_y1, vjp_y1, grads_g = _vjp(self.g, a, grad_b)
            x2 = b - g_y1
            grad_a = grad_a + vjp_y1
            f_x2, vjp_x2, grads_f = _vjp(self.f, x2, grad_a)
            x1 = a - f_x2
            inp, grad_inp = torch.cat([x1, x2], 1), torch.cat([grad_a, grad_b + vjp_x2], 1)
        else:  # out = (x1, x2); x1 = y1 - F(x2), x2 = y2 - G(y1)
            f_x2, vjp_x2, grads_f = _vjp(self.f, b, -grad_a)
            y1 = a + f_x2
            grad_b = grad_b + vjp_x2
            g_y1, vjp_y1, grads_g = _vjp(self.g, y1, -grad_b)
            y2 = b + g_y1
            inp, grad_inp = torch.cat([y1, y2], 1), torch.cat([grad_a + vjp_y1, grad_b], 1)
        return inp, grad_inp, {**grads_f, **grads_g}


def _run_blocks(blocks: nn.ModuleList, x: Tensor, inverse: bool) -> Tensor:
    """The core's map (forward: blocks in order; inverse: inverted blocks in reverse order)."""
    for block in reversed(blocks) if inverse else blocks:
        x = block.inverse(x) if inverse else block(x)
    return x


class _MemorySavingCore(torch.autograd.Function):
    """Run the core keeping only its output; backward reconstructs inputs block by block.

    apply(x, blocks, inverse, *params): params are the blocks' trainable parameters, passed so
    that autograd routes their gradients through this Function.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, x: Tensor, blocks: nn.ModuleList, inverse: bool, *params: Tensor) -> Tensor:
        ctx.blocks, ctx.inverse, ctx.params = blocks, inverse, params
        with torch.no_grad():
            out = _run_blocks(blocks, x, inverse)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out: Tensor):
        (out,) = ctx.saved_tensors
        # the block applied last is undone first
        order = list(ctx.blocks) if ctx.inverse else list(reversed(ctx.blocks))
        grads: dict[int, Tensor] = {}
        with torch.no_grad():
            for block in order:
                out, grad_out, block_grads = block.backprop(out, grad_out, ctx.inverse)
                grads.update(block_grads)
        return (grad_out, None, None, *(grads.get(id(p)) for p in ctx.params))


class ReversibleCore(nn.Module):
    """`n_blocks` additive-coupling blocks; `forward(x, inverse=True)` runs the exact inverse."""

    def __init__(
        self, channels: int, n_blocks: int = 9, norm: str = "instance", memory_saving: bool = True
    ) -> None:
        super().__init__()
        if memory_saving and norm == "batch":
            raise ValueError("memory-saving recomputation needs a stateless norm (not batch)")
        self.blocks = nn.ModuleList(AdditiveCouplingBlock(channels, norm) for _ in range(n_blocks))
        self.memory_saving = memory_saving

    def forward(self, x: Tensor, inverse: bool = False) -> Tensor:
        params = [p for p in self.parameters() if p.requires_grad]
        needs_graph = torch.is_grad_enabled() and (x.requires_grad or bool(params))
        if self.memory_saving and needs_graph:
            return _MemorySavingCore.apply(x, self.blocks, inverse, *params)
        return _run_blocks(self.blocks, x, inverse)

    def inverse(self, y: Tensor) -> Tensor:
        return self.forward(y, inverse=True)


class RevGANGenerator(nn.Module):
    """Both directions: per-domain encoders/decoders around one shared reversible core."""

    def __init__(self, ngf: int, n_blocks: int, norm: str, memory_saving: bool) -> None:
        super().__init__()
        self.encoder_a = resnet_encoder(1, ngf, 2, norm)
        self.encoder_b = resnet_encoder(1, ngf, 2, norm)
        self.core = ReversibleCore(ngf * 4, n_blocks, norm, memory_saving)
        self.decoder_a = resnet_decoder(1, ngf, 2, norm)
        self.decoder_b = resnet_decoder(1, ngf, 2, norm)

    def a_to_b(self, a: Tensor) -> Tensor:
        """(B, 1, H, W) in [-1, 1] -> (B, 1, H, W) in [-1, 1]; H, W divisible by 4."""
        return self.decoder_b(self.core(self.encoder_a(a)))

    def b_to_a(self, b: Tensor) -> Tensor:
        return self.decoder_a(self.core(self.encoder_b(b), inverse=True))


@register_method("revgan")
class RevGAN(Method):
    PRESETS = {
        "tiny": {
            "augment": "hflip",  # released aligned loader (no --no_flip)
            # two directions per step: batch 8 and a 4-block core keep one CPU thread near
            # 0.15 s per step at 64x64 (the paper's 9 blocks: `n_blocks` override)
            "steps": 400,
            "batch_size": 8,
            "ema_decay": None,
            "ngf": 8,
            "ndf": 8,
            "n_blocks": 4,
            "norm": "instance",
            "memory_saving": False,  # same gradients; the recomputation only costs CPU time
            "lr": 1e-3,  # CPU budget: 2e-4 (paper) is far from converged in 400 steps
            "beta1": 0.5,
            "lambda_l1": 100.0,
            "gan_mode": "vanilla",
            "decay_start": 200,
        },
        "paper": {
            "augment": "hflip",  # released aligned loader (no --no_flip)
            # pix2pix/CycleGAN code defaults the paper builds on: 100 epochs constant + 100
            # linear decay, batch 1; steps at a nominal 1,000 per epoch (set from the data).
            "steps": 200_000,
            "batch_size": 1,
            "ema_decay": None,
            "ngf": 64,
            "ndf": 64,
            "n_blocks": 9,
            "norm": "instance",
            "memory_saving": True,
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
        self.generator = RevGANGenerator(h["ngf"], h["n_blocks"], h["norm"], h["memory_saving"])
        self.disc_b = PatchDiscriminator(2, h["ndf"], 3, h["norm"])  # judges (a, b) pairs
        self.disc_a = PatchDiscriminator(2, h["ndf"], 3, h["norm"])  # judges (b, a) pairs
        init_weights(self)
        betas = (h["beta1"], 0.999)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=h["lr"], betas=betas)
        d_params = itertools.chain(self.disc_a.parameters(), self.disc_b.parameters())
        self.opt_d = torch.optim.Adam(d_params, lr=h["lr"], betas=betas)
        rule = linear_decay(h["steps"], h["decay_start"])
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, rule)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, rule)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"g": self.opt_g, "d": self.opt_d}

    def schedulers(self) -> dict:
        return {"g": self.sched_g, "d": self.sched_d}

    def describe(self) -> dict[str, Any]:
        return {
            "variant": "paired RevGAN (pix2pix losses in both directions)",
            "memory_saving_backward": bool(self.hparams["memory_saving"]),
            "core_blocks": int(self.hparams["n_blocks"]),
            "augment": self.hparams["augment"],
            "inference": "mode-independent (instance norm without running statistics, no "
            "dropout): equal to the released train-mode test",
            "init": "N(0, 0.02) weights, zero biases (released)",
            "deviations": [
                "InstanceNorm without running statistics (published code tracks them)",
                "memory-saving core runs in float32 under bf16 autocast",
            ],
        }

    # ----- pieces of the step ---------------------------------------------------------------
    def generator_losses(
        self, a: Tensor, b: Tensor, fake_b: Tensor, fake_a: Tensor
    ) -> dict[str, Tensor]:
        """Both directions' GAN + lambda * L1 terms on signed images."""
        h = self.hparams
        with self.autocast():
            logits_b = self.disc_b(torch.cat([a, fake_b], 1))
            logits_a = self.disc_a(torch.cat([b, fake_a], 1))
        gan_ab = gan_loss(logits_b.float(), True, h["gan_mode"])
        gan_ba = gan_loss(logits_a.float(), True, h["gan_mode"])
        l1_ab = F.l1_loss(fake_b.float(), b)
        l1_ba = F.l1_loss(fake_a.float(), a)
        total = gan_ab + gan_ba + h["lambda_l1"] * (l1_ab + l1_ba)
        return {
            "loss_g": total,
            "loss_g_gan_ab": gan_ab,
            "loss_g_gan_ba": gan_ba,
            "loss_l1_ab": l1_ab,
            "loss_l1_ba": l1_ba,
        }

    def _translate_both(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        with self.autocast():
            return self.generator.a_to_b(a), self.generator.b_to_a(b)

    def generator_objective(self, batch: Batch) -> Tensor:
        """Total generator loss on a batch (what one generator update decreases)."""
        a, b = to_signed(batch.source), to_signed(batch.target)
        fake_b, fake_a = self._translate_both(a, b)
        return self.generator_losses(a, b, fake_b, fake_a)["loss_g"]

    def _update_discriminators(self, a: Tensor, b: Tensor, fake_b: Tensor, fake_a: Tensor):
        mode = self.hparams["gan_mode"]
        self.opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            real_b = self.disc_b(torch.cat([a, b], 1))
            fake_b_logits = self.disc_b(torch.cat([a, fake_b], 1))
            real_a = self.disc_a(torch.cat([b, a], 1))
            fake_a_logits = self.disc_a(torch.cat([b, fake_a], 1))
        loss_d_b = gan_loss(real_b.float(), True, mode) + gan_loss(
            fake_b_logits.float(), False, mode
        )
        loss_d_a = gan_loss(real_a.float(), True, mode) + gan_loss(
            fake_a_logits.float(), False, mode
        )
        loss_d = 0.5 * (loss_d_b + loss_d_a)
        loss_d.backward()
        self.opt_d.step()
        return loss_d

    # ----- the interface --------------------------------------------------------------------
    def training_step(self, batch: Batch, step: int) -> dict[str, float]:
        a, b = to_signed(batch.source), to_signed(batch.target)
        fake_b, fake_a = self._translate_both(a, b)
        # generator first (the published order), then both discriminators on the same fakes
        discriminators = (self.disc_a, self.disc_b)
        for disc in discriminators:
            set_requires_grad(disc, False)
        self.opt_g.zero_grad(set_to_none=True)
        losses = self.generator_losses(a, b, fake_b, fake_a)
        losses["loss_g"].backward()
        self.opt_g.step()
        for disc in discriminators:
            set_requires_grad(disc, True)
        loss_d = self._update_discriminators(a, b, fake_b.detach(), fake_a.detach())
        self.sched_g.step()
        self.sched_d.step()
        out = {key: value.item() for key, value in losses.items()}
        out["loss_d"] = loss_d.item()
        return out

    @torch.no_grad()
    def translate(
        self, source: Tensor, knowledge: Knowledge | None = None, seeds: Tensor | None = None
    ) -> Tensor:
        with self.autocast():
            return to_unit(self.generator.a_to_b(to_signed(source)).float())
