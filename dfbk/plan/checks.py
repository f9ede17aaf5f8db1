"""Config checks run by the Snakefile at start-up, so a bad value never reaches a job.

Every error is one line that names the key (`datasets.phantom.split.fractions: ...`):
- `check_schema`: the JSON schema, with the offending key as a dotted path (Snakemake's own
  `validate` message spans a dozen lines and prints the schema fragment); `validate_config`
  also fills the schema's defaults, in one pass;
- `check_config`: names that must exist in the registries, directions a dataset can serve, and
  split fractions that make a split (cheap: no method module is imported);
- `check_method_settings`: each configured method's resolved hyperparameters (preset, stages,
  overrides): `steps` and `batch_size`, and slice and patch sizes its network can take. Built-in
  methods are read from the checked-in catalog (dfbk/methods/catalog.json), so planning never
  imports torch; only methods a config declares with `methods.<name>.module` are imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from dfbk.data.datasets import get_adapter
from dfbk.errors import ConfigError
from dfbk.inference.external import check_external_methods, external_methods
from dfbk.methods.budget import check_budget
from dfbk.methods.catalog import method_info
from dfbk.methods.geometry import SIZE_RULES, check_slice_size, size_multiple
from dfbk.methods.registry import add_method_module, get_method_class, list_methods, method_stages
from dfbk.plan.schema import default, read_schema

# Datasets whose raw folder a `phantom:` block synthesises (dfbk.data.phantom.layouts).
PHANTOM_LAYOUTS = ("phantom", "brats2023", "isles2015", "synthrad2023")
# Split fractions must sum to 1 up to float rounding (0.7 + 0.1 + 0.2 = 1.0000000000000002).
FRACTION_SUM_TOLERANCE = 1e-6


def key_path(parts: Sequence[str | int]) -> str:
    """Dotted config key with list indices: ("datasets", "x", "size", 0) -> datasets.x.size[0]."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "config"


def _raise_first(validator: jsonschema.protocols.Validator, config: dict[str, Any]) -> None:
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(f"{key_path(list(error.absolute_path))}: {error.message}")


def check_schema(config: dict[str, Any], schema_path: str | Path) -> None:
    """Raise ConfigError naming the key of the most relevant schema violation, in one line."""
    _raise_first(jsonschema.Draft202012Validator(read_schema(schema_path)), config)


