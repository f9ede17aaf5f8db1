"""The SLURM profile against a real single-node SLURM cluster started by the test.

Debian's slurmctld and slurmd run on 127.0.0.1 with auth/none, cred/none, select/cons_tres and
no accounting, all state under a temporary folder; the micro benchmark then runs through
`snakemake --profile profiles/slurm` and must give the tables of a local run. The config has to
sit at /etc/slurm/slurm.conf (the plugin's job step strips SLURM_CONF from srun's environment),
so the test runs only when asked (DFBK_TEST_SLURM=1) or in CI (root on a throwaway machine); a
slurm.conf already there is put back afterwards. Without accounting `sacct` cannot see jobs, so
the test passes `--slurm-status-command squeue` with MinJobAge well above three times the
plugin's first status-check delay (real clusters keep the profile's default, sacct).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import fakes
import pandas as pd
import pytest
import yaml
from conftest import REPO

# One cluster per machine (/etc/slurm/slurm.conf, slurmd's node): every test here must run on the
# worker that started it (`make test` uses --dist loadfile; the group also holds for loadgroup).
pytestmark = pytest.mark.xdist_group("slurm")

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by dfbk-bench tests/test_slurm.py"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel"]
FIRST_STATUS_CHECK_S = 5  # --slurm-init-seconds-before-status-checks for the test
MIN_JOB_AGE_S = 300  # >= 3 x FIRST_STATUS_CHECK_S: squeue still lists finished jobs
DIRECTIONS = ["t1n-to-t2w"]
METHODS = ["identity", "pix2pix"]
SMALL_PIX2PIX = {"batch_size": 4, "num_downs": 4, "ngf": 8, "ndf": 8}
# The preemption run: long enough to be signalled mid-way, a few seconds per attempt.
LONG_STEPS = 4000
LONG_SEED = 7


def micro_config(pix2pix_steps: int = 4, checkpoint_every: int = 2) -> dict:
    """The micro benchmark (one direction, every job kind) with GPUs off and small requests."""
    pix2pix = {"preset": "tiny", "overrides": {"steps": pix2pix_steps, **SMALL_PIX2PIX}}
    return fakes.micro_config(
        "results",
        {"identity": {"preset": "tiny"}, "pix2pix": pix2pix},
        DIRECTIONS,
        train={"checkpoint_every": checkpoint_every, "mem_mb": 2000, "runtime": 30},
        translate={"batch_size": 64},
        tracking={"experiment": "micro"},
    )


# ----- the cluster ----------------------------------------------------------------------------
def _why_not_runnable() -> str | None:
    """Reason this machine cannot host the test cluster, after installing what is missing."""
    if not (os.environ.get("DFBK_TEST_SLURM") or os.environ.get("CI")):
        return "set DFBK_TEST_SLURM=1 to run (it writes /etc/slurm/slurm.conf; runs in CI)"
    if sys.platform != "linux":
        return f"needs Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "needs root (writes /etc/slurm/slurm.conf, runs slurmd)"
    if all(shutil.which(name) for name in DAEMONS):
        return None
    if not shutil.which("apt-get"):
        return f"SLURM not installed ({', '.join(PACKAGES)}) and no apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:  # stale package lists on a fresh machine
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=900)
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode == 0 and all(shutil.which(name) for name in DAEMONS):
        return None
    return f"`{' '.join(install)}` failed: {result.stderr.strip()[-500:]}"


def _free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (bound together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _node_line() -> str:
    """NodeName=localhost with the CPUs and memory slurmd itself detects."""
    detected = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30)
    fields = dict(re.findall(r"(\w+)=(\S+)", detected.stdout.splitlines()[0]))
    cpus = fields.get("CPUs", str(os.cpu_count() or 1))
    memory = int(fields.get("RealMemory", "2000"))
    return f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN"


def _slurm_conf(state: Path) -> str:
    ctld_port, slurmd_port = _free_ports(2)
    settings = {
        "ClusterName": "dfbktest",
        "SlurmctldHost": "localhost(127.0.0.1)",
        "SlurmctldPort": ctld_port,
        "SlurmdPort": slurmd_port,
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/none",
        "CredType": "cred/none",
        "MpiDefault": "none",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core_Memory",
        "SchedulerType": "sched/backfill",
        "AccountingStorageType": "accounting_storage/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "JobCompType": "jobcomp/none",
        "MinJobAge": MIN_JOB_AGE_S,
        "ReturnToService": 2,
        "StateSaveLocation": state / "ctld",
        "SlurmdSpoolDir": state / "spool",
        "SlurmctldPidFile": state / "slurmctld.pid",
        "SlurmdPidFile": state / "slurmd.pid",
        "SlurmctldLogFile": state / "slurmctld.log",
        "SlurmdLogFile": state / "slurmd.log",
    }
    lines = [MARKER, *(f"{key}={value}" for key, value in settings.items()), _node_line()]
    # partition names as in profiles/slurm/config.yaml, so the profile runs unchanged
    lines.append("PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP")
    lines.append("PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM this daemon by its PID, SIGKILL it if it is still there after 15 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _slurm_env() -> dict[str, str]:
    """This environment without SLURM_*/SBATCH_* settings (of an outer job or another cluster)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """slurmctld + slurmd on 127.0.0.1 until the module ends; yields the state folder."""
    reason = _why_not_runnable()
    if reason:
        pytest.skip(f"SLURM cluster not started: {reason}")
    state = tmp_path_factory.mktemp("slurm")
    for folder in ("ctld", "spool"):
        (state / folder).mkdir()
    backup = None
    if SLURM_CONF.exists() and MARKER not in SLURM_CONF.read_text():
        backup = state / "slurm.conf.original"
        shutil.copy2(SLURM_CONF, backup)
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(_slurm_conf(state))
    env = _slurm_env()
    daemons = []
    try:
        for command in (["slurmctld", "-D"], ["slurmd", "-D", "-N", "localhost"]):
            log = open(state / f"{command[0]}.out", "w")  # noqa: SIM115 (closed with the daemon)
            daemons.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
            log.close()
        deadline = time.monotonic() + 60
        while True:
            shown = subprocess.run(
                ["sinfo", "--noheader", "--format=%t", "--nodes=localhost"],
                capture_output=True,
                text=True,
                env=env,
            )
            if shown.stdout.split()[:1] == ["idle"]:
                break
            dead = [p.args[0] for p in daemons if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "".join(
                    (state / f"{name}.out").read_text()[-2000:] for name in ("slurmctld", "slurmd")
                )
                pytest.fail(f"SLURM node not idle (exited: {dead}); sinfo: {shown}\n{logs}")
            time.sleep(0.5)
        yield state
    finally:
        queued = subprocess.run(
            ["squeue", "--noheader", "--format=%i"], capture_output=True, text=True, env=env
        )
        ids = queued.stdout.split()
        if ids:  # a failed test may leave jobs behind: cancel them before slurmd goes
            subprocess.run(["scancel", *ids], env=env, capture_output=True)
            for _ in range(60):
                left = subprocess.run(
                    ["squeue", "--noheader", "--format=%i"], capture_output=True, env=env
                )
                if not left.stdout.strip():
                    break
                time.sleep(0.5)
        for process in reversed(daemons):
            _stop(process)
        if backup is not None:
            shutil.copy2(backup, SLURM_CONF)
        else:
            SLURM_CONF.unlink(missing_ok=True)


# ----- the runs ---------------------------------------------------------------------------
def snakemake_command(workdir: Path, config: dict, *args: str) -> tuple[list[str], dict]:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**_slurm_env(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    return [*command, "--configfile", str(path), *args], env


def run_snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    command, env = snakemake_command(workdir, config, *args)
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=1800)


# the shipped profile as it is, plus what a cluster without accounting needs (see module doc)
ON_SLURM = [
    "--profile",
    str(REPO / "profiles/slurm"),
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    str(FIRST_STATUS_CHECK_S),
    "--slurm-keep-successful-logs",
]


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm-run")
    start = time.monotonic()
    result = run_snakemake(workdir, micro_config(), *ON_SLURM, "--verbose")
    wall = time.monotonic() - start
    print(f"SLURM micro benchmark: {wall:.0f} s wall time")
    log = result.stdout + result.stderr
    (workdir / "snakemake.out").write_text(log)
    assert result.returncode == 0, log[-6000:]
    return workdir, log


@pytest.fixture(scope="module")
def local_run(slurm_cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("local-run")
    profile = ["--profile", str(REPO / "profiles/default"), "--cores", "2"]
    result = run_snakemake(workdir, micro_config(), *profile)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return workdir


def planned_jobs(log: str) -> dict[str, int]:
    """Rule -> count from Snakemake's first 'Job stats' table."""
    table = log.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def submissions(log: str) -> dict[str, list[tuple[str, str, Path]]]:
    """Snakemake job id -> [(SLURM job id, rule, SLURM log)] in submission order (with retries)."""
    jobs: dict[str, list[tuple[str, str, Path]]] = {}
    pattern = r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)"
    for job, slurm_id, path in re.findall(pattern, log):
        rule = re.search(r"/rule_([a-z_]+)/", path).group(1)
        jobs.setdefault(job, []).append((slurm_id, rule, Path(path)))
    return jobs


def slurm_states() -> dict[str, str]:
    """Job id -> state of every job slurmctld still remembers (MinJobAge)."""
    listed = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T"],
        capture_output=True,
        text=True,
        env=_slurm_env(),
    )
    return dict(line.split("|") for line in listed.stdout.split())


