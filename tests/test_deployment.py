"""Software deployment: the conda environment the rules name, the container, the catalog files.

conda is not installed here, so `--sdm conda` runs against a stand-in `conda` on PATH that
answers Snakemake's checks and, for `conda env create`, does what conda does with the pip
section: write it to a requirements file beside the environment file Snakemake copied into
.snakemake/conda/ and run pip from that folder. pip runs as a dry run against the installed
environment (no index), so it proves that every path in the file resolves from there and that
the package with the lock installs, without downloading anything.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from fake_conda import install_fake_conda

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / "workflow" / "envs" / "dfbk.yaml"
BIN = Path(sys.executable).parent


def test_every_rule_runs_in_the_workflow_environment():
    """Each rule's `conda:` names workflow/envs/dfbk.yaml, relative to its rule file; only an
    external baseline's own commands take its environment (external.smk, a function)."""
    rule_files = sorted((ROOT / "workflow" / "rules").glob("*.smk"))
    named, external = [], []
    for path in rule_files:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() == "conda:" and lines[i + 1].strip().startswith("lambda"):
                external.append((path.name, lines[i + 1].strip()))
            elif line.strip() == "conda:":
                target = (path.parent / lines[i + 1].strip().strip('"')).resolve()
                named.append((path.name, target))
    assert len(named) >= 15
    assert {target for _, target in named} == {ENV_FILE}
    assert external == [("external.smk", "lambda wc: conda_env(EXTERNAL[wc.method])")] * 2
    spec = yaml.safe_load(ENV_FILE.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    assert pip == ["-c ${DFBK_BENCH_DIR}/requirements/constraints.txt", "-e ${DFBK_BENCH_DIR}"]


def test_sdm_conda_creates_the_environment_from_the_copied_file(tmp_path):
    """`snakemake --sdm conda --conda-create-envs-only` from another folder: conda gets the
    copy under .snakemake/conda/ and its pip lines resolve to this repository and its lock."""
    fake = install_fake_conda(tmp_path / "fake", pip=BIN / "pip")
    log = Path(fake["FAKE_CONDA_LOG"])
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    env = {
        **os.environ,
        **fake,
        "PATH": f"{tmp_path / 'fake' / 'bin'}:{BIN}:{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("DFBK_BENCH_DIR", None)  # the Snakefile must set it
    command = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "workflow" / "Snakefile"),
        "--sdm",
        "conda",
        "--conda-create-envs-only",
        "--cores",
        "1",
        "--conda-frontend",
        "conda",
    ]
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    pip_log = Path(f"{log}.pip")
    pip_out = pip_log.read_text() if pip_log.exists() else "(pip not run)"
    assert done.returncode == 0, done.stderr[-3000:] + pip_out[-2000:]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    creates = [c for c in calls if c["args"][:2] == ["env", "create"]]
    assert len(creates) == 1  # one environment for every rule
    args = creates[0]["args"]
    env_copy = Path(args[args.index("--file") + 1])
    assert env_copy.parent == workdir / ".snakemake" / "conda"
    assert "Would install dfbk-bench-0.1.0" in pip_out, pip_out[-2000:]
    assert "-r condaenv.requirements.txt (line 2)" in pip_out
    assert "ERROR" not in pip_out


def _pip_install_args(line: str) -> list[str]:
    words = shlex.split(line)
    start = words.index("install") + 1
    return [w for w in words[start:] if w not in ("--quiet", "--no-cache-dir")]


def test_image_installs_the_same_lock_as_make_test():
    """Dockerfile's pip line == the Makefile's install line (same constraints, same extras)."""
    makefile = (ROOT / "Makefile").read_text()
    make_line = next(
        line for line in makefile.splitlines() if "pip install" in line and "-c " in line
    )
    dockerfile = (ROOT / "Dockerfile").read_text()
    runs = [line for line in dockerfile.splitlines() if line.startswith("RUN pip install")]
    lock_runs = [line for line in runs if "-c " in line]
    assert len(lock_runs) == 1
    assert _pip_install_args(lock_runs[0]) == _pip_install_args(make_line)
    assert _pip_install_args(lock_runs[0])[:2] == ["-c", "requirements/constraints.txt"]
    froms = re.findall(r"^FROM (\S+)", dockerfile, flags=re.M)
    assert froms[-1].startswith("nvidia/cuda:") and "-runtime-" in froms[-1]
    assert "uv python install 3.11" in dockerfile  # the lock's interpreter
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "results", "resources", ".git"} <= set(ignored)


