"""MLflow import: the experiment tells the whole story, lands once, and re-import changes nothing.

A fabricated results tree (no training): two seeds of pix2pix, identity, dfbk on a second
dataset, and ResViT with its pretraining stage; Snakemake benchmark TSVs, the comparison and
ablation tables, figures, and real (untrained) checkpoints. Everything runs on a SQLite store
in tmp_path; MLflow environment variables are cleared so a developer's MLFLOW_TRACKING_URI can
never receive test runs. One module-scoped store is imported twice and shared, because each
fresh store costs seconds of schema migration.
"""

import json
import math
import threading
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import ViewType  # noqa: E402
from test_volume_translate import make_checkpoint  # noqa: E402

from dfbk.errors import DataError  # noqa: E402
from dfbk.tracking import (  # noqa: E402
    default_tracking_uri,
    import_run,
    import_runs,
    load_logged_model,
    run_key,
)
from dfbk.tracking.mlflow_import import DATA_SHA_TAG, RUN_KEY_TAG, RUN_KIND_TAG  # noqa: E402

EXPERIMENT = "dfbk-test"
LONG_TEXT = "x" * 7000
# (dataset, direction, method, seed, number of train-log lines, loss names)
RUNS = [
    ("brats2023", "t1n-to-t2w", "pix2pix", 0, 5, ("loss_g", "loss_d", "loss_l1")),
    ("brats2023", "t1n-to-t2w", "identity", 0, 0, ()),
    ("isles2015", "t1-to-flair", "dfbk", 1, 7, ("loss",)),
    ("brats2023", "t1n-to-t2w", "pix2pix", 1, 5, ("loss_g", "loss_d", "loss_l1")),
    ("brats2023", "t1n-to-t2w", "resvit", 0, 3, ("loss_g",)),
    ("brats2023", "t1n-to-t2w", "linear_ext", 0, 0, ()),
]
EXTERNAL = {"linear_ext"}  # methods.<name>.external: own code, own checkpoint folder
STAGED = {"resvit": "pretrain"}  # methods trained in two stages (pretraining, then main)
ENVIRONMENT = {
    "git_commit": "0123456789abcdef0123456789abcdef01234567",
    "git_dirty": True,
    "user": "alice",
    "host": "gpu-node-07",
    "python_version": "3.11.7",
    "platform": "Linux",
    "torch_version": "2.4.0+cu121",
    "cuda_version": "12.1",
    "cudnn_version": 90100,
    "gpu_model": "NVIDIA H100 80GB HBM3",
    "gpu_count": 2,
}
# A Snakemake 9 benchmark file (two repeats of the job): seconds and MB, NA where unknown.
BENCHMARK_TSV = (
    "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    "3612.50\t1:00:12\t5321.25\t31234.50\t5100.00\t5200.75\t812.40\t95.10\t97.50\t3521.80\n"
    "3588.00\t0:59:48\t5310.00\t31200.00\t5098.00\t5199.00\tNA\tNA\t96.20\t3480.10\n"
)


def _write_log(folder: Path, n_steps: int, losses) -> None:
    lines = [
        json.dumps({"step": 10 * i, "time": 0.5 * i, **{n: 1.0 / (i + 1) for n in losses}})
        for i in range(n_steps)
    ]
    (folder / "train_log.jsonl").write_text("".join(line + "\n" for line in lines))


