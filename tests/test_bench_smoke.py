"""The benchmark scripts run and measure what they say (smoke size; timings are not asserted)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from conftest import REPO

from dfbk.methods.catalog import load_catalog


def bench(name: str):
    """Import bench/<name>.py (a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.mark.parametrize(
    ("device", "peak"),
    [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
     ("NVIDIA A100-SXM4-80GB", 312.0), ("Tesla V100-SXM2-32GB", 125.0), ("NVIDIA L40S", 362.0),
     ("NVIDIA L40", 181.0), ("NVIDIA GeForce RTX 4090", 165.0), ("NVIDIA L4", 121.0),
     ("Quadro P1000", None)],
)  # fmt: skip
def test_peak_lookup_picks_the_specific_name_before_its_family(device, peak):
    assert bench("bench_gpu").lookup_peak(device) == peak


def test_counted_step_flops_include_the_backward_pass():
    """Forward + backward of the generator alone is about 3x its forward; D adds more."""
    from torch.utils.flop_counter import FlopCounterMode

    from dfbk.methods import build_method

    gpu = bench("bench_gpu")
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    method = build_method("pix2pix", "tiny", {"batch_size": 2})
    batch = gpu.make_batch(method, 64, cpu, tokens=4)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        method.generator(batch.source)
    forward = counter.get_total_flops()
    _, step, _ = gpu.time_training(method, batch, cpu, warmup=1, steps=1)
    assert forward > 0 and step > 3 * forward


def test_smoke_run_prints_a_row_per_method_and_writes_json(tmp_path, monkeypatch, capsys):
    out = tmp_path / "rows.json"
    argv = ["bench_gpu.py", "--smoke", "--threads", "1", "--json", str(out), "identity", "pix2pix"]
    monkeypatch.setattr(sys, "argv", argv)
    bench("bench_gpu").main()
    stdout = capsys.readouterr().out
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert "step_s" not in rows["identity"] and rows["identity"]["volume_s"] > 0  # no training
    pix2pix = rows["pix2pix"]
    assert pix2pix["tflop_step"] > 0 and pix2pix["step_s"] > 0
    assert pix2pix["images_s"] == pytest.approx(pix2pix["batch"] / pix2pix["step_s"])
    assert "| pix2pix | 16 |" in stdout and "MFU against – TFLOP/s" in stdout


def test_loader_supply_and_derived_demand(tmp_path):
    loader = bench("bench_loader")
    store, subjects = loader.fabricate_store(
        tmp_path / "store", n_slices=40, size=32, per_subject=10
    )
    assert store.size == (32, 32) and len(subjects) == 4
    info = load_catalog()["maskgan"]
    hparams = {**info.presets["paper"], "batch_size": 3}
    for mode in ("0", "thread", "1"):  # in-process; ahead in a thread, in a worker process
        wall, cpu = loader.supply(store, subjects, hparams, False, seconds=0.05, prefetch=mode)
        assert wall > 0 and cpu > 0
    args = type("Args", (), {"tflops": 400.0, "floor_ms": 15.0})()
    need, how = loader.demand("pix2pix", 1, args, measured={})
    assert how == "floor" and need == pytest.approx(1 / 0.015)  # a tiny step: launch-bound
    need, how = loader.demand("dfbk", 16, args, measured={})
    assert how == "F/R" and need == pytest.approx(16 / (67.4 / 400.0))
    assert loader.demand("dfbk", 16, args, measured={"dfbk": 0.5}) == (32.0, "measured")


def test_dag_bench_reads_the_job_total():
    output = "Job stats:\njob      count\n-----  -------\nall          1\ntotal      574\n"
    assert bench("bench_dag")._total_jobs(output) == 574


def test_flops_are_counted_through_a_gradient_penalty():
    """SynDiff's step 0 takes torch.autograd.grad (R1); the module tracker would fail there."""
    from dfbk.methods import build_method

    gpu = bench("bench_gpu")
    torch.manual_seed(0)
    method = build_method("syndiff", "tiny", {"batch_size": 1})
    batch = gpu.make_batch(method, 64, torch.device("cpu"), tokens=4)
    with gpu.flop_counter() as counter:
        method.training_step(batch, 0)
    assert counter.get_total_flops() > 0


def test_store_verify_bench_times_each_command_and_the_fallback(monkeypatch, capsys):
    argv = ["bench_store_verify.py", "--gb", "0.0001", "--size", "32", "--slices", "10"]
    monkeypatch.setattr(sys, "argv", [*argv, "--repeat", "1"])
    bench("bench_store_verify").main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("store: 4 subjects x 10 slices of 32x32")  # at least 4 subjects
    rows = {line[:44].strip().split(" (")[0]: line[44:].split() for line in lines[2:]}
    assert set(rows) == {
        "evaluate", "predict", "train", "everything", "older store: whole files, all arrays",
        "sha256 of 256 MiB in memory",
    }  # fmt: skip
    total = 4 * 10 * 32 * 32 * (4 + 4 + 1 + 1) / 1e9  # 4 subjects, two float32 arrays + two u8
    assert float(rows["everything"][0]) == pytest.approx(total, rel=1e-2)
    assert float(rows["evaluate"][0]) == pytest.approx(10 * 32 * 32 * 6 / 1e9, rel=1e-2)
