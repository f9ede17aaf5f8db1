"""Dataset adapters: which modalities a dataset has and where each subject's files are.

An adapter only finds files; reading, checking and normalising are shared
(`dfbk.data.slices.prepare`),
so the phantom, BraTS, ISLES and SynthRAD go through the same code path. Adapters register by
name, like methods, and unknown names fail listing the known ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from dfbk.errors import ConfigError, DataError


@dataclass
class SubjectFiles:
    """Paths of one subject's volumes; `label` and `mask` are optional.

    `problems` says what an adapter found wrong with the case folder itself, keyed by the
    modality, "label" or "mask" concerned (an ambiguous or missing file); prepare refuses or
    skips such a subject like any other bad case when the key is one it needs.
    `foreground` is how prepare finds the foreground when there is no mask file: "nonzero"
    (skull-stripped data) or "otsu" (raw scans; dfbk.data.datasets.foreground).
    """

    name: str
    images: dict[str, Path]
    label: Path | None = None
    mask: Path | None = None
    missing: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    foreground: str = "nonzero"


class DatasetAdapter(ABC):
    """Finds subjects in a raw dataset folder."""

    name: str = ""
    modalities: tuple[str, ...] = ()
    # Which modality's nonzero voxels define the foreground when no mask file exists.
    label_values: tuple[int, ...] = ()

    @abstractmethod
    def find_subjects(self, raw_dir: Path) -> list[SubjectFiles]:
        """All subjects in `raw_dir`, sorted by name; missing files listed in `.missing`."""

    def check_modalities(self, requested: list[str]) -> None:
        """Refuse modalities this dataset does not have (e.g. DWI on BraTS)."""
        unknown = [m for m in requested if m not in self.modalities]
        if unknown:
            raise ConfigError(
                f"dataset '{self.name}' has no modality {', '.join(map(repr, unknown))}; "
                f"it has: {', '.join(self.modalities)}"
            )


class CaseFolderAdapter(DatasetAdapter):
    """BraTS-style layout: `{raw}/{case}/{case}-{modality}.nii.gz`, plus `-seg` and `-mask`."""

    suffix = ".nii.gz"
    label_suffix: str | None = "seg"
    mask_suffix: str | None = None

    def find_subjects(self, raw_dir: Path) -> list[SubjectFiles]:
        raw_dir = Path(raw_dir)
        if not raw_dir.is_dir():
            raise DataError(f"{raw_dir}: dataset folder not found")
        subjects = []
        for case in sorted(
            p for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            images, missing = {}, []
            for modality in self.modalities:
                path = case / f"{case.name}-{modality}{self.suffix}"
                images[modality] = path
                if not path.exists():
                    missing.append(str(path))
            label = (
                case / f"{case.name}-{self.label_suffix}{self.suffix}"
                if self.label_suffix
                else None
            )
            mask = (
                case / f"{case.name}-{self.mask_suffix}{self.suffix}" if self.mask_suffix else None
            )
            subjects.append(
                SubjectFiles(
                    name=case.name,
                    images=images,
                    label=label if label is not None and label.exists() else None,
                    mask=mask if mask is not None and mask.exists() else None,
                    missing=missing,
                )
            )
        if not subjects:
            raise DataError(f"{raw_dir}: no subject folders found")
        return subjects


class PhantomAdapter(CaseFolderAdapter):
    """The synthetic multi-contrast head phantom (dfbk.data.phantom.anatomy), BraTS-like on disk."""

    name = "phantom"
    modalities = ("t1n", "t1c", "t2w", "t2f", "pd", "dwi", "ct")
    label_values = (0, 1, 2, 3, 4)
    mask_suffix = "mask"


ADAPTERS: dict[str, type[DatasetAdapter]] = {"phantom": PhantomAdapter}


def register_adapter(cls: type[DatasetAdapter]) -> type[DatasetAdapter]:
    """Class decorator: make a dataset layout buildable by its `name`."""
    ADAPTERS[cls.name] = cls
    return cls
