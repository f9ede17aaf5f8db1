"""Replay the audits' fault lists against the CLI and a micro workflow.

Usage: python bench/faults/replay.py [--only 1,3,16] [--no-workflow] [--keep DIR]

Each case reproduces one reported fault and checks the handled behaviour: exit status not 0, a
one-line `dfbk <verb>: error: ...` naming the file or key (no traceback), and no half-written
output; or, where the fault has a right answer (a resumed log, a deleted MLflow run), that
answer. One line per case, then `tried / handled / failed`, so the next audit starts from a
number. Exit status 0 only when every tried case was handled. A case that cannot be set up here
(no root for a small filesystem) is skipped and not counted as tried.

Items 1-17 are the first audit's list (training, checkpoints, downloads, MLflow, the workflow);
items 18-36 the second's, in its order: output folders that must never cost the user data
(18-20), a slice store's content and subjects (21-23), predictions and voxels outside the
contract (24-25), then one line where a hang or a traceback stood (26-35) and a killed folder
translate (36). tests/test_faults_replay.py runs the CLI cases, so a case cannot go stale.

Runs on the CPU (the micro workflow is the longest part); nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # fakes.py: local Zenodo server, archives, Synapse
BIN = Path(sys.executable).parent
DFBK = str(BIN / "dfbk") if (BIN / "dfbk").exists() else "dfbk"
TINY = {"steps": 2, "batch_size": 2}


class Unhandled(Exception):
    """The fault was not handled; the message says what happened instead."""


@dataclass
class Case:
    item: str
    name: str
    run: Callable[[Workspace], str]
    workflow: bool = False


CASES: list[Case] = []


def case(item: str, name: str, workflow: bool = False):
    """Register a replay case (a function of the workspace returning how it was handled)."""

    def register(function: Callable[[Workspace], str]) -> Callable[[Workspace], str]:
        CASES.append(Case(item, name, function, workflow))
        return function

    return register


# --- helpers ---------------------------------------------------------------------------------


def dfbk(*args: str, env: dict | None = None, timeout: float = 300, **kwargs):
    """Run the CLI; CompletedProcess with text stdout/stderr."""
    return subprocess.run(
        [DFBK, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def one_line_error(result: subprocess.CompletedProcess, verb: str, *needles: str) -> str:
    """The error line if `result` failed cleanly naming every needle; else raise Unhandled."""
    stderr = result.stderr.strip()
    last = stderr.splitlines()[-1] if stderr else ""
    if result.returncode == 0:
        raise Unhandled(f"exit status 0; last line: {last[:200]!r}")
    if "Traceback (most recent call last)" in stderr:
        raise Unhandled(f"traceback (exit {result.returncode}): {last[:200]}")
    if not last.startswith(f"dfbk {verb}: error:"):
        raise Unhandled(f"exit {result.returncode} without a one-line error: {last[:200]!r}")
    missing = [n for n in needles if n.lower() not in last.lower()]
    if missing:
        raise Unhandled(f"error does not name {missing}: {last[:200]}")
    return last


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Unhandled(message)


def read_log_steps(path: Path) -> list[int]:
    """Steps of a train_log.jsonl; Unhandled if a line is not JSON."""
    steps = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                steps.append(json.loads(line)["step"])
            except (ValueError, KeyError) as error:
                raise Unhandled(f"{path}:{number} is not a log row ({error})") from None
    return steps


def log_losses(path: Path) -> list[dict]:
    """Rows of a train_log.jsonl without wall-clock fields (those differ between runs)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if "time" not in k and "second" not in k} for row in rows]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Workspace:
    """Shared inputs made once: a phantom, its slice store and split, a trained tiny model."""

    root: Path
    _made: dict = field(default_factory=dict)

    def path(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def raw(self) -> Path:
        if "raw" not in self._made:
            raw = self.root / "raw"
            result = dfbk("phantom", raw, "--subjects", 4, "--voxel-mm", 5.0, "--seed", 0)
            assert result.returncode == 0, result.stderr[-2000:]
            self._made["raw"] = raw
        return self._made["raw"]

    @property
    def store(self) -> tuple[Path, Path]:
        if "store" not in self._made:
            store, split = self.root / "store", self.root / "splits.json"
            for args in (
                ("prepare", "phantom", self.raw, store, "--modalities", "t1n,t2w,ct"),
                ("split", store, "--out", split, "--fractions", 0.5, 0.25, 0.25),
            ):
                result = dfbk(*args, *(("--size", 64, 64) if args[0] == "prepare" else ()))
                assert result.returncode == 0, result.stderr[-2000:]
            self._made["store"] = (store, split)
        return self._made["store"]

    def train(self, name: str, overrides: dict, checkpoints: Path | None = None, **kw):
        """`dfbk train phantom t1n-to-t2w pix2pix` into <root>/<name>; the CompletedProcess.

        `store=` and `split=` train on another slice store than the shared one."""
        store = kw.pop("store", None) or self.store[0]
        split = kw.pop("split", None) or self.store[1]
        out = self.root / name
        args = ["train", "phantom", "t1n-to-t2w", kw.pop("method", "pix2pix")]
        args += ["--overrides", json.dumps(overrides), "--store", store, "--split", split]
        args += ["--out-dir", out / "out", "--device", "cpu", "--threads", 1]
        args += ["--checkpoint-dir", checkpoints or out / "checkpoints"]
        args += ["--checkpoint-every", kw.pop("every", 2)]
        return dfbk(*args, **kw)

    @property
    def model(self) -> Path:
        if "model" not in self._made:
            result = self.train("model", TINY)
            assert result.returncode == 0, result.stderr[-2000:]
            self._made["model"] = self.root / "model" / "out" / "model.pt"
        return self._made["model"]


# --- 1, 3, 4, 5, 8, 11, 12: training and checkpoints -----------------------------------------


@case("1", "stale checkpoint folder from other settings is not resumed")
def stale_checkpoint(ws: Workspace) -> str:
    shared = ws.path("stale") / "checkpoints"
    first = ws.train("stale/first", TINY, shared)
    expect(first.returncode == 0, f"first run failed: {first.stderr[-300:]}")
    changed = {**TINY, "steps": 4, "lr": 5e-4}
    second = ws.train("stale/second", changed, shared)
    if second.returncode != 0:
        return one_line_error(second, "train", "checkpoint")
    fresh = ws.train("stale/fresh", changed)
    expect(fresh.returncode == 0, f"fresh run failed: {fresh.stderr[-300:]}")
    second_losses = log_losses(ws.root / "stale/second/out/train_log.jsonl")
    fresh_losses = log_losses(ws.root / "stale/fresh/out/train_log.jsonl")
    expect(
        second_losses == fresh_losses, "losses differ from a fresh run: the stale state was used"
    )
    return "started afresh: its losses equal those of a run in an empty checkpoint folder"


@case("3", "a second trainer on the same checkpoint folder is refused")
def second_trainer(ws: Workspace) -> str:
    folder = ws.path("twice") / "checkpoints"
    store, split = ws.store
    args = [DFBK, "train", "phantom", "t1n-to-t2w", "pix2pix", "--overrides"]
    args += [json.dumps({"steps": 100000, "batch_size": 2}), "--store", str(store)]
    args += ["--split", str(split), "--device", "cpu", "--threads", "1"]
    args += ["--checkpoint-dir", str(folder), "--checkpoint-every", "50"]
    first = subprocess.Popen(
        [*args, "--out-dir", str(ws.root / "twice/a")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (folder.is_dir() and any(folder.iterdir())) and time.monotonic() < deadline:
            expect(first.poll() is None, f"first trainer ended early ({first.returncode})")
            time.sleep(0.5)
        time.sleep(2)
        second = dfbk(*args[1:], "--out-dir", ws.root / "twice/b", timeout=120)
        return one_line_error(second, "train", str(folder.name))
    finally:
        first.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            first.wait(30)
        if first.poll() is None:
            first.kill()


@case("3", "a trainer whose Snakemake is killed stops")
def orphan_trainer(ws: Workspace) -> str:
    store, split = ws.store
    folder = ws.path("orphan")
    pids = folder / "pids"
    overrides = json.dumps({"steps": 100000, "batch_size": 2})
    train = (
        f"{DFBK} train phantom t1n-to-t2w pix2pix --overrides {shlex.quote(overrides)} "
        f"--store {shlex.quote(str(store))} --split {shlex.quote(str(split))} --device cpu "
        f"--out-dir out --checkpoint-dir checkpoints --threads 1"
    )
    shell = f"{train} > train.log 2>&1 & echo $$ $! > pids; wait"
    shell = shell.replace("{", "{{").replace("}", "}}")  # Snakemake formats shell strings
    (folder / "Snakefile").write_text(
        f'rule train:\n    output: "out/model.pt"\n    shell: {json.dumps(shell)}\n'
    )
    command = [str(BIN / "snakemake"), "--snakefile", str(folder / "Snakefile"), "--cores", "1"]
    command += ["--directory", str(folder), "--workflow-profile", "none"]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    workflow = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not pids.exists() or len(pids.read_text().split()) < 2:
        expect(workflow.poll() is None, f"snakemake ended early ({workflow.returncode})")
        expect(time.monotonic() < deadline, "trainer did not start")
        time.sleep(0.5)
    shell, trainer = map(int, pids.read_text().split())
    time.sleep(10)  # past start-up, into training
    try:
        os.kill(trainer, 0)
    except ProcessLookupError:
        raise Unhandled(f"the trainer ended by itself; see {folder / 'train.log'}") from None
    workflow.kill()  # what a killed Snakemake looks like to its jobs
    workflow.wait()
    try:
        for _ in range(60):
            try:
                os.kill(trainer, 0)
            except ProcessLookupError:
                return "the trainer stopped within seconds of Snakemake's SIGKILL"
            time.sleep(0.5)
        raise Unhandled("trainer still running 30 s after Snakemake was killed")
    finally:
        for pid in (trainer, shell):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@case("4", "negative steps are refused naming the key")
def bad_steps(ws: Workspace) -> str:
    return one_line_error(ws.train("negative", {"steps": -5, "batch_size": 2}), "train", "steps")


@case("4", "zero batch size is refused naming the key")
def bad_batch(ws: Workspace) -> str:
    result = ws.train("zero", {"steps": 2, "batch_size": 0})
    return one_line_error(result, "train", "batch_size")


@case("5", "training that diverges to NaN writes no model")
def nan_training(ws: Workspace) -> str:
    result = ws.train("nan", {"steps": 4, "batch_size": 2, "lr": 1e30})
    line = one_line_error(result, "train")
    expect(not (ws.root / "nan/out/model.pt").exists(), "model.pt written anyway")
    return line


@case("5", "a checkpoint with NaN weights is refused by predict")
def nan_checkpoint(ws: Workspace) -> str:
    import torch

    def poison(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return torch.full_like(value, float("nan"))
        if isinstance(value, dict):
            return {k: poison(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(poison(v) for v in value)
        return value

    from dfbk.training.checkpoint import HASH_KEY, load_checkpoint, save_atomic

    payload = poison(load_checkpoint(ws.model))
    payload.pop(HASH_KEY, None)  # a checkpoint saved with NaN weights: its hash is valid
    bad = save_atomic(payload, ws.path("nan_ckpt") / "model.pt")
    store, split = ws.store
    out = ws.root / "nan_ckpt" / "predictions"
    line = one_line_error(dfbk("predict", bad, store, split, out, "--device", "cpu"), "predict")
    expect(not out.exists(), f"{out} left behind")
    return line


class _Exploit:
    """Unpickling this runs a shell command (what a hostile model.pt does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@case("8", "a pickled checkpoint never runs its code")
def pickled_checkpoint(ws: Workspace) -> str:
    import torch

    folder = ws.path("pickle")
    marker, evil = folder / "owned", folder / "model.pt"
    torch.save({"method": "pix2pix", "state": _Exploit(marker)}, evil)
    store, split = ws.store
    predict = dfbk("predict", evil, store, split, folder / "out", "--device", "cpu")
    volume = sorted((ws.raw).rglob("*t1n*.nii.gz"))[0]
    translate = dfbk("translate", "--checkpoint", evil, "--source", volume, "--output",
                     folder / "t2w.nii.gz", "--device", "cpu")  # fmt: skip
    expect(not marker.exists(), "the checkpoint's code ran")
    one_line_error(translate, "translate", "model.pt")
    return one_line_error(predict, "predict", "model.pt")


@case("11", "a torn training log is repaired when the run resumes")
def torn_log(ws: Workspace) -> str:
    run = ws.train("torn", {"steps": 4, "batch_size": 2}, every=2)
    expect(run.returncode == 0, f"run failed: {run.stderr[-300:]}")
    log = ws.root / "torn/checkpoints/train_log.jsonl"
    expect(log.is_file(), f"{log} not found (trainer log moved?)")
    with open(log, "a") as stream:
        stream.write('{"step": 4, "loss_g": 0.5, "lo')  # killed mid-line
    shutil.rmtree(ws.root / "torn/out")
    again = ws.train("torn", {"steps": 4, "batch_size": 2}, every=2)
    if again.returncode != 0:
        return one_line_error(again, "train", "train_log.jsonl")
    steps = read_log_steps(ws.root / "torn/out/train_log.jsonl")
    expect(steps == sorted(set(steps)), f"steps not strictly rising: {steps}")
    return f"resumed; the output log has {len(steps)} clean rows"


@case("11", "the importer names a torn line instead of a traceback")
def torn_log_import(ws: Workspace) -> str:
    train_dir, eval_dir = fake_run(ws.path("torn_import"), "pix2pix")
    with open(train_dir / "train_log.jsonl", "a") as stream:
        stream.write('{"step": 9, "lo')
    result = track(ws, [(train_dir, eval_dir)], f"sqlite:///{ws.root}/torn_import/mlflow.db")
    return one_line_error(result, "track", "train_log.jsonl:")


@contextlib.contextmanager
def small_filesystem(where: Path, size: str = "256k", options: str = ""):
    """A tmpfs of `size` at `where` (root only); yields None when it cannot be mounted.

    `options` join the mount's (`ro`: a read-only filesystem, which binds root too)."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        yield None
        return
    flags = ",".join(filter(None, [f"size={size}", options]))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", flags, "tmpfs", str(where)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)


class Skip(Exception):
    """The case cannot be set up on this machine."""


@case("12", "a full disk during prepare leaves no store")
def disk_full_prepare(ws: Workspace) -> str:
    with small_filesystem(ws.root / "full_prepare") as mount:
        if mount is None:
            raise Skip("needs root to mount a 256 KiB tmpfs")
        store = mount / "store"
        result = dfbk("prepare", "phantom", ws.raw, store, "--modalities", "t1n,t2w", "--size",
                      64, 64)  # fmt: skip
        line = one_line_error(result, "prepare")
        expect(not store.exists(), f"{store} left half-written")
        leftovers = [p.name for p in mount.iterdir()]
        expect(not leftovers, f"left on the full disk: {leftovers}")
        return line


@case("12", "a full disk while saving a checkpoint leaves no model")
def disk_full_checkpoint(ws: Workspace) -> str:
    with small_filesystem(ws.root / "full_train") as mount:
        if mount is None:
            raise Skip("needs root to mount a 256 KiB tmpfs")
        result = ws.train("full_train_run", {"steps": 4, "batch_size": 2}, mount / "ckpt")
        line = one_line_error(result, "train")
        expect(not (ws.root / "full_train_run/out/model.pt").exists(), "model.pt written")
        return line


# --- 13, 14, 15: translation and data ---------------------------------------------------------


@case("13", "translate refuses to overwrite its own source")
def output_is_source(ws: Workspace) -> str:
    folder = ws.path("same")
    source = folder / "t1n.nii.gz"
    shutil.copy(sorted(ws.raw.rglob("*t1n*.nii.gz"))[0], source)
    before = source.read_bytes()
    lines = []
    for output in (source, folder / "." / "t1n.nii.gz"):
        result = dfbk("translate", "--checkpoint", ws.model, "--source", source, "--output",
                      output, "--device", "cpu")  # fmt: skip
        lines.append(one_line_error(result, "translate", "t1n.nii.gz"))
    expect(source.read_bytes() == before, "the source volume was changed")
    return lines[0]


def _subject_file(raw: Path, modality: str) -> Path:
    return sorted(raw.rglob(f"*{modality}*.nii*"))[0]


@case("14", "a blank modality is a named bad case (error, or skipped and listed)")
def blank_modality(ws: Workspace) -> str:
    import nibabel as nib
    import numpy as np

    raw = ws.root / "blank_raw"
    shutil.copytree(ws.raw, raw)
    path = _subject_file(raw, "t2w")
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.float32), image.affine), path)
    subject = path.parent.name
    args = ("prepare", "phantom", raw, ws.root / "blank_store", "--modalities", "t1n,t2w")
    line = one_line_error(dfbk(*args, "--size", 64, 64), "prepare", subject)
    skipped = ws.root / "blank_skipped.csv"
    result = dfbk(*args, "--size", 64, 64, "--on-bad-case", "skip", "--skipped-csv", skipped)
    expect(result.returncode == 0, f"skip policy failed: {result.stderr[-300:]}")
    expect(subject in skipped.read_text(), f"{skipped} does not list {subject}")
    return line


@case("15", "a NIfTI header claiming 30000^3 voxels is refused before reading")
def huge_header(ws: Workspace) -> str:
    import gzip

    import nibabel as nib
    import numpy as np

    raw = ws.root / "huge_raw"
    shutil.copytree(ws.raw, raw)
    path = _subject_file(raw, "t1n")
    image = nib.load(path)
    header = image.header.copy()
    header.set_data_shape((30000, 30000, 30000))  # NIfTI-1 dims are int16
    header["vox_offset"] = 352
    data = np.asanyarray(image.dataobj).astype(header.get_data_dtype()).tobytes()
    path.write_bytes(gzip.compress(header.binaryblock + bytes(4) + data))
    args = ("prepare", "phantom", raw, ws.root / "huge_store", "--modalities", "t1n,t2w")
    result = dfbk(*args, "--size", 64, 64, timeout=120)
    return one_line_error(result, "prepare", path.name)


# --- 6, 7, 9, 10: downloads -------------------------------------------------------------------


@contextlib.contextmanager
def zenodo(files: dict[str, bytes]):
    """A local fake Zenodo serving record 900 with `files`; yields download settings."""
    from fakes import serve, zenodo_record

    with serve() as state:
        record = zenodo_record(state, 900, files, 900)
        record["links"].pop("latest")
        state.routes["/api/records/900"] = record
        yield {"zenodo_api": f"{state.base}/api", "record": "900", "files": ["*"]}


def download(ws: Workspace, name: str, files: dict[str, bytes]):
    work = ws.path(name)
    with zenodo(files) as settings:
        result = dfbk("download", "isles2015", work / "raw", "--downloads", work / "dl",
                      "--settings", json.dumps(settings), timeout=120)  # fmt: skip
    return work, result


@case("6", "a zip whose symlinks chain outside the folder is refused")
def zip_symlink_chain(ws: Workspace) -> str:
    from fakes import CHAIN, zip_bytes

    work, result = download(ws, "chain", {"evil_SISS.zip": zip_bytes(CHAIN)})
    line = one_line_error(result, "download", "unsafe archive entry")
    expect(not list(ws.root.rglob("pwned.txt")), "pwned.txt was written")
    expect(not (work / "raw").exists(), "raw folder created")
    return line


@case("7", "a Zenodo file key that is a path is refused")
def traversal_key(ws: Workspace) -> str:
    from fakes import zip_bytes

    key = "../../../x_SISS.zip"
    work, result = download(ws, "deep/er/traversal", {key: zip_bytes([("a.txt", "file", "x")])})
    line = one_line_error(result, "download", key)
    expect(not list(ws.root.rglob("x_SISS.zip*")), "the file was written somewhere")
    return line


@case("9", "a zip bomb is refused by its expansion ratio")
def zip_bomb(ws: Workspace) -> str:
    from fakes import zip_bytes

    bomb = zip_bytes([("data/zeros.bin", "file", bytes(8 << 20))])
    work, result = download(ws, "bomb", {"bomb_SISS.zip": bomb})
    line = one_line_error(result, "download", "bomb")
    expect(not (work / "raw").exists(), "raw folder created")
    return line


@case("10", "the Synapse token never reaches logs or streams")
def token_leak(ws: Workspace) -> str:
    from fakes import BRATS_ZIP, FAKE_CLIENT, RUNNER, TOKEN, token_forms, zip_bytes

    folder = ws.path("token")
    (folder / "fake/synapseclient").mkdir(parents=True, exist_ok=True)
    (folder / "fake/synapseclient/__init__.py").write_text(FAKE_CLIENT)
    (folder / "runner.py").write_text(RUNNER)
    (folder / "tiny.zip").write_bytes(zip_bytes([("case/x.txt", "file", "x")]))
    env = {
        "PYTHONPATH": os.pathsep.join([str(folder / "fake"), str(REPO)]),
        "HOME": str(folder / "home"),
        "SYNAPSE_AUTH_TOKEN": TOKEN,
        "FAKE_NAME": BRATS_ZIP,
        "FAKE_ZIP": str(folder / "tiny.zip"),
        "FAKE_FAIL": "1",
    }
    argv = ["download", "brats2023", str(folder / "raw"), "--downloads", str(folder / "dl")]
    with open(folder / "console.log", "w") as out:
        status = subprocess.run(
            [sys.executable, str(folder / "runner.py"), str(folder / "library.log"), *argv],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
        ).returncode
    said = (folder / "console.log").read_text() + (folder / "library.log").read_text()
    leaked = [form[:6] for form in token_forms(TOKEN) if form in said]
    expect(not leaked, f"token leaked in {len(leaked)} form(s)")
    expect(status != 0 and "***" in said, "the failure or the masked messages are missing")
    return f"failed download (exit {status}); messages kept, token masked in every form"


# --- 3 (import), 16: MLflow -------------------------------------------------------------------


def fake_run(root: Path, method: str, steps: int = 5) -> tuple[Path, Path]:
    """train/ and evaluate/ files of one finished run, as the jobs write them."""
    ident = {"dataset": "phantom", "direction": "t1n-to-t2w", "method": method, "seed": 0}
    train_dir = root / "train" / method
    eval_dir = root / "evaluate" / method
    train_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)
    (train_dir / "run.json").write_text(json.dumps({**ident, "steps": steps, "wall_seconds": 1}))
    rows = [{"step": s, "time": 0.1 * s, "loss": 1 / (s + 1)} for s in range(steps)]
    (train_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"psnr_fg": {"mean": 20.0, "std": 1.0, "n": 2}}
    (eval_dir / "metrics.json").write_text(json.dumps({**ident, "summary": summary}))
    return train_dir, eval_dir


def track(ws: Workspace, runs: list[tuple[Path, Path]], uri: str, env: dict | None = None):
    args = ["track", "--train-dirs", *(t for t, _ in runs), "--eval-dirs", *(e for _, e in runs)]
    out = runs[0][0].parent.parent / "imported.json"
    args += ["--no-models"]  # fake runs have no model.pt (a trained run's import is the workflow's)
    return dfbk(*args, "--uri", uri, "--experiment", "replay", "--out", out, env=env, timeout=400)


@case("3", "the importer keeps the last pass of a log written twice")
def duplicated_log(ws: Workspace) -> str:
    train_dir, eval_dir = fake_run(ws.path("dup_log"), "pix2pix", steps=6)
    log = train_dir / "train_log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines + lines[3:]) + "\n")  # resumed at step 3
    uri = f"sqlite:///{ws.root}/dup_log/mlflow.db"
    result = track(ws, [(train_dir, eval_dir)], uri)
    expect(result.returncode == 0, f"import failed: {result.stderr[-300:]}")
    expect("steps go back" in result.stderr, "no warning that the log was de-duplicated")
    from mlflow import MlflowClient

    record = json.loads((train_dir.parent.parent / "imported.json").read_text())[0]
    steps = [m.step for m in MlflowClient(uri).get_metric_history(record["run_id"], "loss")]
    expect(sorted(steps) == list(range(6)), f"MLflow steps {sorted(steps)}")
    return f"6 unique steps in MLflow, restarts {record['log_restarts']} recorded and reported"


@case("16", "an unreachable tracking server fails in one line within a short budget")
def unreachable_server(ws: Workspace) -> str:
    runs = [fake_run(ws.path("unreachable"), "pix2pix")]
    start = time.monotonic()
    result = track(ws, runs, f"http://127.0.0.1:{closed_port()}")
    seconds = time.monotonic() - start
    line = one_line_error(result, "track", "127.0.0.1")
    expect(seconds < 60, f"took {seconds:.0f} s")
    return f"{seconds:.1f} s: {line[:120]}"


@case("16", "a locked SQLite store fails in one line")
def locked_store(ws: Workspace) -> str:
    runs = [fake_run(ws.path("locked"), "pix2pix")]
    db = ws.root / "locked" / "mlflow.db"
    uri = f"sqlite:///{db}"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE IF NOT EXISTS held (x)")
    holder.execute("BEGIN EXCLUSIVE")  # as a writer that never lets go
    try:
        result = track(ws, runs, uri, env={"DFBK_TRACKING_LOCKED_SECONDS": "5"})
    finally:
        holder.close()
    return one_line_error(result, "track", "mlflow.db", "locked")


# --- 18-36: the second audit: output folders, store integrity, one line for every fault --------


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def unchanged(folder: Path, before: dict[str, bytes]) -> None:
    after = listing(folder)
    lost = sorted(set(before) - set(after))
    expect(not lost, f"{len(lost)} file(s) deleted from {folder}, e.g. {lost[:3]}")
    changed = sorted(k for k in before if after[k] != before[k])
    expect(not changed, f"changed in {folder}: {changed[:3]}")
    added = sorted(set(after) - set(before))
    expect(not added, f"written into {folder}: {added[:3]}")


def raw_copy(ws: Workspace, name: str) -> Path:
    """A private copy of the shared phantom's raw folder (t1n, t2w and mask of each subject)."""
    raw = ws.root / name / "raw"
    wanted = ("-t1n.nii.gz", "-t2w.nii.gz", "-mask.nii.gz", "subjects.json")
    shutil.copytree(ws.raw, raw, ignore=lambda d, names: [n for n in names if
                    Path(d, n).is_file() and not n.endswith(wanted)])  # fmt: skip
    return raw


def store_copy(ws: Workspace, name: str) -> tuple[Path, Path]:
    """A byte-identical private copy of the shared slice store, and the shared split."""
    store, split = ws.store
    return shutil.copytree(store, ws.root / name / "store"), split


def scale_slab(store_dir: Path, array: str, subject: str, factor: float) -> None:
    """Multiply one subject's slices of an array file in place, as a hand edit would."""
    import numpy as np

    from dfbk.data.slices.store import SliceStore

    store = SliceStore(store_dir)
    start, stop = store.subject_range(subject)
    name, dtype = (f"{array}.u8", "u1") if array in ("mask", "label") else (f"{array}.f32", "<f4")
    data = np.memmap(store_dir / name, dtype=dtype, mode="r+",
                     shape=(store.n_slices, *store.size))  # fmt: skip
    data[start:stop] = (data[start:stop] * factor).astype(dtype)
    data.flush()
    del data


def test_subjects(split: Path) -> list[str]:
    return json.loads(split.read_text())["test"]


def reference_predictions(store_dir: Path, split: Path, folder: Path, scale=lambda x: x) -> Path:
    """Each test subject's own t2w slices as its prediction (a perfect method), mapped by
    `scale`: the folder an external method hands to `dfbk evaluate`."""
    import numpy as np

    from dfbk.data.io import write_nifti
    from dfbk.data.slices.store import SliceStore

    store = SliceStore(store_dir)
    for subject in test_subjects(split):
        start, stop = store.subject_range(subject)
        volume = np.moveaxis(np.asarray(store.images("t2w")[start:stop]), 0, 2)
        write_nifti(scale(volume), store.subject_affine(subject), folder / f"{subject}.nii.gz")
    return folder


def evaluate(store: Path, predictions: Path, split: Path, out: Path):
    return dfbk("evaluate", store, predictions, split, "t1n-to-t2w", out, "--dataset", "phantom",
                "--method", "reference", "--seed", 0)  # fmt: skip


def translate(checkpoint: Path, source: Path, output: Path, **kwargs):
    return dfbk("translate", "--checkpoint", checkpoint, "-i", source, "-o", output, "--device",
                "cpu", "--threads", 1, **kwargs)  # fmt: skip


def volume_like(ws: Workspace, path: Path, affine) -> Path:
    """A subject's t1n voxels saved at `path` with another affine (voxel size, orientation)."""
    import nibabel as nib
    import numpy as np

    image = nib.load(_subject_file(ws.raw, "t1n"))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), affine), path)
    return path


