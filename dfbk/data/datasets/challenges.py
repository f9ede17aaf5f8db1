"""Adapters for the paper's three datasets, each in its publisher's layout as extracted.

- BraTS 2023 adult glioma (Synapse syn51514105): `BraTS-GLI-NNNNN-NNN/` case folders holding
  `BraTS-GLI-NNNNN-NNN-{t1n,t1c,t2w,t2f,seg}.nii.gz`; labels 1 necrosis, 2 oedema,
  3 enhancing tumour; skull-stripped, so the foreground is the non-zero voxels.
- ISLES 2015 SISS (Zenodo 17736412): numbered case folders holding
  `VSD.Brain.XX.O.MR_{Flair,T1,T2,DWI}.<id>/` and `VSD.Brain.XX.O.OT.<id>/` (the lesion label),
  each with one `.nii`, `.nii.gz` or `.mha` file. Modalities are matched by substring of the
  folder or file name, never by the exact name, since the ids differ per case and release.
- SynthRAD 2023 Task 1 (Zenodo 10.5281/zenodo.7260705): `Task1/brain/1B{A,B,C}NNN/` holding
  `mr.nii.gz`, `ct.nii.gz` and `mask.nii.gz` (the dilated body outline, used as foreground).
  Only the brain region is in the paper's grid; pelvis cases (`1P…`) are not listed.
Case folders are searched a few levels deep, so it does not matter whether the archive's top
folder (e.g. `ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData/`) is kept.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from dfbk.data.datasets.base import DatasetAdapter, SubjectFiles, register_adapter
from dfbk.data.io import ITK_SUFFIXES, NIFTI_SUFFIXES
from dfbk.errors import DataError

SEARCH_DEPTH = 4
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES


def find_case_dirs(raw_dir: Path, is_case: Callable[[Path], bool]) -> list[Path]:
    """Folders under `raw_dir` (up to SEARCH_DEPTH deep) for which `is_case` holds, sorted.

    Hidden folders are skipped and a case folder is not searched further.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: dataset folder not found")
    found = []
    for root, dirs, _ in os.walk(raw_dir):
        here = Path(root)
        depth = len(here.relative_to(raw_dir).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if depth and is_case(here):
            found.append(here)
            dirs[:] = []
        elif depth >= SEARCH_DEPTH:
            dirs[:] = []
    return sorted(found, key=lambda p: p.relative_to(raw_dir).as_posix())


def _unique_names(raw_dir: Path, cases: list[Path], name: Callable[[Path], str]) -> list[str]:
    names = [name(case) for case in cases]
    seen: dict[str, Path] = {}
    for case, subject in zip(cases, names, strict=True):
        if subject in seen:
            raise DataError(
                f"{raw_dir}: subject '{subject}' found twice ({seen[subject]} and {case}); "
                "keep one copy of the dataset in the folder"
            )
        seen[subject] = case
    if not names:
        raise DataError(f"{raw_dir}: no case folders of this dataset's layout found")
    return names


def _fixed_files(
    case: Path, subject: str, images: dict[str, Path], label: Path | None, mask: Path | None
) -> SubjectFiles:
    """SubjectFiles for a layout with fixed file names; absent label/mask are problems."""
    problems = {
        kind: f"missing {kind} file {path}"
        for kind, path in (("label", label), ("mask", mask))
        if path is not None and not path.exists()
    }
    return SubjectFiles(
        name=subject,
        images=images,
        label=label,
        mask=mask,
        missing=[str(p) for p in images.values() if not p.exists()],
        problems=problems,
    )


@register_adapter
class Brats2023Adapter(DatasetAdapter):
    """BraTS 2023 GLI training data: `BraTS-GLI-NNNNN-NNN/BraTS-GLI-NNNNN-NNN-{mod}.nii.gz`."""

    name = "brats2023"
    modalities = ("t1n", "t1c", "t2w", "t2f")
    label_values = (0, 1, 2, 3)
    case_pattern = re.compile(r"BraTS-GLI-\d{5}-\d{3}")

    def find_subjects(self, raw_dir: Path) -> list[SubjectFiles]:
        cases = find_case_dirs(raw_dir, lambda p: bool(self.case_pattern.fullmatch(p.name)))
        names = _unique_names(Path(raw_dir), cases, lambda p: p.name)
        return [
            _fixed_files(
                case,
                name,
                {m: case / f"{name}-{m}.nii.gz" for m in self.modalities},
                case / f"{name}-seg.nii.gz",
                None,
            )
            for case, name in zip(cases, names, strict=True)
        ]


@register_adapter
class SynthRad2023Adapter(DatasetAdapter):
    """SynthRAD 2023 Task 1 brain: `1B{A,B,C}NNN/{mr,ct,mask}.nii.gz` (mask = body outline)."""

    name = "synthrad2023"
    modalities = ("mr", "ct")
    case_pattern = re.compile(r"1B[ABC]\d{3}")

    def find_subjects(self, raw_dir: Path) -> list[SubjectFiles]:
        cases = find_case_dirs(raw_dir, lambda p: bool(self.case_pattern.fullmatch(p.name)))
        names = _unique_names(Path(raw_dir), cases, lambda p: p.name)
        return [
            _fixed_files(
                case,
                name,
                {m: case / f"{m}.nii.gz" for m in self.modalities},
                None,
                case / "mask.nii.gz",
            )
            for case, name in zip(cases, names, strict=True)
        ]


# ISLES: modality -> (substrings that select it, substrings that exclude it), lower case.
ISLES_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "t2f": (("mr_flair", "flair"), ()),
    "t1n": (("mr_t1",), ("mr_t1c", "t1gd")),
    "t2w": (("mr_t2",), ()),
    "dwi": (("mr_dwi", "dwi"), ()),
}
ISLES_LABEL = re.compile(r"(^|[._\-])OT([._\-]|$)")  # ".OT." in VSD.Brain.XX.O.OT.<id>


