"""Method registry: config name -> import path -> class registered by a decorator.

Built-in methods are listed by import path so `list_methods()` works without importing torch
models; a user's baseline joins through config (`methods.<name>.module`), never by folder
scanning. Unknown names fail at once and list the known ones.
"""

from __future__ import annotations

import importlib
from typing import Any

from dfbk.errors import ConfigError

# name -> module that defines it (its class carries @register_method(name)).
BUILTIN_METHODS: dict[str, str] = {
    "identity": "dfbk.baselines.identity",
    "mean": "dfbk.baselines.floors",
    "linear": "dfbk.baselines.floors",
    "pix2pix": "dfbk.baselines.pix2pix",
    "resshift": "dfbk.methods.resshift",
    "dfbk": "dfbk.methods.dfbk",
    "dfbk-no-kg": "dfbk.methods.dfbk",
    "dfbk-no-dfb": "dfbk.methods.dfbk",
    "dfbk-dfb-low": "dfbk.methods.dfbk",
    "dfbk-dfb-high": "dfbk.methods.dfbk",
    "dfbk-dfb-static": "dfbk.methods.dfbk",
    "resvit": "dfbk.baselines.resvit",
    "ea_gan": "dfbk.baselines.ea_gan",
    "dea_gan": "dfbk.baselines.ea_gan",
    "revgan": "dfbk.baselines.revgan",
    "maskgan": "dfbk.baselines.maskgan",
    "syndiff": "dfbk.baselines.syndiff",
    "syndiff_paired": "dfbk.baselines.syndiff",
}

# Extra training stages a method runs before its main training, in order (each one a DAG job
# whose model.pt initialises the next). Kept here as data so the Snakefile builds the DAG
# without importing torch; tests check it equals each class's `STAGES`.
BUILTIN_STAGES: dict[str, tuple[str, ...]] = {"resvit": ("pretrain",)}

# Methods with no network to run: their jobs never ask the cluster for a GPU.
CPU_ONLY_METHODS: frozenset[str] = frozenset({"identity", "mean", "linear"})

# The floors: predictions any method must beat (the source itself; the training split's mean
# target image; its least-squares intensity map of the source). Comparison tables never bold
# them nor test against them as the reference, and mark a trained row that does not beat them.
FLOOR_METHODS: tuple[str, ...] = ("identity", "mean", "linear")

_REGISTRY: dict[str, type] = {}
_EXTRA_MODULES: dict[str, str] = {}


def register_method(name: str):
    """Class decorator: make a Method subclass buildable by `name`."""

    def decorate(cls: type) -> type:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ConfigError(f"method name '{name}' registered twice ({existing} and {cls})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def add_method_module(name: str, module: str) -> None:
    """Declare that `module` defines method `name` (from config: methods.<name>.module)."""
    _EXTRA_MODULES[name] = module


def list_methods() -> list[str]:
    """All known method names, built-in and declared, sorted."""
    return sorted({**BUILTIN_METHODS, **_EXTRA_MODULES})


def get_method_class(name: str, module: str | None = None) -> type:
    """The class registered as `name`, importing its module on first use."""
    if module is not None:
        add_method_module(name, module)
    if name not in _REGISTRY:
        path = _EXTRA_MODULES.get(name) or BUILTIN_METHODS.get(name)
        if path is None:
            raise ConfigError(f"unknown method '{name}'; known: {', '.join(list_methods())}")
        try:
            importlib.import_module(path)
        except ImportError as err:
            raise ConfigError(f"method '{name}': cannot import module '{path}': {err}") from err
        if name not in _REGISTRY:
            raise ConfigError(
                f"method '{name}': module '{path}' does not register it "
                f"(missing @register_method('{name}'))"
            )
    return _REGISTRY[name]


def method_stages(name: str, declared: list[str] | None = None) -> tuple[str, ...]:
    """Extra stages of method `name` (built-in table, or declared in config for new methods)."""
    return tuple(declared) if declared is not None else BUILTIN_STAGES.get(name, ())


def build_method(
    name: str,
    preset: str = "tiny",
    overrides: dict[str, Any] | None = None,
    module: str | None = None,
    stage: str | None = None,
):
    """Build method `name` with a preset's hyperparameters updated by `overrides`.

    `stage` selects an extra training stage: its `STAGES[stage]` overrides apply on top of the
    preset, before the user's overrides.
    """
    cls = get_method_class(name, module)
    if stage is not None:
        stages = getattr(cls, "STAGES", {})
        if stage not in stages:
            raise ConfigError(
                f"method '{name}' has no stage '{stage}'; stages: {', '.join(stages) or 'none'}"
            )
        hparams = cls.resolve_hparams(preset, {**stages[stage], **(overrides or {})})
    else:
        hparams = cls.resolve_hparams(preset, overrides)
    method = cls(hparams)
    method.preset = preset
    return method
