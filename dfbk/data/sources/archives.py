"""Safe extraction of downloaded zip and tar archives.

A dataset archive comes from a third party, so every member is checked before anything is
written: absolute paths, `..` components, device files, and links are refused when the path
they create or point to leaves the destination. Paths are resolved the way extraction would
resolve them, through the links the archive itself creates (`a -> .`, then `a/b -> ..`, then
`a/b/x` writes outside unless the chain is followed), so a chain of individually harmless
links cannot escape. Sizes are checked against limits before extraction (total bytes and the
expansion ratio over the archive's own size), so a small archive cannot fill the disk. The
whole archive is checked first, so a bad archive writes nothing; the caller extracts into a
staging folder and renames it into place only when complete. Extraction repeats the checks
as it writes (the real path of each target, tarfile's `data` filter for tar).
"""

from __future__ import annotations

import fnmatch
import os
import stat
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dfbk.errors import DataError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
MAX_LINK_HOPS = 40  # as Linux's MAXSYMLINKS: more is a loop or an attack
MAX_NAME_LENGTH = 1024  # far beyond any dataset path; longer names defeat realpath (PATH_MAX)
# Defaults of the download settings `max_extract_gb` and `max_ratio`. Dataset archives hold
# already-compressed NIfTI or MR volumes that deflate a few times at most; 100x is a bomb.
MAX_EXTRACT_BYTES = 500 * 2**30
MAX_RATIO = 100.0
CHUNK = 1 << 20


@dataclass(frozen=True)
class Member:
    """One archive entry: its name, kind ('file', 'dir', 'symlink', 'hardlink', 'other')."""

    name: str
    kind: str
    link_target: str = ""
    size: int = 0  # declared uncompressed size of a file


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")


def _unsafe_reason(name: str) -> str | None:
    """Why an entry name may not be extracted, or None when it stays inside the target."""
    if not name:
        return "empty name"
    if "\x00" in name:
        return "NUL byte in name"
    if len(name) > MAX_NAME_LENGTH:
        return f"name longer than {MAX_NAME_LENGTH} characters"
    if _is_absolute(name):
        return "absolute path"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return "'..' component"
    return None


class _LinkTree:
    """The links an archive creates, keyed by where they land, to resolve paths without disk.

    Resolution follows POSIX: each component that is a known symlink is replaced by its
    target (relative to the link's folder), `..` pops one resolved component, and popping
    above the root means the path leaves the extraction folder (None).
    """

    def __init__(self) -> None:
        self.links: dict[str, str] = {}  # resolved location -> symlink target

    def resolve(self, base: list[str], name: str, follow_last: bool = True) -> list[str] | None:
        hops = [0]
        return self._resolve(list(base), name, follow_last, hops)

    def _resolve(
        self, stack: list[str], name: str, follow_last: bool, hops: list[int]
    ) -> list[str] | None:
        if _is_absolute(name):
            return None
        comps = [c for c in name.replace("\\", "/").split("/") if c not in ("", ".")]
        for i, comp in enumerate(comps):
            if comp == "..":
                if not stack:
                    return None
                stack.pop()
                continue
            here = "/".join([*stack, comp])
            if here in self.links and (follow_last or i < len(comps) - 1):
                hops[0] += 1
                if hops[0] > MAX_LINK_HOPS:
                    return None
                resolved = self._resolve(stack, self.links[here], True, hops)
                if resolved is None:
                    return None
                stack = resolved
            else:
                stack.append(comp)
        return stack


def _zip_members(archive: zipfile.ZipFile) -> Iterator[Member]:
    for info in archive.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            if info.file_size > MAX_NAME_LENGTH:
                yield Member(info.filename, "symlink", "?" * (MAX_NAME_LENGTH + 1))
                continue
            target = archive.read(info).decode("utf-8", "replace")
            yield Member(info.filename, "symlink", target)
        elif info.is_dir():
            yield Member(info.filename, "dir")
        else:
            yield Member(info.filename, "file", size=info.file_size)


def _tar_members(archive: tarfile.TarFile) -> Iterator[Member]:
    for info in archive.getmembers():
        if info.issym():
            yield Member(info.name, "symlink", info.linkname)
        elif info.islnk():
            yield Member(info.name, "hardlink", info.linkname)
        elif info.isdir():
            yield Member(info.name, "dir")
        elif info.isfile():
            yield Member(info.name, "file", size=info.size)
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
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, ValueError) as err:
        raise DataError(f"{path}: not a readable zip/tar archive ({err})") from err


def _member_problem(member: Member, tree: _LinkTree, used: set[str]) -> str | None:
    """Why `member` would write or point outside the folder, given the entries before it."""
    reason = _unsafe_reason(member.name)
    if reason is not None:
        return reason
    if member.kind == "other":
        return "device, fifo or other special file"
    is_link = member.kind in ("symlink", "hardlink")
    where = tree.resolve([], member.name, follow_last=not is_link)
    if where is None:
        return "its path leads outside the target through a link in the archive"
    key = "/".join(where)
    if is_link:
        if not where:
            return f"{member.kind} would replace the extraction folder itself"
        if key in used or any(u.startswith(key + "/") for u in used):
            return f"{member.kind} would replace an entry extracted before it"
        if len(member.link_target) > MAX_NAME_LENGTH or "\x00" in member.link_target:
            return f"{member.kind} target is not a plain path"
        base = where[:-1] if member.kind == "symlink" else []  # tar hard links: from the root
        if tree.resolve(base, member.link_target) is None:
            return f"{member.kind} to '{member.link_target}' points outside the target"
        if member.kind == "symlink":
            tree.links[key] = member.link_target
    used.add(key)
    return None


