"""The whole DAG on a micro config: tables, figures, MLflow, idempotence, config errors, lint."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fakes
import pandas as pd
import pytest
import yaml
from conftest import REPO

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
DIRECTIONS = ["t1n-to-t2w", "t1n-to-ct"]
RESULTS = "results dir"  # a space: every path in every rule must be quoted
METHODS = {
    "identity": {"preset": "tiny"},
    "pix2pix": {"preset": "tiny", "overrides": {"steps": 4, "batch_size": 4}},
    "resshift": {"preset": "tiny", "overrides": {"steps": 4, "batch_size": 4}},
    # a new baseline added only through config and a module outside the package (README
    # "Adding a baseline"), with an extra training stage declared in config
    # and restricted to one direction
    "tiny_l1": {
        "preset": "tiny",
        "module": "my_baseline",
        "stages": ["warmup"],
        "directions": ["t1n-to-t2w"],
    },
}

MY_BASELINE = '''
"""tiny_l1: one 3x3 convolution trained with L1 (a user's baseline, outside the package)."""
import torch
from torch import nn

from dfbk.methods.base import Method
from dfbk.methods.registry import register_method


@register_method("tiny_l1")
class TinyL1(Method):
    PRESETS = {"tiny": {"steps": 3, "batch_size": 4, "ema_decay": None, "lr": 1e-2}}
    STAGES = {"warmup": {"steps": 2, "lr": 1e-3}}

    def __init__(self, hparams):
        super().__init__(hparams)
        self.net = nn.Conv2d(1, 1, 3, padding=1)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=hparams["lr"])

    def optimizers(self):
        return {"net": self.opt}

    def training_step(self, batch, step):
        loss = (self.net(batch.source) - batch.target).abs().mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss_l1": loss.item()}

    @torch.no_grad()
    def translate(self, source, knowledge=None, seeds=None):
        return self.net(source).clamp(0, 1)
