"""aggregate: per-subject results of many runs -> comparison/ablation tables (md, csv, tex).

Aggregation (docs/design.md, data flow 7): a subject's value is first averaged over the seeds of a
run group, then mean ± std (ddof 1) is taken over test subjects — subjects, not seeds or
slices, are the independent samples, so the std says how much the method varies across
patients. Significance is a paired Wilcoxon signed-rank test over the same subjects (paired
because every method translates the same test subjects; non-parametric because per-subject
SSIM differences are bounded and skewed). All p-values of one table form one family and are
Holm-adjusted (`dfbk.evaluation.statistics.holm`); the Markdown/LaTeX tables show the adjusted
p, the csv keeps both. The best mean per dataset × direction is bold.

Columns `official_*` come from the dataset's challenge protocol, all others from its 2-D slice
protocol (`dfbk.evaluation.protocols`); their headers carry "[official]". Columns `dice_<label>`
come from the downstream segmentation check (`dfbk.evaluation.segmentation`, `dice.csv` beside a
run's metrics), for datasets with labels; each dataset × direction then gets a "real target" row:
the same segmenter on the real target images, the ceiling a translation can reach.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from dfbk.data.io import write_text
from dfbk.errors import DataError
from dfbk.evaluation.statistics import holm

RUN_KEYS = ("dataset", "direction", "method", "seed")
COMPARISON_GROUPS = ("dataset", "direction", "method")
LABELS = {"psnr": "PSNR", "ssim": "SSIM", "mae": "MAE", "mae_hu": "MAE", "hfen": "HFEN",
          "gmsd": "GMSD", "dice": "Dice"}  # fmt: skip
UNITS = {"psnr": "dB", "mae_hu": "HU"}
DECIMALS = {"psnr": 2, "ssim": 4, "mae": 4, "mae_hu": 1, "hfen": 4, "gmsd": 4, "dice": 3}
HIGHER_IS_BETTER = {"psnr", "ssim", "dice"}
OFFICIAL = "official_"
DICE = "dice_"  # per-label segmentation Dice columns, after the TABLE_METRICS
CEILING = "ceiling_"  # dice.csv: the segmenter's Dice on the real target images
CEILING_METHOD = "real target"
DICE_NOTE = (
    "Dice: a 2-D U-Net trained on the real target images of the training split segments each "
    "translation (mean ± std over test subjects; a label absent from both scores 1); the "
    f"'{CEILING_METHOD}' row is the same segmenter on the real targets, the ceiling."
)
# the tables' columns, in this order, where the runs have them (a column all NaN is dropped)
TABLE_METRICS = (
    "psnr_fg", "ssim_fg", "mae_fg", "mae_hu_fg", "hfen_fg", "gmsd_fg", "hfen_lesion",
    "gmsd_lesion", "official_psnr_fg", "official_ssim_fg", "official_mae_hu_fg",
    "official_ssim_lesion", "official_ssim_nonlesion",
)  # fmt: skip
SIGNIFICANCE_METRICS = (("SSIM", "ssim_fg"), ("PSNR", "psnr_fg"))
DEFAULT_CAPTION = (
    "Intensities in [0, 1]; PSNR with data range 1 (MSE over the region); SSIM with a Gaussian "
    "window (sigma 1.5, K1 0.01, K2 0.03, data range 1); MAE in [0, 1] units."
)


def collect_results(metrics_files: list[Path]) -> pd.DataFrame:
    """One row per subject per run: dataset, direction, method, seed, subject, metrics.

    Each run's `subjects.csv` is read from beside its metrics.json; the run keys come from
    the metrics.json so a moved results folder cannot mislabel a run.
    """
    frames = []
    for path in map(Path, metrics_files):
        if not path.exists():
            raise DataError(f"{path}: metrics file not found")
        info = json.loads(path.read_text())
        missing = [k for k in RUN_KEYS if k not in info]
        if missing:
            raise DataError(f"{path}: run info lacks {', '.join(missing)}")
        subjects_csv = path.parent / "subjects.csv"
        if not subjects_csv.exists():
            raise DataError(f"{subjects_csv}: per-subject results missing beside {path.name}")
        frame = pd.read_csv(subjects_csv, dtype={"subject": str})
        dice_csv = path.parent / "dice.csv"
        if dice_csv.exists():
            frame = frame.merge(_read_dice(dice_csv, frame["subject"]), on="subject", how="left")
        for i, key in enumerate(RUN_KEYS):
            frame.insert(i, key, info[key])
        frames.append(frame)
    if not frames:
        raise DataError("no metrics files given: nothing to tabulate")
    return pd.concat(frames, ignore_index=True)


def _read_dice(path: Path, subjects: pd.Series) -> pd.DataFrame:
    """A run's segmentation Dice per test subject; refused if its subjects are not the run's."""
    dice = pd.read_csv(path, dtype={"subject": str})
    columns = [c for c in dice.columns if c.startswith((DICE, CEILING + DICE))]
    if "subject" not in dice.columns or not columns:
        raise DataError(f"{path}: expected columns subject and dice_<label>")
    if sorted(dice["subject"]) != sorted(subjects):
        raise DataError(f"{path}: subjects differ from subjects.csv beside it")
    return dice[["subject", *columns]]


def with_ceiling_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Each dataset × direction's rows followed by a `CEILING_METHOD` row group, per subject.

    Its Dice columns are the `ceiling_dice_*` values (seed- and run-averaged per subject: the
    same segmenter on the same real images, so they agree); its other metrics are NaN. The
    `ceiling_*` columns are dropped. Without them the frame is returned unchanged.
    """
    ceiling = [c for c in df.columns if c.startswith(CEILING + DICE)]
    if not ceiling:
        return df
    parts = []
    for (dataset, direction), part in df.groupby(["dataset", "direction"], sort=False):
        parts.append(part)
        values = part.groupby("subject", sort=False)[ceiling].mean().dropna(how="all")
        if values.empty:
            continue
        rows = values.rename(columns=lambda c: c.removeprefix(CEILING)).reset_index()
        keys = {"dataset": dataset, "direction": direction, "method": CEILING_METHOD}
        for i, (key, value) in enumerate({**keys, "seed": part["seed"].iloc[0]}.items()):
            rows.insert(i, key, value)
        parts.append(rows)
    return pd.concat(parts, ignore_index=True).drop(columns=ceiling)