def _properties_with_defaults(
    validator: Any, properties: dict[str, Any], instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    """JSON Schema's `properties` keyword that first fills each absent property's `default`.

    The recipe of jsonschema's FAQ, as Snakemake's `validate(set_default=True)` uses it.
    """
    if validator.is_type(instance, "object"):
        for name, subschema in properties.items():
            if "default" in subschema:
                instance.setdefault(name, subschema["default"])
    yield from jsonschema.Draft202012Validator.VALIDATORS["properties"](
        validator, properties, instance, schema
    )


def validate_config(config: dict[str, Any], schema_path: str | Path) -> None:
    """`check_schema`, filling the schema's defaults into `config` in the same single pass.

    The Snakefile's start-up check. It replaces check_schema followed by Snakemake's
    `validate(config, schema)`, which fills the same defaults but parses the schema again with
    a pure-Python YAML reader and validates a second time (~0.1 s of every dry run and job).
    """
    extended = jsonschema.validators.extend(
        jsonschema.Draft202012Validator, {"properties": _properties_with_defaults}
    )
    _raise_first(extended(read_schema(schema_path)), config)


def method_modules(config: dict[str, Any]) -> dict[str, str]:
    """Methods declared with an explicit `module` (baselines outside the package)."""
    return {name: spec["module"] for name, spec in config["methods"].items() if spec.get("module")}


def check_config(config: dict[str, Any]) -> None:
    """Raise ConfigError naming the first bad dataset, direction or method."""
    for name, module in method_modules(config).items():
        add_method_module(name, module)
    known = list_methods()
    check_external_methods(config, known)  # commands, not classes: dfbk.inference.external
    external = external_methods(config)
    ablation = config.get("ablation", {})
    for section, names in (
        ("methods", config["methods"]),
        ("ablation.methods", ablation.get("methods", {})),
    ):
        for name in names:
            if name not in known and name not in external:
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
            adapter = get_adapter(dataset, spec.get("layout"))
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
        if "phantom" in spec and dataset not in PHANTOM_LAYOUTS:
            raise ConfigError(
                f"datasets.{dataset}.phantom: synthesis settings only apply to "
                f"{', '.join(PHANTOM_LAYOUTS)}"
            )
    check_split_fractions(config)
    configured = {r for spec in config["datasets"].values() for r in spec["directions"]}
    for name, settings in config["methods"].items():
        for direction in settings.get("directions") or []:
            if direction not in configured:
                raise ConfigError(
                    f"methods.{name}.directions: '{direction}' is not a configured direction"
                )


def check_split_fractions(config: dict[str, Any]) -> None:
    """Train, val and test fractions each above 0 (every part gets a subject) and summing to 1."""
    for dataset, spec in config["datasets"].items():
        fractions = spec.get("split", {}).get("fractions")
        if fractions is None:
            continue
        key = f"datasets.{dataset}.split.fractions"
        if len(fractions) != 3 or min(fractions) <= 0:
            raise ConfigError(
                f"{key}: need three fractions (train, val, test), each above 0; got {fractions}"
            )
        total = sum(fractions)
        if abs(total - 1.0) > FRACTION_SUM_TOLERANCE:
            raise ConfigError(f"{key}: fractions must sum to 1; got {fractions} (sum {total:g})")


# ----- method settings (built-ins from the catalog; user modules imported) ------------------
@dataclass(frozen=True)
class _MethodSpec:
    """What the settings check needs of one method, from the catalog or from its class."""

    stages: dict[str, dict[str, Any]]
    preset_steps: dict[str, Any]
    resolve: Callable[[str, dict[str, Any]], dict[str, Any]]
    size_multiple: Callable[[dict[str, Any]], int]


def _method_spec(name: str, user_modules: dict[str, str]) -> _MethodSpec:
    """Built-in: the catalog (no import). Declared with `module`: import the user's class."""
    if name in user_modules:
        cls = get_method_class(name)
        return _MethodSpec(
            stages=dict(getattr(cls, "STAGES", {})),
            preset_steps={p: h.get("steps") for p, h in cls.PRESETS.items()},
            resolve=cls.resolve_hparams,
            size_multiple=lambda h: size_multiple(cls, h),
        )
    info = method_info(name)
    return _MethodSpec(
        stages=info.stages,
        preset_steps={p: h.get("steps") for p, h in info.presets.items()},
        resolve=info.resolve_hparams,
        size_multiple=SIZE_RULES[info.module],
    )


def _method_entries(config: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any], list]]:
    """(section, name, settings, datasets it trains on) for every configured method."""
    directions = {d: set(spec["directions"]) for d, spec in config["datasets"].items()}
    for name, settings in config["methods"].items():
        if settings.get("external") is not None:
            continue  # its own commands resolve its settings (dfbk.inference.external)
        chosen = settings.get("directions")
        datasets = [d for d, rs in directions.items() if chosen is None or rs & set(chosen)]
        yield "methods", name, settings, datasets
    ablation = config.get("ablation", {})
    for name, settings in ablation.get("methods", {}).items():
        yield "ablation.methods", name, settings, list(ablation.get("directions", {}))


def check_method_settings(config: dict[str, Any]) -> None:
    """Resolve each method's hyperparameters as training will, and refuse what cannot run.

    Per method and training stage: the preset exists and the overrides are known keys,
    `steps` >= 1 (0 for a method without training) and `batch_size` >= 1, and `patch_size`,
    when set, else every dataset's slice size, is a multiple its network can take.
    """
    user_modules = method_modules(config)
    for name, module in user_modules.items():
        add_method_module(name, module)
    for section, name, settings, datasets in _method_entries(config):
        prefix = f"{section}.{name}"
        spec = _method_spec(name, user_modules)
        preset = settings.get("preset", "tiny")
        overrides = settings.get("overrides") or {}
        declared = spec.stages
        for stage in (*method_stages(name, settings.get("stages")), None):
            if stage is not None and stage not in declared:
                raise ConfigError(
                    f"{prefix}.stages: method '{name}' has no stage '{stage}'; stages: "
                    f"{', '.join(declared) or 'none'}"
                )
            stage_overrides = declared.get(stage, {}) if stage else {}
            where = f"{prefix} (stage {stage})" if stage else prefix
            try:
                hparams = spec.resolve(preset, {**stage_overrides, **overrides}, budget=False)
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from err
            key = f"{prefix}.overrides" if overrides.keys() & {"steps", "batch_size"} else where
            check_budget(key, hparams, spec.preset_steps[preset])
            multiple = spec.size_multiple(hparams)
            patch_key = f"{where} patch_size"
            if "patch_size" in overrides:
                patch_key = f"{prefix}.overrides.patch_size"
            for dataset in datasets:
                check_slice_size(
                    tuple(config["datasets"][dataset].get("size", default("datasets.*.size"))),
                    hparams.get("patch_size"),
                    multiple,
                    size_key=f"datasets.{dataset}.size",
                    method=f"{where} (preset '{preset}')",
                    patch_key=patch_key,
                )
