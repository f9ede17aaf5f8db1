"""Faults the trainer and its checkpoints must survive or refuse with one line naming the file.

Reused checkpoints (other split, seed, direction, an edited last.pt), corrupt and malicious
files, a torn log line, stale temporaries, a full disk, a second trainer on the same folder,
and a Snakemake that dies under its trainer.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kill_at_step, train_spec
from conftest import train_command as run_command

from dfbk.errors import DataError, TrainingError
from dfbk.training.checkpoint import check_fingerprint, load_checkpoint, save_atomic
from dfbk.training.trainer import Trainer, TrainSpec

SMALL = {"steps": 6, "batch_size": 4, "decay_start": 3, "num_downs": 4, "ngf": 8, "ndf": 8}


def spec_for(phantom_store, folder: Path, **kwargs) -> TrainSpec:
    fields = {"overrides": dict(SMALL), "checkpoint_every": 2, **kwargs}
    return train_spec(phantom_store, folder, **fields)


@pytest.fixture(scope="module")
def finished(phantom_store, tmp_path_factory) -> TrainSpec:
    """A finished 6-step run; tests copy its folders before changing anything."""
    spec = spec_for(phantom_store, tmp_path_factory.mktemp("finished"))
    Trainer(spec).run()
    return spec


def copy_run(spec: TrainSpec, folder: Path) -> TrainSpec:
    shutil.copytree(spec.checkpoint_dir, folder / "ckpt")
    return TrainSpec(
        **{**spec.__dict__, "checkpoint_dir": folder / "ckpt", "out_dir": folder / "out"}
    )


def other_split(phantom_store, folder: Path) -> Path:
    """The same subjects, val and test swapped: a held-out subject moves into another role."""
    _, split = phantom_store
    data = json.loads(split.read_text())
    data["val"], data["test"] = data["test"], data["val"]
    path = folder / "other.json"
    path.write_text(json.dumps(data))
    return path


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ----- item 1: a checkpoint is never reused for other data ----------------------------------
def test_resume_refuses_another_split(phantom_store, finished, tmp_path):
    spec = copy_run(finished, tmp_path)
    spec.split_path = other_split(phantom_store, tmp_path)
    with pytest.raises(TrainingError, match=r"other data or settings \(split_sha256: ") as err:
        Trainer(spec).run()
    assert str(spec.checkpoint_dir / "last.pt") in one_line(err)
    assert not spec.out_dir.exists()  # nothing "retrained" from the old weights


def test_resume_refuses_another_seed(finished, tmp_path):
    spec = copy_run(finished, tmp_path)
    spec.seed = 1
    with pytest.raises(TrainingError, match=r"seed: 0 -> 1"):
        Trainer(spec).run()


def test_an_edited_last_pt_is_refused(finished, tmp_path):
    spec = copy_run(finished, tmp_path)
    last = spec.checkpoint_dir / "last.pt"
    payload = load_checkpoint(last)
    payload["fingerprint"]["direction"] = payload["direction"] = "t2w-to-t1n"
    torch.save(payload, last)  # edited by hand: the stored content hash no longer fits
    with pytest.raises(TrainingError, match="content hash mismatch"):
        Trainer(spec).run()
    save_atomic(payload, last)  # edited and re-hashed: the fingerprint still differs
    with pytest.raises(TrainingError, match=r'direction: "t2w-to-t1n" -> "t1n-to-t2w"'):
        Trainer(spec).run()


def test_model_refuses_a_split_or_store_it_was_not_trained_with(phantom_store, finished, tmp_path):
    store, split = phantom_store
    model = finished.out_dir / "model.pt"
    payload = load_checkpoint(model)
    check_fingerprint(payload, store.root, split, model)  # its own data: accepted
    with pytest.raises(DataError, match=r"model\.pt: trained on other data .*split_sha256"):
        check_fingerprint(payload, store.root, other_split(phantom_store, tmp_path), model)
    copy = tmp_path / "store"
    shutil.copytree(store.root, copy)
    manifest = copy / "manifest.csv"
    manifest.write_text(manifest.read_text().replace(",0.", ",1.", 1))
    with pytest.raises(DataError, match="store_sha256"):
        check_fingerprint(payload, copy, split, model)


def test_a_previous_stage_trained_on_another_split_is_refused(phantom_store, finished, tmp_path):
    split = other_split(phantom_store, tmp_path)
    spec = spec_for(
        phantom_store, tmp_path, split_path=split, init_from=finished.out_dir / "model.pt"
    )
    with pytest.raises(DataError, match=r"model\.pt: trained on other data .*split_sha256"):
        Trainer(spec)


# ----- items 5 and 8: corrupt and malicious files ---------------------------------------------
def test_flipped_bytes_are_refused_naming_the_file(finished, tmp_path):
    path = tmp_path / "model.pt"
    data = bytearray((finished.out_dir / "model.pt").read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.choice(len(data), size=2000, replace=False):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(TrainingError) as err:
        load_checkpoint(path)
    assert one_line(err).startswith(f"{path}: ")


def test_a_changed_weight_is_caught_by_the_content_hash(finished, tmp_path):
    path = tmp_path / "model.pt"
    payload = load_checkpoint(finished.out_dir / "model.pt")
    key = next(k for k, v in payload["state"].items() if v.is_floating_point())
    payload["state"][key].view(-1)[0] += 1e-3  # one weight, e.g. a bit flip on disk
    torch.save(payload, path)
    with pytest.raises(TrainingError, match=r"content hash mismatch") as err:
        load_checkpoint(path)
    assert one_line(err).startswith(f"{path}: ")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_never_run(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "model.pt"
    torch.save({"format": "dfbk-checkpoint", "state": {}, "x": _Payload(marker)}, path)
    with pytest.raises(TrainingError, match="refused: it holds pickled Python objects") as err:
        load_checkpoint(path)
    assert one_line(err).startswith(f"{path}: ")
    assert not marker.exists()


def test_a_format_1_checkpoint_gets_a_clear_error(finished, tmp_path):
    path = tmp_path / "model.pt"
    payload = load_checkpoint(finished.out_dir / "model.pt")
    torch.save({**payload, "format_version": 1}, path)
    with pytest.raises(TrainingError, match="format 1 from an older dfbk"):
        load_checkpoint(path)


# ----- items 11 and 12: torn log, stale temporaries, full disk ---------------------------------
def test_a_torn_last_log_line_is_dropped_on_resume(phantom_store, tmp_path):
    spec = spec_for(phantom_store, tmp_path)
    kill_at_step(Trainer(spec), 5)
    log = spec.checkpoint_dir / "train_log.jsonl"
    with open(log, "a") as f:
        f.write('{"step": 4, "time": 0.0}\n{"step": 5, "ti')  # killed mid-write
    stale = [spec.checkpoint_dir / ".last.pt.abc.tmp", spec.out_dir / ".model.pt.abc.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    Trainer(spec).run()
    steps = [json.loads(x)["step"] for x in (spec.out_dir / "train_log.jsonl").open()]
    assert steps == list(range(6))
    assert not any(path.exists() for path in stale)


def test_a_bad_line_inside_the_log_names_the_file(finished, tmp_path):
    spec = copy_run(finished, tmp_path)
    log = spec.checkpoint_dir / "train_log.jsonl"
    lines = log.read_text().splitlines()
    lines[2] = lines[2][:10]
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(TrainingError, match=rf"{log}: line 3 is not a log record"):
        Trainer(spec).run()


def train_command(phantom_store, folder: Path, steps: int, *extra: str) -> list[str]:
    overrides = {**SMALL, "steps": steps, "decay_start": steps // 2}
    return run_command(phantom_store, folder, overrides, *extra)


def _small_files() -> None:
    """In the child: files may not grow past 64 kB (a full disk), and EFBIG is an error."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))


