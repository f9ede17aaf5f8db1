"""Checkpoints that carry their recipe and what they were trained on, written atomically.

Two kinds: the training state `last.pt` (method + optimisers + EMA + RNG + step; lives outside
the rule outputs so Snakemake never deletes it on failure) and the inference checkpoint
`model.pt` (EMA weights where used, the recipe and data contract), from which `dfbk translate`
rebuilds the model alone.

Trust rules (format 2):
- only tensors and plain data (dicts, lists, strings, numbers) are stored, and every load uses
  `torch.load(weights_only=True)`: a file holding pickled Python objects is refused, never run;
- a SHA-256 of the tensors' bytes and the other values (`content_sha256`) is stored beside them
  and checked on load, so a flipped byte or a hand-edited file is refused, naming the file;
- a `fingerprint` records what the weights were trained on (dataset, direction, seed, method
  settings, split content, slice store identity, knowledge tokens); the trainer resumes only a
  checkpoint with the same fingerprint, and `check_fingerprint` lets translate/evaluate refuse
  a store or split other than the one the model was trained with.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import dfbk
from dfbk.data.io import save_torch_atomic
from dfbk.errors import DataError, TrainingError
from dfbk.methods.registry import get_method_class

FORMAT = "dfbk-checkpoint"
FORMAT_VERSION = 2
HASH_KEY = "content_sha256"


def content_hash(payload: dict[str, Any]) -> str:
    """SHA-256 over every value of `payload` but the hash itself, in sorted key order.

    Tensors contribute their path, dtype, shape and raw bytes; other values their path and
    JSON text. Equal payloads hash equal whatever the file layout torch.save chose.
    """
    digest = hashlib.sha256()

    def walk(path: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{path}|tensor|{flat.dtype}|{tuple(value.shape)}\n".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(f"{path}|dict|{len(value)}\n".encode())
            for key in sorted(value, key=str):
                walk(f"{path}/{key}", value[key])
        elif isinstance(value, list | tuple):
            digest.update(f"{path}|list|{len(value)}\n".encode())
            for i, item in enumerate(value):
                walk(f"{path}/{i}", item)
        else:
            digest.update(f"{path}|{json.dumps(value, default=str)}\n".encode())

    walk("", {k: v for k, v in payload.items() if k != HASH_KEY})
    return digest.hexdigest()


def plain(value: Any, where: str = "") -> Any:
    """`value` as tensors and builtin containers/scalars only (what weights_only=True reads).

    str/int/float subclasses (torch.__version__, numpy scalars) become their builtin type, paths
    become strings; anything else is a bug in the caller and raises TypeError naming the key.
    """
    if isinstance(value, torch.Tensor) or value is None:
        return value
    if isinstance(value, dict):
        return {k: plain(v, f"{where}/{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(v, f"{where}/{i}") for i, v in enumerate(value))
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalar
        return value.item()
    raise TypeError(f"checkpoint value at '{where}' is a {type(value).__name__}, not plain data")


def save_atomic(obj: Any, path: Path) -> Path:
    """Save atomically (dfbk.data.io.save_torch_atomic); a dfbk checkpoint gets its content hash.

    A failed write (disk full, permissions) is one TrainingError naming `path`.
    """
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = plain(obj)
        obj[HASH_KEY] = content_hash(obj)
    return save_torch_atomic(obj, path, "checkpoint", TrainingError)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete `.<name>.*.tmp` files left by an interrupted atomic write (caller holds the lock)."""
    stale = sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and verify a checkpoint on CPU; any problem is one TrainingError naming the file."""
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise TrainingError(
            f"{path}: refused: it holds pickled Python objects, not only tensors and plain data "
            "(a checkpoint from dfbk before format 2, or not from dfbk); loading it could run "
            "code — retrain or delete it"
        ) from err
    except Exception as err:  # zip/pickle readers raise many types for damaged files
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise TrainingError(
            f"{path}: cannot read checkpoint, corrupt or truncated ({type(err).__name__}: {first})"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise TrainingError(f"{path}: not a dfbk checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise TrainingError(
            f"{path}: checkpoint format {payload.get('format_version')} from an older dfbk; "
            f"this version reads format {FORMAT_VERSION} — retrain or delete it"
        )
    stored = payload.get(HASH_KEY)
    if stored is None:
        raise TrainingError(f"{path}: checkpoint has no content hash; retrain or delete it")
    actual = content_hash(payload)
    if actual != stored:
        raise TrainingError(
            f"{path}: content hash mismatch (stored {stored[:12]}, computed {actual[:12]}): "
            "the file is corrupt or was edited; delete it and retrain"
        )
    return payload


def recipe(method, spec) -> dict[str, Any]:
    """Everything needed to rebuild the model: method, preset, hparams, direction, versions."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dfbk_version": dfbk.__version__,
        "torch_version": str(torch.__version__),
        "method": method.name,
        "module": spec.module,
        "preset": spec.preset,
        "hparams": method.hparams,
        "dataset": spec.dataset,
        "direction": spec.direction,
        "seed": spec.seed,
        "stage": spec.stage,
        "init_from": str(spec.init_from) if spec.init_from else None,
    }


