"""Statistics of the tables: seeds and subjects as replicates, Holm's correction, power.

A table row is a method trained with several seeds and scored on the test subjects, so each
metric comes as a seeds × subjects array of cells (a subject's value is its mean over slices).
Two sources of spread: the training seed (a run's mean over subjects moves with it) and the
subject. The test of a row against the reference row works on those cells:

- the difference of means has the variance seed_sd_row² / n_row + seed_sd_ref² / n_ref +
  subject term (`variance_terms`); the seed terms do not shrink with more subjects, which is
  why a one-seed row can never be tested: its seed term is unknown;
- its standard error comes from a hierarchical bootstrap (`hierarchical_bootstrap`: resample
  each row's seeds, then the subjects, one draw for both rows where they share test subjects,
  so the pair stays paired), with each level's deviations rescaled by sqrt(n / (n - 1)) so
  that the bootstrap variance of a mean matches the unbiased one even with 2 or 3 seeds;
- the interval and p use Student's t with Welch-Satterthwaite degrees of freedom of the
  variance terms (`satterthwaite_df`): with 3 seeds per row the seed terms carry 4 degrees of
  freedom, and a normal quantile would make the interval about 30 % too narrow.

A standard-error interval rather than the percentile one: the tables Holm-correct families of
up to a few hundred tests, and a percentile p-value cannot go below 1 / (resamples + 1).
Power (`detectable_difference`, `seeds_needed`) uses the same variance terms, with the usual
approximation (t quantile of the level plus t quantile of the power) times the standard error.

Holm's step-down correction is written here rather than imported: SciPy offers only
false-discovery-rate control (`scipy.stats.false_discovery_control`), and statsmodels'
`multipletests(method="holm")` would add a large dependency for these few lines; the test
compares this function with statsmodels where it is installed and with hand-computed values.
The bootstrap and variance terms are a few lines of NumPy each (no library offers the crossed
seeds × subjects resampling); SciPy gives the t quantiles.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import t as student_t

BOOTSTRAP_RESAMPLES = 2000  # enough for a standard error (Efron & Tibshirani 1993, ch. 6)
BOOTSTRAP_SEED = 0  # tables are reproducible: the same cells give the same interval
ALPHA = 0.05  # two-sided level of every test, family-wise after Holm
POWER = 0.8  # the power the caption's detectable difference and seed count refer to


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values, same order as given; NaN entries stay NaN and are not counted.

    With the m finite p-values sorted ascending, p_(1) <= ... <= p_(m):
    adj_(i) = min(1, max_{j <= i} (m - j + 1) p_(j)).
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of p-values, got shape {p.shape}")
    finite = np.flatnonzero(np.isfinite(p))
    bad = p[finite][(p[finite] < 0) | (p[finite] > 1)]
    if bad.size:
        raise ValueError(f"p-values must lie in [0, 1], got {bad[0]}")
    adjusted = np.full(p.shape, np.nan)
    m = finite.size
    if m == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def _cells(cells) -> np.ndarray:
    array = np.asarray(cells, dtype=np.float64)
    if array.ndim != 2 or not array.size or not np.isfinite(array).all():
        raise ValueError(f"expected a finite seeds × subjects array, got shape {array.shape}")
    return array


def seed_sd(cells) -> float:
    """SD (ddof 1) over seeds of each seed's mean over subjects; NaN with one seed."""
    means = _cells(cells).mean(axis=1)
    return float(means.std(ddof=1)) if means.size > 1 else np.nan


def subject_sd(cells) -> float:
    """SD (ddof 1) over subjects of the seed-averaged values; NaN with one subject."""
    means = _cells(cells).mean(axis=0)
    return float(means.std(ddof=1)) if means.size > 1 else np.nan


def variance_terms(row, reference, paired: bool) -> tuple[np.ndarray, np.ndarray]:
    """Var(mean(row) - mean(reference)) as independent terms, and each term's degrees of freedom.

    Terms: row seeds, reference seeds, then the subjects — one term (the spread of the
    seed-averaged per-subject difference) when paired (same subject columns), one per row
    otherwise. A level with one replicate contributes 0 with 0 degrees of freedom (unknown).
    """
    row, reference = _cells(row), _cells(reference)
    if paired and row.shape[1] != reference.shape[1]:
        raise ValueError(f"paired cells need the same subjects: {row.shape} vs {reference.shape}")
    terms, dfs = [], []
    for cells in (row, reference):
        n = cells.shape[0]
        terms.append(seed_sd(cells) ** 2 / n if n > 1 else 0.0)
        dfs.append(n - 1)
    subjects = [row.mean(0) - reference.mean(0)] if paired else [row.mean(0), reference.mean(0)]
    for values in subjects:
        j = values.size
        terms.append(values.var(ddof=1) / j if j > 1 else 0.0)
        dfs.append(j - 1)
    return np.asarray(terms), np.asarray(dfs, dtype=np.float64)


def satterthwaite_df(terms, dfs) -> np.ndarray:
    """Welch-Satterthwaite degrees of freedom of a sum of variance estimates (terms on axis 0).

    (sum v_i)^2 / sum(v_i^2 / df_i) over the terms with v_i > 0 and df_i > 0; inf when none.
    """
    terms, dfs = np.asarray(terms, dtype=np.float64), np.asarray(dfs, dtype=np.float64)
    live = (terms > 0) & (dfs > 0)
    denominator = np.where(live, terms**2 / np.where(live, dfs, 1.0), 0.0).sum(axis=0)
    total = np.where(live, terms, 0.0).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, total**2 / denominator, np.inf)