def prepare(raw: Path, out: Path, *extra, size: int = 32, modalities: str = "t1n,t2w"):
    return dfbk("prepare", "phantom", raw, out, "--modalities", modalities, "--size", size, size,
                *extra, timeout=180)  # fmt: skip


@case("18", "prepare into its own raw folder deletes nothing")
def prepare_into_raw(ws: Workspace) -> str:
    raw = raw_copy(ws, "into_raw")
    before = listing(raw)
    line = one_line_error(prepare(raw, raw), "prepare", f"{raw}: is the raw folder")
    unchanged(raw, before)
    return line


@case("19", "prepare into a parent of the raw folder deletes nothing")
def prepare_into_parent(ws: Workspace) -> str:
    data = ws.root / "proj" / "data"
    shutil.copytree(raw_copy(ws, "into_parent"), data / "raw")
    (data / "notes.md").write_text("my notes\n")
    before = listing(data)
    line = one_line_error(prepare(data / "raw", data), "prepare", f"{data}: holds the raw folder")
    unchanged(data, before)
    return line


@case("20", "predict into the slice store or the current folder writes nothing")
def predict_into_store(ws: Workspace) -> str:
    store, split = store_copy(ws, "into_store")
    before = listing(store)
    result = dfbk("predict", ws.model, store, split, store, "--device", "cpu")
    line = one_line_error(result, "predict", f"{store}: is the slice store")
    unchanged(store, before)
    here = ws.path("into_store/here")
    result = dfbk("predict", ws.model, store, split, ".", "--device", "cpu", cwd=here)
    one_line_error(result, "predict", "is the current folder")
    expect(not list(here.iterdir()), f"written into {here}")
    return line


