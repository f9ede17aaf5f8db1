"""The tables' statistics on synthetic cells whose answer is known: Holm's correction (by hand,
statsmodels where present), the seeds x subjects bootstrap test, and power by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dfbk.evaluation.statistics import (
    detectable_difference,
    difference_test,
    hierarchical_bootstrap,
    holm,
    satterthwaite_df,
    seed_sd,
    seeds_needed,
    variance_terms,
)


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.03, 0.04 -> 4*0.01, 3*0.02, max(0.06, 2*0.03), max(0.06, 1*0.04)
    adjusted = holm([0.03, 0.01, 0.04, 0.02])
    np.testing.assert_allclose(adjusted, [0.06, 0.04, 0.06, 0.06], rtol=1e-12)
    # monotone step-down and the cap at 1
    np.testing.assert_allclose(holm([0.5, 0.2, 0.6]), [1.0, 0.6, 1.0], rtol=1e-12)
    assert holm([0.003])[0] == 0.003  # one test: nothing to correct


def test_holm_skips_nan_and_keeps_order():
    adjusted = holm([np.nan, 0.01, 0.02, np.nan])
    assert np.isnan(adjusted[0]) and np.isnan(adjusted[3])
    np.testing.assert_allclose(adjusted[1:3], [0.02, 0.02], rtol=1e-12)  # m = 2, not 4
    assert np.isnan(holm([np.nan])).all() and holm([]).size == 0


def test_holm_ties_and_bad_input():
    np.testing.assert_allclose(holm([0.01, 0.01, 0.5]), [0.03, 0.03, 0.5], rtol=1e-12)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.2, 1.5])


def test_holm_equals_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(0).uniform(0, 0.2, 17)
    expected = multitest.multipletests(p, method="holm")[1]
    np.testing.assert_allclose(holm(p), expected, rtol=1e-12)


# ------------------------------------------------ seeds x subjects: bootstrap, test, power


def _cells(n_seeds, n_subjects, shift=0.0, seed_sd=0.01, subject_sd=0.05, noise=0.002, rng=0):
    """seeds x subjects SSIM-like cells: subject difficulty (fixed by `rng`), a per-seed offset
    drawn with `seed_sd`, a small seed x subject residual, plus the method's `shift`."""
    gen = np.random.default_rng(rng)
    subjects = 0.6 + np.random.default_rng(99).normal(0, subject_sd, n_subjects)
    offsets = gen.normal(0, 1, (n_seeds, 1))
    offsets = (offsets - offsets.mean()) / offsets.std(ddof=1) if n_seeds > 1 else 0 * offsets
    return subjects + shift + seed_sd * offsets + gen.normal(0, noise, (n_seeds, n_subjects))


def test_a_large_seed_effect_widens_the_interval():
    """The same cells but with 10x the seed spread: the interval must widen about 10x."""
    narrow = difference_test(
        _cells(4, 12, 0.02, 0.002, rng=1), _cells(4, 12, 0, 0.002, rng=2), True
    )
    wide = difference_test(_cells(4, 12, 0.02, 0.02, rng=1), _cells(4, 12, 0, 0.02, rng=2), True)
    width = {k: r["ci_high"] - r["ci_low"] for k, r in (("narrow", narrow), ("wide", wide))}
    assert narrow["p"] < 0.05 < wide["p"]
    assert width["wide"] > 5 * width["narrow"]
    assert wide["ci_low"] < 0 < wide["ci_high"]


def test_a_one_seed_row_is_never_significant():
    """Effect 100x the residual with 30 subjects: still untestable with one seed per row."""
    big = {"noise": 0.0005, "seed_sd": 0.001}
    for n_row, n_ref in ((1, 8), (8, 1), (1, 1)):
        result = difference_test(_cells(n_row, 30, 0.05, **big), _cells(n_ref, 30, **big), True)
        assert result["diff"] == pytest.approx(0.05, abs=0.002)
        assert np.isnan([result["p"], result["ci_low"], result["ci_high"], result["se"]]).all()