def _rescaled(cells: np.ndarray) -> np.ndarray:
    """Seed deviations (per subject) and subject deviations scaled by sqrt(n / (n - 1)).

    Resampling n values with replacement gives their mean the variance (n - 1) / n * s² / n;
    after the rescaling it is s² / n, the unbiased value, at the seed and at the subject level.
    """
    n, j = cells.shape
    over_seeds = cells.mean(axis=0)
    if n > 1:
        cells = over_seeds + np.sqrt(n / (n - 1)) * (cells - over_seeds)
    if j > 1:
        cells = cells + (np.sqrt(j / (j - 1)) - 1) * (over_seeds - over_seeds.mean())
    return cells


def _counts(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    """(resamples, n) multiplicities of n indices drawn with replacement."""
    draws = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n)


def _resampled_means(cells, rng, resamples, subjects=None) -> np.ndarray:
    """Means of `resamples` bootstrap tables: seeds drawn, then subjects (or the given counts)."""
    n, j = cells.shape
    seeds = _counts(rng, n, resamples)
    subjects = _counts(rng, j, resamples) if subjects is None else subjects
    return np.einsum("bj,bj->b", seeds @ cells, subjects) / (n * j)


def hierarchical_bootstrap(
    row,
    reference,
    paired: bool,
    resamples: int = BOOTSTRAP_RESAMPLES,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Bootstrap draws of mean(row) - mean(reference) over seeds × subjects cells.

    Each row's seeds are resampled with replacement, then the subjects; paired rows (the same
    subject columns) share one subject draw, so a subject's own difficulty cancels.
    """
    row, reference = _rescaled(_cells(row)), _rescaled(_cells(reference))
    if paired and row.shape[1] != reference.shape[1]:
        raise ValueError(f"paired cells need the same subjects: {row.shape} vs {reference.shape}")
    rng = np.random.default_rng(BOOTSTRAP_SEED) if rng is None else rng
    subjects = _counts(rng, row.shape[1], resamples) if paired else None
    return _resampled_means(row, rng, resamples, subjects) - _resampled_means(
        reference, rng, resamples, subjects
    )


def difference_test(
    row,
    reference,
    paired: bool,
    resamples: int = BOOTSTRAP_RESAMPLES,
    rng: np.random.Generator | None = None,
    alpha: float = ALPHA,
) -> dict[str, float]:
    """diff (row - reference), se, df, ci_low, ci_high (1 - alpha) and two-sided p.

    se from `hierarchical_bootstrap`, df from `satterthwaite_df`; t interval and p. A row or
    reference with one seed has no seed replicate: its seed variance is unknown, so se, the
    interval and p are NaN — never significant, however large the difference.
    """
    row, reference = _cells(row), _cells(reference)
    diff = float(row.mean() - reference.mean())
    out = {"diff": diff, "se": np.nan, "df": np.nan, "ci_low": np.nan, "ci_high": np.nan,
           "p": np.nan}  # fmt: skip
    if min(row.shape[0], reference.shape[0]) < 2:
        return out
    se = float(hierarchical_bootstrap(row, reference, paired, resamples, rng).std(ddof=1))
    df = float(satterthwaite_df(*variance_terms(row, reference, paired)))
    half = student_t.ppf(1 - alpha / 2, df) * se
    if se > 0:
        p = float(2 * student_t.sf(abs(diff) / se, df))
    else:  # every replicate agrees exactly
        p = 0.0 if diff else 1.0
    return {**out, "se": se, "df": df, "ci_low": diff - half, "ci_high": diff + half, "p": p}


def detectable_difference(
    se, df=np.inf, alpha: float = ALPHA, power: float = POWER
) -> np.ndarray | float:
    """Smallest true difference a two-sided level-`alpha` t test detects with `power`.

    (t_{1 - alpha/2, df} + t_{power, df}) * se; with df = inf the normal-theory
    (z_{0.975} + z_{0.8}) * se = 2.8016 * se.
    """
    return (student_t.ppf(1 - alpha / 2, df) + student_t.ppf(power, df)) * np.asarray(se)


def seeds_needed(
    difference: float,
    seed_sd_row: float,
    seed_sd_reference: float,
    subject_terms=(),
    subject_dfs=(),
    alpha: float = ALPHA,
    power: float = POWER,
    most: int = 10_000,
) -> float:
    """Seeds per row (both rows alike) at which `difference` is detectable; inf if never.

    The subject terms (variance of the mean difference from the fixed test subjects) do not
    shrink with seeds, so a difference below their detectable floor needs more subjects, not
    seeds (inf). Searched over 2..`most` seeds. NaN where a seed SD is unknown (one seed).
    """
    if not np.isfinite([seed_sd_row, seed_sd_reference]).all():
        return np.nan
    n = np.arange(2, most + 1, dtype=np.float64)
    subject_terms = np.asarray(subject_terms, dtype=np.float64).reshape(-1, 1)
    subject_dfs = np.asarray(subject_dfs, dtype=np.float64).reshape(-1, 1)
    terms = np.vstack([seed_sd_row**2 / n, seed_sd_reference**2 / n,
                       np.broadcast_to(subject_terms, (len(subject_terms), n.size))])  # fmt: skip
    dfs = np.vstack([n - 1, n - 1, np.broadcast_to(subject_dfs, (len(subject_dfs), n.size))])
    se = np.sqrt(terms.sum(axis=0))
    reached = detectable_difference(se, satterthwaite_df(terms, dfs), alpha, power) <= abs(
        difference
    )
    if not difference or not reached.any():
        return np.inf
    return float(n[np.argmax(reached)])
