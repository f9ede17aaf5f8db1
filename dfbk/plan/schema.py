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


@cache
def load_schema() -> dict[str, Any]:
    """The schema as a dict (read once per process)."""
    return yaml.safe_load(SCHEMA.read_text())


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
