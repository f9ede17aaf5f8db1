"""download: raw dataset archives -> `{raw_dir}/{dataset}/`, verified and safely extracted.

Where the data lives (docs/design.md, data flow 1):
- ISLES 2015 SISS and SynthRAD 2023 Task 1 are on Zenodo. The record is resolved through the
  Zenodo REST API (`/api/records/{id}`, following `links.latest` to the newest version); its
  file list with MD5 checksums is pinned at first download in
  `{downloads_dir}/{dataset}/zenodo_record.json` and copied beside the data, so later runs
  verify against the same checksums and a new upload never changes the data silently.
- BraTS 2023 is on Synapse behind a login (`dfbk.data.sources.synapse`).

Archives are kept in `{downloads_dir}/{dataset}/` (outside the rule's output, which Snakemake
deletes when a job fails), so an interrupted download resumes and a re-extraction needs no
network. Extraction goes to a staging folder renamed into place when everything is in.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dfbk.data.io import write_text
from dfbk.data.outputs import claim_folder, mark, publish, staging_folder
from dfbk.data.sources.archives import MAX_EXTRACT_BYTES, MAX_RATIO, extract_archive
from dfbk.data.sources.fetch import USER_AGENT, DownloadError, fetch, parse_checksum
from dfbk.data.sources.synapse import fetch_synapse_file
from dfbk.errors import ConfigError

ZENODO_API = "https://zenodo.org/api"
RECORD_FILE = "zenodo_record.json"
PROVENANCE_FILE = "download.json"

# Where each dataset comes from; `datasets.<name>.download` in the config overrides any key.
SOURCES: dict[str, dict[str, Any]] = {
    "isles2015": {
        "source": "zenodo",
        "record": "17736412",
        "latest": True,
        "files": ["*SISS*"],  # the record may hold other ISLES parts (SPES, test sets)
        "include": [],
    },
    "synthrad2023": {
        "source": "zenodo",
        "record": "10.5281/zenodo.7260705",
        "latest": True,
        "files": ["Task1.zip"],
        "include": ["Task1/brain/*"],  # the paper uses brain only; pelvis is not extracted
    },
    "brats2023": {
        "source": "synapse",
        "synapse_id": "syn51514105",
        "synapse_file": "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData.zip",
        "md5": None,
        "include": [],
    },
}
COMMON_KEYS = {"zenodo_api", "keep_archive", "retries", "max_extract_gb", "max_ratio"}


def safe_file_name(name: object, where: str) -> str:
    """`name` if it is a plain file name; a record's key is never used as a path.

    A Zenodo key like `../../../x_SISS.zip` or `/etc/x.zip` would otherwise be joined onto the
    downloads folder and write wherever it points; keys with separators are refused, not
    rewritten, since a record that needs them is not one this tool knows how to read.
    """
    text = str(name)
    if (
        not text
        or text in (".", "..")
        or "/" in text
        or "\\" in text
        or "\x00" in text
        or text != Path(text).name
    ):
        raise DownloadError(
            f"{where}: file name {text!r} is not a plain file name (separators, '..' or "
            "empty); refusing to use it as a path"
        )
    return text


def source_settings(dataset: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dataset's download settings: SOURCES defaults updated by config overrides."""
    if dataset not in SOURCES:
        raise ConfigError(
            f"dataset '{dataset}' has no download source; downloadable: {', '.join(SOURCES)}"
        )
    settings = {
        "zenodo_api": ZENODO_API,
        "keep_archive": True,
        "retries": 3,
        "max_extract_gb": MAX_EXTRACT_BYTES / 2**30,
        "max_ratio": MAX_RATIO,
        **SOURCES[dataset],
    }
    unknown = set(overrides or {}) - set(settings) - COMMON_KEYS
    if unknown:
        raise ConfigError(
            f"datasets.{dataset}.download: unknown key(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(set(settings) - {'source'}))}"
        )
    settings.update(overrides or {})
    return settings


def zenodo_record_id(record: str | int) -> str:
    """A Zenodo record id from an id, a Zenodo DOI (10.5281/zenodo.N) or a DOI/record URL."""
    text = str(record).strip().lower()
    for prefix in ("https://doi.org/", "http://doi.org/", "doi:", "https://zenodo.org/records/"):
        text = text.removeprefix(prefix)
    text = text.removeprefix("10.5281/zenodo.")
    if not text.isdigit():
        raise ConfigError(f"'{record}' is not a Zenodo record id or Zenodo DOI (10.5281/zenodo.N)")
    return text


def _get_json(url: str, timeout: float = 60.0) -> dict:
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": USER_AGENT}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as err:
        raise DownloadError(f"{url}: cannot read the Zenodo record ({err})") from err


def resolve_zenodo_record(record: str | int, api: str = ZENODO_API, latest: bool = True) -> dict:
    """The record's API JSON; with `latest`, the newest version via its `links.latest`."""
    requested = zenodo_record_id(record)
    data = _get_json(f"{api.rstrip('/')}/records/{requested}")
    link = (data.get("links") or {}).get("latest")
    if latest and link:
        newest = _get_json(link)
        if str(newest.get("id")) != str(data.get("id")):
            data = newest
    data["_requested"] = requested
    return data


