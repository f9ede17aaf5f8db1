"""BraTS 2023 from Synapse: a token-authenticated download, or a zip the user placed by hand.

Synapse needs a registered account that has accepted the challenge's data terms, so there
is no anonymous URL. The token is read from `SYNAPSE_AUTH_TOKEN` or `~/.synapseConfig` and
handed to `synapseclient.login` only (never in a URL, a debug session or a message); it is
never printed, logged, written into params, provenance or MLflow. Because a library may still
log it (request headers, error bodies), everything the process says while synapseclient runs
is scrubbed of it in every predictable form (as is, any letter case, base64 at any
alignment): each log record as it is made (a record factory and a filter on every handler)
and every write to stdout/stderr. `synapseclient` is an optional import: current releases pin
`urllib3<2`, which conflicts with the pinned environment, so it is installed separately when
wanted; the hand-placed zip needs nothing.
"""

from __future__ import annotations

import base64
import configparser
import logging
import os
import re
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dfbk.data.sources.fetch import DownloadError, verify

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


class TokenScrubber(logging.Filter):
    """Replaces secrets in text and log records: as is, in any letter case, and base64.

    Base64 of a longer string (a Basic auth header) contains a fixed fragment of the secret's
    encoding for each of the three byte alignments; those fragments are matched too.
    """

    MARK = "***"

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        secrets = [s for s in secrets if s]
        plain = [re.escape(s) for s in secrets]
        encoded = {f for s in secrets for f in _base64_fragments(s) if len(f) >= 8}
        self._plain = re.compile("|".join(plain), re.IGNORECASE) if plain else None
        ordered = sorted(encoded, key=len, reverse=True)
        self._encoded = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def scrub(self, text: str) -> str:
        """`text` with every form of every secret replaced by ***."""
        for pattern in (self._plain, self._encoded):
            if pattern is not None:
                text = pattern.sub(self.MARK, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub the record in place (message, arguments, traceback); never drops it."""
        if getattr(record, "_dfbk_scrubbed", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self.scrub(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        record._dfbk_scrubbed = True
        return True


def _base64_fragments(secret: str) -> set[str]:
    """Base64 text that encodes only bytes of `secret`, at offsets 0, 1 and 2 mod 3."""
    raw, out = secret.encode(), set()
    for pad in range(3):
        text = base64.b64encode(b"\0" * pad + raw).decode().rstrip("=")
        first = -(-8 * pad // 6)  # first character made only of the secret's bits
        last = 8 * (pad + len(raw)) // 6  # characters after this mix in padding
        fragment = text[first:last]
        out |= {fragment, fragment.replace("+", "-").replace("/", "_")}
    return out


class _ScrubbingStream:
    """A text stream that scrubs what is written, then passes it on."""

    def __init__(self, stream, scrubber: TokenScrubber) -> None:
        self._stream, self._scrubber = stream, scrubber

    def write(self, text: str) -> int:
        self._stream.write(self._scrubber.scrub(text))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _all_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    return list({id(h): h for lg in loggers for h in lg.handlers}.values())


@contextmanager
def scrubbed(secrets: list[str]) -> Iterator[TokenScrubber]:
    """While inside, no log record and no stdout/stderr write carries a form of `secrets`.

    Records are scrubbed as they are created (so handlers a library adds meanwhile, even ones
    writing to the original stderr, see clean text) and by a filter on every handler that
    exists on entry; sys.stdout and sys.stderr are wrapped for direct prints.
    """
    scrubber = TokenScrubber(secrets)
    previous_factory = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous_factory(*args, **kwargs)
        scrubber.filter(record)
        return record

    handlers = _all_handlers()
    for handler in handlers:
        handler.addFilter(scrubber)
    streams = sys.stdout, sys.stderr
    logging.setLogRecordFactory(factory)
    sys.stdout, sys.stderr = (_ScrubbingStream(s, scrubber) for s in streams)
    try:
        yield scrubber
    finally:
        logging.setLogRecordFactory(previous_factory)
        sys.stdout, sys.stderr = streams
        for handler in handlers:
            handler.removeFilter(scrubber)


def configured_token() -> str | None:
    """The token in `~/.synapseConfig` ([authentication] authtoken), to scrub it too."""
    parser = configparser.ConfigParser()
    try:
        parser.read(config_file())
        return parser.get("authentication", "authtoken", fallback=None) or None
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None


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


def _login(token: str | None, scrubber: TokenScrubber):
    """A logged-in synapseclient session; errors never contain the token."""
    try:
        import synapseclient
    except ImportError as err:
        raise DownloadError(
            "a Synapse login is configured but synapseclient is not installed: "
            "`pip install synapseclient` (in a separate environment if pip reports a urllib3 "
            "conflict), or place the zip by hand (docs/data.md)"
        ) from err
    try:
        syn = synapseclient.Synapse(silent=True, debug=False)
        if token:
            syn.login(authToken=token, silent=True)
        else:
            syn.login(silent=True)  # reads ~/.synapseConfig
    except Exception as err:  # synapseclient raises its own hierarchy
        raise DownloadError(
            f"Synapse login failed ({type(err).__name__}: {scrubber.scrub(str(err))}); "
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
    with scrubbed([t for t in (token, configured_token()) if t]) as scrubber:
        syn = _login(token, scrubber)
        try:
            children = syn.getChildren(entity, includeTypes=["file"])
            match = next((c for c in children if c.get("name") == file_name), None)
            if match is None:
                raise DownloadError(f"Synapse folder {entity} has no file named {file_name}")
            dest_dir.mkdir(parents=True, exist_ok=True)
            got = syn.get(
                match["id"], downloadLocation=str(dest_dir), ifcollision="overwrite.local"
            )
        except DownloadError:
            raise
        except Exception as err:
            raise DownloadError(
                f"Synapse download of {file_name} ({entity}) failed: "
                f"{type(err).__name__}: {scrubber.scrub(str(err))}"
            ) from None
    path = Path(got.path)
    if path.resolve().parent != dest_dir.resolve():
        raise DownloadError(f"Synapse saved {file_name} at {path}, outside {dest_dir}")
    if path != target:
        os.replace(path, target)
    check_zip(target, md5 or getattr(got, "md5", None))
    return target
