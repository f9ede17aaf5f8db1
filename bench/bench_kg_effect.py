"""Does a trained DFBK checkpoint use what its knowledge says? Prompt swap vs random tokens.

Loads `model.pt` (a KG method), takes the `--slices` slices of the slice store with the most
target foreground, and prints the RMS change of the denoiser's x0 prediction at fixed
noisy inputs when the trained knowledge is replaced by another modality's prompts, by other
prompts of the same modality, by random tokens of equal norm around the trained tokens, and by
isotropic random tokens (bench/kg_effects.py). The alternative prompts are encoded with
the encoder the checkpoint was trained with (MiniLM here; BiomedCLIP where its weights are).

    python bench/bench_kg_effect.py results/train/phantom/t1n-to-t2w/dfbk/seed-0/model.pt \\
        results/prepare/phantom/store --swap-to t2f
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from kg_effects import fixed_predictor, knowledge_effects

from dfbk.data.slices.store import SliceStore
from dfbk.inference.predict import checkpoint_knowledge
from dfbk.knowledge import encode_prompts, prompts_for
from dfbk.training.checkpoint import load_checkpoint, rebuild_method
from dfbk.training.trainer import parse_direction


def pick_slices(store: SliceStore, source: str, target: str, count: int) -> tuple:
    """`count` slices with the most non-zero target pixels, as (B, 1, H, W) tensors."""
    images, targets = store.images(source), store.images(target)
    filled = (np.asarray(targets) > 0.05).reshape(len(targets), -1).mean(axis=1)
    chosen = np.sort(np.argsort(-filled)[:count])
    as_tensor = lambda a: torch.from_numpy(np.asarray(a[chosen], np.float32))[:, None]  # noqa: E731
    return as_tensor(images), as_tensor(targets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="model.pt of a Knowledge Guidance method")
    parser.add_argument("store", type=Path, help="slice store the model was trained on")
    parser.add_argument("--swap-to", default="t2f", help="modality whose prompts replace it")
    parser.add_argument("--slices", type=int, default=8, help="slices to measure on (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    payload = load_checkpoint(args.checkpoint)
    knowledge, info = checkpoint_knowledge(payload), payload.get("knowledge") or {}
    if knowledge is None or not info.get("prompts"):
        raise SystemExit(f"{args.checkpoint}: not trained with knowledge tokens")
    method = rebuild_method(payload)
    source, target = parse_direction(payload["direction"])
    images, targets = pick_slices(SliceStore(args.store), source, target, args.slices)
    predict = fixed_predictor(method, images, targets)
    encoder, prompts = info["encoder"], list(info["prompts"])
    alternatives = {
        f"swap to {args.swap_to}": encode_prompts(prompts_for(args.swap_to), encoder),
        "same modality, half the prompts": encode_prompts(
            prompts[: max(1, len(prompts) // 2)], encoder
        ),
    }
    effects = knowledge_effects(
        predict, knowledge, {k: v.as_knowledge() for k, v in alternatives.items()}
    )
    print(json.dumps({"checkpoint": str(args.checkpoint), "encoder": encoder, **effects}, indent=2))


if __name__ == "__main__":
    main()
