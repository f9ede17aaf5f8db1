"""prepare: raw subject volumes -> checked, normalised, cropped axial slices in a slice store.

Per subject: every requested modality (and label/mask) must share shape and affine; each
modality is normalised (`dfbk.data.normalise`); the contiguous axial range whose foreground
fraction reaches `min_foreground` is kept; slices are centre-cropped/zero-padded in-plane to
`size` around the foreground's bounding box. Subjects stream to disk one at a time (optionally
read by a process pool), so memory does not grow with the dataset.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from tqdm import tqdm

import dfbk
from dfbk.data.datasets import get_adapter
from dfbk.data.datasets.base import DatasetAdapter, SubjectFiles
from dfbk.data.datasets.foreground import otsu_foreground
from dfbk.data.io import read_volume, write_text
from dfbk.data.normalise import normalisation_name, normalise
from dfbk.data.outputs import claim_folder, mark, publish, staging_folder
from dfbk.data.slices.store import StoreWriter
from dfbk.errors import DataError


@dataclass
class PreparedSubject:
    name: str
    images: dict[str, np.ndarray]  # modality -> (S, H, W) float32 in [0, 1]
    mask: np.ndarray  # (S, H, W) uint8
    label: np.ndarray  # (S, H, W) uint8
    slices: np.ndarray  # (S,) axial indices in the canonical volume
    affine: np.ndarray  # affine of the prepared grid (x, y, slice)


def _same_geometry(reference, other) -> str | None:
    if reference.data.shape != other.data.shape:
        return f"shape {other.data.shape} != {reference.data.shape} of {reference.path.name}"
    if not np.allclose(reference.affine, other.affine, atol=1e-3):
        return f"affine differs from {reference.path.name}"
    return None


def _read(subject: str, path: Path):
    """read_volume, with the subject named in the error (the file alone may be ambiguous)."""
    try:
        return read_volume(path)
    except DataError as err:
        raise DataError(f"subject {subject}: {err}") from err


def _crop_or_pad(volume: np.ndarray, start: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """In-plane window [start, start+size) of an (X, Y, Z) volume, zero outside."""
    out = np.zeros((size[0], size[1], volume.shape[2]), dtype=volume.dtype)
    src, dst = [], []
    for axis in range(2):
        lo, hi = start[axis], start[axis] + size[axis]
        s_lo, s_hi = max(lo, 0), min(hi, volume.shape[axis])
        src.append(slice(s_lo, s_hi))
        dst.append(slice(s_lo - lo, s_hi - lo))
    out[dst[0], dst[1]] = volume[src[0], src[1]]
    return out


def prepare_subject(
    files: SubjectFiles,
    modalities: list[str],
    size: tuple[int, int],
    min_foreground: float,
    label_values: tuple[int, ...] = (),
) -> PreparedSubject:
    """Read, check, normalise and slice one subject; DataError names the subject and file."""
    problems = [v for k, v in files.problems.items() if k in modalities or k in ("label", "mask")]
    if problems:
        raise DataError(f"subject {files.name}: {'; '.join(problems)}")
    missing = [p for m, p in files.images.items() if m in modalities and not Path(p).exists()]
    if missing:
        raise DataError(
            f"subject {files.name}: missing modality file(s): {', '.join(map(str, missing))}"
        )
    volumes = {m: _read(files.name, files.images[m]) for m in modalities}
    reference = volumes[modalities[0]]
    extras = {}
    if files.label is not None:
        extras["label"] = _read(files.name, files.label)
    if files.mask is not None:
        extras["mask"] = _read(files.name, files.mask)
    for volume in [*volumes.values(), *extras.values()]:
        problem = _same_geometry(reference, volume)
        if problem:
            raise DataError(f"subject {files.name}: {volume.path}: {problem}")

    if "mask" in extras:
        foreground = extras["mask"].data > 0.5
    elif files.foreground == "otsu":  # raw scans, noise everywhere (dfbk.data.datasets.foreground)
        foreground = otsu_foreground([v.data for v in volumes.values()])
    else:  # skull-stripped data (BraTS): foreground = nonzero in any modality
        foreground = np.any([np.abs(v.data) > 0 for v in volumes.values()], axis=0)
    if not foreground.any():
        raise DataError(f"subject {files.name}: empty foreground")
    label = np.zeros(reference.data.shape, dtype=np.uint8)
    if "label" in extras:
        raw = np.rint(extras["label"].data)
        if not np.allclose(raw, extras["label"].data, atol=1e-3):  # float-stored labels are fine
            raise DataError(
                f"subject {files.name}: {files.label}: label volume has non-integer values"
            )
        unexpected = (
            sorted({int(v) for v in np.unique(raw)} - set(label_values)) if label_values else []
        )
        if unexpected:
            raise DataError(
                f"subject {files.name}: {files.label}: unexpected label values {unexpected}; "
                f"expected {list(label_values)}"
            )
        label = raw.astype(np.uint8)

    fraction = foreground.mean(axis=(0, 1))
    keep = np.flatnonzero(fraction >= min_foreground)
    if keep.size == 0:
        raise DataError(f"subject {files.name}: no axial slice has foreground >= {min_foreground}")
    z0, z1 = int(keep[0]), int(keep[-1]) + 1
    xs, ys = np.nonzero(foreground.any(axis=2))
    centre = ((xs.min() + xs.max() + 1) // 2, (ys.min() + ys.max() + 1) // 2)
    start = (int(centre[0] - size[0] // 2), int(centre[1] - size[1] // 2))

    def window(vol: np.ndarray) -> np.ndarray:  # (X, Y, Z) -> (S, H, W)
        return np.moveaxis(_crop_or_pad(vol[:, :, z0:z1], start, size), 2, 0)

    for modality, volume in volumes.items():
        inside = volume.data[foreground]
        if inside.min() == inside.max():  # blank or constant: nothing to learn, MR unscalable
            raise DataError(
                f"subject {files.name}: {volume.path}: modality {modality} is constant "
                f"({float(inside.min()):g}) over the foreground (blank or broken scan)"
            )
    images = {m: window(normalise(v.data, m, foreground)) for m, v in volumes.items()}
    shift = np.eye(4)
    shift[:3, 3] = [start[0], start[1], z0]
    return PreparedSubject(
        name=files.name,
        images=images,
        mask=window(foreground.astype(np.uint8)),
        label=window(label),
        slices=np.arange(z0, z1),
        affine=reference.affine @ shift,
    )


def _prepare_job(args):
    files, modalities, size, min_foreground, label_values, on_bad_case = args
    try:
        try:
            return prepare_subject(files, modalities, size, min_foreground, label_values), None
        except (ValueError, MemoryError) as err:  # numpy on a pathological volume
            raise DataError(f"subject {files.name}: {type(err).__name__}: {err}") from None
    except DataError as err:
        if on_bad_case == "skip":
            return None, (files.name, str(err))
        raise


def _refuse_case_collisions(subjects: list[SubjectFiles]) -> None:
    """Subject ids that differ only in letter case are one subject twice (or a split hazard)."""
    seen: dict[str, str] = {}
    for subject in subjects:
        other = seen.setdefault(subject.name.casefold(), subject.name)
        if other != subject.name:
            raise DataError(
                f"subject ids '{other}' and '{subject.name}' differ only in letter case; "
                "rename or remove one (case-insensitive file systems and readers conflate them)"
            )


def _refuse_duplicate(
    name: str,
    digests: dict[str, str],
    modalities: list[str],
    seen: dict[str, str],
    by_name: dict[str, SubjectFiles],
) -> None:
    """Refuse a subject whose prepared modality equals another subject's (one scan, two ids),
    which a subject-level split could put into both train and test."""
    for modality in modalities:
        other = seen.setdefault(digests[f"{modality}.f32"], name)
        if other != name:
            raise DataError(
                f"subjects '{other}' and '{name}' hold identical {modality} volumes "
                f"({by_name[other].images[modality]}, {by_name[name].images[modality]}); "
                "one scan under two ids could be split across train and test - remove one"
            )


def _inputs(subject: SubjectFiles, raw_dir: Path) -> list[dict]:
    """The raw files a subject was made from: path under raw_dir, size, modification time."""
    paths = [*subject.images.values(), subject.label, subject.mask]
    out = []
    for path in sorted({Path(p) for p in paths if p is not None}):
        try:
            info = path.stat()
        except OSError:
            continue
        try:
            name = str(path.relative_to(raw_dir))
        except ValueError:
            name = str(path)
        out.append({"path": name, "bytes": info.st_size, "mtime_ns": info.st_mtime_ns})
    return out


def _remove_stale(out_dir: Path, skipped_csv: Path | None) -> None:
    """Temporaries left by a killed or failed earlier run (atomic writes, the staging folder)."""
    shutil.rmtree(staging_folder(out_dir), ignore_errors=True)
    for path in [out_dir, skipped_csv]:
        if path is not None:
            for stale in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):
                stale.unlink(missing_ok=True)


def prepare_lock(out_dir: Path) -> FileLock:
    """The lock one `prepare` holds on `out_dir` for its whole run: `.{name}.lock` beside it
    (not inside: the folder is replaced), an flock the kernel drops if the process dies; the
    file is removed when the run ends."""
    folder = Path(out_dir).resolve()  # `.` and `..` have no name of their own
    return FileLock(folder.with_name(f".{folder.name}.lock"), blocking=False)


def prepare_dataset(
    dataset: str,
    raw_dir: Path,
    out_dir: Path,
    modalities: list[str],
    size: tuple[int, int],
    min_foreground: float = 0.05,
    on_bad_case: str = "error",
    skipped_csv: Path | None = None,
    jobs: int = 1,
    layout: dict | None = None,
) -> dict:
    """Build the slice store for `dataset` in `out_dir` atomically; returns its metadata.

    `layout` describes a YAML-defined dataset's files (dfbk.data.datasets.paired_nifti); None
    for the built-in layouts. A second prepare into the same folder while one runs is refused in one
    line: the two would remove each other's temporaries and could leave a store whose arrays
    come from one run and whose description from the other.
    """
    out_dir = Path(out_dir)
    lock = prepare_lock(out_dir)
    try:
        Path(lock.lock_file).parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        raise DataError(
            f"{out_dir}: another dfbk prepare is writing this slice store; wait for it to end"
        ) from None
    except OSError as err:
        raise DataError(f"{lock.lock_file}: cannot create lock ({err.strerror or err})") from None
    try:
        return _prepare_unlocked(
            dataset, raw_dir, out_dir, modalities, size, min_foreground, on_bad_case,
            skipped_csv, jobs, layout,
        )  # fmt: skip
    finally:  # unlinked while held: a prepare that opened it meanwhile sees a dead inode
        Path(lock.lock_file).unlink(missing_ok=True)  # and retries on a fresh file (filelock)
        lock.release()


def _prepare_unlocked(
    dataset: str,
    raw_dir: Path,
    out_dir: Path,
    modalities: list[str],
    size: tuple[int, int],
    min_foreground: float,
    on_bad_case: str,
    skipped_csv: Path | None,
    jobs: int,
    layout: dict | None,
) -> dict:
    """`prepare_dataset`'s work, run while it holds `prepare_lock`."""
    adapter: DatasetAdapter = get_adapter(dataset, layout)
    adapter.check_modalities(modalities)
    raw_dir = Path(raw_dir)
    out_dir = claim_folder(out_dir, "prepare", {"raw folder": raw_dir})  # never the raw data
    subjects = adapter.find_subjects(raw_dir)
    tmp_dir = staging_folder(out_dir)
    _remove_stale(out_dir, skipped_csv)
    try:
        try:
            tmp_dir.mkdir(parents=True)
            meta, skipped = _write_store(
                dataset,
                raw_dir,
                tmp_dir,
                subjects,
                adapter,
                modalities,
                size,
                min_foreground,
                on_bad_case,
                jobs,
            )
            if skipped_csv is not None:
                rows = [f'{n},"{r.replace(chr(34), chr(39))}"' for n, r in skipped]
                write_text(Path(skipped_csv), "\n".join(["subject,reason", *rows]) + "\n")
            mark(tmp_dir, "prepare")
            publish(tmp_dir, out_dir, "prepare")
        except OSError as err:  # disk full, permissions: one line naming the path
            where = err.filename or tmp_dir
            raise DataError(
                f"{where}: cannot write the slice store ({err.strerror or err})"
            ) from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return meta


