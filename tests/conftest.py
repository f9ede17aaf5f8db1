"""Shared fixtures: offline environment and small synthetic data made per test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # hub calls fail in 0.05 s instead of retrying
os.environ.setdefault("MPLBACKEND", "Agg")
for _key in [k for k in os.environ if k.startswith("MLFLOW_")]:
    del os.environ[_key]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def phantom_raw(tmp_path_factory) -> Path:
    """Four small phantom subjects (5 mm voxels) in the BraTS-like layout; read-only for tests."""
    from dfbk.data.phantom import generate_phantom_dataset

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
    from dfbk.data.prepare import prepare_dataset
    from dfbk.data.splits import write_or_check_split
    from dfbk.data.store import SliceStore

    root = tmp_path_factory.mktemp("store")
    prepare_dataset("phantom", phantom_raw, root / "store", ["t1n", "t2w", "ct"], (48, 48), 0.05)
    store = SliceStore(root / "store")
    write_or_check_split(root / "splits.json", store.subjects, {"train": 2, "val": 1, "test": 1}, 0)
    return store, root / "splits.json"
