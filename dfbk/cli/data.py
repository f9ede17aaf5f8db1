"""Data verbs: `phantom`, `prepare`, `split`, `download`, `weights`."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfbk.cli.common import configured, csv_list, json_object, verb
from dfbk.data.sources.download import SOURCES
from dfbk.errors import ConfigError
from dfbk.plan.schema import default

EXAMPLES = {
    "phantom": "dfbk phantom resources/raw/phantom --subjects 16 --seed 0 --voxel-mm 3",
    "prepare": "dfbk prepare phantom resources/raw/phantom "
    "results/prepare/phantom/store \\\n      --modalities t1n,t2w,t2f --size "
    "256 256",
    "split": "dfbk split results/prepare/phantom/store --out "
    "results/prepare/phantom/splits.json \\\n      --seed 0 --fractions 0.6 "
    "0.15 0.25",
    "weights": "dfbk weights biomedclip\n  dfbk weights inception --from-file pt_inception.pth",
    "download": "dfbk download isles2015 resources/raw/isles2015",
}


def _layout(text: str | None) -> dict | None:
    """--layout: a YAML file, or the layout itself as inline YAML/JSON (the workflow's form)."""
    if text is None:
        return None
    import yaml

    path = Path(text)
    try:
        layout = yaml.safe_load(path.read_text() if path.is_file() else text)
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--layout {text}: cannot read the layout ({err})") from err
    if isinstance(layout, dict) and set(layout) == {"layout"}:
        layout = layout["layout"]  # a file holding `layout:` at its top
    return layout


def cmd_phantom(args: argparse.Namespace) -> None:
    if args.layout == "phantom":
        from dfbk.data.phantom.anatomy import generate_phantom_dataset

        lesions = csv_list(args.lesions) if args.lesions else default("datasets.*.phantom.lesions")
        names = generate_phantom_dataset(
            args.out_dir, args.subjects, args.seed, args.voxel_mm, lesions
        )
    else:
        from dfbk.data.phantom.layouts import generate_layout_dataset

        lesions = tuple(csv_list(args.lesions)) if args.lesions else None
        names = generate_layout_dataset(
            args.layout, args.out_dir, args.subjects, args.seed, args.voxel_mm, lesions
        )
    print(f"wrote {len(names)} {args.layout} phantom subjects to {args.out_dir}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from dfbk.data.slices.prepare import prepare_dataset

    meta = prepare_dataset(
        args.dataset,
        args.raw_dir,
        args.out_dir,
        csv_list(args.modalities),
        tuple(args.size),
        args.min_foreground,
        args.on_bad_case,
        args.skipped_csv,
        args.jobs,
        _layout(args.layout),
    )
    from dfbk.data.slices.store import store_fingerprint

    print(
        f"{args.out_dir}: {len(meta['subjects'])} subjects, {meta['n_slices']} slices, "
        f"fingerprint {store_fingerprint(args.out_dir)}"
    )


def cmd_split(args: argparse.Namespace) -> None:
    from dfbk.data.slices.splits import write_or_check_split
    from dfbk.data.slices.store import SliceStore

    fractions = dict(zip(("train", "val", "test"), args.fractions, strict=True))
    split = write_or_check_split(args.out, SliceStore(args.store).subjects, fractions, args.seed)
    print(", ".join(f"{k}: {len(v)}" for k, v in split.items()))


def cmd_weights(args: argparse.Namespace) -> None:
    from dfbk.data.sources.weights import main_weights

    main_weights(args.name, args.dest, args.from_file, args.receipt)


def cmd_download(args: argparse.Namespace) -> None:
    """Thin CLI wrapper over `download_dataset`."""
    from dfbk.data.sources.download import download_dataset

    overrides = json_object(args.settings, "--settings")
    out = download_dataset(args.dataset, args.out_dir, args.downloads, overrides)
    print(f"{args.dataset}: ready in {out}")


def register(verbs: argparse._SubParsersAction) -> None:
    """Add this group's verbs to the `dfbk` command."""
    p = verb(
        verbs, "phantom", "synthesise the multi-contrast head phantom dataset", EXAMPLES["phantom"]
    )
    p.add_argument("out_dir", type=Path, help="folder to write phantom-NNN/ subject folders into")
    configured(p, "--subjects", "datasets.*.phantom.subjects", "number of subjects", type=int)
    configured(p, "--seed", "datasets.*.phantom.seed", "random seed", type=int)
    configured(
        p, "--voxel-mm", "datasets.*.phantom.voxel_mm", "isotropic voxel size in mm", type=float
    )
    p.add_argument(
        "--lesions",
        help="lesion types, cycled over subjects (default: tumour,stroke,none for the phantom "
        "layout, the dataset's own for the others)",
    )
    p.add_argument(
        "--layout",
        choices=("phantom", "brats2023", "isles2015", "synthrad2023"),
        default="phantom",
        help="write the phantom in this dataset's layout (dfbk.data.phantom.layouts)",
    )
    p.set_defaults(func=cmd_phantom)

    p = verb(
        verbs, "prepare", "raw volumes -> checked, normalised slice store", EXAMPLES["prepare"]
    )
    p.add_argument("dataset", help="dataset layout name (e.g. phantom)")
    p.add_argument("raw_dir", type=Path, help="folder holding the raw subject folders")
    p.add_argument("out_dir", type=Path, help="slice store folder to create")
    p.add_argument("--modalities", required=True, help="comma-separated modalities to keep")
    configured(
        p,
        "--size",
        "datasets.*.size",
        "slice size after centre crop/zero pad",
        type=int,
        nargs=2,
        metavar=("H", "W"),
    )
    configured(
        p,
        "--min-foreground",
        "datasets.*.min_foreground",
        "min foreground fraction per slice",
        type=float,
    )
    configured(p, "--on-bad-case", "datasets.*.on_bad_case", "bad subject policy")
    p.add_argument("--skipped-csv", type=Path, help="where to list skipped subjects")
    p.add_argument("--jobs", type=int, default=1, help="reader processes (default 1)")
    p.add_argument(
        "--layout",
        help="YAML file (or inline YAML) describing a dataset of your own: case and file "
        "patterns, label, mask, foreground (docs/data.md, 'Your own paired dataset')",
    )
    p.set_defaults(func=cmd_prepare)

    p = verb(
        verbs, "split", "seeded subject-level train/val/test split, written once", EXAMPLES["split"]
    )
    p.add_argument("store", type=Path, help="slice store folder")
    p.add_argument("--out", type=Path, required=True, help="splits.json to write (or check)")
    configured(p, "--seed", "datasets.*.split.seed", "split seed", type=int)
    configured(
        p,
        "--fractions",
        "datasets.*.split.fractions",
        "split fractions",
        type=float,
        nargs=3,
        metavar=("TRAIN", "VAL", "TEST"),
    )
    p.set_defaults(func=cmd_split)

    p = verb(
        verbs, "weights", "fetch and verify pretrained weights (paper config)", EXAMPLES["weights"]
    )
    p.add_argument("name", choices=("biomedclip", "resvit-vit", "inception"), help="weight set")
    p.add_argument(
        "--dest",
        type=Path,
        help="root folder (default: where the library looks: the Hugging Face hub cache for "
        "biomedclip, $TORCH_HOME for inception, resources/weights for resvit-vit)",
    )
    p.add_argument(
        "--from-file",
        type=Path,
        help="copy from this local file or folder instead of downloading (air-gapped clusters)",
    )
    p.add_argument("--receipt", type=Path, help="JSON to write listing the verified files")
    p.set_defaults(func=cmd_weights)

    p = verbs.add_parser(
        "download",
        help="download, verify and extract a dataset (brats2023, isles2015, synthrad2023)",
        description="Download, verify and extract a dataset into a new folder.",
        epilog="Manual steps per dataset: docs/data.md, 'Getting the data'.\n\nexample:\n  "
        + EXAMPLES["download"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", choices=sorted(SOURCES), help="dataset name")
    p.add_argument("out_dir", type=Path, help="folder to create with the extracted dataset")
    configured(
        p,
        "--downloads",
        "downloads_dir",
        "where archives, partial downloads and the pinned record are kept ({dataset}/ is appended)",
        type=Path,
    )
    p.add_argument(
        "--settings",
        default="{}",
        help="JSON object overriding the dataset's download settings "
        "(config key datasets.<name>.download)",
    )
    p.set_defaults(func=cmd_download)