def rebuild_method(payload: dict[str, Any], path: Path | str = "checkpoint"):
    """Build the method a checkpoint describes and load its weights (no config needed).

    Weights that do not fit the network its recorded hparams build are one TrainingError
    naming `path` (`fitting_weights`).
    """
    cls = get_method_class(payload["method"], payload.get("module"))
    method = cls(cls.inference_hparams(payload["hparams"]))  # stored hparams, not today's preset
    method.preset = payload["preset"]
    with fitting_weights(path):
        method.load_state_dict(payload["state"])
    method.eval()
    return method


@contextlib.contextmanager
def fitting_weights(path: Path | str) -> Iterator[None]:
    """Turn torch's multi-line load_state_dict failure (size mismatch, missing or unexpected
    keys) into one TrainingError naming the checkpoint and its first problem."""
    try:
        yield
    except (RuntimeError, KeyError, ValueError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        details = lines[1:] or lines or [type(err).__name__]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        raise TrainingError(
            f"{path}: its weights do not fit the network its recorded settings build "
            f"({details[0].rstrip('.')}{more}); an edited or foreign checkpoint - retrain it"
        ) from err


# ----- fingerprints ------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def store_identity(store_dir: Path) -> str:
    """SHA-256 of the slice store's metadata (store.json and manifest.csv).

    `prepare` rewrites both whenever it writes a store, and they hold its version, subjects,
    slice ranges, normalisation and per-slice foreground fractions; hashing the image arrays
    themselves (tens of GB for BraTS) at every start would cost minutes.
    """
    root = Path(store_dir)
    digest = hashlib.sha256()
    for name in ("store.json", "manifest.csv"):
        path = root / name
        if not path.exists():
            raise DataError(f"{path}: missing from slice store")
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def split_identity(split_path: Path) -> str:
    """SHA-256 of the split's subject lists (train/val/test), independent of file layout."""
    from dfbk.data.slices.splits import read_split

    return _sha256(_canonical(read_split(split_path)).encode())


def data_fingerprint(store_dir: Path, split_path: Path) -> dict[str, str]:
    """The data side of a fingerprint: which slice store and which split."""
    return {"store_sha256": store_identity(store_dir), "split_sha256": split_identity(split_path)}


def tensors_identity(*tensors: torch.Tensor | None) -> str | None:
    """SHA-256 of tensors' values (e.g. knowledge tokens and mask); None when all are None."""
    if all(t is None for t in tensors):
        return None
    return content_hash({str(i): t for i, t in enumerate(tensors)})


def fingerprint_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: stored -> current' for every key whose value differs (hashes shortened)."""

    def show(value: Any) -> str:
        text = _canonical(value)
        return text[:13] + "…" if len(text) > 40 else text

    out = []
    for k in sorted(set(stored) | set(current), key=str):
        old, new = stored.get(k), current.get(k)
        if _canonical(old) == _canonical(new):
            continue
        if isinstance(old, dict) and isinstance(new, dict):  # e.g. hparams: name the key
            out += [f"{k}.{d}" for d in fingerprint_differences(old, new)]
        else:
            out.append(f"{k}: {show(old)} -> {show(new)}")
    return out


def check_fingerprint(
    payload: dict[str, Any], store_dir: Path, split_path: Path, checkpoint: Path | None = None
) -> None:
    """Refuse to use a model on a slice store or split other than those it was trained with.

    A different split could put a training subject into the test set; a different store means
    other data or preprocessing. Raises DataError naming the checkpoint and what differs.
    """
    name = checkpoint or "checkpoint"
    stored = payload.get("fingerprint")
    if not isinstance(stored, dict):
        raise DataError(f"{name}: has no training fingerprint; retrain it with this dfbk")
    current = data_fingerprint(store_dir, split_path)
    diff = fingerprint_differences({k: stored.get(k) for k in current}, current)
    if diff:
        raise DataError(
            f"{name}: trained on other data than {store_dir} with {split_path} "
            f"({'; '.join(diff)}); its test subjects may have been trained on"
        )
