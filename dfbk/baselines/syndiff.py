"""SynDiff (Özbey et al., IEEE TMI 2023): adversarial diffusion for medical image translation.

Diffusion with T=4 large steps, each reverse step an implicit conditional GAN (DDGAN, Xiao et
al. 2022): a diffusive generator G(x_t, y, t, z) predicts x0, x_{t-1} is drawn from the
Gaussian posterior q(x_{t-1} | x_t, x0_hat), and a time-conditioned discriminator D(x_{t-1},
x_t, t) judges it against x_{t-1} ~ q(x_{t-1} | x0). The noise schedule is DDGAN's
variance-preserving one (beta_min 0.1, beta_max 20, T 4, times eps + (1 - eps) k / T with
eps 1e-3; the level at eps counts as clean data): alpha_bar_t = 0.522, 0.0787, 0.00343, 4.3e-5.

Two registered variants, one class (the hyperparameter `paired` picks the training mode):
- `syndiff` (faithful, unpaired): the trainer feeds targets drawn independently of the
  sources. Non-diffusive ResNet translators (6 blocks, instance norm) give a source estimate
  for each target image and a target estimate for each source image; these estimates condition
  the two diffusive generators (target given source, source given target), whose x0 predictions
  are pulled to the real images by L1 (the diffusive cycle), and the translators carry a
  CycleGAN cycle loss and PatchGAN adversarial losses of their own.
- `syndiff_paired` (this benchmark's variant, not in the paper): the real source conditions
  one diffusive generator, L1 to the paired target, no translators and no cycle; it separates
  what the adversarial diffusion gives from what unpaired training costs.

Losses as released: non-saturating GAN losses, R1 penalty gamma/2 E||grad D(x_{t-1})||^2 with
gamma 1 applied lazily every 10 steps (not rescaled by the interval, as in DDGAN/SynDiff),
L1 and cycle weights 0.5. Adam lr_G 1.6e-4, lr_D 1e-4, betas (0.5, 0.9), cosine decay to 1e-5,
EMA 0.999. Translation: x_T ~ N(0, I), four reverse steps with the source as condition.

Deviations (also in `describe()`): the NCSN++ generator is rewritten (see
dfbk/baselines/syndiff_networks.py for its simplifications); the EMA is kept on the diffusive
generator used at inference only (the released code averages all four generators, but only
this one is used to translate); one Adam per role (generators / discriminators) instead of one
per network (Adam is per parameter, so the updates are the same); the cosine decay steps per
iteration rather than per epoch; x_T, z and the posterior noise at translation come from
per-slice seeded streams, so that translation is reproducible and independent of batching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfbk.baselines.syndiff_networks import DiffusiveGenerator, TimeDiscriminator
from dfbk.diffusion.noise import SliceNoise, noise_for
from dfbk.methods.base import Batch, Knowledge, Method, to_signed, to_unit
from dfbk.methods.gan import set_requires_grad
from dfbk.methods.registry import register_method
from dfbk.networks.resnet import ResnetGenerator
from dfbk.networks.unet import PatchDiscriminator, init_weights

# ----- the diffusion: small pure functions (arrays indexed k = t - 1 for t = 1..T) ---------


@dataclass(frozen=True)
class VPSchedule:
    """beta_t for t = 1..T at index t-1 (float64); alpha_bar_0 = 1 (clean data)."""

    betas: Tensor

    @property
    def num_steps(self) -> int:
        return int(self.betas.numel())

    @property
    def alpha_bars(self) -> Tensor:
        return torch.cumprod(1.0 - self.betas, dim=0)

    @property
    def alpha_bars_prev(self) -> Tensor:
        return torch.cat([self.betas.new_ones(1), self.alpha_bars[:-1]])

    @property
    def posterior_coefficients(self) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_{t-1} | x_t, x0) = N(c0 x0 + ct x_t, var) (Ho et al. 2020, eq. 7)."""
        ab, ab_prev, beta = self.alpha_bars, self.alpha_bars_prev, self.betas
        c0 = beta * ab_prev.sqrt() / (1.0 - ab)
        ct = (1.0 - ab_prev) * (1.0 - beta).sqrt() / (1.0 - ab)
        return c0, ct, beta * (1.0 - ab_prev) / (1.0 - ab)


