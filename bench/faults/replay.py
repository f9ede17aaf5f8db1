"""Replay the audits' fault lists against the CLI and a micro workflow.

Usage: python bench/faults/replay.py [--only 1,3,16] [--no-workflow] [--keep DIR]

Each case reproduces one reported fault and checks the handled behaviour: exit status not 0, a
one-line `dfbk <verb>: error: ...` naming the file or key (no traceback), and no half-written
output; or, where the fault has a right answer (a resumed log, a deleted MLflow run), that
answer. One line per case, then `tried / handled / failed`, so the next audit starts from a
number. Exit status 0 only when every tried case was handled. A case that cannot be set up here
(no root for a small filesystem) is skipped and not counted as tried.

Runs on the CPU in a few minutes (the micro workflow is most of it); nothing leaves 127.0.0.1.
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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the fake Zenodo server and Synapse client of the tests
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
        """`dfbk train phantom t1n-to-t2w pix2pix` into <root>/<name>; the CompletedProcess."""
        store, split = self.store
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
def small_filesystem(where: Path, size: str = "256k"):
    """A tmpfs of `size` at `where` (root only); yields None when it cannot be mounted."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        yield None
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
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
    from test_download import FakeServer, Handler, zenodo_record

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = FakeServer()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.state = state
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        record = zenodo_record(state, 900, files, 900)
        record["links"].pop("latest")
        state.routes["/api/records/900"] = record
        yield {"zenodo_api": f"{state.base}/api", "record": "900", "files": ["*"]}
    finally:
        httpd.shutdown()
        httpd.server_close()


def download(ws: Workspace, name: str, files: dict[str, bytes]):
    work = ws.path(name)
    with zenodo(files) as settings:
        result = dfbk("download", "isles2015", work / "raw", "--downloads", work / "dl",
                      "--settings", json.dumps(settings), timeout=120)  # fmt: skip
    return work, result


@case("6", "a zip whose symlinks chain outside the folder is refused")
def zip_symlink_chain(ws: Workspace) -> str:
    from test_faults_data import CHAIN, zip_bytes

    work, result = download(ws, "chain", {"evil_SISS.zip": zip_bytes(CHAIN)})
    line = one_line_error(result, "download", "unsafe archive entry")
    expect(not list(ws.root.rglob("pwned.txt")), "pwned.txt was written")
    expect(not (work / "raw").exists(), "raw folder created")
    return line


@case("7", "a Zenodo file key that is a path is refused")
def traversal_key(ws: Workspace) -> str:
    from test_faults_data import zip_bytes

    key = "../../../x_SISS.zip"
    work, result = download(ws, "deep/er/traversal", {key: zip_bytes([("a.txt", "file", "x")])})
    line = one_line_error(result, "download", key)
    expect(not list(ws.root.rglob("x_SISS.zip*")), "the file was written somewhere")
    return line


@case("9", "a zip bomb is refused by its expansion ratio")
def zip_bomb(ws: Workspace) -> str:
    from test_faults_data import zip_bytes

    bomb = zip_bytes([("data/zeros.bin", "file", bytes(8 << 20))])
    work, result = download(ws, "bomb", {"bomb_SISS.zip": bomb})
    line = one_line_error(result, "download", "bomb")
    expect(not (work / "raw").exists(), "raw folder created")
    return line


@case("10", "the Synapse token never reaches logs or streams")
def token_leak(ws: Workspace) -> str:
    from test_faults_data import BRATS_ZIP, FAKE_CLIENT, RUNNER, TOKEN, token_forms, zip_bytes

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
