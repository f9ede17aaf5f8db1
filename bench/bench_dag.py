"""Dry-run cost of planning a config's DAG: wall time and peak memory of `snakemake -n`.

Usage: python bench/bench_dag.py [--configfile config/paper.yaml] [--repeats 3]
                                 [--before COMMIT_OR_FOLDER] [--floor]

Each repeat runs `snakemake -n` on a fresh empty working folder (nothing to reuse) and reads the
process's wall time, CPU time (user + system) and maximum resident set size from the kernel
(`os.wait4`); on a shared machine CPU time is the steadier of the two times. With `--before`
the same dry run is timed on an older checkout too (a folder, or a commit checked out with
`git worktree add --detach` into a temporary folder and removed afterwards; its packages are put
first on PYTHONPATH so its own code plans its DAG), and the ratio is printed. Runs alternate
(before, after, before, ...) so a change in machine load hits both alike; the median is reported.
With `--floor` a third checkout is timed: a generated Snakefile with one rule and as many jobs
as the current checkout plans (no config checks, no input functions): Snakemake's own cost of
starting and planning that many jobs, which no change to this workflow can go below.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def dry_run(checkout: Path, configfile: Path) -> tuple[float, float, float, int]:
    """(wall s, CPU s, max RSS in MB, jobs) of one `snakemake -n` of `checkout`'s Snakefile.

    A relative `configfile` is the checkout's own (an older commit plans its own paper.yaml).
    """
    configfile = configfile if configfile.is_absolute() else checkout / configfile
    env = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    with tempfile.TemporaryDirectory(prefix="bench-dag-") as folder:
        workdir = Path(folder)
        command = [SNAKEMAKE, "--snakefile", str(checkout / "Snakefile"), "--configfile",
                   str(configfile), "--directory", str(workdir / "run"), "--cores", "1",
                   "-n"]  # fmt: skip
        with open(workdir / "stdout", "wb") as out, open(workdir / "stderr", "wb") as err:
            start = time.perf_counter()
            process = subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=err)
            _, status, usage = os.wait4(process.pid, 0)  # this child's own peak RSS
            seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout, stderr = (workdir / "stdout").read_text(), (workdir / "stderr").read_text()
    if process.returncode != 0:
        sys.exit(f"dry run of {checkout} failed:\n{stderr[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime  # less sensitive than wall time to a busy machine
    return seconds, cpu, usage.ru_maxrss / 1024, _total_jobs(stdout)


def _total_jobs(output: str) -> int:
    for line in output.splitlines():
        if line.startswith("total"):
            return int(line.split()[1])
    return -1


FLOOR_SNAKEFILE = """\
rule all:
    input: expand("out/{{i}}.txt", i=range({n}))

rule make:
    output: "out/{{i}}.txt"
    shell: "touch {{output}}"
"""


def _floor(jobs: int, stack: list[Path]) -> Path:
    """A folder with a one-rule Snakefile planning `jobs` jobs (all included) and an empty
    config file, laid out as a checkout for `dry_run`."""
    folder = Path(tempfile.mkdtemp(prefix="bench-dag-floor-"))
    (folder / "Snakefile").write_text(FLOOR_SNAKEFILE.format(n=jobs - 1))
    (folder / "config.yaml").write_text("{}\n")
    stack.append(folder)
    return folder


def _checkout(before: str, stack: list[Path]) -> Path:
    """A folder as given, or a commit checked out into a temporary worktree."""
    if Path(before).is_dir():
        return Path(before).resolve()
    folder = Path(tempfile.mkdtemp(prefix="bench-dag-before-")) / "tree"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(folder), before],
        check=True,
    )
    stack.append(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configfile", type=Path, default=Path("config/paper.yaml"), help="relative: per checkout"
    )
    parser.add_argument("--repeats", type=int, default=3, help="dry runs per checkout")
    parser.add_argument("--before", help="older checkout: a folder or a git commit")
    parser.add_argument(
        "--floor", action="store_true", help="also a one-rule Snakefile of the same job count"
    )
    args = parser.parse_args()
    configfile = args.configfile
    worktrees: list[Path] = []
    floors: list[Path] = []
    checkouts = {"after": REPO}
    try:
        if args.before:
            checkouts = {"before": _checkout(args.before, worktrees), "after": REPO}
        results: dict[str, list[tuple[float, float, float, int]]] = {k: [] for k in checkouts}
        for _ in range(args.repeats):
            for label, checkout in checkouts.items():
                config = Path("config.yaml") if label == "floor" else configfile
                results[label].append(dry_run(checkout, config))
            if args.floor and "floor" not in checkouts:
                checkouts["floor"] = _floor(results["after"][0][3], floors)
                results["floor"] = [dry_run(checkouts["floor"], Path("config.yaml"))]
    finally:
        for folder in worktrees:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)])
        for folder in floors:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"# snakemake -n --configfile {args.configfile}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, median of {args.repeats}")  # fmt: skip
    header = ("checkout", "jobs", "wall s", "CPU s", "max RSS MB")
    print("{:8s} {:>5s} {:>7s} {:>6s} {:>11s}  wall runs".format(*header))
    summary = {}
    for label, runs in results.items():
        wall, cpu, rss = (statistics.median(r[i] for r in runs) for i in range(3))
        summary[label] = (wall, cpu, rss)
        each = ", ".join(f"{r[0]:.1f}" for r in runs)
        print(f"{label:8s} {runs[0][3]:5d} {wall:7.2f} {cpu:6.2f} {rss:11.0f}  {each}")
    for label, reference in (("before", "after"), ("after", "floor")):
        if label in summary and reference in summary:
            ratios = [a / b for a, b in zip(summary[label], summary[reference], strict=True)]
            print(
                f"ratio {label}/{reference}: "
                "wall {:.1f}x, CPU {:.1f}x, max RSS {:.1f}x".format(*ratios)
            )


if __name__ == "__main__":
    main()
