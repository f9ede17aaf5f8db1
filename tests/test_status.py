"""`dfbk status` on a fabricated results tree: done, running, failed and pending runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dfbk import cli
from dfbk.errors import ConfigError
from dfbk.plan.grid import runs as configured_runs
from dfbk.plan.status import collect_status, load_config

RUN = "brats2023/t1n-to-t2f/{method}/seed-{seed}"
HOLD_LOCK = (
    "import sys; from pathlib import Path; from dfbk.training.guard import FolderLock; "
    "FolderLock(Path(sys.argv[1])).acquire(); print('held', flush=True); sys.stdin.read()"
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def config_file(tmp_path) -> Path:
    config = {
        "results_dir": str(tmp_path / "results"),
        "seeds": [0, 1, 2],
        "datasets": {"brats2023": {"directions": ["t1n-to-t2f"], "size": [128, 128]}},
        "methods": {"identity": {"preset": "tiny"}, "pix2pix": {"preset": "tiny"}},
    }
    return write(tmp_path / "config.yaml", yaml.safe_dump(config))


@pytest.fixture
def results(tmp_path, config_file):
    """identity: 0 done, 1 failed in translate, 2 pending; pix2pix: 0 running (a live trainer's
    lock), 1 killed (stale lock, log), 2 trained and waiting for translation."""
    root = tmp_path / "results"
    run = {(m, s): RUN.format(method=m, seed=s) for m in ("identity", "pix2pix") for s in range(3)}
    summary = {"psnr_fg": {"mean": 27.5, "std": 1.0}, "ssim_fg": {"mean": 0.875, "std": 0.01}}
    write(root / "evaluate" / run["identity", 0] / "metrics.json", json.dumps({"summary": summary}))
    write(root / "train" / run["identity", 1] / "run.json", "{}")
    write(
        root / "logs" / "translate_test_set" / f"{run['identity', 1]}.log",
        "translate identity: 0%\ndfbk predict: error: results/train/x/model.pt: no such file\n\n",
    )
    log = [{"step": 0, "loss": 1.0}, {"step": 49, "loss": 0.5, "val_ssim": 0.625}]
    log.append({"step": 50, "loss": 0.4})
    live = root / "checkpoints" / run["pix2pix", 0]
    write(live / "train_log.jsonl", "\n".join(map(json.dumps, log)) + '\n{"step": 5')  # torn line
    stale = root / "checkpoints" / run["pix2pix", 1]
    write(stale / ".lock", "12345\n")
    write(root / "logs" / "train_method" / f"{run['pix2pix', 1]}.log", "train pix2pix\nKilled\n")
    write(root / "train" / run["pix2pix", 2] / "run.json", "{}")
    # a finished pretraining stage's log is not a failure of the run
    write(root / "logs" / "train_method_stage" / run["pix2pix", 2] / "pre.log", "ok\n")
    write(root / "train" / run["pix2pix", 2] / "stage-pre" / "run.json", "{}")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(live)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    yield root
    holder.communicate("")


def test_states_and_metrics_of_a_fabricated_tree(config_file, results):
    statuses = {(s.method, s.seed): s for s in collect_status(load_config(config_file))}
    states = {key: (s.state, s.stage) for key, s in statuses.items()}
    assert states == {
        ("identity", 0): ("done", "evaluate"),
        ("identity", 1): ("failed", "translate"),
        ("identity", 2): ("pending", ""),
        ("pix2pix", 0): ("running", "train"),
        ("pix2pix", 1): ("failed", "train"),
        ("pix2pix", 2): ("pending", "train"),
    }
    assert statuses["identity", 0].metrics == {"psnr_fg": 27.5, "ssim_fg": 0.875}
    assert statuses["pix2pix", 0].metrics == {"step": 51, "val_ssim": 0.625}
    assert "no such file" in statuses["identity", 1].detail
    assert statuses["pix2pix", 1].detail == "Killed"


def test_cli_prints_one_row_per_run_and_totals(config_file, results, capsys):
    assert cli.main(["status", "--configfile", str(config_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 6 + 1
    assert lines[-1] == "1 done, 1 running, 2 failed, 2 pending of 6"
    row = next(line for line in lines if "identity/seed-0" in line)
    assert "done" in row and "psnr_fg=27.5" in row and "ssim_fg=0.875" in row


def test_a_live_snakemake_list_makes_missing_outputs_queued_or_running(
    tmp_path, config_file, results
):
    """Outputs in .snakemake/locks/*.output.lock are being made: a log there is not a failure."""
    workdir = tmp_path / "work"
    translate = results / "translate" / RUN.format(method="identity", seed=1)
    train = results / "train" / RUN.format(method="identity", seed=2) / "model.pt"
    write(workdir / ".snakemake" / "locks" / "0.output.lock", f"{translate}\n{train}\n")
    statuses = {(s.method, s.seed): s for s in collect_status(load_config(config_file), workdir)}
    assert (statuses["identity", 1].state, statuses["identity", 1].stage) == (
        "running",
        "translate",
    )
    assert statuses["identity", 2].state == "pending"
    assert statuses["identity", 2].detail == "queued by snakemake"
    assert statuses["pix2pix", 1].state == "failed"  # not in the list: still failed
    (workdir / ".snakemake" / "locks" / "0.output.lock").unlink()  # that Snakemake ended
    assert collect_status(load_config(config_file), workdir)[1].state == "failed"


def test_runs_follow_the_workflow_order_with_ablation_once(tmp_path):
    config = load_config(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    runs = configured_runs(config)
    keys = [tuple(r.values()) for r in runs]
    assert len(keys) == len(set(keys))
    # demo: 3 floors and 3 trained methods on each of 3 directions less pix2pix on FLAIR->DWI,
    # 4 more on T1->FLAIR (SynDiff left the demo: docs/demo.md says why), 2 ablation-only methods
    assert len(runs) == (3 * 6 - 1 + 4 + 2) * len(config["seeds"])
    assert keys[-1][2] == "dfbk-no-dfb" and keys[0][:3] == ("brats2023", "t1n-to-t2f", "identity")


def test_bad_config_is_one_line_naming_the_file(tmp_path, capsys):
    bad = write(
        tmp_path / "bad.yaml",
        "datasets: {brats2023: {directions: [t1n-to-t2f]}}\nmethods: {identity: {preset: 3}}\n",
    )
    with pytest.raises(ConfigError, match=f"{bad}: methods.identity.preset"):
        load_config(bad)
    assert cli.main(["status", "--configfile", str(tmp_path / "absent.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "absent.yaml: cannot read the config" in err
