"""The `dfbk` command: one verb per workflow stage, each a thin wrapper over a library call.

Positionals say what, options say how. Errors from bad input or config print one line naming
the file or key and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dfbk.errors import ConfigError, DfbkError

# The config schema's defaults (workflow/schemas/config.schema.yaml; tests/test_cli.py checks).
DEFAULT_SLICE_SIZE = (256, 256)  # datasets.<name>.size
DEFAULT_TRANSLATE_BATCH = 32  # translate.batch_size
# translate.tiling: how a patch-trained model covers a test slice (dfbk.translation.inference_tile);
# here, torch-free, so the parser and the config schema's enum (checked by a test) share it.
TILINGS = ("patch", "slice")


def _csv(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def json_object(text: str, option: str) -> dict:
    """Parse a JSON-object option; bad JSON or another type is one ConfigError naming it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{option}: not valid JSON ({err.msg} at character {err.pos})") from err
    if not isinstance(value, dict):
        raise ConfigError(f"{option}: must be a JSON object {{...}}, got {type(value).__name__}")
    return value


def check_train_request(args: argparse.Namespace) -> tuple[dict, dict]:
    """Refuse bad --overrides/--speed JSON, an unknown preset or override key before any work.

    Built-in methods are checked against the torch-free catalog, so the error comes in well
    under a second; a method from --module is checked when its class is imported.
    """
    from dfbk.methods.catalog import load_catalog

    overrides = json_object(args.overrides, "--overrides")
    speed = json_object(args.speed, "--speed")
    catalog = load_catalog()
    if args.module is None and args.method not in catalog:
        raise ConfigError(
            f"method: unknown method '{args.method}'; known: {', '.join(sorted(catalog))}"
        )
    if args.module is None:
        info = catalog[args.method]
        if args.preset not in info.presets:
            raise ConfigError(
                f"--preset: method '{args.method}' has no preset '{args.preset}'; "
                f"known: {', '.join(info.presets)}"
            )
        stage = info.stages.get(args.stage, {}) if args.stage else {}
        try:
            info.resolve_hparams(args.preset, {**stage, **overrides})  # steps, batch too
        except ConfigError as err:
            raise ConfigError(f"--overrides: {err}") from err
    return overrides, speed


def cmd_phantom(args: argparse.Namespace) -> None:
    if args.layout == "phantom":
        from dfbk.data.phantom import generate_phantom_dataset

        lesions = _csv(args.lesions or "tumour,stroke,none")
        names = generate_phantom_dataset(
            args.out_dir, args.subjects, args.seed, args.voxel_mm, lesions
        )
    else:
        from dfbk.data.phantom_layouts import generate_layout_dataset

        lesions = tuple(_csv(args.lesions)) if args.lesions else None
        names = generate_layout_dataset(
            args.layout, args.out_dir, args.subjects, args.seed, args.voxel_mm, lesions
        )
    print(f"wrote {len(names)} {args.layout} phantom subjects to {args.out_dir}")


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


def cmd_prepare(args: argparse.Namespace) -> None:
    from dfbk.data.prepare import prepare_dataset

    meta = prepare_dataset(
        args.dataset,
        args.raw_dir,
        args.out_dir,
        _csv(args.modalities),
        tuple(args.size),
        args.min_foreground,
        args.on_bad_case,
        args.skipped_csv,
        args.jobs,
        _layout(args.layout),
    )
    from dfbk.data.store import store_fingerprint

    print(
        f"{args.out_dir}: {len(meta['subjects'])} subjects, {meta['n_slices']} slices, "
        f"fingerprint {store_fingerprint(args.out_dir)}"
    )


def cmd_split(args: argparse.Namespace) -> None:
    from dfbk.data.splits import write_or_check_split
    from dfbk.data.store import SliceStore

    fractions = dict(zip(("train", "val", "test"), args.fractions, strict=True))
    split = write_or_check_split(args.out, SliceStore(args.store).subjects, fractions, args.seed)
    print(", ".join(f"{k}: {len(v)}" for k, v in split.items()))


