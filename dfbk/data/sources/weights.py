"""Pretrained weights of the paper config: fetched, verified, placed where each library looks.

`config/paper.yaml` needs three sets of published weights that the code never downloads at run
time (HF_HUB_OFFLINE=1 on compute nodes):

- `biomedclip`: BiomedCLIP (open_clip) and its PubMedBERT text model's config and vocabulary,
  laid out as a Hugging Face hub cache (`models--org--name/snapshots/<commit>/<file>` plus
  `refs/main`), which is where `dfbk.knowledge.encoders.locate_biomedclip` looks offline.
- `resvit-vit`: Google's ImageNet-21k R50+ViT-B/16 `.npz` (ResViT's published initialisation),
  converted with timm's own `.npz` loader into `R50+ViT-B_16.safetensors`, the timm-format state
  dict ResViT's `vit_weights` setting reads.
- `inception`: pytorch-fid's Inception weights in `$TORCH_HOME/hub/checkpoints/`, the only
  place pytorch-fid loads them from.

Each file goes through the datasets' resumable, checksum-verified fetch
(`dfbk.data.sources.fetch`) or,
on an air-gapped cluster, is copied from a local file or folder (`--from-file`) and verified the
same way. Where a publisher states no SHA-256 (the small Hugging Face text files and Google's
`.npz`), the hash is recorded at the first download in `dfbk-weights.lock.json` beside the
files, and every later run or copy is checked against that record.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dfbk.data.io import write_text
from dfbk.data.sources.fetch import DownloadError, fetch, file_digests, verify
from dfbk.errors import ConfigError

LOCK_NAME = "dfbk-weights.lock.json"
UNKNOWN = "sha256 unknown: verified on first download and written to dfbk-weights.lock.json"

BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDCLIP_REVISION = "9f341de24bfb00180f1b847274256e9b65a3a32e"
# open_clip_config.json's model_cfg.text_cfg.hf_model_name: the text tower's config and vocab.
TEXT_REPO = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
TEXT_REVISION = "34e06a53a3575a73b23d92727cb12a8fb4e11f04"
VIT_NPZ = "R50+ViT-B_16.npz"
VIT_SAFETENSORS = "R50+ViT-B_16.safetensors"
INCEPTION = "pt_inception-2015-12-05-6726825d.pth"


class WeightsError(ConfigError):
    """Weights are missing, corrupt or cannot be placed; the message says the command to run."""


@dataclass(frozen=True)
class WeightFile:
    """One published file: where it comes from, where it goes under the set's root, its hash."""

    name: str  # its name in a --from-file folder
    url: str
    target: str  # path under the root
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class WeightSet:
    """A named set of files, the root the consuming library reads, and how to point it there."""

    name: str
    summary: str
    files: tuple[WeightFile, ...]
    default_root: Callable[[], Path]
    root_hint: str  # how to make the library read a non-default root


def _hf_file(repo: str, revision: str, name: str, sha256: str | None = None) -> WeightFile:
    folder = "models--" + repo.replace("/", "--")
    return WeightFile(
        name=name,
        url=f"https://huggingface.co/{repo}/resolve/{revision}/{name}",
        target=f"{folder}/snapshots/{revision}/{name}",
        sha256=sha256,
    )


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache the BiomedCLIP loader reads (HF_HUB_CACHE, HF_HOME, XDG)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home) / "hub"


