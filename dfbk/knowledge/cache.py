"""The knowledge cache: prompts are encoded once per target modality and reused by every run.

One torch file per (dataset, target) — `results/knowledge/{dataset}/{target}.pt` — holding
the token states (P prompts × L tokens × D, with the padding mask), the pooled sentence
embeddings, and the facts a table must report: encoder name, encoder version, prompt hash and,
for `auto`, why BiomedCLIP was not used. Written atomically; read with `weights_only=True`
(tensors, strings and lists only), and refused with a message naming the file when corrupt.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from dfbk.data.io import save_torch_atomic
from dfbk.errors import DataError
from dfbk.knowledge import encoders
from dfbk.knowledge.encoders import KnowledgeEmbedding, prompt_hash
from dfbk.knowledge.prompts import KNOWLEDGE_FORMAT_VERSION

FORMAT = "dfbk-knowledge"
FORMAT_VERSION = KNOWLEDGE_FORMAT_VERSION  # 2: token states + mask (1: one pooled row/prompt)
_FIELDS = ("encoder", "encoder_version", "prompt_hash", "prompts", "requested")


def save_knowledge(emb: KnowledgeEmbedding, path: Path) -> Path:
    """Write `emb` and its metadata to `path` atomically (temporary name, then rename)."""
    import dfbk

    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dfbk_version": dfbk.__version__,
        **{name: getattr(emb, name) for name in _FIELDS},
        "prompts": list(emb.prompts),
        "fallback_reason": emb.fallback_reason,
        "token_states": emb.token_states,
        "token_mask": emb.token_mask,
        "pooled": emb.pooled,
    }
    return save_torch_atomic(payload, Path(path), "the knowledge file")


def _check_tensors(payload: dict[str, Any], path: Path) -> None:
    """(P, L, D) finite states, (P, L) bool mask with a real token per prompt, (P, E) pooled."""
    states, mask, pooled = (payload.get(k) for k in ("token_states", "token_mask", "pooled"))
    if payload["encoder"] == "none":
        if states is not None or pooled is not None:
            raise DataError(f"{path}: encoder 'none' but the file holds tokens")
        return
    n_prompts = len(payload["prompts"])
    if not isinstance(states, torch.Tensor) or states.ndim != 3 or states.shape[0] != n_prompts:
        raise DataError(f"{path}: token_states missing or not a ({n_prompts}, L, D) tensor")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise DataError(f"{path}: token_mask missing or not a bool tensor")
    if mask.shape != states.shape[:2] or not mask.any(dim=1).all():
        raise DataError(f"{path}: token_mask {tuple(mask.shape)} does not fit the token states")
    if not isinstance(pooled, torch.Tensor) or pooled.ndim != 2 or pooled.shape[0] != n_prompts:
        raise DataError(f"{path}: pooled embeddings missing or not {n_prompts} rows")
    if not (torch.isfinite(states).all() and torch.isfinite(pooled).all()):
        raise DataError(f"{path}: tokens contain NaN or infinite values")


def load_knowledge(path: Path) -> KnowledgeEmbedding:
    """Read and validate a knowledge file; anything wrong is a DataError naming it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: knowledge file not found (run `dfbk knowledge` first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle errors, foreign file: all "corrupt"
        raise DataError(
            f"{path}: cannot read knowledge file ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(f"{path}: not a dfbk knowledge file")
    if payload.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: knowledge format {payload.get('format_version')} is not the current "
            f"{FORMAT_VERSION} (older files hold one pooled vector per prompt, not token "
            "states); rerun `dfbk knowledge` (the encode_knowledge rule) to rebuild it"
        )
    missing = [name for name in _FIELDS if name not in payload]
    if missing:
        raise DataError(f"{path}: knowledge file lacks {', '.join(missing)}")
    if payload["prompt_hash"] != prompt_hash(payload["prompts"]):
        raise DataError(f"{path}: prompt hash does not match the stored prompts (file edited?)")
    _check_tensors(payload, path)
    return KnowledgeEmbedding(
        token_states=payload["token_states"],
        token_mask=payload["token_mask"],
        pooled=payload["pooled"],
        encoder=payload["encoder"],
        encoder_version=payload["encoder_version"],
        prompt_hash=payload["prompt_hash"],
        prompts=list(payload["prompts"]),
        requested=payload["requested"],
        fallback_reason=payload.get("fallback_reason"),
    )


def stale_reason(
    cached: KnowledgeEmbedding, prompts: list[str], encoder: str, local_dir: Path | None = None
) -> str | None:
    """Why `cached` cannot serve this request (None: reuse it).

    Reused only when the prompt hash matches and the encoder does: for `auto`, a cached
    BiomedCLIP result always serves, a cached MiniLM fallback only while BiomedCLIP's files
    are still absent (checked without loading any weights).
    """
    if cached.prompt_hash != prompt_hash(prompts):
        return "prompts changed"
    if encoder != "auto":
        return None if cached.encoder == encoder else f"encoder {cached.encoder} != {encoder}"
    if cached.encoder == "biomedclip":
        return None
    if cached.encoder != "minilm":
        return f"encoder {cached.encoder} is not what auto gives"
    try:
        encoders.locate_biomedclip(local_dir, download=False)
    except encoders.EncoderUnavailable:
        return None
    return "BiomedCLIP is available now (the cache holds the MiniLM fallback)"


def encode_or_load(
    prompts: list[str], encoder: str, path: Path, local_dir: Path | None = None
) -> KnowledgeEmbedding:
    """Reuse `path` when it matches (encoder and prompt hash), else encode and save it there."""
    path = Path(path)
    if path.exists():
        try:
            cached = load_knowledge(path)
        except DataError as err:
            print(f"dfbk knowledge: warning: re-encoding, cache unusable: {err}", file=sys.stderr)
        else:
            reason = stale_reason(cached, prompts, encoder, local_dir)
            if reason is None:
                return cached
            print(f"dfbk knowledge: re-encoding {path}: {reason}", file=sys.stderr)
    emb = encoders.encode_prompts(prompts, encoder, local_dir)
    save_knowledge(emb, path)
    return emb
