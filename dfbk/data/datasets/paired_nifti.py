"""A dataset defined in YAML, no code: where each modality's file is, per case.

nnU-Net users add a dataset by laying out folders and a `dataset.json`; here the layout is
the `layout:` of a dataset in the config (or a YAML file given to `dfbk prepare --layout`):

    layout:
      case: "IXI\\d{3}-[A-Za-z]+-\\d{4}"        # what {case} matches (default: one path part)
      modalities:
        t2: {pattern: "IXI-T2/{case}-T2.nii.gz"}
        pd: {pattern: "IXI-PD/{case}-PD.nii.gz", normalisation: mr}
      label: null                          # e.g. "{case}/{case}_seg.nii.gz"
      label_values: [0, 1]                 # values a label may hold (checked by prepare)
      mask: null                           # e.g. "{case}/{case}_brainmask.nii.gz"
      foreground: otsu                     # nonzero | otsu | mask

A pattern is a path under the dataset folder; `{case}` names the subject (it may appear more
than once, e.g. "{case}/{case}_t1.nii.gz") and `*` matches within one path part. Every
pattern must find one file per case; a case missing a modality is reported like any other
bad case. Registration is out of scope: the modalities of a case must already share one voxel
grid (shape and affine), which `dfbk prepare` checks. Normalisation follows the modality
name everywhere in the pipeline (a modality called `ct` is HU-windowed, every other one is MR
percentile-scaled), so `normalisation:` states that expectation and a contradiction is refused.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import regex

from dfbk.data.datasets.base import DatasetAdapter, SubjectFiles
from dfbk.data.datasets.foreground import FOREGROUND_RULES
from dfbk.data.normalise import is_ct
from dfbk.errors import ConfigError, DataError

MODALITY_NAME = re.compile(r"[a-z0-9]+")
LAYOUT_KEYS = {"case", "modalities", "label", "label_values", "mask", "foreground"}
MAX_DEPTH = 6
# A file path is matched in microseconds; a `case` pattern that backtracks catastrophically
# (`(a|aa)+b` against a long run of a's) is stopped at this bound and refused. The
# `regex` package's matcher takes a timeout; Python's `re` has none, and RE2 (linear time)
# cannot express the `(?P=case)` back-reference a repeated {case} needs.
MATCH_SECONDS = 1.0


def _label_values(values: Any) -> tuple[int, ...]:
    """`label_values` as integers 0-255 (the store keeps labels as uint8), else a ConfigError."""
    key = "layout.label_values"
    if values is None:
        return ()
    if not isinstance(values, list | tuple) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and v in range(256) for v in values
    ):
        raise ConfigError(f"{key}: expected a list of integers from 0 to 255, got {values!r}")
    return tuple(int(v) for v in values)  # 2.0 (a whole number written as a float) is 2


def _pattern_regex(pattern: str, case: str, key: str) -> regex.Pattern[str]:
    """'{case}/{case}-t1.nii.gz' -> a regex over POSIX paths; the first {case} is captured."""
    if "{case}" not in pattern:
        raise ConfigError(f"{key}: '{pattern}' has no {{case}} placeholder")
    if pattern.startswith("/") or ".." in Path(pattern).parts:
        raise ConfigError(f"{key}: '{pattern}' must be a relative path inside the dataset folder")
    parts, first = [], True
    for piece in re.split(r"(\{case\}|\*)", pattern):
        if piece == "{case}":
            parts.append(f"(?P<case>{case})" if first else "(?P=case)")
            first = False
        elif piece == "*":
            parts.append("[^/]*")
        else:
            parts.append(re.escape(piece))
    try:
        return regex.compile("".join(parts))
    except regex.error as err:
        raise ConfigError(f"layout.case: not a regular expression ({err})") from err


def _check_layout(name: str, layout: Any) -> dict[str, Any]:
    """The layout with defaults filled; ConfigError naming the key for anything wrong."""
    key = "layout"
    if not isinstance(layout, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(layout).__name__}")
    unknown = sorted(set(layout) - LAYOUT_KEYS)
    if unknown:
        raise ConfigError(
            f"{key}: unknown key(s) {', '.join(unknown)}; known: {sorted(LAYOUT_KEYS)}"
        )
    modalities = layout.get("modalities")
    if not isinstance(modalities, dict) or len(modalities) < 2:
        raise ConfigError(f"{key}.modalities: give at least two modalities, each with a pattern")
    checked: dict[str, Any] = {
        "case": str(layout.get("case") or "[^/]+"),
        "label": layout.get("label"),
        "mask": layout.get("mask"),
        "label_values": _label_values(layout.get("label_values")),
        "foreground": layout.get("foreground") or ("mask" if layout.get("mask") else "nonzero"),
        "modalities": {},
    }
    for modality, spec in modalities.items():
        where = f"{key}.modalities.{modality}"
        if not MODALITY_NAME.fullmatch(str(modality)):
            raise ConfigError(f"{where}: modality names are lower-case letters and digits")
        spec = {"pattern": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or not isinstance(spec.get("pattern"), str):
            raise ConfigError(f"{where}.pattern: missing (a path with {{case}})")
        extra = sorted(set(spec) - {"pattern", "normalisation"})
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)}")
        norm = spec.get("normalisation", "ct" if is_ct(modality) else "mr")
        if norm not in ("mr", "ct") or (norm == "ct") != is_ct(modality):
            raise ConfigError(
                f"{where}.normalisation: '{norm}' contradicts the modality name; a modality "
                "named 'ct' is HU-windowed (ct) and every other one is MR-percentile scaled (mr)"
            )
        checked["modalities"][str(modality)] = {"pattern": spec["pattern"], "normalisation": norm}
    if checked["foreground"] not in FOREGROUND_RULES:
        raise ConfigError(f"{key}.foreground: one of {', '.join(FOREGROUND_RULES)}")
    if checked["foreground"] == "mask" and not checked["mask"]:
        raise ConfigError(f"{key}.foreground: 'mask' needs a mask pattern")
    return checked


class PairedNiftiAdapter(DatasetAdapter):
    """Finds the subjects of a YAML-defined layout (see the module docstring)."""

    def __init__(self, name: str, layout: dict[str, Any]) -> None:
        self.name = name
        self.layout = _check_layout(name, layout)
        self.modalities = tuple(self.layout["modalities"])
        self.label_values = self.layout["label_values"]
        case = self.layout["case"]
        key = "layout"
        self.patterns = {
            m: _pattern_regex(s["pattern"], case, f"{key}.modalities.{m}.pattern")
            for m, s in self.layout["modalities"].items()
        }
        for kind in ("label", "mask"):
            if self.layout[kind]:
                self.patterns[kind] = _pattern_regex(self.layout[kind], case, f"{key}.{kind}")

    def _files(self, raw_dir: Path) -> list[str]:
        """POSIX paths of every file under raw_dir (hidden folders skipped, depth-limited)."""
        found = []
        for root, dirs, files in os.walk(raw_dir):
            here = Path(root).relative_to(raw_dir)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if len(here.parts) >= MAX_DEPTH:
                dirs[:] = []
            found += [(here / f).as_posix() for f in files if not f.startswith(".")]
        return sorted(found)

    def find_subjects(self, raw_dir: Path) -> list[SubjectFiles]:
        raw_dir = Path(raw_dir)
        if not raw_dir.is_dir():
            raise DataError(f"{raw_dir}: dataset folder not found")
        hits: dict[str, dict[str, list[Path]]] = {}
        for path in self._files(raw_dir):
            for kind, pattern in self.patterns.items():
                if match := self._match(pattern, path):
                    hits.setdefault(match["case"], {}).setdefault(kind, []).append(raw_dir / path)
        if not any(set(found) & set(self.modalities) for found in hits.values()):
            patterns = ", ".join(s["pattern"] for s in self.layout["modalities"].values())
            raise DataError(f"{raw_dir}: no file matches the layout of '{self.name}' ({patterns})")
        return [self._subject(raw_dir, case, hits[case]) for case in sorted(hits)]

    def _match(self, pattern: regex.Pattern[str], path: str) -> regex.Match[str] | None:
        """`pattern.fullmatch(path)`, refused when it backtracks for over MATCH_SECONDS."""
        try:
            return pattern.fullmatch(path, timeout=MATCH_SECONDS)
        except TimeoutError:
            raise ConfigError(
                f"layout.case: '{self.layout['case']}' takes over {MATCH_SECONDS:g} s to match "
                f"'{path}' (nested or overlapping repeats backtrack exponentially, e.g. "
                "(a|aa)+); write it without repeating a group that can match the same text "
                "in two ways"
            ) from None

    def _subject(self, raw_dir: Path, case: str, found: dict[str, list[Path]]) -> SubjectFiles:
        images, missing, problems = {}, [], {}
        extra: dict[str, Path | None] = {"label": None, "mask": None}
        for kind in (*self.modalities, "label", "mask"):
            paths = found.get(kind, [])
            if len(paths) > 1:
                problems[kind] = f"several files match {kind}: {', '.join(map(str, paths))}"
            if kind in extra:
                if kind in self.patterns and not paths:
                    problems[kind] = f"no {kind} file matching {self.layout[kind]}"
                extra[kind] = paths[0] if len(paths) == 1 else None
                continue
            pattern = self.layout["modalities"][kind]["pattern"].replace("{case}", case)
            images[kind] = paths[0] if paths else raw_dir / pattern
            if not paths:
                missing.append(str(raw_dir / pattern))
        return SubjectFiles(
            name=case,
            images=images,
            label=extra["label"],
            mask=extra["mask"],
            missing=missing,
            problems=problems,
            foreground=self.layout["foreground"],
        )
