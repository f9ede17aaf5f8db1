"""The `dfbk` command line: method listing, complete --help, defaults that agree with the
config schema, one-line start-up errors, and `dfbk translate` over folders and ensembles."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO
from test_volume_translate import head_volume, make_checkpoint, write_volume

from dfbk import cli
from dfbk.errors import DataError, DfbkError
from dfbk.inference.volume import translate_folder, translate_volume
from dfbk.methods.catalog import load_catalog
from dfbk.methods.registry import BUILTIN_METHODS

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def schema_default(*keys: str):
    """Default of a schema property, following `properties` (and a dataset's entry schema)."""
    node = SCHEMA
    for key in keys:
        props = node.get("properties") or node.get("additionalProperties", {}).get("properties")
        node = props[key]
    return node["default"]


def verb_parser(verb: str):
    return cli.build_parser()._subparsers._group_actions[0].choices[verb]


def test_list_methods_shows_presets_counts_and_descriptions(capsys):
    assert cli.main(["list-methods"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in out[1:]}
    assert set(rows) == set(BUILTIN_METHODS)
    catalog = load_catalog()
    for name, info in catalog.items():
        assert info.description in rows[name]
        assert set(info.parameters) == set(info.presets), name
        for preset in info.presets:
            assert f"{preset} " in rows[name]
    # counts are the live networks' (meta device): spot-check one against a real build
    from dfbk.methods.base import count_parameters
    from dfbk.methods.registry import build_method

    assert catalog["pix2pix"].parameters["tiny"] == count_parameters(
        build_method("pix2pix", "tiny")
    )
    assert catalog["identity"].parameters == {"tiny": 0, "paper": 0}
    assert catalog["dfbk"].parameters["paper"] > 50 * catalog["dfbk"].parameters["tiny"]
    assert cli.main(["list-methods", "--names-only"]) == 0
    assert capsys.readouterr().out.split() == sorted(BUILTIN_METHODS)


def test_every_verb_has_a_description_and_an_example():
    verbs = cli.build_parser()._subparsers._group_actions[0].choices
    assert {"list-methods", "status", "translate", "train", "prepare"} <= set(verbs)
    for name, parser in verbs.items():
        text = parser.format_help()
        assert parser.description, name
        assert "example:" in text and f"dfbk {name}" in text.split("example:", 1)[1], name


def test_the_tiling_names_are_the_schema_enum():
    """`dfbk predict --tiling` offers exactly translate.tiling's enum, and nothing else."""
    tiling = SCHEMA["properties"]["translate"]["properties"]["tiling"]
    predict = verb_parser("predict")
    args = ["m.pt", "store", "split.json", "out"]
    for name in tiling["enum"]:
        assert predict.parse_args([*args, "--tiling", name]).tiling == name
    with pytest.raises(SystemExit):
        predict.parse_args([*args, "--tiling", "tiles"])


@pytest.mark.parametrize(
    ("verb", "dest", "keys"),
    [
        ("phantom", "subjects", ("datasets", "phantom", "subjects")),
        ("phantom", "voxel_mm", ("datasets", "phantom", "voxel_mm")),
        ("prepare", "min_foreground", ("datasets", "min_foreground")),
        ("prepare", "on_bad_case", ("datasets", "on_bad_case")),
        ("split", "seed", ("datasets", "split", "seed")),
        ("split", "fractions", ("datasets", "split", "fractions")),
        ("train", "checkpoint_every", ("train", "checkpoint_every")),
        ("train", "evaluate", ("train", "evaluate_checkpoint")),
        ("track", "experiment", ("tracking", "experiment")),
        ("predict", "tiling", ("translate", "tiling")),
        ("prepare", "size", ("datasets", "size")),
        ("predict", "batch_size", ("translate", "batch_size")),
        ("translate", "batch_size", ("translate", "batch_size")),
        ("phantom", "seed", ("datasets", "phantom", "seed")),
        ("train", "preset", ("methods", "preset")),
        ("train", "device", ("train", "device")),
        ("train", "gpus", ("train", "gpus")),
        ("knowledge", "encoder", ("knowledge", "encoder")),
    ],
)
def test_cli_defaults_are_the_schema_defaults(verb, dest, keys):
    assert verb_parser(verb).get_default(dest) == schema_default(*keys)


TRAIN = ["train", "phantom", "t1n-to-t2w", "dfbk", "--store", "s", "--split", "x"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--overrides", '{"steps": 2,}'], "--overrides: not valid JSON"),
        (["--overrides", "[1]"], "--overrides: must be a JSON object"),
        (["--speed", "tf32"], "--speed: not valid JSON"),
        (["--preset", "huge"], "--preset: method 'dfbk' has no preset 'huge'; known: tiny, paper"),
        (["--overrides", '{"stepz": 5}'], "unknown hyperparameter 'stepz'"),
        (["--overrides", '{"steps": -5}'], "--overrides: method 'dfbk'"),
    ],
)
def test_bad_train_options_are_one_line_errors_before_any_work(tmp_path, capsys, extra, message):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    argv = [*TRAIN, "--out-dir", str(out), "--checkpoint-dir", str(ckpt), *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dfbk train: error: ") and message in err
    assert not out.exists() and not ckpt.exists()  # refused before the lock or any output


def test_unknown_method_is_named_at_start_up(tmp_path, capsys):
    argv = [*TRAIN, "--out-dir", str(tmp_path / "o"), "--checkpoint-dir", str(tmp_path / "c")]
    argv[3] = "dfbk-typo"
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown method 'dfbk-typo'; known: dea_gan, dfbk," in err


# ----- translate: folders and ensembles -----------------------------------------------------
@pytest.fixture
def volumes(tmp_path):
    """Two input volumes in a folder, plus a non-NIfTI file that must be ignored."""
    folder = tmp_path / "in"
    folder.mkdir()
    for k, name in enumerate(("a_t1n.nii.gz", "b_t1n.nii")):
        write_volume(folder / name, head_volume(seed=k))
    (folder / "notes.txt").write_text("not an image")
    return folder


def _pix2pix(path, seed):
    torch.manual_seed(seed)  # two different untrained networks: members that disagree
    return make_checkpoint(path, size=(64, 64), name="pix2pix")


def test_folder_in_folder_out_with_same_names(tmp_path, volumes, capsys):
    out = tmp_path / "out"
    ckpt = make_checkpoint(tmp_path / "identity.pt")
    argv = ["translate", "--checkpoint", str(ckpt), "-i", str(volumes), "-o", str(out)]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    names = sorted(p.name for p in out.iterdir())  # and the marker naming its maker
    assert names == [".dfbk-output.json", "a_t1n.nii.gz", "b_t1n.nii"]
    assert len(capsys.readouterr().out.splitlines()) == 2
    for name in ("a_t1n.nii.gz", "b_t1n.nii"):  # each is what the single-file path writes
        translate_volume(ckpt, volumes / name, tmp_path / name, device="cpu")
        single = nib.load(str(tmp_path / name)).get_fdata(dtype=np.float32)
        np.testing.assert_array_equal(nib.load(str(out / name)).get_fdata(dtype=np.float32), single)
    with pytest.raises(DataError, match="is the input folder"):
        translate_folder(ckpt, volumes, volumes, device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"{empty}: no .nii"):
        translate_folder(ckpt, empty, out, device="cpu")
    masks = tmp_path / "masks"
    masks.mkdir()
    with pytest.raises(DataError, match="a_t1n.nii.gz: no mask of this name"):
        translate_folder(ckpt, volumes, out, device="cpu", mask_dir=masks)


def test_ensemble_is_the_mean_of_its_members(tmp_path, volumes):
    source = volumes / "a_t1n.nii.gz"
    members = [_pix2pix(tmp_path / f"seed-{k}.pt", k) for k in range(2)]
    singles = []
    for k, ckpt in enumerate(members):
        translate_volume(ckpt, source, tmp_path / f"single-{k}.nii.gz", batch_size=8, device="cpu")
        singles.append(nib.load(str(tmp_path / f"single-{k}.nii.gz")).get_fdata(dtype=np.float64))
    assert np.abs(singles[0] - singles[1]).max() > 1e-3  # the members really differ
    out = tmp_path / "mean.nii.gz"
    info = translate_volume(members, source, out, batch_size=8, device="cpu", ensemble="mean")
    got = nib.load(str(out)).get_fdata(dtype=np.float64)
    # float32 outputs in [0, 1]: the mean of two roundings is within one float32 ulp of 1
    np.testing.assert_allclose(got, (singles[0] + singles[1]) / 2, rtol=0, atol=2**-23)
    assert info["members"] == 2


def test_ensemble_members_must_agree(tmp_path, volumes):
    source, out = volumes / "a_t1n.nii.gz", tmp_path / "o.nii.gz"
    t2w = make_checkpoint(tmp_path / "t2w.pt")
    ct = make_checkpoint(tmp_path / "ct.pt", "t1n-to-ct")
    with pytest.raises(DfbkError, match="2 checkpoints need --ensemble mean"):
        translate_volume([t2w, t2w], source, out, device="cpu")
    with pytest.raises(DataError, match=f"{ct}: direction t1n-to-ct differs from {t2w}'s"):
        translate_volume([t2w, ct], source, out, device="cpu", ensemble="mean")
    pix = _pix2pix(tmp_path / "pix.pt", 0)
    with pytest.raises(DataError, match=f"{pix}: method pix2pix differs"):
        translate_volume([t2w, pix], source, out, device="cpu", ensemble="mean")
    assert not out.exists()


def test_translate_cli_takes_several_checkpoints(tmp_path, volumes, capsys):
    ckpts = [str(make_checkpoint(tmp_path / f"s{k}.pt")) for k in range(2)]
    out = tmp_path / "o.nii.gz"
    argv = ["translate", "--checkpoint", *ckpts, "--source", str(volumes / "b_t1n.nii")]
    assert cli.main([*argv, "--output", str(out), "--device", "cpu"]) == 2
    assert "--ensemble mean" in capsys.readouterr().err
    assert cli.main([*argv, "--output", str(out), "--device", "cpu", "--ensemble", "mean"]) == 0
    assert "(mean of 2 checkpoints)" in capsys.readouterr().out
    assert nib.load(str(out)).shape == head_volume().shape
