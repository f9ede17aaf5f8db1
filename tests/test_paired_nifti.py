"""A dataset of your own, defined in YAML: a fabricated IXI-shaped folder through `dfbk prepare`.

IXI as published: one folder per tar (IXI-T1/, IXI-T2/, IXI-PD/) of flat files
`IXI<nnn>-<site>-<id>-<T1|T2|PD>.nii.gz`; T2 and PD come from one dual-echo acquisition (same
voxel grid), T1 from another (a different grid, so it needs registration first). The scans are
not skull-stripped: noise fills the background, which the `otsu` foreground rule handles.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from fabricate import contrast, phantom_head

from dfbk.cli import main
from dfbk.data.datasets import get_adapter
from dfbk.data.datasets.foreground import otsu_foreground
from dfbk.data.slices.store import SliceStore
from dfbk.errors import ConfigError
from dfbk.plan.checks import check_config

CASES = ("IXI002-Guys-0828", "IXI012-HH-1211", "IXI035-IOP-0873")
LAYOUT = {
    "case": r"IXI\d{3}-[A-Za-z]+-\d{4}",
    "modalities": {
        "t1": {"pattern": "IXI-T1/{case}-T1.nii.gz"},
        "t2": {"pattern": "IXI-T2/{case}-T2.nii.gz", "normalisation": "mr"},
        "pd": "IXI-PD/{case}-PD.nii.gz",
    },
    "foreground": "otsu",
}
SHAPE = (28, 26, 12)


def _noisy(volume: np.ndarray, seed: int) -> np.ndarray:
    """A raw scan: Rician-like noise over the whole field of view (nowhere exactly zero)."""
    rng = np.random.default_rng(seed)
    noise = np.abs(rng.normal(0, 12, volume.shape)) + 1
    return (volume + noise).astype(np.float32)


def ixi_tree(root: Path, cases=CASES) -> Path:
    """IXI-T1/, IXI-T2/, IXI-PD/ with one file per case; T1 on its own grid."""
    for k, case in enumerate(cases):
        head, lesion = phantom_head(k)
        affine = np.diag([-1.2, -1.2, 1.2, 1.0])
        for name, level, lesion_level in (("T2", 300, 800), ("PD", 500, 650)):
            data = _noisy(contrast(head, lesion, level, lesion_level, 10 * k + len(name)), k)
            path = root / f"IXI-{name}" / f"{case}-{name}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, affine), str(path))
        t1 = _noisy(contrast(head, lesion, 400, 250, 10 * k), k).transpose(2, 0, 1)
        path = root / "IXI-T1" / f"{case}-T1.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(t1, np.diag([0.94, 0.94, 1.2, 1.0])), str(path))
    (root / "IXI.xls").write_text("demographics, not a scan\n")
    return root


def test_otsu_foreground_finds_the_head_where_nonzero_finds_everything(tmp_path):
    head, lesion = phantom_head(0)
    scans = [
        _noisy(contrast(head, lesion, 300, 800, 1), 0),
        _noisy(contrast(head, lesion, 500, 650, 2), 0),
    ]
    assert all((s > 0).all() for s in scans)  # the nonzero rule would take the whole FOV
    found = otsu_foreground(scans)
    dice = 2 * (found & head).sum() / (found.sum() + head.sum())
    assert dice > 0.95, dice


def test_layout_finds_cases_and_reports_missing_files(tmp_path):
    root = ixi_tree(tmp_path / "ixi")
    (root / "IXI-PD" / f"{CASES[1]}-PD.nii.gz").unlink()
    subjects = get_adapter("ixi", LAYOUT).find_subjects(root)
    assert [s.name for s in subjects] == sorted(CASES)
    by_name = {s.name: s for s in subjects}
    assert by_name[CASES[0]].images["t2"] == root / "IXI-T2" / f"{CASES[0]}-T2.nii.gz"
    assert by_name[CASES[1]].missing == [str(root / "IXI-PD" / f"{CASES[1]}-PD.nii.gz")]
    assert all(s.foreground == "otsu" for s in subjects)


def test_ixi_t2_to_pd_through_dfbk_prepare(tmp_path, capsys):
    """The docs' worked example: a layout file, `dfbk prepare`, a store with every case."""
    root = ixi_tree(tmp_path / "raw" / "ixi")
    layout_file = tmp_path / "ixi-layout.yaml"
    layout_file.write_text(yaml.safe_dump({"layout": LAYOUT}))
    store_dir = tmp_path / "store"
    argv = ["prepare", "ixi", str(root), str(store_dir), "--modalities", "t2,pd"]
    argv += ["--size", "32", "32", "--layout", str(layout_file)]
    assert main(argv) == 0, capsys.readouterr().err
    store = SliceStore(store_dir)
    assert sorted(store.subjects) == sorted(CASES)
    meta = json.loads((store_dir / "store.json").read_text())
    assert meta["normalisation"] == {"t2": "mr-p0.5-p99.5", "pd": "mr-p0.5-p99.5"}
    assert meta["provenance"]["config"]["adapter"] == "ixi"
    fractions = np.loadtxt(store_dir / "manifest.csv", delimiter=",", skiprows=1, usecols=3)
    assert fractions.max() < 0.9  # the head, not the whole (noisy) field of view


def test_modalities_on_different_grids_are_refused_naming_the_file(tmp_path, capsys):
    """Registration is out of scope: T1 (own grid) with T2 stops with the file named."""
    root = ixi_tree(tmp_path / "ixi", CASES[:1])
    argv = ["prepare", "ixi", str(root), str(tmp_path / "store"), "--modalities", "t1,t2"]
    argv += ["--size", "32", "32", "--layout", json.dumps(LAYOUT)]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and f"{CASES[0]}-T2.nii.gz: shape" in errors[0]
    assert not (tmp_path / "store").exists()


def test_layout_mistakes_are_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"layout.modalities.pd.normalisation: 'ct'"):
        get_adapter(
            "ixi",
            {
                **LAYOUT,
                "modalities": {
                    **LAYOUT["modalities"],
                    "pd": {"pattern": "x/{case}", "normalisation": "ct"},
                },
            },
        )
    with pytest.raises(ConfigError, match=r"layout.modalities.t2.pattern: .* no \{case\}"):
        get_adapter("ixi", {**LAYOUT, "modalities": {"t1": "a/{case}", "t2": "IXI-T2/all.nii.gz"}})
    with pytest.raises(ConfigError, match="'brats2023' is a built-in dataset"):
        get_adapter("brats2023", LAYOUT)
    with pytest.raises(ConfigError, match=r"unknown dataset 'ixi'.*datasets.ixi.layout"):
        get_adapter("ixi")


def test_config_with_a_layout_dataset_passes_the_checks():
    config = {
        "datasets": {"ixi": {"directions": ["t2-to-pd", "pd-to-t2"], "layout": LAYOUT}},
        "methods": {"pix2pix": {"preset": "tiny"}},
    }
    check_config(config)
    config["datasets"]["ixi"]["directions"] = ["t2-to-flair"]
    with pytest.raises(ConfigError, match=r"datasets.ixi"):
        check_config(config)
