"""Content that must never be scored, trained on or mixed: each fault reproduced and refused in
one line naming the file or key.

A slice store edited after prepare (an array, its `size`), two prepares into one folder, one
scan under two subject ids, predictions outside the [0, 1] contract, complex voxels, a layout
pattern that backtracks without end, and the tracebacks that stood where one line belongs
(label values, split fractions, weights that do not fit their settings, a slice size the
network cannot take). Every file is made here, from the session's phantom.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from conftest import DFBK, train_spec
from fakes import GATED_PREPARE

from dfbk.cli import main
from dfbk.data.datasets import get_adapter
from dfbk.data.io import read_volume, write_nifti
from dfbk.data.slices.prepare import prepare_dataset
from dfbk.data.slices.splits import read_split, write_or_check_split
from dfbk.data.slices.store import SliceStore, array_file
from dfbk.errors import ConfigError, DataError, TrainingError
from dfbk.evaluation.evaluate import RANGE_TOLERANCE, evaluate_predictions
from dfbk.training.checkpoint import load_checkpoint, rebuild_method, save_atomic
from dfbk.training.trainer import Trainer

SMALL = {"steps": 2, "batch_size": 4, "decay_start": 1, "num_downs": 4, "ngf": 8, "ndf": 8}
RUN = {"dataset": "phantom", "method": "reference", "seed": 0}
PHANTOM_LAYOUT = {
    "modalities": {"t1n": "{case}/{case}-t1n.nii.gz", "t2w": "{case}/{case}-t2w.nii.gz"},
    "mask": "{case}/{case}-mask.nii.gz",
}


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def cli_error(capsys, verb: str) -> str:
    """The one error line a refused `dfbk <verb>` printed (progress bars aside)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if " error: " in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"dfbk {verb}: error: ")
    return lines[0]


def store_copy(phantom_store, folder: Path) -> tuple[Path, Path]:
    """A private byte-identical copy of the session store (same fingerprint) and its split."""
    store, split = phantom_store
    copy = folder / "store"
    shutil.copytree(store.root, copy)
    return copy, split


def scale_slab(store_dir: Path, array: str, subject: str, factor: float) -> None:
    """Multiply one subject's slab of an array file in place, as a hand edit would."""
    store = SliceStore(store_dir)
    start, stop = store.subject_range(subject)
    dtype = "<f4" if array_file(array).endswith(".f32") else "u1"
    data = np.memmap(
        store_dir / array_file(array), dtype=dtype, mode="r+", shape=(store.n_slices, *store.size)
    )
    data[start:stop] = (data[start:stop] * factor).astype(dtype)
    data.flush()
    del data


