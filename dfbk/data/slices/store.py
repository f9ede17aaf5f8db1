"""The slice store: all axial slices of a dataset, one memory-mapped array per modality.

Layout of `results/prepare/{dataset}/`:
- `{modality}.f32`: raw little-endian float32, shape (N, H, W), values in [0, 1];
- `mask.u8` (foreground) and `label.u8` (lesion labels, 0 where none), shape (N, H, W);
- `manifest.csv`: one row per slice: index, subject, slice (axial index in the canonical
  volume), foreground_fraction, lesion_fraction;
- `store.json`: the data contract (modalities, range, normalisation, size, dtype, N), per
  subject its slice range, the affine of the prepared grid and the digest of its slab of each
  array file (`subject_digest`), the SHA-256 of each whole array file (`digests`; both computed
  while writing) and `provenance`: the raw files each subject was made from (path, bytes,
  mtime), the prepare settings, the code version and the creation time.

`SliceStore.verify` checks the bytes a command is about to read against those digests, subject
by subject, so a number is never computed from content that changed after prepare (an edited
array, a store mixed from two prepares, an edited `size`). A subject's digest covers its array
name, dtype and (S, H, W) shape as well as its bytes, so it costs one pass over the slabs read
and no more; stores written before per-subject digests fall back to the whole-file `digests`.

`store_fingerprint` hashes store.json (less `provenance`) and manifest.csv: it changes when
the prepared content or the contract changes, not when a store is rebuilt identically from
touched files, and costs no pass over the data.
Raw arrays rather than `.npy` so prepare can stream subjects to disk without holding the
dataset in memory; `np.memmap` then gives O(1) random access to any slice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from dfbk.errors import DataError

STORE_VERSION = 1
FINGERPRINT_IGNORES = ("provenance",)  # where and when it was made, not what it holds
VERIFY_CHUNK_BYTES = 16 << 20  # whole-file verification streams the file in pieces this big


def subject_digest(name: str, slab: np.ndarray) -> str:
    """'sha256:<hex>' of one subject's slab of array file `name`, bound to its dtype and shape.

    Hashing "name|dtype|SxHxW" before the bytes makes an edited `size` or slice range, or two
    array files swapped, a mismatch although the bytes are the same.
    """
    slab = np.ascontiguousarray(slab)
    header = f"{name}|{slab.dtype.str}|{'x'.join(str(n) for n in slab.shape)}\n"
    digest = hashlib.sha256(header.encode())
    digest.update(memoryview(slab).cast("B"))  # no copy of a memmap slab
    return f"sha256:{digest.hexdigest()}"


def array_file(array: str) -> str:
    """The store file holding `array`: a modality's `.f32`, or `mask.u8` / `label.u8`."""
    return f"{array}.u8" if array in ("mask", "label") else f"{array}.f32"


def store_fingerprint(store_dir: Path) -> str:
    """'sha256:<hex>' of the store's contract and content digests (store.json less
    provenance, plus manifest.csv); cheap, so a trainer can check it at every start/resume."""
    root = Path(store_dir)
    meta_path = root / "store.json"
    try:
        meta = json.loads(meta_path.read_text())
        manifest = (root / "manifest.csv").read_bytes()
    except FileNotFoundError as err:
        raise DataError(f"{err.filename}: slice store file not found") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{meta_path}: unreadable slice store ({err})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: not a slice store description")
    contract = {k: v for k, v in meta.items() if k not in FINGERPRINT_IGNORES}
    digest = hashlib.sha256(json.dumps(contract, sort_keys=True).encode())
    digest.update(b"\0manifest.csv\0")
    digest.update(manifest)
    return f"sha256:{digest.hexdigest()}"


