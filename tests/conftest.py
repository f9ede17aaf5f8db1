"""Shared fixtures and builders: offline environment, small synthetic data made per test session,
trainer specs and commands, a BiomedCLIP stand-in.

`make test` runs the suite on pytest-xdist workers with --dist loadfile: a test file stays on
one worker, so a module fixture is built once; session fixtures are built once per worker, in its
own temporary folder. Tests must not share anything else (fixed ports, the repository tree).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # hub calls fail in 0.05 s instead of retrying
os.environ.setdefault("MPLBACKEND", "Agg")
for _key in [k for k in os.environ if k.startswith("MLFLOW_")]:
    del os.environ[_key]
if os.environ.get("PYTEST_XDIST_WORKER"):
    # N workers on C cores: each takes C // N threads (and so do the processes it starts), so
    # torch's intra-op pools do not oversubscribe the machine. Set before torch is imported; a
    # value the caller exported wins. Results must not depend on it (no test reads it).
    _share = (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, str(max(1, _share)))

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(
    0, str(REPO / "bench")
)  # bench-only modules (capacity, kg_effects) that tests check
DFBK = str(Path(sys.executable).with_name("dfbk"))


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for the test (small convolutions run fastest so, and the CI
    machine has two cores); the previous count is restored after it. Files opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----- data ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def phantom_raw(tmp_path_factory) -> Path:
    """Four small phantom subjects (5 mm voxels) in the BraTS-like layout; read-only for tests."""
    from dfbk.data.phantom.anatomy import generate_phantom_dataset

    root = tmp_path_factory.mktemp("phantom") / "raw"
    generate_phantom_dataset(
        root, n_subjects=4, seed=3, voxel_mm=5.0, lesions=("tumour", "stroke", "none")
    )
    return root


@pytest.fixture
def phantom_copy(phantom_raw, tmp_path) -> Path:
    """A private copy of the phantom that a test may break."""
    target = tmp_path / "raw"
    shutil.copytree(phantom_raw, target)
    return target


@pytest.fixture(scope="session")
def phantom_store(phantom_raw, tmp_path_factory):
    """The phantom prepared into a 48x48 slice store with a split."""
    from dfbk.data.slices.prepare import prepare_dataset
    from dfbk.data.slices.splits import write_or_check_split
    from dfbk.data.slices.store import SliceStore

    root = tmp_path_factory.mktemp("store")
    prepare_dataset("phantom", phantom_raw, root / "store", ["t1n", "t2w", "ct"], (48, 48), 0.05)
    store = SliceStore(root / "store")
    write_or_check_split(root / "splits.json", store.subjects, {"train": 2, "val": 1, "test": 1}, 0)
    return store, root / "splits.json"


# ----- training on the phantom store -----------------------------------------------------------
def train_spec(phantom_store, folder: Path, method: str = "pix2pix", **fields: Any):
    """A TrainSpec for phantom t1n-to-t2w on CPU writing to `folder`/out and `folder`/ckpt.

    One place for what every trainer test takes for granted (dataset, direction, store, split,
    device), so a test states only what it is about; `fields` override any TrainSpec field.
    """
    from dfbk.training.trainer import TrainSpec

    store, split = phantom_store
    values: dict[str, Any] = {
        "dataset": "phantom",
        "direction": "t1n-to-t2w",
        "method": method,
        "seed": 0,
        "store_dir": store.root,
        "split_path": split,
        "out_dir": folder / "out",
        "checkpoint_dir": folder / "ckpt",
        "device": "cpu",
    }
    return TrainSpec(**{**values, **fields})


def train_command(
    phantom_store,
    folder: Path,
    overrides: dict,
    *extra: str,
    method: str = "pix2pix",
    seed: int = 0,
) -> list[str]:
    """`dfbk train` of phantom t1n-to-t2w on one CPU thread into `folder`/out and `folder`/ckpt,
    as Snakemake's rule runs it; `extra` adds options (--checkpoint-every, --gpus, ...)."""
    store, split = phantom_store
    return [
        DFBK, "train", "phantom", "t1n-to-t2w", method, "--seed", str(seed),
        "--overrides", json.dumps(overrides), "--store", str(store.root), "--split", str(split),
        "--out-dir", str(folder / "out"), "--checkpoint-dir", str(folder / "ckpt"),
        "--device", "cpu", "--threads", "1", *extra,
    ]  # fmt: skip


def kill_at_step(trainer, step: int) -> None:
    """Run `trainer` as a process killed when it reaches training step `step` (never taken):
    its training_step raises KeyboardInterrupt there, and is put back before this returns."""
    method = trainer.method
    original = method.training_step

    def killed(batch, at):
        if at == step:
            raise KeyboardInterrupt("simulated kill")
        return original(batch, at)

    method.training_step = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.run()
    finally:
        method.training_step = original


# ----- knowledge encoders ----------------------------------------------------------------------
@pytest.fixture
def empty_hf(tmp_path, monkeypatch) -> None:
    """An empty Hugging Face cache, offline: BiomedCLIP cannot be found there."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


BIOMEDCLIP_WORDS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "axial", "brain", "mri", "ct", "bone",
    "bright", "dark", "fluid", "white", "grey", ";", ",",
]  # fmt: skip


@pytest.fixture(scope="session")
def fake_biomedclip(tmp_path_factory) -> Path:
    """A folder laid out like the BiomedCLIP hub repo, read-only for tests: open_clip
    CustomTextCLIP with an HF BERT text tower (width 32, vocab.txt + config.json beside it) and
    timm's tiny `test_vit` image tower (patch 16, 160x160, width 64) behind TimmModel, random
    weights (seed 0), preprocess_cfg in open_clip_config.json. No download."""
    import open_clip
    import torch
    from transformers import BertConfig

    folder = tmp_path_factory.mktemp("biomedclip")
    (folder / "vocab.txt").write_text("\n".join(BIOMEDCLIP_WORDS) + "\n")
    BertConfig(
        vocab_size=len(BIOMEDCLIP_WORDS),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    ).save_pretrained(folder)
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "timm_model_name": "test_vit",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 160,
        },
        "text_cfg": {
            "hf_model_name": "fake/tiny-bert",
            "hf_tokenizer_name": "fake/tiny-bert",
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 16,
        },
    }
    preprocess = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26, 0.27]}
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    text_cfg = {**model_cfg["text_cfg"], "hf_model_name": str(folder), "hf_model_pretrained": False}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = open_clip.model.CustomTextCLIP(**{**model_cfg, "text_cfg": text_cfg})
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


@pytest.fixture
def server():
    """A local Zenodo-like HTTP server (fakes.FakeServer) on 127.0.0.1."""
    from fakes import serve

    with serve() as state:
        yield state
