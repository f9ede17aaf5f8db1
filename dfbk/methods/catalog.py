"""Built-in methods' metadata as checked-in data, so the Snakefile plans the DAG without torch.

Planning the paper grid needs, per method, its presets' resolved hyperparameters (steps,
batch size, network depth for the slice-size check), its extra training stages and whether it
trains paired. Importing the method modules for that costs torch and every network library
(seconds and about a gigabyte per `snakemake` process). `catalog.json`, beside this file, holds
those facts for the built-in methods; it is generated from the live registry by

    python -m dfbk.methods.catalog --write

and `tests/test_catalog.py` fails when it differs from what the code would generate, so it
cannot drift silently. Methods a config declares with `methods.<name>.module` are user code and
are still imported (dfbk.plan.checks).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from dfbk.errors import ConfigError
from dfbk.methods.budget import check_budget
from dfbk.methods.geometry import SIZE_RULES, size_multiple
from dfbk.methods.registry import BUILTIN_METHODS, CPU_ONLY_METHODS

CATALOG_PATH = Path(__file__).with_name("catalog.json")
CATALOG_VERSION = 1
REGENERATE = "python -m dfbk.methods.catalog --write"


@dataclass(frozen=True)
class MethodInfo:
    """One built-in method as planning sees it.

    presets: preset name -> hyperparameters resolved as `Method.resolve_hparams(preset)` gives
    them (common data settings included; tuples appear as lists). stages: extra training stage
    -> the overrides it applies on top of the preset (`Method.STAGES`). parameters: preset
    name -> trainable parameters at the preset's values (`dfbk list-methods` shows them).
    """

    name: str
    module: str
    class_name: str
    description: str
    paired: bool
    cpu_only: bool
    presets: dict[str, dict[str, Any]]
    stages: dict[str, dict[str, Any]]
    augmentations: tuple[str, ...]
    parameters: dict[str, int] = field(default_factory=dict)

    def resolve_hparams(
        self, preset: str, overrides: dict[str, Any] | None = None, *, budget: bool = True
    ) -> dict[str, Any]:
        """Preset values updated by overrides, refused as `Method.resolve_hparams` refuses them.

        The messages are the class method's (tests/test_catalog.py compares both on good and
        bad input), so a config error reads the same whichever path checked it.
        """
        if preset not in self.presets:
            raise ConfigError(
                f"method '{self.name}' has no preset '{preset}'; known: {', '.join(self.presets)}"
            )
        hparams = dict(self.presets[preset])
        for key, value in (overrides or {}).items():
            if key not in hparams:
                raise ConfigError(
                    f"method '{self.name}': unknown hyperparameter '{key}' in overrides; "
                    f"known: {', '.join(sorted(hparams))}"
                )
            hparams[key] = value
        if hparams["augment"] not in self.augmentations:
            raise ConfigError(
                f"method '{self.name}': augment '{hparams['augment']}' unknown; known: "
                f"{', '.join(self.augmentations)}"
            )
        size = hparams["patch_size"]
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigError(
                f"method '{self.name}': patch_size must be a positive integer or null"
            )
        if budget:  # dfbk.plan.checks checks it itself, naming the config key
            check_budget(f"method '{self.name}'", hparams, self.presets[preset].get("steps"))
        return hparams


def _description(cls: type) -> str:
    """First line of the class's own docstring, else of its module's."""
    doc = cls.__dict__.get("__doc__") or sys.modules[cls.__module__].__doc__ or ""
    return inspect.cleandoc(doc).splitlines()[0] if doc.strip() else ""


def _preset_parameters(cls: type, hparams: dict[str, Any]) -> int:
    """Trainable parameters of the method a preset builds, counted on the meta device.

    The meta device allocates nothing, so the 256x256 `paper` networks (up to ~160 M
    parameters) are counted in milliseconds on any machine. Counts are at the preset's own
    values: a knowledge-guided method's cross-attention widths follow its default
    `knowledge_dim`, so a run with another text encoder can differ slightly (its run.json holds
    the exact count).
    """
    import torch

    from dfbk.methods.base import count_parameters

    with torch.device("meta"):
        return count_parameters(cls(hparams))


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON (tuples become lists) so built and loaded catalogs compare equal."""
    return json.loads(json.dumps(value, allow_nan=False))