def torch_hub_dir() -> Path:
    """torch.hub's cache folder as the environment sets it (as `torch.hub.get_dir()`)."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]) / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "torch" / "hub"


def torch_home() -> Path:
    """$TORCH_HOME as torch.hub resolves it; pytorch-fid reads <it>/hub/checkpoints/."""
    return torch_hub_dir().parent


WEIGHT_SETS: dict[str, WeightSet] = {
    "biomedclip": WeightSet(
        "biomedclip",
        "BiomedCLIP (knowledge.encoder: biomedclip) and its PubMedBERT text config/vocab",
        (
            _hf_file(BIOMEDCLIP_REPO, BIOMEDCLIP_REVISION, "open_clip_config.json"),
            # Hugging Face's Git LFS record of the file at this revision.
            _hf_file(
                BIOMEDCLIP_REPO,
                BIOMEDCLIP_REVISION,
                "open_clip_pytorch_model.bin",
                "52cc993c5c5ff962bd0c60931874bc001e7e9b41666a385530f4a036294576be",
            ),
            _hf_file(TEXT_REPO, TEXT_REVISION, "config.json"),
            _hf_file(TEXT_REPO, TEXT_REVISION, "vocab.txt"),
        ),
        hf_hub_cache,
        "set HF_HUB_CACHE to it (or knowledge.biomedclip_dir to the snapshot folder)",
    ),
    "resvit-vit": WeightSet(
        "resvit-vit",
        "ImageNet-21k R50+ViT-B/16 for ResViT, converted to a timm state dict (vit_weights)",
        (
            WeightFile(
                VIT_NPZ,
                "https://storage.googleapis.com/vit_models/imagenet21k/R50+ViT-B_16.npz",
                VIT_NPZ,
            ),
        ),
        lambda: Path("resources/weights"),
        f"set methods.resvit.overrides.vit_weights to <dest>/{VIT_SAFETENSORS}",
    ),
    "inception": WeightSet(
        "inception",
        "pytorch-fid's Inception weights (the FID column)",
        (
            WeightFile(
                INCEPTION,
                f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION}",
                f"hub/checkpoints/{INCEPTION}",
                "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
                95_628_359,
            ),
        ),
        torch_home,
        "set TORCH_HOME to it",
    ),
}


def get_weight_set(name: str) -> WeightSet:
    """The set called `name`; an unknown name lists the known ones."""
    if name not in WEIGHT_SETS:
        raise ConfigError(f"unknown weights '{name}'; known: {', '.join(WEIGHT_SETS)}")
    return WEIGHT_SETS[name]


def howto(name: str) -> str:
    """The commands that provide weight set `name`, online and air-gapped."""
    return (
        f"run `dfbk weights {name}` on a machine with internet, or on an air-gapped cluster copy "
        f"the files there and run `dfbk weights {name} --from-file <file or folder>` "
        "(docs/cluster.md, 'Pretrained weights')"
    )


# ----- lock file ----------------------------------------------------------------------------
def _read_lock(root: Path) -> dict[str, Any]:
    path = root / LOCK_NAME
    if not path.exists():
        return {}
    try:
        lock = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise WeightsError(f"{path}: unreadable lock file ({err}); delete it to re-record") from err
    if not isinstance(lock, dict):
        raise WeightsError(f"{path}: not a JSON object; delete it to re-record")
    return lock


def _write_lock(root: Path, lock: dict[str, Any]) -> None:
    write_text(root / LOCK_NAME, json.dumps(lock, indent=1, sort_keys=True) + "\n")


# ----- placing one file ---------------------------------------------------------------------
def _source(weight_set: WeightSet, item: WeightFile, from_file: Path) -> Path:
    """The local file to copy for `item`: the file itself, or `<folder>/<name>`."""
    if from_file.is_dir():
        path = from_file / item.name
    elif len(weight_set.files) == 1:
        path = from_file
    else:
        names = ", ".join(f.name for f in weight_set.files)
        raise WeightsError(
            f"{from_file}: '{weight_set.name}' has several files ({names}); give a folder "
            "holding them"
        )
    if not path.is_file():
        raise WeightsError(f"{path}: not found (--from-file); " + howto(weight_set.name))
    return path


def _copy_verified(source: Path, staged: Path, sha256: str | None, size: int | None) -> None:
    """Copy `source` to `staged` and verify it; on a mismatch nothing is left behind."""
    staged.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(source, staged)
    except OSError as err:
        staged.unlink(missing_ok=True)
        raise WeightsError(f"{staged}: cannot copy {source} ({err.strerror or err})") from None
    problem = verify(staged, {"sha256": sha256} if sha256 else None, size)
    if problem is not None:
        staged.unlink()
        raise WeightsError(
            f"{source}: {problem}; not the published file (or not the one recorded in "
            f"{LOCK_NAME} at the first download)"
        )


def _known_sha(item: WeightFile, previous: dict[str, Any]) -> str | None:
    """The published SHA-256 of a file, else the one the lock recorded, else None."""
    return item.sha256 or previous.get(item.target, {}).get("sha256")


def _staged_name(dest: Path) -> Path:
    """Where a file waits, verified, until the whole set has passed its checks."""
    return dest.with_name(dest.name + ".new")


def _stage(
    weight_set: WeightSet,
    item: WeightFile,
    root: Path,
    record: dict[str, Any],
    from_file: Path | None,
    retries: int,
) -> Path | None:
    """Fetch or copy one file to its staged name and verify it; None when the file in place
    already verifies against a known hash (or, downloading with no hash known, is kept).

    A file in place that no hash vouches for is never overwritten by a different copy: it
    was not recorded by this command (`dfbk.data.outputs`: a command replaces only what it
    made).
    """
    dest = root / item.target
    sha256 = item.sha256 or record.get("sha256")
    size = item.size or record.get("size")
    checksums = {"sha256": sha256} if sha256 else None
    staged = _staged_name(dest)
    if staged.exists() and sha256 is not None and verify(staged, checksums, size) is None:
        return staged  # verified by an earlier run that failed on another file of the set
    staged.unlink(missing_ok=True)
    try:
        if from_file is not None:
            source = _source(weight_set, item, from_file)
            if dest.exists() and sha256 is not None and verify(dest, checksums, size) is None:
                return None
            if dest.exists() and sha256 is None:
                theirs, ours = (file_digests(p, ["sha256"])["sha256"] for p in (source, dest))
                if theirs == ours:
                    return None
                raise WeightsError(
                    f"{dest}: already there, differs from {source} and is not recorded in "
                    f"{root / LOCK_NAME}; move it away to install this copy"
                )
            _copy_verified(source, staged, sha256, size)
        elif dest.exists() and (sha256 is None or verify(dest, checksums, size) is None):
            return None  # a download kept in place; the set's own check (fetch_weights) reads it
        else:
            fetch(item.url, staged, checksums, size, retries)
    except DownloadError as err:
        raise WeightsError(f"{err}; " + howto(weight_set.name)) from err
    return staged


def _entry(item: WeightFile, path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The lock entry of a verified file: its sha256, size and how it is verified."""
    return {
        "sha256": file_digests(path, ["sha256"])["sha256"],
        "size": path.stat().st_size,
        "url": item.url,
        "verified": "published sha256" if item.sha256 else record.get("verified", UNKNOWN),
        "recorded_at": record.get("recorded_at") or datetime.now(UTC).isoformat(timespec="seconds"),
    }


