"""Methods behind one interface: a registry of names and the base class they implement."""

import importlib

# Resolved on first access (PEP 562): the registry and the catalog stay torch-free, so the
# Snakefile can plan the DAG without importing torch; `Batch`/`Method` load it when asked for.
_EXPORTS = {
    "Batch": "base",
    "Method": "base",
    "build_method": "registry",
    "get_method_class": "registry",
    "list_methods": "registry",
    "register_method": "registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dfbk.methods' has no attribute '{name}'")
    return getattr(importlib.import_module(f"dfbk.methods.{_EXPORTS[name]}"), name)
