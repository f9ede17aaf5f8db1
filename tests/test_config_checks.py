"""Start-up config checks: a value no job could run with is refused at once, in one line that
names the key, by the schema or by dfbk/plan/checks.py, before any job is scheduled."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO

from dfbk.errors import ConfigError
from dfbk.methods.base import Knowledge
from dfbk.methods.geometry import size_multiple
from dfbk.methods.registry import build_method, list_methods
from dfbk.plan.checks import check_config, check_method_settings, check_schema

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def small_config() -> dict:
    """A phantom grid with a U-Net, a Swin-UNet with DFB and a ResNet method; ablation too."""
    return {
        "datasets": {
            "phantom": {
                "size": [64, 64],
                "split": {"seed": 0, "fractions": [0.6, 0.15, 0.25]},
                "directions": ["t1n-to-t2w"],
            }
        },
        "methods": {
            "identity": {"preset": "tiny"},
            "pix2pix": {"preset": "tiny"},
            "dfbk": {"preset": "tiny"},
        },
        "ablation": {
            "directions": {"phantom": ["t1n-to-t2w"]},
            "methods": {"revgan": {"preset": "tiny"}},
        },
    }


def refused(config: dict) -> str:
    """The one-line message the start-up checks give, in the Snakefile's order."""
    with pytest.raises(ConfigError) as info:
        check_schema(config, SCHEMA)
        check_config(config)
        check_method_settings(config)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_shipped_configs_pass():
    for name in ("config.yaml", "paper.yaml"):
        config = yaml.safe_load((REPO / "config" / name).read_text())
        check_schema(config, SCHEMA)
        check_config(config)
        check_method_settings(config)
    check_method_settings(small_config())


