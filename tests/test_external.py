"""External baselines (methods.<name>.external): config checks, the check jobs, the micro DAG.

The worked example is examples/external_linear/linear_map.py (README "Adding an external
baseline"): a least-squares intensity map run as its own commands, outside the package.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import fakes
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO
from fake_conda import install_fake_conda

from dfbk.errors import ConfigError, DataError
from dfbk.inference.external import collect_predictions, conda_env, record_run, render_command
from dfbk.plan.checks import check_config

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SCRIPT = REPO / "examples/external_linear/linear_map.py"
DIRECTION = "t1n-to-t2w"
RESULTS = "results dir"  # a space: every path in the external rules must be quoted
EXTERNAL = {
    "train": f"{sys.executable} {SCRIPT} train --store {{store}} --split {{split}} "
    "--direction {direction} --seed {seed} --params {params} --checkpoint {checkpoint}",
    "translate": f"{sys.executable} {SCRIPT} translate --store {{store}} --split {{split}} "
    "--direction {direction} --checkpoint {checkpoint} --predictions {predictions}",
    "gpus": 0,
}


def micro_config(external: dict | None = None) -> dict:
    methods = {"linear_map": {"overrides": {"fit": "foreground"}, "external": external or EXTERNAL}}
    return fakes.micro_config(
        RESULTS,
        methods,
        [DIRECTION],
        subjects=4,
        voxel_mm=5.0,
        size=48,
        fractions=(0.5, 0.25, 0.25),
        tracking={"experiment": "micro-external"},
    )


def snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    command += ["--configfile", str(path), "--cores", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)


TABLE = f"{RESULTS}/tables/comparison.md"
RUN_KEY = f"phantom/{DIRECTION}/linear_map/seed-0"


@pytest.fixture(scope="module")
def external_run(tmp_path_factory) -> Path:
    """The whole micro DAG (rule all): tables, figures and the MLflow import."""
    workdir = tmp_path_factory.mktemp("external")
    result = snakemake(workdir, micro_config())
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


# ----- config checks (no Snakemake) -----------------------------------------------------
def checked(**external) -> None:
    config = micro_config({**EXTERNAL, **external})
    check_config(config)


def test_valid_external_method_passes_the_config_checks():
    checked()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": "run --out {ckpt}"}, "linear_map.external.train: unknown placeholder {ckpt}"),
        ({"translate": "run {checkpoint}"}, "translate: the command must name {predictions}"),
        ({"train": "run {checkpoint:>9}"}, "train: placeholder {checkpoint} must be a bare"),
        ({"train": "awk '{print}' {checkpoint"}, "external.train: not a valid command template"),
        ({"conda": "env.yaml", "container": "docker://x"}, "give conda or container, not both"),
        ({"conda": "no/such/env.yaml"}, "conda: no/such/env.yaml: environment file not found"),
    ],
)  # fmt: skip
def test_bad_external_settings_are_one_line_naming_the_key(change, message):
    with pytest.raises(ConfigError) as err:
        checked(**change)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_external_name_must_not_shadow_a_registered_method():
    config = micro_config()
    config["methods"]["pix2pix"] = config["methods"].pop("linear_map")
    with pytest.raises(ConfigError, match=r"methods\.pix2pix\.external: 'pix2pix' is a registered"):
        check_config(config)


def test_external_name_must_be_a_valid_method_key():
    config = micro_config()
    config["methods"]["LinearMap"] = config["methods"].pop("linear_map")
    with pytest.raises(ConfigError, match=r"methods\.LinearMap: a method name is lower-case"):
        check_config(config)


def test_external_method_takes_no_module_or_stages():
    config = micro_config()
    config["methods"]["linear_map"]["stages"] = ["warmup"]
    with pytest.raises(ConfigError, match=r"methods\.linear_map\.stages: only for a method class"):
        check_config(config)


def test_conda_file_is_made_absolute_from_the_working_directory(tmp_path, monkeypatch):
    """Snakemake reads a relative conda path from the rule file's folder; config paths are
    relative to the working directory, so the file is handed over as an absolute path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs/linear.yaml").write_text("dependencies: [numpy]\n")
    assert conda_env({"conda": "envs/linear.yaml"}) == str(tmp_path / "envs/linear.yaml")
    assert conda_env({"conda": "my-existing-env"}) == "my-existing-env"  # a name, as given
    assert conda_env({}) is None


def test_placeholders_are_shell_quoted():
    command = render_command("cp {store} {checkpoint}", {"store": "a b", "checkpoint": "$(x)"})
    assert command == "cp 'a b' '$(x)'"


# ----- the check jobs ----------------------------------------------------------------------
SETTINGS = {"preset": "tiny", "overrides": {}, "external": EXTERNAL}
RUN = {"dataset": "phantom", "direction": DIRECTION, "method": "linear_map", "seed": 0}


