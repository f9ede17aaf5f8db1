"""Resumable, verified HTTP downloads (stdlib only, so it runs wherever Python does).

`fetch` downloads to `<name>.part` and resumes it with an HTTP Range request after an
interruption, instead of starting over (a 12 GB archive over a flaky link would otherwise
never finish). Only a file whose size and checksums match is renamed to its final name, so a
file with the final name is always complete; a checksum mismatch deletes the download and
says so, because resuming corrupt bytes can never fix it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from dfbk.errors import DataError

CHUNK = 1 << 20
USER_AGENT = "dfbk-bench dataset download (python urllib)"
HASHES = ("md5", "sha256", "sha1", "sha512")


class DownloadError(DataError):
    """A download failed, was interrupted, or does not match its checksum."""


class _Interrupted(Exception):
    """The connection dropped mid-file; the .part file holds what arrived."""


def parse_checksum(text: str) -> dict[str, str]:
    """'md5:abc…' (Zenodo's form) -> {'md5': 'abc…'}; a bare 32/64-hex string is md5/sha256."""
    text = text.strip()
    if ":" in text:
        algo, _, value = text.partition(":")
        algo = algo.lower().replace("-", "")
    else:
        algo, value = {32: "md5", 64: "sha256"}.get(len(text), ""), text
    if algo not in HASHES or not value:
        raise DownloadError(f"unsupported checksum '{text}' (use md5:<hex> or sha256:<hex>)")
    return {algo: value.lower()}


def file_digests(path: Path, algos: list[str]) -> dict[str, str]:
    """Hex digests of `path` for each algorithm, in one pass over the file."""
    hashers = {algo: hashlib.new(algo) for algo in algos}
    with open(path, "rb") as f:
        while block := f.read(CHUNK * 8):
            for h in hashers.values():
                h.update(block)
    return {algo: h.hexdigest() for algo, h in hashers.items()}


def verify(path: Path, checksums: dict[str, str] | None, size: int | None = None) -> str | None:
    """None if `path` has the expected size and checksums, else what is wrong."""
    actual_size = Path(path).stat().st_size
    if size is not None and actual_size != size:
        return f"size {actual_size} bytes, expected {size}"
    if checksums:
        digests = file_digests(path, list(checksums))
        for algo, expected in checksums.items():
            if digests[algo] != expected.lower():
                return f"checksum mismatch: {algo} is {digests[algo]}, expected {expected}"
    return None


def _request(url: str, start: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _transfer(url: str, part: Path, size: int | None, timeout: float) -> None:
    """Append the rest of `url` to `part` (resuming from its length); raise _Interrupted."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have >= size:
        if have > size:
            part.unlink()  # longer than the file can be: corrupt, start over
            return _transfer(url, part, size, timeout)
        return
    try:
        response = _request(url, have, timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after `have`: the part is whole; verify decides
            return
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise _Interrupted(f"cannot connect: {err}") from err
    with response:
        resumed = have > 0 and response.status == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            raise DownloadError(f"{url}: server answered the resume with a different byte range")
        if not resumed:
            have = 0  # no Range support (status 200): start over
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length is not None else size
        _copy_body(response, part, "ab" if resumed else "wb", expected)
    got = part.stat().st_size
    if expected is not None and got < expected:
        raise _Interrupted(f"connection closed after {got} of {expected} bytes")


def _copy_body(response, part: Path, mode: str, expected: int | None) -> None:
    """Stream the response body into `part`, printing progress every 256 MB."""
    next_report = 256 * CHUNK
    try:
        out = open(part, mode)  # noqa: SIM115 (closed below; OSError must name the file)
    except OSError as err:
        raise DownloadError(f"{part}: cannot write the download ({err.strerror or err})") from None
    with out:
        while True:
            try:
                block = response.read(CHUNK)
            except (http.client.IncompleteRead, OSError) as err:
                raise _Interrupted(f"connection lost: {err}") from err
            if not block:
                return
            try:
                out.write(block)
                out.flush()
            except OSError as err:  # disk full: the bytes already written stay for a resume
                raise DownloadError(
                    f"{part}: cannot write the download ({err.strerror or err}); the part "
                    "written so far is kept — free space and run the same command to resume"
                ) from None
            if out.tell() >= next_report:
                total = f" of {expected / 2**20:.0f}" if expected else ""
                print(f"  {part.name}: {out.tell() / 2**20:.0f}{total} MiB", file=sys.stderr)
                next_report += 256 * CHUNK


def fetch(
    url: str,
    dest: Path,
    checksums: dict[str, str] | None = None,
    size: int | None = None,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download `url` to `dest`, resuming a previous `.part`, verifying size and checksums.

    An existing `dest` that verifies is kept (no network). Up to `retries` interruptions are
    resumed in this call; after that the `.part` stays for the next call to resume.
    """
    dest = Path(dest)
    if dest.exists():
        problem = verify(dest, checksums, size)
        if problem is None:
            return dest
        print(f"{dest}: {problem}; downloading it again", file=sys.stderr)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.exists():
        print(f"{part}: resuming after {part.stat().st_size} bytes", file=sys.stderr)
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, size, timeout)
            break
        except _Interrupted as err:
            if attempt == retries:
                kept = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"{url}: download interrupted ({err}); {kept} bytes kept in {part} — "
                    "run the same command again to resume"
                ) from err
            time.sleep(min(2.0**attempt, 30.0) if attempt else 0.0)
    problem = verify(part, checksums, size)
    if problem is not None:
        part.unlink()
        raise DownloadError(
            f"{dest.name}: {problem}; the downloaded file was deleted — run again to "
            "download it afresh (if it fails again, the file on the server differs from "
            "its published checksum)"
        )
    os.replace(part, dest)
    return dest
