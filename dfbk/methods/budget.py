"""The training budget a method is given must be one the trainer can run: checked at start-up.

Torch-free, so the Snakefile-time catalog (`dfbk.methods.catalog`) and the classes
(`Method.resolve_hparams`) refuse the same values with the same one-line message.
"""

from __future__ import annotations

from typing import Any

from dfbk.errors import ConfigError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_budget(label: str, hparams: dict[str, Any], preset_steps: Any) -> None:
    """`steps` a non-negative integer (0 only where the preset has 0: methods that do not train,
    such as identity), `batch_size` a positive integer; anything else is a ConfigError whose
    message starts with `label` (the method, or the config key that set the value)."""
    steps, batch = hparams.get("steps"), hparams.get("batch_size")
    lowest = 0 if preset_steps == 0 else 1
    if not _is_int(steps) or steps < lowest:
        raise ConfigError(f"{label}: steps must be an integer >= {lowest}; got {steps!r}")
    if not _is_int(batch) or batch < 1:
        raise ConfigError(f"{label}: batch_size must be an integer >= 1; got {batch!r}")
