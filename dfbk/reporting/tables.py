"""aggregate: per-subject results of many runs -> comparison/ablation tables (md, csv, tex).

Aggregation (docs/evaluation.md, "Statistics"): every run leaves one value per test subject;
a table row (method) is then a seeds × subjects array of cells. A cell of the table shows the
mean over subjects of each subject's seed-averaged value ± the std over subjects (how much the
method varies across patients) and, in parentheses, the std over seeds of each seed's mean
(how much it varies from one training run to the next). Which rows differ is decided by
`dfbk.reporting.significance` on the cells themselves: a hierarchical bootstrap over seeds
and subjects, one Holm family per table, bold only where a row beats every other row
significantly, and the power the run had (also printed by `dfbk power`).

Columns `official_*` come from the dataset's challenge protocol, all others from its 2-D slice
protocol (`dfbk.evaluation.protocols`); their headers carry "[official]". Columns `dice_<label>`
come from the downstream segmentation check (`dfbk.evaluation.segmentation`, `dice.csv` beside a
run's metrics), for datasets with labels; each dataset × direction then gets a "real target" row:
the same segmenter on the real target images, the ceiling a translation can reach.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from dfbk.data.io import write_text
from dfbk.errors import ConfigError, DataError
from dfbk.evaluation import statistics as st
from dfbk.methods.registry import FLOOR_METHODS
from dfbk.reporting import significance as sig

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
# A trained row that does not beat every floor row of its dataset × direction on the headline
# metric (the first of these the table has, else its first column) carries this mark.
HEADLINE_METRICS = ("ssim_fg", "official_ssim_fg", "psnr_fg")
FLOOR_MARK = "†"
BEATS_FLOORS = "beats_floors"
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
    """Per group: {metric}_mean, _std (ddof 1 over subjects; 0 for one subject), _n (subjects),
    _seed_std (ddof 1 over seeds of each seed's mean over subjects; NaN for one seed), n_seeds."""
    per_subject = subject_means(df, group_cols, metrics)
    per_seed = df.groupby([*group_cols, "seed"], sort=False)[list(metrics)].mean()
    seed_std = per_seed.groupby(list(group_cols), sort=False).std(ddof=1)
    rows = []
    for key, part in per_subject.groupby(list(group_cols), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(group_cols, key, strict=True))
        row["n_seeds"] = int(part["n_seeds"].max())
        for metric in metrics:
            values = part[metric].dropna().to_numpy(dtype=float)
            row[f"{metric}_mean"] = values.mean() if values.size else np.nan
            row[f"{metric}_std"] = values.std(ddof=1) if values.size > 1 else 0.0
            row[f"{metric}_n"] = int(values.size)
            row[f"{metric}_seed_std"] = seed_std.loc[key if len(key) > 1 else key[0], metric]
        rows.append(row)
    return pd.DataFrame(rows)


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
    if column == "FID":
        return lambda v: "—" if not np.isfinite(v) else f"{v:.2f}"
    return _format_value


def _metric_cell(row: pd.Series, metric: str) -> str:
    """'0.5480 ± 0.0500 (0.0190)': mean ± SD over subjects (SD over seeds, where there are two)."""
    d = DECIMALS.get(split_metric(metric)[0], 4)
    mean, std, seed_std = row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_seed_std"]
    if pd.isna(mean):
        return "—"
    text = f"{mean:.{d}f} ± {std:.{d}f}"
    return f"{text} ({seed_std:.{d}f})" if np.isfinite(seed_std) else text


def _cells(summary, group_cols, metrics, extra_cols, shown, marks) -> tuple[list, list]:
    """Header and rows of (text, bold) cells shared by the Markdown and LaTeX writers;
    `marks` (group column -> row -> suffix) appends e.g. the floor mark to a method's name."""
    header = [*group_cols, *(metric_header(m) for m in metrics), *extra_cols, *shown]
    formats = {c: _formatter(c) for c in extra_cols}
    rows = []
    for _, row in summary.iterrows():
        cells = [(str(row[c]) + marks[c](row) if c in marks else str(row[c]), False)
                 for c in group_cols]  # fmt: skip
        cells += [(_metric_cell(row, m), bool(row.get(f"{m}_bold", False))) for m in metrics]
        cells.extend((formats[c](row[c]), False) for c in extra_cols)
        cells.extend((text(row), False) for text in shown.values())
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


def _require_columns(df: pd.DataFrame, metrics: Sequence[str]) -> None:
    missing = [m for m in metrics if m not in df.columns]
    if missing:
        raise DataError(
            f"results have no column {', '.join(missing)} (the CT-only mae_hu_fg "
            "needs CT-target runs); available: " + ", ".join(map(str, df.columns))
        )


def write_table(
    df: pd.DataFrame,
    out_stem: Path,
    group_cols: Sequence[str],
    metrics: Sequence[str],
    caption: str = "",
    best_within: Sequence[str] = ("dataset", "direction"),
    extra: pd.DataFrame | None = None,
    csv_only: Sequence[str] = (),
    bold: pd.DataFrame | None = None,
    shown: dict[str, Callable[[pd.Series], str]] | None = None,
    notes: Sequence[str] = (),
    marks: dict[str, Callable[[pd.Series], str]] | None = None,
) -> dict[str, Path]:
    """Write `{out_stem}.md`, `.csv`, `.tex`: one row per group, mean ± std over subjects.

    `extra` holds further columns keyed by `group_cols` (test results, FID, training budget);
    those named in `csv_only` go to the csv alone. `bold` (keyed by `group_cols`, a boolean
    column per metric) marks the bold cells, also kept in the csv as `{metric}_bold`; `shown`
    adds Markdown/LaTeX columns by header, each cell made from the csv row, and `marks` a
    suffix to a group column's Markdown/LaTeX cell (the csv keeps the plain key). The caption given
    (the protocol) is followed by how the numbers aggregate, then by `notes` (the tests).
    `best_within` separates the LaTeX row groups.
    """
    out_stem = Path(out_stem)
    _require_columns(df, metrics)
    summary = summarise_groups(df, group_cols, metrics)
    if bold is not None:
        flags = bold[[*group_cols, *metrics]].rename(columns={m: f"{m}_bold" for m in metrics})
        summary = summary.merge(flags, on=list(group_cols), how="left")
        for m in metrics:
            summary[f"{m}_bold"] = summary[f"{m}_bold"].astype("boolean").fillna(False).astype(bool)
    extra_cols: list[str] = []
    if extra is not None:
        extra_cols = [c for c in extra.columns if c not in group_cols and c not in csv_only]
        summary = summary.merge(extra, on=list(group_cols), how="left")
    real = summary["method"] != CEILING_METHOD if "method" in summary else slice(None)
    lo, hi = int(summary.loc[real, "n_seeds"].min()), int(summary.loc[real, "n_seeds"].max())
    seed_text = f"{lo} seed{'s' * (hi > 1)}" if lo == hi else f"{lo} to {hi} seeds"
    caption = (
        f"{caption or DEFAULT_CAPTION} Each cell: mean ± std over test subjects of each "
        f"subject's seed-averaged value, and in parentheses the std over seeds of each seed's "
        f"mean over subjects (none with one seed); {seed_text} per method."
    )
    caption = " ".join(filter(None, [caption, *notes]))
    header, rows = _cells(
        summary, list(group_cols), list(metrics), extra_cols, shown or {}, marks or {}
    )
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


def _test_columns(tests: pd.DataFrame, reference: str) -> tuple[pd.DataFrame, dict]:
    """The tests against `reference` as csv columns per row and the two shown columns per test
    metric: "Δ SSIM vs dfbk [95 % CI]" and "p_Holm (SSIM vs dfbk)"."""
    keys = list(COMPARISON_GROUPS)
    mine = tests[(tests.role == "reference")]
    mine = sig.oriented(mine, reference)
    frame, shown = None, {}
    for label, metric in SIGNIFICANCE_METRICS:
        tag = f"({label} vs {reference})"
        part = mine[mine.metric == metric]
        columns = {c: f"{c} {tag}" for c in TEST_COLUMNS}
        part = part[[*keys, *columns]].rename(columns=columns)
        part = part.rename(columns={f"p_holm {tag}": f"p_Holm {tag}"})
        frame = part if frame is None else frame.merge(part, on=keys, how="outer")
        shown[f"Δ {label} vs {reference} [95 % CI]"] = partial(_delta_cell, tag, metric)
        shown[f"p_Holm {tag}"] = partial(_p_cell, tag)
    return frame, shown


TEST_COLUMNS = ("diff", "ci_low", "ci_high", "p", "p_holm", "test", "n_seeds_ref",
                "run_sd", "subject_sd", "detectable", "seeds_needed")  # fmt: skip


def _delta_cell(tag: str, metric: str, row: pd.Series) -> str:
    diff, low, high = row.get(f"diff {tag}"), row.get(f"ci_low {tag}"), row.get(f"ci_high {tag}")
    if diff is None or pd.isna(diff):
        return "—"
    d = DECIMALS.get(split_metric(metric)[0], 4)
    if pd.isna(low):
        return f"{diff:+.{d}f}"
    return f"{diff:+.{d}f} [{low:+.{d}f}, {high:+.{d}f}]"


def _p_cell(tag: str, row: pd.Series) -> str:
    status = row.get(f"test {tag}")
    if status == sig.ONE_SEED:
        return sig.ONE_SEED
    p = row.get(f"p_Holm {tag}")
    return "—" if p is None or pd.isna(p) else _format_p(p)


def _seeds_text(n: float) -> str:
    return "more than 10,000 seeds" if not np.isfinite(n) else f"{int(n)} seeds"


def _power_sentence(tests: pd.DataFrame, reference: str) -> str:
    """Per test metric: the smallest difference each row's test could detect and the seeds the
    observed difference needs; listed per row up to 8 rows, else as a range."""
    parts = []
    mine = sig.oriented(tests[tests.role == "reference"], reference)
    for label, metric in SIGNIFICANCE_METRICS:
        part = mine[(mine.metric == metric) & mine.detectable.notna()]
        if part.empty:
            continue
        d = DECIMALS.get(split_metric(metric)[0], 4)
        if len(part) <= 8:
            items = [f"{r.method} {r.detectable:.{d}f} (the observed {r.diff:+.{d}f} needs "
                     f"{_seeds_text(r.seeds_needed)})" for r in part.itertuples()]  # fmt: skip
            parts.append(f"{label} vs {reference}: " + "; ".join(items))
        else:
            needed = part.seeds_needed
            parts.append(
                f"{label} vs {reference}: {part.detectable.min():.{d}f} to "
                f"{part.detectable.max():.{d}f}, the observed differences need "
                f"{_seeds_text(needed.min())} to {_seeds_text(needed.max())} (per row in the csv)"
            )
    if not parts:
        return ""
    return (
        f"Smallest difference detectable at {st.POWER * 100:.0f} % power (two-sided α = "
        f"{st.ALPHA} per test, from the observed seed and subject variances), and the seeds "
        "per method the observed difference would need: " + "; ".join(parts) + "."
    )


def _tests_caption(tests: pd.DataFrame, bold: pd.DataFrame, metrics, reference) -> str:
    family = int(tests["p"].notna().sum())
    text = (
        "Tests on subject × seed cells: the standard error of a difference from a hierarchical "
        f"bootstrap ({st.BOOTSTRAP_RESAMPLES} resamples of each row's seeds, then of the "
        f"subjects, paired by subject; generator seed {st.BOOTSTRAP_SEED}), t intervals with "
        f"Welch-Satterthwaite degrees of freedom; all {family} p-values of the table (the tests "
        "against the reference and those deciding bold) are Holm-adjusted together. A row "
        f"with one seed is never tested ({sig.ONE_SEED})."
    )
    if reference is not None:
        text += (
            f" Δ vs {reference}: row minus {reference} with its 95 % interval; p_Holm its "
            "adjusted p (raw p, intervals and variance components in the csv)."
        )
    if bold[list(metrics)].to_numpy().any():
        return text + (
            " Bold: the row whose difference from every other row of its dataset × direction "
            f"is significant (Holm-adjusted p < {st.ALPHA}; higher is better for PSNR, SSIM and "
            "Dice, lower for MAE, HFEN and GMSD); a column without bold resolved no best row."
        )
    if (tests["p_holm"] < st.ALPHA).any():
        return f"{text} No row differs significantly from every other row of its column: " + (
            "nothing is bold."
        )
    return f"{text} No difference between rows was resolved (Holm-adjusted p < {st.ALPHA}): " + (
        "nothing is bold."
    )


def headline_metric(metrics: Sequence[str]) -> str:
    """The column a row must beat the floors on: SSIM fg where the table has it."""
    return next((m for m in HEADLINE_METRICS if m in metrics), metrics[0])


def floor_verdicts(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per dataset × direction × method: whether a trained row's mean `metric` (over subjects
    of each subject's seed-averaged value, the table's cell) is better than every floor row's
    of its dataset × direction. NA for the floors, the real-target ceiling, rows without a
    value and dataset × directions without a floor row."""
    keys = list(COMPARISON_GROUPS)
    means = subject_means(df, keys, [metric]).groupby(keys, sort=False)[metric].mean()
    sign = 1.0 if split_metric(metric)[0] in HIGHER_IS_BETTER else -1.0
    rows = []
    for (dataset, direction), part in means.groupby(level=[0, 1], sort=False):
        by_method = part.droplevel([0, 1])
        floors = by_method[by_method.index.isin(FLOOR_METHODS)].dropna()
        for method, value in by_method.items():
            verdict = pd.NA
            if method not in FLOOR_METHODS and method != CEILING_METHOD and not floors.empty:
                if pd.notna(value):
                    verdict = bool((sign * (value - floors) > 0).all())
            rows.append({"dataset": dataset, "direction": direction, "method": method,
                         BEATS_FLOORS: verdict})  # fmt: skip
    frame = pd.DataFrame(rows, columns=[*keys, BEATS_FLOORS])
    frame[BEATS_FLOORS] = frame[BEATS_FLOORS].astype("boolean")
    return frame


def _floor_mark(row: pd.Series) -> str:
    value = row.get(BEATS_FLOORS)
    return FLOOR_MARK if value is not None and pd.notna(value) and not bool(value) else ""


def _floors_caption(verdicts: pd.DataFrame, metric: str) -> str:
    present = [m for m in FLOOR_METHODS if m in set(verdicts["method"])]
    if not present:
        return ""
    text = (
        f"Floors ({', '.join(present)}): predictions that need no training beyond the "
        "training split's statistics; never bold, never the reference."
    )
    if (verdicts[BEATS_FLOORS] == False).any():  # noqa: E712 (nullable boolean column)
        text += f" {FLOOR_MARK} does not beat every floor on the mean {metric_header(metric)}."
    return text


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

    `metrics` defaults to every TABLE_METRICS column the runs have. Bold cells and, with
    `significance_vs`, each row's difference from that method on SSIM and PSNR fg come from
    `dfbk.reporting.significance.table_tests` (one Holm family per table); the caption says
    what was resolved and what the run could have detected. `training` (from
    `dfbk.reporting.captions.training_frame`) adds each row's steps, batch size, parameters,
    training FLOPs and evaluated checkpoint to the csv; with `capacity` the parameter count
    and FLOPs are also table columns (the ablation table). The floors (`FLOOR_METHODS`) are
    never bold nor the reference, though a row must beat them to be bold; a trained row whose
    headline mean (`headline_metric`) is not better than every floor's is marked `FLOOR_MARK`
    and kept (csv: `beats_floors`).
    """
    metrics = table_metrics(df) if metrics is None else list(metrics)
    _require_columns(df, metrics)
    keys = list(COMPARISON_GROUPS)
    if any(m.startswith(DICE) for m in metrics):
        caption = f"{caption or DEFAULT_CAPTION} {DICE_NOTE}"
    table = with_ceiling_rows(df)
    higher = {m: split_metric(m)[0] in HIGHER_IS_BETTER for m in metrics}
    if significance_vs in FLOOR_METHODS:
        raise ConfigError(
            f"significance_vs: '{significance_vs}' is a floor ({', '.join(FLOOR_METHODS)}); "
            "the reference must be a trained method"
        )
    if significance_vs is not None and significance_vs not in set(df["method"]):
        significance_vs = None
    test_metrics = [m for _, m in SIGNIFICANCE_METRICS if m in metrics]
    tests, bold = sig.table_tests(
        table, metrics, higher, significance_vs, test_metrics, (CEILING_METHOD,), FLOOR_METHODS
    )
    notes = [_tests_caption(tests, bold, metrics, significance_vs)]
    headline = headline_metric(metrics)
    verdicts = floor_verdicts(df, headline)
    notes.append(_floors_caption(verdicts, headline))
    extra, csv_only, shown = None, [], {}
    if significance_vs is not None:
        extra, shown = _test_columns(tests, significance_vs)
        csv_only += [c for c in extra.columns if c not in keys]
        notes.append(_power_sentence(tests, significance_vs))
    for frame in (extra_columns, training, verdicts):  # e.g. FID; training budget; floors
        if frame is not None:  # outer: the reference method has no test row
            extra = frame if extra is None else extra.merge(frame, on=keys, how="outer")
    csv_only.append(BEATS_FLOORS)
    if training is not None:
        visible = ["Params", "Train FLOPs/step"] if capacity else []
        csv_only += [c for c in training.columns if c not in keys and c not in visible]
    return write_table(table, out_stem, COMPARISON_GROUPS, metrics, caption, extra=extra,
                       csv_only=csv_only, bold=bold, shown=shown, notes=notes,
                       marks={"method": _floor_mark})  # fmt: skip


def power_report(results_dir: Path, reference: str = "dfbk") -> str:
    """What the evaluated runs under `results_dir` can resolve, per pair of rows and test metric.

    Reads `{results_dir}/evaluate/*/*/*/seed-*/metrics.json`; pairs each row with `reference`
    where its dataset × direction has it, else every pair. Per pair: seeds, subjects, the
    observed difference, the SD over seeds of the difference (one seed of each row) and over
    subjects, the smallest difference detectable at 80 % power, and the seeds per method the
    observed difference would need — the figures a lab sizes its GPU budget with.
    """
    files = sorted(Path(results_dir).glob("evaluate/*/*/*/seed-*/metrics.json"))
    if not files:
        raise DataError(f"{Path(results_dir) / 'evaluate'}: no */*/*/seed-*/metrics.json found")
    df = collect_results(files)
    metrics = [m for _, m in SIGNIFICANCE_METRICS if m in df.columns and df[m].notna().any()]
    frame = sig.power_frame(df, metrics, reference)
    if frame.empty:
        return "one row per dataset × direction: no pair of rows to compare"
    rows = []
    for r in frame.itertuples():
        d = DECIMALS.get(split_metric(r.metric)[0], 4)
        value = "—" if pd.isna(r.diff) else f"{r.diff:+.{d}f}"
        known = r.test not in (sig.ONE_SEED, sig.NO_CELLS)
        rows.append({
            "dataset": r.dataset, "direction": r.direction, "metric": r.metric,
            "pair": f"{r.method} − {r.versus}", "seeds": f"{r.n_seeds}/{r.n_seeds_ref}",
            "subjects": r.n_subjects, "Δ": value,
            "seed SD of Δ": f"{r.run_sd:.{d}f}" if known else r.test,
            "subject SD": f"{r.subject_sd:.{d}f}" if known else "—",
            "detectable Δ": f"{r.detectable:.{d}f}" if known else "—",
            "seeds needed": _seeds_text(r.seeds_needed).removesuffix(" seeds") if known else "—",
        })  # fmt: skip
    table = pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)
    return (
        f"{table}\n\nΔ: row minus the second row, mean over subject × seed cells. seed SD of Δ: "
        "of the difference between one seed of each row; subject SD: of the per-subject "
        "difference. detectable Δ: smallest true difference found with "
        f"{st.POWER * 100:.0f} % power (two-sided α = {st.ALPHA}, t with Welch-Satterthwaite "
        "degrees of freedom) at these seeds and subjects; seeds needed: per row, for the "
        "observed Δ (subjects as they are). A table's Holm correction over many tests needs more."
    )
