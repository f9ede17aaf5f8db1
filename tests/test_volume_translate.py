"""Whole-volume `dfbk translate`: any orientation in, the input's grid, affine and header out."""

import nibabel as nib
import numpy as np
import pytest
import torch

from dfbk.cli import build_parser
from dfbk.data.normalise import ct_to_hu, normalisation_name, normalise_ct, normalise_mr
from dfbk.errors import DataError, DfbkError
from dfbk.inference.volume import translate_volume
from dfbk.knowledge import KnowledgeEmbedding, prompt_hash, save_knowledge
from dfbk.methods.registry import build_method
from dfbk.training.checkpoint import recipe, save_atomic
from dfbk.training.trainer import TrainSpec

torch.set_num_threads(1)

# Voxel axes -> world: i -> posterior, j -> superior, k -> left (stored "PSL", not RAS).
PSL = np.array(
    [[0.0, 0.0, -3.0, 90.0], [-2.0, 0.0, 0.0, 100.0], [0.0, 2.5, 0.0, -50.0], [0, 0, 0, 1]]
)


def contract(modality, size):
    return {
        "modality": modality,
        "range": [0.0, 1.0],
        "norm": normalisation_name(modality),
        "size": list(size),
    }


def make_checkpoint(
    path, direction="t1n-to-t2w", size=(32, 32), knowledge=None, kind="inference", name="identity"
):
    """An untrained checkpoint laid out as the trainer's `_finish` writes model.pt."""
    method = build_method(name, "tiny")
    spec = TrainSpec(  # the real spec, so the recipe follows the trainer's fields
        dataset="synthetic",
        direction=direction,
        method=name,
        seed=0,
        store_dir=path.parent,
        split_path=path.parent,
        out_dir=path.parent,
        checkpoint_dir=path.parent,
        preset="tiny",
    )
    source, target = direction.split("-to-")
    payload = {
        **recipe(method, spec),
        "source": contract(source, size),
        "target": contract(target, size),
        "knowledge": None if knowledge is None else knowledge.info(),
        "kind": kind,
        "step": 0,
        "state": method.state_dict(),
        **({} if knowledge is None else knowledge.as_knowledge().to_payload()),
    }
    return save_atomic(payload, path)


