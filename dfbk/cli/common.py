"""Pieces every verb group shares: option parsers and the verb constructor."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dfbk.errors import ConfigError
from dfbk.plan.schema import node


def csv_list(text: str) -> list[str]:
    """A comma-separated option as a list, empty items dropped."""
    return [part for part in text.split(",") if part]


def json_object(text: str, option: str) -> dict:
    """Parse a JSON-object option; bad JSON or another type is one ConfigError naming it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{option}: not valid JSON ({err.msg} at character {err.pos})") from err
    if not isinstance(value, dict):
        raise ConfigError(f"{option}: must be a JSON object {{...}}, got {type(value).__name__}")
    return value


def seeded_runs(items: list[str], option: str) -> dict[str, dict[int, Path]]:
    """Run folders -> {method: {seed: folder}}.

    An item is METHOD=PATH, METHOD@SEED=PATH, or a bare run folder named as the results tree
    names it (`.../{method}/seed-{n}`: the path is the experiment key), which is what the
    workflow passes.
    """
    runs: dict[str, dict[int, Path]] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:  # a run folder: the method and seed are its last two names
            folder = Path(item)
            name, path = f"{folder.parent.name}@{folder.name.removeprefix('seed-')}", item
            if not folder.name.startswith("seed-"):
                name = ""
        method, _, seed = name.partition("@")
        if not method or not path or (seed and not seed.isdigit()):
            raise ConfigError(
                f"{option} {item}: expected METHOD=PATH, METHOD@SEED=PATH or a run folder "
                ".../METHOD/seed-N"
            )
        runs.setdefault(method, {})[int(seed or 0)] = Path(path)
    return runs


def verb(
    verbs: argparse._SubParsersAction, name: str, summary: str, example: str
) -> argparse.ArgumentParser:
    """A verb whose --help opens with its summary and ends with its example."""
    return verbs.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def configured(parser: argparse.ArgumentParser, flag: str, key: str, help: str, **kwargs) -> None:
    """An option whose default (and choices, where the schema has an enum) is config key `key`'s.

    The schema is the one place a default is written; --help names the key it mirrors.
    """
    spec = node(key)
    if "enum" in spec:
        kwargs.setdefault("choices", spec["enum"])
    parser.add_argument(
        flag, default=spec["default"], help=f"{help} (default %(default)s; config {key})", **kwargs
    )
