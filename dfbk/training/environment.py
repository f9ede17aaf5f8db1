"""Where and with what a run was trained: code version, machine, accelerator, libraries.

The trainer stores :func:`run_environment` in ``run.json`` when training ends, on the machine
that trained; the MLflow import (on whatever machine runs it) turns it into run tags. Reading
it at import time instead would record the importer's host and GPU, not the trainer's.
Standard library only, plus torch when it is already loaded (the trainer always has it).
"""

from __future__ import annotations

import getpass
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

# Containers and wheel installs have no .git; the build can pass the commit in instead.
GIT_COMMIT_ENV = "DFBK_GIT_COMMIT"
GIT_TIMEOUT_SECONDS = 10.0


def _git(args: list[str], cwd: Path) -> str | None:
    """Output of one git command in `cwd`, or None when git or the repository is absent."""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(source: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the repository holding the dfbk code that ran.

    ``source`` defaults to the installed package's folder: with the editable install the
    workflow uses, that is the checkout whose code trained the model (the results folder's own
    repository, if any, says nothing about the code). ``dirty`` counts tracked files only, so a
    results tree inside the checkout does not make every run dirty. Without a repository the
    commit comes from ``$DFBK_GIT_COMMIT`` (containers) or is None, and ``dirty`` is None.
    """
    if source is None:
        import dfbk

        source = Path(dfbk.__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], source)
    if commit is None:
        return {"commit": os.environ.get(GIT_COMMIT_ENV) or None, "dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], source)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return None


def accelerator() -> dict[str, Any]:
    """GPU model and count and the torch/CUDA/cuDNN versions (torch imported only if loaded).

    ``gpu_count`` counts the devices this process sees (``CUDA_VISIBLE_DEVICES`` applies);
    ``gpu_model`` names device 0, and lists every distinct model when they differ.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return {"torch_version": None, "cuda_version": None, "cudnn_version": None,
                "gpu_model": None, "gpu_count": 0}  # fmt: skip
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    models = list(dict.fromkeys(torch.cuda.get_device_name(i) for i in range(count)))
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "torch_version": str(torch.__version__),
        "cuda_version": torch.version.cuda,
        "cudnn_version": cudnn,
        "gpu_model": " + ".join(models) if models else None,
        "gpu_count": count,
    }


def run_environment() -> dict[str, Any]:
    """The record the trainer writes under ``run.json["environment"]``; JSON-ready."""
    git = git_state()
    return {
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "user": _user(),
        "host": socket.gethostname(),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        **accelerator(),
    }
