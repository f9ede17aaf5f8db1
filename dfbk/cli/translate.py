"""Translation verbs: `predict` (a test split) and `translate` (whole volumes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfbk.cli.common import configured, verb

EXAMPLES = {
    "predict": "dfbk predict results/train/phantom/t1n-to-t2w/dfbk/seed-0/model.pt \\\n "
    "     results/prepare/phantom/store "
    "results/prepare/phantom/splits.json \\\n      "
    "results/translate/phantom/t1n-to-t2w/dfbk/seed-0 --batch-size 32",
}


def cmd_predict(args: argparse.Namespace) -> None:
    import torch

    from dfbk.inference.predict import predict_test_set

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


TRANSLATE_EPILOG = """\
The checkpoint alone rebuilds the model and says how to normalise the input (its data
contract). Any voxel orientation works (LPS, permuted axes...): slicing happens in RAS+ and the
result is written back on the input's grid with its affine and header. MR output is in [0, 1];
a CT target is written in Hounsfield units. The whole field of view is translated: each axial
slice with foreground is covered by overlapping tiles of the training size, blended with a
Gaussian weight (no seams); a checkpoint that records its training spacing gets the input
resampled to it and back. The summary line names the field of view, spacing and tiles. The
batch size changes speed only: each slice's noise comes from (run seed, file name, slice).

A folder as --source (nnU-Net style, -i/-o) translates every .nii/.nii.gz in it into the same
file name in the --output folder, loading the models once. Several checkpoints (the seeds of a
run) with --ensemble mean average their translations voxel-wise; they must share method,
direction and data contracts.

example:
  dfbk translate --checkpoint results/train/brats2023/t1n-to-t2w/dfbk/seed-0/model.pt \\
      --source sub-01_t1n.nii.gz --output sub-01_t2w_synth.nii.gz --batch-size 32
  dfbk translate -i t1n_volumes/ -o t2w_synth/ --ensemble mean \\
      --checkpoint results/train/brats2023/t1n-to-t2w/dfbk/seed-{0,1,2}/model.pt
"""


def cmd_translate(args: argparse.Namespace) -> None:
    """Thin wrapper over `translate_volume`/`translate_folder`; one summary line per volume."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    source, output = Path(args.source), Path(args.output)
    options = (args.batch_size, args.device, args.knowledge)
    from dfbk.inference.volume import translate_folder, translate_volume

    if source.is_dir():
        infos = translate_folder(
            args.checkpoint, source, output, *options, mask_dir=args.mask, ensemble=args.ensemble
        )
    else:
        infos = [
            translate_volume(args.checkpoint, source, output, *options, args.mask, args.ensemble)
        ]
    from dfbk.inference.volume import summary_line

    for info in infos:
        print(summary_line(info))


def register(verbs: argparse._SubParsersAction) -> None:
    """Add this group's verbs to the `dfbk` command."""
    from dfbk.inference.volume import ENSEMBLES

    p = verb(verbs, "predict", "translate the test split with a checkpoint", EXAMPLES["predict"])
    p.add_argument("checkpoint", type=Path, help="model.pt written by `dfbk train`")
    p.add_argument("store", type=Path, help="slice store folder")
    p.add_argument("split", type=Path, help="splits.json")
    p.add_argument("out_dir", type=Path, help="folder for {subject}.nii.gz predictions")
    configured(p, "--batch-size", "translate.batch_size", "slices per batch", type=int)
    configured(
        p,
        "--tiling",
        "translate.tiling",
        "patch: sliding tiles of the training size, Gaussian-blended (default); slice: the "
        "whole slice in one pass (the config's translate.tiling)",
    )
    configured(p, "--device", "train.device", "auto, cpu, cuda ...")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.set_defaults(func=cmd_predict)

    p = verbs.add_parser(
        "translate",
        help="translate whole NIfTI volumes (a file or a folder) with one or more checkpoints",
        description="Translate whole volumes with one or more checkpoints, keeping the input grid.",
        epilog=TRANSLATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        nargs="+",
        required=True,
        help="model.pt written by `dfbk train`; several (seeds of one run) with --ensemble",
    )
    p.add_argument(
        "--ensemble",
        choices=ENSEMBLES,
        help="combine several checkpoints: mean of their translations, voxel-wise",
    )
    p.add_argument(
        "-i",
        "--source",
        type=Path,
        required=True,
        help="input volume (.nii/.nii.gz/.mha), or a folder: every .nii/.nii.gz in it",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="volume to write (.nii or .nii.gz), or the folder for a folder's outputs "
        "(same file names)",
    )
    p.add_argument(
        "--mask",
        type=Path,
        help="foreground mask for MR percentiles (default: nonzero); a folder of same-named "
        "masks for a folder input",
    )
    configured(p, "--batch-size", "translate.batch_size", "tiles per batch", type=int)
    configured(p, "--device", "train.device", "auto (GPU when available), cpu, cuda, cuda:1")
    p.add_argument("--knowledge", type=Path, help="knowledge file replacing the checkpoint's own")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.set_defaults(func=cmd_translate)