'''


def expected_runs() -> set[tuple[str, str]]:
    """(direction, method) pairs the micro config trains."""
    return {
        (d, m)
        for d in DIRECTIONS
        for m, settings in METHODS.items()
        if d in settings.get("directions", DIRECTIONS)
    }


def micro_config(**changes) -> dict:
    config = fakes.micro_config(
        RESULTS,
        METHODS,
        DIRECTIONS,
        train={"checkpoint_every": 2},
        translate={"batch_size": 64},
        tracking={"experiment": "micro"},
    )
    config.update(changes)
    return config


def snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    extension = workdir / "ext"
    extension.mkdir(exist_ok=True)
    (extension / "my_baseline.py").write_text(MY_BASELINE)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(extension),
    }
    return subprocess.run(
        [
            SNAKEMAKE,
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(path),
            "--cores",
            "2",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=1200,
    )


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("micro")
    result = snakemake(workdir, micro_config())
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def test_table_has_every_direction_and_method_with_finite_numbers(micro_run):
    table = pd.read_csv(micro_run / RESULTS / "tables/comparison.csv")
    rows = set(zip(table.direction, table.method, strict=True))
    assert rows == expected_runs()
    numeric = table.select_dtypes("number")
    assert {"psnr_fg_mean", "ssim_fg_mean", "mae_fg_mean"} <= set(numeric.columns)
    assert all(
        math.isfinite(v)
        for v in numeric[["psnr_fg_mean", "ssim_fg_mean", "mae_fg_mean"]].values.ravel()
    )
    for ext in ("md", "tex"):
        assert "identity" in (micro_run / RESULTS / f"tables/comparison.{ext}").read_text()
    for direction in DIRECTIONS:
        assert (micro_run / RESULTS / f"figures/phantom/{direction}.png").stat().st_size > 10_000


def test_mlflow_holds_exactly_one_run_per_job(micro_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{micro_run / RESULTS / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("micro")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    # one seed run per training job, nested in one group run per (dataset, direction, method);
    # tiny_l1's warm-up stage nested in its seed run; one summary run (docs/tracking.md)
    assert {r.data.tags["dfbk.run_kind"] for r in runs} == {"seed", "group", "stage", "summary"}
    seeds = [r for r in runs if r.data.tags["dfbk.run_kind"] == "seed"]
    keys = sorted(r.data.tags["dfbk.run_key"] for r in seeds)
    assert keys == sorted(f"phantom/{d}/{m}/seed-0" for d, m in expected_runs())
    groups = [r for r in runs if r.data.tags["dfbk.run_kind"] == "group"]
    assert len(groups) == len(keys)
    pix_key = "phantom/t1n-to-ct/pix2pix/seed-0"
    pix = next(r for r in seeds if r.data.tags["dfbk.run_key"] == pix_key)
    assert pix.data.params["hparams.steps"] == "4"
    assert "ssim_fg_mean" in pix.data.metrics
    assert len(client.get_metric_history(pix.info.run_id, "loss_l1")) == 4
    artifacts = [a.path for a in client.list_artifacts(pix.info.run_id, "figures")]
    stems = ["t1n-to-ct.pdf", "t1n-to-ct.png", "t1n-to-ct_curves.pdf", "t1n-to-ct_curves.png"]
    assert sorted(artifacts) == [f"figures/{name}" for name in stems]


def test_new_baseline_from_config_runs_its_stage_and_reaches_the_tables(micro_run):
    run = micro_run / RESULTS / "train/phantom/t1n-to-t2w/tiny_l1/seed-0"
    stage = json.loads((run / "stage-warmup/run.json").read_text())
    main = json.loads((run / "run.json").read_text())
    assert stage["stage"] == "warmup" and stage["hparams"]["steps"] == 2
    assert main["stage"] is None and main["init_from"].endswith("stage-warmup/model.pt")
    table = (micro_run / RESULTS / "tables/comparison.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("|") and "tiny_l1" in line]
    assert len(rows) == 1  # methods.tiny_l1.directions keeps it to T1->T2 (the caption names it)
    assert "t1n-to-t2w" in rows[0]


def test_second_run_does_nothing(micro_run):
    result = snakemake(micro_run, micro_config())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def test_run_deleted_in_mlflow_is_restored_by_the_next_run(micro_run):
    """The flag file says imported, the store says deleted: the store wins, nothing retrains."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{micro_run / RESULTS / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("micro")
    victim = client.search_runs([experiment.experiment_id], max_results=1)[0]
    client.delete_run(victim.info.run_id)
    result = snakemake(micro_run, micro_config())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "lacks 1 run(s)" in output and "re-importing" in output
    assert "rule track_runs" in output and "rule train_method" not in output
    assert client.get_run(victim.info.run_id).info.lifecycle_stage == "active"
    again = snakemake(micro_run, micro_config())
    assert "Nothing to be done" in again.stdout + again.stderr


def test_unknown_config_key_is_named(tmp_path):
    config = micro_config()
    config["datasets"]["phantom"]["sise"] = [64, 64]
    result = snakemake(tmp_path, config, "-n")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "sise" in output and "Additional properties are not allowed" in output


def test_unknown_method_and_impossible_direction_are_named(tmp_path):
    result = snakemake(tmp_path, micro_config(methods={"pix2pixx": {"preset": "tiny"}}), "-n")
    assert result.returncode != 0
    assert "unknown method 'pix2pixx'" in result.stdout + result.stderr
    config = micro_config()
    config["datasets"]["phantom"]["directions"] = ["t1n-to-flair"]
    result = snakemake(tmp_path, config, "-n")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "'t1n-to-flair'" in output and "has no modality" in output


def test_lint_is_clean(tmp_path):
    result = snakemake(tmp_path, micro_config(), "--lint")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Congratulations" in result.stdout + result.stderr


def test_config_readme_and_schema_document_every_key():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())

    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{path}{key} has no description"
            walk(sub, f"{path}{key}.")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            walk(extra, f"{path}*.")

    walk(schema, "")
    assert shutil.which("dfbk") or Path(sys.executable).with_name("dfbk").exists()
