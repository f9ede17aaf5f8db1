"""config/paper.yaml: the paper's whole DAG dry-runs from a clean folder with no data, lists
every job, never schedules a download whose output is already there; config errors are named.
The README's exact command, run from the repository root, gets the paper grid and nothing of
the demo config (a given config file replaces config/config.yaml, never merges into it)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from dfbk.data.datasets import get_adapter
from dfbk.errors import ConfigError
from dfbk.methods.registry import list_methods, method_stages
from dfbk.plan.checks import check_config

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
PAPER = REPO / "config" / "paper.yaml"


def paper() -> dict:
    return yaml.safe_load(PAPER.read_text())


def dry_run(workdir: Path, config_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    start = time.perf_counter()
    result = subprocess.run(
        [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(config_path), "--cores", "2", "-n"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )  # fmt: skip
    return result, time.perf_counter() - start


def readme_dry_run() -> subprocess.CompletedProcess:
    """The README's cluster command, from the repository root, as a dry run."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(
        [SNAKEMAKE, "--profile", "profiles/slurm", "--configfile", "config/paper.yaml", "-n"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )  # fmt: skip


def planned_runs(output: str, rule: str = "train_method") -> set[tuple[str, str, str]]:
    """(dataset, direction, method) of every `rule` job a dry run lists."""
    runs = set()
    for block in output.split("\nrule ")[1:]:
        if block.startswith(f"{rule}:"):
            wildcards = dict(
                item.split("=", 1) for item in re.search(r"wildcards: (.*)", block)[1].split(", ")
            )
            runs.add((wildcards["dataset"], wildcards["direction"], wildcards["method"]))
    return runs


def job_stats(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> count (plus 'total')."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE)}


def expected_jobs(config: dict) -> dict[str, int]:
    """Job counts computed from the config the way the DAG is meant to expand."""
    seeds = len(config["seeds"])
    directions = [(d, r) for d, spec in config["datasets"].items() for r in spec["directions"]]
    runs = {(d, r, m, s) for d, r in directions for m in config["methods"] for s in range(seeds)}
    ablation = config["ablation"]
    wanted = ["resshift", *ablation["methods"], "dfbk"]
    for dataset, chosen in ablation["directions"].items():
        runs |= {(dataset, r, m, s) for r in chosen for m in wanted for s in range(seeds)}
    stages = sum(len(method_stages(m)) for _, _, m, _ in runs)
    targets = {(d, r.split("-to-")[1]) for d, r in directions}
    # the downstream segmentation check (segment.smk): datasets whose adapter reads labels get
    # one segmenter per target modality and one scoring job per run
    scored = {run for run in runs if get_adapter(run[0]).label_values}
    return {
        "train_segmenter": len({(d, r.split("-to-")[1]) for d, r, _, _ in scored}),
        "score_segmentation": len(scored),
        "train_method": len(runs),
        "translate_test_set": len(runs),
        "evaluate_predictions": len(runs),
        "train_method_stage": stages,
        "encode_knowledge": len(targets),
        "prepare_slices": len(config["datasets"]),
        "split_subjects": len(config["datasets"]),
        "plot_comparison": len(directions),
        **{f"download_{d}": 1 for d in config["datasets"]},
        "fetch_weights": len(config.get("weights", {}).get("fetch", [])),
    }


def test_paper_config_names_only_registered_methods():
    config = paper()
    named = set(config["methods"]) | set(config["ablation"]["methods"])
    missing = sorted(named - set(list_methods()))
    assert not missing, f"config/paper.yaml names methods the registry lacks: {missing}"


def test_paper_dag_builds_from_a_clean_folder_and_lists_every_job(tmp_path, record_property):
    result, seconds = dry_run(tmp_path, PAPER)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = job_stats(result.stdout)
    config = paper()
    for rule, count in expected_jobs(config).items():
        assert stats.get(rule, 0) == count, (rule, stats)
    assert stats["tabulate_comparison"] == stats["tabulate_ablation"] == stats["all"] == 1
    assert stats["total"] == sum(v for k, v in stats.items() if k != "total")
    assert result.stdout.count("\nrule ") + result.stdout.count("\nlocalrule ") == stats["total"]
    record_property("paper_dry_run_jobs", stats["total"])
    record_property("paper_dry_run_seconds", round(seconds, 1))
    print(f"paper.yaml dry run: {stats['total']} jobs in {seconds:.1f} s")
    # the datasets already downloaded (e.g. placed by hand) are never fetched again
    for dataset in config["datasets"]:
        (tmp_path / "resources" / "raw" / dataset).mkdir(parents=True)
    again, _ = dry_run(tmp_path, PAPER)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not any(rule.startswith("download_") for rule in job_stats(again.stdout))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["datasets"].update(brats2021=c["datasets"].pop("brats2023")),
         r"datasets\.brats2021: unknown dataset 'brats2021'; known: phantom, brats2023"),
        (lambda c: c["datasets"]["brats2023"]["directions"].append("t1n-to-dwi"),
         r"datasets\.brats2023\.directions: 't1n-to-dwi'.*has no modality 'dwi'"),
        (lambda c: c["datasets"]["isles2015"]["directions"].append("t2f-to-ct"),
         r"datasets\.isles2015\.directions: 't2f-to-ct'.*has no modality 'ct'"),
        (lambda c: c["methods"].update(pix2pixhd={"preset": "paper"}),
         r"methods\.pix2pixhd: unknown method 'pix2pixhd'; known: "),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(change, message):
    config = copy.deepcopy(paper())
    config["ablation"]["directions"] = {}
    change(config)
    with pytest.raises(ConfigError, match=message):
        check_config(config)


def test_impossible_direction_stops_snakemake_with_the_message(tmp_path):
    config = paper()
    config["datasets"]["brats2023"]["directions"] = ["t1n-to-dwi"]
    config["ablation"]["directions"] = {}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result, _ = dry_run(tmp_path, path)
    output = result.stdout + result.stderr  # Snakemake's own choice of stream varies
    assert result.returncode != 0
    assert "'t1n-to-dwi'" in output and "has no modality 'dwi'" in output


def test_readme_paper_command_from_the_repository_root_runs_the_paper_grid_only():
    result = readme_dry_run()
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    stats = job_stats(result.stdout)
    config = paper()
    expected = expected_jobs(config)
    for dataset in config["datasets"]:  # data already placed in the checkout is not fetched
        if (REPO / config["raw_dir"] / dataset).exists():
            expected[f"download_{dataset}"] = 0
        # a split kept from an earlier run (`make demo` writes one per dataset) is checked by
        # `dfbk split` when used, not redrawn, so it is not planned again
        if (REPO / config["results_dir"] / "prepare" / dataset / "splits.json").exists():
            expected["split_subjects"] -= 1
    for rule, count in expected.items():
        assert stats.get(rule, 0) == count, (rule, stats)
    assert "synthesise_phantom" not in stats
    assert "dataset=phantom" not in result.stdout
    directions = {(d, r) for d, spec in config["datasets"].items() for r in spec["directions"]}
    assert len(directions) == 6
    planned = planned_runs(result.stdout)
    for method in config["methods"]:  # every baseline on all six directions
        assert {(d, r) for d, r, m in planned if m == method} == directions, method
    assert "config.yaml" not in result.stdout.split("Config file(s):")[1].splitlines()[0]
