"""Downloads against a local HTTP server (127.0.0.1) serving fabricated archives and a fake
Zenodo API: resume with Range, checksums, pinning, safe extraction, and the BraTS login paths."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import pytest
from fabricate import BRATS_TOP, brats_tree, isles_tree, synthrad_tree, zip_tree
from fakes import BRATS_ZIP, FakeServer, Redirect, md5, zenodo_record

from dfbk.cli import build_parser
from dfbk.data.datasets import get_adapter
from dfbk.data.sources.archives import extract_archive
from dfbk.data.sources.download import RECORD_FILE, download_dataset, zenodo_record_id
from dfbk.data.sources.fetch import DownloadError, fetch


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, bytes]:
    """The three datasets' archives as the publishers lay them out."""
    root = tmp_path_factory.mktemp("archives")
    out = {}
    for name, build in (
        ("SISS2015_Training.zip", isles_tree),
        ("Task1.zip", synthrad_tree),
        (BRATS_ZIP, brats_tree),
    ):
        tree = build(root / name.removesuffix(".zip"))
        out[name] = zip_tree(tree, root / name).read_bytes()
    return out


def serve_isles(state: FakeServer, archives: dict[str, bytes]) -> None:
    """Record 17736412 (old) whose latest version 17736500 holds SISS and SPES archives."""
    old = zenodo_record(state, 17736412, {"SISS2015_Training.zip": b"old"}, 17736500)
    new_files = {"SISS2015_Training.zip": archives["SISS2015_Training.zip"], "SPES.zip": b"x"}
    new = zenodo_record(state, 17736500, new_files, 17736500)
    new["links"]["latest"] = f"{state.base}/api/records/17736500/versions/latest"
    state.routes["/api/records/17736412"] = old
    state.routes["/api/records/17736412/versions/latest"] = Redirect("/api/records/17736500")
    state.routes["/api/records/17736500"] = new
    state.routes["/api/records/17736500/versions/latest"] = Redirect("/api/records/17736500")


def test_isles_resolves_latest_version_pins_the_record_and_extracts(server, archives, tmp_path):
    serve_isles(server, archives)
    settings = {"zenodo_api": f"{server.base}/api"}
    raw = download_dataset("isles2015", tmp_path / "raw", tmp_path / "dl", settings)
    pinned = json.loads((raw / RECORD_FILE).read_text())
    assert pinned["record_id"] == "17736500" and pinned["requested"] == "17736412"
    assert pinned["selected"] == ["SISS2015_Training.zip"]  # not SPES
    assert all(f["checksum"].startswith("md5:") for f in pinned["files"])
    assert "/api/records/17736500/files/SPES.zip/content" not in server.paths()
    subjects = get_adapter("isles2015").find_subjects(raw)
    assert [s.name for s in subjects] == [f"SISS2015_Training-{n}" for n in (1, 2, 3)]
    # a second extraction reuses the pinned record and the verified archive: no network
    server.requests.clear()
    download_dataset("isles2015", tmp_path / "raw2", tmp_path / "dl", settings)
    assert server.requests == []