def test_empty_checkpoint_folder_is_refused_and_nothing_is_written(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    with pytest.raises(DataError, match="checkpoint: the external train command left"):
        record_run(tmp_path / "checkpoint", tmp_path / "run", RUN, SETTINGS)
    assert not (tmp_path / "run").exists()


def test_malformed_training_log_is_named(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint/train_log.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(DataError, match=r"train_log\.jsonl:2: not valid JSON"):
        record_run(tmp_path / "checkpoint", tmp_path / "run", RUN, SETTINGS)


def write_predictions(store, split: Path, folder: Path, skip: str | None = None) -> list[str]:
    test = json.loads(split.read_text())["test"]
    folder.mkdir()
    for subject in test:
        if subject != skip:
            start, stop = store.subject_range(subject)
            volume = np.full((*store.size, stop - start), 0.5, dtype=np.float32)
            nib.save(
                nib.Nifti1Image(volume, store.subject_affine(subject)), folder / f"{subject}.nii.gz"
            )
    return test


def test_collect_publishes_a_complete_prediction_folder(phantom_store, tmp_path):
    store, split = phantom_store
    test = write_predictions(store, split, tmp_path / "raw")
    index = collect_predictions(
        tmp_path / "raw", store.root, split, tmp_path / "out", "m", DIRECTION
    )
    assert index["subjects"] == test
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"{s}.nii.gz" for s in test] + ["predictions.json", ".dfbk-output.json"]
    )  # the marker: a folder `dfbk predict` (or a rerun of this collect) may replace


def test_missing_test_subject_is_named_and_nothing_is_published(phantom_store, tmp_path):
    store, split = phantom_store
    test = json.loads(split.read_text())["test"]
    write_predictions(store, split, tmp_path / "raw", skip=test[0])
    with pytest.raises(DataError, match=rf"raw/{test[0]}\.nii\.gz: prediction for test subject"):
        collect_predictions(tmp_path / "raw", store.root, split, tmp_path / "out", "m", DIRECTION)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.tmp").exists()


def test_prediction_off_the_store_grid_is_refused(phantom_store, tmp_path):
    store, split = phantom_store
    subject = json.loads(split.read_text())["test"][0]
    write_predictions(store, split, tmp_path / "raw")
    start, stop = store.subject_range(subject)
    wrong = np.zeros((stop - start, *store.size), dtype=np.float32)  # (S, H, W): not the grid
    nib.save(
        nib.Nifti1Image(wrong, store.subject_affine(subject)), tmp_path / f"raw/{subject}.nii.gz"
    )
    with pytest.raises(DataError, match=r"prediction shape .* expected \(H, W, S\)"):
        collect_predictions(tmp_path / "raw", store.root, split, tmp_path / "out", "m", DIRECTION)


# ----- through the micro DAG -----------------------------------------------------------------
def copy_baseline_mae(results: Path) -> float:
    """MAE of copying T1 as the T2 prediction, over the test subjects' foreground voxels."""
    from dfbk.data.slices.store import SliceStore

    store = SliceStore(results / "prepare/phantom/store")
    test = json.loads((results / "prepare/phantom/splits.json").read_text())["test"]
    index = store.indices(test)
    fg = store.mask[index] > 0
    source, target = (np.asarray(store.images(m)[index]) for m in DIRECTION.split("-to-"))
    return float(np.abs(source - target)[fg].mean())


def test_external_method_reaches_the_table_and_the_figure(external_run):
    """Its row, caption, run.json and benchmarks as for any method; no parameter count: n/a."""
    results = external_run / RESULTS
    table = pd.read_csv(results / "tables/comparison.csv")
    assert list(table.method) == ["linear_map"]
    row = table.iloc[0]
    assert all(math.isfinite(row[c]) for c in ("psnr_fg_mean", "ssim_fg_mean", "mae_fg_mean"))
    # a least-squares fit of T2 from T1 on the foreground is closer to T2 than T1 itself is
    assert row["mae_fg_mean"] < copy_baseline_mae(results)
    markdown = (results / "tables/comparison.md").read_text()
    assert "linear_map: trained by its own external command" in markdown
    assert "nan" not in markdown  # no parameter count or budget: n/a, never nan
    run = json.loads((results / f"train/{RUN_KEY}/run.json").read_text())
    assert run["external"]["train"] == EXTERNAL["train"] and run["n_parameters"] is None
    fit = json.loads((results / f"train/{RUN_KEY}/checkpoint/linear_map.json").read_text())
    assert fit["params"] == {"fit": "foreground"}  # {params}: the overrides as JSON
    assert (results / f"benchmarks/train_method/{RUN_KEY}.tsv").is_file()
    assert (results / f"benchmarks/translate_test_set/{RUN_KEY}.tsv").is_file()
    assert not (results / f"external/{RUN_KEY}/predictions").exists()  # temporary
    assert (results / f"figures/phantom/{DIRECTION}.png").stat().st_size > 10_000


