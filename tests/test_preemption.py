"""Preemption-safe training, as SLURM does it: `dfbk train` processes killed and rerun.

SIGKILL (node loss, time limit past the grace period) leaves only the last periodic checkpoint;
the rerun must still end bit-identical to an uninterrupted run of the same seed. SIGTERM (what
the SLURM profile sends before the time limit, and what preemption sends) saves a checkpoint at
the step it stopped and exits non-zero, so Snakemake's retry resumes from there.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import train_command

from dfbk.training.checkpoint import load_checkpoint

STEPS = 240
# pix2pix shrunk to a few milliseconds per step on one CPU thread
OVERRIDES = {"steps": STEPS, "batch_size": 4, "num_downs": 4, "ngf": 8, "ndf": 8}


def command(phantom_store, folder: Path, checkpoint_every: int) -> list[str]:
    every = ["--checkpoint-every", str(checkpoint_every)]
    return train_command(phantom_store, folder, OVERRIDES, "--preset", "tiny", *every, seed=3)


def run_to_end(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 300) -> None:
    """Poll every 10 ms until `condition()`; fail if the process ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"training ended (status {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.01)


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(folder / "out" / "model.pt")["state"]


def logged_steps(folder: Path) -> list[int]:
    text = (folder / "out" / "train_log.jsonl").read_text()
    return [json.loads(line)["step"] for line in text.splitlines()]


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert different == [], f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference(phantom_store, tmp_path_factory) -> Path:
    """An uninterrupted run of the same seed and settings."""
    folder = tmp_path_factory.mktemp("reference")
    run_to_end(command(phantom_store, folder, checkpoint_every=40))
    return folder


def test_sigkill_mid_training_then_rerun_is_bit_identical(phantom_store, tmp_path, reference):
    train = command(phantom_store, tmp_path, checkpoint_every=40)
    last = tmp_path / "ckpt" / "last.pt"
    process = subprocess.Popen(train, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(last.exists, process, "a first periodic checkpoint")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "out" / "model.pt").exists(), "finished before the kill: lengthen it"
    killed_at = load_checkpoint(last)["step"]
    assert 0 < killed_at < STEPS and killed_at % 40 == 0

    run_to_end(train)  # the rerun: Snakemake's retry or a requeued SLURM job
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["resumed"] is True and run["steps"] == STEPS
    assert_bit_identical(final_weights(reference), final_weights(tmp_path))
    assert logged_steps(tmp_path) == list(range(STEPS))  # no step lost or logged twice


def test_sigterm_saves_at_the_step_it_stopped_and_the_rerun_resumes(
    phantom_store, tmp_path, reference
):
    # no periodic checkpoint before the end: the only one is the one SIGTERM asks for
    train = command(phantom_store, tmp_path, checkpoint_every=10 * STEPS)
    log = tmp_path / "ckpt" / "train_log.jsonl"
    process = subprocess.Popen(train, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # the log is flushed every 50 steps: non-empty means the loop (and its handler) is running
    wait_for(lambda: log.exists() and log.stat().st_size > 0, process, "50 logged steps")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    stderr = stderr.decode()
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    stopped_at = int(stderr.split("checkpoint saved at step ")[1].split()[0])
    assert 50 <= stopped_at < STEPS, "finished before SIGTERM: lengthen it"
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["step"] == stopped_at
    assert not (tmp_path / "out" / "model.pt").exists()

    result = run_to_end(train)
    assert f"wrote {tmp_path / 'out' / 'model.pt'}" in result.stdout
    assert json.loads((tmp_path / "out" / "run.json").read_text())["resumed"] is True
    assert_bit_identical(final_weights(reference), final_weights(tmp_path))
    assert logged_steps(tmp_path) == list(range(STEPS))
