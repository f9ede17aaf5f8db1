"""BraTS 2023 from Synapse: a token-authenticated download, or a zip the user placed by hand.

Synapse needs a registered account that has accepted the challenge's data terms, so there
is no anonymous URL. The token is read from `SYNAPSE_AUTH_TOKEN` or `~/.synapseConfig` and
handed to `synapseclient` only; it is never printed, logged, written into params, provenance
or MLflow, and it is scrubbed from any error text. `synapseclient` is an optional import:
current releases pin `urllib3<2`, which conflicts with the pinned environment, so it is
installed separately when wanted; the hand-placed zip needs nothing.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from dfbk.data.fetch import DownloadError, verify

TOKEN_ENV = "SYNAPSE_AUTH_TOKEN"
BRATS_PROJECT = "syn51156910"


def config_file() -> Path:
    """synapseclient's credentials file (`~/.synapseConfig`)."""
    return Path.home() / ".synapseConfig"


def howto(file_name: str, entity: str, hand_placed: Path, raw_dir: Path | None) -> str:
    """What a user must do by hand when no token and no zip are available."""
    unpacked = (
        f"\n  3. or unzip it yourself so that {raw_dir}/<case folders> exist" if raw_dir else ""
    )
    return (
        f"BraTS 2023 needs a Synapse login and none was found (no ${TOKEN_ENV}, no "
        f"{config_file()}, no {hand_placed}). Do one of:\n"
        f"  1. register at https://www.synapse.org, join the BraTS 2023 challenge (project "
        f"{BRATS_PROJECT}) and accept its data terms; create a personal access token with "
        f"download scope (Account Settings > Personal Access Tokens); then `export "
        f"{TOKEN_ENV}=<token>` (or put `[authentication]` / `authtoken = <token>` in "
        f"{config_file()}), `pip install synapseclient` and run again;\n"
        f"  2. or download {file_name} in the browser (Synapse folder {entity}) and place it "
        f"at {hand_placed}, then run again;"
        f"{unpacked}\n"
        "See docs/data.md, 'Getting the data'."
    )


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def check_zip(path: Path, md5: str | None) -> None:
    """Verify a hand-placed or downloaded zip: its md5 when known, else every member's CRC."""
    if md5:
        problem = verify(path, {"md5": md5})
        if problem:
            raise DownloadError(f"{path}: {problem}; delete it and download it again")
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        raise DownloadError(f"{path}: not a complete zip ({err}); delete it and retry") from err
    if bad is not None:
        raise DownloadError(f"{path}: member '{bad}' fails its CRC check; delete the zip and retry")


def _login(token: str | None):
    """A logged-in synapseclient session; errors never contain the token."""
    try:
        import synapseclient
    except ImportError as err:
        raise DownloadError(
            "a Synapse login is configured but synapseclient is not installed: "
            "`pip install synapseclient` (in a separate environment if pip reports a urllib3 "
            "conflict), or place the zip by hand (docs/data.md)"
        ) from err
    syn = synapseclient.Synapse(silent=True)
    try:
        if token:
            syn.login(authToken=token, silent=True)
        else:
            syn.login(silent=True)  # reads ~/.synapseConfig
    except Exception as err:  # synapseclient raises its own hierarchy
        raise DownloadError(
            f"Synapse login failed ({type(err).__name__}: {_scrub(str(err), token)}); "
            f"check the token in ${TOKEN_ENV} or {config_file()}"
        ) from None
    return syn


def fetch_synapse_file(
    entity: str,
    file_name: str,
    dest_dir: Path,
    md5: str | None = None,
    raw_dir: Path | None = None,
) -> Path:
    """The zip `file_name` from Synapse folder `entity` (or by hand) in `dest_dir`, verified."""
    dest_dir = Path(dest_dir)
    target = dest_dir / file_name
    if target.exists():
        check_zip(target, md5)
        return target
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and not config_file().exists():
        raise DownloadError(howto(file_name, entity, target, raw_dir))
    syn = _login(token)
    try:
        children = syn.getChildren(entity, includeTypes=["file"])
        match = next((c for c in children if c.get("name") == file_name), None)
        if match is None:
            raise DownloadError(f"Synapse folder {entity} has no file named {file_name}")
        dest_dir.mkdir(parents=True, exist_ok=True)
        got = syn.get(match["id"], downloadLocation=str(dest_dir), ifcollision="overwrite.local")
    except DownloadError:
        raise
    except Exception as err:
        raise DownloadError(
            f"Synapse download of {file_name} ({entity}) failed: "
            f"{type(err).__name__}: {_scrub(str(err), token)}"
        ) from None
    path = Path(got.path)
    if path != target:
        os.replace(path, target)
    check_zip(target, md5 or getattr(got, "md5", None))
    return target