def reference_predictions(store_dir: Path, split: Path, folder: Path, target="t2w") -> Path:
    """Each test subject's own target slab as its prediction: a perfect method's output."""
    store = SliceStore(store_dir)
    for subject in read_split(split)["test"]:
        start, stop = store.subject_range(subject)
        volume = np.moveaxis(np.asarray(store.images(target)[start:stop]), 0, 2)
        write_nifti(volume, store.subject_affine(subject), folder / f"{subject}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def small_model(phantom_store, tmp_path_factory):
    """A 2-step pix2pix run on the session store (its TrainSpec; model.pt and last.pt)."""
    spec = train_spec(
        phantom_store, tmp_path_factory.mktemp("small"), overrides=dict(SMALL), checkpoint_every=1
    )
    Trainer(spec).run()
    return spec


# ----- the store's content is verified where a number is made ---------------------------------
def test_evaluate_refuses_a_target_edited_after_prepare(phantom_store, tmp_path, capsys):
    """Halving the test subject's target slices changed SSIM silently; now it names the file."""
    copy, split = store_copy(phantom_store, tmp_path)
    predictions = reference_predictions(copy, split, tmp_path / "pred")
    result = evaluate_predictions(copy, predictions, split, "t1n-to-t2w", tmp_path / "ok", RUN)
    assert result["summary"]["ssim_full"]["mean"] == pytest.approx(1.0)  # untouched: scored
    test = read_split(split)["test"][0]
    scale_slab(copy, "t2w", test, 0.5)
    argv = ["evaluate", str(copy), str(predictions), str(split), "t1n-to-t2w"]
    argv += [str(tmp_path / "eval"), "--dataset", "phantom", "--method", "x", "--seed", "0"]
    assert main(argv) == 2
    line = cli_error(capsys, "evaluate")
    assert f"{copy / 't2w.f32'}: " in line and f"(subject '{test}')" in line
    assert not (tmp_path / "eval").exists()


def test_evaluate_refuses_an_edited_mask(phantom_store, tmp_path):
    copy, split = store_copy(phantom_store, tmp_path)
    predictions = reference_predictions(copy, split, tmp_path / "pred")
    scale_slab(copy, "mask", read_split(split)["test"][0], 0)
    with pytest.raises(DataError) as err:
        evaluate_predictions(copy, predictions, split, "t1n-to-t2w", tmp_path / "eval", RUN)
    assert one_line(err).startswith(f"{copy / 'mask.u8'}: ")


def test_predict_refuses_an_edited_source(phantom_store, small_model, tmp_path, capsys):
    copy, split = store_copy(phantom_store, tmp_path)
    scale_slab(copy, "t1n", read_split(split)["test"][0], 0.5)
    model = small_model.out_dir / "model.pt"
    argv = ["predict", str(model), str(copy), str(split), str(tmp_path / "pred")]
    assert main([*argv, "--device", "cpu"]) == 2
    assert f"{copy / 't1n.f32'}: " in cli_error(capsys, "predict")
    assert not (tmp_path / "pred").exists()


def test_training_refuses_an_edited_training_subject(phantom_store, tmp_path):
    copy, split = store_copy(phantom_store, tmp_path)
    subject = read_split(split)["train"][-1]
    scale_slab(copy, "t2w", subject, 0.5)
    spec = train_spec(phantom_store, tmp_path, store_dir=copy, overrides=dict(SMALL))
    with pytest.raises(DataError) as err:
        Trainer(spec)
    assert one_line(err).startswith(f"{copy / 't2w.f32'}: ") and subject in str(err.value)


def test_an_edited_size_of_the_same_byte_count_is_refused(phantom_store, tmp_path):
    """48x48 relabelled 16x144: same bytes, and both sides suit the network (multiple 16);
    training crashed inside the discriminator. The digests bind bytes to their shape."""
    copy, _ = store_copy(phantom_store, tmp_path)
    meta = json.loads((copy / "store.json").read_text())
    meta["size"] = [16, 144]
    (copy / "store.json").write_text(json.dumps(meta))
    spec = train_spec(phantom_store, tmp_path, store_dir=copy, overrides=dict(SMALL))
    with pytest.raises(DataError) as err:
        Trainer(spec)
    assert one_line(err).startswith(f"{copy / 't1n.f32'}: slices ")


def test_a_store_without_subject_digests_is_checked_file_by_file(phantom_store, tmp_path):
    """A store from before per-subject digests: its whole-file digests still catch an edit;
    without those either, its content cannot be vouched for and it is refused."""
    copy, split = store_copy(phantom_store, tmp_path)
    meta = json.loads((copy / "store.json").read_text())
    for info in meta["subjects"].values():
        del info["digests"]
    (copy / "store.json").write_text(json.dumps(meta))
    test = read_split(split)["test"]
    SliceStore(copy).verify(test, ["t2w", "mask"])  # intact: accepted
    scale_slab(copy, "t2w", test[0], 0.5)
    with pytest.raises(DataError, match="content differs from the digest") as err:
        SliceStore(copy).verify(test, ["t2w"])
    assert one_line(err).startswith(f"{copy / 't2w.f32'}: ")
    del meta["digests"]
    (copy / "store.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="records no digest of mask.u8"):
        SliceStore(copy).verify(test, ["mask"])


# ----- two prepares into one folder -------------------------------------------------------------


def test_a_second_prepare_into_the_same_folder_is_refused(phantom_raw, tmp_path, capsys):
    """The second used to delete the first one's temporaries and finish over a mixed store."""
    out, started, gate = tmp_path / "store", tmp_path / "started", tmp_path / "gate"
    first = subprocess.Popen(
        [
            sys.executable,
            "-c",
            GATED_PREPARE,
            str(phantom_raw),
            str(out),
            str(started),
            str(gate),
            "48",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300  # a safety net against a hung child, not a timing
        while not started.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), first.stderr.read() if first.poll() is not None else "no start"
        argv = ["prepare", "phantom", str(phantom_raw), str(out), "--modalities", "t1n,t2w"]
        assert main([*argv, "--size", "48", "48"]) == 2
        assert "another dfbk prepare is writing this slice store" in cli_error(capsys, "prepare")
        gate.touch()
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        gate.touch()
        if first.poll() is None:
            first.kill()
        first.wait()
    store = SliceStore(out)
    store.verify(store.subjects, ["t1n", "t2w", "mask", "label"])  # one prepare's store, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate", "started", "store"]


# ----- one subject under two ids ----------------------------------------------------------------
def twin(raw: Path, subject: str, name: str) -> None:
    """Copy a subject's folder under another id, byte for byte."""
    shutil.copytree(raw / subject, raw / name)
    for path in (raw / name).iterdir():
        path.rename(path.with_name(path.name.replace(subject, name)))


def test_subject_ids_differing_only_in_case_are_refused(phantom_copy, tmp_path, capsys):
    """PHANTOM-003 beside phantom-003 passed a YAML layout and was split across train/test."""
    twin(phantom_copy, "phantom-003", "PHANTOM-003")
    layout = tmp_path / "layout.yaml"
    layout.write_text(yaml.safe_dump({"layout": PHANTOM_LAYOUT}))
    argv = ["prepare", "mine", str(phantom_copy), str(tmp_path / "store")]
    assert (
        main([*argv, "--modalities", "t1n,t2w", "--size", "48", "48", "--layout", str(layout)]) == 2
    )
    line = cli_error(capsys, "prepare")
    assert "subject ids 'PHANTOM-003' and 'phantom-003' differ only in letter case" in line
    assert not (tmp_path / "store").exists()


def test_identical_volumes_under_two_ids_are_refused(phantom_copy, tmp_path):
    twin(phantom_copy, "phantom-001", "phantom-101")
    with pytest.raises(DataError) as err:
        prepare_dataset("phantom", phantom_copy, tmp_path / "store", ["t1n", "t2w"], (48, 48))
    text = one_line(err)
    assert "subjects 'phantom-001' and 'phantom-101' hold identical t1n volumes" in text
    assert str(phantom_copy / "phantom-101" / "phantom-101-t1n.nii.gz") in text
    assert not (tmp_path / "store").exists()


# ----- predictions outside the contract ---------------------------------------------------------
def test_a_prediction_in_tanh_range_is_refused_naming_the_range(phantom_store, tmp_path):
    """An external method returning [-1, 1] was clipped and scored (SSIM 0.016 -> 0.601)."""
    store, split = phantom_store
    predictions = reference_predictions(store.root, split, tmp_path / "pred")
    test = read_split(split)["test"][0]
    path = predictions / f"{test}.nii.gz"
    image = nib.load(path)
    tanh = image.get_fdata(dtype=np.float32) * 2 - 1
    write_nifti(tanh, image.affine, path)
    with pytest.raises(DataError) as err:
        evaluate_predictions(store.root, predictions, split, "t1n-to-t2w", tmp_path / "ev", RUN)
    low, high = float(tanh.min()), float(tanh.max())
    assert one_line(err) == (
        f"{path}: prediction values span [{low:.6g}, {high:.6g}], outside the contract's [0, 1] "
        "(map the method's output range back to [0, 1]; docs/external.md)"
    )


def test_float32_rounding_at_the_range_ends_is_accepted(phantom_store, tmp_path):
    """A rescale may land one or two float32 ulps outside [0, 1]; that is rounding, not range."""
    store, split = phantom_store
    predictions = reference_predictions(store.root, split, tmp_path / "pred")
    path = predictions / f"{read_split(split)['test'][0]}.nii.gz"
    image = nib.load(path)
    data = image.get_fdata(dtype=np.float32)
    assert data.min() == 0 and data.max() == 1  # prepare's percentile scaling reaches both ends
    data[data == 1] = np.nextafter(np.float32(1), np.float32(2))  # one ulp above 1
    data[data == 0] = -np.finfo(np.float32).eps  # one ulp of 1.0 below 0
    write_nifti(data, image.affine, path)
    assert 0 < float(data.max()) - 1 < RANGE_TOLERANCE
    result = evaluate_predictions(store.root, predictions, split, "t1n-to-t2w", tmp_path / "e", RUN)
    assert result["summary"]["ssim_full"]["mean"] == 1.0  # clipped back onto the reference


# ----- complex voxels ---------------------------------------------------------------------------
def test_complex_voxels_are_refused_naming_the_file(phantom_copy, tmp_path):
    """complex64 was read as its real part without a word."""
    path = phantom_copy / "phantom-002" / "phantom-002-t2w.nii.gz"
    image = nib.load(path)
    data = image.get_fdata(dtype=np.float32)
    nib.save(nib.Nifti1Image((data + 1j * data).astype(np.complex64), image.affine), path)
    with pytest.raises(DataError) as err:
        read_volume(path)
    assert one_line(err).startswith(f"{path}: voxels of type complex64 are not real numbers")
    with pytest.raises(DataError, match=r"phantom-002-t2w\.nii\.gz: voxels of type complex64"):
        prepare_dataset("phantom", phantom_copy, tmp_path / "store", ["t1n", "t2w"], (48, 48))


# ----- a layout pattern that backtracks without end ---------------------------------------------
def test_a_catastrophically_backtracking_case_pattern_is_refused(tmp_path):
    """`(a|aa)+b` against a 40-character name hung prepare beyond 180 s. Run in a child
    process with a generous timeout only as a safety net; the test asserts the refusal."""
    raw = tmp_path / "raw"
    case = raw / ("a" * 40)
    case.mkdir(parents=True)
    for modality in ("t1n", "t2w"):
        (case / f"{'a' * 40}-{modality}.nii.gz").write_bytes(b"")
    layout = {**PHANTOM_LAYOUT, "case": "(a|aa)+b", "mask": None}
    argv = [DFBK, "prepare", "mine", str(raw), str(tmp_path / "store"), "--modalities", "t1n,t2w"]
    argv += ["--layout", json.dumps(layout)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=os.environ)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("dfbk prepare: error: layout.case: '(a|aa)+b' takes over")


# ----- one line instead of a traceback ----------------------------------------------------------
@pytest.mark.parametrize("values", [[0, "one"], [0, 1.5], [0, 256], "0,1"])
def test_non_integer_label_values_are_a_config_error(values):
    with pytest.raises(ConfigError) as err:
        get_adapter("mine", {**PHANTOM_LAYOUT, "label_values": values})
    assert one_line(err).startswith("layout.label_values: expected a list of integers")


def test_label_values_written_as_whole_floats_are_integers():
    adapter = get_adapter("mine", {**PHANTOM_LAYOUT, "label_values": [0, 1.0, 2]})
    assert adapter.label_values == (0, 1, 2)


def test_all_zero_split_fractions_are_one_line(phantom_store, tmp_path, capsys):
    store, _ = phantom_store
    argv = ["split", str(store.root), "--out", str(tmp_path / "s.json")]
    assert main([*argv, "--fractions", "0", "0", "0"]) == 2
    assert "split fractions (train, val, test) [0.0, 0.0, 0.0]" in cli_error(capsys, "split")
    assert not (tmp_path / "s.json").exists()
    with pytest.raises(ConfigError, match="need numbers of at least 0"):
        write_or_check_split(tmp_path / "n.json", store.subjects, {"train": -1, "test": 2}, 0)


def test_weights_that_do_not_fit_their_recorded_settings_are_one_line(
    phantom_store, small_model, tmp_path, capsys
):
    """hparams edited (and re-hashed) to another width: a size-mismatch traceback before."""
    store, split = phantom_store
    payload = load_checkpoint(small_model.out_dir / "model.pt")
    payload["hparams"]["ngf"] = 16
    model = save_atomic(payload, tmp_path / "model.pt")
    with pytest.raises(TrainingError) as err:  # translate and MLflow's loader rebuild so too
        rebuild_method(load_checkpoint(model), model)
    assert one_line(err).startswith(f"{model}: its weights do not fit the network")
    assert "size mismatch for " in str(err.value)
    argv = ["predict", str(model), str(store.root), str(split), str(tmp_path / "pred")]
    assert main([*argv, "--device", "cpu"]) == 2
    assert f"{model}: its weights do not fit" in cli_error(capsys, "predict")


def test_resuming_weights_that_do_not_fit_is_one_line(phantom_store, small_model, tmp_path):
    ckpt = shutil.copytree(small_model.checkpoint_dir, tmp_path / "ckpt")
    last = ckpt / "last.pt"
    payload = load_checkpoint(last)
    key = next(k for k, v in payload["state"].items() if v.ndim == 4)
    payload["state"][key] = torch.zeros(3, *payload["state"][key].shape[1:])
    save_atomic(payload, last)
    spec = train_spec(phantom_store, tmp_path, overrides=dict(SMALL), checkpoint_every=1)
    with pytest.raises(TrainingError) as err:
        Trainer(spec).run()
    assert one_line(err).startswith(f"{last}: its weights do not fit the network")
    assert key in str(err.value)


def test_training_on_a_slice_size_the_network_cannot_take_is_one_line(
    phantom_raw, tmp_path, capsys
):
    """The planner refused 63x63 for pix2pix (sides divisible by 64); `dfbk train` crashed."""
    store = tmp_path / "store"
    prepare_dataset("phantom", phantom_raw, store, ["t1n", "t2w"], (63, 63))
    write_or_check_split(tmp_path / "s.json", SliceStore(store).subjects, {"train": 2}, 0)
    argv = ["train", "phantom", "t1n-to-t2w", "pix2pix", "--store", str(store)]
    argv += ["--split", str(tmp_path / "s.json"), "--out-dir", str(tmp_path / "out")]
    argv += ["--checkpoint-dir", str(tmp_path / "ckpt"), "--device", "cpu"]
    assert main(argv) == 2
    line = cli_error(capsys, "train")
    assert line.endswith(
        f"{store}: slice size: 63x63 does not suit method 'pix2pix' (preset 'tiny'), whose "
        "network needs sides divisible by 64"
    )
    assert not (tmp_path / "out").exists()