def test_every_job_went_through_sbatch(slurm_run):
    _, log = slurm_run
    planned = planned_jobs(log)
    assert planned.pop("all") == 1  # the target rule, run by Snakemake itself
    jobs = submissions(log)
    rules: dict[str, int] = {}
    for (_, rule, _), *_ in jobs.values():
        rules[rule] = rules.get(rule, 0) + 1
    assert rules == planned  # every job of the DAG was submitted, none twice without cause
    states = slurm_states()
    last_attempts = [attempts[-1][0] for attempts in jobs.values()]
    assert {states.get(slurm_id) for slurm_id in last_attempts} == {"COMPLETED"}
    assert "Nothing to be done" not in log and "Finished jobid" in log


def test_sbatch_calls_carry_the_profile_resources(slurm_run):
    """GPU rules go to the gpu partition with the preemption signal; all jobs are requeueable."""
    _, log = slurm_run
    calls = re.findall(r"sbatch call: (sbatch .*?--comment (\S+).*)", log)
    assert calls
    for call, comment in calls:
        assert " --requeue" in call and " -t " in call and " --mem " in call
        if comment.startswith("rule_train_method_"):
            assert " -p gpu" in call and "--signal=TERM@300" in call and " -t 30" in call
            assert " --mem 2000" in call and "--gpus" not in call  # gpus: 0 in the config
        elif comment.startswith("rule_translate_test_set_"):
            assert " -p gpu" in call and "--signal" not in call
        else:
            assert " -p cpu" in call and "--signal" not in call


