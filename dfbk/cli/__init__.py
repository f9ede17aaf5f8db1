"""The `dfbk` command: one verb per workflow stage, each a thin wrapper over a library call.

Positionals say what, options say how. Errors from bad input or config print one line naming
the file or key and exit with status 2; anything else is a bug and keeps its traceback. The
verbs live in one module per group (data, train, knowledge, translate, report); nothing in the
library imports this package, and every option default comes from the config schema.
"""

from __future__ import annotations

import argparse
import os
import sys

from dfbk.cli import data, knowledge, report, train, translate
from dfbk.errors import DfbkError

GROUPS = (data, train, knowledge, translate, report)


def _version() -> str:
    """The installed distribution's version (what pip installed), else the package's own."""
    from importlib.metadata import PackageNotFoundError, version

    import dfbk

    try:
        return version("dfbk-bench")
    except PackageNotFoundError:
        return dfbk.__version__


def build_parser() -> argparse.ArgumentParser:
    """The `dfbk` parser with every group's verbs."""
    parser = argparse.ArgumentParser(prog="dfbk", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dfbk {_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for group in GROUPS:
        group.register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb; a DfbkError is one line on stderr and exit status 2."""
    os.environ.setdefault("PYTHONHASHSEED", "0")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --gpus N` re-runs them
    try:
        args.func(args)
    except DfbkError as err:
        print(f"dfbk {args.verb}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
