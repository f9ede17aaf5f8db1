"""Knowledge priors: text prompts of the target modality, encoded once by a frozen text encoder.

`encode_prompts` (encoders.py) turns prompts into a `KnowledgeEmbedding` — (K, D) unit rows,
one per prompt, plus the encoder actually used, its version and the prompt hash; `encode_or_load`
(cache.py) keeps one file per target modality and re-encodes only when the encoder or the
prompts change. Encoder `none` gives `tokens = pooled = None` (the explicit "no knowledge"
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
    "ENCODERS": "prompts",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dfbk.knowledge.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dfbk.knowledge' has no attribute {name!r}")
