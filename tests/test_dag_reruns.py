"""What the DAG reruns: changed config, deleted products, a store that lost runs, quoted paths.

Nothing is trained here. The micro workflow's outputs are fabricated as placeholders (their list
comes from `snakemake --summary`) and `snakemake --touch` records them as up to date, so each
test is one dry run (`-n`) of a private copy of that tree. The results folder has a space in its
name, so every printed shell command also shows whether its paths are quoted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import fakes
import pytest
import yaml
from conftest import REPO

pytestmark = (
    pytest.mark.slow
)  # each test is one Snakemake dry run (~5 s of CPU, 20 s on 2 busy cores)

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
RESULTS = "res dir/results"
RAW = "res dir/raw"
DIRECTORY_RULES = {"synthesise_phantom", "prepare_slices", "translate_test_set"}
CONFIG = fakes.micro_config(
    RESULTS,
    {
        "identity": {"preset": "tiny"},
        "pix2pix": {"preset": "tiny", "overrides": {"steps": 2, "batch_size": 2}},
        "my_p2p": {"preset": "tiny", "module": "my_p2p", "directions": ["t1n-to-ct"]},
    },
    ["t1n-to-t2w", "t1n-to-ct"],
    subjects=4,
    voxel_mm=5.0,
    fractions=(0.5, 0.25, 0.25),
    raw_dir=RAW,
    train={"checkpoint_every": 2},
    tracking={"experiment": "dag"},
)
MY_P2P = """from dfbk.baselines.pix2pix import Pix2Pix
from dfbk.methods.registry import register_method


@register_method("my_p2p")
class MyPix2Pix(Pix2Pix):
    \"\"\"A user's baseline outside the package.\"\"\"
"""


def snakemake(workdir: Path, *args: str, config: dict | None = None) -> str:
    """Run Snakemake on `workdir` with CONFIG (or `config`); stdout and stderr together."""
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config or CONFIG, sort_keys=False))
    (workdir / "ext").mkdir(exist_ok=True)
    if not (workdir / "ext/my_p2p.py").exists():
        (workdir / "ext/my_p2p.py").write_text(MY_P2P)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(workdir / "ext"),
    }
    result = subprocess.run(
        [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
        + ["--configfile", str(path), "--cores", "1", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from the dry run's "Job stats" table ({} when nothing is to be done)."""
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


@pytest.fixture(scope="module")
def finished_tree(tmp_path_factory) -> Path:
    """A workdir whose every output exists (placeholders) and is recorded as up to date."""
    workdir = tmp_path_factory.mktemp("dag")
    summary = snakemake(workdir, "--summary").splitlines()
    header = next(i for i, line in enumerate(summary) if line.startswith("output_file\t"))
    for line in summary[header + 1 :]:
        if line.count("\t") < 5:  # Snakemake's messages (stderr) follow the table
            continue
        output, _, rule, *_ = line.split("\t")
        path = workdir / output
        if rule in DIRECTORY_RULES:
            path.mkdir(parents=True, exist_ok=True)
            (path / "placeholder").write_text("x")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
    snakemake(workdir, "--touch")
    return workdir


@pytest.fixture
def tree(finished_tree, tmp_path) -> Path:
    """A private copy (mtimes and Snakemake's metadata kept) that a test may change."""
    copy = tmp_path / "work"
    shutil.copytree(finished_tree, copy, symlinks=True)
    return copy


def test_finished_tree_has_nothing_to_do(tree):
    output = snakemake(tree, "-n")
    reasons = [line.strip() for line in output.splitlines() if "reason:" in line]
    assert planned_jobs(output) == {}, reasons[:5]


def test_changed_size_reruns_every_consumer_of_the_store_with_quoted_paths(tree):
    config = json.loads(json.dumps(CONFIG))
    config["datasets"]["phantom"]["size"] = [128, 128]
    output = snakemake(tree, "-n", "-p", config=config)
    jobs = planned_jobs(output)
    assert jobs["prepare_slices"] == 1
    assert jobs["train_method"] == 5 and jobs["translate_test_set"] == 5
    assert jobs["evaluate_predictions"] == 5 and jobs["plot_comparison"] == 2
    assert jobs["tabulate_comparison"] == 1 and jobs["track_runs"] == 1
    assert "split_subjects" not in jobs and "synthesise_phantom" not in jobs
    commands = [line.split(":", 1)[1] for line in output.splitlines() if "Shell command:" in line]
    assert len(commands) >= 15
    for command in commands:
        words = shlex.split(command)
        assert "res" not in words and not any(w.startswith("dir/") for w in words), command


def test_deleted_raw_data_reruns_everything_made_from_it(tree):
    shutil.rmtree(tree / RAW / "phantom")
    jobs = planned_jobs(snakemake(tree, "-n"))
    assert jobs["synthesise_phantom"] == 1 and jobs["prepare_slices"] == 1
    assert jobs["train_method"] == 5 and jobs["tabulate_comparison"] == 1
    assert jobs["track_runs"] == 1


def test_deleted_train_folder_reruns_that_run_only(tree):
    shutil.rmtree(tree / RESULTS / "train/phantom/t1n-to-ct/pix2pix")
    jobs = planned_jobs(snakemake(tree, "-n"))
    assert jobs["train_method"] == 1 and jobs["translate_test_set"] == 1
    assert jobs["evaluate_predictions"] == 1 and jobs["plot_comparison"] == 1
    assert jobs["tabulate_comparison"] == 1 and jobs["track_runs"] == 1
    assert "prepare_slices" not in jobs


def test_imported_runs_missing_from_the_store_are_reported(tree):
    flag = tree / RESULTS / "tracking/imported.json"
    record = {"run_key": "phantom/t1n-to-ct/pix2pix/seed-0", "run_id": "0" * 32, "data_sha": "x"}
    flag.write_text(json.dumps([record]))
    output = snakemake(tree, "-n")
    assert "lacks 1 run(s)" in output and "phantom/t1n-to-ct/pix2pix/seed-0" in output
    assert "a run without -n re-imports them" in output
    assert flag.exists()  # a dry run changes nothing


def test_edited_baseline_module_retrains_that_method_only(tree):
    module = tree / "ext/my_p2p.py"
    module.write_text(module.read_text() + "\n# tuned\n")
    jobs = planned_jobs(snakemake(tree, "-n"))
    assert jobs["train_method"] == 1 and jobs["translate_test_set"] == 1
    assert jobs["tabulate_comparison"] == 1 and "prepare_slices" not in jobs
