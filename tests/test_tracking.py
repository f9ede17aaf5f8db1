"""MLflow import: runs, params, curves and artifacts land once, and re-import changes nothing.

Everything runs on a SQLite store in tmp_path; MLflow environment variables are cleared so a
developer's MLFLOW_TRACKING_URI can never receive test runs. One module-scoped store is imported
twice and shared, because each fresh store costs seconds of schema migration.
"""

import json
import math
import threading
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import ViewType  # noqa: E402

from dfbk.errors import DataError  # noqa: E402
from dfbk.tracking import default_tracking_uri, import_run, import_runs, run_key  # noqa: E402
from dfbk.tracking.mlflow_import import DATA_SHA_TAG, RUN_KEY_TAG  # noqa: E402

EXPERIMENT = "dfbk-test"
LONG_TEXT = "x" * 7000
# (dataset, direction, method, seed, number of train-log lines, loss names)
RUNS = [
    ("brats2023", "t1n-to-t2w", "pix2pix", 0, 5, ("loss_g", "loss_d", "loss_l1")),
    ("brats2023", "t1n-to-t2w", "identity", 0, 0, ()),
    ("isles2015", "t1-to-flair", "dfbk", 1, 7, ("loss",)),
]


def _write_run(root: Path, dataset, direction, method, seed, n_steps, losses, lr=2e-4):
    """Fabricate train/eval outputs of one run as the jobs would write them."""
    train_dir = root / "train" / dataset / direction / method / f"seed-{seed}"
    eval_dir = root / "evaluate" / dataset / direction / method / f"seed-{seed}"
    train_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)
    run = {
        "dataset": dataset,
        "direction": direction,
        "method": method,
        "seed": seed,
        "preset": "tiny",
        "hparams": {"lr": lr, "ngf": 16, "optim": {"betas": [0.5, 0.999]}, "note": LONG_TEXT},
        "describe": {"family": "gan"},
        "n_parameters": 1234,
        "steps": max(n_steps * 10, 1),
        "wall_seconds": 12.5,
        "device": "cpu",
        "dfbk_version": "0.1.0",
        "torch_version": "2.4.0",
        "knowledge_encoder": None,
    }
    (train_dir / "run.json").write_text(json.dumps(run))
    lines = [
        json.dumps({"step": 10 * i, "time": 0.5 * i, **{n: 1.0 / (i + 1) for n in losses}})
        for i in range(n_steps)
    ]
    (train_dir / "train_log.jsonl").write_text("".join(line + "\n" for line in lines))
    metrics = {
        "dataset": dataset,
        "direction": direction,
        "method": method,
        "seed": seed,
        "protocol": {"mask": {"threshold": 0.01}, "slices": "all"},
        "summary": {
            "psnr_fg": {"mean": 25.0 + seed, "std": 1.5, "n": 3},
            "ssim_fg": {"mean": math.nan, "std": math.nan, "n": 0},
        },
    }
    (eval_dir / "metrics.json").write_text(json.dumps(metrics))
    (eval_dir / "subjects.csv").write_text("subject,psnr_fg\ns1,25.0\n")
    return train_dir, eval_dir


def _write_figures(root: Path) -> dict[tuple[str, str], list[Path]]:
    """One fake PNG per (dataset, direction) pair."""
    figures = {}
    for dataset, direction in {(r[0], r[1]) for r in RUNS}:
        path = root / "figures" / f"{dataset}_{direction}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + f"{dataset}{direction}".encode())
        figures[(dataset, direction)] = [path]
    return figures