def build_catalog() -> dict[str, Any]:
    """The catalog as the live registry gives it (imports every built-in method module).

    Refuses a built-in class with its own `size_multiple` classmethod: planning cannot call it
    without importing torch, so built-in size rules live in `dfbk.methods.geometry.SIZE_RULES`.
    """
    from dfbk.methods.base import AUGMENTATIONS
    from dfbk.methods.registry import get_method_class

    methods: dict[str, Any] = {}
    for name in sorted(BUILTIN_METHODS):
        cls = get_method_class(name)
        if getattr(cls, "size_multiple", None) is not None or cls.__module__ not in SIZE_RULES:
            raise ConfigError(
                f"method '{name}': built-in methods need a size rule in "
                f"dfbk.methods.geometry.SIZE_RULES['{cls.__module__}'], not a size_multiple method"
            )
        presets = {}
        for preset in cls.PRESETS:
            hparams = cls.resolve_hparams(preset)
            presets[preset] = {
                "hparams": hparams,
                "n_parameters": _preset_parameters(cls, hparams),
                "size_multiple": size_multiple(cls, hparams),
            }
        methods[name] = {
            "module": cls.__module__,
            "class": cls.__qualname__,
            "description": _description(cls),
            "paired": bool(cls.PAIRED),
            "cpu_only": name in CPU_ONLY_METHODS,
            "preset_order": list(cls.PRESETS),  # messages list presets in class order
            "stages": dict(getattr(cls, "STAGES", {})),
            "stage_order": list(getattr(cls, "STAGES", {})),  # stages run in this order
            "presets": presets,
        }
    return _jsonable(
        {
            "version": CATALOG_VERSION,
            "generated_by": REGENERATE,
            "augmentations": list(AUGMENTATIONS),
            "methods": methods,
        }
    )


def render(catalog: dict[str, Any]) -> str:
    """The file's text: sorted keys and fixed indentation, so diffs show only real changes."""
    return json.dumps(catalog, indent=1, sort_keys=True) + "\n"


def write_catalog(path: Path = CATALOG_PATH) -> Path:
    """Regenerate the catalog file atomically (temporary name, then rename)."""
    text = render(build_catalog())
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)
    return path


@cache
def load_catalog(path: Path = CATALOG_PATH) -> dict[str, MethodInfo]:
    """Built-in methods by name, read from the checked-in file (no torch import)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: unreadable method catalog ({err}); run `{REGENERATE}`") from err
    if data.get("version") != CATALOG_VERSION or set(data.get("methods", {})) != set(
        BUILTIN_METHODS
    ):
        raise ConfigError(
            f"{path}: method catalog does not match the registry's built-in methods; "
            f"run `{REGENERATE}`"
        )
    return {
        name: MethodInfo(
            name=name,
            module=entry["module"],
            class_name=entry["class"],
            description=entry["description"],
            paired=entry["paired"],
            cpu_only=entry["cpu_only"],
            presets={p: entry["presets"][p]["hparams"] for p in entry["preset_order"]},
            stages={s: entry["stages"][s] for s in entry["stage_order"]},
            augmentations=tuple(data["augmentations"]),
            parameters={p: entry["presets"][p]["n_parameters"] for p in entry["preset_order"]},
        )
        for name, entry in data["methods"].items()
    }


def method_info(name: str) -> MethodInfo:
    """Catalog entry of built-in method `name`; an unknown name lists the known ones."""
    catalog = load_catalog()
    if name not in catalog:
        raise ConfigError(f"unknown built-in method '{name}'; known: {', '.join(sorted(catalog))}")
    return catalog[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate or check dfbk/methods/catalog.json.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="regenerate the file")
    action.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    if args.write:
        print(write_catalog())
        return 0
    current = CATALOG_PATH.read_text() if CATALOG_PATH.exists() else ""
    if current != render(build_catalog()):
        print(f"{CATALOG_PATH} is stale; run `{REGENERATE}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