def test_synthrad_doi_resolves_to_its_record_and_only_brain_is_extracted(
    server, archives, tmp_path
):
    assert zenodo_record_id("10.5281/zenodo.7260705") == "7260705"
    assert zenodo_record_id("https://doi.org/10.5281/zenodo.7260705") == "7260705"
    record = zenodo_record(server, 7260705, {"Task1.zip": archives["Task1.zip"]}, 7260705)
    record["links"].pop("latest")
    server.routes["/api/records/7260705"] = record
    raw = download_dataset(
        "synthrad2023", tmp_path / "raw", tmp_path / "dl", {"zenodo_api": f"{server.base}/api"}
    )
    assert (raw / "Task1/brain/1BA001/ct.nii.gz").exists()
    assert not (raw / "Task1/pelvis").exists()
    assert [s.name for s in get_adapter("synthrad2023").find_subjects(raw)] == [
        "1BA001",
        "1BB002",
        "1BC003",
    ]
    assert json.loads((raw / "download.json").read_text())["archives"] == ["Task1.zip"]


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    data = bytes(range(256)) * 4000
    server.routes["/big.zip"] = data
    server.drop_once.add("/big.zip")
    dest = tmp_path / "big.zip"
    with pytest.raises(DownloadError, match="interrupted.*run the same command again to resume"):
        fetch(f"{server.base}/big.zip", dest, {"md5": md5(data)}, len(data), retries=0)
    part = tmp_path / "big.zip.part"
    assert not dest.exists() and 0 < part.stat().st_size < len(data)
    kept = part.stat().st_size
    fetch(f"{server.base}/big.zip", dest, {"md5": md5(data)}, len(data), retries=0)
    assert server.requests[-1] == ("/big.zip", f"bytes={kept}-")
    assert dest.read_bytes() == data and not part.exists()


def test_interruption_is_resumed_within_one_call(server, tmp_path):
    data = b"0123456789" * 50_000
    server.routes["/f.bin"] = data
    server.drop_once.add("/f.bin")
    fetch(f"{server.base}/f.bin", tmp_path / "f.bin", {"sha256": hashlib.sha256(data).hexdigest()})
    ranges = [r for p, r in server.requests if p == "/f.bin"]
    assert ranges[0] is None and ranges[1].startswith("bytes=")
    assert (tmp_path / "f.bin").read_bytes() == data


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    data = b"abcdef" * 40_000
    server.routes["/f.bin"] = data
    server.ranges = False
    (tmp_path / "f.bin.part").write_bytes(b"garbage!")
    fetch(f"{server.base}/f.bin", tmp_path / "f.bin", {"md5": md5(data)}, len(data))
    assert (tmp_path / "f.bin").read_bytes() == data


def test_checksum_mismatch_deletes_the_file_and_says_so(server, tmp_path):
    server.routes["/f.bin"] = b"the real bytes"
    with pytest.raises(DownloadError, match="checksum mismatch.*deleted"):
        fetch(f"{server.base}/f.bin", tmp_path / "f.bin", {"md5": "0" * 32})
    assert list(tmp_path.iterdir()) == []


def test_a_complete_verified_file_is_not_downloaded_again(server, tmp_path):
    (tmp_path / "f.bin").write_bytes(b"done")
    fetch(f"{server.base}/f.bin", tmp_path / "f.bin", {"md5": md5(b"done")}, 4)
    assert server.requests == []


def _zip_with(name: str, *, symlink_to: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data/ok.txt", "fine")
        info = zipfile.ZipInfo(name)
        if symlink_to is not None:
            info.external_attr = (0o120777 << 16) | 0x20  # a symlink entry
            archive.writestr(info, symlink_to)
        else:
            archive.writestr(info, "evil")
    return buffer.getvalue()


def _tar_with(name: str, kind: bytes, target: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        ok = tarfile.TarInfo("data/ok.txt")
        ok.size = 4
        archive.addfile(ok, io.BytesIO(b"fine"))
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        archive.addfile(info, io.BytesIO(b""))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("suffix", "payload", "reason"),
    [
        ("zip", _zip_with("../escape.txt"), "'..' component"),
        ("zip", _zip_with("/etc/evil.txt"), "absolute path"),
        ("zip", _zip_with("data/link", symlink_to="../../outside"), "points outside"),
        ("tar.gz", _tar_with("data/../../escape.txt", tarfile.REGTYPE), "'..' component"),
        ("tar.gz", _tar_with("data/link", tarfile.SYMTYPE, "/etc/passwd"), "points outside"),
        ("tar.gz", _tar_with("data/link", tarfile.SYMTYPE, "../../x"), "points outside"),
        ("tar.gz", _tar_with("data/hard", tarfile.LNKTYPE, "../x"), "points outside"),
    ],
)
def test_unsafe_archive_entries_are_refused_before_anything_is_written(
    tmp_path, suffix, payload, reason
):
    archive = tmp_path / f"bad.{suffix}"
    archive.write_bytes(payload)
    with pytest.raises(Exception, match=rf"unsafe archive entry .*{reason}") as err:
        extract_archive(archive, tmp_path / "out")
    assert str(archive) in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "escape.txt").exists()