def _active_runs(client: MlflowClient) -> list:
    """All active runs of the test experiment."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], run_view_type=ViewType.ACTIVE_ONLY)


def _by_key(client: MlflowClient) -> dict:
    """Active runs indexed by their dfbk run key."""
    return {run.data.tags[RUN_KEY_TAG]: run for run in _active_runs(client)}


@pytest.fixture(scope="module", autouse=True)
def _clean_mlflow_env(tmp_path_factory):
    """No inherited MLFLOW_* setting and no telemetry; cwd moved so no stray ./mlruns is left."""
    import os

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        for name in [n for n in os.environ if n.startswith("MLFLOW_")]:
            patch.delenv(name)
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.setenv("DO_NOT_TRACK", "true")
        yield


@pytest.fixture(scope="module")
def imported(tmp_path_factory, _clean_mlflow_env):
    """Three runs imported twice into one SQLite store; records of both imports kept."""
    root = tmp_path_factory.mktemp("tracking")
    runs = [_write_run(root, *spec) for spec in RUNS]
    figures = _write_figures(root)
    uri = f"sqlite:///{root}/mlflow.db"
    out_json = root / "tracking" / "runs.json"
    first = import_runs(runs, figures, uri, EXPERIMENT, out_json)
    client = MlflowClient(tracking_uri=uri)
    curve_first = len(client.get_metric_history(first[0]["run_id"], "loss_g"))
    second = import_runs(runs, figures, uri, EXPERIMENT, out_json)
    return {
        "root": root,
        "runs": runs,
        "uri": uri,
        "client": client,
        "first": first,
        "second": second,
        "curve_first": curve_first,
        "out_json": out_json,
    }


def test_three_runs_named_by_key(imported):
    runs = _active_runs(imported["client"])
    expected = {run_key(d, p, m, s) for d, p, m, s, *_ in RUNS}
    assert len(runs) == 3
    assert {run.info.run_name for run in runs} == expected
    assert {run.data.tags[RUN_KEY_TAG] for run in runs} == expected
    assert all(run.info.status == "FINISHED" for run in runs)


def test_params_and_tags(imported):
    run = _by_key(imported["client"])["brats2023/t1n-to-t2w/pix2pix/seed-0"]
    params = run.data.params
    assert params["dataset"] == "brats2023" and params["seed"] == "0"
    assert params["method"] == "pix2pix" and params["preset"] == "tiny"
    assert float(params["hparams.lr"]) == pytest.approx(2e-4)
    assert params["hparams.optim.betas"] == "[0.5, 0.999]"
    assert params["describe.family"] == "gan"
    assert params["protocol.mask.threshold"] == "0.01"
    assert params["n_parameters"] == "1234" and params["knowledge_encoder"] == "null"
    assert len(params["hparams.note"]) == 6000
    assert run.data.tags["direction"] == "t1n-to-t2w" and run.data.tags["seed"] == "0"


def test_metrics_and_curve(imported):
    client = imported["client"]
    runs = _by_key(client)
    pix2pix = runs["brats2023/t1n-to-t2w/pix2pix/seed-0"]
    assert pix2pix.data.metrics["psnr_fg_mean"] == pytest.approx(25.0)
    assert pix2pix.data.metrics["psnr_fg_std"] == pytest.approx(1.5)
    assert pix2pix.data.metrics["wall_seconds"] == pytest.approx(12.5)
    history = client.get_metric_history(pix2pix.info.run_id, "loss_g")
    assert sorted(point.step for point in history) == [0, 10, 20, 30, 40]
    times = sorted(point.timestamp for point in history)
    gaps = {later - earlier for earlier, later in zip(times[:-1], times[1:], strict=True)}
    assert gaps == {500}  # rows are 0.5 s apart in train_log "time"
    assert len(client.get_metric_history(pix2pix.info.run_id, "loss_l1")) == 5
    dfbk_run = runs["isles2015/t1-to-flair/dfbk/seed-1"]
    assert len(client.get_metric_history(dfbk_run.info.run_id, "loss")) == 7
    identity = runs["brats2023/t1n-to-t2w/identity/seed-0"]
    assert not any(name.startswith("loss") for name in identity.data.metrics)
    assert "psnr_fg_mean" in identity.data.metrics


def test_nan_summary_metrics_skipped(imported):
    for run in _active_runs(imported["client"]):
        assert "ssim_fg_mean" not in run.data.metrics
        assert "ssim_fg_std" not in run.data.metrics
        assert "psnr_fg_mean" in run.data.metrics


def test_reimport_is_idempotent(imported):
    client = imported["client"]
    assert len(_active_runs(client)) == 3
    first_ids = [record["run_id"] for record in imported["first"]]
    assert [record["run_id"] for record in imported["second"]] == first_ids
    assert imported["curve_first"] == 5
    assert len(client.get_metric_history(first_ids[0], "loss_g")) == 5
    deleted = client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id],
        run_view_type=ViewType.DELETED_ONLY,
    )
    assert deleted == []


def test_out_json_lists_runs(imported):
    written = json.loads(imported["out_json"].read_text())
    assert written == imported["second"]
    assert [record["run_key"] for record in written] == [run_key(*r[:4]) for r in RUNS]
    pix2pix = written[0]
    # loss_g, loss_d, loss_l1, psnr_fg_mean, psnr_fg_std, wall_seconds
    assert pix2pix["n_metrics"] == 6
    assert not list(imported["out_json"].parent.glob(".runs.json.*"))


def test_artifacts_listed(imported):
    client = imported["client"]
    runs = _by_key(client)
    run_id = runs["brats2023/t1n-to-t2w/pix2pix/seed-0"].info.run_id
    figures = [item.path for item in client.list_artifacts(run_id, "figures")]
    assert figures == ["figures/brats2023_t1n-to-t2w.png"]
    evaluation = [item.path for item in client.list_artifacts(run_id, "evaluation")]
    assert evaluation == ["evaluation/subjects.csv"]
    artifact_uri = runs["isles2015/t1-to-flair/dfbk/seed-1"].info.artifact_uri
    assert artifact_uri.startswith((imported["root"] / "mlartifacts").as_uri())


def test_changed_inputs_replace_the_run(tmp_path):
    """New hparams cannot be logged into the old run (params are immutable): it is replaced."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = RUNS[0]
    runs = [_write_run(tmp_path, *spec)]
    figures = _write_figures(tmp_path)
    before = import_runs(runs, figures, uri, EXPERIMENT, tmp_path / "runs.json")
    figure = figures[(spec[0], spec[1])][0]
    figure.write_bytes(figure.read_bytes() + b"redrawn")
    same = import_runs(runs, figures, uri, EXPERIMENT, tmp_path / "runs.json")
    assert same[0]["run_id"] == before[0]["run_id"]  # only a figure changed: run kept
    client = MlflowClient(tracking_uri=uri)
    artifact = f"figures/{figure.name}"
    downloaded = client.download_artifacts(same[0]["run_id"], artifact, str(tmp_path / "dl"))
    assert Path(downloaded).read_bytes() == figure.read_bytes()  # the redrawn figure uploaded
    runs = [_write_run(tmp_path, *spec, lr=1e-3)]
    after = import_runs(runs, figures, uri, EXPERIMENT, tmp_path / "runs.json")
    active = _active_runs(client)
    assert len(active) == 1 and active[0].info.run_id == after[0]["run_id"]
    assert after[0]["run_id"] != before[0]["run_id"]
    assert float(active[0].data.params["hparams.lr"]) == pytest.approx(1e-3)
    assert len(client.get_metric_history(after[0]["run_id"], "loss_g")) == 5
    new_figures = client.list_artifacts(after[0]["run_id"], "figures")
    assert [item.path for item in new_figures] == ["figures/brats2023_t1n-to-t2w.png"]


