"""Training curves of one direction: every method's loss terms and validation SSIM, every seed.

Read from each run's `train_log.jsonl` (one JSON line per step, written by the trainer and
copied beside model.pt): keys other than step, time, `val_*` and `diag_*` are loss terms. One
panel per method shows its loss terms against the step, smoothed by a centred moving average
over 2% of the run (raw values at a few hundred steps are mostly minibatch noise), one colour
per term and one line style per seed; the last panel shows the validation SSIM of every run.
A run without a log (an external baseline, or a method that does not train) is listed in the
title as having no curve rather than failing the figure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dfbk.errors import DataError
from dfbk.reporting.figures import FORMATS, save_figure

SMOOTH_FRACTION = 0.02
LINESTYLES = ("-", "--", ":", "-.")
PANEL_INCHES = (3.6, 2.6)


def read_curves(log: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{key: (steps, values)} of a JSONL training log; a torn last line is skipped."""
    series: dict[str, tuple[list, list]] = {}
    lines = [t for t in Path(log).read_text(errors="replace").splitlines() if t.strip()]
    for number, text in enumerate(lines, start=1):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise DataError(f"{log}: line {number} is not JSON ({err.msg})") from err
        step = record.get("step")
        for key, value in record.items():
            if key in ("step", "time") or key.startswith("diag_") or value is None:
                continue
            if isinstance(value, int | float) and np.isfinite(value):
                steps, values = series.setdefault(key, ([], []))
                steps.append(int(step) + 1)
                values.append(float(value))
    return {k: (np.array(s), np.array(v)) for k, (s, v) in series.items()}


def smooth(values: np.ndarray, fraction: float = SMOOTH_FRACTION) -> np.ndarray:
    """Centred moving average over `fraction` of the points (at least 1), edges renormalised."""
    width = max(1, int(round(len(values) * fraction)))
    if width == 1:
        return values
    kernel = np.ones(width)
    total = np.convolve(values, kernel, mode="same")
    count = np.convolve(np.ones_like(values), kernel, mode="same")
    return total / count


def make_loss_curves(
    runs: dict[str, dict[int, Path]],
    out_png: Path,
    title: str = "",
    formats: tuple[str, ...] = FORMATS,
) -> Path:
    """Draw loss and validation curves; `runs`: method -> {seed: training folder or log}."""
    curves: dict[str, dict[int, dict]] = {}
    missing = []
    for method, seeds in runs.items():
        for seed, where in seeds.items():
            log = Path(where)
            log = log / "train_log.jsonl" if log.is_dir() else log
            data = read_curves(log) if log.is_file() else {}
            if any(not k.startswith("val_") for k in data):
                curves.setdefault(method, {})[seed] = data
            else:
                missing.append(f"{method} seed {seed}")
    if not curves:  # nothing trained here (identity, external baselines): say so, do not fail
        fig = Figure(figsize=PANEL_INCHES, layout="constrained")
        FigureCanvasAgg(fig)
        fig.text(0.5, 0.5, f"{title}\nno training log with losses:\n" + "\n".join(missing),
                 ha="center", va="center", fontsize=8)  # fmt: skip
        return save_figure(fig, Path(out_png), _formats(out_png, formats))[0]
    ncols = min(3, len(curves) + 1)
    nrows = -(-(len(curves) + 1) // ncols)
    fig = Figure(
        figsize=(PANEL_INCHES[0] * ncols, PANEL_INCHES[1] * nrows + 0.5), layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    validation = axes[len(curves)]
    for index, (ax, (method, seeds)) in enumerate(zip(axes, curves.items(), strict=False)):
        terms = sorted({k for data in seeds.values() for k in data if not k.startswith("val_")})
        for position, (seed, data) in enumerate(sorted(seeds.items())):
            style = LINESTYLES[position % len(LINESTYLES)]
            for colour, term in enumerate(terms):
                if term in data:
                    steps, values = data[term]
                    label = term if position == 0 else None
                    ax.plot(steps, smooth(values), style, color=f"C{colour}", lw=1, label=label)
            if "val_ssim" in data:
                steps, values = data["val_ssim"]
                validation.plot(steps, values, style, color=f"C{index}", marker=".",
                                label=f"{method} seed {seed}")  # fmt: skip
        if all(line.get_ydata().min() > 0 for line in ax.lines):
            ax.set_yscale("log")  # GAN terms differ by orders of magnitude (L1 x 100 vs D)
        ax.set_title(f"{method} ({len(seeds)} seed{'s' * (len(seeds) > 1)})", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(which="both", labelsize=7)
        ax.legend(fontsize=6, loc="best")
    validation.set_title("validation SSIM (foreground)", fontsize=9)
    validation.set_xlabel("step", fontsize=8)
    validation.tick_params(labelsize=7)
    if validation.lines:
        validation.legend(fontsize=6, loc="best")
    for ax in axes[len(curves) + 1 :]:
        ax.set_axis_off()
    note = f"; no training log: {', '.join(missing)}" if missing else ""
    fig.suptitle(f"{title} training curves (moving average over 2% of steps){note}", fontsize=10)
    return save_figure(fig, Path(out_png), _formats(out_png, formats))[0]


def _formats(out: Path, formats: tuple[str, ...]) -> tuple[str, ...]:
    """The output's own suffix first, then the other formats asked for, each once."""
    return tuple(dict.fromkeys((Path(out).suffix.lstrip(".") or "png", *formats)))
