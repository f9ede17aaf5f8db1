"""A stand-in `conda` for `snakemake --sdm conda` tests (conda is not installed here).

It answers the checks Snakemake makes (`info --json`, `--version`, `config --get`) and, for
`conda env create --file F --prefix P`, does what conda does with an environment file: it appends
F's text to `<log>.envs`; when FAKE_CONDA_PIP names a pip, it writes F's pip section to a
requirements file beside F and runs it from that folder as a dry run without an index (so every
relative path in it must resolve, and nothing is downloaded), pip's output to `<log>.pip`; then
it makes P/bin. Every call is logged to `<log>` as one JSON line {"args": ..., "cwd": ...}.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """\
    #!{python}
    import json, os, subprocess, sys, yaml
    from pathlib import Path

    args = sys.argv[1:]


    def option(name):
        for i, arg in enumerate(args):
            if arg == name:
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]

    log = os.environ["FAKE_CONDA_LOG"]
    with open(log, "a") as stream:
        stream.write(json.dumps({{"args": args, "cwd": os.getcwd()}}) + "\\n")
    if args[:2] == ["info", "--json"]:
        print(json.dumps({{"conda_prefix": os.environ["FAKE_CONDA_BASE"], "platform": "linux-64"}}))
    elif args == ["--version"]:
        print("conda 25.5.1")
    elif args[:2] == ["config", "--get"]:
        print(json.dumps({{"get": {{"channel_priority": "strict"}}}}))
    elif args[:2] == ["env", "create"]:
        env_file, prefix = Path(option("--file")), Path(option("--prefix"))
        with open(log + ".envs", "a") as stream:
            stream.write(env_file.read_text() + "---\\n")
        if os.environ.get("FAKE_CONDA_PIP"):
            spec = yaml.safe_load(env_file.read_text())
            pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
            requirements = env_file.parent / "condaenv.requirements.txt"
            requirements.write_text("\\n".join(pip) + "\\n")
            done = subprocess.run(
                [os.environ["FAKE_CONDA_PIP"], "install", "--dry-run", "--no-index",
                 "--no-build-isolation", "-r", requirements.name],
                cwd=env_file.parent, capture_output=True, text=True,
            )
            Path(log + ".pip").write_text(done.stdout + done.stderr)
            if done.returncode:
                sys.exit(done.returncode)
        (prefix / "bin").mkdir(parents=True)
    elif args[:1] != ["clean"]:  # clean: nothing cached to clean
        sys.exit(f"fake conda: unexpected {{args}}")
    """
)


def install_fake_conda(folder: Path, pip: Path | None = None) -> dict[str, str]:
    """Write folder/bin/conda and folder/base; return the environment variables it reads
    (FAKE_CONDA_LOG = folder/conda.log, FAKE_CONDA_BASE, FAKE_CONDA_PIP when `pip` is given).
    Put folder/bin first on PATH to use it."""
    conda = folder / "bin" / "conda"
    conda.parent.mkdir(parents=True, exist_ok=True)
    conda.write_text(SCRIPT.format(python=sys.executable))
    conda.chmod(0o755)
    (folder / "base" / "bin").mkdir(parents=True, exist_ok=True)
    env = {"FAKE_CONDA_LOG": str(folder / "conda.log"), "FAKE_CONDA_BASE": str(folder / "base")}
    if pip is not None:
        env["FAKE_CONDA_PIP"] = str(pip)
    return env
