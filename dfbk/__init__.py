"""dfbk-bench: a reproducible benchmark for paired medical image translation."""

__version__ = "0.1.0"