def check_members(archive_path: Path, members: Sequence[Member]) -> None:
    """Refuse the archive if any entry could write, or point, outside the extraction folder."""
    tree, used = _LinkTree(), set()
    for member in members:
        reason = _member_problem(member, tree, used)
        if reason is not None:
            raise DataError(
                f"{archive_path}: unsafe archive entry '{member.name}' ({reason}); "
                "refusing to extract anything from this archive"
            )
    # a link added later can change where an earlier, dangling link leads: check them all again
    for location, target in tree.links.items():
        if tree.resolve(location.split("/")[:-1], target) is None:
            raise DataError(
                f"{archive_path}: unsafe archive entry '{location}' (symlink to '{target}' "
                "points outside the target through later links); refusing to extract anything"
            )


def check_sizes(
    archive_path: Path,
    members: Sequence[Member],
    include: Sequence[str] | None = None,
    max_bytes: int = MAX_EXTRACT_BYTES,
    max_ratio: float = MAX_RATIO,
) -> int:
    """Refuse an archive whose declared contents exceed `max_bytes` or expand more than
    `max_ratio` times its own size (a zip bomb); returns the bytes that will be extracted."""
    path = Path(archive_path)
    packed = max(path.stat().st_size, 1)
    total = sum(m.size for m in members if m.kind == "file")
    chosen = sum(m.size for m in members if m.kind == "file" and _selected(m.name, include))
    if total > max_ratio * packed:
        raise DataError(
            f"{path}: declares {total} bytes of content in {packed} bytes ({total / packed:.0f}x, "
            f"limit {max_ratio:g}x); refusing a likely zip bomb (download setting max_ratio)"
        )
    if chosen > max_bytes:
        raise DataError(
            f"{path}: would extract {chosen / 2**30:.1f} GiB, over the {max_bytes / 2**30:g} GiB "
            "limit (download setting max_extract_gb)"
        )
    return chosen


def _selected(name: str, include: Sequence[str] | None) -> bool:
    """Whether `name` matches one of the glob patterns (all entries when no pattern)."""
    if not include:
        return True
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in include)


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _extract_zip(path: Path, dest: Path, include: Sequence[str] | None, budget: int) -> int:
    """Write the selected zip entries, checking each real target path again as it is written."""
    root = os.path.realpath(dest)
    count = written = 0
    with zipfile.ZipFile(path) as archive:
        for info, member in zip(archive.infolist(), _zip_members(archive), strict=True):
            if not _selected(member.name, include):
                continue
            target = dest / member.name
            if member.kind == "symlink":
                parent = os.path.realpath(target.parent)
                reals = [parent, os.path.realpath(os.path.join(parent, member.link_target))]
            else:
                reals = [os.path.realpath(target)]
            outside = next((r for r in reals if not _inside(root, r)), None)
            if outside is not None:
                raise DataError(
                    f"{path}: unsafe archive entry '{member.name}' (resolves to {outside}, "
                    f"outside {dest}); extraction stopped"
                )
            try:
                written += _write_zip_member(archive, info, member, target, budget - written)
            except OSError as err:  # disk full, permissions: name the file being written
                raise OSError(err.errno, err.strerror, str(target)) from err
            count += member.kind != "dir"
    return count


def _write_zip_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, member: Member, target: Path, budget: int
) -> int:
    """Create one checked entry at `target`; returns the bytes written (at most `budget`)."""
    if member.kind == "dir":
        target.mkdir(parents=True, exist_ok=True)
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    if member.kind == "symlink":
        os.symlink(member.link_target, target)
        return 0
    written = 0
    with archive.open(info) as src, open(target, "wb") as out:
        while block := src.read(CHUNK):
            written += len(block)
            if written > budget:
                raise DataError(
                    f"{archive.filename}: '{member.name}' expands beyond the sizes the archive "
                    "declares; refusing a likely zip bomb"
                )
            out.write(block)
    return written


def _extract_tar(path: Path, dest: Path, include: Sequence[str] | None) -> int:
    with tarfile.open(path) as archive:
        chosen = [m for m in archive.getmembers() if _selected(m.name, include)]
        # the "data" filter repeats the checks above inside tarfile itself (Python >= 3.11.4)
        archive.extractall(dest, members=chosen, filter="data")
    return sum(1 for m in chosen if not m.isdir())


def extract_archive(
    archive_path: Path,
    dest: Path,
    include: Sequence[str] | None = None,
    max_bytes: int = MAX_EXTRACT_BYTES,
    max_ratio: float = MAX_RATIO,
) -> int:
    """Check every entry, then extract those matching the `include` globs into `dest`.

    Nothing is written unless every entry is safe and the declared sizes are within
    `max_bytes` and `max_ratio` (see `check_sizes`). `dest` is normally a staging folder that
    the caller renames into place once all archives are in (so an interrupted or refused
    extraction never looks finished). Returns the number of files and links written.
    """
    path, dest = Path(archive_path), Path(dest)
    members = list_members(path)
    check_members(path, members)
    budget = check_sizes(path, members, include, max_bytes, max_ratio)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(path):
            count = _extract_zip(path, dest, include, budget)
        else:
            count = _extract_tar(path, dest, include)
    except tarfile.FilterError as err:
        raise DataError(f"{path}: unsafe archive entry refused by tarfile ({err})") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, ValueError) as err:
        raise DataError(f"{path}: corrupt archive ({type(err).__name__}: {err})") from None
    except OSError as err:
        where = err.filename or dest
        raise DataError(f"{where}: cannot extract {path.name} ({err.strerror or err})") from None
    if count == 0:
        tops = sorted({m.name.split("/")[0] for m in members})[:5]
        raise DataError(
            f"{path}: no archive entry matches {list(include or [])}; "
            f"its entries start with {', '.join(tops)}"
        )
    return count