def test_tables_match_the_local_run(slurm_run, local_run):
    workdir, _ = slurm_run
    on_slurm = pd.read_csv(workdir / "results/tables/comparison.csv")
    local = pd.read_csv(local_run / "results/tables/comparison.csv")
    assert list(on_slurm.columns) == list(local.columns)
    rows = {(d, m) for d in DIRECTIONS for m in METHODS}
    assert set(zip(on_slurm.direction, on_slurm.method, strict=True)) == rows
    assert set(zip(local.direction, local.method, strict=True)) == rows
    key = ["direction", "method"]
    pd.testing.assert_frame_equal(  # same seed, one thread: the same numbers
        on_slurm.sort_values(key).reset_index(drop=True),
        local.sort_values(key).reset_index(drop=True),
        check_exact=False,
        rtol=1e-6,
    )
    for name in ("comparison.md", "comparison.tex"):
        assert (workdir / "results/tables" / name).read_text().count("\n") == (
            local_run / "results/tables" / name
        ).read_text().count("\n")
    imported = json.loads((workdir / "results/tracking/imported.json").read_text())
    seeds = [r["run_key"] for r in imported if r["kind"] == "seed"]
    assert sorted(seeds) == sorted(f"phantom/{d}/{m}/seed-0" for d in DIRECTIONS for m in METHODS)
    groups = [r["run_key"] for r in imported if r["kind"] == "group"]
    assert sorted(groups) == sorted(f"phantom/{d}/{m}" for d in DIRECTIONS for m in METHODS)
    assert [r["run_key"] for r in imported if r["kind"] == "summary"] == ["summary"]


