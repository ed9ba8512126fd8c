"""Shared pieces of the label-efficiency experiments (semi-supervised, active learning).

Case lists are written as JSON files that ``segdeep train`` reads (:func:`SegDeepLogic.training.data.find_cases`);
every file goes through :mod:`SegDeepLogic.atomic`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from SegDeepLogic.atomic import write_text
from SegDeepLogic.training.data import CaseFiles, find_cases
from SegDeepLogic.training.train import DEFAULT_LABELS, TrainConfig, git_version

STRUCTURES = [d["name"] for d in DEFAULT_LABELS]


def add_model_arguments(parser: argparse.ArgumentParser, iterations: int) -> None:
    """The small, fast training configuration both experiments share (options and defaults)."""
    parser.add_argument("--data", required=True, help="OpenKBP root with train/ and validation/")
    parser.add_argument("--work", required=True, help="folder for case lists, checkpoints and the case cache")
    parser.add_argument("--iterations", type=int, default=iterations)
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--spacing", type=float, nargs=3, default=[7.8, 7.8, 5.0], metavar=("I", "J", "K"))
    parser.add_argument("--patch", type=int, nargs=3, default=[16, 24, 24], metavar=("K", "J", "I"))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--val-cases", type=int, default=6, help="validation cases (those with most structures)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--structures",
        nargs="+",
        default=STRUCTURES,
        help="structures to train (default: the bundled model's seven); labelled cases are drawn among the cases "
        "contouring at least one of them",
    )


def base_config(args: argparse.Namespace, work: Path, name: str, train_list: Path, **kw: Any) -> TrainConfig:
    """A :class:`TrainConfig` with the experiment's model settings, validated at the end only."""
    labels = {d["name"]: d for d in DEFAULT_LABELS}
    settings: dict[str, Any] = dict(
        labels=[dict(labels[s]) for s in args.structures],
        train_data=[str(train_list)],
        validation_data=[str(Path(args.data) / "validation")],
        output=str(work / name / "model"),
        work_dir=str(work / name),
        spacing_ijk_mm=tuple(args.spacing),
        architecture_params={"channels": list(args.channels)},
        patch_size_kji=tuple(args.patch),
        batch_size=args.batch_size,
        iterations=args.iterations,
        learning_rate=args.lr,
        warmup=max(1, args.iterations // 10),
        seed=args.seed,
        val_every=args.iterations,
        val_cases=args.val_cases,
        checkpoint_every=args.iterations,
        log_every=10,
        threads=args.threads,
        precision="fp32",
        device="cpu",
        cache_dir=str(work / "cache"),
    )
    settings.update(kw)
    return TrainConfig(**settings)


def training_cases(data: str | os.PathLike, structures: Sequence[str] = STRUCTURES) -> list[CaseFiles]:
    """The OpenKBP training split with ``structures`` (natural case order)."""
    return find_cases(Path(data) / "train", list(structures))


def write_case_list(path: Path, cases: Sequence[CaseFiles], *, labelled: bool) -> Path:
    """A JSON case list (absolute paths); ``labelled=False`` lists the CTs only."""
    rows = []
    for c in cases:
        row: dict[str, str] = {"case": c.case_id, "ct": str(Path(c.ct).resolve())}
        if labelled:
            row.update({s: str(Path(p).resolve()) for s, p in c.masks.items()})
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(rows, indent=1))
    return path


def machine() -> dict[str, Any]:
    """Where and when: CPU count, load average, versions, code version."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpus": os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in load] if load else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "code_version": git_version(Path(__file__).resolve().parent),
    }


def final_validation(summary: dict[str, Any]) -> dict[str, Any]:
    """The last validation of a training summary (the final weights, no model selection)."""
    last = summary["validation"][-1]
    out = {
        "step": last["step"],
        "mean_dice": round(last["mean_dice"], 4),
        "dice": {k: round(v, 4) for k, v in last["dice"].items()},
        "per_case": last["per_case"],
    }
    if "student" in last:
        out["student"] = {
            "mean_dice": round(last["student"]["mean_dice"], 4),
            "dice": {k: round(v, 4) for k, v in last["student"]["dice"].items()},
        }
    return out
