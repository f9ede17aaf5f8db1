"""The training runs a workflow config asks for, in the workflow's order.

One definition, read by the Snakefile (workflow/rules/common.smk binds these to its `config`)
and by `dfbk status`, so the runs the status report expects are the jobs the DAG plans. A run
is {dataset, direction, method, seed}; the comparison grid is every dataset's directions times
the methods configured for that direction times the seeds, the ablation grid its directions
times resshift, the ablation methods and dfbk (where configured) times the seeds.
"""

from __future__ import annotations

from typing import Any

Run = dict[str, Any]


def all_method_settings(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Settings of every method trained anywhere: comparison methods plus ablation-only ones."""
    return {**config["methods"], **config.get("ablation", {}).get("methods", {})}


def ablation_directions(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(dataset, direction) pairs the ablation table covers."""
    spec = config.get("ablation", {}).get("directions", {})
    return [(d, r) for d, directions in spec.items() for r in directions]


def ablation_methods(config: dict[str, Any]) -> list[str]:
    """Rows of the ablation table: resshift and dfbk (when configured) plus ablation methods."""
    wanted = ["resshift", *config.get("ablation", {}).get("methods", {}), "dfbk"]
    known = all_method_settings(config)
    return list(dict.fromkeys(m for m in wanted if m in known))


def compared_methods(config: dict[str, Any], direction: str) -> list[str]:
    """Methods of the comparison that run on `direction` (methods.<name>.directions limits it)."""
    return [
        m
        for m, settings in config["methods"].items()
        if settings.get("directions") is None or direction in settings["directions"]
    ]


def comparison_runs(config: dict[str, Any]) -> list[Run]:
    return [
        dict(dataset=d, direction=r, method=m, seed=s)
        for d, spec in config["datasets"].items()
        for r in spec["directions"]
        for m in compared_methods(config, r)
        for s in config["seeds"]
    ]


def ablation_runs(config: dict[str, Any]) -> list[Run]:
    return [
        dict(dataset=d, direction=r, method=m, seed=s)
        for d, r in ablation_directions(config)
        for m in ablation_methods(config)
        for s in config["seeds"]
    ]


def runs(config: dict[str, Any]) -> list[Run]:
    """Every training run of the config without repeats (a run in both grids trains once)."""
    unique = {tuple(run.values()): run for run in comparison_runs(config) + ablation_runs(config)}
    return list(unique.values())
