"""Output folders and files never cost the user data, each fault reproduced as reported.

A command replaces only a folder it made itself (`dfbk.data.outputs`): never its input, a
folder holding an input or inside one, the current folder, or a non-empty folder it did not
make; refused weights leave nothing behind and pin nothing; `dfbk translate` faults (a
singular affine, a header's absurd voxel size, a full disk, a read-only folder, a killed
folder run) are one line and leave nothing that looks finished.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import DFBK
from test_translate_whole_fov import store_checkpoint
from test_volume_translate import head_volume, make_checkpoint, write_volume

from dfbk.cli import main
from dfbk.data.outputs import MARKER, claim_folder, made_by
from dfbk.data.phantom.anatomy import generate_phantom_dataset
from dfbk.data.slices.prepare import prepare_dataset
from dfbk.data.slices.store import SliceStore
from dfbk.data.sources import weights
from dfbk.data.sources.weights import (
    LOCK_NAME,
    VIT_NPZ,
    VIT_SAFETENSORS,
    WeightsError,
    fetch_weights,
)
from dfbk.errors import DataError
from dfbk.inference import volume as volume_translate
from dfbk.inference.volume import translate_folder, translate_volume
from dfbk.training.checkpoint import load_checkpoint, save_atomic

PREPARE = ["--modalities", "t1n,t2w", "--size", "32", "32"]


def one_line_error(capsys, verb: str) -> str:
    """The command's stderr must be one `dfbk VERB: error:` line (progress bars aside)."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("dfbk ")]
    assert len(lines) == 1 and lines[0].startswith(f"dfbk {verb}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what must survive a refused command."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ----- prepare -------------------------------------------------------------------------------
def test_prepare_into_its_own_raw_folder_is_refused_and_deletes_nothing(phantom_copy, capsys):
    before = listing(phantom_copy)
    assert main(["prepare", "phantom", str(phantom_copy), str(phantom_copy), *PREPARE]) == 2
    line = one_line_error(capsys, "prepare")
    assert f"{phantom_copy}: is the raw folder" in line
    assert listing(phantom_copy) == before


def test_prepare_into_a_parent_of_the_raw_folder_is_refused(phantom_raw, tmp_path, capsys):
    data = tmp_path / "proj" / "data"
    shutil.copytree(phantom_raw, data / "raw")
    (data / "notes.md").write_text("my notes\n")
    before = listing(data)
    assert main(["prepare", "phantom", str(data / "raw"), str(data), *PREPARE]) == 2
    assert f"{data}: holds the raw folder" in one_line_error(capsys, "prepare")
    assert listing(data) == before


def test_prepare_replaces_only_its_own_store(phantom_copy, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("chapter 1\n")
    assert main(["prepare", "phantom", str(phantom_copy), str(foreign), *PREPARE]) == 2
    assert "not empty and not made by dfbk" in one_line_error(capsys, "prepare")
    assert listing(foreign) == {"thesis.tex": b"chapter 1\n"}

    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is fine to write
    prepare_dataset("phantom", phantom_copy, empty, ["t1n"], (32, 32))
    assert made_by(empty)["verb"] == "prepare" and SliceStore(empty).n_slices > 0
    prepare_dataset("phantom", phantom_copy, empty, ["t1n", "t2w"], (32, 32))  # its own: rerun
    assert SliceStore(empty).modalities == ["t1n", "t2w"]
    (empty / MARKER).unlink()  # a store written before markers: its store.json + manifest.csv
    aside = tmp_path / ".empty.999.old"  # an old store a killed run had moved aside
    shutil.copytree(empty, aside)
    (tmp_path / ".empty.998.old").mkdir()  # not a store: not ours to remove
    prepare_dataset("phantom", phantom_copy, empty, ["t1n"], (32, 32))
    assert SliceStore(empty).modalities == ["t1n"]
    assert [p.name for p in tmp_path.glob(".*")] == [".empty.998.old"]


# ----- predict -------------------------------------------------------------------------------
@pytest.fixture
def private_store(phantom_store, tmp_path):
    """A copy of the phantom store and split, and an identity model.pt trained on them."""
    store, split = phantom_store
    root = tmp_path / "data"
    shutil.copytree(store.root, root / "store")
    shutil.copy(split, root / "splits.json")
    copy = SliceStore(root / "store")
    ckpt = store_checkpoint(make_checkpoint(tmp_path / "model.pt"), copy, root / "splits.json")
    return copy, root / "splits.json", ckpt


def test_predict_into_the_slice_store_is_refused(private_store, capsys):
    store, split, ckpt = private_store
    before = listing(store.root)
    argv = ["predict", str(ckpt), str(store.root), str(split), str(store.root), "--device", "cpu"]
    assert main(argv) == 2
    assert f"{store.root}: is the slice store" in one_line_error(capsys, "predict")
    assert listing(store.root) == before


def test_predict_into_the_current_folder_is_one_line(private_store, tmp_path, monkeypatch, capsys):
    store, split, ckpt = private_store
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["predict", str(ckpt), str(store.root), str(split), ".", "--device", "cpu"]) == 2
    assert "is the current folder" in one_line_error(capsys, "predict")
    assert list(here.iterdir()) == []


def test_predict_replaces_its_own_predictions_only(private_store, tmp_path, capsys):
    store, split, ckpt = private_store
    out = tmp_path / "predictions"
    argv = ["predict", str(ckpt), str(store.root), str(split), str(out), "--device", "cpu"]
    assert main(argv) == 0 and made_by(out)["verb"] == "predict"
    (out / MARKER).unlink()  # an older dfbk's folder: predictions.json says whose it is
    assert main(argv) == 0 and made_by(out)["verb"] == "predict"
    capsys.readouterr()
    (out / MARKER).write_text(json.dumps({"verb": "prepare"}))  # another verb's product
    assert main(argv) == 2
    assert "made by `dfbk prepare`" in one_line_error(capsys, "predict")


# ----- evaluate and figure: files never land inside an input ------------------------------
def test_evaluate_and_figure_never_write_into_an_input(private_store, tmp_path, capsys):
    store, split, ckpt = private_store
    preds = tmp_path / "predictions"
    argv = ["predict", str(ckpt), str(store.root), str(split), str(preds), "--device", "cpu"]
    assert main(argv) == 0
    before = listing(preds)
    argv = ["evaluate", str(store.root), str(preds), str(split), "t1n-to-t2w", str(preds)]
    assert main([*argv, "--dataset", "phantom", "--method", "identity", "--seed", "0"]) == 2
    assert "is inside the predictions folder" in one_line_error(capsys, "evaluate")
    figure = store.root / "figure.png"
    argv = ["figure", str(store.root), str(split), "t1n-to-t2w", str(figure)]
    assert main([*argv, "--prediction", f"identity={preds}"]) == 2
    assert "is inside the slice store" in one_line_error(capsys, "figure")
    assert listing(preds) == before and not figure.exists()


# ----- phantom and download --------------------------------------------------------------
def test_phantom_never_replaces_a_subject_folder_it_did_not_make(tmp_path, capsys):
    out = tmp_path / "raw"
    (out / "phantom-000").mkdir(parents=True)
    (out / "phantom-000" / "notes.txt").write_text("my own subject\n")
    assert main(["phantom", str(out), "--subjects", "1", "--voxel-mm", "8"]) == 2
    assert "not empty and not made by dfbk" in one_line_error(capsys, "phantom")
    assert listing(out) == {"phantom-000/notes.txt": b"my own subject\n"}
    generate_phantom_dataset(tmp_path / "new", 1, 0, 8.0)
    (tmp_path / "new" / MARKER).unlink()  # a phantom written before markers: subjects.json
    generate_phantom_dataset(tmp_path / "new", 2, 0, 8.0)  # resumed
    assert made_by(tmp_path / "new")["verb"] == "phantom"


def test_download_into_the_current_folder_and_over_its_own_product(tmp_path, monkeypatch, capsys):
    from fabricate import BRATS_TOP, brats_tree, zip_tree

    monkeypatch.delenv("SYNAPSE_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    downloads = tmp_path / "proj" / "dl"
    archive = downloads / "brats2023" / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData.zip"
    archive.parent.mkdir(parents=True)
    zip_tree(brats_tree(tmp_path / "tree", numbers=(0,)), archive)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    settings = ["--settings", '{"keep_archive": true}']
    assert main(["download", "brats2023", ".", "--downloads", str(downloads), *settings]) == 2
    assert "is the current folder" in one_line_error(capsys, "download")
    raw = tmp_path / "raw"
    argv = ["download", "brats2023", str(raw), "--downloads", str(downloads), *settings]
    assert main(argv) == 0 and main(argv) == 0  # a rerun replaces its own earlier download
    assert made_by(raw)["verb"] == "download" and (raw / BRATS_TOP).is_dir()
    inside = ["download", "brats2023", str(downloads.parent), "--downloads", str(downloads)]
    assert main([*inside, *settings]) == 2
    assert "holds the downloads folder" in one_line_error(capsys, "download")


@pytest.mark.parametrize("case", ["root", "ancestor of cwd", "file", "inside input"])
def test_claim_folder_refusals_name_the_folder(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    given = {"root": Path("/"), "ancestor of cwd": Path(".."), "file": tmp_path / "f"}
    given["inside input"] = tmp_path / "in" / "out"
    (tmp_path / "f").write_text("x")
    (tmp_path / "in").mkdir()
    with pytest.raises(DataError, match=r"^/.*: (is|exists)"):
        claim_folder(given[case], "prepare", {"input": tmp_path / "in"})


# ----- weights ---------------------------------------------------------------------------
def test_refused_vit_weights_pin_nothing_and_leave_nothing(tmp_path, monkeypatch, capsys):
    """A junk .npz is refused before it is installed: no hash pinned, no file left; the
    right file afterwards is accepted. (The real .npz is 400 MB: after the junk file is
    refused by timm's real reader, the reader is stubbed to accept the second file.)"""
    from timm.models.vision_transformer import VisionTransformer

    dest = tmp_path / "weights"
    junk = tmp_path / "junk.npz"
    np.savez(junk, unrelated=np.zeros(3))
    argv = ["weights", "resvit-vit", "--from-file", str(junk), "--dest", str(dest)]
    assert main(argv) == 2
    assert f"{junk}: not the R50+ViT-B/16 .npz" in one_line_error(capsys, "weights")
    assert not (dest / LOCK_NAME).exists() and list(dest.iterdir()) == []

    good = tmp_path / "good.npz"
    np.savez(good, published=np.ones(4))
    monkeypatch.setattr(VisionTransformer, "load_pretrained", lambda self, path, prefix="": None)
    receipt = fetch_weights("resvit-vit", dest, good)
    digest = receipt["files"][VIT_NPZ]["sha256"]
    assert (dest / VIT_NPZ).read_bytes() == good.read_bytes() and (dest / VIT_SAFETENSORS).exists()
    assert json.loads((dest / LOCK_NAME).read_text())["resvit-vit"][VIT_NPZ]["sha256"] == digest
    assert sorted(p.name for p in dest.iterdir()) == sorted([LOCK_NAME, VIT_NPZ, VIT_SAFETENSORS])


def test_biomedclip_files_with_a_foreign_config_pin_nothing(tmp_path, monkeypatch):
    """A folder whose open_clip config names another text model is refused before any file
    of the set takes its place or its hash enters the lock."""
    import dataclasses
    import hashlib

    from test_weights import biomedclip_files

    monkeypatch.setattr(weights, "fetch", None)  # air-gapped: no download may be tried
    files = biomedclip_files()
    published = list(weights.WEIGHT_SETS["biomedclip"].files)  # the stand-in .bin is published
    digest = hashlib.sha256(files[published[1].name]).hexdigest()
    published[1] = dataclasses.replace(published[1], sha256=digest)
    patched = dataclasses.replace(weights.WEIGHT_SETS["biomedclip"], files=tuple(published))
    monkeypatch.setitem(weights.WEIGHT_SETS, "biomedclip", patched)
    config = {"model_cfg": {"text_cfg": {"hf_model_name": "someone/else"}}}
    files["open_clip_config.json"] = json.dumps(config).encode()
    usb = tmp_path / "usb"
    usb.mkdir()
    for name, data in files.items():
        (usb / name).write_bytes(data)
    hub = tmp_path / "hub"
    with pytest.raises(WeightsError, match=f"{usb / 'open_clip_config.json'}: names text model"):
        fetch_weights("biomedclip", hub, usb)
    assert [p for p in hub.rglob("*") if p.is_file()] == []  # no file, no lock
    files["open_clip_config.json"] = biomedclip_files()["open_clip_config.json"]
    (usb / "open_clip_config.json").write_bytes(files["open_clip_config.json"])
    fetch_weights("biomedclip", hub, usb)  # the right config afterwards: accepted
    assert len(json.loads((hub / LOCK_NAME).read_text())["biomedclip"]) == len(files)


def test_weights_never_overwrite_a_file_they_did_not_record(tmp_path, monkeypatch):
    from timm.models.vision_transformer import VisionTransformer

    monkeypatch.setattr(VisionTransformer, "load_pretrained", lambda self, path, prefix="": None)
    dest = tmp_path / "weights"
    dest.mkdir()
    (dest / VIT_SAFETENSORS).write_bytes(b"my own conversion")
    good = tmp_path / "good.npz"
    np.savez(good, published=np.ones(4))
    with pytest.raises(WeightsError, match="not recorded .* as converted by `dfbk weights`"):
        fetch_weights("resvit-vit", dest, good)
    assert (dest / VIT_SAFETENSORS).read_bytes() == b"my own conversion"
    assert sorted(p.name for p in dest.iterdir()) == [VIT_SAFETENSORS]


# ----- translate -------------------------------------------------------------------------
@pytest.fixture
def volume(tmp_path):
    source = tmp_path / "t1n.nii.gz"
    write_volume(source, head_volume(), np.diag([2.0, 2.0, 2.0, 1.0]))
    return source


def test_singular_affine_is_one_line(tmp_path, capsys):
    data = head_volume().astype(np.int16)
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(np.int16)
    header["sform_code"], header["qform_code"] = 2, 0
    header["srow_x"], header["srow_y"], header["srow_z"] = [2, 0, 0, 0], [0, 2, 0, 0], [0] * 4
    source = tmp_path / "singular.nii.gz"
    nib.save(nib.Nifti1Image(data, None, header=header), str(source))
    assert np.linalg.det(nib.load(str(source)).affine[:3, :3]) == 0
    ckpt = make_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "out.nii.gz"
    argv = ["translate", "--checkpoint", str(ckpt), "-i", str(source), "-o", str(out)]
    assert main([*argv, "--device", "cpu"]) == 2
    assert f"{source}: its voxel-to-world affine" in one_line_error(capsys, "translate")
    assert not out.exists()


def test_absurd_voxel_size_is_refused_before_resampling(tmp_path, volume, monkeypatch, capsys):
    """2000 mm voxels at a 1 mm training spacing would resample each plane to 40000 x 52000
    pixels; the refusal comes before any resampling (which is made to fail if reached)."""
    ckpt = make_checkpoint(tmp_path / "model.pt")
    payload = load_checkpoint(ckpt)
    payload["source"]["spacing"] = payload["target"]["spacing"] = [1.0, 1.0]
    save_atomic(payload, ckpt)
    huge = tmp_path / "huge.nii.gz"
    write_volume(huge, head_volume(), np.diag([2000.0, 2000.0, 2000.0, 1.0]))

    def no_resampling(*args, **kwargs):
        raise AssertionError("resampled before refusing")

    monkeypatch.setattr(volume_translate.TrainingGrid, "plan", no_resampling)
    argv = ["translate", "--checkpoint", str(ckpt), "-i", str(huge), "-o", str(tmp_path / "o.nii")]
    assert main([*argv, "--device", "cpu"]) == 2
    line = one_line_error(capsys, "translate")
    assert f"{huge}: header voxel size 2000x2000 mm" in line and "over 8 times" in line
    monkeypatch.undo()
    info = translate_volume(ckpt, volume, tmp_path / "ok.nii.gz", device="cpu")  # 2 mm: fine
    assert info["resampled"] and info["grid"] == [40, 52]


def test_full_disk_is_one_line_and_leaves_no_file(tmp_path, volume):
    """The output file is larger than the file size limit (RLIMIT_FSIZE, as `ulimit -f`)."""
    ckpt = make_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "out" / "t2w.nii"  # uncompressed: 20x26x14 float32 is 29 kB

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, 16_384))

    command = [DFBK, "translate", "--checkpoint", str(ckpt), "-i", str(volume), "-o", str(out)]
    done = subprocess.run(
        [*command, "--device", "cpu"], capture_output=True, text=True, preexec_fn=limit
    )
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("dfbk ")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines == [f"dfbk translate: error: {out}: cannot write (File too large)"]
    assert list(out.parent.iterdir()) == []


def test_read_only_folder_is_one_line_and_leaves_no_file(tmp_path, volume, monkeypatch, capsys):
    """A folder the user may not write into. Running as root ignores permission bits, so the
    refusal the OS gives there (EACCES on creating the temporary file) is raised in place."""
    ckpt = make_checkpoint(tmp_path / "model.pt")
    locked = tmp_path / "locked"
    locked.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 (tempfile's name)
        if dir is not None and Path(dir) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(locked))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    argv = ["translate", "--checkpoint", str(ckpt), "-i", str(volume)]
    assert main([*argv, "-o", str(locked / "t2w.nii.gz"), "--device", "cpu"]) == 2
    line = one_line_error(capsys, "translate")
    assert f"{locked / 't2w.nii.gz'}: cannot write (Permission denied)" in line
    assert list(locked.iterdir()) == []


@pytest.fixture
def four_volumes(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(4):
        write_volume(folder / f"s{k}_t1n.nii.gz", head_volume(seed=k), np.diag([2, 2, 2, 1.0]))
    return folder


def test_killed_folder_translate_is_never_taken_as_finished(tmp_path, four_volumes, monkeypatch):
    """Interrupted after the first volume: the output folder does not exist (the finished
    volume waits in the hidden staging folder); a rerun translates only the other three."""
    ckpt = make_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "out"
    real, calls, kill = volume_translate.translate_with, [], {"armed": True}

    def killed_after_one(members, source, output, *args):
        calls.append(source.name)
        if len(calls) == 2 and kill.pop("armed", False):
            raise KeyboardInterrupt  # as Ctrl-C or a SLURM kill lands mid-folder
        return real(members, source, output, *args)

    monkeypatch.setattr(volume_translate, "translate_with", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        translate_folder(ckpt, four_volumes, out, device="cpu")
    assert not out.exists()
    staged = made_by(tmp_path / ".out.partial")  # says what it is: incomplete, 1 of 4 done
    assert staged["complete"] is False and list(staged["volumes"]) == ["s0_t1n.nii.gz"]
    calls.clear()
    infos = translate_folder(ckpt, four_volumes, out, device="cpu")
    assert calls == ["s1_t1n.nii.gz", "s2_t1n.nii.gz", "s3_t1n.nii.gz"]  # s0 kept
    names = [f"s{k}_t1n.nii.gz" for k in range(4)]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, MARKER])
    assert [i["output"] for i in infos] == [str(out / n) for n in names]
    assert made_by(out)["complete"] is True and not list(tmp_path.glob(".out*"))
    for name in names:
        single = tmp_path / f"single_{name}"
        translate_volume(ckpt, four_volumes / name, single, device="cpu")
        np.testing.assert_array_equal(
            nib.load(str(out / name)).get_fdata(), nib.load(str(single)).get_fdata()
        )


def test_folder_translate_never_writes_over_an_input_folder(tmp_path, four_volumes, capsys):
    """-o the parent of the input folder, which holds the user's own file of an output's name:
    refused; -o a folder of an earlier dfbk translate (no marker yet) is replaced."""
    ckpt = make_checkpoint(tmp_path / "model.pt")
    data = tmp_path
    (data / "s0_t1n.nii.gz").write_bytes(b"the user's own volume")
    argv = ["translate", "--checkpoint", str(ckpt), "-i", str(four_volumes), "--device", "cpu"]
    assert main([*argv, "-o", str(data)]) == 2
    assert "holds the input folder" in one_line_error(capsys, "translate")
    assert (data / "s0_t1n.nii.gz").read_bytes() == b"the user's own volume"
    older = tmp_path / "older"
    assert main([*argv, "-o", str(older)]) == 0
    (older / MARKER).unlink()  # what an earlier dfbk translate left: predictions only
    assert main([*argv, "-o", str(older)]) == 0 and made_by(older)["verb"] == "translate"
