"""Which rows of a table differ: tests on seeds × subjects cells, one Holm family, bold, power.

Input is the long frame of `dfbk.reporting.tables.collect_results` (one row per dataset,
direction, method, seed and subject). For each metric a table row (method) is a seeds ×
subjects array of cells (`row_cells`); two rows of one dataset × direction are compared with
`dfbk.evaluation.statistics.difference_test`, paired on the subjects both have a value for at
every seed (unpaired where they share none).

A table makes two kinds of claims, and all of them form one Holm family (`table_tests`):
- each row against the reference row (DFBK, or the ablation's full model) on the test metrics
  (SSIM and PSNR fg), shown as Δ [95 % CI] and Holm-adjusted p;
- a bold cell: the best row of a metric column (per dataset × direction) is bold only when its
  difference from every other row of the column is significant after the correction, so the
  best row is tested against each other row in every column.
A row with one seed is never tested ("1 seed: no seed replicate"): nothing can be bold beside it.
The power of each test against the reference (`dfbk.evaluation.statistics.detectable_difference`,
`seeds_needed`) comes from the same variance terms, for the caption and `dfbk power`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from dfbk.evaluation import statistics as st

GROUP = ("dataset", "direction")
ONE_SEED = "1 seed: no seed replicate"
NO_CELLS = "no subject scored at every seed"
RESULT_KEYS = ("diff", "se", "df", "ci_low", "ci_high", "p", "n_seeds", "n_seeds_ref",
               "n_subjects", "test", "run_sd", "subject_sd", "detectable",
               "seeds_needed")  # fmt: skip


def row_cells(df: pd.DataFrame, metric: str) -> dict[tuple, pd.DataFrame]:
    """(dataset, direction, method) -> seeds × subjects table of `metric` (NaN where absent)."""
    out = {}
    for key, part in df.groupby([*GROUP, "method"], sort=False):
        out[key] = part.pivot_table(index="seed", columns="subject", values=metric,
                                    aggfunc="mean", dropna=False)  # fmt: skip
    return out


def _rng(*key) -> np.random.Generator:
    """A bootstrap generator fixed by the comparison's names, so a table reads the same every
    time and adding a row leaves the other rows' intervals as they were."""
    return np.random.default_rng([st.BOOTSTRAP_SEED, zlib.crc32("|".join(map(str, key)).encode())])


def compare(row: pd.DataFrame, reference: pd.DataFrame, key: Sequence = ()) -> dict:
    """Test of one row's cells against another's (row - reference) and its power.

    Subjects scored at every seed count; paired on those both rows have, unpaired when they
    share none. Keys: diff, se, df, ci_low, ci_high, p, n_seeds, n_seeds_ref, n_subjects,
    test ("paired", "unpaired" or why there is no test), run_sd (SD of the difference of one
    seed of each row), subject_sd, detectable (at 80 % power with these seeds and subjects)
    and seeds_needed (per row, for the observed difference).
    """
    row, reference = row.dropna(axis=1), reference.dropna(axis=1)
    shared = row.columns.intersection(reference.columns)
    paired = len(shared) > 0
    if paired:
        row, reference = row[shared], reference[shared]
    out = {"diff": np.nan, "se": np.nan, "df": np.nan, "ci_low": np.nan, "ci_high": np.nan,
           "p": np.nan, "n_seeds": len(row), "n_seeds_ref": len(reference),
           "n_subjects": len(shared) if paired else row.shape[1] + reference.shape[1],
           "test": "paired" if paired else "unpaired", "run_sd": np.nan, "subject_sd": np.nan,
           "detectable": np.nan, "seeds_needed": np.nan}  # fmt: skip
    if not row.size or not reference.size:
        return {**out, "test": NO_CELLS}
    a, b = row.to_numpy(float), reference.to_numpy(float)
    out.update(st.difference_test(a, b, paired, rng=_rng(*key)))
    if min(len(a), len(b)) < 2:
        return {**out, "test": ONE_SEED}
    terms, dfs = st.variance_terms(a, b, paired)
    sd_a, sd_b = st.seed_sd(a), st.seed_sd(b)
    subject = a.mean(0) - b.mean(0) if paired else None
    out["run_sd"] = float(np.hypot(sd_a, sd_b))
    out["subject_sd"] = (
        float(subject.std(ddof=1)) if paired and subject.size > 1
        else float(np.hypot(st.subject_sd(a), st.subject_sd(b)))
    )  # fmt: skip
    out["detectable"] = float(
        st.detectable_difference(np.sqrt(terms.sum()), st.satterthwaite_df(terms, dfs))
    )
    out["seeds_needed"] = st.seeds_needed(out["diff"], sd_a, sd_b, terms[2:], dfs[2:])
    return out


def _means(cells: Mapping[tuple, pd.DataFrame]) -> dict[tuple, float]:
    """Each row's table mean: subjects' seed-averaged values, averaged over subjects."""
    return {key: float(table.mean(axis=0).mean()) for key, table in cells.items()}


