"""Methods behind one interface: a registry of names and the base class they implement."""

from dfbk.methods.base import Batch, Method
from dfbk.methods.registry import build_method, get_method_class, list_methods, register_method

__all__ = ["Batch", "Method", "build_method", "get_method_class", "list_methods", "register_method"]