# ----- after the files: what each library needs besides them --------------------------------
def _check_biomedclip(config_path: Path, shown: Path) -> None:
    """The open_clip config must name the text model whose files this set fetches; `shown` is
    the file messages name (the user's, not the staged copy)."""
    try:
        text_repo = json.loads(config_path.read_text())["model_cfg"]["text_cfg"]["hf_model_name"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise WeightsError(f"{shown}: not BiomedCLIP's open_clip config ({err})") from err
    if text_repo != TEXT_REPO:
        raise WeightsError(f"{shown}: names text model {text_repo}, but {TEXT_REPO} was fetched")


def _finish_biomedclip(root: Path) -> list[str]:
    """refs/main of both repositories -> the pinned commits (the offline loader follows refs)."""
    notes = []
    for repo, revision in ((BIOMEDCLIP_REPO, BIOMEDCLIP_REVISION), (TEXT_REPO, TEXT_REVISION)):
        ref = root / ("models--" + repo.replace("/", "--")) / "refs" / "main"
        old = ref.read_text().strip() if ref.exists() else None
        if old != revision:
            ref.parent.mkdir(parents=True, exist_ok=True)
            write_text(ref, revision)  # no newline: huggingface_hub reads the file verbatim
            if old:
                notes.append(f"{repo}: refs/main moved from {old} to the pinned {revision}")
    return notes


def convert_vit_npz(npz: Path, out: Path) -> Path:
    """Google's R50+ViT-B/16 `.npz` -> timm `vit_base_r50_s16_224` state dict (.safetensors).

    timm's own `.npz` loader maps the Flax names, so ResViT reads `blocks.*`, `norm.*`,
    `patch_embed.proj.*` and `pos_embed` in timm's layout. Written atomically.
    """
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("vit_base_r50_s16_224", pretrained=False)
    try:
        model.load_pretrained(str(npz))
    except Exception as err:  # a truncated or different .npz: say which file and why
        raise WeightsError(
            f"{npz}: not the R50+ViT-B/16 .npz timm expects ({type(err).__name__}: {err})"
        ) from err
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    part = out.with_name(out.name + ".part")
    save_file(state, str(part), metadata={"source": npz.name, "converter": "timm.load_pretrained"})
    os.replace(part, out)
    return out


def _convert_resvit(
    root: Path, npz: Path, source: Path, digest: str, previous: dict[str, Any] | None
) -> Path | None:
    """Convert the staged (or placed) .npz, whose sha256 is `digest`, to a staged
    .safetensors; None when the one in place was converted by this command from the same
    content (the lock's `converted_from`). `source`: the file messages name (the user's).

    A .safetensors in place that the lock does not record as converted here is not replaced.
    """
    out, previous = root / VIT_SAFETENSORS, previous or {}
    if out.exists() and previous.get("converted_from") == digest:
        return None
    if out.exists() and "converted_from" not in previous:
        raise WeightsError(
            f"{out}: already there and not recorded in {root / LOCK_NAME} as converted by "
            "`dfbk weights`; move it away to convert again"
        )
    staged = _staged_name(out)
    try:
        convert_vit_npz(npz, staged)
    except WeightsError as err:  # name the file the user gave, not the staged copy
        raise WeightsError(str(err).replace(str(npz), str(source))) from None
    return staged


# ----- the command --------------------------------------------------------------------------
def fetch_weights(
    name: str,
    dest: Path | None = None,
    from_file: Path | None = None,
    retries: int = 3,
) -> dict[str, Any]:
    """Fetch (or copy with `from_file`) and verify weight set `name` under `dest`.

    `dest` defaults to where the consuming library looks (see the module docstring). Every
    file is first staged beside its final name (`<name>.new`) and verified; the set's own check
    (BiomedCLIP's config names its text model; the ViT `.npz` converts) runs on the staged
    files; only then are they renamed into place and their hashes recorded in the lock, so a
    refused file leaves nothing behind and pins nothing. Returns a receipt: the root, each
    file's path and SHA-256, and how to point the library at the root.
    """
    weight_set = get_weight_set(name)
    root = Path(dest) if dest is not None else weight_set.default_root()
    root.mkdir(parents=True, exist_ok=True)
    lock = _read_lock(root)
    previous = lock.get(name, {})
    staged: dict[str, Path] = {}  # target -> verified file waiting for its final name
    converted = None
    try:
        for item in weight_set.files:
            path = _stage(weight_set, item, root, previous.get(item.target, {}), from_file, retries)
            if path is not None:
                staged[item.target] = path
        placed = {f.target: staged.get(f.target, root / f.target) for f in weight_set.files}
        records = {
            item.target: _entry(item, placed[item.target], previous.get(item.target, {}))
            for item in weight_set.files
        }
        given = weight_set.files[0]  # named in messages: the user's file, or the download
        shown = _source(weight_set, given, from_file) if from_file else root / given.target
        if name == "biomedclip":
            _check_biomedclip(placed[given.target], shown)
        elif name == "resvit-vit":
            npz = records[VIT_NPZ]["sha256"]
            converted = _convert_resvit(root, placed[VIT_NPZ], shown, npz, previous.get(VIT_NPZ))
            if converted is not None:
                staged[VIT_SAFETENSORS] = converted
            records[VIT_NPZ]["converted_from"] = records[VIT_NPZ]["sha256"]
        for target, path in staged.items():  # every check passed: install, then record
            os.replace(path, root / target)
        staged = {}
    finally:  # refused: drop every copy, and downloads no hash vouches for; a verified
        # download (a published or recorded hash) waits for the rerun instead of a new transfer
        known = {f.target for f in weight_set.files if _known_sha(f, previous)}
        known = set() if from_file is not None else known
        for target, path in staged.items():
            if target not in known:
                path.unlink(missing_ok=True)
    lock[name] = records
    _write_lock(root, lock)
    notes = _finish_biomedclip(root) if name == "biomedclip" else []
    if converted is not None:
        notes.append(
            f"converted to {root / VIT_SAFETENSORS} (timm vit_base_r50_s16_224 state dict)"
        )
    default = weight_set.default_root()
    use = weight_set.root_hint.replace("<dest>", str(root))
    if name != "resvit-vit" and root.resolve() == default.resolve():
        use = ""  # the library finds it without help
    return {
        "name": name,
        "root": str(root.resolve()),
        "files": {t: {k: e[k] for k in ("sha256", "size", "verified")} for t, e in records.items()},
        "use": use,
        "notes": notes,
    }


def main_weights(
    name: str, dest: Path | None, from_file: Path | None, receipt: Path | None
) -> None:
    """`dfbk weights`: place the set, print where, write the receipt JSON when asked."""
    result = fetch_weights(name, dest, from_file)
    for note in result["notes"]:
        print(f"dfbk weights: {note}", file=sys.stderr)
    for target, info in result["files"].items():
        print(f"{Path(result['root']) / target}: sha256 {info['sha256']} ({info['verified']})")
    if result["use"]:
        print(f"dfbk weights: {name} is not in the default place; {result['use']}")
    if receipt is not None:
        Path(receipt).parent.mkdir(parents=True, exist_ok=True)
        write_text(Path(receipt), json.dumps(result, indent=1, sort_keys=True) + "\n")