def split_metric(metric: str) -> tuple[str, str]:
    """'mae_hu_fg' -> ('mae_hu', 'fg'); 'official_ssim_fg' -> ('ssim', 'fg')."""
    base, _, region = metric.removeprefix(OFFICIAL).rpartition("_")
    return base, region


def metric_header(metric: str) -> str:
    """'psnr_fg' -> 'PSNR fg (dB) ↑'; 'official_ssim_fg' -> 'SSIM fg [official] ↑'."""
    base, region = split_metric(metric)
    unit = f" ({UNITS[base]})" if base in UNITS else ""
    tag = " [official]" if metric.startswith(OFFICIAL) else ""
    arrow = "↑" if base in HIGHER_IS_BETTER else "↓"
    return f"{LABELS.get(base, base.upper())} {region}{unit}{tag} {arrow}"


def table_metrics(df: pd.DataFrame) -> list[str]:
    """The TABLE_METRICS, then the `dice_*` columns, that at least one run has a value for."""
    dice = [c for c in df.columns if c.startswith(DICE)]
    return [m for m in (*TABLE_METRICS, *dice) if m in df.columns and df[m].notna().any()]


def subject_means(
    df: pd.DataFrame, group_cols: Sequence[str], metrics: Sequence[str]
) -> pd.DataFrame:
    """Average each subject over its seeds: one row per group × subject (NaN-skipping)."""
    keys = [*group_cols, "subject"]
    agg = df.groupby(keys, sort=False)[list(metrics)].mean()
    agg["n_seeds"] = df.groupby(keys, sort=False)["seed"].nunique()
    return agg.reset_index()


