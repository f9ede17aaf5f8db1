"""Hostile or broken data inputs, each reproduced as reported and refused in one line.

Archives that escape through link chains or expand into bombs, Zenodo file keys used as
paths, a Synapse client that logs the token, a full disk during prepare and download, blank
modalities, and NIfTI/MetaImage headers that claim more voxels than the file holds. Servers
are local (127.0.0.1) and every file is made here.
"""

from __future__ import annotations

import base64
import errno
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fakes import (
    BRATS_ZIP,
    CHAIN,
    FAKE_CLIENT,
    RUNNER,
    TOKEN,
    FakeServer,
    md5,
    token_forms,
    zenodo_record,
    zip_bytes,
)

import dfbk.data.slices.store as store_module
import dfbk.data.sources.fetch as fetch_module
from dfbk.cli import main
from dfbk.data.io import MAX_VOXELS, read_volume
from dfbk.data.slices.prepare import prepare_dataset
from dfbk.data.slices.splits import read_split, write_or_check_split
from dfbk.data.slices.store import SliceStore, store_fingerprint
from dfbk.data.sources import archives
from dfbk.data.sources.archives import extract_archive
from dfbk.data.sources.download import RECORD_FILE, download_dataset
from dfbk.data.sources.fetch import DownloadError, fetch
from dfbk.data.sources.synapse import TokenScrubber
from dfbk.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def tar_bytes(entries: list[tuple[str, bytes, str]]) -> bytes:
    """A tar.gz of (name, tar type, content-or-link-target) entries, in that order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            body = b""
            if kind == tarfile.REGTYPE:
                body = data.encode()
                info.size = len(body)
            else:
                info.linkname = data
            archive.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def serve_siss(state: FakeServer, files: dict[str, bytes]) -> dict:
    """An ISLES-like Zenodo record 900 (no newer version) serving `files`; download settings."""
    record = zenodo_record(state, 900, files, 900)
    record["links"].pop("latest")
    state.routes["/api/records/900"] = record
    return {"zenodo_api": f"{state.base}/api", "record": "900"}


def run_download(tmp_path: Path, settings: dict, capsys) -> tuple[int, str]:
    """`dfbk download isles2015` into tmp_path/work; (exit status, stderr)."""
    work = tmp_path / "work"
    argv = ["download", "isles2015", str(work / "raw"), "--downloads", str(work / "dl")]
    status = main([*argv, "--settings", json.dumps(settings)])
    return status, capsys.readouterr().err


# --- item 6: link chains ------------------------------------------------------------------


def test_zip_symlink_chain_is_refused_through_dfbk_download(server, tmp_path, capsys):
    settings = serve_siss(server, {"evil_SISS.zip": zip_bytes(CHAIN)})
    status, err = run_download(tmp_path, settings, capsys)
    assert status == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "unsafe archive entry 'a/b'" in err and "points outside" in err
    assert list(tmp_path.rglob("pwned.txt")) == []
    work = tmp_path / "work"
    assert not (work / "raw").exists() and not (work / ".raw.staging").exists()


@pytest.mark.parametrize(
    ("entries", "culprit"),
    [
        (CHAIN, "a/b"),
        # a dangling link that a later link turns into an escape
        ([("x", "link", "d/.."), ("d", "link", "."), ("x/pwned.txt", "file", "!")], "x/pwned.txt"),
        ([("x", "link", "d/.."), ("d", "link", ".")], "x"),
        # a loop
        ([("p", "link", "q"), ("q", "link", "p"), ("p/pwned.txt", "file", "!")], "p/pwned.txt"),
        # a link over a folder already written
        ([("data/ok.txt", "file", "fine"), ("data", "link", "..")], "data"),
    ],
)
def test_zip_link_tricks_are_refused_before_anything_is_written(tmp_path, entries, culprit):
    archive = tmp_path / "a" / "evil.zip"
    archive.parent.mkdir()
    archive.write_bytes(zip_bytes(entries))
    with pytest.raises(DataError, match=rf"unsafe archive entry '{culprit}'") as err:
        extract_archive(archive, tmp_path / "a" / "out")
    assert "\n" not in str(err.value) and str(archive) in str(err.value)
    assert not (tmp_path / "a" / "out").exists() and list(tmp_path.rglob("pwned.txt")) == []


def test_tar_symlink_chain_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(
        tar_bytes(
            [
                ("a", tarfile.SYMTYPE, "."),
                ("a/b", tarfile.SYMTYPE, ".."),
                ("a/b/pwned.txt", tarfile.REGTYPE, "owned"),
            ]
        )
    )
    with pytest.raises(DataError, match="unsafe archive entry 'a/b'"):
        extract_archive(archive, tmp_path / "out")
    assert list(tmp_path.rglob("pwned.txt")) == [] and not (tmp_path / "out").exists()


def test_zip_links_that_stay_inside_still_extract(tmp_path):
    archive = tmp_path / "ok.zip"
    entries = [("data/ok.txt", "file", "fine"), ("data/link", "link", "ok.txt")]
    entries += [("alias", "link", "data"), ("alias/more.txt", "file", "more")]
    archive.write_bytes(zip_bytes(entries))
    assert extract_archive(archive, tmp_path / "out") == 4
    assert (tmp_path / "out/data/link").read_text() == "fine"
    assert (tmp_path / "out/data/more.txt").read_text() == "more"


def test_tar_entries_refused_by_tarfile_are_one_line_errors(tmp_path, monkeypatch):
    """Even if our own checks missed an entry, tarfile's data filter's refusal is one line."""
    monkeypatch.setattr(archives, "check_members", lambda *a: None)
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(tar_bytes([("../escape.txt", tarfile.REGTYPE, "x")]))
    with pytest.raises(DataError, match=r"evil\.tar\.gz: unsafe archive entry refused by tarfile"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


# --- item 7: record keys used as paths -----------------------------------------------------


@pytest.mark.parametrize("key", ["../../../x_SISS.zip", "ABSOLUTE", "sub/x_SISS.zip", ".."])
def test_zenodo_file_keys_are_never_paths(server, tmp_path, key):
    absolute = tmp_path / "elsewhere" / "x_SISS.zip"
    key = str(absolute) if key == "ABSOLUTE" else key
    settings = serve_siss(server, {key: zip_bytes([("data/ok.txt", "file", "fine")])})
    settings["files"] = ["*"]
    work = tmp_path / "deep" / "er" / "work"
    with pytest.raises(DownloadError, match="is not a plain file name") as err:
        download_dataset("isles2015", work / "raw", work / "dl", settings)
    assert repr(key) in str(err.value) and "\n" not in str(err.value)
    assert not absolute.exists() and list(tmp_path.rglob("x_SISS.zip*")) == []
    assert not any("/files/" in p for p in server.paths())  # nothing was downloaded


def test_a_tampered_pinned_record_is_checked_again(server, tmp_path):
    settings = serve_siss(server, {"ok_SISS.zip": zip_bytes([("data/ok.txt", "file", "fine")])})
    work = tmp_path / "work"
    download_dataset("isles2015", work / "raw", work / "dl", settings)
    pinned_path = work / "dl" / "isles2015" / RECORD_FILE
    pinned = json.loads(pinned_path.read_text())
    pinned["files"][0]["key"] = pinned["selected"][0] = "../../evil_SISS.zip"
    pinned_path.write_text(json.dumps(pinned))
    with pytest.raises(DownloadError, match=rf"{RECORD_FILE}: file name '\.\./\.\./evil"):
        download_dataset("isles2015", work / "raw2", work / "dl", settings)
    assert list(tmp_path.rglob("evil_SISS.zip*")) == []


# --- item 9: bombs -------------------------------------------------------------------------


def test_zip_bomb_is_refused_by_its_expansion_ratio(server, tmp_path, capsys):
    bomb = zip_bytes([("data/zeros.bin", "file", bytes(8 << 20))])  # 8 MiB of zeros
    assert len(bomb) < 16 << 10  # deflate: about 1000 to 1
    settings = serve_siss(server, {"bomb_SISS.zip": bomb})
    status, err = run_download(tmp_path, settings, capsys)
    assert status == 2 and err.count("\n") == 1
    assert "likely zip bomb" in err and "max_ratio" in err
    assert not (tmp_path / "work" / "raw").exists()
    assert not (tmp_path / "work" / ".raw.staging").exists()


def test_total_extracted_size_is_capped(server, tmp_path, capsys):
    payload = np.random.default_rng(0).bytes(64 << 10)  # incompressible: ratio about 1
    settings = serve_siss(server, {"big_SISS.zip": zip_bytes([("data/r.bin", "file", payload)])})
    settings["max_extract_gb"] = 32 / 2**20  # 32 KiB
    status, err = run_download(tmp_path, settings, capsys)
    assert status == 2 and "over the 3.05176e-05 GiB limit (download setting max_extract_gb)" in err
    settings["max_extract_gb"] = 1
    assert run_download(tmp_path, settings, capsys)[0] == 0
    assert (tmp_path / "work" / "raw" / "data" / "r.bin").read_bytes() == payload


def test_tar_bomb_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 8 << 20
        archive.addfile(info, io.BytesIO(bytes(info.size)))
    (tmp_path / "bomb.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match="likely zip bomb"):
        extract_archive(tmp_path / "bomb.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- item 10: the Synapse token ------------------------------------------------------------


@pytest.mark.parametrize("fail", [False, True])
def test_synapse_token_never_reaches_logs_or_streams(tmp_path, fail):
    fake = tmp_path / "fake"
    (fake / "synapseclient").mkdir(parents=True)
    (fake / "synapseclient" / "__init__.py").write_text(FAKE_CLIENT)
    (tmp_path / "runner.py").write_text(RUNNER)
    tiny = tmp_path / "tiny.zip"
    tiny.write_bytes(zip_bytes([("case/x.txt", "file", "x")]))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(fake), str(REPO)]),
        "HOME": str(tmp_path / "home"),
        "SYNAPSE_AUTH_TOKEN": TOKEN,
        "FAKE_NAME": BRATS_ZIP,
        "FAKE_ZIP": str(tiny),
        **({"FAKE_FAIL": "1"} if fail else {}),
    }
    library_log, console = tmp_path / "library.log", tmp_path / "brats2023.log"
    argv = ["download", "brats2023", str(tmp_path / "raw"), "--downloads", str(tmp_path / "dl")]
    with open(console, "w") as out:  # as the workflow rule does: > {log} 2>&1
        status = subprocess.run(
            [sys.executable, str(tmp_path / "runner.py"), str(library_log), *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
        ).returncode
    said = console.read_text() + library_log.read_text()
    for form in token_forms(TOKEN):
        assert form not in said, f"token leaked as {form[:12]}..."
    assert "retrying login" in said and "RuntimeError: 401 for token ***" in said
    assert said.count("***") >= 7  # the messages came through, only the secret is gone
    if fail:
        assert status == 2
        assert "failed: ConnectionError: 403 Forbidden, token=***" in console.read_text()
    else:
        assert status == 0 and (tmp_path / "raw" / "case" / "x.txt").read_text() == "x"


def test_scrubber_covers_base64_at_every_alignment():
    scrubber = TokenScrubber([TOKEN])
    for prefix in ("", "u", "us", "use:", "abcdefgh:"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode((prefix + TOKEN + "&x").encode()).decode()
            scrubbed = scrubber.scrub(text)
            assert "***" in scrubbed and len(scrubbed) < len(text) - 90


# --- item 12 (prepare, download): a full disk ----------------------------------------------


class _FullDisk:
    """An open file that accepts `room` bytes, then fails as a full disk does."""

    def __init__(self, handle, room: list[int]) -> None:
        self._handle, self._room = handle, room

    def write(self, data) -> int:
        fits = max(min(self._room[0], len(data)), 0)
        self._room[0] -= fits
        if fits < len(data):  # as a real disk: what fits is written, then the error
            self._handle.write(data[:fits])
            self._handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


def full_disk_open(room: int):
    """An `open` whose write-mode files share `room` bytes of free space."""
    left = [room]

    def fake_open(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        return _FullDisk(handle, left) if "w" in mode or "a" in mode else handle

    return fake_open


def test_full_disk_during_prepare_is_one_line_and_leaves_nothing(
    phantom_copy, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(store_module, "open", full_disk_open(20_000), raising=False)
    out = tmp_path / "out" / "store"
    argv = ["prepare", "phantom", str(phantom_copy), str(out), "--modalities", "t1n,t2w"]
    status = main([*argv, "--size", "32", "32", "--skipped-csv", str(tmp_path / "out/s.csv")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and "prepare phantom:" not in ln]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("dfbk prepare: error: ")
    assert "No space left on device" in err and str(out.with_name(".store.tmp")) in err
    assert list((tmp_path / "out").iterdir()) == []  # no store, no .store.tmp, no skipped.csv


def test_full_disk_writing_store_json_names_it(phantom_copy, tmp_path, monkeypatch):
    real = Path.write_text

    def failing(self, text, *args, **kwargs):
        if self.name.startswith(".store.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing)
    out = tmp_path / "out" / "store"
    with pytest.raises(DataError, match=r"store\.json: cannot write the slice store \(No space"):
        prepare_dataset("phantom", phantom_copy, out, ["t1n"], (32, 32))
    assert list((tmp_path / "out").iterdir()) == []


def test_stale_temporaries_are_removed_at_the_next_start(phantom_copy, tmp_path):
    out = tmp_path / "out" / "store"
    stale_dir = out.with_name(".store.tmp")
    (stale_dir / "t1n.f32").parent.mkdir(parents=True)
    (stale_dir / "t1n.f32").write_bytes(bytes(1000))
    stale_csv = tmp_path / "out" / ".skipped.csv.abc123.tmp"
    stale_csv.write_text("half")
    prepare_dataset(
        "phantom", phantom_copy, out, ["t1n"], (32, 32), skipped_csv=tmp_path / "out/skipped.csv"
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["skipped.csv", "store"]


def test_full_disk_during_download_keeps_the_part_and_says_so(server, tmp_path, monkeypatch):
    data = bytes(range(256)) * 2000
    server.routes["/f.bin"] = data
    monkeypatch.setattr(fetch_module, "open", full_disk_open(100_000), raising=False)
    with pytest.raises(DownloadError, match=r"f\.bin\.part: cannot write the download \(No space"):
        fetch(f"{server.base}/f.bin", tmp_path / "f.bin", {"md5": md5(data)}, len(data))
    assert (tmp_path / "f.bin.part").stat().st_size == 100_000  # kept for the resume
    monkeypatch.undo()
    fetch(f"{server.base}/f.bin", tmp_path / "f.bin", {"md5": md5(data)}, len(data))
    assert (tmp_path / "f.bin").read_bytes() == data
    assert server.requests[-1][1] == "bytes=100000-"  # the second call resumed


# --- item 14: blank and constant modalities ------------------------------------------------


@pytest.mark.parametrize("level", [0.0, 250.0])
def test_blank_or_constant_modality_is_a_named_skippable_case(phantom_copy, tmp_path, level):
    victim = sorted(p for p in phantom_copy.iterdir() if p.is_dir())[1]
    path = victim / f"{victim.name}-t2w.nii.gz"
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.full(image.shape, level, np.float32), image.affine), path)
    with pytest.raises(DataError, match=rf"subject {victim.name}: .*-t2w\.nii\.gz: .*constant"):
        prepare_dataset("phantom", phantom_copy, tmp_path / "s1", ["t1n", "t2w"], (32, 32))
    meta = prepare_dataset(
        "phantom",
        phantom_copy,
        tmp_path / "s2",
        ["t1n", "t2w"],
        (32, 32),
        on_bad_case="skip",
        skipped_csv=tmp_path / "skipped.csv",
    )
    assert meta["skipped"] == [victim.name] and victim.name not in meta["subjects"]
    assert "constant" in (tmp_path / "skipped.csv").read_text()


# --- item 15: header sizes -----------------------------------------------------------------


def lying_nifti(path: Path, shape: tuple[int, ...], header_class=nib.Nifti1Header) -> Path:
    """A header claiming `shape` float32 voxels followed by only 4 KB of data."""
    header = header_class()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_data_offset(header.sizeof_hdr + 4)
    body = header.binaryblock + bytes(4) + bytes(4096)
    path.write_bytes(gzip.compress(body) if path.name.endswith(".gz") else body)
    return path


@pytest.fixture
def no_voxel_reads(monkeypatch):
    """Fails the test if any voxel data is read (the check must come first)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("voxel data was read before the header was checked")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", forbidden)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "get_unscaled", forbidden)


