"""The built-in method catalog: fresh, equal to the live classes, and enough to plan without torch.

dfbk/methods/catalog.json is what the Snakefile reads instead of importing the method modules;
these tests fail when it drifts from the code (regenerate: python -m dfbk.methods.catalog --write).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from dfbk.errors import ConfigError
from dfbk.methods import catalog
from dfbk.methods.registry import BUILTIN_METHODS, BUILTIN_STAGES, CPU_ONLY_METHODS
from dfbk.plan.checks import check_method_settings

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

# Imported at interpreter start (PYTHONPATH); any `import torch` afterwards raises, so a dry run
# that succeeds proves that planning never imported torch.
BLOCK_TORCH = textwrap.dedent(
    """
    import sys

    class _BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"planning imported {name}")
            return None

    sys.meta_path.insert(0, _BlockTorch())
    """
)


def test_catalog_file_is_what_the_registry_generates():
    expected = catalog.render(catalog.build_catalog())
    assert catalog.CATALOG_PATH.read_text() == expected, (
        f"{catalog.CATALOG_PATH} is stale: run `{catalog.REGENERATE}` and commit it"
    )


def test_catalog_lists_every_builtin_with_the_registry_tables():
    infos = catalog.load_catalog()
    assert set(infos) == set(BUILTIN_METHODS)
    for name, info in infos.items():
        assert info.module == BUILTIN_METHODS[name], name
        assert tuple(info.stages) == BUILTIN_STAGES.get(name, ()), name
        assert info.cpu_only == (name in CPU_ONLY_METHODS), name
        assert {"tiny", "paper"} <= set(info.presets), name


OVERRIDES = [
    {},
    {"steps": 7, "batch_size": 3},
    {"patch_size": 64},
    {"no_such_key": 1},
    {"augment": "rot90"},
    {"patch_size": 0},
    {"patch_size": True},
    {"steps": -5},
    {"steps": 0},
    {"steps": 2.5},
    {"batch_size": 0},
    {"batch_size": -3},
]


@pytest.mark.parametrize("name", sorted(BUILTIN_METHODS))
def test_catalog_resolves_hyperparameters_as_the_class_does(name):
    from dfbk.methods.registry import get_method_class

    cls, info = get_method_class(name), catalog.method_info(name)
    for preset in [*cls.PRESETS, "huge"]:
        for stage_overrides in [{}, *getattr(cls, "STAGES", {}).values()]:
            for overrides in OVERRIDES:
                merged = {**stage_overrides, **overrides}
                try:
                    expected = json.loads(json.dumps(cls.resolve_hparams(preset, merged)))
                except ConfigError as err:
                    with pytest.raises(ConfigError) as got:
                        info.resolve_hparams(preset, merged)
                    assert str(got.value) == str(err)
                else:
                    assert info.resolve_hparams(preset, merged) == expected, (preset, merged)


def test_a_stale_or_broken_catalog_is_refused_naming_the_file(tmp_path, monkeypatch):
    data = json.loads(catalog.CATALOG_PATH.read_text())
    del data["methods"]["pix2pix"]
    partial = tmp_path / "catalog.json"
    partial.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=f"{partial}: method catalog does not match.*--write"):
        catalog.load_catalog(partial)
    (tmp_path / "torn.json").write_text('{"version": 1, "meth')
    with pytest.raises(ConfigError, match="torn.json: unreadable method catalog"):
        catalog.load_catalog(tmp_path / "torn.json")
    monkeypatch.setattr(catalog, "CATALOG_PATH", partial)
    assert catalog.main(["--check"]) == 1


def test_a_declared_module_is_still_imported_and_checked(tmp_path, monkeypatch):
    """User code is not in the catalog: its own size rule applies at start-up."""
    (tmp_path / "odd_method.py").write_text(
        textwrap.dedent(
            """
            from dfbk.baselines.identity import Identity
            from dfbk.methods.registry import register_method

            @register_method("odd")
            class Odd(Identity):
                @classmethod
                def size_multiple(cls, hparams):
                    return 7
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config = copy.deepcopy(config)
    config["methods"] = {"odd": {"preset": "tiny", "module": "odd_method"}}
    with pytest.raises(ConfigError, match=r"does not suit methods\.odd .*divisible by 7"):
        check_method_settings(config)


def test_paper_dry_run_plans_without_importing_torch(tmp_path):
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path / "block"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    result = subprocess.run(
        [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path / "w"),
         "--configfile", str(REPO / "config" / "paper.yaml"), "--cores", "1", "-n", "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    probe = subprocess.run(
        [sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env
    )
    assert "planning imported torch" in probe.stderr  # the block works, so the dry run is proof
