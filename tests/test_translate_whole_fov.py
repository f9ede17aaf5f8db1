"""Whole-field-of-view translation: tiles of the training size, Gaussian blending, spacing.

A volume larger than the training size is covered completely; tile seams do not show (no jump
across a tile edge larger than the model's own variation between neighbouring voxels);
the input is resampled to the checkpoint's training spacing and back; the batch size does not
change a diffusion method's volume; NaN output and overwriting an input are refused.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_translate_noise import SMALL, TOLERANCE
from test_volume_translate import head_volume, make_checkpoint, write_volume

from dfbk.data.normalise import normalise_mr
from dfbk.errors import DataError, TrainingError
from dfbk.inference.predict import checkpoint_knowledge, predict_test_set
from dfbk.inference.sliding_window import Tiling, gaussian_weights, tile_starts, translate_tiled
from dfbk.inference.volume import summary_line, translate_volume
from dfbk.methods.registry import build_method
from dfbk.training.checkpoint import data_fingerprint, load_checkpoint, save_atomic

ONE_MM = np.diag([1.0, 1.0, 2.0, 1.0])  # RAS, 1 x 1 mm in-plane, 2 mm slices


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_tile_starts_cover_with_at_most_half_a_tile_between():
    for length, tile in [(240, 64), (64, 64), (65, 64), (97, 32), (20, 32)]:
        starts = tile_starts(length, tile)
        assert starts[0] == 0 and starts[-1] == max(0, length - tile)
        assert all(0 < b - a <= tile // 2 for a, b in zip(starts, starts[1:], strict=False))
    w = gaussian_weights((16, 24))
    assert w.shape == (16, 24) and w.min() > 0 and np.isclose(w.max(), w[7:9, 11:13].max())
    plan = Tiling.plan((20, 50), (32, 32))
    assert plan.canvas == (32, 50) and plan.pad == (6, 0) and len(plan.corners) == 3


class ZeroPaddedBlur(torch.nn.Module):
    """A 'model' with the border effect that makes tile seams: a 7x7 mean with zero padding."""

    SAMPLES_NOISE = False
    device = torch.device("cpu")

    def translate(self, source, knowledge=None, seeds=None):
        return F.avg_pool2d(source, 7, stride=1, padding=3, count_include_pad=True)


def column_jumps(image: np.ndarray) -> np.ndarray:
    """Mean |difference| between neighbouring columns: entry j is between columns j and j+1."""
    return np.abs(np.diff(image, axis=-1)).mean(axis=-2)


def tile_edges(length: int, tile: int) -> list[int]:
    """Column-jump indices where a tile starts or ends inside the image."""
    edges = set()
    for start in tile_starts(length, tile):
        edges |= {start - 1, start + tile - 1}
    return sorted(e for e in edges if 0 <= e < length - 1)


def test_blended_tiles_show_no_seam_where_hard_tiles_do():
    """Seam = what tiling adds to the neighbour-to-neighbour jumps of the model's own output."""
    yy, xx = np.mgrid[:40, :96]
    image = (0.5 + 0.3 * np.sin(xx / 7.0) * np.cos(yy / 5.0)).astype(np.float32)[None]
    model = ZeroPaddedBlur()
    blended, tiles = translate_tiled(model, image, torch.zeros(1), (40, 32), batch_size=3)
    assert tiles == 5 and blended.shape == image.shape
    pieces = [model.translate(torch.from_numpy(image[:, None, :, c : c + 32])) for c in (0, 32, 64)]
    hard = torch.cat(pieces, dim=-1)[:, 0].numpy()  # abutting tiles, no overlap, no blending
    whole = model.translate(torch.from_numpy(image[:, None]))[:, 0].numpy()  # no tiles at all
    rows, inside = slice(8, 32), slice(3, -3)  # away from the slice's own zero-padded border
    own = column_jumps(whole[0, rows])[inside]  # the model's own variation between neighbours
    seam_blended = np.abs(column_jumps(blended[0, rows])[inside] - own)
    seam_hard = np.abs(column_jumps(hard[0, rows])[inside] - own)
    assert seam_hard.max() > own.max()  # the criterion can fail: hard tiles show their seams
    assert seam_blended.max() <= 0.05 * np.median(own)