def test_a_full_disk_is_one_line_naming_the_checkpoint(phantom_store, tmp_path):
    command = train_command(phantom_store, tmp_path, 6, "--checkpoint-every", "2")
    result = subprocess.run(
        [*command, "--val-every", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_small_files,
    )
    last = tmp_path / "ckpt" / "last.pt"
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert lines[-1].startswith(f"dfbk train: error: {last}: cannot write checkpoint (")
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [".lock", "train_log.jsonl"]


# ----- item 3: one trainer per folder, none outliving Snakemake -------------------------------
def lock_holder(folder: Path) -> int | None:
    try:
        return int((folder / "ckpt" / ".lock").read_text())
    except (OSError, ValueError):
        return None


def wait_until(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_second_trainer_on_the_same_folder_fails_at_once(phantom_store, tmp_path):
    command = train_command(phantom_store, tmp_path, 100_000, "--checkpoint-every", "100000")
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: lock_holder(tmp_path) == first.pid)
        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert first.poll() is None
    finally:
        first.kill()
        first.wait(timeout=60)
    assert second.returncode == 2
    assert second.stderr.strip() == (
        f"dfbk train: error: {tmp_path / 'ckpt'}: another trainer (pid {first.pid}) is "
        "training into this folder; wait for it to end or stop it"
    )


def proc_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # a zombie has stopped; only its parent's wait is missing


def fake_snakemake(phantom_store, folder: Path) -> subprocess.Popen:
    """A `snakemake` process running one training job as Snakemake does: bash -c "…"."""
    command = train_command(phantom_store, folder, 100_000, "--checkpoint-every", "100000")
    fake = folder / "bin" / "snakemake"
    fake.parent.mkdir()
    job = f"set -euo pipefail; {shlex.join(command)} > {folder / 'train.log'} 2>&1"
    fake.write_text(
        f"#!{sys.executable}\nimport subprocess\nsubprocess.run(['bash', '-c', {job!r}])\n"
    )
    fake.chmod(0o755)
    return subprocess.Popen([str(fake)], start_new_session=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux")
def test_a_trainer_starting_up_stops_when_snakemake_is_killed(phantom_store, tmp_path):
    snakemake = fake_snakemake(phantom_store, tmp_path)
    wait_until(lambda: lock_holder(tmp_path) is not None)  # before torch is even imported
    trainer = lock_holder(tmp_path)
    snakemake.kill()
    snakemake.wait(timeout=60)
    try:
        wait_until(lambda: proc_gone(trainer), timeout=60)
    finally:
        if not proc_gone(trainer):
            os.kill(trainer, signal.SIGKILL)
    assert not (tmp_path / "out" / "model.pt").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux")
def test_the_trainer_stops_when_snakemake_is_killed(phantom_store, tmp_path):
    snakemake = fake_snakemake(phantom_store, tmp_path)
    wait_until(lambda: lock_holder(tmp_path) is not None)
    trainer = lock_holder(tmp_path)
    log = tmp_path / "ckpt" / "train_log.jsonl"
    wait_until(lambda: log.exists() and log.stat().st_size > 0)  # the loop is running
    snakemake.kill()
    snakemake.wait(timeout=60)
    try:
        wait_until(lambda: proc_gone(trainer), timeout=60)
    finally:
        if not proc_gone(trainer):
            os.kill(trainer, signal.SIGKILL)
    text = (tmp_path / "train.log").read_text()
    assert "signal 15: checkpoint saved at step" in text
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["step"] > 0