def test_links_inside_the_archive_are_allowed(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(_tar_with("data/link", tarfile.SYMTYPE, "ok.txt"))
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out/data/link").read_text() == "fine"


def test_brats_without_token_or_zip_says_exactly_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNAPSE_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DownloadError) as err:
        download_dataset("brats2023", tmp_path / "raw", tmp_path / "dl")
    message = str(err.value)
    for needed in (
        "SYNAPSE_AUTH_TOKEN",
        str(tmp_path / "home" / ".synapseConfig"),
        str(tmp_path / "dl" / "brats2023" / BRATS_ZIP),
        "syn51514105",
        "syn51156910",
        "docs/data.md",
    ):
        assert needed in message
    assert not (tmp_path / "raw").exists()


def test_brats_hand_placed_zip_is_verified_and_extracted(archives, tmp_path, monkeypatch):
    monkeypatch.delenv("SYNAPSE_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    placed = tmp_path / "dl" / "brats2023" / BRATS_ZIP
    placed.parent.mkdir(parents=True)
    placed.write_bytes(archives[BRATS_ZIP][:-200])  # truncated: refused
    with pytest.raises(DownloadError, match=f"{BRATS_ZIP}.*delete"):
        download_dataset("brats2023", tmp_path / "raw", tmp_path / "dl")
    placed.write_bytes(archives[BRATS_ZIP])
    raw = download_dataset("brats2023", tmp_path / "raw", tmp_path / "dl")
    assert (raw / BRATS_TOP / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-t2f.nii.gz").exists()
    assert len(get_adapter("brats2023").find_subjects(raw)) == 3


def test_brats_through_synapseclient_never_shows_the_token(archives, tmp_path, monkeypatch, capsys):
    """A stand-in synapseclient (the real one needs the network) checks the plumbing."""
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.secret-token"
    calls = {}

    class Synapse:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def login(self, authToken=None, silent=False):  # noqa: N803 (synapseclient's name)
            calls["token"] = authToken

        def getChildren(self, parent, includeTypes):  # noqa: N802, N803
            assert parent == "syn51514105" and includeTypes == ["file"]
            return iter([{"name": "README.pdf", "id": "syn1"}, {"name": BRATS_ZIP, "id": "syn2"}])

        def get(self, entity, downloadLocation, ifcollision):  # noqa: N803
            assert entity == "syn2"
            path = Path(downloadLocation) / BRATS_ZIP
            path.write_bytes(archives[BRATS_ZIP])
            return types.SimpleNamespace(path=str(path), md5=md5(archives[BRATS_ZIP]))

    monkeypatch.setitem(sys.modules, "synapseclient", types.SimpleNamespace(Synapse=Synapse))
    monkeypatch.setenv("SYNAPSE_AUTH_TOKEN", token)
    args = build_parser().parse_args(
        ["download", "brats2023", str(tmp_path / "raw"), "--downloads", str(tmp_path / "dl")]
    )
    args.func(args)
    assert calls["token"] == token
    out = capsys.readouterr()
    written = "".join(p.read_text() for p in (tmp_path / "raw").glob("*.json"))
    assert token not in out.out + out.err + written
    assert len(get_adapter("brats2023").find_subjects(tmp_path / "raw")) == 3


def test_unknown_download_setting_is_a_config_error(tmp_path):
    from dfbk.errors import ConfigError

    with pytest.raises(ConfigError, match="datasets.isles2015.download: unknown key.*recrod"):
        download_dataset("isles2015", tmp_path / "raw", tmp_path / "dl", {"recrod": "1"})
