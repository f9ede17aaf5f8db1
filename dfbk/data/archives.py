"""Safe extraction of downloaded zip and tar archives.

A dataset archive comes from a third party, so every member is checked before anything is
written: absolute paths, `..` components, and symbolic or hard links whose target resolves
outside the destination are refused (the "zip slip" family of attacks), as are device files.
The whole archive is checked first, so a bad archive writes nothing; the caller extracts into
a staging folder and renames it into place only when complete.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dfbk.errors import DataError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass(frozen=True)
class Member:
    """One archive entry: its name, kind ('file', 'dir', 'symlink', 'hardlink', 'other')."""

    name: str
    kind: str
    link_target: str = ""


def is_archive(path: Path) -> bool:
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


def _unsafe_reason(name: str) -> str | None:
    """Why an entry name may not be extracted, or None when it stays inside the target."""
    if not name:
        return "empty name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return "'..' component"
    return None


def _link_escapes(name: str, target: str, kind: str) -> bool:
    """True when a link's target lies outside the extraction root.

    A symlink's target is relative to the link's own folder; a tar hard link's target is
    relative to the archive root.
    """
    if target.startswith(("/", "\\")) or (len(target) > 1 and target[1] == ":"):
        return True
    base = posixpath.dirname(name) if kind == "symlink" else ""
    resolved = posixpath.normpath(posixpath.join(base, target.replace("\\", "/")))
    return resolved == ".." or resolved.startswith("../")


def _zip_members(archive: zipfile.ZipFile) -> Iterator[Member]:
    for info in archive.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            target = archive.read(info).decode("utf-8", "replace")
            yield Member(info.filename, "symlink", target)
        elif info.is_dir():
            yield Member(info.filename, "dir")
        else:
            yield Member(info.filename, "file")


def _tar_members(archive: tarfile.TarFile) -> Iterator[Member]:
    for info in archive.getmembers():
        if info.issym():
            yield Member(info.name, "symlink", info.linkname)
        elif info.islnk():
            yield Member(info.name, "hardlink", info.linkname)
        elif info.isdir():
            yield Member(info.name, "dir")
        elif info.isfile():
            yield Member(info.name, "file")
        else:
            yield Member(info.name, "other")


def list_members(archive_path: Path) -> list[Member]:
    """Every entry of a zip or tar archive; a corrupt archive is a DataError naming it."""
    path = Path(archive_path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return list(_zip_members(archive))
        with tarfile.open(path) as archive:
            return list(_tar_members(archive))
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path}: not a readable zip/tar archive ({err})") from err


def check_members(archive_path: Path, members: Sequence[Member]) -> None:
    """Refuse the archive if any entry could write outside the extraction folder."""
    for member in members:
        reason = _unsafe_reason(member.name)
        if reason is None and member.kind in ("symlink", "hardlink"):
            if _link_escapes(member.name, member.link_target, member.kind):
                reason = f"{member.kind} to '{member.link_target}' points outside the target"
        if reason is None and member.kind == "other":
            reason = "device, fifo or other special file"
        if reason is not None:
            raise DataError(
                f"{archive_path}: unsafe archive entry '{member.name}' ({reason}); "
                "refusing to extract anything from this archive"
            )


def _selected(name: str, include: Sequence[str] | None) -> bool:
    """Whether `name` matches one of the glob patterns (all entries when no pattern)."""
    if not include:
        return True
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in include)


def _extract_zip(path: Path, dest: Path, include: Sequence[str] | None) -> int:
    count = 0
    with zipfile.ZipFile(path) as archive:
        for info, member in zip(archive.infolist(), _zip_members(archive), strict=True):
            if not _selected(member.name, include):
                continue
            target = dest / member.name
            if member.kind == "dir":
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if member.kind == "symlink":
                os.symlink(member.link_target, target)
            else:
                with archive.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            count += 1
    return count


def _extract_tar(path: Path, dest: Path, include: Sequence[str] | None) -> int:
    with tarfile.open(path) as archive:
        chosen = [m for m in archive.getmembers() if _selected(m.name, include)]
        # the "data" filter repeats the checks above inside tarfile itself (Python >= 3.11.4)
        archive.extractall(dest, members=chosen, filter="data")
    return sum(1 for m in chosen if not m.isdir())


def extract_archive(archive_path: Path, dest: Path, include: Sequence[str] | None = None) -> int:
    """Check every entry, then extract those matching the `include` globs into `dest`.

    Nothing is written unless every entry is safe. `dest` is normally a staging folder that
    the caller renames into place once all archives are in (so an interrupted extraction
    never looks finished). Returns the number of files and links written.
    """
    path, dest = Path(archive_path), Path(dest)
    members = list_members(path)
    check_members(path, members)
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(path):
        count = _extract_zip(path, dest, include)
    else:
        count = _extract_tar(path, dest, include)
    if count == 0:
        tops = sorted({m.name.split("/")[0] for m in members})[:5]
        raise DataError(
            f"{path}: no archive entry matches {list(include or [])}; "
            f"its entries start with {', '.join(tops)}"
        )
    return count