def summarise_groups(
    df: pd.DataFrame, group_cols: Sequence[str], metrics: Sequence[str]
) -> pd.DataFrame:
    """Per group: {metric}_mean, _std (ddof 1; 0 for one subject), _n over subjects, n_seeds."""
    per_subject = subject_means(df, group_cols, metrics)
    rows = []
    for key, part in per_subject.groupby(list(group_cols), sort=False):
        row = dict(zip(group_cols, key if isinstance(key, tuple) else (key,), strict=True))
        row["n_seeds"] = int(part["n_seeds"].max())
        for metric in metrics:
            values = part[metric].dropna().to_numpy(dtype=float)
            row[f"{metric}_mean"] = values.mean() if values.size else np.nan
            row[f"{metric}_std"] = values.std(ddof=1) if values.size > 1 else 0.0
            row[f"{metric}_n"] = int(values.size)
        rows.append(row)
    return pd.DataFrame(rows)


def wilcoxon_vs(df: pd.DataFrame, reference_method: str, metric: str) -> pd.DataFrame:
    """Paired Wilcoxon p of `reference_method` vs each other method, per dataset × direction.

    Pairs are test subjects with a value for both methods (seed-averaged first). p is NaN
    with fewer than 2 pairs or when every difference is zero (the test is undefined there).
    """
    per_subject = subject_means(df, COMPARISON_GROUPS, [metric])
    rows = []
    for (dataset, direction), part in per_subject.groupby(["dataset", "direction"], sort=False):
        wide = part.pivot(index="subject", columns="method", values=metric)
        if reference_method not in wide:
            continue
        for method in (m for m in part["method"].unique() if m != reference_method):
            pairs = wide[[reference_method, method]].dropna()
            diff = pairs[reference_method] - pairs[method]
            p = np.nan
            if len(pairs) >= 2 and (diff != 0).any():
                p = float(wilcoxon(pairs[reference_method], pairs[method]).pvalue)
            rows.append({"dataset": dataset, "direction": direction, "method": method,
                         "n_pairs": len(pairs), "p_value": p})  # fmt: skip
    return pd.DataFrame(rows, columns=[*COMPARISON_GROUPS, "n_pairs", "p_value"])


def _best_flags(summary: pd.DataFrame, metric: str, best_within: Sequence[str]) -> pd.Series:
    """True where the mean, at display precision, equals the best of its group (ties all bold)."""
    digits = DECIMALS.get(split_metric(metric)[0], 4)
    rounded = summary[f"{metric}_mean"].round(digits)
    if "method" in summary:  # the real-target ceiling is a reference, not a contender
        rounded = rounded.where(summary["method"] != CEILING_METHOD)
    higher = split_metric(metric)[0] in HIGHER_IS_BETTER
    if best_within:
        grouped = rounded.groupby([summary[c] for c in best_within], sort=False)
        best = grouped.transform("max" if higher else "min")
    else:
        best = pd.Series(rounded.max() if higher else rounded.min(), index=rounded.index)
    return rounded.notna() & (rounded == best)


