"""Config checks beyond the JSON schema: names that must exist in the registries.

Run by the Snakefile at start-up (no torch import, so a dry run stays fast). Errors name the
key: an unknown dataset or method, or a direction a dataset cannot serve.
"""

from __future__ import annotations

from typing import Any

from dfbk.data.adapters import get_adapter
from dfbk.errors import ConfigError
from dfbk.methods.registry import add_method_module, list_methods


def method_modules(config: dict[str, Any]) -> dict[str, str]:
    """Methods declared with an explicit `module` (baselines outside the package)."""
    return {name: spec["module"] for name, spec in config["methods"].items() if spec.get("module")}


def check_config(config: dict[str, Any]) -> None:
    """Raise ConfigError naming the first bad dataset, direction or method."""
    for name, module in method_modules(config).items():
        add_method_module(name, module)
    known = list_methods()
    ablation = config.get("ablation", {})
    for section, names in (
        ("methods", config["methods"]),
        ("ablation.methods", ablation.get("methods", {})),
    ):
        for name in names:
            if name not in known:
                raise ConfigError(
                    f"{section}.{name}: unknown method '{name}'; known: {', '.join(known)}"
                )
    for dataset, directions in ablation.get("directions", {}).items():
        if dataset not in config["datasets"]:
            raise ConfigError(f"ablation.directions.{dataset}: dataset not in datasets")
        for direction in directions:
            if direction not in config["datasets"][dataset]["directions"]:
                raise ConfigError(
                    f"ablation.directions.{dataset}: '{direction}' is not one of "
                    f"datasets.{dataset}.directions"
                )
    for dataset, spec in config["datasets"].items():
        try:
            adapter = get_adapter(dataset)
        except ConfigError as err:
            raise ConfigError(f"datasets.{dataset}: {err}") from err
        for direction in spec["directions"]:
            source, target = direction.split("-to-")
            if source == target:
                raise ConfigError(
                    f"datasets.{dataset}.directions: '{direction}' maps a modality to itself"
                )
            try:
                adapter.check_modalities([source, target])
            except ConfigError as err:
                raise ConfigError(f"datasets.{dataset}.directions: '{direction}': {err}") from err
        if "phantom" in spec and dataset != "phantom":
            raise ConfigError(
                f"datasets.{dataset}.phantom: synthesis settings only apply to 'phantom'"
            )
    configured = {r for spec in config["datasets"].values() for r in spec["directions"]}
    for name, settings in config["methods"].items():
        for direction in settings.get("directions") or []:
            if direction not in configured:
                raise ConfigError(
                    f"methods.{name}.directions: '{direction}' is not a configured direction"
                )