@pytest.mark.parametrize(
    ("name", "shape", "header_class", "why"),
    [
        ("lie.nii.gz", (10000, 5000, 10), nib.Nifti1Header, "cannot hold them"),
        ("lie.nii", (10000, 5000, 10), nib.Nifti1Header, "cannot hold them"),
        ("huge.nii", (100000, 100000, 100000), nib.Nifti2Header, f"limit of {MAX_VOXELS} voxels"),
    ],
)
def test_header_sizes_are_checked_before_reading(
    tmp_path, no_voxel_reads, name, shape, header_class, why
):
    path = lying_nifti(tmp_path / name, shape, header_class)
    assert path.stat().st_size < 8192
    with pytest.raises(DataError, match=why) as err:
        read_volume(path)
    assert str(err.value).startswith(f"{path}: header declares") and "\n" not in str(err.value)


def test_metaimage_header_sizes_are_checked(tmp_path):
    path = tmp_path / "VSD.Brain.XX.O.MR_T1.1.mha"
    text = "ObjectType = Image\nNDims = 3\nDimSize = 10000 5000 10\nElementType = MET_FLOAT\n"
    path.write_bytes((text + "ElementDataFile = LOCAL\n").encode() + bytes(4096))
    with pytest.raises(DataError, match=rf"{path.name}: header declares .* cannot hold them"):
        read_volume(path)


