"""dfbk-bench: a reproducible benchmark for paired medical image translation (DFBK and baselines)."""

__version__ = "0.1.0"