@case("21", "a slice store edited after prepare is never scored or translated")
def edited_store(ws: Workspace) -> str:
    store, split = store_copy(ws, "edited")
    reference = reference_predictions(store, split, ws.path("edited/reference"))
    result = evaluate(store, reference, split, ws.root / "edited/intact")
    expect(result.returncode == 0, f"the intact store was refused: {result.stderr[-300:]}")
    metrics = json.loads((ws.root / "edited/intact/metrics.json").read_text())
    ssim = metrics["summary"]["ssim_full"]["mean"]
    expect(abs(ssim - 1) < 1e-6, f"a perfect prediction scored SSIM {ssim}")
    test = test_subjects(split)[0]
    scale_slab(store, "t2w", test, 0.5)  # the edit that moved SSIM 0.0163 -> 0.0321
    out = ws.root / "edited/eval"
    line = one_line_error(evaluate(store, reference, split, out), "evaluate",
                          str(store / "t2w.f32"), test)  # fmt: skip
    expect(not out.exists(), f"{out} written")
    scale_slab(store, "t1n", test, 0.5)
    out = ws.root / "edited/pred"
    result = dfbk("predict", ws.model, store, split, out, "--device", "cpu")
    one_line_error(result, "predict", str(store / "t1n.f32"))
    expect(not out.exists(), f"{out} written")
    return line


