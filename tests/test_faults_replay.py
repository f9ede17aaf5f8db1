"""The fault replayer (bench/faults/replay.py) runs, and every case it replays is handled.

The replayer drives the real `dfbk` CLI through each fault the audits reported; run here, a
change of layout, a verb's arguments or an error message that it no longer matches fails the
suite instead of leaving the replayer stale. The micro-workflow cases are left to the workflow
tests (tests/test_workflow.py, tests/test_dag_reruns.py run the same workflow): this runs the
CLI cases (`--no-workflow`).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REPLAY = REPO / "bench" / "faults" / "replay.py"
# Cases that may be skipped where they cannot be set up: a small filesystem needs root, and a
# folder translate that finishes before it can be killed has nothing to show.
MAY_SKIP = {
    "a full disk during prepare leaves no store",
    "a full disk while saving a checkpoint leaves no model",
    "translate into a read-only folder is one line and leaves no file",
    "a killed folder translate leaves nothing that looks finished, and resumes",
}


def replay_cases() -> list:
    """The replayer's registered cases (its module loaded from its file, not run)."""
    spec = importlib.util.spec_from_file_location("faults_replay", REPLAY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module.CASES


@pytest.mark.slow  # every CLI fault end to end: a few minutes on 2 cores
def test_every_replayed_fault_is_handled(tmp_path):
    cases = [c for c in replay_cases() if not c.workflow]
    assert len({c.name for c in cases}) == len(cases) >= 40
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [sys.executable, str(REPLAY), "--no-workflow", "--keep", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env={**env, "HF_HUB_OFFLINE": "1"},
        timeout=1500,  # a safety net against a hung case, not a timing
    )
    output = done.stdout + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    total = re.fullmatch(
        r"tried (\d+) / handled (\d+) / failed (\d+) \(skipped (\d+);.*", lines[-1]
    )
    assert total, output
    tried, handled, failed, skipped = map(int, total.groups())
    verdicts = [re.match(r"\[\s*\d+\] (\w+) +(.+) \(\d+ s\): ", line) for line in lines[:-1]]
    verdicts = [m.groups() for m in verdicts if m]
    assert sorted(name for _, name in verdicts) == sorted(c.name for c in cases), output
    assert [v for v in verdicts if v[0] == "FAILED"] == [] and failed == 0, output
    assert {name for verdict, name in verdicts if verdict == "SKIPPED"} <= MAY_SKIP, output
    assert tried == handled == len(cases) - skipped and done.returncode == 0, output
