"""ResViT (Dalmaz, Yurt & Cukur, IEEE TMI 2022): residual vision transformers for synthesis.

Generator: CNN encoder (c7s1-ngf, two stride-2 3x3 convolutions to C = 4*ngf at H/4), nine
aggregated residual transformer (ART) blocks, CNN decoder (two transposed convolutions, c7s1-1,
tanh). Each ART block ends in a residual CNN block; ART blocks 1 and 6 (1-based) also have a
transformer path, and both use ONE shared ViT encoder (the same module instance):

    t = Up(ViT(PatchEmbed(Down(g)) + pos))      Down: two stride-2 3x3 convs, C -> 2C -> 4C
    h = CC(concat(t, g));  out = h + ResCNN(h)  CC: residual block 2C -> C, 1x1 projection skip

At 256x256 the ViT-B/16 (12 layers, hidden 768, 12 heads, MLP 3072) sees a 16x16
grid of 1x1 patches of 4C = 1024 channels, the token layout of the ImageNet-21k R50+ViT-B/16
hybrid the authors start from. Conditional PatchGAN, least-squares GAN + 100 * L1, D loss halved,
Adam (beta1 0.5), batch norm, batch size 1.

Two stages (`stage`; `STAGES` holds the pretraining overrides for the DAG): "pretrain" trains the
CNN-only model (no transformer path is built or called) at lr 2e-4 for 100 epochs (50 + 50 linear
decay); "full" starts from its CNN weights (`init_from_stage`; generator only, D afresh as in the
published code) at lr 1e-3 for 50 epochs (25 + 25). Epochs are `steps` at 1000 slices per epoch,
batch 1; for the paper's epoch counts give the pretraining job steps 100_000, decay_start 50_000.

Checked against the released code (github.com/icon-lab/ResViT: `models/residual_transformers.py`,
`models/transformer_configs.py`, `models/networks.py`, `data/aligned_dataset.py`, `test.py`,
`README.md`), and followed here:
- Dropout: `get_b16_config` sets dropout_rate 0.1 (MLP and embedding dropout) and
  attention_dropout_rate 0.0, which `Attention` uses for both the attention weights and the
  attention output (`proj_dropout`): `vit_dropout` 0.1, `vit_attention_dropout` 0.0.
- Initialisation: `define_G` applies no initialisation to the ResViT generator, so its layers
  keep PyTorch's defaults except `Mlp._init_weights` (Xavier-uniform weights, N(0, 1e-6) biases)
  and the zero-initialised positional encoding; `define_D` applies `weights_init_normal`
  (N(0, 0.02) convolutions with default biases, N(1, 0.02) batch-norm scales). The generator's
  convolutions before batch norm have no bias (`use_bias = False`). `init: released` (paper);
  the tiny preset uses `init: normal` (N(0, 0.02) generator convolutions), which trains
  faster within its CPU budget (see the preset).
- Augmentation: the README's commands use the aligned loader without `--no_flip`, which flips
  source and target together left-right with probability 1/2 (`augment: hflip`).
- Inference: no script calls `eval()`, so the released test runs in training mode at batch
  size 1: batch norm normalises by the test slice's own statistics and the ViT's dropout stays
  active. `inference: train` reproduces this slice by slice (dropout drawn from each slice's
  seed); `inference: eval` uses the running statistics and no dropout.

Deviations, recorded in `describe()`:
- ViT initialisation is random unless `vit_weights` names a local timm-format VisionTransformer
  state dict (`blocks.*`, `norm.*` required; `patch_embed.proj.*`, `pos_embed` used where they
  fit, e.g. timm's `vit_base_r50_s16_224.orig_in21k`): the published weights need a download.
- The published full-stage lr 1e-3 is kept in `paper` but is reported to diverge; the fallback
  is the pretraining lr (override `lr: 2.0e-4`).
- Input sizes other than `img_size` (divisible by 16 * vit_patch) resample the positional
  embedding (bicubic); the published model is fixed at 256x256.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from dfbk.errors import ConfigError, TrainingError
from dfbk.methods.base import Batch, Knowledge, Method, to_signed, to_unit
from dfbk.methods.gan import check_inference_mode, gan_loss, run_generator, set_requires_grad
from dfbk.methods.registry import register_method
from dfbk.methods.schedules import linear_decay
from dfbk.networks.resnet import ResnetBlock, resnet_decoder, resnet_encoder
from dfbk.networks.unet import PatchDiscriminator, init_weights, norm_layer

STAGE_NAMES = ("pretrain", "full")
GENERATOR_INITS = ("released", "normal")
# Submodules of an ART block that exist only in the full model (everything else is "CNN").
TRANSFORMER_PARTS = ("branch", "compress", "vit")


class ViTEncoder(nn.Module):
    """The ViT's transformer layers and final LayerNorm; keys match timm's VisionTransformer.

    (B, N, D) tokens -> (B, N, D). Pre-norm blocks (MHSA + MLP), GELU, qkv bias, eps 1e-6.
    """

    def __init__(
        self,
        depth: int,
        hidden: int,
        heads: int,
        mlp: int,
        dropout: float,
        attention_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = Block(
                hidden,
                heads,
                mlp / hidden,
                qkv_bias=True,
                proj_drop=dropout,
                attn_drop=attention_dropout,
                norm_layer=norm,
            )
            # released: the attention output's dropout uses the attention rate (0.0), the MLP's
            # the dropout rate (0.1); timm would apply `proj_drop` to both
            block.attn.proj_drop = nn.Dropout(attention_dropout)
            # released initialisation: Xavier-uniform MLP weights, N(0, 1e-6) MLP biases; the
            # attention projections and LayerNorms keep PyTorch's defaults
            for fc in (block.mlp.fc1, block.mlp.fc2):
                nn.init.xavier_uniform_(fc.weight)
                nn.init.normal_(fc.bias, std=1e-6)
            self.blocks.append(block)
        self.norm = norm(hidden)

    def forward(self, tokens: Tensor) -> Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


def _conv(cin: int, cout: int, norm: str, transposed: bool = False) -> list[nn.Module]:
    """Stride-2 3x3 (transposed) convolution, norm, ReLU: halves (doubles) the resolution."""
    if transposed:
        conv = nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1, bias=False)
    else:
        conv = nn.Conv2d(cin, cout, 3, 2, 1, bias=False)
    return [conv, norm_layer(norm, cout), nn.ReLU(True)]


class TransformerBranch(nn.Module):
    """Down-sample, patch-embed (+ learned positions), shared ViT, reshape, up-sample.

    (B, C, H, W) -> (B, C, H, W); H, W divisible by 4 * patch. The ViT is passed in, not owned.
    """

    def __init__(
        self, channels: int, hidden: int, patch: int, grid: int, dropout: float, norm: str
    ) -> None:
        super().__init__()
        self.grid = grid
        self.down = nn.Sequential(
            *_conv(channels, 2 * channels, norm), *_conv(2 * channels, 4 * channels, norm)
        )
        self.embed = nn.Conv2d(4 * channels, hidden, patch, patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, hidden))  # released: zeros
        self.dropout = nn.Dropout(dropout)
        layers = [
            *_conv(hidden, 2 * channels, norm, True),
            *_conv(2 * channels, channels, norm, True),
        ]
        if patch > 1:  # undo the patch stride, then the two stride-2 down-samplings
            layers.insert(0, nn.Upsample(scale_factor=patch, mode="nearest"))
        self.up = nn.Sequential(*layers)

    def positions(self, h: int, w: int) -> Tensor:
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        return resample_abs_pos_embed(
            self.pos_embed, [h, w], [self.grid, self.grid], num_prefix_tokens=0
        )

    def forward(self, x: Tensor, vit: ViTEncoder) -> Tensor:
        emb = self.embed(self.down(x))  # (B, D, h, w)
        b, d, h, w = emb.shape
        tokens = self.dropout(emb.flatten(2).transpose(1, 2) + self.positions(h, w))
        tokens = vit(tokens)
        return self.up(tokens.transpose(1, 2).reshape(b, d, h, w))


class ChannelCompression(nn.Module):
    """CC module: residual block 2C -> C with a 1x1 projection shortcut, ReLU after the sum."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            norm_layer(norm, cout),
            nn.ReLU(True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            norm_layer(norm, cout),
        )
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), norm_layer(norm, cout))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.skip(x))


