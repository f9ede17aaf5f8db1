"""Fakes the tests (and bench/faults/replay.py) share: a random batch, a micro config, a local
Zenodo-like HTTP server, archives and a stand-in Synapse client.

Import as `from fakes import ...` (pytest puts tests/ on the path; bench scripts add it).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def random_batch(size: int, seed: int = 0, shifted: bool = False, batch: int = 2):
    """A (batch, 1, size, size) Batch: uniform source, target its inverse (rolled by 3 if
    `shifted`, so a network must move content), an all-ones mask."""
    import torch

    from dfbk.methods.base import Batch

    g = torch.Generator().manual_seed(seed)
    source = torch.rand(batch, 1, size, size, generator=g)
    target = (1 - source).roll(3, dims=-1) if shifted else 1 - source
    return Batch(source=source, target=target, mask=torch.ones_like(source))


def micro_config(
    results_dir: str,
    methods: dict[str, Any],
    directions: list[str],
    *,
    subjects: int = 5,
    voxel_mm: float = 3.5,
    size: int = 64,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    raw_dir: str = "resources/raw",
    train: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """A one-dataset phantom workflow config small enough for a CPU test, GPUs off.

    `train` entries join the CPU defaults; other keyword arguments are top-level keys.
    """
    return {
        "results_dir": results_dir,
        "raw_dir": raw_dir,
        "seeds": [0],
        "datasets": {
            "phantom": {
                "phantom": {"subjects": subjects, "voxel_mm": voxel_mm, "seed": 0},
                "size": [size, size],
                "split": {"seed": 0, "fractions": list(fractions)},
                "directions": list(directions),
            }
        },
        "methods": methods,
        "train": {"device": "cpu", "threads": 1, "gpus": 0, **(train or {})},
        **top,
    }


# ----- a local Zenodo-like server ---------------------------------------------------------
BRATS_ZIP = "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData.zip"


class Redirect(str):
    """A route answered with 302 to this location."""


class FakeServer:
    """State of the test HTTP server: routes, a request log, connections to drop once."""

    def __init__(self) -> None:
        self.routes: dict[str, object] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.drop_once: set[str] = set()
        self.ranges = True
        self.base = ""

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        state: FakeServer = self.server.state  # type: ignore[attr-defined]
        state.requests.append((self.path, self.headers.get("Range")))
        route = state.routes.get(self.path)
        if route is None:
            return self._send(404, b"not found", {})
        if isinstance(route, Redirect):
            return self._send(302, b"", {"Location": state.base + route})
        if isinstance(route, dict):
            return self._send(200, json.dumps(route).encode(), {"Content-Type": "application/json"})
        self._send_file(state, route)

    def _send_file(self, state: FakeServer, data: bytes) -> None:
        start, status, headers = 0, 200, {"Accept-Ranges": "bytes"}
        wanted = self.headers.get("Range")
        if wanted and state.ranges:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.path in state.drop_once:  # die mid-file: send half, then close the socket
            state.drop_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def zenodo_record(state: FakeServer, record: int, files: dict[str, bytes], latest: int) -> dict:
    """A Zenodo API record JSON (legacy serialisation) whose files the server also serves."""
    api = f"{state.base}/api/records/{record}"
    entries = []
    for key, data in files.items():
        path = f"/api/records/{record}/files/{key}/content"
        state.routes[path] = data
        entries.append(
            {
                "id": f"file-{key}",
                "key": key,
                "size": len(data),
                "checksum": f"md5:{md5(data)}",
                "links": {"self": state.base + path},
            }
        )
    return {
        "id": record,
        "doi": f"10.5281/zenodo.{record}",
        "conceptdoi": "10.5281/zenodo.17736411",
        "metadata": {"title": "ISLES 2015 (SISS, SPES)", "version": str(record)},
        "links": {"self": api, "latest": f"{api}/versions/latest", "versions": f"{api}/versions"},
        "files": entries,
    }


@contextlib.contextmanager
def serve() -> Iterator[FakeServer]:
    """A FakeServer on 127.0.0.1 (a free port) for the duration of the block."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = FakeServer()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


