"""The `train` verb."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dfbk.cli.common import configured, json_object, verb
from dfbk.errors import ConfigError

EXAMPLES = {
    "train": "dfbk train phantom t1n-to-t2w dfbk --preset tiny --seed 0 \\\n      "
    "--store results/prepare/phantom/store --split "
    "results/prepare/phantom/splits.json \\\n      --out-dir "
    "results/train/phantom/t1n-to-t2w/dfbk/seed-0 \\\n      --checkpoint-dir "
    "results/checkpoints/phantom/t1n-to-t2w/dfbk/seed-0 \\\n      "
    "--overrides '{\"steps\": 200}'",
}


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


def register(verbs: argparse._SubParsersAction) -> None:
    """Add this group's verbs to the `dfbk` command."""
    p = verb(verbs, "train", "train one method on one direction of one dataset", EXAMPLES["train"])
    p.add_argument("dataset", help="dataset name")
    p.add_argument("direction", help="'<source>-to-<target>', e.g. t1n-to-t2w")
    p.add_argument("method", help="registered method name (see `dfbk list-methods`)")
    p.add_argument("--seed", type=int, default=0, help="seed for everything (default 0)")
    configured(p, "--preset", "methods.*.preset", "method preset: tiny (CPU) or paper")
    p.add_argument("--overrides", default="{}", help="JSON object of hyperparameter overrides")
    p.add_argument("--module", help="import path of a method defined outside the package")
    p.add_argument("--knowledge", type=Path, help="knowledge cache of the target (KG methods)")
    p.add_argument("--stage", help="run an extra training stage of the method (e.g. pretrain)")
    p.add_argument("--init-from", type=Path, help="model.pt of the previous stage to start from")
    p.add_argument("--store", type=Path, required=True, help="slice store folder")
    p.add_argument("--split", type=Path, required=True, help="splits.json")
    p.add_argument("--out-dir", type=Path, required=True, help="where model.pt, run.json, log go")
    p.add_argument("--checkpoint-dir", type=Path, required=True, help="resumable training state")
    configured(
        p, "--checkpoint-every", "train.checkpoint_every", "steps between checkpoints", type=int
    )
    configured(p, "--device", "train.device", "auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on GPU")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument(
        "--speed",
        default="{}",
        help='JSON object of speed switches, e.g. {"channels_last": true, "compile": "default", '
        '"tf32": true, "fused_adam": true} (all off by default; docs/training.md)',
    )
    configured(
        p,
        "--gpus",
        "train.gpus",
        "data-parallel processes on this node, one GPU each (gloo on CPU); the preset's "
        "batch is split between them (default 1)",
        type=int,
    )
    p.add_argument(
        "--val-every",
        type=int,
        help="steps between validations (default: 5 per run; 0: only at the last step)",
    )
    configured(p, "--val-slices", "train.val_slices", "validation slices scored", type=int)
    configured(
        p,
        "--evaluate",
        "train.evaluate_checkpoint",
        "which checkpoint becomes model.pt: last (default) or best validation SSIM",
    )
    p.set_defaults(func=cmd_train)
