"""``segdeep train``: train a 3D U-Net on CT/label pairs (partial labels allowed) into a model package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..training.train import DEFAULT_LABELS, OPENKBP_DATA, OPENKBP_LIMITATIONS, TrainConfig, train
from ._common import number_in, validate_outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = TrainConfig(train_data=[])
    p = sub.add_parser(
        "train",
        help="train a U-Net model package from CT and label files",
        description="Train a 3D U-Net on cases laid out as <folder>/<case>/ct.nii.gz + <structure>.nii.gz (OpenKBP) or "
        "listed in a CSV/JSON file. A structure without a file in a case is 'not contoured' there (partial labels). "
        "Checkpoints go to --work-dir (resume with --resume); the model package with the best validation weights "
        "to --output.",
    )
    p.add_argument("--train", nargs="+", required=True, metavar="DATA", help="training data folders or case lists")
    p.add_argument("--validation", nargs="*", default=[], metavar="DATA", help="validation data (model selection)")
    p.add_argument("-o", "--output", required=True, help="model package folder to write")
    p.add_argument("--work-dir", required=True, help="folder for checkpoints, train.log and history.json")
    p.add_argument("--name", default=d.model_name, help=f"model name (default {d.model_name})")
    p.add_argument(
        "--structures", nargs="+", default=[x["name"] for x in DEFAULT_LABELS], help="structure names (mask file stems)"
    )
    p.add_argument(
        "--spacing",
        nargs=3,
        type=number_in(0.2, 20),
        default=list(d.spacing_ijk_mm),
        metavar=("I", "J", "K"),
        help="model voxel size, mm",
    )
    p.add_argument(
        "--orientation", default=d.orientation, help=f"DICOM orientation code of the model grid (default {d.orientation})"
    )
    p.add_argument(
        "--channels",
        nargs="+",
        type=number_in(1, integer=True),
        default=d.architecture_params["channels"],
        help="U-Net widths per level",
    )
    p.add_argument(
        "--patch",
        nargs=3,
        type=number_in(1, 512, integer=True),
        default=list(d.patch_size_kji),
        metavar=("K", "J", "I"),
        help="patch size (voxels)",
    )
    p.add_argument("--batch-size", type=number_in(1, integer=True), default=d.batch_size)
    p.add_argument("--iterations", type=number_in(1, integer=True), default=d.iterations)
    p.add_argument(
        "--lr", type=number_in(0, 1, low_open=True), default=d.learning_rate, help="peak learning rate (AdamW, poly decay)"
    )
    p.add_argument(
        "--foreground-fraction", type=number_in(0, 1), default=d.foreground_fraction, help="patches centred on a structure"
    )
    p.add_argument(
        "--ce-weighting",
        choices=["none", "median-frequency"],
        default=d.ce_weighting,
        help="cross-entropy class weights: none, or median-frequency balancing over the training labels "
        "(helps small or rarely contoured structures)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--val-every", type=number_in(1, integer=True), default=d.val_every, help="validate every N steps")
    p.add_argument(
        "--val-cases", type=number_in(0, integer=True), default=d.val_cases, help="validation cases used during training"
    )
    p.add_argument("--checkpoint-every", type=number_in(1, integer=True), default=d.checkpoint_every)
    p.add_argument("--precision", choices=["fp32", "bf16"], default=d.precision, help="autocast precision on the CPU")
    p.add_argument("--threads", type=number_in(1, integer=True), default=d.threads, help="torch CPU threads")
    p.add_argument("--cache-dir", default=None, help="cache the preloaded cases here (.npz)")
    p.add_argument(
        "--max-minutes",
        type=number_in(0, low_open=True),
        default=None,
        help="stop (checkpoint + package) after this training time",
    )
    p.add_argument(
        "--stop-at-step",
        type=number_in(1, integer=True),
        default=None,
        help="stop (checkpoint + package) after this step; the learning-rate schedule still spans --iterations",
    )
    p.add_argument("--dataset", choices=["openkbp"], default=None, help="record this dataset's citation and limits in the card")
    p.add_argument("--resume", action="store_true", help="continue from <work-dir>/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    data = {f"--train {n + 1}": Path(x) for n, x in enumerate(args.train)}
    data.update({f"--validation {n + 1}": Path(x) for n, x in enumerate(args.validation)})
    # The package folder is replaced at the end (only if it is a model package); check both folders now.
    validate_outputs(
        {"-o": args.output, "--work-dir": args.work_dir},
        inputs=data,
        overwrite=True,
        folders=("-o", "--work-dir"),
    )
    labels = {x["name"]: x for x in DEFAULT_LABELS}
    cfg = TrainConfig(
        train_data=list(args.train),
        validation_data=list(args.validation),
        output=args.output,
        work_dir=args.work_dir,
        model_name=args.name,
        labels=[dict(labels.get(s, {"name": s, "color": None, "terminology": None})) for s in args.structures],
        spacing_ijk_mm=tuple(args.spacing),
        orientation=args.orientation,
        architecture_params={"channels": list(args.channels)},
        patch_size_kji=tuple(args.patch),
        batch_size=args.batch_size,
        iterations=args.iterations,
        learning_rate=args.lr,
        foreground_fraction=args.foreground_fraction,
        ce_weighting=args.ce_weighting,
        stop_at_step=args.stop_at_step,
        seed=args.seed,
        val_every=args.val_every,
        val_cases=args.val_cases,
        checkpoint_every=args.checkpoint_every,
        precision=args.precision,
        threads=args.threads,
        cache_dir=args.cache_dir,
        max_minutes=args.max_minutes,
        data_info=dict(OPENKBP_DATA) if args.dataset == "openkbp" else None,
        limitations=list(OPENKBP_LIMITATIONS) if args.dataset == "openkbp" else [],
    )
    summary = train(cfg, resume=args.resume, progress_bar=not args.no_progress)
    out = {k: summary[k] for k in ("steps", "seconds", "stopped_early", "package")}
    out["best"] = summary["best"]
    print(json.dumps(out, indent=2, default=str), file=sys.stdout)
    return 0