def test_lying_header_in_prepare_is_a_skippable_case(phantom_copy, tmp_path):
    victim = sorted(p for p in phantom_copy.iterdir() if p.is_dir())[2]
    lying_nifti(victim / f"{victim.name}-t2w.nii.gz", (10000, 5000, 10))
    meta = prepare_dataset(
        "phantom", phantom_copy, tmp_path / "s", ["t1n", "t2w"], (32, 32), on_bad_case="skip"
    )
    assert meta["skipped"] == [victim.name]


# --- store provenance and fingerprint ------------------------------------------------------


def test_store_records_its_inputs_and_fingerprints_its_content(phantom_copy, tmp_path):
    def build(name: str, size=(32, 32)) -> Path:
        prepare_dataset("phantom", phantom_copy, tmp_path / name, ["t1n", "t2w"], size)
        return tmp_path / name

    first = build("a")
    meta = json.loads((first / "store.json").read_text())
    subject = sorted(meta["subjects"])[0]
    inputs = {i["path"]: i for i in meta["provenance"]["inputs"][subject]}
    t1n = f"{subject}/{subject}-t1n.nii.gz"
    assert inputs[t1n]["bytes"] == (phantom_copy / t1n).stat().st_size
    assert meta["provenance"]["config"]["size"] == [32, 32]
    assert meta["provenance"]["code_version"]
    assert meta["digests"]["t1n.f32"].startswith("sha256:")
    fingerprint = store_fingerprint(first)
    assert SliceStore(first).fingerprint == fingerprint
    # rebuilt from touched but identical files: same content, same fingerprint
    for path in phantom_copy.rglob("*.nii.gz"):
        os.utime(path, ns=(1, 1))
    assert store_fingerprint(build("b")) == fingerprint
    assert json.loads((tmp_path / "b/store.json").read_text())["provenance"] != meta["provenance"]
    # a changed setting or a changed voxel changes it
    assert store_fingerprint(build("c", (40, 40))) != fingerprint
    path = phantom_copy / t1n
    image = nib.load(path)
    data = image.get_fdata()
    data[data > 0] *= np.linspace(1.0, 1.5, int((data > 0).sum()))
    nib.save(nib.Nifti1Image(data.astype(np.float32), image.affine), path)
    assert store_fingerprint(build("d")) != fingerprint