def make_vp_schedule(
    num_steps: int = 4, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-3
) -> VPSchedule:
    """DDGAN's discretised VP-SDE: alpha_bar(s) = exp(-s beta_min - s^2 (beta_max - beta_min) / 2)
    at s_k = eps + (1 - eps) k / T, k = 0..T; beta_k = 1 - alpha_bar(s_k) / alpha_bar(s_{k-1})."""
    s = eps + (1.0 - eps) * torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    log_alpha_bar = -s * beta_min - 0.5 * s**2 * (beta_max - beta_min)
    return VPSchedule(betas=1.0 - torch.exp(log_alpha_bar[1:] - log_alpha_bar[:-1]))


def _at(values: Tensor, k: Tensor, like: Tensor) -> Tensor:
    """values[k] broadcast to `like`'s shape (k: (B,) long, 0-based)."""
    return values.to(like.device)[k].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def q_sample_pair(
    x0: Tensor, k: Tensor, sched: VPSchedule, noise_prev: Tensor, noise_step: Tensor
) -> tuple[Tensor, Tensor]:
    """(x_{t-1}, x_t): x_{t-1} ~ q(x_{t-1} | x0), then one forward step with beta_t."""
    ab_prev = _at(sched.alpha_bars_prev, k, x0)
    beta = _at(sched.betas, k, x0)
    x_prev = ab_prev.sqrt() * x0 + (1.0 - ab_prev).sqrt() * noise_prev
    return x_prev, (1.0 - beta).sqrt() * x_prev + beta.sqrt() * noise_step


def posterior_sample(
    x0_hat: Tensor, x_t: Tensor, k: Tensor, sched: VPSchedule, noise: Tensor
) -> Tensor:
    """x_{t-1} ~ q(x_{t-1} | x_t, x0_hat); at t = 1 the variance is 0 and x0_hat is returned."""
    c0, ct, var = (_at(c, k, x_t) for c in sched.posterior_coefficients)
    return c0 * x0_hat + ct * x_t + var.sqrt() * noise


@torch.no_grad()
def sample(generator, cond: Tensor, sched: VPSchedule, nz: int, noise: SliceNoise) -> Tensor:
    """x_T ~ N(0, I), then T reverse steps x_{t-1} ~ q(. | x_t, G(x_t, cond, t, z)): T G calls.

    Every draw (x_T, then z and the posterior noise per step) comes from the slice's own
    stream in `noise`, so a slice's sample ignores its batch (dfbk/diffusion/noise.py).
    """
    x = noise.spatial().to(cond)
    for index in reversed(range(sched.num_steps)):
        k = torch.full((cond.shape[0],), index, device=cond.device, dtype=torch.long)
        x0_hat = generator(x, cond, k, noise.vector(nz).to(cond)).float()
        x = posterior_sample(x0_hat, x, k, sched, noise.spatial().to(cond))
    return x


# ----- presets ----------------------------------------------------------------------------
# augment none: the released data loader reads slices as stored (no flips, no crops).
_SHARED = {"num_steps": 4, "beta_min": 0.1, "beta_max": 20.0, "beta1": 0.5, "beta2": 0.9,
           "r1_gamma": 1.0, "lazy_reg": 10, "lambda_l1": 0.5, "lambda_cycle": 0.5,
           "dropout": 0.0, "sample_seed": 0, "augment": "none"}  # fmt: skip