class SliceStore:
    """Read-only view of a prepared dataset."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        meta_path = self.root / "store.json"
        if not meta_path.exists():
            raise DataError(f"{meta_path}: slice store not found (run the prepare rule first)")
        try:
            self.meta = json.loads(meta_path.read_text())
            version = self.meta.get("version")
        except (OSError, ValueError, AttributeError) as err:
            raise DataError(f"{meta_path}: unreadable slice store ({err})") from None
        if version != STORE_VERSION:
            raise DataError(f"{meta_path}: store version {version} unsupported")
        try:
            self.size: tuple[int, int] = tuple(int(v) for v in self.meta["size"])
            self.n_slices: int = int(self.meta["n_slices"])
            self.modalities: list[str] = list(self.meta["modalities"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{meta_path}: incomplete slice store description ({err!r})") from None
        self._verified: set[tuple[str, str]] = set()  # (array file, subject) checked by verify

    @cached_property
    def fingerprint(self) -> str:
        """`store_fingerprint` of this store (see there)."""
        return store_fingerprint(self.root)

    def verify(self, subjects: Iterable[str], arrays: Iterable[str]) -> None:
        """Refuse content that differs from what store.json records, before it is used.

        `arrays`: modalities, "mask" and/or "label"; only their slabs of `subjects` are read
        and hashed (`subject_digest`). A store without per-subject digests is checked whole
        file by whole file against `digests`, streamed; one without either is refused.
        DataError names the file and, where known, the subject.
        """
        subjects = list(subjects)
        for array in arrays:
            name = array_file(array)
            memmap = self.images(array) if name.endswith(".f32") else self._array(name, "u1")
            for subject in subjects:
                if (name, subject) in self._verified:
                    continue
                recorded = self._subject_digests(subject).get(name)
                if recorded is None:
                    self._verify_file(name)
                    break
                start, stop = self.subject_range(subject)
                if subject_digest(name, memmap[start:stop]) != recorded:
                    raise DataError(
                        f"{self.root / name}: slices {start}-{stop - 1} (subject '{subject}') "
                        f"differ from the digest in {self.root / 'store.json'}; the store was "
                        "changed after prepare (or mixes two prepares) - prepare it again"
                    )
                self._verified.add((name, subject))

    def _subject_digests(self, subject: str) -> dict[str, str]:
        self.subject_range(subject)  # a subject not in the store: one line naming it
        digests = self.meta["subjects"][subject].get("digests")
        return digests if isinstance(digests, dict) else {}

    def _verify_file(self, name: str) -> None:
        """Whole-file check of an older store's array against its recorded SHA-256."""
        path = self.root / name
        recorded = (self.meta.get("digests") or {}).get(name)
        if recorded is None:
            raise DataError(
                f"{self.root / 'store.json'}: records no digest of {name}, so its content "
                "cannot be verified (a store from an older dfbk); prepare it again"
            )
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(VERIFY_CHUNK_BYTES):
                    digest.update(chunk)
        except OSError as err:
            raise DataError(f"{path}: cannot read the slice store ({err.strerror})") from None
        if f"sha256:{digest.hexdigest()}" != recorded:
            raise DataError(
                f"{path}: content differs from the digest in {self.root / 'store.json'}; the "
                "store was changed after prepare (or mixes two prepares) - prepare it again"
            )
        self._verified.update((name, s) for s in self.subjects)

    def _array(self, name: str, dtype: str) -> np.ndarray:
        path = self.root / name
        if not path.exists():
            raise DataError(f"{path}: missing from slice store")
        expected = self.n_slices * self.size[0] * self.size[1] * np.dtype(dtype).itemsize
        if path.stat().st_size != expected:
            raise DataError(f"{path}: size {path.stat().st_size} bytes, expected {expected}")
        return np.memmap(path, dtype=dtype, mode="r", shape=(self.n_slices, *self.size))

    def images(self, modality: str) -> np.ndarray:
        """(N, H, W) float32 memmap of `modality` in [0, 1]."""
        if modality not in self.modalities:
            raise DataError(
                f"{self.root}: modality '{modality}' not in store; has {', '.join(self.modalities)}"
            )
        return self._array(f"{modality}.f32", "<f4")

    @cached_property
    def mask(self) -> np.ndarray:
        return self._array("mask.u8", "u1")

    @cached_property
    def label(self) -> np.ndarray:
        return self._array("label.u8", "u1")

    @cached_property
    def manifest(self) -> pd.DataFrame:
        return pd.read_csv(self.root / "manifest.csv")

    @property
    def subjects(self) -> list[str]:
        return list(self.meta["subjects"])

    def subject_range(self, subject: str) -> tuple[int, int]:
        """[start, stop) slice indices of `subject` in the store."""
        try:
            info = self.meta["subjects"][subject]
        except KeyError as err:
            raise DataError(f"{self.root}: subject '{subject}' not in store") from err
        return int(info["start"]), int(info["stop"])

    def subject_affine(self, subject: str) -> np.ndarray:
        """Voxel-to-world affine of the subject's prepared (cropped/padded) grid."""
        return np.array(self.meta["subjects"][subject]["affine"], dtype=float)

    def indices(self, subjects: list[str]) -> np.ndarray:
        """Store indices of every slice of `subjects`, in subject then slice order."""
        parts = [np.arange(*self.subject_range(s)) for s in subjects]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=int)

    def contract(self, modality: str) -> dict:
        """What a model trained on this modality expects: range, normalisation, size."""
        contract = {
            "modality": modality,
            "range": [0.0, 1.0],
            "norm": self.meta["normalisation"][modality],
            "size": list(self.size),
        }
        spacing = self.in_plane_spacing()
        if spacing is not None:  # `dfbk translate` resamples other inputs to it and back
            contract["spacing"] = spacing
        return contract

    def in_plane_spacing(self) -> list[float] | None:
        """Median in-plane voxel size (mm) of the stored slices, from the subjects' affines
        (columns 0 and 1 of the RAS affine of the (H, W, S) grid); None without affines."""
        sizes = [
            np.linalg.norm(np.asarray(info["affine"], dtype=float)[:3, :2], axis=0)
            for info in self.meta["subjects"].values()
            if info.get("affine") is not None
        ]
        if not sizes:
            return None
        return [round(float(v), 3) for v in np.median(np.stack(sizes), axis=0)]