# ----- archives and a stand-in Synapse client -----------------------------------------------
SYMLINK = (0o120777 << 16) | 0x20  # zip external_attr of a symbolic link


def zip_bytes(entries: list[tuple[str, str, bytes | str]]) -> bytes:
    """A zip of (name, kind 'file'|'link', content-or-target) entries, in that order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, kind, data in entries:
            info = zipfile.ZipInfo(name)
            if kind == "link":
                info.external_attr = SYMLINK
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


CHAIN = [("a", "link", "."), ("a/b", "link", ".."), ("a/b/pwned.txt", "file", "owned")]


TOKEN = "eyJ0eXAiOiJKV1QiLCJraWQiOiJXN05OOldMSlQ6SjVSSzpMN1RMOlQ3TDc6M1ZYNjpKRU9VOjY0NFI.s3cr3t"

FAKE_CLIENT = '''
"""A stand-in synapseclient that logs the token the ways real libraries do."""
import base64, logging, os, shutil, sys
from pathlib import Path
from types import SimpleNamespace

log = logging.getLogger("synapseclient")
log.addHandler(logging.StreamHandler(sys.__stderr__))  # bypasses any sys.stderr wrapper
log.setLevel(logging.DEBUG)


class Synapse:
    def __init__(self, **kwargs):
        self.token = None

    def login(self, authToken=None, silent=False):
        t = self.token = authToken
        log.warning("GET /auth/v1/session Authorization: Bearer %s", t)
        log.info("TOKEN=" + t.upper())
        log.debug("Basic %s", base64.b64encode(("user:" + t).encode()).decode())
        log.error("cached credential %s", base64.b64encode(t.encode()).decode())
        print("stdout notice", t)
        print("stderr notice", t.upper(), file=sys.stderr)
        try:
            raise RuntimeError("401 for token " + t)
        except RuntimeError:
            logging.getLogger().exception("retrying login")

    def getChildren(self, parent, includeTypes):
        return iter([{"name": os.environ["FAKE_NAME"], "id": "syn2"}])

    def get(self, entity, downloadLocation, ifcollision):
        if os.environ.get("FAKE_FAIL"):
            raise ConnectionError("403 Forbidden, token=" + self.token.lower())
        path = Path(downloadLocation) / os.environ["FAKE_NAME"]
        shutil.copyfile(os.environ["FAKE_ZIP"], path)
        return SimpleNamespace(path=str(path), md5=None)
'''

RUNNER = """
import logging, sys
logging.basicConfig(filename=sys.argv[1], level=logging.DEBUG)  # a pre-existing file handler
from dfbk.cli import main
sys.exit(main(sys.argv[2:]))
"""


def token_forms(token: str) -> list[str]:
    raw = token.encode()
    return [
        token,
        token.upper(),
        token.lower(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        base64.b64encode(b"user:" + raw).decode()[8:-4],  # the token's part of a Basic header
    ]


# ----- a prepare held inside its first subject --------------------------------------------------
# `python -c GATED_PREPARE RAW OUT STARTED GATE SIZE`: a phantom prepare (t1n, t2w, SIZE x SIZE)
# that touches STARTED in its first subject and waits there until GATE exists, so a second
# prepare into OUT is certain to meet it mid-run.
GATED_PREPARE = """
import sys, time
from pathlib import Path
import dfbk.data.slices.prepare as prepare

raw, out, started, gate = map(Path, sys.argv[1:5])
size = int(sys.argv[5])
original = prepare.prepare_subject


def gated(*args, **kwargs):  # the first subject waits until the caller opens the gate
    started.touch()
    while not gate.exists():
        time.sleep(0.05)
    return original(*args, **kwargs)


prepare.prepare_subject = gated
prepare.prepare_dataset("phantom", raw, out, ["t1n", "t2w"], (size, size), 0.05)
"""
