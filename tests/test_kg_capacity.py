"""Ablation rows matched in capacity: DFB + KG add at most 10 % parameters at `paper`."""

import subprocess
import sys

import pytest
from capacity import count_parameters, network_hparams, training_flops
from conftest import REPO

from dfbk.methods.dfbk import ABLATIONS

ROWS = ["resshift", *ABLATIONS]


@pytest.mark.parametrize(("knowledge_dim", "visual_dim"), [(768, 768), (384, 0)])
def test_every_ablation_row_is_within_ten_percent_of_resshift_at_paper(knowledge_dim, visual_dim):
    counts = {
        name: count_parameters(network_hparams(name, "paper", knowledge_dim, visual_dim))
        for name in ROWS
    }
    base = counts["resshift"]
    assert 116e6 < base < 118e6  # ResShift's Swin-UNet at 160 channels, 1,2,2,4
    for name, count in counts.items():
        assert base <= count <= 1.10 * base, f"{name}: {count:,} vs resshift {base:,}"
    # each switch adds parameters of its own: the rows differ in what they contain
    assert counts["dfbk"] > counts["dfbk-no-kg"] > base and counts["dfbk"] > counts["dfbk-no-dfb"]


def test_training_flops_count_the_knowledge_and_frequency_modules():
    rows = ("resshift", "dfbk", "dfbk-no-dfb")
    flops = {name: training_flops(network_hparams(name, "tiny", 384), 32, 2) for name in rows}
    assert flops["resshift"] > 1e8
    for name in rows[1:]:
        assert flops["resshift"] < flops[name] < 1.5 * flops["resshift"], name
    double = training_flops(network_hparams("dfbk", "tiny", 384), 32, 4)
    assert double == pytest.approx(2 * flops["dfbk"], rel=1e-6)  # per step: scales with batch


def test_capacity_helper_imports_without_torch():
    code = "import sys, capacity; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO / "bench")
