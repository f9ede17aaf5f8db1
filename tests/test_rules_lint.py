"""Snakemake workflow-catalog standards, read from the workflow's own rule objects.

Every rule that writes something records its time and memory (`benchmark:`; config/README.md
says where), writes a log, and `snakemake --lint` has nothing to say. The rules are read by
loading the Snakefile through Snakemake's API in a subprocess (its include machinery changes
the working directory and registers config methods), with a config that declares an external
baseline, so the external rules are checked as a configured workflow runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
CONFIG = {
    "results_dir": "results",
    "datasets": {"phantom": {"size": [64, 64], "directions": ["t1n-to-t2w"]}},
    "methods": {
        "identity": {"preset": "tiny"},
        "linear_map": {
            "external": {
                "train": "python linear_map.py train --store {store} --checkpoint {checkpoint}",
                "translate": "python linear_map.py translate --checkpoint {checkpoint} "
                "--predictions {predictions}",
            }
        },
    },
}
# Loads the workflow as `snakemake` would and prints each rule's name, outputs, log and
# benchmark as JSON (rule objects: snakemake.rules.Rule).
READ_RULES = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

snakefile, configfile, workdir = map(Path, sys.argv[1:4])
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(),
        config_settings=ConfigSettings(configfiles=[configfile]),
        snakefile=snakefile,
        workdir=workdir,
    )._workflow
    rules = [
        {"name": rule.name, "output": [str(f) for f in rule.output],
         "log": [str(f) for f in rule.log], "benchmark": rule.benchmark and str(rule.benchmark)}
        for rule in workflow.rules
    ]
print("RULES=" + json.dumps(rules))
"""


@pytest.fixture(scope="module")
def workflow_rules(tmp_path_factory) -> list[dict]:
    workdir = tmp_path_factory.mktemp("rules")
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    result = subprocess.run(
        [sys.executable, "-c", READ_RULES, str(REPO / "Snakefile"), str(config), str(workdir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RULES=")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RULES="))


def test_rules_are_read_from_every_rule_file(workflow_rules):
    names = {rule["name"] for rule in workflow_rules}
    # one rule of each file under workflow/rules/ (a file that fails to load would drop out)
    expected = {"synthesise_phantom", "prepare_slices", "encode_knowledge", "train_method",
                "evaluate_predictions", "score_segmentation", "tabulate_comparison",
                "track_runs", "fetch_weights", "train_external", "all"}  # fmt: skip
    assert expected <= names, sorted(expected - names)


def test_every_rule_that_writes_has_a_benchmark_and_a_log(workflow_rules):
    """Target rules (no output: all, segmentation) only name files; every other rule runs
    a job, so its time and memory land in benchmarks/ and its output in logs/."""
    jobs = [rule for rule in workflow_rules if rule["output"]]
    assert len(jobs) >= 20
    missing = [rule["name"] for rule in jobs if not rule["benchmark"]]
    assert not missing, f"rules without benchmark: {missing}"
    for rule in jobs:
        assert "/benchmarks/" in rule["benchmark"] and rule["benchmark"].endswith(".tsv")
        assert rule["log"] and all("/logs/" in path for path in rule["log"]), rule["name"]


def test_snakemake_lint_has_nothing_to_say(tmp_path):
    """`snakemake --lint` over every rule file, with an external baseline configured."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    result = subprocess.run(
        [
            SNAKEMAKE,
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(config),
            "--lint",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Lints for" not in output, output[-3000:]
    assert "Congratulations" in output


def test_rule_files_are_snakefmt_formatted():
    """The catalog's formatting standard: `snakefmt --check` (pyproject's [tool.snakefmt])."""
    rule_files = [REPO / "Snakefile", REPO / "workflow" / "Snakefile"]
    rule_files += sorted((REPO / "workflow" / "rules").glob("*.smk"))
    result = subprocess.run(
        [str(Path(sys.executable).with_name("snakefmt")), "--check", *map(str, rule_files)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