def cmd_train(args: argparse.Namespace) -> None:
    from dfbk.training.guard import FolderLock, stop_with_workflow

    overrides, speed = check_train_request(args)
    if args.gpus > 1 and "WORLD_SIZE" not in os.environ:  # data parallel: torchrun runs N of us
        FolderLock(args.checkpoint_dir).acquire().release()  # fail fast if another trainer runs
        from dfbk.training.distributed import torchrun_command

        command = torchrun_command(args.argv, args.gpus)
        os.execv(command[0], command)
    worker = os.environ.get("RANK", "0") != "0"
    lock = None if worker else FolderLock(args.checkpoint_dir).acquire()  # before torch
    stop_with_workflow()
    import torch

    from dfbk.training.trainer import TrainSpec, train

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = TrainSpec(
        dataset=args.dataset,
        direction=args.direction,
        method=args.method,
        seed=args.seed,
        store_dir=args.store,
        split_path=args.split,
        out_dir=args.out_dir,
        checkpoint_dir=args.checkpoint_dir,
        preset=args.preset,
        overrides=overrides,
        module=args.module,
        stage=args.stage,
        knowledge_path=args.knowledge,
        init_from=args.init_from,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        amp=not args.no_amp,
        val_every=args.val_every,
        val_slices=args.val_slices,
        evaluate=args.evaluate,
        speed=speed,
    )
    try:
        written = train(spec)
        if not worker:
            print(f"wrote {written}")
    finally:
        if lock is not None:
            lock.release()