def test_a_patch_trained_method_takes_any_slice_size_its_patch_fits():
    """pix2pix-tiny needs sides divisible by 64; trained on 64x64 patches it only ever runs on
    64x64 tiles (or whole slices padded to a multiple), so a 96x96 slice is fine."""
    config = small_config()
    config["datasets"]["phantom"]["size"] = [96, 96]
    for method in ("pix2pix", "dfbk"):
        config["methods"][method]["overrides"] = {"patch_size": 64}
    config["ablation"]["methods"]["revgan"]["overrides"] = {"patch_size": 64}
    check_method_settings(config)
    config["methods"]["pix2pix"]["overrides"] = {}
    assert "96x96 does not suit methods.pix2pix" in refused(config)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["methods"]["pix2pix"].update(overrides={"steps": 0}),
         r"^methods\.pix2pix\.overrides: steps must be an integer >= 1; got 0$"),
        (lambda c: c["methods"]["pix2pix"].update(overrides={"steps": -5}),
         r"^methods\.pix2pix\.overrides\.steps: -5 is less than the minimum of 0$"),
        (lambda c: c["methods"]["dfbk"].update(overrides={"batch_size": 0}),
         r"^methods\.dfbk\.overrides\.batch_size: 0 is less than the minimum of 1$"),
        (lambda c: c["ablation"]["methods"]["revgan"].update(overrides={"batch_size": -1}),
         r"^ablation\.methods\.revgan\.overrides\.batch_size: -1 is less than the minimum of 1$"),
        (lambda c: c["methods"]["dfbk"].update(overrides={"steps": 1.5}),
         r"^methods\.dfbk\.overrides\.steps: 1\.5 is not of type 'integer'$"),
        (lambda c: c["methods"]["pix2pix"].update(overrides={"stepz": 3}),
         r"^methods\.pix2pix: method 'pix2pix': unknown hyperparameter 'stepz' in overrides"),
        (lambda c: c["methods"]["pix2pix"].update(stages=["warmup"]),
         r"^methods\.pix2pix\.stages: method 'pix2pix' has no stage 'warmup'; stages: none$"),
        (lambda c: c["methods"]["pix2pix"].update(preset="huge"),
         r"^methods\.pix2pix: method 'pix2pix' has no preset 'huge'"),
        (lambda c: c["datasets"]["phantom"]["split"].update(fractions=[0, 0, 0]),
         r"^datasets\.phantom\.split\.fractions\[\d\]: 0 is less than or equal to the minimum"),
        (lambda c: c["datasets"]["phantom"]["split"].update(fractions=[0.8, 0.1, 0.0]),
         r"^datasets\.phantom\.split\.fractions\[2\]: 0\.0 is less than or equal to the minimum"),
        (lambda c: c["datasets"]["phantom"]["split"].update(fractions=[0.5, 0.5, 0.5]),
         r"^datasets\.phantom\.split\.fractions: fractions must sum to 1; got \[0\.5, 0\.5, 0"),
        (lambda c: c["datasets"]["phantom"].update(size=[63, 63]),
         r"^datasets\.phantom\.size: 63x63 does not suit methods\.pix2pix \(preset 'tiny'\), "
         r"whose network needs sides divisible by 64$"),
        (lambda c: c["methods"].pop("pix2pix") and c["datasets"]["phantom"].update(size=[68, 68]),
         r"^datasets\.phantom\.size: 68x68 does not suit methods\.dfbk .*divisible by 8$"),
        (lambda c: c["methods"]["pix2pix"].update(overrides={"patch_size": 48}),
         r"^methods\.pix2pix\.overrides\.patch_size: 48 must be a multiple of 64 and at most"),
        (lambda c: c["methods"]["dfbk"].update(overrides={"patch_size": 72}),
         r"^methods\.dfbk\.overrides\.patch_size: 72 must be .* at most the slice side 64"),
        (lambda c: c["methods"]["pix2pix"].update(overrides={"patch_size": 0}),
         r"^methods\.pix2pix\.overrides\.patch_size: 0 is less than the minimum of 1$"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_in_one_line_naming_the_key(change, message):
    config = copy.deepcopy(small_config())
    change(config)
    assert refused(config) == refused(config)  # deterministic
    with pytest.raises(ConfigError, match=message):
        check_schema(config, SCHEMA)
        check_config(config)
        check_method_settings(config)


def test_a_method_without_training_may_keep_zero_steps_but_no_method_negative():
    config = small_config()
    config["methods"]["identity"]["overrides"] = {"steps": 0}
    check_method_settings(config)
    config["methods"]["identity"]["overrides"] = {"batch_size": 0}
    assert refused(config).startswith("methods.identity.overrides.batch_size: 0 is less")


def test_a_size_is_only_checked_against_methods_that_run_on_the_dataset():
    config = small_config()
    config["datasets"]["phantom"]["size"] = [48, 48]  # pix2pix (64) would refuse it
    config["datasets"]["brats2023"] = {"size": [256, 256], "directions": ["t1n-to-t2w"]}
    config["methods"]["pix2pix"]["directions"] = ["t1n-to-t2w"]
    with pytest.raises(ConfigError, match=r"datasets\.phantom\.size: 48x48 .*pix2pix"):
        check_method_settings(config)
    config["datasets"]["phantom"]["directions"] = ["t1n-to-ct"]  # pix2pix now on BraTS only
    config["ablation"]["directions"] = {}
    check_method_settings(config)


@pytest.mark.parametrize("name", list_methods())
def test_size_multiple_is_exactly_what_the_tiny_network_needs(name):
    """A side that is a multiple runs; half a multiple more (or one more) does not."""
    torch.manual_seed(0)
    method = build_method(name, "tiny").eval()
    multiple = size_multiple(type(method), method.hparams)
    dim = method.hparams.get("knowledge_dim")
    knowledge = Knowledge(torch.randn(3, dim)) if dim and method.hparams.get("kg") else None
    side = multiple * max(1, -(-32 // multiple))
    assert method.translate(torch.rand(1, 1, side, side), knowledge).shape[-2:] == (side, side)
    if multiple == 1:
        return
    odd = side + multiple // 2
    try:
        out = method.translate(torch.rand(1, 1, odd, odd), knowledge)
    except (RuntimeError, ValueError):
        return
    assert out.shape[-2:] != (odd, odd), f"{name} takes {odd}x{odd}: multiple {multiple} too strict"


def test_snakemake_stops_before_any_job_with_the_one_line_message(tmp_path):
    config = small_config()
    config["results_dir"] = str(tmp_path / "results")
    config["datasets"]["phantom"]["size"] = [63, 63]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        [SNAKEMAKE, "--profile", "profiles/default", "--configfile", str(path), "-n"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "datasets.phantom.size: 63x63 does not suit methods." in output
    assert "Job stats" not in output and "rule train_method" not in output
