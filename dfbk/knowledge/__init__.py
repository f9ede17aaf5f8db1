"""Knowledge priors: text prompts of the target modality, encoded once by a frozen text encoder.

`encode_prompts` (encoders.py) turns prompts into a `KnowledgeEmbedding` — (K, D) unit rows,
one per prompt, plus the encoder actually used, its version and the prompt hash; `encode_or_load`
(cache.py) keeps one file per target modality and re-encodes only when the encoder or the
prompts change. Encoder `none` gives `tokens = pooled = None` (the explicit "no knowledge"
marker that methods receive as `knowledge=None`).
"""

from dfbk.knowledge.cache import encode_or_load, load_knowledge, save_knowledge
from dfbk.knowledge.encoders import (
    BIOMEDCLIP_ID,
    DEFAULT_PROMPTS,
    ENCODERS,
    EncoderUnavailable,
    KnowledgeEmbedding,
    encode_prompts,
    prompt_hash,
    prompts_for,
)

__all__ = [
    "BIOMEDCLIP_ID",
    "DEFAULT_PROMPTS",
    "ENCODERS",
    "EncoderUnavailable",
    "KnowledgeEmbedding",
    "encode_or_load",
    "encode_prompts",
    "load_knowledge",
    "prompt_hash",
    "prompts_for",
    "save_knowledge",
]
