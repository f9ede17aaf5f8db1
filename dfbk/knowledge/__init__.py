"""Knowledge priors: text prompts of the target modality, encoded once by a frozen text encoder.

`encode_prompts` (encoders.py) turns prompts into a `KnowledgeEmbedding` — the encoder's token
states (P prompts × L tokens × D, with the padding mask) and pooled rows, plus the encoder
actually used, its version and the prompt hash; `encode_or_load`
(cache.py) keeps one file per target modality and re-encodes only when the encoder or the
prompts change. Encoder `none` gives `token_states = pooled = None` (the explicit "no knowledge"
marker that methods receive as `knowledge=None`).
"""

import importlib

# Resolved on first access (PEP 562) so `dfbk.knowledge.prompts` and the CLI stay torch-free.
_EXPORTS = {
    "encode_or_load": "cache",
    "load_knowledge": "cache",
    "save_knowledge": "cache",
    "BIOMEDCLIP_ID": "encoders",
    "EncoderUnavailable": "encoders",
    "KnowledgeEmbedding": "encoders",
    "encode_prompts": "encoders",
    "prompt_hash": "encoders",
    "prompts_for": "encoders",
    "DEFAULT_PROMPTS": "prompts",
    "KNOWLEDGE_FORMAT_VERSION": "prompts",
    "resolve_vision": "vision",
    "VisionTower": "vision",
    "ENCODERS": "prompts",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dfbk.knowledge.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dfbk.knowledge' has no attribute {name!r}")
