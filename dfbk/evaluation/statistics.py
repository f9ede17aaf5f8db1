"""Multiple-comparison correction for the tables' p-values.

A comparison table tests DFBK against every other method on several metrics; read one by one,
some of those p-values fall under 0.05 by chance. The tables therefore report Holm-adjusted
p-values (Holm 1979, step-down Bonferroni, controls the family-wise error rate without any
assumption on how the tests depend on each other), with the family being all comparisons of
one table; the raw p-values stay in the csv.

Written here rather than imported: SciPy offers only false-discovery-rate control
(`scipy.stats.false_discovery_control`: Benjamini-Hochberg/Yekutieli), and statsmodels'
`multipletests(method="holm")` would add a large dependency for these few lines; the test
compares this function with statsmodels where it is installed and with hand-computed values.
"""

from __future__ import annotations

import numpy as np


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