def test_apptainer_definition_builds_from_the_docker_image():
    text = (ROOT / "containers" / "dfbk.def").read_text()
    header = dict(
        re.match(r"(\w+):\s*(.+)", line).groups()
        for line in text.splitlines()
        if re.match(r"^(Bootstrap|From):", line)
    )
    assert header == {"Bootstrap": "docker", "From": "{{ IMAGE }}"}
    sections = re.findall(r"^%(\w+)", text, flags=re.M)
    assert set(sections) <= {"arguments", "environment", "runscript", "test", "labels", "help"}
    default = re.search(r"^\s+IMAGE=(\S+)", text, flags=re.M).group(1)
    assert f"docker build -t {default} ." in (ROOT / "Dockerfile").read_text()


def test_container_directive_and_catalog_files():
    snakefile = (ROOT / "Snakefile").read_text()
    assert re.search(r'^container: config\["container"\]$', snakefile, flags=re.M)
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["container"]["default"] == "containers/dfbk.sif"
    catalog = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())
    deployment = catalog["usage"]["software-stack-deployment"]
    assert deployment["conda"] and deployment["apptainer"]
    assert 'include: "../Snakefile"' in (ROOT / "workflow" / "Snakefile").read_text()


@pytest.mark.parametrize("path", ["environment.yml", "workflow/envs/dfbk.yaml"])
def test_conda_files_install_the_package_under_the_lock(path):
    """Both conda files defer every version to pyproject.toml + requirements/constraints.txt."""
    spec = yaml.safe_load((ROOT / path).read_text())
    assert "python=3.11" in spec["dependencies"]
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    assert any(p.startswith("-c ") and p.endswith("requirements/constraints.txt") for p in pip)
    assert any(p.startswith("-e ") for p in pip)


FAKE_APPTAINER = textwrap.dedent(
    """\
    #!/bin/bash
    # Stand-in for apptainer: logs each call and runs the job's command on the host.
    echo "$@" >> "$FAKE_APPTAINER_LOG"
    if [ "$1" = "--version" ]; then echo "apptainer version 1.3.4"; exit 0; fi
    while [ "$#" -gt 2 ]; do shift; done    # ... IMAGE bash -c CMD: keep `-c CMD`
    exec bash "$@"
    """
)


def test_sdm_apptainer_runs_each_job_in_the_configured_image(tmp_path):
    """`--sdm apptainer` wraps every job in `apptainer exec <config container> bash -c ...`."""
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    (fake_bin / "apptainer").write_text(FAKE_APPTAINER)
    (fake_bin / "apptainer").chmod(0o755)
    (tmp_path / "containers").mkdir()
    (tmp_path / "containers" / "dfbk.sif").write_bytes(b"")  # a local image: never pulled
    config = {
        "datasets": {
            "phantom": {"directions": ["t1n-to-t2w"], "phantom": {"subjects": 3, "voxel_mm": 8.0}}
        },
        "methods": {"pix2pix": {"preset": "tiny"}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    log = tmp_path / "apptainer.log"
    env = {**os.environ, "PATH": f"{fake_bin}:{BIN}:{os.environ['PATH']}"}
    env.update(FAKE_APPTAINER_LOG=str(log), HF_HUB_OFFLINE="1")
    command = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--configfile"]
    command += ["config.yaml", "--sdm", "apptainer", "--cores", "1", "resources/raw/phantom"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    calls = [line for line in log.read_text().splitlines() if " exec " in f" {line} "]
    assert len(calls) == 1 and " containers/dfbk.sif bash -c " in calls[0], calls
    assert "dfbk phantom resources/raw/phantom " in calls[0] and "--subjects 3 " in calls[0]
    subjects = (tmp_path / "resources" / "raw" / "phantom").glob("phantom-*")
    assert len([p for p in subjects if p.is_dir()]) == 3