def test_a_clear_effect_with_eight_seeds_is_significant():
    """8 seeds per row, effect 5x the seed SD: resolved, with the true effect in the interval."""
    result = difference_test(_cells(8, 20, 0.05, 0.01, rng=3), _cells(8, 20, 0, 0.01, rng=4), True)
    assert result["p"] < 1e-4 and result["ci_low"] > 0
    assert result["ci_low"] < 0.05 < result["ci_high"]
    # Holm over a family of 50 such tests keeps it significant
    assert holm([result["p"], *np.full(49, 0.5)])[0] < 0.05


def test_bootstrap_variance_matches_the_variance_terms_in_an_additive_design():
    """Cells = seed offset + subject value, no interaction: the rescaled hierarchical bootstrap
    has exactly the variance s_row²/n + s_ref²/n + s_d²/J in expectation; 20000 draws estimate it
    to about 2 % (relative SD sqrt(2 / 20000) ≈ 1 % for a near-normal mean), checked to 6 %."""
    rng = np.random.default_rng(5)
    subjects = rng.normal(0.6, 0.05, 15)
    row = subjects + 0.01 * rng.normal(size=15) + rng.normal(0, 0.02, (3, 1))
    ref = subjects + rng.normal(0, 0.03, (4, 1))
    draws = hierarchical_bootstrap(row, ref, True, 20_000, np.random.default_rng(0))
    terms, dfs = variance_terms(row, ref, True)
    assert draws.var(ddof=1) == pytest.approx(terms.sum(), rel=0.06)
    assert dfs.tolist() == [2, 3, 14]
    # the same cells and generator seed give the same draws: tables are reproducible
    again = hierarchical_bootstrap(row, ref, True, 20_000, np.random.default_rng(0))
    np.testing.assert_array_equal(draws, again)


def test_power_by_hand():
    # normal theory: (z_0.975 + z_0.8) * se = (1.959964 + 0.841621) * 0.5
    assert detectable_difference(0.5) == pytest.approx(2.801585 * 0.5, rel=1e-6)
    # equal seed SDs of 1, no subject term: Satterthwaite gives 2(n - 1) degrees of freedom
    np.testing.assert_allclose(satterthwaite_df([1 / 16, 1 / 16], [15, 15]), 30.0)
    # from t tables: n = 16 -> (2.0423 + 0.8538) * sqrt(2/16) = 1.024 > 1;
    #                n = 17 -> (2.0369 + 0.8530) * sqrt(2/17) = 0.991 <= 1
    assert seeds_needed(1.0, 1.0, 1.0) == 17
    assert seeds_needed(-1.0, 1.0, 1.0) == 17  # the sign does not matter
    assert detectable_difference(np.sqrt(2 / 17), 32) == pytest.approx(0.99123, abs=1e-4)
    # the fixed test subjects alone leave (2.2622 + 0.8834) * 0.1 = 0.315: 0.2 needs subjects
    assert seeds_needed(0.2, 1e-3, 1e-3, [0.01], [9]) == np.inf
    assert seeds_needed(0.0, 1.0, 1.0) == np.inf
    assert np.isnan(seeds_needed(0.5, np.nan, 1.0))  # one seed: no seed SD, no answer


def test_variance_terms_unpaired_and_degenerate_cells():
    row, ref = np.array([[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]]), np.array([[0.0, 1.0]] * 2)
    terms, dfs = variance_terms(row, ref, False)
    # seeds: row means 2 and 3 -> var 0.5 / 2; ref no seed spread; subjects var 1/3 and 0.5/2
    np.testing.assert_allclose(terms, [0.25, 0.0, 1 / 3, 0.25])
    assert dfs.tolist() == [1, 1, 2, 1]
    with pytest.raises(ValueError, match="same subjects"):
        variance_terms(row, ref, True)
    with pytest.raises(ValueError, match="finite"):
        seed_sd([[np.nan, 1.0]])
    same = difference_test(np.ones((3, 4)), np.ones((3, 4)), True)
    assert same["p"] == 1.0 and same["diff"] == 0.0  # identical replicates: nothing to find
