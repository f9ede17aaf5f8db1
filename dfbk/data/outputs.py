"""Output folders: a command replaces only a folder it made itself, never the user's data.

Every verb that writes a folder (phantom, prepare, predict, translate -o, download, and the
external-baseline collect) asks `claim_folder` first. A folder may be written when it is absent
or empty, or when it is this verb's own product: it holds the marker file `MARKER` naming the
verb (written into the folder before it is published), or, for folders written by an older
dfbk, the verb's own manifest (e.g. a slice store's store.json and manifest.csv). It is refused,
in one line naming it, when it is an input of the command, holds an input, lies inside an
input, is the current folder or holds it, is not a folder, or is a non-empty folder the verb
did not make. Verbs that write files into a folder (evaluate, figure) ask `check_file_outputs`:
never an input, never inside an input folder.

`publish` moves a finished staging folder into place: the previous product is renamed aside,
the staging folder renamed onto the final name, and the old one removed (as is one a killed
run left aside), so the final name never holds a half-written folder.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from dfbk.errors import DataError

MARKER = ".dfbk-output.json"

# The manifest each verb wrote before the marker existed: a folder holding all of them is an
# earlier product of that verb, so reruns of an older results tree keep working.
LEGACY_MANIFESTS: dict[str, tuple[str, ...]] = {
    "prepare": ("store.json", "manifest.csv"),
    "predict": ("predictions.json",),
    "download": ("download.json",),
    "phantom": ("subjects.json",),
}

Inputs = Mapping[str, Path | str | None] | Iterable[tuple[str, Path | str | None]]


def _absolute(path: Path | str) -> Path:
    """`path` made absolute without following links (`..` removed lexically)."""
    return Path(os.path.abspath(path))


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(path))


def _pairs(inputs: Inputs) -> list[tuple[str, Path]]:
    items = inputs.items() if isinstance(inputs, Mapping) else inputs
    return [(role, Path(path)) for role, path in items if path is not None]


def made_by(folder: Path) -> dict[str, Any] | None:
    """The marker of a folder written by dfbk (verb, version, ...), or None."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("verb"), str) else None


def mark(folder: Path, verb: str, **fields: Any) -> Path:
    """Write the marker naming `verb` into `folder` (atomically); `fields` join it."""
    from dfbk import __version__
    from dfbk.data.io import write_text

    record = {"verb": verb, "dfbk": __version__, **fields}
    return write_text(Path(folder) / MARKER, json.dumps(record, indent=1, sort_keys=True) + "\n")


def is_product(folder: Path, verb: str, legacy: Callable[[Path], bool] | None = None) -> bool:
    """True when `folder` was written by `dfbk verb` (its marker, or an older version's
    manifest, or what `legacy` recognises)."""
    marker = made_by(folder)
    if marker is not None:
        return marker["verb"] == verb
    names = LEGACY_MANIFESTS.get(verb, ())
    if names and all((Path(folder) / name).is_file() for name in names):
        return True
    return legacy is not None and legacy(Path(folder))


def _check_inputs(out: Path, inputs: Inputs, inside_only: bool = False) -> None:
    real = _real(out)
    for role, path in _pairs(inputs):
        given = _real(path)
        if real == given:
            raise DataError(f"{out}: is the {role}; refusing to write over an input")
        if real.is_relative_to(given):
            raise DataError(f"{out}: is inside the {role} {path}; choose a folder outside it")
        if not inside_only and given.is_relative_to(real):
            raise DataError(
                f"{out}: holds the {role} {path}; refusing to replace a folder that holds an input"
            )


def claim_folder(
    out: Path | str,
    verb: str,
    inputs: Inputs = (),
    legacy: Callable[[Path], bool] | None = None,
) -> Path:
    """Check that `dfbk verb` may (re)write folder `out`; return it as an absolute path.

    `inputs`: role -> path of what the command reads (files or folders). Raises DataError, one
    line naming the folder, when `out` is refused (see the module docstring).
    """
    out = _absolute(out)
    if out.parent == out:
        raise DataError(f"{out}: is the file system's root; choose a folder of its own")
    here = _real(Path.cwd())
    if here.is_relative_to(_real(out)):
        raise DataError(f"{out}: is the current folder or holds it; choose a new or empty folder")
    _check_inputs(out, inputs)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(f"{out}: exists and is not a folder; refusing to replace it")
    if out.is_dir() and any(out.iterdir()) and not is_product(out, verb, legacy):
        other = made_by(out)
        why = f"made by `dfbk {other['verb']}`" if other else "not empty and not made by dfbk"
        raise DataError(
            f"{out}: {why}; `dfbk {verb}` replaces only a folder it made — choose a new or "
            "empty folder"
        )
    return out


def staging_folder(out: Path, suffix: str = "tmp") -> Path:
    """The hidden sibling `.{name}.{suffix}` a verb fills before `publish` renames it."""
    out = _absolute(out)
    return out.with_name(f".{out.name}.{suffix}")


def publish(
    staging: Path, out: Path, verb: str, legacy: Callable[[Path], bool] | None = None
) -> Path:
    """Move the finished `staging` folder to `out`, replacing only this verb's own product.

    `out` is checked again (it may have changed during a long run); the old product is
    renamed aside first and removed after the new one is in place.
    """
    staging, out = Path(staging), _absolute(out)
    old = None
    if out.is_dir() and not out.is_symlink():
        if not any(out.iterdir()):
            out.rmdir()
        elif is_product(out, verb, legacy):
            old = out.with_name(f".{out.name}.{os.getpid()}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        else:
            raise DataError(f"{out}: was filled by something else during this run; not replaced")
    elif out.exists() or out.is_symlink():
        raise DataError(f"{out}: became something other than a folder during this run")
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    for stale in out.parent.glob(f".{glob.escape(out.name)}.*.old"):  # a killed publish's
        if stale.is_dir() and not stale.is_symlink() and is_product(stale, verb, legacy):
            shutil.rmtree(stale, ignore_errors=True)
    return out


def check_file_outputs(files: Iterable[Path | str], verb: str, inputs: Inputs = ()) -> None:
    """Files `dfbk verb` writes: none may be an input or lie inside an input folder."""
    for path in files:
        path = _absolute(path)
        _check_inputs(path, inputs, inside_only=True)
        if path.is_dir():
            raise DataError(f"{path}: is a folder; `dfbk {verb}` writes a file of that name")
