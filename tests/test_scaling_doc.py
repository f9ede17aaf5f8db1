"""docs/scaling.md's diffusion rows equal what the code counts, so its GPU-hours cannot go stale.

The parameters and training FLOPs per step of resshift, dfbk and the DFBK ablations at `paper`
(256×256, batch 16, BiomedCLIP knowledge) are counted on the meta device as
`bench/bench_dfbk.py --capacity` counts them (bench/capacity.py); the derived columns
follow the page's own formulas and stated assumptions.
"""

from __future__ import annotations

import re

import capacity
import pytest
from conftest import REPO

from dfbk.methods.dfbk import ABLATIONS

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

DOC = REPO / "docs" / "scaling.md"
R = 100e12  # the page's assumed throughput, FLOP/s
N_TEST = (250 * 130, 7 * 130, 36 * 200)  # its test slices: BraTS, ISLES, SynthRAD
STEPS, BATCH, NFE = 300_000, 16, 15


def _row(label: str) -> list[str]:
    line = next(line for line in DOC.read_text().splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def _numbers(cell: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"[\d,]+\.?\d*", cell)]


@pytest.fixture(scope="module")
def counted():
    """name -> (parameters, training FLOPs per step) at `paper`, as the paper config runs it."""
    out = {}
    for name in ("resshift", *ABLATIONS):
        hparams = capacity.network_hparams(name, "paper", 768, 768)
        assert hparams["batch_size"] == BATCH
        # FLOPs are linear in the batch: one slice, times 16, costs a sixteenth
        flops = capacity.training_flops(hparams, 256, 1) * BATCH
        out[name] = (capacity.count_parameters(hparams), flops)
    return out


def _expected(params: float, flops: float) -> list[float]:
    """The row's F_step (TFLOP), params (M), train h, F_slice (GFLOP), translate h x 3."""
    per_slice = NFE * flops / (3 * BATCH)
    return [flops / 1e12, params / 1e6, STEPS * flops / R / 3600, per_slice / 1e9,
            *(n * per_slice / R / 3600 for n in N_TEST)]  # fmt: skip


def _decimals(cell: str) -> int:
    number = re.findall(r"\d+\.?(\d*)", cell.replace(",", ""))[0]
    return len(number)


@pytest.mark.parametrize("name", ["resshift", "dfbk"])
def test_diffusion_row_equals_the_counts(counted, name):
    cells = _row(name)
    assert _numbers(cells[1]) == [STEPS] and _numbers(cells[2]) == [BATCH]
    shown = [_numbers(c)[0] for c in cells[3:7]] + _numbers(cells[7])
    for value, cell, expected in zip(shown, [*cells[3:7], *[cells[7]] * 3],
                                     _expected(*counted[name]), strict=True):  # fmt: skip
        if cell == cells[6]:  # F_slice, printed to 10 GFLOP
            assert value == pytest.approx(expected, abs=5.01), (name, cell)
        else:
            digits = _decimals(cell) if cell != cells[7] else 2
            assert value == pytest.approx(round(expected, digits), abs=1e-9), (name, cell)


def test_ablation_row_spans_the_counts(counted):
    cells = _row("5 DFBK ablations")
    rows = [_expected(*counted[name]) for name in ABLATIONS if name != "dfbk"]
    for k, digits in ((0, 1), (1, 1), (2, 1)):  # F_step, params, train h: "low–high"
        low, high = (min(r[k] for r in rows), max(r[k] for r in rows))
        assert _numbers(cells[3 + k]) == [round(low, digits), round(high, digits)], cells[3 + k]
    low, high = min(r[3] for r in rows), max(r[3] for r in rows)
    assert _numbers(cells[6]) == pytest.approx([low, high], abs=5.01)
    brats = {round(r[4], 2) for r in rows}
    assert len(brats) == 1 and _numbers(cells[7]) == [brats.pop()]