def test_slurm_sigterm_checkpoints_and_the_retry_resumes(slurm_run):
    """SIGTERM to the job steps (what --signal=TERM@300 and preemption send), then the retry.

    `scancel --signal=TERM` signals the job steps but not the batch shell, as sbatch --signal
    without B: does. The trainer inside srun -> snakemake -> bash must save last.pt and exit;
    the job fails, the profile's `retries` resubmits it and the new job resumes from last.pt.
    """
    workdir, _ = slurm_run
    run = f"phantom/{DIRECTIONS[0]}/pix2pix/seed-{LONG_SEED}"
    target = f"results/train/{run}/model.pt"
    command, env = snakemake_command(
        workdir, micro_config(pix2pix_steps=LONG_STEPS, checkpoint_every=1000), *ON_SLURM, target
    )
    output = open(workdir / "preempt.out", "w")  # noqa: SIM115 (closed below)
    snakemake = subprocess.Popen(
        command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=REPO
    )
    log = workdir / "results/checkpoints" / run / "train_log.jsonl"
    deadline = time.monotonic() + 900
    try:
        while not (log.exists() and log.stat().st_size > 0):  # flushed every 50 steps
            assert snakemake.poll() is None, (workdir / "preempt.out").read_text()[-4000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        running = subprocess.run(
            ["squeue", "--states=RUNNING", "--noheader", "--format=%i|%k"],
            capture_output=True,
            text=True,
            env=_slurm_env(),
        ).stdout.split()
        first = [line.split("|")[0] for line in running if line.endswith(f"_{LONG_SEED}")]
        assert len(first) == 1, running
        subprocess.run(["scancel", "--signal=TERM", first[0]], check=True, env=_slurm_env())
        snakemake.wait(timeout=900)
    finally:
        if snakemake.poll() is None:
            snakemake.send_signal(signal.SIGTERM)
            snakemake.wait(timeout=60)
        output.close()
    text = (workdir / "preempt.out").read_text()
    assert snakemake.returncode == 0, text[-6000:]
    attempts = [ids for ids in submissions(text).values()][0]
    assert len(attempts) == 2, text[-4000:]  # the signalled job and its retry
    states = slurm_states()
    assert [states[slurm_id] for slurm_id, _, _ in attempts] == ["FAILED", "COMPLETED"]
    # Snakemake inside the job step got SIGTERM too and waited for the trainer to save
    first_log = attempts[0][2].read_text()
    assert "Will exit after finishing currently running jobs" in first_log, first_log[-3000:]
    result = json.loads((workdir / f"results/train/{run}/run.json").read_text())
    assert result["resumed"] is True and result["steps"] == LONG_STEPS
    steps = [
        json.loads(x)["step"]
        for x in (workdir / f"results/train/{run}/train_log.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(LONG_STEPS))