class ARTBlock(nn.Module):
    """Aggregated residual transformer block: [transformer path, concat, CC], residual CNN."""

    def __init__(self, channels: int, norm: str, vit: ViTEncoder | None, **branch: Any) -> None:
        super().__init__()
        self.vit = vit  # shared: the same module instance in every ART block that has one
        self.branch = TransformerBranch(channels, norm=norm, **branch) if vit else None
        self.compress = ChannelCompression(2 * channels, channels, norm) if vit else None
        self.residual = ResnetBlock(channels, norm, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.vit is not None:
            x = self.compress(torch.cat([self.branch(x, self.vit), x], dim=1))
        return self.residual(x)


class ResViTGenerator(nn.Module):
    """(B, 1, H, W) -> (B, 1, H, W) in [-1, 1]; `transformer_blocks` are 1-based ART indices."""

    def __init__(self, h: dict[str, Any], with_transformer: bool) -> None:
        super().__init__()
        ngf, norm, width = h["ngf"], h["norm"], 4 * h["ngf"]
        self.multiple = 16 * h["vit_patch"] if with_transformer else 4
        vit = None
        if with_transformer:
            vit = ViTEncoder(
                h["vit_depth"],
                h["vit_hidden"],
                h["vit_heads"],
                h["vit_mlp"],
                h["vit_dropout"],
                h["vit_attention_dropout"],
            )
        branch = {
            "hidden": h["vit_hidden"],
            "patch": h["vit_patch"],
            "grid": h["img_size"] // (16 * h["vit_patch"]),
            "dropout": h["vit_dropout"],
        }
        self.encoder = resnet_encoder(1, ngf, 2, norm, bias=False)
        self.arts = nn.ModuleList(
            ARTBlock(width, norm, vit if i + 1 in h["transformer_blocks"] else None, **branch)
            for i in range(h["n_art_blocks"])
        )
        self.decoder = resnet_decoder(1, ngf, 2, norm, bias=False)
        # "released": `define_G` initialises no ResViT generator layer (PyTorch defaults);
        # "normal": pix2pix's N(0, 0.02) convolutions and N(1, 0.02) batch-norm scales
        if h["init"] not in GENERATOR_INITS:
            raise ConfigError(
                f"resvit: init '{h['init']}' unknown; known: {', '.join(GENERATOR_INITS)}"
            )
        if h["init"] == "normal":
            init_weights(self)

    @property
    def vit(self) -> ViTEncoder | None:
        return next((art.vit for art in self.arts if art.vit is not None), None)

    def cnn_keys(self) -> set[str]:
        """State-dict keys of the CNN part: what the pretraining stage trains."""
        parts = tuple(f".{name}." for name in TRANSFORMER_PARTS)
        return {k for k in self.state_dict() if not any(p in k for p in parts)}

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
            raise ValueError(
                f"ResViT needs height and width divisible by {self.multiple}; got "
                f"{tuple(x.shape[-2:])}"
            )
        x = self.encoder(x)
        for art in self.arts:
            x = art(x)
        return self.decoder(x)


def read_state_file(path: Path) -> dict[str, Tensor]:
    """A state dict from a .safetensors or torch file (a 'state_dict'/'model' entry unwrapped)."""
    if not path.is_file():
        raise ConfigError(f"vit_weights: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"vit_weights: cannot read {path} ({type(err).__name__}: {err})") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"vit_weights: {path} does not hold a state dict of tensors")
    return state


def _token_grid(pos: Tensor, path: Path) -> tuple[int, int]:
    """(prefix tokens, grid side) of a (1, N, D) positional embedding with 0 or 1 class token."""
    for prefix in (0, 1):
        side = math.isqrt(pos.shape[1] - prefix)
        if side * side == pos.shape[1] - prefix:
            return prefix, side
    raise ConfigError(f"vit_weights: {path}: pos_embed of {pos.shape[1]} tokens is not a grid")


@torch.no_grad()
def load_vit_weights(generator: ResViTGenerator, path: Path) -> dict[str, Any]:
    """Initialise the shared ViT (and each branch's patch/position embedding) from a file."""
    state = read_state_file(path)
    encoder = {k: v for k, v in state.items() if k.startswith(("blocks.", "norm."))}
    try:
        generator.vit.load_state_dict(encoder, strict=True)
    except RuntimeError as err:
        raise ConfigError(
            f"vit_weights: {path} does not fit the configured ViT (vit_depth, vit_hidden, "
            f"vit_heads, vit_mlp): {err}"
        ) from err
    report: dict[str, Any] = {"vit_init": f"file {path}", "vit_encoder": "loaded"}
    branches = [art.branch for art in generator.arts if art.branch is not None]
    weight, bias = state.get("patch_embed.proj.weight"), state.get("patch_embed.proj.bias")
    if weight is not None and weight.shape == branches[0].embed.weight.shape:
        for branch in branches:
            branch.embed.weight.copy_(weight)
            if bias is not None:
                branch.embed.bias.copy_(bias)
        report["patch_embed"] = "loaded"
    else:
        shape = None if weight is None else tuple(weight.shape)
        report["patch_embed"] = f"random (file has {shape})"
    pos = state.get("pos_embed")
    if pos is not None:
        prefix, side = _token_grid(pos, path)
        grid = branches[0].grid
        pos = resample_abs_pos_embed(pos, [grid, grid], [side, side], num_prefix_tokens=prefix)
        for branch in branches:
            branch.pos_embed.copy_(pos[:, prefix:])
        report["pos_embed"] = f"loaded ({side}x{side} -> {grid}x{grid})"
    else:
        report["pos_embed"] = "random (not in file)"
    return report


# Published settings that the tiny preset keeps as they are.
_PUBLISHED = {
    "ema_decay": None,
    "augment": "hflip",  # released README commands: aligned data without --no_flip
    "inference": "train",  # released test.py never calls eval(): batch norm on the slice, dropout
    "stage": "full",
    "n_art_blocks": 9,
    "transformer_blocks": [1, 6],
    "norm": "batch",
    "vit_patch": 1,
    "vit_dropout": 0.1,  # released: MLP and embedding dropout
    "vit_attention_dropout": 0.0,  # released: attention weights and attention output
    "vit_weights": None,  # published: ImageNet-21k R50+ViT-B/16 (a download)
    "init": "released",  # generator CNN: PyTorch defaults (see the module docstring)
    "beta1": 0.5,
    "lambda_l1": 100.0,
    "lambda_adv": 1.0,
    "gan_mode": "lsgan",
}


INFERENCE_NOTES = {
    "train": "train mode, slice by slice, as the released test.py (never calls eval()): batch "
    "norm on the slice's own statistics, ViT dropout active with the slice's seed",
    "eval": "eval mode: running batch-norm statistics, no dropout (released test.py: train mode)",
}


@register_method("resvit")
class ResViT(Method):
    PRESETS = {
        "tiny": {
            **_PUBLISHED,
            "steps": 250,  # per stage: pretrain, then full
            "batch_size": 8,
            "ngf": 8,
            "ndf": 16,
            "img_size": 64,
            "vit_depth": 2,
            "vit_hidden": 64,
            "vit_heads": 2,
            "vit_mlp": 256,
            "lr": 1e-3,  # published full-stage lr: stable here, phantom SSIM 0.79 (2e-4: 0.70)
            "decay_start": 125,
            # eval: tiny trains at batch 8, so batch norm's training statistics are not one
            # slice's (phantom T1->T2, 7 subjects, 250 + 250 steps: SSIM 0.689 eval, 0.653
            # slice-by-slice train mode, identity 0.618)
            "inference": "eval",
            # N(0, 0.02) CNN init: the released PyTorch defaults train slower in 500 CPU steps
            # (phantom T1->T2, eval-mode SSIM, seeds 0/1: 0.689/0.715
            # released, 0.760/0.762 N(0, 0.02); identity 0.618)
            "init": "normal",
        },
        "paper": {
            **_PUBLISHED,
            "steps": 50_000,  # full stage: 50 epochs (25 + 25 decay) x 1000 slices, batch 1
            "batch_size": 1,
            "ngf": 64,
            "ndf": 64,
            "img_size": 256,
            "vit_depth": 12,  # ViT-B/16
            "vit_hidden": 768,
            "vit_heads": 12,
            "vit_mlp": 3072,
            "lr": 1e-3,  # published full-stage lr; fallback 2e-4 (see describe)
            "decay_start": 25_000,
        },
    }
    # Overrides of the CNN-only pretraining stage, run before the main ("full") training.
    STAGES = {"pretrain": {"stage": "pretrain", "lr": 2e-4}}

    def __init__(self, hparams: dict[str, Any]) -> None:
        super().__init__(hparams)
        h = self.hparams
        if h["stage"] not in STAGE_NAMES:
            raise ConfigError(f"resvit: unknown stage '{h['stage']}' ({', '.join(STAGE_NAMES)})")
        full = h["stage"] == "full"
        self.generator = ResViTGenerator(h, with_transformer=full)
        self.discriminator = PatchDiscriminator(2, h["ndf"], 3, h["norm"])
        init_weights(self.discriminator, zero_bias=False)  # released `weights_init_normal`
        check_inference_mode(self.name, self.inference)
        self.vit_report = {"vit_init": "random" if full else "none (CNN-only stage)"}
        if full and h["vit_weights"]:
            self.vit_report = load_vit_weights(self.generator, Path(h["vit_weights"]))
        betas = (h["beta1"], 0.999)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=h["lr"], betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=h["lr"], betas=betas)
        rule = linear_decay(h["steps"], h["decay_start"])
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, rule)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, rule)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"g": self.opt_g, "d": self.opt_d}

    def schedulers(self) -> dict[str, Any]:
        return {"g": self.sched_g, "d": self.sched_d}

    def generator_loss(self, src: Tensor, tgt: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """lambda_adv * LSGAN(D(src, fake), 1) + lambda_l1 * |fake - tgt|_1 (signed images)."""
        h = self.hparams
        adv = gan_loss(self.discriminator(torch.cat([src, fake], 1)), True, h["gan_mode"])
        l1 = F.l1_loss(fake.float(), tgt)
        return {"loss_g": h["lambda_adv"] * adv + h["lambda_l1"] * l1, "gan": adv, "l1": l1}

    def training_step(self, batch: Batch, step: int) -> dict[str, float]:
        src, tgt = to_signed(batch.source), to_signed(batch.target)
        mode = self.hparams["gan_mode"]
        with self.autocast():
            fake = self.generator(src)
        set_requires_grad(self.discriminator, True)
        self.opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            d_real = self.discriminator(torch.cat([src, tgt], 1))
            d_fake = self.discriminator(torch.cat([src, fake.detach()], 1))
            loss_d = gan_loss(d_real, True, mode) + gan_loss(d_fake, False, mode)
            loss_d = 0.5 * self.hparams["lambda_adv"] * loss_d
        loss_d.backward()
        self.opt_d.step()
        set_requires_grad(self.discriminator, False)
        self.opt_g.zero_grad(set_to_none=True)
        with self.autocast():
            losses = self.generator_loss(src, tgt, fake)
        losses["loss_g"].backward()
        self.opt_g.step()
        self.sched_g.step()
        self.sched_d.step()
        return {
            "loss_g": losses["loss_g"].item(),
            "loss_g_gan": losses["gan"].item(),
            "loss_l1": losses["l1"].item(),
            "loss_d": loss_d.item(),
        }

    @torch.no_grad()
    def translate(
        self, source: Tensor, knowledge: Knowledge | None = None, seeds: Tensor | None = None
    ) -> Tensor:
        """`inference: train` runs each slice as the released test script does (see gan.py)."""
        with self.autocast():
            out = run_generator(
                self.generator, self.generator, to_signed(source), self.inference, seeds
            )
        return to_unit(out.float())

    @property
    def inference(self) -> str:
        # checkpoints written before the key existed were translated in eval mode
        return self.hparams.get("inference", "eval")

    @classmethod
    def inference_hparams(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint holds the trained ViT; its initial weights file is not needed."""
        return {**hparams, "vit_weights": None}

    def init_from_stage(self, state: dict[str, Tensor]) -> None:
        """Load the pretraining stage's CNN generator weights; every CNN weight must be there.

        `state` is the pretraining Method's state dict (`generator.*`, `discriminator.*`). The
        transformer paths keep their initialisation; the discriminator starts afresh, as in
        the published fine-tuning (it loads only the pretrained generator).
        """
        gen = {k[10:]: v for k, v in state.items() if k.startswith("generator.")}
        own = self.generator.state_dict()
        missing = sorted(self.generator.cnn_keys() - gen.keys())
        unknown = sorted(gen.keys() - own.keys())
        if missing or unknown:
            raise TrainingError(
                "resvit init_from_stage: the state is not a ResViT pretraining generator; "
                f"missing CNN weights {missing[:5]} ({len(missing)}), "
                f"unknown weights {unknown[:5]} ({len(unknown)})"
            )
        try:
            self.generator.load_state_dict(gen, strict=False)
        except RuntimeError as err:
            raise TrainingError(f"resvit init_from_stage: shapes differ: {err}") from err

    def describe(self) -> dict[str, Any]:
        h = self.hparams
        vit = (
            f"ViT depth {h['vit_depth']}, hidden {h['vit_hidden']}, {h['vit_heads']} heads, MLP "
            f"{h['vit_mlp']}, {h['vit_patch']}x{h['vit_patch']} patches; one instance shared by "
            f"ART blocks {h['transformer_blocks']}"
        )
        return {
            "stage": h["stage"],
            "transformer": vit if h["stage"] == "full" else "none: CNN-only pretraining stage",
            **self.vit_report,
            "vit_init_published": "ImageNet-21k R50+ViT-B/16 (a download; see vit_weights)",
            "lr_note": "published full-stage lr 1e-3 is reported to diverge; fallback: lr 2e-4",
            "full_stage_init": "generator CNN weights from the pretraining stage; fresh D",
            "init": (
                "as released: PyTorch defaults in the generator CNN"
                if h["init"] == "released"
                else "N(0, 0.02) generator CNN (released: PyTorch defaults)"
            )
            + "; ViT as released (Xavier-uniform MLP weights, N(0, 1e-6) MLP biases, zero "
            "positional embedding); N(0, 0.02) D",
            "dropout": f"MLP and embedding {h['vit_dropout']}, attention weights and output "
            f"{h['vit_attention_dropout']} (released 0.1 / 0.0)",
            "augment": h["augment"],
            "inference": INFERENCE_NOTES[self.inference],
            "deviations": "positional embedding resampled for input sizes other than img_size",
        }