def _image_files(case: Path) -> list[Path]:
    """Image files in a case folder or one level below it (the per-sequence folders)."""
    files = [p for p in case.iterdir() if p.is_file()]
    for sub in (p for p in case.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files += [p for p in sub.iterdir() if p.is_file()]
    return sorted(p for p in files if p.name.lower().endswith(IMAGE_SUFFIXES))


def _describe(path: Path, case: Path) -> str:
    """The name used for matching: the sequence folder's name, or the file's own name."""
    return path.parent.name if path.parent != case else path.name


@register_adapter
class Isles2015Adapter(DatasetAdapter):
    """ISLES 2015 SISS: `<case>/VSD.Brain.XX.O.MR_<Seq>.<id>/<file>` plus an `OT` label."""

    name = "isles2015"
    modalities = ("t2f", "t1n", "t2w", "dwi")
    label_values = (0, 1)

    @staticmethod
    def is_case(folder: Path) -> bool:
        names = [p.name for p in folder.iterdir()]
        return any(".MR_" in n or ISLES_LABEL.search(n) for n in names)

    def _match(self, case: Path, files: list[Path], modality: str) -> tuple[Path | None, str]:
        wanted, excluded = ISLES_KEYS[modality]
        hits = []
        for path in files:
            text = _describe(path, case).lower()
            if any(w in text for w in wanted) and not any(x in text for x in excluded):
                hits.append(path)
        if len(hits) > 1:
            return None, f"several files match {modality} ({', '.join(map(str, hits))})"
        return (hits[0] if hits else None), ""

    def _subject(self, case: Path, name: str) -> SubjectFiles:
        files = _image_files(case)
        images, missing, problems = {}, [], {}
        for modality in self.modalities:
            path, problem = self._match(case, files, modality)
            if problem:
                problems[modality] = problem
            elif path is None:
                path = case / f"<no file matching {'/'.join(ISLES_KEYS[modality][0])}>"
                missing.append(str(path))
            images[modality] = path if path is not None else case / "<ambiguous>"
        labels = [p for p in files if ISLES_LABEL.search(_describe(p, case))]
        if len(labels) != 1:
            problems["label"] = (
                f"expected one lesion label (a name containing 'OT') in {case}, found "
                f"{len(labels)}" + (f": {', '.join(map(str, labels))}" if labels else "")
            )
        label = labels[0] if len(labels) == 1 else None
        return SubjectFiles(name, images, label, None, missing, problems)

    def find_subjects(self, raw_dir: Path) -> list[SubjectFiles]:
        raw_dir = Path(raw_dir)
        cases = find_case_dirs(raw_dir, self.is_case)
        names = _unique_names(raw_dir, cases, lambda p: "-".join(p.relative_to(raw_dir).parts))
        return [self._subject(case, name) for case, name in zip(cases, names, strict=True)]
