"""`dfbk weights` against a local HTTP server (127.0.0.1) and local files: the Hugging Face cache
layout the BiomedCLIP loader reads offline, pinned and lock-recorded SHA-256s, --from-file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from dfbk.cli import main
from dfbk.data.sources import weights
from dfbk.data.sources.weights import LOCK_NAME, TEXT_REPO, WeightsError, fetch_weights


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = self.server.files.get(self.path)  # type: ignore[attr-defined]
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        self.send_response(404 if body is None else 200)
        body = b"not found" if body is None else body
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.requests = {}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serve(monkeypatch, server, name: str, contents: dict[str, bytes], pin: bool) -> None:
    """Point weight set `name` at the local server, serving `contents` by file name."""
    base = f"http://127.0.0.1:{server.server_address[1]}"
    weight_set = weights.WEIGHT_SETS[name]
    files = []
    for item in weight_set.files:
        path = urlsplit(item.url).path
        server.files[path] = contents[item.name]
        sha = _sha(contents[item.name]) if pin and item.sha256 else None
        files.append(dataclasses.replace(item, url=base + path, sha256=sha, size=None))
    patched = dataclasses.replace(weight_set, files=tuple(files))
    monkeypatch.setitem(weights.WEIGHT_SETS, name, patched)


def biomedclip_files() -> dict[str, bytes]:
    config = {"model_cfg": {"text_cfg": {"hf_model_name": TEXT_REPO}}}
    return {
        "open_clip_config.json": json.dumps(config).encode(),
        "open_clip_pytorch_model.bin": bytes(range(256)) * 64,
        "config.json": b'{"model_type": "bert"}',
        "vocab.txt": b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nbrain\n",
    }


def test_biomedclip_lands_where_the_offline_loader_looks(monkeypatch, server, tmp_path):
    from dfbk.knowledge.encoders import locate_biomedclip

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    serve(monkeypatch, server, "biomedclip", biomedclip_files(), pin=True)
    receipt = fetch_weights("biomedclip")
    assert receipt["root"] == str(hub.resolve()) and receipt["use"] == ""

    clip_dir, text_dir, version = locate_biomedclip(None, download=False)
    assert clip_dir.name == weights.BIOMEDCLIP_REVISION
    assert text_dir.name == weights.TEXT_REVISION
    assert version == f"{weights.BIOMEDCLIP_REPO}@{weights.BIOMEDCLIP_REVISION}"
    assert (clip_dir / "open_clip_pytorch_model.bin").read_bytes() == bytes(range(256)) * 64
    lock = json.loads((hub / LOCK_NAME).read_text())["biomedclip"]
    pinned = [e for t, e in lock.items() if t.endswith(".bin")]
    assert [e["verified"] for e in pinned] == ["published sha256"]
    assert all(e["verified"] == weights.UNKNOWN for t, e in lock.items() if t.endswith(".json"))

    # A second run verifies what is there and asks the server for nothing.
    before = list(server.requests)
    fetch_weights("biomedclip")
    assert server.requests == before


def test_pinned_hash_mismatch_deletes_the_download_and_says_what_to_run(
    monkeypatch, server, tmp_path
):
    serve(monkeypatch, server, "inception", {weights.INCEPTION: b"published bytes"}, pin=True)
    server.files[urlsplit(weights.WEIGHT_SETS["inception"].files[0].url).path] = b"other bytes"
    with pytest.raises(WeightsError, match=r"checksum mismatch.*dfbk weights inception"):
        fetch_weights("inception", dest=tmp_path)
    assert not list((tmp_path / "hub" / "checkpoints").iterdir())  # nothing half-written


def test_unknown_hash_is_recorded_then_enforced(monkeypatch, server, tmp_path):
    """No published SHA-256: the first download records it; a changed copy is refused."""
    data = {weights.INCEPTION: b"first bytes served"}
    serve(monkeypatch, server, "inception", data, pin=False)
    fetch_weights("inception", dest=tmp_path)
    target = tmp_path / "hub" / "checkpoints" / weights.INCEPTION
    recorded = json.loads((tmp_path / LOCK_NAME).read_text())["inception"]
    assert recorded[f"hub/checkpoints/{weights.INCEPTION}"]["sha256"] == _sha(
        data[weights.INCEPTION]
    )

    target.write_bytes(b"first bytes servex")  # same size, corrupted on disk
    server.files[urlsplit(weights.WEIGHT_SETS["inception"].files[0].url).path] = (
        b"X" * 18
    )  # same size
    with pytest.raises(WeightsError, match="checksum mismatch"):
        fetch_weights("inception", dest=tmp_path)

    copy = tmp_path / "usb" / weights.INCEPTION
    copy.parent.mkdir()
    copy.write_bytes(b"first bytes served")
    fetch_weights("inception", dest=tmp_path, from_file=copy)  # the recorded file: accepted
    assert target.read_bytes() == b"first bytes served"


def test_from_file_folder_without_network(monkeypatch, tmp_path):
    """Air-gapped: a folder of the files by name; wrong bytes and missing files are refused."""
    monkeypatch.setattr(weights, "fetch", None)  # any download attempt would fail loudly
    folder = tmp_path / "copied"
    folder.mkdir()
    for name, data in biomedclip_files().items():
        (folder / name).write_bytes(data)
    with pytest.raises(WeightsError, match=r"open_clip_pytorch_model.bin: checksum mismatch"):
        fetch_weights("biomedclip", dest=tmp_path / "hub", from_file=folder)

    bin_item = weights.WEIGHT_SETS["biomedclip"].files[1]
    pinned = dataclasses.replace(bin_item, sha256=_sha(biomedclip_files()[bin_item.name]))
    files = list(weights.WEIGHT_SETS["biomedclip"].files)
    files[1] = pinned
    patched = dataclasses.replace(weights.WEIGHT_SETS["biomedclip"], files=tuple(files))
    monkeypatch.setitem(weights.WEIGHT_SETS, "biomedclip", patched)
    receipt = fetch_weights("biomedclip", dest=tmp_path / "hub", from_file=folder)
    assert "HF_HUB_CACHE" in receipt["use"]
    assert len(receipt["files"]) == 4

    (folder / "vocab.txt").unlink()
    with pytest.raises(WeightsError, match=r"vocab.txt: not found .*dfbk weights biomedclip"):
        fetch_weights("biomedclip", dest=tmp_path / "other", from_file=folder)
    with pytest.raises(WeightsError, match="several files"):
        fetch_weights("biomedclip", dest=tmp_path / "other", from_file=folder / "config.json")


def test_cli_weights_receipt_and_version(monkeypatch, server, tmp_path, capsys):
    serve(monkeypatch, server, "inception", {weights.INCEPTION: b"weights"}, pin=True)
    receipt = tmp_path / "results" / "weights" / "inception.json"
    argv = ["weights", "inception", "--dest", str(tmp_path / "torch"), "--receipt", str(receipt)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "TORCH_HOME" in out and _sha(b"weights") in out
    assert json.loads(receipt.read_text())["name"] == "inception"

    assert main(["weights", "inception", "--from-file", str(tmp_path / "nowhere")]) == 2
    assert "dfbk weights inception --from-file" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"dfbk {weights_version()}"


def weights_version() -> str:
    from importlib.metadata import version

    return version("dfbk-bench")


def test_vit_npz_that_is_not_the_published_one_is_refused(tmp_path):
    import numpy as np

    npz = tmp_path / "R50+ViT-B_16.npz"
    np.savez(npz, unrelated=np.zeros(3))
    with pytest.raises(WeightsError, match=r"R50\+ViT-B_16.npz: not the R50\+ViT-B/16 .npz"):
        weights.convert_vit_npz(npz, tmp_path / "out.safetensors")
    assert not list(tmp_path.glob("out.safetensors*"))


def test_fetch_weights_rule_passes_dest_and_from_dir(tmp_path):
    """Rule fetch_weights: one job per listed set, resvit-vit into weights.dir, from_dir quoted."""
    root = Path(__file__).resolve().parents[1]
    config = {
        "datasets": {"phantom": {"directions": ["t1n-to-t2w"]}},
        "methods": {"pix2pix": {"preset": "tiny"}},
        "weights": {"fetch": ["inception", "resvit-vit"], "from_dir": "/media/usb stick"},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    receipts = ["results/weights/inception.json", "results/weights/resvit-vit.json"]
    command = [str(Path(sys.executable).parent / "snakemake"), "-s", str(root / "Snakefile")]
    command += ["--configfile", "config.yaml", "-n", "-p", "--cores", "1", *receipts]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    shells = [line for line in done.stdout.splitlines() if "dfbk weights" in line]
    assert len(shells) == 2, done.stdout[-2000:]
    vit = next(line for line in shells if "resvit-vit" in line)
    assert "--dest resources/weights --from-file '/media/usb stick'" in vit
    inception = next(line for line in shells if "weights inception" in line)
    assert "--dest" not in inception and "--receipt results/weights/inception.json" in inception


def test_converted_vit_is_what_resvits_paper_preset_loads(monkeypatch, tmp_path):
    """convert_vit_npz writes timm's vit_base_r50_s16_224 layout; ResViT's paper ViT takes its
    blocks, its 1x1 patch embedding over 1024 channels and its 14x14 position grid (resampled).
    timm's `.npz` reader itself is stubbed here: the real file is a 400 MB download."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from dfbk.methods.registry import build_method

    monkeypatch.setattr(VisionTransformer, "load_pretrained", lambda self, path, prefix="": None)
    out = weights.convert_vit_npz(tmp_path / weights.VIT_NPZ, tmp_path / weights.VIT_SAFETENSORS)
    from safetensors.torch import load_file

    state = load_file(str(out))
    method = build_method(
        "resvit", "paper", {"vit_weights": str(out)}, module="dfbk.baselines.resvit"
    )
    described = method.describe()
    assert described["patch_embed"] == "loaded"
    assert described["pos_embed"] == "loaded (14x14 -> 16x16)"
    vit = method.generator.vit.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in vit.items())