class StoreWriter:
    """The one writer of the slice-store format: array files appended subject by subject, with
    running SHA-256s (whole files, and each subject's slab), then manifest.csv and store.json.

    A failed write (disk full) is a DataError naming the file. The digests go into store.json, so
    the store's fingerprint follows its content, not file dates, and `SliceStore.verify` can
    check what a command reads.
    """

    def __init__(self, folder: Path, modalities: list[str], size: tuple[int, int]) -> None:
        self.folder, self.modalities, self.size = Path(folder), list(modalities), tuple(size)
        names = [f"{m}.f32" for m in modalities] + ["mask.u8", "label.u8"]
        self.paths = {name: self.folder / name for name in names}
        self.hashes = {name: hashlib.sha256() for name in names}
        self.rows: list[list] = []
        self.subjects: dict[str, dict] = {}
        self.index = 0
        self.handles: dict[str, object] = {}
        for name, path in self.paths.items():
            try:
                self.handles[name] = open(path, "wb")  # noqa: SIM115 (closed in close())
            except OSError as err:
                self.close()
                raise DataError(f"{path}: cannot create ({err.strerror or err})") from None

    def _write(self, name: str, array: np.ndarray) -> str:
        data = np.ascontiguousarray(array).tobytes()
        try:
            self.handles[name].write(data)
        except OSError as err:
            raise DataError(
                f"{self.paths[name]}: cannot write the slice store ({err.strerror or err})"
            ) from None
        self.hashes[name].update(data)
        return subject_digest(name, array)

    def add(
        self,
        subject: str,
        images: dict[str, np.ndarray],
        mask: np.ndarray,
        label: np.ndarray,
        affine: np.ndarray,
        slices: Iterable[int] | None = None,
    ) -> dict[str, str]:
        """Append one subject's (S, H, W) slabs; returns their `subject_digest`s by file.

        `slices` are the axial indices the slabs came from (default 0..S-1), for the manifest.
        """
        digests = {
            f"{m}.f32": self._write(f"{m}.f32", np.asarray(images[m], dtype="<f4"))
            for m in self.modalities
        }
        digests["mask.u8"] = self._write("mask.u8", np.asarray(mask, dtype="u1"))
        digests["label.u8"] = self._write("label.u8", np.asarray(label, dtype="u1"))
        n, area = len(mask), float(self.size[0] * self.size[1])
        axial = list(range(n)) if slices is None else [int(k) for k in slices]
        for k in range(n):
            self.rows.append(
                [
                    self.index + k,
                    subject,
                    axial[k],
                    (mask[k] > 0).sum() / area,
                    (label[k] > 0).sum() / area,
                ]
            )
        self.subjects[subject] = {
            "start": self.index,
            "stop": self.index + n,
            "affine": np.asarray(affine).tolist(),
            "digests": digests,
        }
        self.index += n
        return digests

    def close(self) -> None:
        problems = []
        for name, handle in self.handles.items():
            try:
                handle.close()
            except OSError as err:
                problems.append(f"{self.paths[name]}: cannot write ({err.strerror or err})")
        self.handles = {}
        if problems:
            raise DataError(problems[0])

    def finish(
        self,
        dataset: str,
        normalisation: dict[str, str],
        min_foreground: float,
        skipped: list[str],
        provenance: dict | None = None,
    ) -> dict:
        """Write manifest.csv and store.json (last: a store without it is unfinished)."""
        import csv

        from dfbk.data.io import write_text

        with open(self.folder / "manifest.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "subject", "slice", "foreground_fraction", "lesion_fraction"])
            writer.writerows(self.rows)
        meta = {
            "version": STORE_VERSION,
            "dataset": dataset,
            "modalities": list(self.modalities),
            "size": list(self.size),
            "n_slices": self.index,
            "range": [0.0, 1.0],
            "normalisation": normalisation,
            "min_foreground": min_foreground,
            "subjects": self.subjects,
            "skipped": skipped,
            "digests": {name: f"sha256:{h.hexdigest()}" for name, h in self.hashes.items()},
        }
        if provenance is not None:
            meta["provenance"] = provenance
        write_text(self.folder / "store.json", json.dumps(meta, indent=1) + "\n")
        return meta


def write_store(
    root: Path,
    images: dict[str, np.ndarray],
    mask: np.ndarray,
    label: np.ndarray,
    subject_slices: dict[str, int],
    affines: dict[str, np.ndarray] | None = None,
    normalisation: dict[str, str] | None = None,
    dataset: str = "custom",
) -> SliceStore:
    """Write in-memory arrays as a slice store (tests, small custom datasets).

    images: modality -> (N, H, W) in [0, 1]; subject_slices: subject -> number of consecutive
    slices, in order, summing to N.
    """
    from dfbk.data.normalise import normalisation_name

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n, h, w = next(iter(images.values())).shape
    if sum(subject_slices.values()) != n:
        raise ValueError(
            f"subject slice counts sum to {sum(subject_slices.values())}, arrays hold {n}"
        )
    writer = StoreWriter(root, list(images), (h, w))
    start = 0
    try:
        for name, count in subject_slices.items():
            part = slice(start, start + count)
            slabs = {m: a[part] for m, a in images.items()}
            affine = (affines or {}).get(name, np.eye(4))
            writer.add(name, slabs, mask[part], label[part], affine)
            start += count
    finally:
        writer.close()
    writer.finish(dataset, normalisation or {m: normalisation_name(m) for m in images}, 0.0, [])
    return SliceStore(root)
