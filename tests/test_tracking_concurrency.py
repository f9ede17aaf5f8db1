"""MLflow under cluster concurrency: many jobs finish at once, the import loses nothing.

Jobs only write their JSON/JSONL files; `dfbk track` (the serialised track rule) imports them.
Eight job processes finish at the same moment, then the import runs twice (the second time as
two racing processes): exactly eight seed runs, none duplicated, every metric point present (the
benchmark TSVs as system metrics too), each nested in its method's group run. The same import
also goes to an `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts, in tmp), where
the models are registered and loaded back.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType
from test_volume_translate import make_checkpoint

from dfbk.tracking import load_logged_model

DFBK = str(Path(sys.executable).with_name("dfbk"))
EXPERIMENT = "concurrency"
DIRECTIONS = ["t1n-to-t2w", "t1n-to-ct"]
METHODS = ["pix2pix", "resshift"]
SEEDS = [0, 1]
JOBS = [(d, m, s) for d in DIRECTIONS for m in METHODS for s in SEEDS]  # 8 runs
LOG_STEPS = 25
LOSSES = ("loss_g", "loss_d", "loss_l1")
SUMMARY = ("psnr_fg", "ssim_fg", "mae_fg")
# what Snakemake's `benchmark:` writes for the train job (seconds, MB; NA when not measured)
BENCHMARK = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
BENCHMARK += "41.20\t0:00:41\t1893.10\t9120.55\t1800.00\t1850.25\tNA\tNA\t88.10\t36.30\n"
SYSTEM = {f"system/train_method/{name}" for name in ("wall_s", "max_rss_mb", "max_vms_mb")}
SYSTEM |= {
    f"system/train_method/{n}" for n in ("max_uss_mb", "max_pss_mb", "mean_load", "cpu_time_s")
}


def finish_job(root: str, direction: str, method: str, seed: int, barrier) -> None:
    """One training+evaluation job writing its outputs; all eight pass the barrier together."""
    root = Path(root)
    run_dir = f"phantom/{direction}/{method}/seed-{seed}"
    train_dir, eval_dir = root / "train" / run_dir, root / "evaluate" / run_dir
    train_dir.mkdir(parents=True)
    eval_dir.mkdir(parents=True)
    identity = {"dataset": "phantom", "direction": direction, "method": method, "seed": seed}
    barrier.wait(timeout=60)
    lines = [
        json.dumps({"step": step, "time": 0.1 * step, **{k: 1.0 / (step + 1) for k in LOSSES}})
        for step in range(LOG_STEPS)
    ]
    (train_dir / "train_log.jsonl").write_text("".join(line + "\n" for line in lines))
    run = {**identity, "preset": "tiny", "hparams": {"steps": LOG_STEPS}, "steps": LOG_STEPS}
    (train_dir / "run.json").write_text(json.dumps({**run, "wall_seconds": 2.5}))
    summary = {k: {"mean": 0.5 + seed, "std": 0.1, "n": 2} for k in SUMMARY}
    (eval_dir / "metrics.json").write_text(json.dumps({**identity, "summary": summary}))
    (eval_dir / "subjects.csv").write_text("subject,psnr_fg\nphantom-000,0.5\n")
    benchmark = root / "benchmarks" / "train_method" / f"{run_dir}.tsv"
    benchmark.parent.mkdir(parents=True, exist_ok=True)
    benchmark.write_text(BENCHMARK)


@pytest.fixture(scope="module")
def finished_jobs(tmp_path_factory) -> Path:
    """Eight processes that finish at the same moment, as a full SLURM array would."""
    root = tmp_path_factory.mktemp("results")
    for direction in DIRECTIONS:
        figure = root / "figures" / "phantom" / f"{direction}.png"
        figure.parent.mkdir(parents=True, exist_ok=True)
        figure.write_bytes(b"\x89PNG\r\n\x1a\n" + direction.encode())
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(JOBS))
    processes = [
        context.Process(target=finish_job, args=(str(root), *job, barrier)) for job in JOBS
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * len(JOBS)
    for direction, method, seed in JOBS:  # the checkpoint each run logs (written by training)
        make_checkpoint(root / "train" / f"phantom/{direction}/{method}/seed-{seed}" / "model.pt")
    return root


def track(root: Path, uri: str, out: Path, *options: str) -> subprocess.Popen:
    """`dfbk track` exactly as the track rule calls it, started in the background."""
    runs = [f"phantom/{d}/{m}/seed-{s}" for d, m, s in JOBS]
    figures = [f"--figure=phantom:{d}:{root}/figures/phantom/{d}.png" for d in DIRECTIONS]
    command = [DFBK, "track", "--train-dirs", *(str(root / "train" / r) for r in runs)]
    command += ["--eval-dirs", *(str(root / "evaluate" / r) for r in runs), *figures]
    command += ["--uri", uri, "--experiment", EXPERIMENT, "--out", str(out), *options]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root
    )


def wait_ok(process: subprocess.Popen) -> list[dict]:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    out = Path(process.args[process.args.index("--out") + 1])
    return json.loads(out.read_text())


def check_store(uri: str) -> dict[str, str]:
    """Exactly one active run per job, none deleted, every metric point there; key -> run id.

    Besides the 8 seed runs: one group run per (direction, method) that each seed nests under,
    and the summary run.
    """
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    everything = client.search_runs(
        [experiment.experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000
    )
    kinds = [run.data.tags["dfbk.run_kind"] for run in everything]
    assert sorted(kinds) == sorted(["seed"] * 8 + ["group"] * 4 + ["summary"])
    groups = {
        run.data.tags["dfbk.run_key"]: run.info.run_id
        for run in everything
        if run.data.tags["dfbk.run_kind"] == "group"
    }
    active = [run for run in everything if run.data.tags["dfbk.run_kind"] == "seed"]
    deleted = client.search_runs(
        [experiment.experiment_id], run_view_type=ViewType.DELETED_ONLY, max_results=1000
    )
    keys = sorted(run.data.tags["dfbk.run_key"] for run in active)
    assert keys == sorted(f"phantom/{d}/{m}/seed-{s}" for d, m, s in JOBS)  # 8, no duplicate
    assert deleted == []
    for run in active:
        for loss in LOSSES:
            history = client.get_metric_history(run.info.run_id, loss)
            assert sorted(point.step for point in history) == list(range(LOG_STEPS))
        expected = {f"{k}_{s}" for k in SUMMARY for s in ("mean", "std")} | {"wall_seconds"}
        assert expected | set(LOSSES) | SYSTEM == set(run.data.metrics)
        figures = [item.path for item in client.list_artifacts(run.info.run_id, "figures")]
        assert figures == [f"figures/{run.data.tags['direction']}.png"]
        parent = run.data.tags["dfbk.run_key"].rsplit("/", 1)[0]
        assert run.data.tags["mlflow.parentRunId"] == groups[parent]
    return {run.data.tags["dfbk.run_key"]: run.info.run_id for run in everything}


def test_eight_jobs_at_once_then_import_twice(finished_jobs, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = wait_ok(track(finished_jobs, uri, tmp_path / "first.json"))
    after_first = check_store(uri)
    assert len(first) == len(after_first) == 8 + 4 + 1  # seeds, (direction, method), summary
    seeds = [record for record in first if record["kind"] == "seed"]
    n_metrics = len(LOSSES) + 2 * len(SUMMARY) + 1 + len(SYSTEM)
    assert {record["n_metrics"] for record in seeds} == {n_metrics}
    # the second import, started twice at once (two Snakemake invocations racing on one
    # store): the file lock serialises them and both find every run already imported
    racing = [track(finished_jobs, uri, tmp_path / f"second-{i}.json") for i in range(2)]
    assert [wait_ok(process) for process in racing] == [first, first]
    assert check_store(uri) == after_first  # same runs, untouched


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 (own process group); yields its URI, stopped by PID."""
    port = _free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    command += ["--serve-artifacts", "--artifacts-destination", str(tmp_path / "artifacts")]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (closed after the server stops)
    server = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()}"
                )
            time.sleep(0.5)
        yield uri, tmp_path / "artifacts"
    finally:
        if server.poll() is None:  # the CLI and its uvicorn worker share the session we made
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
        log.close()


