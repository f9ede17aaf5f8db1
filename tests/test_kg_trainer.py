"""DFBK through the shared trainer: real MiniLM knowledge cache in, diagnostics and facts out."""

import json

import torch
from conftest import train_spec

from dfbk.inference.predict import checkpoint_knowledge
from dfbk.knowledge import DEFAULT_PROMPTS, encode_or_load
from dfbk.training.checkpoint import load_checkpoint, rebuild_method
from dfbk.training.trainer import Trainer

torch.set_num_threads(1)


def test_trainer_feeds_token_states_and_logs_module_diagnostics(phantom_store, tmp_path):
    cache = tmp_path / "knowledge" / "t2w.pt"
    emb = encode_or_load(DEFAULT_PROMPTS["t2w"], "minilm", cache)
    spec = train_spec(
        phantom_store,
        tmp_path,
        "dfbk",
        overrides={"steps": 3, "batch_size": 2},
        knowledge_path=cache,
        val_every=0,
        val_slices=2,
    )
    model = Trainer(spec).run()
    lines = [
        json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()
    ]
    steps = [line for line in lines if "diag_dfb.mid.w_low" in line]
    assert len(steps) == 3
    assert steps[0]["diag_dfb.mid.gain"] == 0.0 < steps[-1]["diag_dfb.mid.gain"]
    assert all(0 < line["diag_dfb.mid.w_low"] < 1 for line in steps)
    assert "diag_kg.global.gain" in steps[-1] and "diag_kg.mid.share" in steps[-1]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["describe"]["visual_knowledge"].startswith("off")  # tiny: text tokens only
    assert run["knowledge"]["n_tokens"] == emb.info()["n_tokens"] > 50
    payload = load_checkpoint(model)
    knowledge = checkpoint_knowledge(payload)
    assert knowledge.tokens.shape == emb.as_knowledge().tokens.shape and knowledge.dim == 384
    assert torch.equal(knowledge.mask, emb.as_knowledge().mask)
    method = rebuild_method(payload)
    source = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    assert method.translate(source, knowledge).shape == source.shape
