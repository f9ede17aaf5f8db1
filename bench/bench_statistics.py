"""How often does a table call a difference that is not there? The tables' test under the null.

Simulates two methods with no true difference, each a seeds × subjects array of cells: subject
difficulty shared by both, a per-method subject effect, a per-seed offset (the training run) and
a small residual. Prints the share of simulated tables in which the test rejects at 0.05 — the
tables' test (`dfbk.evaluation.statistics.difference_test`: hierarchical bootstrap over seeds
and subjects, t with Welch-Satterthwaite degrees of freedom) and the old one (paired Wilcoxon
over subjects of the seed-averaged values, which ignores that the seeds are the replicates).

    python bench/bench_statistics.py --reps 400
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import wilcoxon

from dfbk.evaluation.statistics import difference_test


def simulate(n_seeds, n_subjects, seed_sd, interaction_sd, rng):
    """Two methods' cells under the null: equal means, independent training runs."""
    subjects = rng.normal(0.6, 0.05, n_subjects)
    return [
        subjects
        + rng.normal(0, interaction_sd, n_subjects)
        + rng.normal(0, seed_sd, (n_seeds, 1))
        + rng.normal(0, 0.002, (n_seeds, n_subjects))
        for _ in range(2)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=400, help="simulated tables per setting")
    parser.add_argument("--subjects", type=int, default=20)
    args = parser.parse_args()
    settings = {"seed-dominated": (0.02, 0.005), "subject-dominated": (0.002, 0.02)}
    print(f"false-positive rate at 0.05 over {args.reps} null tables, {args.subjects} subjects")
    print("| spread | seeds | tables' test | Wilcoxon on seed-averaged subjects |")
    print("|---|---|---|---|")
    for name, (seed_sd, interaction_sd) in settings.items():
        for n_seeds in (2, 3, 5, 8):
            rng = np.random.default_rng(0)
            ours = old = 0
            for rep in range(args.reps):
                a, b = simulate(n_seeds, args.subjects, seed_sd, interaction_sd, rng)
                result = difference_test(a, b, True, rng=np.random.default_rng(rep))
                ours += result["p"] < 0.05
                old += wilcoxon(a.mean(0), b.mean(0)).pvalue < 0.05
            print(f"| {name} | {n_seeds} | {ours / args.reps:.3f} | {old / args.reps:.3f} |")


if __name__ == "__main__":
    main()
