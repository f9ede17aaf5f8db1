"""The config schema (workflow/schemas/config.schema.yaml): the one source of every default.

The Snakefile validates a config against it (filling defaults); the `dfbk` verbs take their
option defaults from it through `default`, so a default is written once, in the schema.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = REPO / "config" / "config.yaml"


def read_schema(path: str | Path = SCHEMA) -> dict[str, Any]:
    """A schema file as data; libyaml's parser when PyYAML has it (~15x faster on its 19 kB)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(Path(path).read_text(), Loader=loader)


@cache
def load_schema() -> dict[str, Any]:
    """The project's schema as a dict (read once per process)."""
    return read_schema(SCHEMA)


def node(key: str) -> dict[str, Any]:
    """The schema node of a dotted config key; `*` steps into a mapping's values.

    `node("translate.batch_size")`, `node("datasets.*.size")`.
    """
    current = load_schema()
    for part in key.split("."):
        if part == "*":
            current = current["additionalProperties"]
        else:
            current = current["properties"][part]
    return current


def default(key: str) -> Any:
    """The schema's default of a dotted config key (KeyError if it declares none)."""
    return node(key)["default"]
