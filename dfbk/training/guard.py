"""One trainer per checkpoint folder, and no trainer outliving the workflow that started it.

`FolderLock` holds an exclusive POSIX lock (`fcntl.lockf`, which also works across nodes on
NFS) on `<checkpoint_dir>/.lock` for the whole run; the kernel drops it when the process dies,
even by SIGKILL, so a stale lock file never blocks. A second trainer fails at once with the
holder's pid instead of interleaving its steps into the same `last.pt` and log.

`stop_with_workflow` makes a trainer started by Snakemake stop when Snakemake goes: Snakemake
runs `bash -c "set -euo pipefail; dfbk train ..."`, so the trainer's parent is a bash that
outlives a killed Snakemake. A daemon thread watches every ancestor up to the nearest
`snakemake` process (and the kernel's PR_SET_PDEATHSIG covers the direct parent); when one is
gone it sends the trainer SIGTERM, which saves a checkpoint at the next step boundary and
exits 143. A trainer run by hand (no Snakemake ancestor) is left alone, so `nohup dfbk train`
keeps working.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys
import threading
from pathlib import Path

from dfbk.errors import TrainingError

PR_SET_PDEATHSIG = 1
WATCH_SECONDS = 1.0
_WATCHED: list[int] | None = None  # pids watched by stop_with_workflow, once set up


# folder -> [fd, holders]: POSIX locks belong to the process, and closing any descriptor of the
# file drops them, so nested holders in one process share one descriptor.
_HELD: dict[Path, list[int]] = {}


class FolderLock:
    """Exclusive lock on a folder until `release` (or the process ends); re-entrant per process.

    The CLI takes it before importing torch, so a second trainer fails within a second.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self._held = False

    def acquire(self) -> FolderLock:
        key = self.folder.resolve()
        if key in _HELD:
            _HELD[key][1] += 1
            self._held = True
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise TrainingError(f"{self.path}: cannot create lock ({err.strerror})") from err
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise TrainingError(
                f"{self.folder}: another trainer (pid {holder}) is training into this folder; "
                "wait for it to end or stop it"
            ) from err
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a full disk: the lock holds, only the pid note is missing
            pass
        _HELD[key] = [fd, 1]
        self._held = True
        return self

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        key = self.folder.resolve()
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            os.close(_HELD.pop(key)[0])  # drops the lock; the file (a stale pid) may stay

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of `pid` from /proc, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid ... starttime
    return int(fields[1]), fields[19]


def _is_snakemake(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    head = [os.path.basename(a.decode(errors="replace")) for a in argv[:3]]
    return any(a.startswith("snakemake") for a in head)


def workflow_ancestors() -> list[tuple[int, str]]:
    """(pid, start time) of every ancestor up to the nearest Snakemake; [] when there is none."""
    chain: list[tuple[int, str]] = []
    pid = os.getpid()
    for _ in range(32):
        info = _proc_stat(pid)
        if info is None or info[0] <= 1:
            return []
        pid = info[0]
        parent_info = _proc_stat(pid)
        if parent_info is None:
            return []
        chain.append((pid, parent_info[1]))
        if _is_snakemake(pid):
            return chain
    return []


def _alive(pid: int, start: str) -> bool:
    info = _proc_stat(pid)
    return info is not None and info[1] == start  # same start time: not a reused pid


def stop_with_workflow() -> list[int]:
    """Under Snakemake, SIGTERM this process when Snakemake or an intermediate parent ends.

    Returns the watched pids (empty when not started by Snakemake, or off Linux). Idempotent:
    the CLI calls it before loading torch (a Snakemake killed during start-up is seen too), the
    trainer again for library callers.
    """
    global _WATCHED
    if _WATCHED is not None:
        return _WATCHED
    if not sys.platform.startswith("linux"):
        return []
    chain = workflow_ancestors()
    _WATCHED = [pid for pid, _ in chain]
    if not chain:
        return []
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if not all(_alive(pid, start) for pid, start in chain):  # died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)

    def watch() -> None:
        event = threading.Event()
        while not event.wait(WATCH_SECONDS):
            if not all(_alive(pid, start) for pid, start in chain):
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="dfbk-parent-watch", daemon=True).start()
    return _WATCHED