def test_fingerprint_of_a_missing_store_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"store\.json: slice store file not found"):
        store_fingerprint(tmp_path / "nothing")


# --- splits: a corrupt file or a full disk -------------------------------------------------


@pytest.mark.parametrize("text", ["{not json", '{"train": ["a"]}', "[1, 2]"])
def test_corrupt_split_file_is_one_line(tmp_path, text):
    path = tmp_path / "splits.json"
    path.write_text(text)
    with pytest.raises(DataError, match=r"splits\.json: unreadable split file"):
        read_split(path)
    with pytest.raises(DataError, match=r"splits\.json: unreadable split file"):
        write_or_check_split(path, ["a", "b", "c"], {"train": 1, "val": 1, "test": 1}, 0)


def test_full_disk_writing_the_split_leaves_nothing(tmp_path, monkeypatch):
    def failing(self, text, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", failing)
    with pytest.raises(DataError, match=r"splits\.json: cannot write the split \(No space"):
        write_or_check_split(tmp_path / "splits.json", list("abcdef"), {"train": 4, "val": 1}, 0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", ["{oops", "[]", '{"version": 1}'])
def test_corrupt_store_description_is_one_line(tmp_path, text):
    (tmp_path / "store.json").write_text(text)
    with pytest.raises(DataError, match=r"store\.json: (unreadable|incomplete) slice store"):
        SliceStore(tmp_path)


def test_full_disk_during_extraction_is_one_line_and_removes_the_staging(
    server,
    tmp_path,
    monkeypatch,
    capsys,
):
    payload = np.random.default_rng(1).bytes(200_000)
    settings = serve_siss(server, {"ok_SISS.zip": zip_bytes([("data/r.bin", "file", payload)])})
    monkeypatch.setattr(archives, "open", full_disk_open(50_000), raising=False)
    status, err = run_download(tmp_path, settings, capsys)
    assert status == 2 and err.count("\n") == 1
    assert "raw.staging/data/r.bin: cannot extract ok_SISS.zip (No space left on device)" in err
    work = tmp_path / "work"
    assert sorted(p.name for p in work.iterdir()) == ["dl"]  # no raw, no .raw.staging