def _write_run(root: Path, dataset, direction, method, seed, n_steps, losses, lr=2e-4):
    """Fabricate train/eval outputs of one run as the jobs would write them."""
    run_dir = f"{dataset}/{direction}/{method}/seed-{seed}"
    train_dir, eval_dir = root / "train" / run_dir, root / "evaluate" / run_dir
    train_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)
    identity = {"dataset": dataset, "direction": direction, "method": method, "seed": seed}
    run = {
        **identity,
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
        "stage": None,
        "init_from": None,
    }
    if method != "identity":  # identity stands for a run.json from before the environment
        run["environment"] = ENVIRONMENT
    if method in STAGED:
        stage = STAGED[method]
        stage_dir = train_dir / f"stage-{stage}"
        stage_dir.mkdir(exist_ok=True)
        stage_run = {**run, "stage": stage, "steps": 20, "wall_seconds": 4.0}
        (stage_dir / "run.json").write_text(json.dumps(stage_run))
        _write_log(stage_dir, 2, ("loss_pretrain",))
        make_checkpoint(stage_dir / "model.pt")
        run["init_from"] = f"{root}/train/{run_dir}/stage-{stage}/model.pt"
        bench = root / "benchmarks" / "train_method_stage" / run_dir / f"{stage}.tsv"
        bench.parent.mkdir(parents=True, exist_ok=True)
        bench.write_text(BENCHMARK_TSV)
    if method in EXTERNAL:  # as dfbk.inference.external.record_run writes it
        run["external"] = {"train": "python fit.py", "checkpoint": str(train_dir / "checkpoint")}
        (train_dir / "checkpoint" / "maps").mkdir(parents=True, exist_ok=True)
        (train_dir / "checkpoint" / "coefficients.json").write_text('{"a": 1.2, "b": 0.1}')
        (train_dir / "checkpoint" / "maps" / "slope.npy").write_bytes(b"\x93NUMPY" + bytes(64))
    else:
        name = "pix2pix" if method == "pix2pix" else "identity"
        make_checkpoint(train_dir / "model.pt", name=name)
    (train_dir / "run.json").write_text(json.dumps(run))
    _write_log(train_dir, n_steps, losses)
    metrics = {
        **identity,
        "protocol": {"mask": {"threshold": 0.01}, "slices": "all"},
        "summary": {
            "psnr_fg": {"mean": 25.0 + seed, "std": 1.5, "n": 3},
            "ssim_fg": {"mean": math.nan, "std": math.nan, "n": 0},
        },
    }
    (eval_dir / "metrics.json").write_text(json.dumps(metrics))
    (eval_dir / "subjects.csv").write_text("subject,psnr_fg\ns1,25.0\n")
    return train_dir, eval_dir


def _write_benchmarks(root: Path, spec) -> None:
    """Benchmark TSVs of a run's train and translate jobs (no evaluate TSV: a rule may lack one)."""
    for rule in ("train_method", "translate_test_set"):
        path = root / "benchmarks" / rule / f"{run_key(*spec[:4])}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(BENCHMARK_TSV)


def _write_tables(root: Path) -> list[Path]:
    paths = []
    for name in ("comparison", "ablation"):
        for ext, text in (("md", "| method | PSNR |\n"), ("csv", "method,psnr\n"), ("tex", "\\")):
            path = root / "tables" / f"{name}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            paths.append(path)
    return paths


def _write_figures(root: Path) -> dict[tuple[str, str], list[Path]]:
    """One fake PNG per (dataset, direction) pair, at figures/{dataset}/{direction}.png."""
    figures = {}
    for dataset, direction in {(r[0], r[1]) for r in RUNS}:
        path = root / "figures" / dataset / f"{direction}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + f"{dataset}{direction}".encode())
        figures[(dataset, direction)] = [path]
    return figures