def test_external_run_is_imported_into_mlflow(external_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{external_run / RESULTS / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("micro-external")
    runs = client.search_runs([experiment.experiment_id], max_results=20)
    external = [r for r in runs if r.data.tags.get("dfbk.run_key") == RUN_KEY]
    assert len(external) == 1 and "ssim_fg_mean" in external[0].data.metrics
    assert len(client.get_metric_history(external[0].info.run_id, "loss_mse")) == 1


def test_translate_that_misses_a_subject_fails_naming_the_file(external_run, tmp_path):
    """A translate command that exits 0 without the test subjects' files: the job fails,
    its log names the file, and no translate/ folder is left for evaluation to read."""
    workdir = tmp_path / "copy"
    shutil.copytree(external_run, workdir, symlinks=True)
    lossy = {**EXTERNAL, "translate": EXTERNAL["translate"] + " && rm {predictions}/*.nii.gz"}
    result = snakemake(workdir, micro_config(lossy), TABLE)
    assert result.returncode != 0
    assert "Error in rule collect_external_predictions" in result.stdout + result.stderr
    log = workdir / RESULTS / f"logs/collect_external_predictions/{RUN_KEY}.log"
    assert re.search(r"predictions/[\w-]+\.nii\.gz: prediction for test subject", log.read_text())
    assert not (workdir / RESULTS / f"translate/{RUN_KEY}").exists()


# Stand-in for apptainer (as in test_deployment): logs each call, runs the job's command here.
FAKE_APPTAINER = """#!/bin/bash
echo "$@" >> "$FAKE_APPTAINER_LOG"
if [ "$1" = "--version" ]; then echo "apptainer version 1.3.4"; exit 0; fi
while [ "$#" -gt 2 ]; do shift; done
exec bash "$@"
"""


def test_sdm_apptainer_runs_the_external_commands_in_their_own_image(
    external_run, tmp_path, monkeypatch
):
    """`container:` puts the external train command in its image; the check job that follows
    runs in the workflow's image (config `container`)."""
    workdir = tmp_path / "copy"
    shutil.copytree(external_run, workdir, symlinks=True)
    shutil.rmtree(workdir / RESULTS / f"train/{RUN_KEY}")
    for image in ("images/linear-map.sif", "containers/dfbk.sif"):  # local: never pulled
        (workdir / image).parent.mkdir(exist_ok=True)
        (workdir / image).write_bytes(b"")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/apptainer").write_text(FAKE_APPTAINER)
    (tmp_path / "bin/apptainer").chmod(0o755)
    log = tmp_path / "apptainer.log"
    monkeypatch.setenv("FAKE_APPTAINER_LOG", str(log))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    config = micro_config({**EXTERNAL, "container": "images/linear-map.sif"})
    target = f"{RESULTS}/train/{RUN_KEY}/run.json"
    # mtime only: a new software environment would otherwise rerun the whole copied DAG
    result = snakemake(workdir, config, target, "--sdm", "apptainer", "--rerun-triggers", "mtime")
    assert result.returncode == 0, result.stderr[-3000:]
    calls = [line for line in log.read_text().splitlines() if line.startswith("exec ")]
    assert len(calls) == 2, calls
    assert " images/linear-map.sif bash -c " in calls[0] and "linear_map.py train" in calls[0]
    assert (
        " containers/dfbk.sif bash -c " in calls[1] and "dfbk.inference.external record" in calls[1]
    )


def test_sdm_conda_creates_the_external_environment_from_its_file(tmp_path, monkeypatch):
    """`conda:` (relative to the working directory) is the environment Snakemake creates for
    the external jobs, beside the workflow's own (stand-in conda, --conda-create-envs-only)."""
    for name, value in install_fake_conda(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    workdir = tmp_path / "work"
    (workdir / "envs").mkdir(parents=True)
    example_env = (SCRIPT.parent / "environment.yaml").read_text()
    (workdir / "envs/linear.yaml").write_text(example_env)
    log = tmp_path / "conda.log"
    config = micro_config({**EXTERNAL, "conda": "envs/linear.yaml"})
    options = ["--sdm", "conda", "--conda-create-envs-only", "--conda-frontend", "conda"]
    result = snakemake(workdir, config, *options)
    assert result.returncode == 0, result.stderr[-3000:]
    created = Path(f"{log}.envs").read_text().split("---\n")[:-1]
    assert len(created) == 2  # the workflow's environment and the external method's
    assert example_env in created
    assert any("-e ${DFBK_BENCH_DIR}" in env for env in created)  # workflow/envs/dfbk.yaml