def record_files(data: dict) -> list[dict[str, Any]]:
    """[{key, url, size, checksum}] of a record's files (Zenodo's legacy and RDM layouts)."""
    files = data.get("files")
    if isinstance(files, dict):  # InvenioRDM: {"entries": {key: {...}}}
        files = list((files.get("entries") or {}).values())
    if not files:
        raise DownloadError(f"Zenodo record {data.get('id')}: no files listed (restricted?)")
    out = []
    for entry in files:
        links = entry.get("links") or {}
        url = links.get("self") or links.get("content") or links.get("download")
        key = entry.get("key") or entry.get("filename")
        if not (key and url and entry.get("checksum")):
            raise DownloadError(f"Zenodo record {data.get('id')}: file entry without key/url/md5")
        safe_file_name(key, f"Zenodo record {data.get('id')}")
        out.append(
            {"key": key, "url": url, "size": entry.get("size"), "checksum": entry["checksum"]}
        )
    return out


def pinned_record(settings: dict[str, Any], work: Path) -> dict:
    """The pinned record manifest in `work`, created from the Zenodo API at first download."""
    path = work / RECORD_FILE
    if path.exists():
        return json.loads(path.read_text())
    data = resolve_zenodo_record(settings["record"], settings["zenodo_api"], settings["latest"])
    files = record_files(data)
    chosen = [f for f in files if any(fnmatch.fnmatch(f["key"], p) for p in settings["files"])]
    if not chosen:
        raise DownloadError(
            f"Zenodo record {data.get('id')}: no file matches {settings['files']}; it has "
            f"{', '.join(f['key'] for f in files)} — set datasets.<name>.download.files"
        )
    manifest = {
        "requested": str(settings["record"]),
        "record_id": str(data.get("id")),
        "doi": data.get("doi"),
        "conceptdoi": data.get("conceptdoi"),
        "title": (data.get("metadata") or {}).get("title"),
        "version": (data.get("metadata") or {}).get("version"),
        "resolved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": files,
        "selected": [f["key"] for f in chosen],
    }
    write_text(path, json.dumps(manifest, indent=2) + "\n")
    return manifest


def zenodo_archives(settings: dict[str, Any], work: Path) -> list[Path]:
    """Download (or reuse) and verify every selected file of the pinned record."""
    manifest = pinned_record(settings, work)
    paths = []
    for entry in manifest["files"]:
        if entry["key"] not in manifest["selected"]:
            continue
        name = safe_file_name(entry["key"], str(work / RECORD_FILE))
        print(f"{name}: from {entry['url']}")
        paths.append(
            fetch(
                entry["url"],
                work / name,
                parse_checksum(entry["checksum"]),
                entry.get("size"),
                retries=int(settings["retries"]),
            )
        )
    return paths


def download_dataset(
    dataset: str, out_dir: Path, downloads_dir: Path, overrides: dict[str, Any] | None = None
) -> Path:
    """Fetch, verify and extract `dataset` into `out_dir`: absent, empty, or an earlier
    download (`dfbk.data.outputs.claim_folder`)."""
    settings = source_settings(dataset, overrides)
    work = Path(downloads_dir) / dataset
    out_dir = claim_folder(out_dir, "download", {"downloads folder": work})
    work.mkdir(parents=True, exist_ok=True)
    if settings["source"] == "zenodo":
        archives = zenodo_archives(settings, work)
    else:
        name = safe_file_name(settings["synapse_file"], f"datasets.{dataset}.download.synapse_file")
        archives = [
            fetch_synapse_file(settings["synapse_id"], name, work, settings["md5"], out_dir)
        ]
    staging = staging_folder(out_dir, "staging")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for archive in archives:
            count = extract_archive(
                archive,
                staging,
                settings["include"] or None,
                max_bytes=int(float(settings["max_extract_gb"]) * 2**30),
                max_ratio=float(settings["max_ratio"]),
            )
            print(f"{archive.name}: extracted {count} entries")
        if (work / RECORD_FILE).exists():
            shutil.copyfile(work / RECORD_FILE, staging / RECORD_FILE)
        provenance = {
            "dataset": dataset,
            "archives": [a.name for a in archives],
            "settings": {k: v for k, v in settings.items() if k != "retries"},
            "extracted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_text(staging / PROVENANCE_FILE, json.dumps(provenance, indent=2) + "\n")
        mark(staging, "download", dataset=dataset)
        publish(staging, out_dir, "download")
    except OSError as err:  # disk full, permissions: one line naming the path, staging removed
        where = err.filename or staging
        raise DownloadError(
            f"{where}: cannot write the extracted dataset ({err.strerror or err})"
        ) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not settings["keep_archive"]:
        for archive in archives:
            archive.unlink()
    return out_dir