# paper: the released command (nf 64, ch_mult 1 1 2 2 4 4, 2 res blocks, attention at 16,
# nz 100, z_emb 256, 3 mapping layers, D ngf 64, t_emb 256, batch 1, EMA 0.999). Its test
# command loads epoch 50: 50 epochs x 2,500 slices (25 training subjects x 100 axial slices,
# the paper's IXI/BraTS splits) at batch 1 = 125,000 steps; the cosine decay spans the
# released --num_epoch 500 (1,250,000 steps), so at epoch 50 the lr has barely decayed.
PAPER = {**_SHARED, "steps": 125_000, "batch_size": 1, "ema_decay": 0.999,
         "lr_g": 1.6e-4, "lr_d": 1e-4, "lr_min": 1e-5, "lr_decay_steps": 1_250_000,
         "nf": 64, "ch_mult": [1, 1, 2, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [16],
         "image_size": 256, "nz": 100, "z_emb_dim": 256, "n_mlp": 3,
         "ndf": 64, "disc_downs": 6, "t_emb_dim": 256,
         "translator_ngf": 64, "translator_blocks": 6, "cycle_ndf": 64}  # fmt: skip
# tiny: CPU-sized widths at 64x64 (an unpaired step runs four diffusive-generator passes, so
# batch 4 and nf 8; the paper trains at batch 1); higher lr so that a few hundred steps mean
# something; the cosine decay spans `steps` (lr_decay_steps None). No EMA: over 250 steps an
# average lags the weights (measured, phantom T1->T2, 45 test slices, foreground SSIM after
# 250 unpaired steps: raw 0.478, EMA 0.9 0.476, 0.95 0.472, 0.98 0.437, 0.99 0.344).
TINY = {**_SHARED, "steps": 250, "batch_size": 4, "ema_decay": None,
        "lr_g": 1e-3, "lr_d": 5e-4, "lr_min": 1e-5, "lr_decay_steps": None,
        "nf": 8, "ch_mult": [1, 2, 4], "num_res_blocks": 1, "attn_resolutions": [],
        "image_size": 64, "nz": 16, "z_emb_dim": 32, "n_mlp": 2,
        "ndf": 4, "disc_downs": 3, "t_emb_dim": 32,
        "translator_ngf": 8, "translator_blocks": 2, "cycle_ndf": 8}  # fmt: skip
UNPAIRED_PRESETS = {"tiny": {**TINY, "paired": False}, "paper": {**PAPER, "paired": False}}
PAIRED_PRESETS = {"tiny": {**TINY, "paired": True}, "paper": {**PAPER, "paired": True}}

DEVIATIONS = [
    "NCSN++ generator rewritten: blur-then-conv input pyramid, default init, 1 output channel",
    "EMA kept on the inference generator only (released code: all four generators); "
    "none at `tiny` (250 steps are too few for an average to help)",
    "one Adam per role instead of per network (identical per-parameter updates)",
    "cosine lr decay stepped per iteration (released: per epoch)",
    "translation noise from per-slice seeded streams (run seed, subject, slice)",
]


@register_method("syndiff")
class SynDiff(Method):
    """SynDiff; `paired` False: unpaired cycle-consistent training (the paper's), True: paired."""

    PRESETS = UNPAIRED_PRESETS
    PAIRED = False
    # translate() takes `noise=` (per-slice canvases cropped per tile;
    # dfbk/inference/sliding_window.py)
    SAMPLES_NOISE = True

    def __init__(self, hparams: dict[str, Any]) -> None:
        super().__init__(hparams)
        h = self.hparams
        self.schedule = make_vp_schedule(h["num_steps"], h["beta_min"], h["beta_max"])
        self.gen_target = self._diffusive_generator()  # target given source: used to translate
        self.disc_target = self._time_discriminator()
        generators: list[nn.Module] = [self.gen_target]
        discriminators: list[nn.Module] = [self.disc_target]
        if not self.paired:
            self.gen_source = self._diffusive_generator()  # source given target
            self.disc_source = self._time_discriminator()
            ngf, blocks, ndf = h["translator_ngf"], h["translator_blocks"], h["cycle_ndf"]
            self.to_target = ResnetGenerator(1, 1, ngf, blocks, "instance")
            self.to_source = ResnetGenerator(1, 1, ngf, blocks, "instance")
            self.disc_cycle_target = PatchDiscriminator(1, ndf, 3, "instance")
            self.disc_cycle_source = PatchDiscriminator(1, ndf, 3, "instance")
            for net in (self.to_target, self.to_source, self.disc_cycle_target,
                        self.disc_cycle_source):  # fmt: skip
                init_weights(net)  # N(0, 0.02), as the released translators
            generators += [self.gen_source, self.to_target, self.to_source]
            discriminators += [self.disc_source, self.disc_cycle_target, self.disc_cycle_source]
        self.discriminators = discriminators  # a plain list; each is registered by name
        betas = (h["beta1"], h["beta2"])
        params = lambda nets: [p for net in nets for p in net.parameters()]  # noqa: E731
        self.opt_g = torch.optim.Adam(params(generators), lr=h["lr_g"], betas=betas)
        self.opt_d = torch.optim.Adam(params(discriminators), lr=h["lr_d"], betas=betas)
        cosine = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(  # noqa: E731
            opt, T_max=max(1, int(h["lr_decay_steps"] or h["steps"])), eta_min=h["lr_min"]
        )
        self.sched_g, self.sched_d = cosine(self.opt_g), cosine(self.opt_d)

    def _diffusive_generator(self) -> DiffusiveGenerator:
        h = self.hparams
        return DiffusiveGenerator(
            h["nf"], tuple(h["ch_mult"]), h["num_res_blocks"], tuple(h["attn_resolutions"]),
            h["image_size"], h["nz"], h["z_emb_dim"], h["n_mlp"], h["dropout"],
        )  # fmt: skip

    def _time_discriminator(self) -> TimeDiscriminator:
        h = self.hparams
        return TimeDiscriminator(h["ndf"], h["disc_downs"], h["t_emb_dim"])

    # ----- interface ----------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"g": self.opt_g, "d": self.opt_d}

    def schedulers(self) -> dict[str, Any]:
        return {"g": self.sched_g, "d": self.sched_d}

    def ema_network(self) -> nn.Module:
        return self.gen_target

    def describe(self) -> dict[str, Any]:
        mode = (
            "paired: the real source conditions the diffusive generator; L1 to the paired "
            "target; no translators, no cycle"
            if self.paired
            else "unpaired: targets drawn independently of sources; cycle-consistent "
            "diffusive + non-diffusive modules, as published"
        )
        h = self.hparams
        diffusion = f"VP, beta {h['beta_min']}..{h['beta_max']}, T={self.schedule.num_steps}"
        return {
            "training_mode": mode,
            "paired": self.paired,
            "diffusion": diffusion,
            "deviations": DEVIATIONS,
        }

    # ----- one training step --------------------------------------------------------------
    def _chains(
        self, a: Tensor, b: Tensor, grad: bool
    ) -> list[tuple[nn.Module, nn.Module, Tensor, Tensor]]:
        """(diffusive generator, its discriminator, real x0, condition) per diffused modality.

        Paired: the real source conditions the target chain. Unpaired: the translators'
        estimates condition each chain (source estimate from the target image for the target
        chain, and vice versa), so the L1 on x0 closes a cycle through both modules.
        """
        if self.paired:
            return [(self.gen_target, self.disc_target, b, a)]
        with torch.set_grad_enabled(grad), self.autocast():
            source_estimate = self.to_source(b).float()
            target_estimate = self.to_target(a).float()
        return [
            (self.gen_target, self.disc_target, b, source_estimate),
            (self.gen_source, self.disc_source, a, target_estimate),
        ]

    def _draw(self, x0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A step per sample, the pair (x_{t-1}, x_t), and the reverse-step noise."""
        k = torch.randint(0, self.schedule.num_steps, (x0.shape[0],), device=x0.device)
        x_prev, x_t = q_sample_pair(
            x0, k, self.schedule, torch.randn_like(x0), torch.randn_like(x0)
        )
        return k, x_prev, x_t, torch.randn_like(x0)

    def _fake_prev(
        self, gen: nn.Module, x_t: Tensor, cond: Tensor, k: Tensor, noise: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(x0_hat, x_{t-1} ~ q(x_{t-1} | x_t, x0_hat)) from the diffusive generator."""
        z = torch.randn(x_t.shape[0], self.hparams["nz"], device=x_t.device)
        with self.autocast():
            x0_hat = gen(x_t, cond, k, z).float()
        return x0_hat, posterior_sample(x0_hat, x_t, k, self.schedule, noise)

    def discriminator_step(self, a: Tensor, b: Tensor, step: int) -> dict[str, float]:
        """Non-saturating D losses; R1 on real x_{t-1} at every `lazy_reg`-th step only."""
        h = self.hparams
        for net in self.discriminators:
            set_requires_grad(net, True)
        self.opt_d.zero_grad(set_to_none=True)
        apply_r1 = h["r1_gamma"] > 0 and step % int(h["lazy_reg"]) == 0
        loss_real = loss_fake = loss_r1 = torch.zeros((), device=a.device)
        chains = self._chains(a, b, grad=False)
        for gen, disc, x0, cond in chains:
            k, x_prev, x_t, noise = self._draw(x0)
            x_prev.requires_grad_(apply_r1)
            with self.autocast():
                d_real = disc(x_prev, x_t, k).float()
            loss_real = loss_real + F.softplus(-d_real).mean()
            if apply_r1:
                (grad,) = torch.autograd.grad(d_real.sum(), x_prev, create_graph=True)
                loss_r1 = loss_r1 + h["r1_gamma"] / 2 * grad.pow(2).flatten(1).sum(1).mean()
            with torch.no_grad():
                _, fake = self._fake_prev(gen, x_t, cond, k, noise)
            with self.autocast():
                loss_fake = loss_fake + F.softplus(disc(fake, x_t, k).float()).mean()
        losses = {"loss_d_real": loss_real, "loss_d_fake": loss_fake, "loss_r1": loss_r1}
        if not self.paired:  # PatchGAN losses of the translators' outputs
            source_estimate, target_estimate = chains[0][3], chains[1][3]
            with self.autocast():
                real = self.disc_cycle_source(a).float(), self.disc_cycle_target(b).float()
                fake = (self.disc_cycle_source(source_estimate).float(),
                        self.disc_cycle_target(target_estimate).float())  # fmt: skip
            losses["loss_d_cycle"] = sum(F.softplus(-r).mean() + F.softplus(f).mean()
                                         for r, f in zip(real, fake, strict=True))  # fmt: skip
        total = sum(losses.values())
        total.backward()
        self.opt_d.step()
        return {key: value.item() for key, value in losses.items()}

    def generator_losses(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        """The generators' objective on (source a, target b) in [-1, 1], with a graph.

        adv (diffusive, non-saturating) + lambda_l1 L1(x0_hat, x0); unpaired adds the
        translators' adversarial losses and lambda_cycle times the CycleGAN cycle L1.
        """
        h = self.hparams
        loss_adv = loss_l1 = torch.zeros((), device=a.device)
        chains = self._chains(a, b, grad=True)
        for gen, disc, x0, cond in chains:
            k, _, x_t, noise = self._draw(x0)
            x0_hat, fake = self._fake_prev(gen, x_t, cond, k, noise)
            with self.autocast():
                loss_adv = loss_adv + F.softplus(-disc(fake, x_t, k).float()).mean()
            loss_l1 = loss_l1 + F.l1_loss(x0_hat, x0)
        losses = {"loss_g_adv": loss_adv, "loss_l1": loss_l1}
        total = loss_adv + h["lambda_l1"] * loss_l1
        if not self.paired:
            source_estimate, target_estimate = chains[0][3], chains[1][3]
            with self.autocast():
                back_to_target = self.to_target(source_estimate).float()
                back_to_source = self.to_source(target_estimate).float()
                fooled_source = self.disc_cycle_source(source_estimate).float()
                fooled_target = self.disc_cycle_target(target_estimate).float()
            adv = F.softplus(-fooled_source).mean() + F.softplus(-fooled_target).mean()
            cycle = F.l1_loss(back_to_target, b) + F.l1_loss(back_to_source, a)
            losses.update(loss_g_cycle_adv=adv, loss_cycle=cycle)
            total = total + adv + h["lambda_cycle"] * cycle
        losses["loss_g"] = total
        return losses

    def generator_step(self, a: Tensor, b: Tensor) -> dict[str, float]:
        """One update of all generators with the discriminators frozen."""
        for net in self.discriminators:
            set_requires_grad(net, False)
        self.opt_g.zero_grad(set_to_none=True)
        losses = self.generator_losses(a, b)
        losses["loss_g"].backward()
        self.opt_g.step()
        for net in self.discriminators:
            set_requires_grad(net, True)
        return {key: value.item() for key, value in losses.items()}

    def training_step(self, batch: Batch, step: int) -> dict[str, float]:
        a, b = to_signed(batch.source), to_signed(batch.target)
        losses = self.discriminator_step(a, b, step)
        losses.update(self.generator_step(a, b))
        self.sched_g.step()
        self.sched_d.step()
        return losses

    @torch.no_grad()
    def translate(
        self,
        source: Tensor,
        knowledge: Knowledge | None = None,
        seeds: Tensor | None = None,
        *,
        noise: SliceNoise | None = None,
    ) -> Tensor:
        """Four reverse steps conditioned on the source; per-slice noise from `seeds`/`noise`."""
        cond = to_signed(source)
        streams = noise_for(seeds, int(self.hparams["sample_seed"]), cond, noise)

        def generator(x_t: Tensor, cond: Tensor, k: Tensor, z: Tensor) -> Tensor:
            with self.autocast():
                return self.gen_target(x_t, cond, k, z)

        return to_unit(sample(generator, cond, self.schedule, self.hparams["nz"], streams))


@register_method("syndiff_paired")
class SynDiffPaired(SynDiff):
    """SynDiff trained on paired slices: a thin preset table over the same class."""

    PRESETS = PAIRED_PRESETS
    PAIRED = True