@case("22", "a second prepare into the same folder is refused; the first finishes whole")
def concurrent_prepare(ws: Workspace) -> str:
    """The first prepare is held inside its first subject (a gate file) so that the second
    one certainly starts while the first is writing: the order of a real race, made certain."""
    from fakes import GATED_PREPARE

    from dfbk.data.slices.store import SliceStore

    work = ws.path("concurrent")
    raw, out = raw_copy(ws, "concurrent"), work / "store"
    started, gate = work / "started", work / "gate"
    first = subprocess.Popen([sys.executable, "-c", GATED_PREPARE, str(raw), str(out), str(started),
                              str(gate), "32"], stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        expect(started.exists(), f"the first prepare did not start ({first.poll()})")
        line = one_line_error(prepare(raw, out), "prepare", "another dfbk prepare")
        gate.touch()
        expect(first.wait(120) == 0, f"the first prepare failed: {first.stderr.read()[-300:]}")
    finally:
        gate.touch()
        if first.poll() is None:
            first.kill()
        first.wait()
    store = SliceStore(out)
    store.verify(store.subjects, ["t1n", "t2w", "mask", "label"])  # one prepare's, whole
    left = sorted(p.name for p in work.iterdir())
    expect(left == ["gate", "raw", "started", "store"], f"left beside the store: {left}")
    return line


def twin(raw: Path, subject: str, name: str) -> None:
    """Copy a subject's folder under another id, byte for byte."""
    shutil.copytree(raw / subject, raw / name)
    for path in (raw / name).iterdir():
        path.rename(path.with_name(path.name.replace(subject, name)))


LAYOUT = {
    "modalities": {"t1n": "{case}/{case}-t1n.nii.gz", "t2w": "{case}/{case}-t2w.nii.gz"},
    "mask": "{case}/{case}-mask.nii.gz",
}


def prepare_layout(raw: Path, out: Path, layout: dict, timeout: float = 180):
    return dfbk("prepare", "mine", raw, out, "--modalities", "t1n,t2w", "--size", 32, 32,
                "--layout", json.dumps(layout), timeout=timeout)  # fmt: skip


@case("23", "subject ids differing only in letter case are refused")
def case_colliding_ids(ws: Workspace) -> str:
    raw = raw_copy(ws, "case_ids")
    twin(raw, "phantom-003", "PHANTOM-003")
    out = ws.root / "case_ids/store"
    line = one_line_error(prepare_layout(raw, out, LAYOUT), "prepare", "PHANTOM-003",
                          "phantom-003", "letter case")  # fmt: skip
    expect(not out.exists(), f"{out} written")
    return line


@case("23", "identical volumes under two subject ids are refused")
def identical_subjects(ws: Workspace) -> str:
    raw = raw_copy(ws, "twins")
    twin(raw, "phantom-001", "phantom-101")
    out = ws.root / "twins/store"
    line = one_line_error(prepare(raw, out), "prepare", "phantom-001", "phantom-101", "identical")
    expect(not out.exists(), f"{out} written")
    return line


@case("24", "a prediction outside [0, 1] is refused naming the file and range")
def tanh_prediction(ws: Workspace) -> str:
    store, split = ws.store
    predictions = reference_predictions(store, split, ws.path("tanh/pred"), lambda x: 2 * x - 1)
    out = ws.root / "tanh/eval"
    path = predictions / f"{test_subjects(split)[0]}.nii.gz"
    line = one_line_error(evaluate(store, predictions, split, out), "evaluate", str(path),
                          "[-1, 1]", "outside")  # fmt: skip
    expect(not out.exists(), f"{out} written")
    return line


@case("25", "a complex-valued NIfTI is refused naming the file")
def complex_volume(ws: Workspace) -> str:
    import nibabel as nib
    import numpy as np

    raw = raw_copy(ws, "complex")
    path = _subject_file(raw, "t2w")
    image = nib.load(path)
    data = image.get_fdata(dtype=np.float32)
    nib.save(nib.Nifti1Image((data + 1j * data).astype(np.complex64), image.affine), path)
    out = ws.root / "complex/store"
    line = one_line_error(prepare(raw, out), "prepare", path.name, "complex64")
    expect(not out.exists(), f"{out} written")
    return line


@case("26", "a backtracking layout case pattern is refused, not run")
def backtracking_pattern(ws: Workspace) -> str:
    raw = ws.path("backtrack/raw")
    case_dir = raw / ("a" * 40)
    case_dir.mkdir(parents=True, exist_ok=True)
    for modality in ("t1n", "t2w"):
        (case_dir / f"{'a' * 40}-{modality}.nii.gz").write_bytes(b"")
    layout = {**LAYOUT, "case": "(a|aa)+b", "mask": None}
    try:
        result = prepare_layout(raw, ws.root / "backtrack/store", layout, timeout=120)
    except subprocess.TimeoutExpired:
        raise Unhandled("prepare still running after 120 s") from None
    return one_line_error(result, "prepare", "layout.case", "(a|aa)+b")


@case("27", "refused weights pin no hash and leave no file")
def junk_weights(ws: Workspace) -> str:
    import numpy as np

    folder = ws.path("weights")
    junk, dest = folder / "junk.npz", folder / "dest"
    np.savez(junk, unrelated=np.zeros(3))
    result = dfbk("weights", "resvit-vit", "--from-file", junk, "--dest", dest)
    line = one_line_error(result, "weights", str(junk))
    left = [p.name for p in dest.rglob("*")] if dest.exists() else []
    expect(not left, f"left in {dest}: {left}")
    return line


@case("28", "non-integer label values in a layout are one line")
def label_values(ws: Workspace) -> str:
    layout = {**LAYOUT, "label": "{case}/{case}-seg.nii.gz", "label_values": [0, "one"]}
    out = ws.root / "labels/store"
    line = one_line_error(prepare_layout(ws.raw, out, layout), "prepare", "label_values")
    expect(not out.exists(), f"{out} written")
    return line


@case("29", "translating a NIfTI with a singular affine is one line")
def singular_affine(ws: Workspace) -> str:
    import nibabel as nib
    import numpy as np

    folder = ws.path("singular")
    data = np.asanyarray(nib.load(_subject_file(ws.raw, "t1n")).dataobj).astype(np.int16)
    header = nib.Nifti1Header()  # an sform whose slice axis has no extent: not invertible
    header.set_data_shape(data.shape)
    header.set_data_dtype(np.int16)
    header["sform_code"], header["qform_code"] = 2, 0
    header["srow_x"], header["srow_y"], header["srow_z"] = [5, 0, 0, 0], [0, 5, 0, 0], [0] * 4
    source = folder / "singular.nii.gz"
    nib.save(nib.Nifti1Image(data, None, header=header), str(source))
    out = folder / "out.nii.gz"
    line = one_line_error(translate(ws.model, source, out), "translate", str(source), "affine")
    expect(not out.exists(), f"{out} written")
    return line


@case("30", "a store whose size was edited to another shape of the same bytes is refused")
def edited_size(ws: Workspace) -> str:
    store, split = store_copy(ws, "resized")
    meta = json.loads((store / "store.json").read_text())
    height, width = meta["size"]
    meta["size"] = [height // 2, width * 2]  # same bytes; both sides still suit the network
    (store / "store.json").write_text(json.dumps(meta))
    overrides = {**TINY, "num_downs": 4}  # sides divisible by 16
    result = ws.train("resized", overrides, store=store, split=split)
    line = one_line_error(result, "train", str(store), "slices")
    expect(not (ws.root / "resized/out/model.pt").exists(), "model.pt written")
    return line


@case("31", "a header declaring 2000 mm voxels is refused before resampling")
def absurd_voxels(ws: Workspace) -> str:
    import numpy as np

    folder = ws.path("huge_voxels")
    source = volume_like(ws, folder / "huge.nii.gz", np.diag([2000.0, 2000.0, 2000.0, 1.0]))
    out = folder / "out.nii.gz"
    try:
        result = translate(ws.model, source, out, timeout=120)
    except subprocess.TimeoutExpired:
        raise Unhandled("translate still running after 120 s (resampling?)") from None
    line = one_line_error(result, "translate", str(source), "2000x2000 mm")
    expect(not out.exists(), f"{out} written")
    return line


@case("32", "translate onto a full disk is one line and leaves no file")
def translate_full_disk(ws: Workspace) -> str:
    import resource

    folder = ws.path("translate_full")
    out = folder / "out" / "t2w.nii"  # uncompressed: larger than the limit below

    def limit() -> None:  # `ulimit -f 16`: writes past 16 KiB fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, 16_384))

    result = translate(ws.model, _subject_file(ws.raw, "t1n"), out, preexec_fn=limit)
    line = one_line_error(result, "translate", str(out), "cannot write")
    left = list(out.parent.iterdir()) if out.parent.exists() else []
    expect(not left, f"left behind: {[p.name for p in left]}")
    return line


@case("32", "translate into a read-only folder is one line and leaves no file")
def translate_read_only(ws: Workspace) -> str:
    folder = ws.path("translate_ro")
    if os.geteuid() == 0:  # root ignores permission bits: a read-only filesystem instead
        context = small_filesystem(folder / "locked", "64k", "ro")
    else:
        (folder / "locked").mkdir(exist_ok=True)
        (folder / "locked").chmod(0o555)
        context = contextlib.nullcontext(folder / "locked")
    with context as locked:
        if locked is None:
            raise Skip("cannot mount a read-only tmpfs")
        out = locked / "t2w.nii.gz"
        result = translate(ws.model, _subject_file(ws.raw, "t1n"), out)
        line = one_line_error(result, "translate", str(out), "cannot write")
        expect(not list(locked.iterdir()), f"left in {locked}")
    return line


@case("33", "split fractions that are all zero are one line")
def zero_fractions(ws: Workspace) -> str:
    store, _ = ws.store
    out = ws.path("fractions") / "splits.json"
    result = dfbk("split", store, "--out", out, "--fractions", 0, 0, 0)
    line = one_line_error(result, "split", "fractions")
    expect(not out.exists(), f"{out} written")
    return line


@case("34", "a checkpoint whose settings do not fit its weights is one line")
def mismatched_hparams(ws: Workspace) -> str:
    from dfbk.training.checkpoint import load_checkpoint, save_atomic

    payload = load_checkpoint(ws.model)
    payload["hparams"]["ngf"] *= 2  # edited (and re-hashed): the weights are of the old width
    model = save_atomic(payload, ws.path("hparams") / "model.pt")
    store, split = ws.store
    out = ws.root / "hparams/pred"
    result = dfbk("predict", model, store, split, out, "--device", "cpu")
    line = one_line_error(result, "predict", str(model), "do not fit")
    expect(not out.exists(), f"{out} written")
    volume = ws.root / "hparams/t2w.nii.gz"
    result = translate(model, _subject_file(ws.raw, "t1n"), volume)
    one_line_error(result, "translate", str(model), "do not fit")
    expect(not volume.exists(), f"{volume} written")
    return line


@case("35", "dfbk train on a 63x63 store is one line")
def odd_size(ws: Workspace) -> str:
    work = ws.path("odd")
    store, split = work / "store", work / "splits.json"
    result = prepare(ws.raw, store, size=63)
    expect(result.returncode == 0, f"prepare failed: {result.stderr[-300:]}")
    result = dfbk("split", store, "--out", split)
    expect(result.returncode == 0, f"split failed: {result.stderr[-300:]}")
    result = ws.train("odd", TINY, store=store, split=split)
    line = one_line_error(result, "train", "63x63", "divisible by")
    expect(not (work / "out").exists(), f"{work / 'out'} written")
    return line


def finished_volumes(marker: Path) -> list[str]:
    """The volumes a staging folder's marker lists as finished (none while it is unreadable)."""
    try:
        return list(json.loads(marker.read_text()).get("volumes") or [])
    except (OSError, ValueError, AttributeError):
        return []


@case("36", "a killed folder translate leaves nothing that looks finished, and resumes")
def killed_folder_translate(ws: Workspace) -> str:
    work = ws.path("killed")
    sources = work / "in"
    sources.mkdir(exist_ok=True)
    for k, path in enumerate(sorted(ws.raw.rglob("*-t1n.nii.gz")) * 2):
        shutil.copy(path, sources / f"s{k}_t1n.nii.gz")
    count = len(list(sources.iterdir()))
    out = work / "out"
    staged = work / ".out.partial" / ".dfbk-output.json"
    command = [DFBK, "translate", "--checkpoint", str(ws.model), "-i", str(sources), "-o",
               str(out), "--device", "cpu", "--threads", "1"]  # fmt: skip
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while run.poll() is None and time.monotonic() < deadline:
            if finished_volumes(staged) or list(out.glob("[!.]*.nii.gz")):  # staged or published
                break
            time.sleep(0.02)
    finally:
        run.kill()  # as SIGKILL, a SLURM time limit or a lost node ends it
        status = run.wait()
    if status == 0:
        raise Skip(f"translate finished all {count} volumes before it could be killed")
    if out.exists():
        raise Unhandled(f"{out} exists after the kill, holding {sorted(listing(out))}")
    marker = json.loads(staged.read_text())
    expect(
        marker.get("complete") is False, f"staging marker says complete: {marker.get('complete')}"
    )
    finished = len(marker["volumes"])
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    expect(again.returncode == 0, f"the rerun failed: {again.stderr[-300:]}")
    names = sorted(p.name for p in out.iterdir() if p.name.endswith(".nii.gz"))
    expect(len(names) == count, f"{len(names)} of {count} volumes in {out}")
    expect(json.loads((out / ".dfbk-output.json").read_text())["complete"] is True, "not complete")
    expect(not staged.parent.exists(), f"{staged.parent} left behind")
    return (
        f"killed after {finished} of {count}: no {out.name}/, staging marked incomplete; "
        f"the rerun kept them and finished"
    )


# --- 2, 16, 17: the micro workflow ------------------------------------------------------------

WORKFLOW_CONFIG = {
    "results_dir": "res dir/results",  # item 17: a space in every path
    "raw_dir": "res dir/raw",
    "seeds": [0],
    "datasets": {
        "phantom": {
            "phantom": {"subjects": 4, "voxel_mm": 5.0, "seed": 0},
            "size": [64, 64],
            "split": {"seed": 0, "fractions": [0.5, 0.25, 0.25]},
            "directions": ["t1n-to-t2w"],
        }
    },
    "methods": {"pix2pix": {"preset": "tiny", "overrides": TINY}},
    "train": {"device": "cpu", "threads": 1, "checkpoint_every": 2, "gpus": 0},
    "knowledge": {"encoder": "none"},
    "tracking": {"experiment": "replay"},
}


def snakemake(ws: Workspace, *args: str, config: dict | None = None):
    workdir = ws.path("workflow")
    path = workdir / "config.yaml"
    path.write_text(json.dumps(config or WORKFLOW_CONFIG))
    command = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile")]
    command += ["--directory", str(workdir), "--configfile", str(path), "--cores", "2", *args]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    return workdir, result.returncode, result.stdout + result.stderr


def finished_workflow(ws: Workspace) -> Path:
    """The micro workflow run once; a failure is reported by every case that needs it."""
    if "workflow" not in ws._made:
        workdir, status, output = snakemake(ws)
        if status != 0:
            logs = sorted((workdir / "res dir/results/logs").rglob("*.log"))
            tails = [p.read_text().strip().splitlines()[-1:] for p in logs]
            errors = [t[0] for t in tails if t and "error" in t[0].lower()]
            workdir = Unhandled(f"micro workflow failed: {(errors or [output[-300:]])[0][:300]}")
        ws._made["workflow"] = workdir
    if isinstance(ws._made["workflow"], Unhandled):
        raise ws._made["workflow"]
    return ws._made["workflow"]


@case("17", "a results folder with a space runs end to end", workflow=True)
def spaces(ws: Workspace) -> str:
    workdir = finished_workflow(ws)
    table = workdir / "res dir/results/tables/comparison.csv"
    expect(table.is_file(), f"{table} missing")
    return f"micro workflow finished; {table.relative_to(workdir)} written"


@case("2", "a changed slice size reaches training and the tables", workflow=True)
def stale_store(ws: Workspace) -> str:
    finished_workflow(ws)
    config = json.loads(json.dumps(WORKFLOW_CONFIG))
    config["datasets"]["phantom"]["size"] = [128, 128]
    _, status, output = snakemake(ws, "-n", config=config)
    expect(status == 0, f"dry run failed: {output[-300:]}")
    for rule in ("prepare_slices", "train_method", "evaluate_predictions", "tabulate_comparison"):
        expect(f"rule {rule}:" in output, f"{rule} not scheduled")
    return "dry run schedules prepare, train, evaluate and the tables again"


@case("16", "a run deleted in MLflow is restored by the next workflow run", workflow=True)
def deleted_run(ws: Workspace) -> str:
    workdir = finished_workflow(ws)
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'res dir/results/mlflow.db'}")
    experiment = client.get_experiment_by_name("replay").experiment_id
    victim = client.search_runs([experiment], max_results=1)[0].info.run_id
    client.delete_run(victim)
    _, status, output = snakemake(ws)
    expect(status == 0, f"rerun failed: {output[-300:]}")
    stage = client.get_run(victim).info.lifecycle_stage
    expect(stage == "active", f"run is {stage} after the rerun")
    expect("rule train_method:" not in output, "training ran again")
    return "the next run re-imported it (same run id), nothing retrained"


# --- driver -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated item numbers to replay (default: all)")
    parser.add_argument("--no-workflow", action="store_true", help="skip the micro workflow")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    wanted = set(args.only.split(",")) if args.only else None
    selected = [
        c
        for c in CASES
        if (wanted is None or c.item in wanted) and not (args.no_workflow and c.workflow)
    ]
    selected.sort(key=lambda c: int(c.item))
    root = args.keep or Path(tempfile.mkdtemp(prefix="dfbk-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    ws = Workspace(root)
    counts = {"handled": 0, "failed": 0, "skipped": 0}
    start = time.monotonic()
    for item in selected:
        began = time.monotonic()
        try:
            detail, verdict = item.run(ws), "handled"
        except Skip as why:
            detail, verdict = str(why), "skipped"
        except Unhandled as why:
            detail, verdict = str(why), "failed"
        except Exception as error:  # a broken replay case counts against the code, visibly
            detail, verdict = f"replay error: {type(error).__name__}: {error}", "failed"
        counts[verdict] += 1
        seconds = time.monotonic() - began
        detail = " ".join(str(detail).split())[:220]
        print(f"[{item.item:>2}] {verdict.upper():8} {item.name} ({seconds:.0f} s): {detail}")
        sys.stdout.flush()
    tried = counts["handled"] + counts["failed"]
    print(
        f"tried {tried} / handled {counts['handled']} / failed {counts['failed']}"
        f" (skipped {counts['skipped']}; {time.monotonic() - start:.0f} s; work in {root})"
    )
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
