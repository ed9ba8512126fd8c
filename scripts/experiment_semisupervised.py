"""Semi-supervised (mean teacher, ``segdeep train --unlabeled``) against the same labelled cases alone.

Usage::

    PYTHONPATH=. nice -n 10 python scripts/experiment_semisupervised.py --data /path/to/openkbp \\
        --work /tmp/segdeep_semisup [--labelled 20 --unlabelled 0 --iterations 80 --val-cases 4 ...]

A seeded random draw of ``--labelled`` OpenKBP training cases keeps its clinical contours; the
other training cases (``--unlabelled`` of them, 0 = all) are given as CTs only. Two runs with the
same settings, steps and seed: (a) the labelled cases alone, (b) the same plus the unlabelled CTs
through the mean teacher. Both are validated (Dice per structure on the model grid) on the
``--val-cases`` validation cases with the most contoured structures (``--curve-points`` times);
the numbers reported are those of the final weights (no model selection). Writes
``docs/semi_supervised.json`` and ``docs/img/semi_supervised.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _experiment_common import (  # noqa: E402
    STRUCTURES,
    add_model_arguments,
    base_config,
    final_validation,
    machine,
    training_cases,
    write_case_list,
)

from SegDeepLogic.atomic import atomic_path, write_text  # noqa: E402
from SegDeepLogic.training.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sup, mt = result["arms"]["supervised"], result["arms"]["mean_teacher"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2.2, 1]})
    names = [s for s in STRUCTURES if s in sup["final"]["dice"]]
    kw = {"rotation": 30, "ha": "right"} if len(names) > 2 else {}
    x = np.arange(len(names) + 1)
    series = [
        ("labelled only", [sup["final"]["dice"][s] for s in names] + [sup["final"]["mean_dice"]], "#777777"),
        ("+ unlabelled, teacher (shipped)", [mt["final"]["dice"][s] for s in names] + [mt["final"]["mean_dice"]], "#1f77b4"),
        (
            "+ unlabelled, student",
            [mt["final"]["student"]["dice"][s] for s in names] + [mt["final"]["student"]["mean_dice"]],
            "#9ecae1",
        ),
    ]
    for n, (label, values, color) in enumerate(series):
        ax.bar(x + (n - 1) * 0.27, values, 0.27, label=label, color=color)
    ax.set_xticks(x)
    ax.set_xticklabels([*names, "mean"], **kw)
    ax.set_ylabel("validation Dice (model grid)")
    cfg = result["config"]
    ax.set_title(
        f"{cfg['labelled']} labelled + {cfg['unlabelled']} unlabelled OpenKBP cases, {cfg['iterations']} steps, "
        f"{len(sup['final']['per_case'])} validation cases",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    for arm, label, color in ((sup, "labelled only", "#777777"), (mt, "+ unlabelled (teacher)", "#1f77b4")):
        curve = arm["curve"]
        bx.plot([c["step"] for c in curve], [c["mean_dice"] for c in curve], "o-", label=label, color=color)
    student = [(c["step"], c["student_mean_dice"]) for c in mt["curve"]]
    bx.plot(*zip(*student), "s--", label="+ unlabelled (student)", color="#9ecae1")
    bx.set_xlabel("step")
    bx.set_ylabel("mean validation Dice")
    bx.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, iterations=80)
    parser.add_argument("--curve-points", type=int, default=1, help="validations during each run (the last at the end)")
    parser.add_argument("--labelled", type=int, default=20, help="labelled training cases (seeded random draw)")
    parser.add_argument("--unlabelled", type=int, default=0, help="unlabelled training cases (0: all the others)")
    parser.add_argument("--consistency-weight", type=float, default=1.0)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--out", default=str(ROOT / "docs" / "semi_supervised.json"))
    parser.add_argument("--figure", default=str(ROOT / "docs" / "img" / "semi_supervised.png"))
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    cases = training_cases(args.data, args.structures)
    order = [int(i) for i in np.random.default_rng(args.seed).permutation(len(cases))]
    contoured = [i for i in order if cases[i].masks]  # labelled cases contour at least one structure
    chosen = set(contoured[: args.labelled])
    labelled = [cases[i] for i in sorted(chosen)]
    rest = [cases[i] for i in order if i not in chosen]
    unlabelled = sorted(rest[: args.unlabelled] if args.unlabelled else rest, key=lambda c: cases.index(c))
    labelled_list = write_case_list(work / "labelled.json", labelled, labelled=True)
    unlabelled_list = write_case_list(work / "unlabelled.json", unlabelled, labelled=False)
    before = machine()
    print(f"{len(labelled)} labelled, {len(unlabelled)} unlabelled cases; load {before['load_average_1_5_15']}", flush=True)

    arms = {}
    val_every = max(1, args.iterations // max(1, args.curve_points))
    for arm in ("supervised", "mean_teacher"):
        cfg = base_config(args, work, arm, labelled_list, val_every=val_every)
        if arm == "mean_teacher":
            cfg = dataclasses.replace(
                cfg,
                unlabeled_data=[str(unlabelled_list)],
                consistency_weight=args.consistency_weight,
                ema_decay=args.ema_decay,
            )
        t0 = time.perf_counter()
        summary = train(cfg, write_package=False, progress_bar=False)
        seconds = time.perf_counter() - t0
        curve = []
        for v in summary["validation"]:
            point = {"step": v["step"], "mean_dice": round(v["mean_dice"], 4)}
            if "student" in v:
                point["student_mean_dice"] = round(v["student"]["mean_dice"], 4)
            curve.append(point)
        history = summary["history"]
        arms[arm] = {
            "final": final_validation(summary),
            "curve": curve,
            "seconds": round(seconds, 1),
            "seconds_per_step": round(float(np.mean([h["s"] for h in history])), 3),
            "mean_consistency_last_20_steps": (
                round(float(np.mean([h["consistency"] for h in history[-20:]])), 6) if "consistency" in history[-1] else None
            ),
            "load_average_after": machine()["load_average_1_5_15"],
        }
        print(f"{arm}: final mean Dice {arms[arm]['final']['mean_dice']} in {seconds / 60:.1f} min", flush=True)

    result = {
        "experiment": "semi-supervised (mean teacher) vs labelled only, OpenKBP",
        "command": "PYTHONPATH=. nice -n 10 python scripts/experiment_semisupervised.py " + " ".join(sys.argv[1:]),
        "config": {
            "labelled": len(labelled),
            "unlabelled": len(unlabelled),
            "iterations": args.iterations,
            "seed": args.seed,
            "structures": args.structures,
            "channels": args.channels,
            "spacing_ijk_mm": args.spacing,
            "patch_kji": args.patch,
            "batch_size": args.batch_size,
            "unlabeled_batch_size": args.batch_size,
            "learning_rate": args.lr,
            "consistency_weight": args.consistency_weight,
            "consistency_rampup_steps": args.iterations // 4,
            "ema_decay": args.ema_decay,
            "val_cases": args.val_cases,
            "threads": args.threads,
            "labelled_cases": [c.case_id for c in labelled],
            "unlabelled_cases": [c.case_id for c in unlabelled],
        },
        "machine_before": before,
        "arms": arms,
        "difference_teacher_minus_supervised": {
            s: round(arms["mean_teacher"]["final"]["dice"][s] - arms["supervised"]["final"]["dice"][s], 4)
            for s in arms["supervised"]["final"]["dice"]
            if s in arms["mean_teacher"]["final"]["dice"]
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(result, indent=1))
    _figure(result, Path(args.figure))
    print(f"wrote {out} and {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
