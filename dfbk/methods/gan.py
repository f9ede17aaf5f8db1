"""Pieces shared by the adversarial baselines (pix2pix, Ea-GAN, RevGAN, MaskGAN, ResViT).

GAN losses, the discriminator's image history pool, and how a generator behaves at inference.
The released test scripts differ on the last point: pix2pix's (`test.py`: `model.eval()` only
with `--eval`, off by default) and ResViT's (no `eval()` anywhere) run the generator in training
mode, as the pix2pix paper prescribes (dropout as noise, batch norm on the test batch's
statistics, at batch size 1); Ea-GAN's calls `netG.eval()`. A method states its choice with
the `inference` hyperparameter ("eval" or "train") and records it in `describe()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfbk.errors import ConfigError

INFERENCE_MODES = ("eval", "train")


def gan_loss(logits: Tensor, real: bool, mode: str = "vanilla") -> Tensor:
    """Adversarial loss on discriminator outputs.

    vanilla: binary cross-entropy on logits (pix2pix, RevGAN); lsgan: least squares to 1/0
    (Ea-GAN, MaskGAN, ResViT).
    """
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, target)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    raise ValueError(f"unknown GAN loss '{mode}' (vanilla, lsgan)")


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze the discriminator during the generator step (saves its gradient compute)."""
    for p in module.parameters():
        p.requires_grad_(flag)


class ImagePool(nn.Module):
    """History of generated images for the discriminator (Shrivastava et al. 2017; CycleGAN).

    Each queried image is returned as is, or, once the pool is full, with probability 1/2 swapped
    for a stored one (which it then replaces), as in the pix2pix/CycleGAN code's
    `util/image_pool.py`. Outputs are detached: the pool feeds the discriminator's update only.
    Kept in the state dict so a resumed run continues with the same history.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.images: list[Tensor] = []

    def query(self, images: Tensor) -> Tensor:
        if self.size <= 0:
            return images.detach()
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif float(torch.rand(())) < 0.5:
                k = int(torch.randint(len(self.images), ()))
                out.append(self.images[k].to(image.device))
                self.images[k] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def get_extra_state(self) -> list[Tensor]:
        return [t.clone() for t in self.images]

    def set_extra_state(self, state: list[Tensor]) -> None:
        self.images = [t.clone() for t in state]


def check_inference_mode(name: str, mode: str) -> str:
    """The `inference` hyperparameter, refused with its name when unknown."""
    if mode not in INFERENCE_MODES:
        raise ConfigError(
            f"method '{name}': inference '{mode}' unknown; known: {', '.join(INFERENCE_MODES)}"
        )
    return mode


@contextlib.contextmanager
def layer_mode(module: nn.Module, mode: str) -> Iterator[None]:
    """Put `module`'s layers in `mode` for the block, then restore every flag as it was.

    eval: dropout off, batch norm with its running statistics. train: dropout on, batch norm
    normalising with the statistics of the batch at hand while its running statistics stay
    untouched (inference must not change the model).
    """
    if mode not in INFERENCE_MODES:
        raise ValueError(f"unknown layer mode '{mode}' ({', '.join(INFERENCE_MODES)})")
    modules = list(module.modules())
    training = [m.training for m in modules]
    norms = [m for m in modules if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracking = [m.track_running_stats for m in norms]
    try:
        module.train(mode == "train")
        if mode == "train":
            for m in norms:  # batch statistics, no running-statistics update
                m.track_running_stats = False
        yield
    finally:
        for m, flag in zip(norms, tracking, strict=True):
            m.track_running_stats = flag
        for m, flag in zip(modules, training, strict=True):
            m.training = flag


def run_generator(
    generate: Callable[[Tensor], Tensor],
    module: nn.Module,
    source: Tensor,
    mode: str,
    seeds: Tensor | None = None,
) -> Tensor:
    """`generate(source)` in inference `mode`, so a slice's output never depends on its batch.

    eval: one batched call. train (the released pix2pix/ResViT test scripts): each slice alone,
    i.e. at the batch size 1 those scripts use, so batch norm normalises by that slice's own
    statistics, and its dropout masks drawn from the slice's seed (`seeds[i]`; 0 when no
    seeds are given) in a forked random state, leaving the caller's random stream untouched.
    """
    if mode == "eval":
        with layer_mode(module, "eval"):
            return generate(source)
    devices = [source.device.index or 0] if source.device.type == "cuda" else []
    outputs = []
    with layer_mode(module, "train"):
        for i in range(source.shape[0]):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(0 if seeds is None else int(seeds[i]))
                outputs.append(generate(source[i : i + 1]))
    return torch.cat(outputs)