def test_a_volume_larger_than_the_training_size_is_covered_completely(tmp_path):
    data = head_volume((44, 58, 5), seed=2)  # 44 x 58 in-plane, tiles of 16 x 16
    source = tmp_path / "big.nii.gz"
    write_volume(source, data, ONE_MM)
    out = tmp_path / "out.nii.gz"
    info = translate_volume(
        make_checkpoint(tmp_path / "model.pt", size=(16, 16)), source, out, device="cpu"
    )
    got = nib.load(str(out)).get_fdata(dtype=np.float32)
    foreground = np.abs(data) > 0
    expected = normalise_mr(data, foreground)  # the identity method translates to its input
    np.testing.assert_allclose(got[foreground], expected[foreground], atol=1e-6)
    assert not got[:, :, ~foreground.any(axis=(0, 1))].any()  # slices without foreground
    assert info["field_of_view"] == [44, 58] and info["tile"] == [16, 16]
    assert info["tiles"] > 12 and not info["resampled"]
    line = summary_line(info)
    assert "whole field of view 44x58 voxels (44x58 mm)" in line and "tiles of 16x16" in line


def test_input_is_resampled_to_the_training_spacing_and_back(tmp_path):
    yy, xx = np.mgrid[:40, :48]
    plane = 200 + 100 * np.sin(xx / 6.0) * np.cos(yy / 8.0)
    data = np.repeat(plane[..., None], 3, axis=2).astype(np.float32)
    source = tmp_path / "fine.nii.gz"
    write_volume(source, data, ONE_MM)
    ckpt = make_checkpoint(tmp_path / "model.pt", size=(16, 16))
    payload = load_checkpoint(ckpt)
    payload["source"]["spacing"] = [2.0, 2.0, 2.0]
    save_atomic(payload, ckpt)
    out = tmp_path / "out.nii.gz"
    info = translate_volume(ckpt, source, out, device="cpu")
    assert info["resampled"] and info["grid"] == [20, 24] and info["spacing_mm"] == [2.0, 2.0]
    assert "resampled to 2x2 mm (20x24) and back" in summary_line(info)
    got = nib.load(str(out))
    assert got.shape == data.shape and np.array_equal(got.affine, nib.load(str(source)).affine)
    expected = normalise_mr(data, data > 0)
    error = np.abs(got.get_fdata(dtype=np.float32) - expected)[4:-4, 4:-4]
    assert error.mean() < 0.02  # a smooth image survives 1 -> 2 -> 1 mm
    payload["source"]["spacing"] = [1.005, 1.0, 2.0]  # within 1%: used as is
    save_atomic(payload, ckpt)
    assert not translate_volume(ckpt, source, out, device="cpu")["resampled"]


def narrow_resshift_checkpoint(path, size=(32, 32)):
    """model.pt of a narrow ResShift (the sampler, not the width, is under test)."""
    ckpt = make_checkpoint(path, size=size, name="resshift")
    payload = load_checkpoint(ckpt)
    torch.manual_seed(0)
    method = build_method("resshift", "tiny", SMALL["resshift"])
    payload["hparams"], payload["state"] = method.hparams, method.state_dict()
    return save_atomic(payload, ckpt)


def test_batch_size_does_not_change_a_tiled_diffusion_volume(tmp_path):
    data = head_volume((40, 36, 4), seed=4)
    source = tmp_path / "t1n.nii.gz"
    write_volume(source, data, ONE_MM)
    ckpt = narrow_resshift_checkpoint(tmp_path / "model.pt")
    volumes = []
    for batch_size in (1, 32):
        out = tmp_path / f"b{batch_size}.nii.gz"
        info = translate_volume(ckpt, source, out, batch_size=batch_size, device="cpu")
        volumes.append(nib.load(str(out)).get_fdata(dtype=np.float32))
    assert info["tiles"] > info["translated"]  # several tiles per slice
    assert np.isfinite(volumes[0]).all() and np.abs(volumes[0] - volumes[1]).max() <= TOLERANCE
    jumps = column_jumps(np.moveaxis(volumes[0], 2, 0)[:, 4:-4])  # along the second axis
    seams = tile_edges(36, 32)
    assert jumps[:, seams].max() <= np.delete(jumps, seams, axis=1).max()


def nan_checkpoint(path, size=(32, 32)):
    """A checkpoint whose weights are NaN (a diverged run)."""
    ckpt = narrow_resshift_checkpoint(path, size)
    payload = load_checkpoint(ckpt)
    payload["state"] = {k: v.float().fill_(float("nan")) if v.is_floating_point() else v
                        for k, v in payload["state"].items()}  # fmt: skip
    return save_atomic(payload, ckpt)


