"""Dataset adapters: one per layout (BraTS, ISLES, SynthRAD, the phantoms, YAML-defined ones).

`base` holds the adapter interface and the registry; importing this package registers the
challenge layouts (`challenges`), so `get_adapter` knows every built-in name.
"""

from __future__ import annotations

from dfbk.data.datasets import challenges  # noqa: F401  (registers brats2023, isles2015, synthrad2023)
from dfbk.data.datasets.base import ADAPTERS, DatasetAdapter
from dfbk.data.datasets.paired_nifti import PairedNiftiAdapter
from dfbk.errors import ConfigError


def get_adapter(name: str, layout: dict | None = None) -> DatasetAdapter:
    """The adapter for dataset `name`: a built-in layout, or the YAML `layout` given for it.

    Unknown names list the known ones.
    """
    if layout is not None:
        if name in ADAPTERS:
            raise ConfigError(
                f"layout: '{name}' is a built-in dataset; give a YAML-defined "
                "dataset a name of its own"
            )
        return PairedNiftiAdapter(name, layout)
    if name not in ADAPTERS:
        raise ConfigError(
            f"unknown dataset '{name}'; known: {', '.join(ADAPTERS)}; or describe its files "
            f"with datasets.{name}.layout (docs/data.md, 'Your own paired dataset')"
        )
    return ADAPTERS[name]()