def head_volume(shape=(20, 26, 14), seed=0, background=0.0):
    """A noisy ellipsoid 'head' on a constant background, in voxel (stored) coordinates."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid**2).sum(0) < 0.8
    data = np.full(shape, background, dtype=np.float32)
    data[inside] = rng.uniform(100, 900, inside.sum()).round()
    return data


def write_volume(path, data, affine=PSL):
    image = nib.Nifti1Image(data.astype(np.int16), affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=2)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_slope_inter(1.0, 0.0)
    nib.save(image, str(path))
    return nib.load(str(path))


@pytest.fixture
def mr_input(tmp_path):
    data = head_volume()
    return tmp_path / "t1n.nii.gz", write_volume(tmp_path / "t1n.nii.gz", data), data


def test_identity_round_trip_keeps_grid_affine_header(tmp_path, mr_input):
    source, image, data = mr_input
    assert nib.aff2axcodes(image.affine) == ("P", "S", "L")
    out = tmp_path / "out" / "t2w.nii.gz"
    info = translate_volume(
        make_checkpoint(tmp_path / "model.pt"), source, out, batch_size=4, device="cpu"
    )
    result = nib.load(str(out))
    assert result.shape == image.shape and result.get_data_dtype() == np.float32
    assert np.array_equal(result.affine, image.affine)
    for field in ("qform_code", "sform_code", "pixdim", "xyzt_units", "dim"):
        assert np.array_equal(result.header[field], image.header[field]), field
    expected = normalise_mr(data, np.abs(data) > 0)
    np.testing.assert_array_equal(result.get_fdata(dtype=np.float32), expected)
    assert info["orientation"] == "PSL" and info["translated"] < info["slices"] == 26
    assert not list(out.parent.glob(".*tmp*"))


def test_a_network_method_translates_on_the_input_grid(tmp_path, mr_input):
    source, image, _ = mr_input
    out = tmp_path / "t2w.nii.gz"
    ckpt = make_checkpoint(tmp_path / "model.pt", size=(64, 64), name="pix2pix")
    translate_volume(ckpt, source, out, batch_size=8, device="cpu")
    result = nib.load(str(out))
    values = result.get_fdata(dtype=np.float32)
    assert result.shape == image.shape and np.isfinite(values).all()
    assert 0.0 <= values.min() and values.max() <= 1.0 and values.any()
    assert result.header["descrip"].tobytes().startswith(b"dfbk pix2pix t1n-to-t2w")


def test_ct_target_is_written_in_hounsfield_units(tmp_path, mr_input):
    source, _, data = mr_input
    out = tmp_path / "ct.nii.gz"
    translate_volume(make_checkpoint(tmp_path / "model.pt", "t1n-to-ct"), source, out, device="cpu")
    hu = nib.load(str(out)).get_fdata(dtype=np.float32)
    np.testing.assert_allclose(hu, ct_to_hu(normalise_mr(data, np.abs(data) > 0)), atol=1e-3)
    assert hu.min() == -1024.0 and hu.max() == pytest.approx(3000.0)


def test_ct_source_uses_the_hu_window(tmp_path):
    data = head_volume(background=-1024.0) - 200.0
    source = tmp_path / "ct.nii.gz"
    write_volume(source, data)
    out = tmp_path / "t1n.nii.gz"
    translate_volume(make_checkpoint(tmp_path / "model.pt", "ct-to-t1n"), source, out, device="cpu")
    got = nib.load(str(out)).get_fdata(dtype=np.float32)
    np.testing.assert_allclose(got, normalise_ct(data), atol=1e-6)


def test_mask_sets_the_percentile_foreground(tmp_path, mr_input):
    source, image, data = mr_input
    mask = np.zeros(data.shape, dtype=np.uint8)
    mask[5:15, 8:18, 3:11] = 1
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, image.affine), str(mask_path))
    out = tmp_path / "t2w.nii.gz"
    translate_volume(
        make_checkpoint(tmp_path / "model.pt"), source, out, device="cpu", mask=mask_path
    )
    got = nib.load(str(out)).get_fdata(dtype=np.float32)
    keep = np.zeros(data.shape, bool)
    keep[:, 8:18, :] = True  # axial slices (stored axis j) touching the mask are translated
    np.testing.assert_array_equal(got[keep], normalise_mr(data, mask > 0)[keep])
    assert not got[~keep].any()
    nib.save(nib.Nifti1Image(mask[:-1], image.affine), str(mask_path))
    with pytest.raises(DataError, match=f"{mask_path}: mask shape/affine differ"):
        translate_volume(tmp_path / "model.pt", source, out, device="cpu", mask=mask_path)


def test_bad_inputs_are_dfbk_errors_naming_the_file(tmp_path, mr_input):
    source, _, _ = mr_input
    ckpt = make_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "o.nii.gz"
    four_d = tmp_path / "dwi4d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6, 3), np.float32), np.eye(4)), str(four_d))
    with pytest.raises(DataError, match=f"{four_d}: source must be 3-D"):
        translate_volume(ckpt, four_d, out)
    with pytest.raises(DataError, match=f"{tmp_path / 'absent.nii.gz'}: file not found"):
        translate_volume(ckpt, tmp_path / "absent.nii.gz", out)
    with pytest.raises(DfbkError, match=f"{tmp_path / 'none.pt'}: checkpoint not found"):
        translate_volume(tmp_path / "none.pt", source, out)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(DfbkError, match="foreign.pt: not a dfbk checkpoint"):
        translate_volume(tmp_path / "foreign.pt", source, out)
    state = make_checkpoint(tmp_path / "last.pt", kind="training-state")
    with pytest.raises(DataError, match="last.pt: a training state"):
        translate_volume(state, source, out)
    with pytest.raises(DataError, match="must end in .nii"):
        translate_volume(ckpt, source, tmp_path / "o.mha")
    assert not out.exists()


def test_knowledge_file_must_fit_the_checkpoint(tmp_path, mr_input):
    source, _, _ = mr_input
    prompts = ["axial T2-weighted brain MRI"]

    def knowledge(encoder, width):
        states = torch.nn.functional.normalize(torch.ones(1, 3, width), dim=-1)
        return KnowledgeEmbedding(
            token_states=states,
            token_mask=torch.ones(1, 3, dtype=torch.bool),
            pooled=states[:, 0],
            encoder=encoder,
            encoder_version="v",
            prompt_hash=prompt_hash(prompts),
            prompts=prompts,
            requested=encoder,
        )

    trained = knowledge("minilm", 384)
    ckpt = make_checkpoint(tmp_path / "model.pt", knowledge=trained)
    out = tmp_path / "t2w.nii.gz"
    good = save_knowledge(trained, tmp_path / "good.pt")
    translate_volume(ckpt, source, out, device="cpu", knowledge=good)
    other = save_knowledge(knowledge("biomedclip", 512), tmp_path / "other.pt")
    with pytest.raises(DataError, match="encoder biomedclip, but .* trained with minilm"):
        translate_volume(ckpt, source, out, device="cpu", knowledge=other)
    plain = make_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(DataError, match="trained without knowledge"):
        translate_volume(plain, source, out, device="cpu", knowledge=good)


def test_cli_verb_runs_and_documents_itself(tmp_path, mr_input, capsys):
    source, _, _ = mr_input
    parser = build_parser()
    out = tmp_path / "t2w.nii.gz"
    args = parser.parse_args(
        [
            "translate",
            "--checkpoint",
            str(make_checkpoint(tmp_path / "m.pt")),
            "--source",
            str(source),
            "--output",
            str(out),
            "--device",
            "cpu",
        ]
    )
    args.func(args)
    assert out.exists() and "identity t1n->t2w" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["translate", "--help"])
    assert "example:" in capsys.readouterr().out
