"""Reporting verbs: `evaluate`, `figure`, `curves`, `tables`, `track`, `list-methods`, `status`."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfbk.cli.common import configured, seeded_runs, verb

EXAMPLES = {
    "evaluate": "dfbk evaluate results/prepare/phantom/store "
    "results/translate/phantom/t1n-to-t2w/dfbk/seed-0 \\\n      "
    "results/prepare/phantom/splits.json t1n-to-t2w "
    "results/evaluate/phantom/t1n-to-t2w/dfbk/seed-0 \\\n      --dataset "
    "phantom --method dfbk --seed 0",
    "figure": "dfbk figure results/prepare/phantom/store "
    "results/prepare/phantom/splits.json t1n-to-t2w \\\n      "
    "results/figures/phantom/t1n-to-t2w.png --prediction "
    "dfbk@0=results/translate/phantom/t1n-to-t2w/dfbk/seed-0",
    "curves": "dfbk curves results/figures/phantom/t1n-to-t2w_curves.png \\\n      "
    "--run dfbk@0=results/train/phantom/t1n-to-t2w/dfbk/seed-0 --title "
    "'phantom t1n-to-t2w'",
    "tables": "dfbk tables results/evaluate/*/*/*/seed-*/metrics.json --out-stem "
    "results/tables/comparison",
    "power": "dfbk power results",
    "track": "dfbk track --train-dirs results/train/phantom/t1n-to-t2w/dfbk/seed-0 "
    "\\\n      --eval-dirs results/evaluate/phantom/t1n-to-t2w/dfbk/seed-0 "
    "--out results/tracking/imported.json",
    "list-methods": "dfbk list-methods",
    "status": "dfbk status --configfile config/paper.yaml",
}


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


def cmd_figure(args: argparse.Namespace) -> None:
    from dfbk.reporting.figures import make_comparison_figure

    preds = seeded_runs(args.prediction, "--prediction")
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
        seeded_runs(args.run, "--run"), args.out, args.title, formats=tuple(args.formats)
    )
    print(f"wrote {out} and its {', '.join(f for f in args.formats if f != out.suffix[1:])}")


def cmd_tables(args: argparse.Namespace) -> None:
    from dfbk.evaluation.fid import fid_columns
    from dfbk.evaluation.protocols import protocol_notes
    from dfbk.reporting.captions import caption_notes, training_frame
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


def cmd_list_methods(args: argparse.Namespace) -> None:
    if args.names_only:
        from dfbk.methods.registry import list_methods

        print("\n".join(list_methods()))
        return
    print("\n".join(method_lines()))


def cmd_status(args: argparse.Namespace) -> None:
    from dfbk.plan.status import collect_status, format_status, load_config

    config = load_config(args.configfile)
    if args.results_dir is not None:
        config["results_dir"] = str(args.results_dir)
    print(format_status(collect_status(config, args.directory)))


def register(verbs: argparse._SubParsersAction) -> None:
    """Add this group's verbs to the `dfbk` command."""
    p = verb(
        verbs, "evaluate", "per-slice and per-subject metrics of one run", EXAMPLES["evaluate"]
    )
    p.add_argument("store", type=Path, help="slice store folder")
    p.add_argument("predictions", type=Path, help="folder written by `dfbk predict`")
    p.add_argument("split", type=Path, help="splits.json")
    p.add_argument("direction", help="'<source>-to-<target>'")
    p.add_argument("out_dir", type=Path, help="folder for slices.csv, subjects.csv, metrics.json")
    p.add_argument("--dataset", required=True, help="dataset name (recorded)")
    p.add_argument("--method", required=True, help="method name (recorded)")
    p.add_argument("--seed", type=int, required=True, help="seed (recorded)")
    p.set_defaults(func=cmd_evaluate)

    p = verb(
        verbs,
        "figure",
        "source | target | methods | error figure for a direction",
        EXAMPLES["figure"],
    )
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

    p = verb(
        verbs,
        "curves",
        "training loss and validation SSIM curves of a direction's runs",
        EXAMPLES["curves"],
    )
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

    p = verb(
        verbs, "tables", "comparison table (md, csv, tex) from metrics files", EXAMPLES["tables"]
    )
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

    p = verb(
        verbs,
        "power",
        "what the evaluated runs can resolve: detectable differences, seeds",
        EXAMPLES["power"],
    )
    p.add_argument("results_dir", type=Path, help="results folder holding evaluate/")
    p.add_argument("--reference", default="dfbk", help="row each other row is compared with")
    p.set_defaults(func=cmd_power)

    p = verb(verbs, "track", "import finished runs into MLflow (idempotent)", EXAMPLES["track"])
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
    configured(p, "--results-dir", "results_dir", "results folder for the default URI")
    configured(p, "--experiment", "tracking.experiment", "MLflow experiment name")
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

    p = verb(
        verbs,
        "list-methods",
        "list methods: presets with parameter counts, description",
        EXAMPLES["list-methods"],
    )
    p.add_argument("--names-only", action="store_true", help="print only the registered names")
    p.set_defaults(func=cmd_list_methods)

    p = verb(
        verbs,
        "status",
        "which runs of a config are done, running, failed or pending",
        EXAMPLES["status"],
    )
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