def test_import_into_an_mlflow_server(finished_jobs, mlflow_server, tmp_path):
    uri, artifacts = mlflow_server
    first = wait_ok(track(finished_jobs, uri, tmp_path / "first.json", "--register-models"))
    after_first = check_store(uri)
    second = wait_ok(track(finished_jobs, uri, tmp_path / "second.json"))
    assert check_store(uri) == after_first and first == second
    stored = sorted(p.name for p in artifacts.rglob("*.png"))
    # uploaded through the server: each seed run's figure, and both in the summary run
    assert stored == sorted([f"{d}.png" for d, _, _ in JOBS] + [f"{d}.png" for d in DIRECTIONS])
    assert len(list(artifacts.rglob("model.pt"))) == len(JOBS)
    # the models were registered (tracking.register_models) and load back through the server
    name = f"dfbk.phantom.{DIRECTIONS[0]}.{METHODS[0]}"
    versions = MlflowClient(tracking_uri=uri).search_model_versions(f"name = '{name}'")
    assert sorted(v.tags["seed"] for v in versions) == [str(s) for s in SEEDS]
    key = f"phantom/{DIRECTIONS[0]}/{METHODS[0]}/seed-0"
    _, by_run = load_logged_model(f"runs:/{after_first[key]}/model", tmp_path / "run", uri)
    version = next(v.version for v in versions if v.tags["seed"] == "0")
    _, by_name = load_logged_model(f"models:/{name}/{version}", tmp_path / "model", uri)
    assert by_run["content_sha256"] == by_name["content_sha256"]
    assert by_run["method"] == "identity"