def _write_store(
    dataset: str,
    raw_dir: Path,
    tmp_dir: Path,
    subjects: list[SubjectFiles],
    adapter: DatasetAdapter,
    modalities: list[str],
    size: tuple[int, int],
    min_foreground: float,
    on_bad_case: str,
    jobs: int,
) -> tuple[dict, list[tuple[str, str]]]:
    """Stream every usable subject into the array files of `tmp_dir`; returns (meta, skipped)."""
    _refuse_case_collisions(subjects)
    skipped, inputs = [], {}
    args = [
        (s, modalities, tuple(size), min_foreground, adapter.label_values, on_bad_case)
        for s in subjects
    ]
    writer = StoreWriter(tmp_dir, modalities, tuple(size))
    seen: dict[str, str] = {}  # digest of a prepared modality -> subject
    pool = get_context("spawn").Pool(jobs) if jobs > 1 else None
    try:
        results = pool.imap(_prepare_job, args) if pool else map(_prepare_job, args)
        by_name = {s.name: s for s in subjects}
        for prepared, problem in tqdm(results, total=len(args), desc=f"prepare {dataset}"):
            if problem is not None:
                skipped.append(problem)
                continue
            digests = writer.add(
                prepared.name,
                prepared.images,
                prepared.mask,
                prepared.label,
                prepared.affine,
                prepared.slices,
            )
            _refuse_duplicate(prepared.name, digests, modalities, seen, by_name)
            inputs[prepared.name] = _inputs(by_name[prepared.name], raw_dir)
    finally:
        if pool:
            pool.terminate()
        writer.close()
    if not writer.subjects:
        raise DataError(f"{raw_dir}: no usable subject (all {len(skipped)} skipped)")
    provenance = {
        "raw_dir": str(raw_dir),
        "inputs": inputs,
        "config": {
            "modalities": list(modalities),
            "size": list(size),
            "min_foreground": min_foreground,
            "on_bad_case": on_bad_case,
            "label_values": list(adapter.label_values),
            "adapter": adapter.name,
        },
        "code_version": dfbk.__version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    meta = writer.finish(
        dataset,
        {m: normalisation_name(m) for m in modalities},
        min_foreground,
        [name for name, _ in skipped],
        provenance,
    )
    return meta, skipped