def cmd_predict(args: argparse.Namespace) -> None:
    import torch

    from dfbk.translation import predict_test_set

    if args.threads:
        torch.set_num_threads(args.threads)
    index = predict_test_set(
        args.checkpoint,
        args.store,
        args.split,
        args.out_dir,
        args.batch_size,
        args.device,
        tiling=args.tiling,
    )
    size, tile = index["slice_size"], index["tile"]
    print(
        f"{args.out_dir}: {len(index['subjects'])} test subjects, whole {size[0]}x{size[1]} "
        f"slices in {'tiles' if index['tiling'] == 'patch' else 'one pass'} of "
        f"{tile[0]}x{tile[1]} (the store's grid and spacing)"
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from dfbk.evaluation.evaluate import evaluate_predictions

    info = {
        "dataset": args.dataset,
        "direction": args.direction,
        "method": args.method,
        "seed": args.seed,
    }
    result = evaluate_predictions(
        args.store, args.predictions, args.split, args.direction, args.out_dir, info
    )
    summary = result["summary"]
    print(
        ", ".join(
            f"{k} {summary[k]['mean']:.4f}"
            for k in ("psnr_fg", "ssim_fg", "mae_fg")
            if k in summary
        )
    )


def _seeded(items: list[str], option: str) -> dict[str, dict[int, Path]]:
    """Run folders -> {method: {seed: folder}}.

    An item is METHOD=PATH, METHOD@SEED=PATH, or a bare run folder named as the results tree
    names it (`.../{method}/seed-{n}`: the path is the experiment key), which is what the
    workflow passes.
    """
    runs: dict[str, dict[int, Path]] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:  # a run folder: the method and seed are its last two names
            folder = Path(item)
            name, path = f"{folder.parent.name}@{folder.name.removeprefix('seed-')}", item
            if not folder.name.startswith("seed-"):
                name = ""
        method, _, seed = name.partition("@")
        if not method or not path or (seed and not seed.isdigit()):
            raise ConfigError(
                f"{option} {item}: expected METHOD=PATH, METHOD@SEED=PATH or a run folder "
                ".../METHOD/seed-N"
            )
        runs.setdefault(method, {})[int(seed or 0)] = Path(path)
    return runs


def cmd_figure(args: argparse.Namespace) -> None:
    from dfbk.reporting.figures import make_comparison_figure

    preds = _seeded(args.prediction, "--prediction")
    out = make_comparison_figure(
        args.store,
        args.split,
        args.direction,
        preds,
        args.out,
        slices=args.slices,
        formats=tuple(args.formats),
    )
    print(f"wrote {out} and its {', '.join(f for f in args.formats if f != out.suffix[1:])}")


def cmd_curves(args: argparse.Namespace) -> None:
    from dfbk.reporting.curves import make_loss_curves

    out = make_loss_curves(
        _seeded(args.run, "--run"), args.out, args.title, formats=tuple(args.formats)
    )
    print(f"wrote {out} and its {', '.join(f for f in args.formats if f != out.suffix[1:])}")


def cmd_tables(args: argparse.Namespace) -> None:
    from dfbk.evaluation.protocols import protocol_notes
    from dfbk.reporting.captions import caption_notes, training_frame
    from dfbk.reporting.fid import fid_columns
    from dfbk.reporting.tables import collect_results, write_comparison_table

    frame = collect_results([Path(p) for p in args.metrics])
    fid, fid_note = fid_columns(args.metrics)
    notes = [args.caption, protocol_notes(args.metrics), fid_note, caption_notes(args.runs)]
    caption = " ".join(filter(None, notes))
    reference = args.significance_vs if args.significance_vs in set(frame.method) else None
    paths = write_comparison_table(
        frame,
        args.out_stem,
        caption=caption,
        significance_vs=reference,
        extra_columns=fid,
        training=training_frame(args.runs),
        capacity=args.capacity,
    )
    print("\n".join(str(p) for p in paths.values()))


def cmd_power(args: argparse.Namespace) -> None:
    from dfbk.reporting.tables import power_report

    print(power_report(args.results_dir, args.reference))


def cmd_track(args: argparse.Namespace) -> None:
    from dfbk.tracking.mlflow_import import default_tracking_uri, import_runs

    runs = [(Path(t), Path(e)) for t, e in zip(args.train_dirs, args.eval_dirs, strict=True)]
    figures: dict[tuple[str, str], list[Path]] = {}
    for item in args.figure:
        dataset, direction, path = item.split(":", 2)
        figures.setdefault((dataset, direction), []).append(Path(path))
    uri = args.uri or default_tracking_uri(Path(args.results_dir))
    imported = import_runs(
        runs,
        figures,
        uri,
        args.experiment,
        args.out,
        log_models=not args.no_models,
        register_models=args.register_models,
    )
    print(f"{len(imported)} runs in MLflow at {uri}")


def cmd_weights(args: argparse.Namespace) -> None:
    from dfbk.weights import main_weights

    main_weights(args.name, args.dest, args.from_file, args.receipt)


def _millions(n: int) -> str:
    return "0" if n == 0 else f"{n / 1e6:.3g}M" if n >= 1e5 else f"{n / 1e3:.3g}k"


def method_lines() -> list[str]:
    """One line per built-in method: name, presets with parameter counts, then its description.

    Read from the torch-free catalog (dfbk/methods/catalog.json), so listing costs no import of
    torch; counts are trainable parameters at each preset's own values.
    """
    from dfbk.methods.catalog import load_catalog

    catalog = load_catalog()
    presets = {
        name: ", ".join(f"{p} {_millions(n)}" for p, n in info.parameters.items())
        for name, info in catalog.items()
    }
    width, preset_width = max(map(len, catalog)), max(map(len, presets.values()))
    lines = [f"{'method':<{width}}  {'presets (parameters)':<{preset_width}}  description"]
    for name in sorted(catalog):
        lines.append(
            f"{name:<{width}}  {presets[name]:<{preset_width}}  {catalog[name].description}"
        )
    return lines


def cmd_list_methods(args: argparse.Namespace) -> None:
    if args.names_only:
        from dfbk.methods.registry import list_methods

        print("\n".join(list_methods()))
        return
    print("\n".join(method_lines()))


def cmd_status(args: argparse.Namespace) -> None:
    from dfbk.status import collect_status, format_status, load_config

    config = load_config(args.configfile)
    if args.results_dir is not None:
        config["results_dir"] = str(args.results_dir)
    print(format_status(collect_status(config, args.directory)))


def _version() -> str:
    """The installed distribution's version (what pip installed), else the package's own."""
    from importlib.metadata import PackageNotFoundError, version

    import dfbk

    try:
        return version("dfbk-bench")
    except PackageNotFoundError:
        return dfbk.__version__


# One worked example per verb, shown at the end of its --help (argparse epilog).
EXAMPLES: dict[str, str] = {
    "phantom": "dfbk phantom resources/raw/phantom --subjects 16 --seed 0 --voxel-mm 3",
    "prepare": "dfbk prepare phantom resources/raw/phantom results/prepare/phantom/store "
    "\\\n      --modalities t1n,t2w,t2f --size 256 256",
    "split": "dfbk split results/prepare/phantom/store --out results/prepare/phantom/splits.json "
    "\\\n      --seed 0 --fractions 0.6 0.15 0.25",
    "train": "dfbk train phantom t1n-to-t2w dfbk --preset tiny --seed 0 \\\n"
    "      --store results/prepare/phantom/store --split results/prepare/phantom/splits.json "
    "\\\n      --out-dir results/train/phantom/t1n-to-t2w/dfbk/seed-0 \\\n"
    "      --checkpoint-dir results/checkpoints/phantom/t1n-to-t2w/dfbk/seed-0 "
    "\\\n      --overrides '{\"steps\": 200}'",
    "predict": "dfbk predict results/train/phantom/t1n-to-t2w/dfbk/seed-0/model.pt \\\n"
    "      results/prepare/phantom/store results/prepare/phantom/splits.json \\\n"
    "      results/translate/phantom/t1n-to-t2w/dfbk/seed-0 --batch-size 32",
    "evaluate": "dfbk evaluate results/prepare/phantom/store "
    "results/translate/phantom/t1n-to-t2w/dfbk/seed-0 \\\n"
    "      results/prepare/phantom/splits.json t1n-to-t2w "
    "results/evaluate/phantom/t1n-to-t2w/dfbk/seed-0 \\\n"
    "      --dataset phantom --method dfbk --seed 0",
    "figure": "dfbk figure results/prepare/phantom/store results/prepare/phantom/splits.json "
    "t1n-to-t2w \\\n      results/figures/phantom/t1n-to-t2w.png "
    "--prediction dfbk@0=results/translate/phantom/t1n-to-t2w/dfbk/seed-0",
    "curves": "dfbk curves results/figures/phantom/t1n-to-t2w_curves.png \\\n"
    "      --run dfbk@0=results/train/phantom/t1n-to-t2w/dfbk/seed-0 "
    "--title 'phantom t1n-to-t2w'",
    "tables": "dfbk tables results/evaluate/*/*/*/seed-*/metrics.json "
    "--out-stem results/tables/comparison",
    "power": "dfbk power results",
    "track": "dfbk track --train-dirs results/train/phantom/t1n-to-t2w/dfbk/seed-0 \\\n"
    "      --eval-dirs results/evaluate/phantom/t1n-to-t2w/dfbk/seed-0 "
    "--out results/tracking/imported.json",
    "weights": "dfbk weights biomedclip\n  dfbk weights inception --from-file pt_inception.pth",
    "list-methods": "dfbk list-methods",
    "status": "dfbk status --configfile config/paper.yaml",
    "download": "dfbk download isles2015 resources/raw/isles2015",
    "knowledge": "dfbk knowledge t2w --out results/knowledge/brats2023/t2w.pt --encoder auto",
    "translate": "dfbk translate --checkpoint model.pt --source sub-01_t1n.nii.gz "
    "--output sub-01_t2w.nii.gz",
}


def _verb(verbs: argparse._SubParsersAction, name: str, summary: str) -> argparse.ArgumentParser:
    """A verb whose --help opens with its summary and ends with its example."""
    return verbs.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=f"example:\n  {EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_examples(verbs: argparse._SubParsersAction) -> None:
    """Give verbs registered by other modules an example too, unless their epilog has one."""
    for name, p in verbs.choices.items():
        epilog = p.epilog or ""
        if "example" not in epilog and name in EXAMPLES:
            p.epilog = f"{epilog}\n\nexample:\n  {EXAMPLES[name]}".lstrip()
            p.formatter_class = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfbk", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dfbk {_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = _verb(verbs, "phantom", "synthesise the multi-contrast head phantom dataset")
    p.add_argument("out_dir", type=Path, help="folder to write phantom-NNN/ subject folders into")
    p.add_argument("--subjects", type=int, default=16, help="number of subjects (default 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--voxel-mm", type=float, default=3.0, help="isotropic voxel size in mm (default 3)"
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
        help="write the phantom in this dataset's layout (dfbk.data.phantom_layouts)",
    )
    p.set_defaults(func=cmd_phantom)

    p = _verb(verbs, "prepare", "raw volumes -> checked, normalised slice store")
    p.add_argument("dataset", help="dataset layout name (e.g. phantom)")
    p.add_argument("raw_dir", type=Path, help="folder holding the raw subject folders")
    p.add_argument("out_dir", type=Path, help="slice store folder to create")
    p.add_argument("--modalities", required=True, help="comma-separated modalities to keep")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=list(DEFAULT_SLICE_SIZE),
        metavar=("H", "W"),
        help="slice size after centre crop/zero pad (default %(default)s, as the config's)",
    )
    p.add_argument(
        "--min-foreground", type=float, default=0.05, help="min foreground fraction per slice"
    )
    p.add_argument(
        "--on-bad-case", choices=("error", "skip"), default="error", help="bad subject policy"
    )
    p.add_argument("--skipped-csv", type=Path, help="where to list skipped subjects")
    p.add_argument("--jobs", type=int, default=1, help="reader processes (default 1)")
    p.add_argument(
        "--layout",
        help="YAML file (or inline YAML) describing a dataset of your own: case and file "
        "patterns, label, mask, foreground (docs/data.md, 'Your own paired dataset')",
    )
    p.set_defaults(func=cmd_prepare)

    p = _verb(verbs, "split", "seeded subject-level train/val/test split, written once")
    p.add_argument("store", type=Path, help="slice store folder")
    p.add_argument("--out", type=Path, required=True, help="splits.json to write (or check)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=[0.6, 0.15, 0.25],
        metavar=("TRAIN", "VAL", "TEST"),
        help="split fractions",
    )
    p.set_defaults(func=cmd_split)

    p = _verb(verbs, "train", "train one method on one direction of one dataset")
    p.add_argument("dataset", help="dataset name")
    p.add_argument("direction", help="'<source>-to-<target>', e.g. t1n-to-t2w")
    p.add_argument("method", help="registered method name (see `dfbk list-methods`)")
    p.add_argument("--seed", type=int, default=0, help="seed for everything (default 0)")
    p.add_argument("--preset", default="tiny", help="method preset: tiny (CPU) or paper")
    p.add_argument("--overrides", default="{}", help="JSON object of hyperparameter overrides")
    p.add_argument("--module", help="import path of a method defined outside the package")
    p.add_argument("--knowledge", type=Path, help="knowledge cache of the target (KG methods)")
    p.add_argument("--stage", help="run an extra training stage of the method (e.g. pretrain)")
    p.add_argument("--init-from", type=Path, help="model.pt of the previous stage to start from")
    p.add_argument("--store", type=Path, required=True, help="slice store folder")
    p.add_argument("--split", type=Path, required=True, help="splits.json")
    p.add_argument("--out-dir", type=Path, required=True, help="where model.pt, run.json, log go")
    p.add_argument("--checkpoint-dir", type=Path, required=True, help="resumable training state")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on GPU")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument(
        "--speed",
        default="{}",
        help='JSON object of speed switches, e.g. {"channels_last": true, "compile": "default", '
        '"tf32": true, "fused_adam": true} (all off by default; docs/training.md)',
    )
    p.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="data-parallel processes on this node, one GPU each (gloo on CPU); the preset's "
        "batch is split between them (default 1)",
    )
    p.add_argument(
        "--val-every",
        type=int,
        help="steps between validations (default: 5 per run; 0: only at the last step)",
    )
    p.add_argument("--val-slices", type=int, default=8, help="validation slices scored (default 8)")
    p.add_argument(
        "--evaluate",
        choices=("last", "best"),
        default="last",
        help="which checkpoint becomes model.pt: last (default) or best validation SSIM",
    )
    p.set_defaults(func=cmd_train)

    p = _verb(verbs, "predict", "translate the test split with a checkpoint")
    p.add_argument("checkpoint", type=Path, help="model.pt written by `dfbk train`")
    p.add_argument("store", type=Path, help="slice store folder")
    p.add_argument("split", type=Path, help="splits.json")
    p.add_argument("out_dir", type=Path, help="folder for {subject}.nii.gz predictions")
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_TRANSLATE_BATCH,
        help="slices per batch (default %(default)s, the config's translate.batch_size)",
    )
    p.add_argument(
        "--tiling",
        choices=TILINGS,
        default="patch",
        help="patch: sliding tiles of the training size, Gaussian-blended (default); slice: the "
        "whole slice in one pass (the config's translate.tiling)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda ...")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.set_defaults(func=cmd_predict)

    p = _verb(verbs, "evaluate", "per-slice and per-subject metrics of one run")
    p.add_argument("store", type=Path, help="slice store folder")
    p.add_argument("predictions", type=Path, help="folder written by `dfbk predict`")
    p.add_argument("split", type=Path, help="splits.json")
    p.add_argument("direction", help="'<source>-to-<target>'")
    p.add_argument("out_dir", type=Path, help="folder for slices.csv, subjects.csv, metrics.json")
    p.add_argument("--dataset", required=True, help="dataset name (recorded)")
    p.add_argument("--method", required=True, help="method name (recorded)")
    p.add_argument("--seed", type=int, required=True, help="seed (recorded)")
    p.set_defaults(func=cmd_evaluate)

    p = _verb(verbs, "figure", "source | target | methods | error figure for a direction")
    p.add_argument("store", type=Path, help="slice store folder")
    p.add_argument("split", type=Path, help="splits.json")
    p.add_argument("direction", help="'<source>-to-<target>'")
    p.add_argument("out", type=Path, help="figure to write (.png; other formats beside it)")
    p.add_argument(
        "--prediction",
        action="append",
        default=[],
        metavar="[METHOD[@SEED]=]DIR",
        help="a run's prediction folder (repeat; every seed of a method gets its own rows); "
        "a bare .../METHOD/seed-N folder names its method and seed",
    )
    p.add_argument(
        "--slices", type=int, default=3, help="slices: largest lesion, most anatomy, ... (3)"
    )
    p.add_argument(
        "--formats", nargs="+", default=["png", "pdf"], help="also write these (png pdf)"
    )
    p.set_defaults(func=cmd_figure)

    p = _verb(verbs, "curves", "training loss and validation SSIM curves of a direction's runs")
    p.add_argument("out", type=Path, help="figure to write (.png; other formats beside it)")
    p.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="[METHOD[@SEED]=]DIR",
        help="a run's training folder holding train_log.jsonl (repeat); a bare "
        ".../METHOD/seed-N folder names its method and seed",
    )
    p.add_argument("--title", default="", help="figure title, e.g. 'brats2023 t1n-to-t2f'")
    p.add_argument(
        "--formats", nargs="+", default=["png", "pdf"], help="also write these (png pdf)"
    )
    p.set_defaults(func=cmd_curves)

    p = _verb(verbs, "tables", "comparison table (md, csv, tex) from metrics files")
    p.add_argument("metrics", nargs="+", help="metrics.json files of the runs")
    p.add_argument("--out-stem", type=Path, required=True, help="output path without suffix")
    p.add_argument("--caption", default="", help="table caption (protocol)")
    p.add_argument(
        "--runs",
        nargs="*",
        default=[],
        type=Path,
        help="run.json files whose encoder/training notes join the caption",
    )
    p.add_argument(
        "--significance-vs",
        default="dfbk",
        help="method each row is tested against, if present (default dfbk)",
    )
    p.add_argument(
        "--capacity",
        action="store_true",
        help="show each row's parameter count and training FLOPs (the ablation table)",
    )
    p.set_defaults(func=cmd_tables)

    p = _verb(verbs, "power", "what the evaluated runs can resolve: detectable differences, seeds")
    p.add_argument("results_dir", type=Path, help="results folder holding evaluate/")
    p.add_argument("--reference", default="dfbk", help="row each other row is compared with")
    p.set_defaults(func=cmd_power)

    p = _verb(verbs, "track", "import finished runs into MLflow (idempotent)")
    p.add_argument("--train-dirs", nargs="+", required=True, help="training output folders")
    p.add_argument("--eval-dirs", nargs="+", required=True, help="evaluation folders, same order")
    p.add_argument(
        "--figure",
        action="append",
        default=[],
        metavar="DATASET:DIRECTION:PNG",
        help="figure to attach to the runs of a direction (repeat)",
    )
    p.add_argument(
        "--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI or sqlite in results)"
    )
    p.add_argument("--results-dir", default="results", help="results folder for the default URI")
    p.add_argument("--experiment", default="dfbk-bench", help="MLflow experiment name")
    p.add_argument("--out", type=Path, required=True, help="JSON listing the imported runs")
    p.add_argument(
        "--no-models",
        action="store_true",
        help="do not log each seed's model.pt as artifact model/ of its run",
    )
    p.add_argument(
        "--register-models",
        action="store_true",
        help="also register each seed's model in the MLflow model registry as "
        "dfbk.<dataset>.<direction>.<method>",
    )
    p.set_defaults(func=cmd_track)

    p = _verb(verbs, "weights", "fetch and verify pretrained weights (paper config)")
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

    p = _verb(verbs, "list-methods", "list methods: presets with parameter counts, description")
    p.add_argument("--names-only", action="store_true", help="print only the registered names")
    p.set_defaults(func=cmd_list_methods)

    p = _verb(verbs, "status", "which runs of a config are done, running, failed or pending")
    p.add_argument(
        "--configfile",
        type=Path,
        help="the experiment's config, as given to snakemake (default config/config.yaml)",
    )
    p.add_argument(
        "--results-dir", type=Path, help="results folder (default: the config's results_dir)"
    )
    p.add_argument(
        "--directory",
        type=Path,
        default=Path(),
        help="the workflow's working directory, as snakemake's --directory (default .)",
    )
    p.set_defaults(func=cmd_status)

    from dfbk.data.download import register as register_download
    from dfbk.knowledge.cli import register as register_knowledge
    from dfbk.volume_translate import register as register_translate

    register_download(verbs)
    register_knowledge(verbs)
    register_translate(verbs)
    _add_examples(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYTHONHASHSEED", "0")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --gpus N` re-runs them
    try:
        args.func(args)
    except DfbkError as err:
        print(f"dfbk {args.verb}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
