"""``segdeep train``: train a 3D U-Net on CT/label pairs (partial labels allowed) into a model package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..training.train import DEFAULT_LABELS, OPENKBP_DATA, OPENKBP_LIMITATIONS, TrainConfig, package_settings, train
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
        default=None,
        metavar=("I", "J", "K"),
        help=f"model voxel size, mm (default: the --init-from package's, else {' '.join(map(str, d.spacing_ijk_mm))})",
    )
    p.add_argument(
        "--orientation",
        default=None,
        help=f"DICOM orientation code of the model grid (default: the --init-from package's, else {d.orientation})",
    )
    p.add_argument(
        "--channels",
        nargs="+",
        type=number_in(1, integer=True),
        default=None,
        help=f"U-Net widths per level (default: the --init-from package's, else {d.architecture_params['channels']})",
    )
    p.add_argument(
        "--patch",
        nargs=3,
        type=number_in(1, 512, integer=True),
        default=None,
        metavar=("K", "J", "I"),
        help=f"patch size in voxels (default: the --init-from package's, else {' '.join(map(str, d.patch_size_kji))})",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="PACKAGE",
        help="fine-tune: start from this model package's weights (its architecture, grid and intensity settings are "
        "used; output channels of structures it knows are kept, new ones start fresh; the card records what was inherited)",
    )
    p.add_argument(
        "--guard-validation",
        nargs="+",
        default=[],
        metavar="DATA",
        help="with --init-from, the guard against forgetting: Dice on these data (all cases; default: the --validation "
        "data) with the initial package before training and with the result after, both printed and recorded in "
        "history.json and the card (training.forgetting_guard); use the original model's validation set",
    )
    p.add_argument(
        "--unlabeled",
        nargs="+",
        default=[],
        metavar="DIR",
        help="semi-supervised: data folders or case lists of CTs without labels (label files there are ignored); trains "
        "a mean teacher (EMA of the network) whose predictions the network must match on these CTs under different "
        "augmentations; the teacher's weights are validated and shipped (docs/semi_supervised.md)",
    )
    p.add_argument(
        "--consistency-weight",
        type=number_in(0),
        default=d.consistency_weight,
        help=f"weight of the consistency term after its ramp-up (default {d.consistency_weight})",
    )
    p.add_argument(
        "--consistency-rampup",
        type=number_in(0, integer=True),
        default=None,
        metavar="STEPS",
        help="steps of the sigmoid ramp-up of the consistency weight (default a quarter of --iterations)",
    )
    p.add_argument(
        "--ema-decay",
        type=number_in(0, 1, high_open=True),
        default=d.ema_decay,
        help=f"decay of the teacher's moving average of the weights (default {d.ema_decay})",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps (default auto)",
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
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="autocast precision: auto is bf16 on CUDA GPUs that support it (else fp16 with loss scaling), fp16 on MPS, "
        "fp32 on the CPU",
    )
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
    data.update({f"--guard-validation {n + 1}": Path(x) for n, x in enumerate(args.guard_validation)})
    if args.guard_validation and not args.init_from:
        print(
            "segdeep train: --guard-validation needs --init-from (it compares the initial package with the result)",
            file=sys.stderr,
        )
        return 2
    data.update({f"--unlabeled {n + 1}": Path(x) for n, x in enumerate(args.unlabeled)})
    # The package folder is replaced at the end (only if it is a model package); check both folders now.
    validate_outputs(
        {"-o": args.output, "--work-dir": args.work_dir},
        inputs=data,
        overwrite=True,
        folders=("-o", "--work-dir"),
    )
    labels = {x["name"]: x for x in DEFAULT_LABELS}
    d = TrainConfig(train_data=[])
    grid = {
        "spacing_ijk_mm": d.spacing_ijk_mm,
        "orientation": d.orientation,
        "architecture_params": dict(d.architecture_params),
        "patch_size_kji": d.patch_size_kji,
        "clip_hu": d.clip_hu,
        "subtract": d.subtract,
        "divide": d.divide,
    }
    if args.init_from:
        grid.update(package_settings(args.init_from))
    if args.spacing is not None:
        grid["spacing_ijk_mm"] = tuple(args.spacing)
    if args.orientation is not None:
        grid["orientation"] = args.orientation
    if args.channels is not None:
        grid["architecture_params"] = {**grid["architecture_params"], "channels": list(args.channels)}
    if args.patch is not None:
        grid["patch_size_kji"] = tuple(args.patch)
    cfg = TrainConfig(
        train_data=list(args.train),
        validation_data=list(args.validation),
        output=args.output,
        work_dir=args.work_dir,
        model_name=args.name,
        labels=[dict(labels.get(s, {"name": s, "color": None, "terminology": None})) for s in args.structures],
        **grid,
        init_from=args.init_from,
        guard_validation_data=list(args.guard_validation),
        unlabeled_data=list(args.unlabeled),
        consistency_weight=args.consistency_weight,
        consistency_rampup=args.consistency_rampup,
        ema_decay=args.ema_decay,
        device=args.device,
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
    keys = (
        "steps",
        "seconds",
        "stopped_early",
        "package",
        "device",
        "precision",
        "init_from",
        "forgetting_guard",
        "semi_supervised",
    )
    out = {k: summary.get(k) for k in keys}
    if summary.get("forgetting_guard"):
        print(f"forgetting guard: {summary['forgetting_guard']['verdict']}", file=sys.stderr)
    out["best"] = summary["best"]
    print(json.dumps(out, indent=2, default=str), file=sys.stdout)
    return 0