def table_tests(
    df: pd.DataFrame,
    metrics: Sequence[str],
    higher_is_better: Mapping[str, bool],
    reference: str | None = None,
    test_metrics: Sequence[str] = (),
    contenders_exclude: Sequence[str] = (),
    never_best: Sequence[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every comparison a table claims, Holm-adjusted together, and the bold cells.

    Returns (tests, bold). tests: one row per comparison, with dataset, direction, metric,
    method, versus (diff = method - versus), the `compare` keys, p_holm, and `role`
    ("reference" when it is a test against `reference` on a `test_metrics` column, else
    "bold"). bold: one row per dataset × direction × method, a boolean column per metric.
    Rows in `contenders_exclude` (the real-target ceiling) take part in neither. Rows in
    `never_best` (the floors) are never the best row of a column, so never bold, but the best
    row must still beat them to be bold.
    """
    records: dict[tuple, dict] = {}
    best_of: dict[tuple, tuple[str, list[str]]] = {}
    for metric in metrics:
        cells = {k: v for k, v in row_cells(df, metric).items() if k[2] not in contenders_exclude}
        means = _means(cells)
        groups: dict[tuple, list[str]] = {}
        for (dataset, direction, method), mean in means.items():
            if np.isfinite(mean):
                groups.setdefault((dataset, direction), []).append(method)
        for group, methods in groups.items():
            pairs = []
            if reference in methods and metric in test_metrics:
                pairs += [(m, reference, "reference") for m in methods if m != reference]
            contenders = [m for m in methods if m not in never_best]
            if len(methods) > 1 and contenders:
                sign = 1.0 if higher_is_better[metric] else -1.0
                best = max(contenders, key=lambda m: sign * means[(*group, m)])
                others = [m for m in methods if m != best]
                best_of[(*group, metric)] = (best, others)
                pairs += [(best, m, "bold") for m in others]
            for *pair, role in pairs:
                key = (*group, metric, frozenset(pair))
                if key not in records:
                    records[key] = _record(cells, group, metric, *pair)
                if role == "reference" or "role" not in records[key]:
                    records[key]["role"] = role
    tests = pd.DataFrame(list(records.values()))
    if tests.empty:
        tests = pd.DataFrame(columns=[*GROUP, "metric", "method", "versus", *RESULT_KEYS, "role"])
    tests["p_holm"] = st.holm(tests["p"].to_numpy(float))
    return tests, _bold(tests, best_of, metrics, higher_is_better, df)


def _record(cells, group, metric, first: str, second: str) -> dict:
    """`compare` of two rows in name order, so the bootstrap draws do not depend on which of
    them is the reference (`oriented` turns it round for display)."""
    method, versus = sorted((first, second))
    result = compare(
        cells[(*group, method)], cells[(*group, versus)], (*group, metric, method, versus)
    )
    return {"dataset": group[0], "direction": group[1], "metric": metric, "method": method,
            "versus": versus, **result}  # fmt: skip


def _bold(tests, best_of, metrics, higher_is_better, df) -> pd.DataFrame:
    """True where the row's difference from every other row of its column is significant."""
    bold = df[[*GROUP, "method"]].drop_duplicates().reset_index(drop=True)
    for metric in metrics:
        bold[metric] = False
    lookup = {(r.dataset, r.direction, r.metric, frozenset((r.method, r.versus))): r
              for r in tests.itertuples()}  # fmt: skip
    for (dataset, direction, metric), (best, others) in best_of.items():
        sign = 1.0 if higher_is_better[metric] else -1.0
        resolved = True
        for other in others:
            r = lookup[(dataset, direction, metric, frozenset((best, other)))]
            diff = r.diff if r.method == best else -r.diff
            resolved &= bool(r.p_holm < st.ALPHA) and sign * diff > 0
        if resolved:
            where = (bold.dataset == dataset) & (bold.direction == direction)
            bold.loc[where & (bold.method == best), metric] = True
    return bold


def oriented(tests: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The tests with `reference` as `versus`: where the family stored reference - method, the
    row reads method - reference (difference, interval and seed counts turned round)."""
    part = tests.copy()
    flip = part.method == reference
    for column, other in (("method", "versus"), ("versus", "method"),
                          ("n_seeds", "n_seeds_ref"), ("n_seeds_ref", "n_seeds")):  # fmt: skip
        part.loc[flip, column] = tests.loc[flip, other]
    part.loc[flip, "diff"] = -tests.loc[flip, "diff"]
    part.loc[flip, "ci_low"] = -tests.loc[flip, "ci_high"]
    part.loc[flip, "ci_high"] = -tests.loc[flip, "ci_low"]
    return part


def power_frame(df: pd.DataFrame, metrics: Sequence[str], reference: str | None) -> pd.DataFrame:
    """Per dataset × direction, metric and pair of rows: the observed difference, its variance
    components and power. Pairs are each row against `reference` where the direction has it,
    else every pair of rows."""
    rows = []
    for metric in metrics:
        cells = row_cells(df, metric)
        groups: dict[tuple, list[str]] = {}
        for dataset, direction, method in cells:
            groups.setdefault((dataset, direction), []).append(method)
        for group, methods in groups.items():
            if reference in methods:
                pairs = [(m, reference) for m in methods if m != reference]
            else:
                pairs = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1 :]]
            rows += [_record(cells, group, metric, *pair) for pair in pairs]
    frame = pd.DataFrame(rows)
    return oriented(frame, reference) if reference is not None and len(frame) else frame