def _format_p(p: float) -> str:
    if not np.isfinite(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _format_value(value) -> str:
    """A non-metric extra cell: p-values and FID as numbers, anything else as text."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return str(value)


def _formatter(column: str):
    if column.startswith("p"):
        return _format_p
    if column == "FID":
        return lambda v: "—" if not np.isfinite(v) else f"{v:.2f}"
    return _format_value


def _cells(summary, group_cols, metrics, best_within, extra_cols) -> tuple[list, list]:
    """Header and rows of (text, bold) cells shared by the Markdown and LaTeX writers."""
    header = [*group_cols, *(metric_header(m) for m in metrics), *extra_cols]
    bold = {m: _best_flags(summary, m, best_within) for m in metrics}
    formats = {c: _formatter(c) for c in extra_cols}
    rows = []
    for i, row in summary.iterrows():
        cells = [(str(row[c]), False) for c in group_cols]
        for m in metrics:
            d = DECIMALS.get(split_metric(m)[0], 4)
            mean, std = row[f"{m}_mean"], row[f"{m}_std"]
            text = "—" if pd.isna(mean) else f"{mean:.{d}f} ± {std:.{d}f}"
            cells.append((text, bool(bold[m][i])))
        cells.extend((formats[c](row[c]), False) for c in extra_cols)
        rows.append(cells)
    return header, rows


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
          "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
          "^": r"\textasciicircum{}", "±": r"$\pm$", "↑": r"$\uparrow$",
          "↓": r"$\downarrow$", "—": "--", "<": r"$<$", "×": r"$\times$"}  # fmt: skip


def _latex_escape(text: str) -> str:
    """Escape LaTeX specials and map the Unicode signs the Markdown table uses."""
    return "".join(_LATEX.get(char, char) for char in text)


def _latex(header, rows, caption, label, n_groups, group_keys) -> str:
    """A booktabs table; a \\midrule between best-within groups (e.g. dataset × direction)."""
    spec = "l" * n_groups + "c" * (len(header) - n_groups)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(caption)}}}",
             rf"\label{{{label}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule"]  # fmt: skip
    for i, cells in enumerate(rows):
        if i and group_keys[i] != group_keys[i - 1]:
            lines.append(r"\midrule")
        texts = [_latex_escape(t) for t, _ in cells]
        texts = [rf"\textbf{{{t}}}" if b else t for t, (_, b) in zip(texts, cells, strict=True)]
        lines.append(" & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(
    df: pd.DataFrame,
    out_stem: Path,
    group_cols: Sequence[str],
    metrics: Sequence[str],
    caption: str = "",
    best_within: Sequence[str] = ("dataset", "direction"),
    extra: pd.DataFrame | None = None,
    csv_only: Sequence[str] = (),
) -> dict[str, Path]:
    """Write `{out_stem}.md`, `.csv`, `.tex`: one row per group, mean ± std over subjects.

    `extra` holds further columns keyed by `group_cols` (p-values, FID, training budget);
    those named in `csv_only` go to the csv alone. The caption given (the protocol) is
    completed with how the numbers aggregate.
    """
    out_stem = Path(out_stem)
    missing = [m for m in metrics if m not in df.columns]
    if missing:
        raise DataError(
            f"results have no column {', '.join(missing)} (the CT-only mae_hu_fg "
            "needs CT-target runs); available: " + ", ".join(map(str, df.columns))
        )
    summary = summarise_groups(df, group_cols, metrics)
    extra_cols: list[str] = []
    if extra is not None:
        extra_cols = [c for c in extra.columns if c not in group_cols and c not in csv_only]
        summary = summary.merge(extra, on=list(group_cols), how="left")
    real = summary["method"] != CEILING_METHOD if "method" in summary else slice(None)
    lo, hi = int(summary.loc[real, "n_seeds"].min()), int(summary.loc[real, "n_seeds"].max())
    seed_text = f"{lo} seed{'s' * (hi > 1)}" if lo == hi else f"{lo} to {hi} seeds"
    caption = (
        f"{caption or DEFAULT_CAPTION} Mean ± std over test subjects; each subject's value is "
        f"first averaged over seeds ({seed_text} per method). Bold: best per "
        f"{' × '.join(best_within) or 'table'} (higher is better for PSNR, SSIM and Dice, "
        "lower for MAE, HFEN and GMSD)."
    )
    header, rows = _cells(summary, list(group_cols), list(metrics), best_within, extra_cols)
    md_rows = [[f"**{t}**" if b else t for t, b in cells] for cells in rows]
    md_table = pd.DataFrame(md_rows, columns=header).to_markdown(index=False, disable_numparse=True)
    keys = [tuple(summary.loc[i, c] for c in best_within) for i in summary.index]
    tex = _latex(header, rows, caption, f"tab:{out_stem.name}", len(group_cols), keys)
    paths = {"md": out_stem.with_suffix(".md"), "csv": out_stem.with_suffix(".csv"),
             "tex": out_stem.with_suffix(".tex")}  # fmt: skip
    write_text(paths["md"], f"{caption}\n\n{md_table}\n")
    write_text(paths["csv"], summary.to_csv(index=False))
    write_text(paths["tex"], tex)
    return paths


def significance_columns(df: pd.DataFrame, reference_method: str) -> tuple[pd.DataFrame, int]:
    """Raw and Holm-adjusted Wilcoxon p of `reference_method` vs each method, one family.

    Columns "p (SSIM vs X)", "p (PSNR vs X)" (raw) and "p_Holm (… vs X)"; the family is every
    finite p of the table (all datasets, directions, methods and both metrics). Returns the
    frame and the family size.
    """
    frame = None
    for label, metric in SIGNIFICANCE_METRICS:
        p = wilcoxon_vs(df, reference_method, metric).drop(columns="n_pairs")
        p = p.rename(columns={"p_value": f"p ({label} vs {reference_method})"})
        frame = p if frame is None else frame.merge(p, on=list(COMPARISON_GROUPS), how="outer")
    raw = [f"p ({label} vs {reference_method})" for label, _ in SIGNIFICANCE_METRICS]
    values = frame[raw].to_numpy(dtype=float)
    adjusted = holm(values.ravel()).reshape(values.shape)
    for k, column in enumerate(raw):
        frame[column.replace("p (", "p_Holm (", 1)] = adjusted[:, k]
    return frame, int(np.isfinite(values).sum())


def write_comparison_table(
    df: pd.DataFrame,
    out_stem: Path,
    metrics: Sequence[str] | None = None,
    caption: str = "",
    significance_vs: str | None = None,
    extra_columns: pd.DataFrame | None = None,
    training: pd.DataFrame | None = None,
    capacity: bool = False,
) -> dict[str, Path]:
    """The methods comparison (or ablation) table: one row per dataset × direction × method.

    `metrics` defaults to every TABLE_METRICS column the runs have. With `significance_vs`,
    adds paired Wilcoxon p-values of method X against each row's method over test subjects
    (fg region), Holm-adjusted over the table; the raw p-values go to the csv only.
    `training` (from `dfbk.reporting.captions.training_frame`) adds each row's steps, batch
    size, parameters, training FLOPs and evaluated checkpoint to the csv; with `capacity`
    the parameter count and FLOPs are also table columns (the ablation table).
    """
    metrics = table_metrics(df) if metrics is None else list(metrics)
    keys = list(COMPARISON_GROUPS)
    if any(m.startswith(DICE) for m in metrics):
        caption = f"{caption or DEFAULT_CAPTION} {DICE_NOTE}"
    extra, csv_only = None, []
    if significance_vs is not None:
        extra, family = significance_columns(df, significance_vs)
        csv_only += [c for c in extra.columns if c.startswith("p (")]
        caption = (
            f"{caption or DEFAULT_CAPTION} p: paired Wilcoxon signed-rank test against "
            f"{significance_vs} over the same test subjects (fg region), Holm-adjusted over "
            f"the {family} comparisons of this table (raw p in the csv)."
        )
    for frame in (extra_columns, training):  # e.g. FID; training budget
        if frame is not None:  # outer: the reference method has no p-value row
            extra = frame if extra is None else extra.merge(frame, on=keys, how="outer")
    if training is not None:
        shown = ["Params", "Train FLOPs/step"] if capacity else []
        csv_only += [c for c in training.columns if c not in keys and c not in shown]
    return write_table(with_ceiling_rows(df), out_stem, COMPARISON_GROUPS, metrics, caption,
                       extra=extra, csv_only=csv_only)  # fmt: skip