def test_half_imported_run_is_redone(tmp_path):
    """A run without the data-hash tag (import died mid-way) is deleted and logged again."""
    train_dir, eval_dir = _write_run(tmp_path, *RUNS[2])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.create_experiment(
        EXPERIMENT, artifact_location=(tmp_path / "mlartifacts").as_uri()
    )
    broken = client.create_run(experiment_id, tags={RUN_KEY_TAG: run_key(*RUNS[2][:4])})
    run_id = import_run(client, experiment_id, train_dir, eval_dir)
    assert run_id != broken.info.run_id
    assert client.get_run(broken.info.run_id).info.lifecycle_stage == "deleted"
    assert DATA_SHA_TAG in client.get_run(run_id).data.tags
    assert len(client.get_metric_history(run_id, "loss")) == 7
    inputs = {item.path for item in client.list_artifacts(run_id, "inputs")}
    assert inputs == {"inputs/run.json", "inputs/metrics.json"}
    assert [run.info.run_id for run in _active_runs(client)] == [run_id]


def test_concurrent_imports_do_not_duplicate(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = [_write_run(tmp_path, *spec) for spec in RUNS]
    errors = []

    def work(index: int) -> None:
        try:
            import_runs(runs, {}, uri, EXPERIMENT, tmp_path / f"runs-{index}.json")
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    client = MlflowClient(tracking_uri=uri)
    assert len(_active_runs(client)) == 3
    assert (
        client.search_runs(
            [client.get_experiment_by_name(EXPERIMENT).experiment_id],
            run_view_type=ViewType.DELETED_ONLY,
        )
        == []
    )


def test_mismatched_eval_is_refused(imported):
    train_dir, _ = imported["runs"][0]
    _, other_eval = imported["runs"][2]
    client = imported["client"]
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    with pytest.raises(DataError, match="metrics.json"):
        import_run(client, experiment_id, train_dir, other_eval)


def test_run_key_rejects_unsafe_parts():
    assert run_key("brats2023", "t1n-to-t2w", "dfbk", 3) == "brats2023/t1n-to-t2w/dfbk/seed-3"
    with pytest.raises(DataError, match="dataset"):
        run_key("brats/2023", "t1n-to-t2w", "dfbk", 0)
    with pytest.raises(DataError, match="method"):
        run_key("brats2023", "t1n-to-t2w", "x' OR '1", 0)


def test_default_tracking_uri_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri(tmp_path) == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    assert (
        default_tracking_uri(Path("results")) == f"sqlite:///{tmp_path.resolve()}/results/mlflow.db"
    )


def test_long_curves_are_window_means_with_at_most_the_cap():
    from dfbk.tracking.files import window_means

    rows = [{"step": i, "time": float(i), "loss": float(i)} for i in range(2500)]
    merged = window_means(rows, 1000)
    assert len(merged) <= 1000
    assert merged[0] == {"step": 2, "time": 2.0, "loss": 1.0}  # mean of steps 0, 1, 2
    assert merged[-1]["step"] == 2499
    assert window_means(rows[:10], 1000) == rows[:10]


def test_resumed_log_keeps_the_last_pass(tmp_path):
    """A trainer resumed from step 20 rewrites steps 20-40: one point per step, the later ones."""
    from dfbk.tracking.files import last_pass

    rows = [{"step": s, "loss": 1.0} for s in (0, 10, 20, 30, 40)]
    rows += [{"step": s, "loss": 2.0} for s in (20, 30, 40, 50)]
    kept, restarts = last_pass(rows)
    assert [r["step"] for r in kept] == [0, 10, 20, 30, 40, 50]
    assert [r["loss"] for r in kept] == [1.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert restarts == [20]
    train_dir, eval_dir = _write_run(tmp_path, *RUNS[0])
    log = train_dir / "train_log.jsonl"
    lines = log.read_text().splitlines()  # steps 0..40
    log.write_text("\n".join(lines + lines[2:]) + "\n")  # resumed at step 20
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    records = import_runs([(train_dir, eval_dir)], {}, uri, EXPERIMENT, tmp_path / "runs.json")
    assert records[0]["log_restarts"] == [20]
    history = MlflowClient(tracking_uri=uri).get_metric_history(records[0]["run_id"], "loss_g")
    assert sorted(point.step for point in history) == [0, 10, 20, 30, 40]


def test_deleted_run_is_seen_without_mlflow_and_restored(tmp_path):
    from dfbk.tracking.store import missing_runs

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = [_write_run(tmp_path, *spec) for spec in RUNS[:2]]
    out_json = tmp_path / "tracking" / "imported.json"
    first = import_runs(runs, {}, uri, EXPERIMENT, out_json)
    assert missing_runs(out_json, uri) == []
    client = MlflowClient(tracking_uri=uri)
    client.delete_run(first[1]["run_id"])
    assert missing_runs(out_json, uri) == [first[1]["run_key"]]
    assert missing_runs(out_json, "http://127.0.0.1:5000") is None  # servers are not checked
    again = import_runs(runs, {}, uri, EXPERIMENT, out_json)
    assert [r["run_id"] for r in again] == [r["run_id"] for r in first]  # restored, same id
    assert missing_runs(out_json, uri) == []
    (tmp_path / "mlflow.db").unlink()
    assert missing_runs(out_json, uri) == sorted(r["run_key"] for r in first)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_one_line_with_bounded_retries(tmp_path, monkeypatch):
    from dfbk.tracking.store import HTTP_RETRY_DEFAULTS

    for name in HTTP_RETRY_DEFAULTS:
        monkeypatch.setenv(name, "")  # unset for the importer, restored (absent) afterwards
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # the user's value wins
    uri = f"http://127.0.0.1:{_closed_port()}"
    runs = [_write_run(tmp_path, *RUNS[1])]
    with pytest.raises(DataError) as error:
        import_runs(runs, {}, uri, EXPERIMENT, tmp_path / "runs.json")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"tracking store {uri} failed")
    assert "after 1 retries" in message
    import os

    assert (
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]
        == HTTP_RETRY_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"]
    )
    assert not (tmp_path / "runs.json").exists()


def test_locked_sqlite_store_is_one_line(tmp_path):
    """Another process holds the database's write lock: `dfbk track` fails in one line."""
    import os
    import sqlite3
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    train_dir, eval_dir = _write_run(tmp_path, *RUNS[1])
    import_runs([(train_dir, eval_dir)], {}, uri, EXPERIMENT, tmp_path / "first.json")
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    command = [str(Path(sys.executable).with_name("dfbk")), "track", "--uri", uri]
    command += ["--train-dirs", str(train_dir), "--eval-dirs", str(eval_dir)]
    command += ["--experiment", EXPERIMENT, "--out", str(tmp_path / "runs.json")]
    # one attempt: MLflow itself waits 20 s for the lock
    env = {**os.environ, "DFBK_TRACKING_LOCKED_SECONDS": "0"}
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    finally:
        holder.close()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("dfbk track: error: ")
    assert "mlflow.db: database is locked" in line
    assert not (tmp_path / "runs.json").exists()
