"""Holm's step-down correction: hand-computed values, NaN handling, statsmodels where present."""

from __future__ import annotations

import numpy as np
import pytest

from dfbk.evaluation.statistics import holm


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
