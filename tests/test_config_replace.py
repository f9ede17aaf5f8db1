"""A config file given with --configfile is the whole experiment: Snakemake never merges it into
the embedded demo config (config/config.yaml), which applies only when no config file is given.

Dry runs from the repository root, the way the README runs the workflow.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def dry_run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(
        [SNAKEMAKE, "--profile", "profiles/default", "--cores", "2", "-n", *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip


def trained(output: str) -> set[tuple[str, str, str]]:
    """(dataset, direction, method) of every train_method job in a dry run's listing."""
    runs = set()
    for block in output.split("\nrule train_method:")[1:]:
        wildcards = dict(
            item.split("=", 1) for item in re.search(r"wildcards: (.*)", block)[1].split(", ")
        )
        runs.add((wildcards["dataset"], wildcards["direction"], wildcards["method"]))
    return runs


def config_files(output: str) -> str:
    return output.split("Config file(s):")[1].splitlines()[0]


def test_user_config_file_is_not_merged_with_the_demo_config(tmp_path):
    user = {
        "results_dir": str(tmp_path / "results"),
        "raw_dir": str(tmp_path / "raw"),
        "datasets": {"phantom": {"size": [64, 64], "directions": ["t1n-to-t2f"]}},
        "methods": {"identity": {"preset": "tiny"}},
    }
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(user))
    result = dry_run("--configfile", str(path))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    # the demo's other methods, directions, ablation grid and seeds stay out
    assert trained(result.stdout) == {("phantom", "t1n-to-t2f", "identity")}
    assert "rule tabulate_ablation:" not in result.stdout
    assert "seed=1" not in result.stdout
    assert "config.yaml" not in config_files(result.stdout)
    assert "results/" not in result.stdout.replace(str(tmp_path / "results"), "")


def test_without_a_config_file_the_demo_config_applies_and_config_values_update_it(tmp_path):
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    result = dry_run("--config", f"results_dir={tmp_path / 'out'}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "config/config.yaml" in config_files(result.stdout)
    methods = {m for _, _, m in trained(result.stdout)}
    assert methods == set(demo["methods"]) | set(demo.get("ablation", {}).get("methods", {}))
    assert f"{tmp_path / 'out'}/tables/comparison.md" in result.stdout