def _active_runs(client: MlflowClient, kind: str | None = "seed") -> list:
    """Active runs of the test experiment (of one kind; kind None: all)."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ACTIVE_ONLY)
    return [run for run in runs if kind is None or run.data.tags[RUN_KIND_TAG] == kind]


def _by_key(client: MlflowClient) -> dict:
    """All active runs indexed by their dfbk run key."""
    return {run.data.tags[RUN_KEY_TAG]: run for run in _active_runs(client, None)}


def _deleted_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], run_view_type=ViewType.DELETED_ONLY)


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
def _migrated_store(tmp_path_factory, _clean_mlflow_env) -> Path:
    """An empty SQLite store with MLflow's schema: creating one costs seconds of migrations."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def empty_store(_migrated_store, tmp_path) -> str:
    """URI of a fresh store at tmp_path/mlflow.db (a copy of the migrated template)."""
    import shutil

    shutil.copyfile(_migrated_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture(scope="module")
def imported(tmp_path_factory, _migrated_store):
    """The whole tree imported twice (models registered) into one SQLite store."""
    import shutil

    root = tmp_path_factory.mktemp("results")
    shutil.copyfile(_migrated_store, root / "mlflow.db")
    runs = [_write_run(root, *spec) for spec in RUNS]
    _write_benchmarks(root, RUNS[0])
    tables = _write_tables(root)
    figures = _write_figures(root)
    uri = f"sqlite:///{root}/mlflow.db"
    out_json = root / "tracking" / "runs.json"
    first = import_runs(runs, figures, uri, EXPERIMENT, out_json, register_models=True)
    client = MlflowClient(tracking_uri=uri)
    curve_first = len(client.get_metric_history(first[0]["run_id"], "loss_g"))
    second = import_runs(runs, figures, uri, EXPERIMENT, out_json, register_models=True)
    return {
        "root": root,
        "runs": runs,
        "uri": uri,
        "client": client,
        "first": first,
        "second": second,
        "curve_first": curve_first,
        "out_json": out_json,
        "tables": tables,
    }


def test_seed_runs_named_by_key(imported):
    runs = _active_runs(imported["client"])
    expected = {run_key(d, p, m, s) for d, p, m, s, *_ in RUNS}
    assert len(runs) == len(RUNS)
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


def test_environment_of_the_training_machine_is_tagged(imported):
    runs = _by_key(imported["client"])
    tags = runs["brats2023/t1n-to-t2w/pix2pix/seed-0"].data.tags
    assert tags["mlflow.source.git.commit"] == ENVIRONMENT["git_commit"]
    assert tags["dfbk.git_dirty"] == "true"
    assert tags["mlflow.user"] == "alice"
    assert runs["brats2023/t1n-to-t2w/pix2pix/seed-0"].info.user_id == "alice"
    assert tags["dfbk.host"] == "gpu-node-07"
    assert tags["dfbk.gpu_model"] == "NVIDIA H100 80GB HBM3" and tags["dfbk.gpu_count"] == "2"
    assert tags["dfbk.torch_version"] == "2.4.0+cu121" and tags["dfbk.cuda_version"] == "12.1"
    old = runs["brats2023/t1n-to-t2w/identity/seed-0"].data.tags  # run.json without it
    assert old["dfbk.torch_version"] == "2.4.0"  # the recipe's version is still there
    assert "dfbk.host" not in old and "mlflow.source.git.commit" not in old


def test_environment_record_of_this_process():
    """What the trainer writes: this checkout's commit, and a GPU count torch agrees with."""
    import subprocess

    import torch

    from dfbk.training.environment import run_environment

    record = run_environment()
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    if head.returncode == 0:  # tests run from a checkout (the editable install's)
        assert record["git_commit"] == head.stdout.strip()
        assert isinstance(record["git_dirty"], bool)
    assert record["gpu_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert record["torch_version"] == str(torch.__version__)
    assert record["host"] and json.loads(json.dumps(record)) == record


def test_gpu_model_and_count_as_torch_reports_them(monkeypatch):
    """Two visible GPUs of one model name it once; mixed models are all named."""
    import torch

    from dfbk.training.environment import accelerator

    names = ["NVIDIA H200", "NVIDIA H200"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(names))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: names[index])
    record = accelerator()
    assert record["gpu_model"] == "NVIDIA H200" and record["gpu_count"] == 2
    assert record["cuda_version"] == torch.version.cuda
    names[1] = "NVIDIA A100-SXM4-80GB"
    assert accelerator()["gpu_model"] == "NVIDIA H200 + NVIDIA A100-SXM4-80GB"


def test_seeds_nest_under_their_method_with_mean_and_seed_std(imported):
    runs = _by_key(imported["client"])
    group = runs["brats2023/t1n-to-t2w/pix2pix"]
    assert group.data.tags[RUN_KIND_TAG] == "group"
    for seed in (0, 1):
        child = runs[f"brats2023/t1n-to-t2w/pix2pix/seed-{seed}"]
        assert child.data.tags["mlflow.parentRunId"] == group.info.run_id
    assert group.data.metrics["psnr_fg_mean"] == pytest.approx(25.5)  # seeds: 25.0, 26.0
    assert group.data.metrics["psnr_fg_seed_std"] == pytest.approx(math.sqrt(0.5))
    assert group.data.metrics["n_seeds"] == 2
    assert group.data.params["seeds"] == "[0, 1]"
    single = runs["isles2015/t1-to-flair/dfbk"]  # one seed: a mean, no spread
    assert single.data.metrics["psnr_fg_mean"] == pytest.approx(26.0)
    assert "psnr_fg_seed_std" not in single.data.metrics
    assert "ssim_fg_mean" not in group.data.metrics  # NaN in every seed
    assert len(_active_runs(imported["client"], "group")) == 5


def test_pretraining_stage_is_a_nested_run(imported):
    client = imported["client"]
    runs = _by_key(client)
    seed = runs["brats2023/t1n-to-t2w/resvit/seed-0"]
    stage = runs["brats2023/t1n-to-t2w/resvit/seed-0/stage-pretrain"]
    assert stage.data.tags[RUN_KIND_TAG] == "stage"
    assert stage.data.tags["mlflow.parentRunId"] == seed.info.run_id
    assert stage.data.params["stage"] == "pretrain" and stage.data.params["steps"] == "20"
    assert len(client.get_metric_history(stage.info.run_id, "loss_pretrain")) == 2
    assert stage.data.metrics["system/train_method_stage/wall_s"] == pytest.approx(3588.0)
    assert seed.data.params["init_from"].endswith("stage-pretrain/model.pt")
    assert "loss_pretrain" not in seed.data.metrics
    assert [r.data.tags[RUN_KEY_TAG] for r in _active_runs(client, "stage")] == [
        "brats2023/t1n-to-t2w/resvit/seed-0/stage-pretrain"
    ]


def test_benchmarks_are_system_metrics(imported):
    client = imported["client"]
    run = _by_key(client)["brats2023/t1n-to-t2w/pix2pix/seed-0"]
    wall = client.get_metric_history(run.info.run_id, "system/train_method/wall_s")
    assert sorted((p.step, p.value) for p in wall) == [(0, 3612.5), (1, 3588.0)]
    rss = client.get_metric_history(run.info.run_id, "system/translate_test_set/max_rss_mb")
    assert sorted(p.value for p in rss) == [5310.0, 5321.25]
    io_in = client.get_metric_history(run.info.run_id, "system/train_method/io_in_mb")
    assert [p.step for p in io_in] == [0]  # NA in the second repeat: skipped, not zero
    assert not any(k.startswith("system/evaluate") for k in run.data.metrics)  # no TSV
    other = _by_key(client)["brats2023/t1n-to-t2w/pix2pix/seed-1"]
    assert not any(k.startswith("system/") for k in other.data.metrics)


def test_benchmark_that_is_not_one_is_refused(tmp_path):
    from dfbk.tracking.inputs import read_benchmark

    path = tmp_path / "x.tsv"
    path.write_text("wall\tmem\n1\t2\n")
    with pytest.raises(DataError, match="x.tsv: not a Snakemake benchmark"):
        read_benchmark(path)
    path.write_text("s\tmax_rss\n1.0\tlots\n")
    with pytest.raises(DataError, match=r"x.tsv:2: max_rss='lots'"):
        read_benchmark(path)


def test_summary_run_holds_tables_and_figures(imported):
    client = imported["client"]
    summary = _by_key(client)["summary"]
    assert summary.data.tags[RUN_KIND_TAG] == "summary"
    tables = sorted(item.path for item in client.list_artifacts(summary.info.run_id, "tables"))
    assert tables == sorted(f"tables/{p.name}" for p in imported["tables"])
    figures = {
        item.path
        for folder in client.list_artifacts(summary.info.run_id, "figures")
        for item in client.list_artifacts(summary.info.run_id, folder.path)
    }
    assert figures == {"figures/brats2023/t1n-to-t2w.png", "figures/isles2015/t1-to-flair.png"}
    assert summary.data.params["n_runs"] == str(len(RUNS))
    methods = ["dfbk", "identity", "linear_ext", "pix2pix", "resvit"]
    assert json.loads(summary.data.params["methods"]) == methods


def test_logged_model_loads_by_run_and_by_registry(imported, tmp_path):
    import torch

    client = imported["client"]
    run = _by_key(client)["brats2023/t1n-to-t2w/pix2pix/seed-1"]
    model = [item.path for item in client.list_artifacts(run.info.run_id, "model")]
    assert model == ["model/model.pt"]
    train_dir = imported["runs"][3][0]
    from dfbk.training.checkpoint import load_checkpoint

    local = load_checkpoint(train_dir / "model.pt")["state"]
    uri = imported["uri"]
    method, payload = load_logged_model(f"runs:/{run.info.run_id}/model", tmp_path / "a", uri)
    assert payload["method"] == "pix2pix" and not method.training
    state = method.state_dict()
    assert local.keys() == state.keys()
    assert all(torch.equal(local[k], state[k]) for k in local)
    versions = client.search_model_versions("name = 'dfbk.brats2023.t1n-to-t2w.pix2pix'")
    assert sorted(v.run_id for v in versions) == sorted(  # one version per seed, not two
        _by_key(client)[f"brats2023/t1n-to-t2w/pix2pix/seed-{s}"].info.run_id for s in (0, 1)
    )
    by_seed = {v.tags["seed"]: v.version for v in versions}
    _, registered = load_logged_model(
        f"models:/dfbk.brats2023.t1n-to-t2w.pix2pix/{by_seed['1']}", tmp_path / "b", uri
    )
    assert registered["content_sha256"] == payload["content_sha256"]
    with pytest.raises(DataError, match="no model.pt"):
        load_logged_model(f"runs:/{run.info.run_id}/evaluation", tmp_path / "c", uri)


def test_external_baseline_logs_its_checkpoint_folder_unregistered(imported, tmp_path):
    client = imported["client"]
    run = _by_key(client)["brats2023/t1n-to-t2w/linear_ext/seed-0"]
    files = {item.path for item in client.list_artifacts(run.info.run_id, "model")}
    assert files == {"model/coefficients.json", "model/maps"}
    maps = [item.path for item in client.list_artifacts(run.info.run_id, "model/maps")]
    assert maps == ["model/maps/slope.npy"]
    assert client.search_model_versions("name = 'dfbk.brats2023.t1n-to-t2w.linear_ext'") == []
    with pytest.raises(DataError, match="no model.pt"):
        load_logged_model(f"runs:/{run.info.run_id}/model", tmp_path, imported["uri"])


def test_track_without_models(tmp_path, empty_store):
    """`dfbk track --no-models`: a tree without checkpoints imports, with no model/ artifact."""
    import subprocess
    import sys

    train_dir, eval_dir = _write_run(tmp_path, *RUNS[1])
    (train_dir / "model.pt").unlink()
    command = [str(Path(sys.executable).with_name("dfbk")), "track", "--uri", empty_store]
    command += ["--train-dirs", str(train_dir), "--eval-dirs", str(eval_dir), "--no-models"]
    command += ["--experiment", EXPERIMENT, "--out", str(tmp_path / "runs.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = _active_runs(MlflowClient(tracking_uri=empty_store))
    assert MlflowClient(tracking_uri=empty_store).list_artifacts(run.info.run_id, "model") == []
    with pytest.raises(DataError, match="model.pt: missing"):
        import_runs([(train_dir, eval_dir)], {}, empty_store, EXPERIMENT, tmp_path / "x.json")
    with pytest.raises(DataError, match="register_models needs log_models"):
        import_runs([], {}, empty_store, EXPERIMENT, tmp_path / "x.json", False, True)


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
    # 6 seeds, 5 method groups, 1 stage, 1 summary
    assert len(_active_runs(client, None)) == len(RUNS) + 5 + 1 + 1
    first_ids = [record["run_id"] for record in imported["first"]]
    assert [record["run_id"] for record in imported["second"]] == first_ids
    assert imported["curve_first"] == 5
    assert len(client.get_metric_history(first_ids[0], "loss_g")) == 5
    assert _deleted_runs(client) == []


def test_out_json_lists_runs(imported):
    written = json.loads(imported["out_json"].read_text())
    assert written == imported["second"]
    keys = [record["run_key"] for record in written]
    assert keys[: len(RUNS)] == [run_key(*r[:4]) for r in RUNS]
    kinds = [record["kind"] for record in written]
    assert kinds == ["seed"] * len(RUNS) + ["stage"] + ["group"] * 5 + ["summary"]
    pix2pix = written[0]
    # loss_g, loss_d, loss_l1, psnr_fg_mean, psnr_fg_std, wall_seconds, and per benchmark
    # file (train_method, translate_test_set) 9 system metrics
    assert pix2pix["n_metrics"] == 6 + 2 * 9
    assert written[3]["n_metrics"] == 6  # seed 1: no benchmark files
    assert not list(imported["out_json"].parent.glob(".runs.json.*"))


def test_artifacts_listed(imported):
    client = imported["client"]
    runs = _by_key(client)
    run_id = runs["brats2023/t1n-to-t2w/pix2pix/seed-0"].info.run_id
    figures = [item.path for item in client.list_artifacts(run_id, "figures")]
    assert figures == ["figures/t1n-to-t2w.png"]
    evaluation = [item.path for item in client.list_artifacts(run_id, "evaluation")]
    assert evaluation == ["evaluation/subjects.csv"]
    artifact_uri = runs["isles2015/t1-to-flair/dfbk/seed-1"].info.artifact_uri
    assert artifact_uri.startswith((imported["root"] / "mlartifacts").as_uri())


def test_changed_inputs_replace_the_run(tmp_path, empty_store):
    """New hparams cannot be logged into the old run (params are immutable): it is replaced,
    with its method's group (the mean over seeds changed); the other seed is kept, re-nested."""
    uri = empty_store
    specs = [RUNS[0], RUNS[3]]  # pix2pix seeds 0 and 1
    runs = [_write_run(tmp_path, *spec) for spec in specs]
    figures = _write_figures(tmp_path)
    before = import_runs(runs, figures, uri, EXPERIMENT, tmp_path / "runs.json")
    figure = figures[(specs[0][0], specs[0][1])][0]
    figure.write_bytes(figure.read_bytes() + b"redrawn")
    same = import_runs(runs, figures, uri, EXPERIMENT, tmp_path / "runs.json")
    assert [r["run_id"] for r in same] == [r["run_id"] for r in before]  # only a figure changed
    client = MlflowClient(tracking_uri=uri)
    artifact = f"figures/{figure.name}"
    downloaded = client.download_artifacts(same[0]["run_id"], artifact, str(tmp_path / "dl"))
    assert Path(downloaded).read_bytes() == figure.read_bytes()  # the redrawn figure uploaded
    runs[1] = _write_run(tmp_path, *specs[1], lr=1e-3)
    after = import_runs(runs, figures, uri, EXPERIMENT, tmp_path / "runs.json")
    active = {run.info.run_id: run for run in _active_runs(client)}
    assert set(active) == {after[0]["run_id"], after[1]["run_id"]}
    assert after[0]["run_id"] == before[0]["run_id"] and after[1]["run_id"] != before[1]["run_id"]
    assert float(active[after[1]["run_id"]].data.params["hparams.lr"]) == pytest.approx(1e-3)
    assert len(client.get_metric_history(after[1]["run_id"], "loss_g")) == 5
    new_figures = client.list_artifacts(after[1]["run_id"], "figures")
    assert [item.path for item in new_figures] == ["figures/t1n-to-t2w.png"]
    (group,) = _active_runs(client, "group")
    assert group.info.run_id not in {r["run_id"] for r in before}
    assert {run.data.tags["mlflow.parentRunId"] for run in active.values()} == {group.info.run_id}
    deleted = {run.data.tags[RUN_KEY_TAG] for run in _deleted_runs(client)}
    assert deleted == {"brats2023/t1n-to-t2w/pix2pix", run_key(*specs[1][:4])}
    summary = _by_key(client)["summary"]
    assert summary.info.run_id == before[-1]["run_id"]  # same runs: the summary is kept


def test_half_imported_run_is_redone(tmp_path, empty_store):
    """A run without the data-hash tag (import died mid-way) is deleted and logged again."""
    train_dir, eval_dir = _write_run(tmp_path, *RUNS[2])
    client = MlflowClient(tracking_uri=empty_store)
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


def test_concurrent_imports_do_not_duplicate(tmp_path, empty_store):
    uri = empty_store
    runs = [_write_run(tmp_path, *spec) for spec in RUNS[:3]]
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
    assert len(_active_runs(client)) == 3 and len(_active_runs(client, "group")) == 3
    assert _deleted_runs(client) == []


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
    from dfbk.training.records import window_means

    rows = [{"step": i, "time": float(i), "loss": float(i)} for i in range(2500)]
    merged = window_means(rows, 1000)
    assert len(merged) <= 1000
    assert merged[0] == {"step": 2, "time": 2.0, "loss": 1.0}  # mean of steps 0, 1, 2
    assert merged[-1]["step"] == 2499
    assert window_means(rows[:10], 1000) == rows[:10]


def test_resumed_log_keeps_the_last_pass(tmp_path, empty_store):
    """A trainer resumed from step 20 rewrites steps 20-40: one point per step, the later ones."""
    from dfbk.training.records import last_pass

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
    uri = empty_store
    records = import_runs([(train_dir, eval_dir)], {}, uri, EXPERIMENT, tmp_path / "runs.json")
    assert records[0]["log_restarts"] == [20]
    history = MlflowClient(tracking_uri=uri).get_metric_history(records[0]["run_id"], "loss_g")
    assert sorted(point.step for point in history) == [0, 10, 20, 30, 40]


def test_deleted_run_is_seen_without_mlflow_and_restored(tmp_path, empty_store):
    from dfbk.tracking.store import missing_runs

    uri = empty_store
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


def test_locked_sqlite_store_is_one_line(tmp_path, empty_store):
    """Another process holds the database's write lock: `dfbk track` fails in one line."""
    import os
    import sqlite3
    import subprocess
    import sys

    uri = empty_store
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