def test_nan_output_and_unsafe_output_paths_are_refused(tmp_path):
    data = head_volume((20, 24, 3))
    source = tmp_path / "t1n.nii.gz"
    write_volume(source, data, ONE_MM)
    out = tmp_path / "t2w.nii.gz"
    ckpt = nan_checkpoint(tmp_path / "model.pt")
    with pytest.raises(TrainingError, match=f"{ckpt}: .* NaN or infinite .*nothing written"):
        translate_volume(ckpt, source, out, device="cpu")
    assert not out.exists() and not list(tmp_path.glob(".*"))
    plain = make_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(DataError, match="is the source volume; refusing to overwrite"):
        translate_volume(plain, source, tmp_path / "." / "t1n.nii.gz", device="cpu")
    (tmp_path / "folder.nii.gz").mkdir()
    with pytest.raises(DataError, match="folder.nii.gz: is a folder"):
        translate_volume(plain, source, tmp_path / "folder.nii.gz", device="cpu")
    assert nib.load(str(source)).get_fdata().max() == data.max()  # input untouched


def store_checkpoint(ckpt, store, split, **hparams):
    """Make `ckpt` a model.pt of the phantom store's t1n -> t2w, tiles of 32 over 48x48."""
    payload = load_checkpoint(ckpt)
    payload["dataset"], payload["direction"] = "phantom", "t1n-to-t2w"
    payload["source"], payload["target"] = store.contract("t1n"), store.contract("t2w")
    payload["hparams"] = {**payload["hparams"], "patch_size": 32, **hparams}
    payload["fingerprint"] = data_fingerprint(store.root, split)
    return save_atomic(payload, ckpt)


def test_predict_gives_the_same_volumes_for_batch_size_1_and_32(phantom_store, tmp_path):
    store, split = phantom_store
    ckpt = narrow_resshift_checkpoint(tmp_path / "model.pt", store.size)
    store_checkpoint(ckpt, store, split, num_steps=2)  # 2 steps: cost, not logic
    volumes = []
    for batch_size in (1, 32):
        out = tmp_path / f"b{batch_size}"
        index = predict_test_set(ckpt, store.root, split, out, batch_size, device="cpu")
        volumes += [nib.load(str(out / f"{s}.nii.gz")).get_fdata() for s in index["subjects"]]
    half = len(volumes) // 2
    assert index["tile"] == [32, 32] and index["slice_size"] == [48, 48]
    for one, many in zip(volumes[:half], volumes[half:], strict=True):
        assert one.shape[:2] == (48, 48) and np.abs(one - many).max() <= TOLERANCE


def test_slice_tiling_runs_each_whole_slice_padded_to_the_networks_multiple(
    phantom_store, tmp_path
):
    """tiling slice: one tile per slice, the slice's sides rounded up to the size multiple the
    config check uses for this network (never below the training patch), recorded in
    predictions.json; an unknown tiling is refused."""
    from dfbk.methods.geometry import size_multiple
    from dfbk.methods.resshift import ResShift

    store, split = phantom_store
    ckpt = narrow_resshift_checkpoint(tmp_path / "model.pt", store.size)
    store_checkpoint(ckpt, store, split, num_steps=2)
    index = predict_test_set(
        ckpt, store.root, split, tmp_path / "slice", device="cpu", tiling="slice"
    )
    multiple = size_multiple(ResShift, load_checkpoint(ckpt)["hparams"])
    expected = [max(32, -(-n // multiple) * multiple) for n in store.size]
    assert index["tiling"] == "slice" and index["tile"] == expected
    for subject in index["subjects"]:
        volume = nib.load(str(tmp_path / "slice" / f"{subject}.nii.gz")).get_fdata()
        assert volume.shape[:2] == tuple(store.size) and np.isfinite(volume).all()
    with pytest.raises(ValueError, match="tiling must be one of patch, slice; got 'tiles'"):
        predict_test_set(ckpt, store.root, split, tmp_path / "bad", device="cpu", tiling="tiles")
    assert not (tmp_path / "bad").exists()


def test_predict_refuses_nan_and_keeps_nothing(phantom_store, tmp_path):
    store, split = phantom_store
    ckpt = store_checkpoint(nan_checkpoint(tmp_path / "model.pt", size=store.size), store, split)
    out = tmp_path / "predictions"
    with pytest.raises(TrainingError, match=f"{ckpt}: .* of subject .* NaN or infinite"):
        predict_test_set(ckpt, store.root, split, out, device="cpu")
    assert not out.exists() and not list(tmp_path.glob(".predictions*"))


def test_knowledge_is_read_from_either_checkpoint_layout():
    tokens = torch.randn(5, 8)
    mask = torch.tensor([True, True, True, False, False])
    new = checkpoint_knowledge({"knowledge_tokens": tokens, "knowledge_mask": mask})
    old = checkpoint_knowledge({"knowledge_embedding": tokens})
    assert torch.equal(new.tokens, tokens) and torch.equal(new.mask, mask)
    assert torch.equal(old.tokens, tokens) and old.mask is None
    assert checkpoint_knowledge({"knowledge_embedding": None}) is None
