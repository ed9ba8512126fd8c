"""The figures and tables of docs/training.md, from a training checkpoint and an evaluation folder.

Usage (repository root)::

    python scripts/docs_figures.py curve WORK_DIR/checkpoint.pt          # docs/img/training_curve.png + log table
    python scripts/docs_figures.py case EVAL_DIR MODEL DATA_DIR          # docs/img/validation_case.png
    python scripts/docs_figures.py tables EVAL_DIR/summary.json          # markdown tables (stdout)
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def curve(checkpoint: str, out: str = "docs/img/training_curve.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    state = torch.load(checkpoint, weights_only=False, map_location="cpu")
    history, validations = state["history"], state["validations"]
    steps = np.array([h["step"] for h in history])
    loss = np.array([h["loss"] for h in history])
    k = 20
    mean = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    ax[0].plot(steps, loss, color="#bbb", lw=0.6, label="loss per step")
    ax[0].plot(steps[k - 1 :], mean, color="k", lw=1.5, label=f"mean of {k}")
    ax[0].set_xlabel("step (batch of 2 patches 64x80x80)")
    ax[0].set_ylabel("marginal Dice + CE")
    ax[0].legend(fontsize=8)
    ax[0].grid(alpha=0.3)
    lr_axis = ax[0].twinx()
    lr_axis.plot(steps, [h["lr"] for h in history], color="tab:orange", lw=1)
    lr_axis.set_ylabel("learning rate", color="tab:orange")
    names = list(validations[0]["dice"]) if validations else []
    vsteps = [v["step"] for v in validations]
    for name in names:
        ax[1].plot(vsteps, [v["dice"].get(name, np.nan) for v in validations], marker="o", ms=3, label=name)
    ax[1].plot(vsteps, [v["mean_dice"] for v in validations], color="k", lw=2, marker="s", label="mean")
    ax[1].set_ylim(0, 1)
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("Dice (model grid, 4 validation cases)")
    ax[1].legend(fontsize=7, ncol=2)
    ax[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"steps {steps[-1]}, {state.get('seconds', 0) / 60:.1f} min")
    print("| step | loss (mean of 50) | mean Dice | " + " | ".join(names) + " |")
    print("|---" * (3 + len(names)) + "|")
    for v in validations:
        recent = loss[(steps > v["step"] - 50) & (steps <= v["step"])]
        dice = " | ".join(f"{v['dice'].get(n, 0):.2f}" for n in names)
        print(f"| {v['step']} | {recent.mean():.2f} | {v['mean_dice']:.3f} | {dice} |")


def case(eval_dir: str, model: str, data_dir: str, out: str = "docs/img/validation_case.png") -> None:
    from SegDeepLogic.io import read_volume
    from SegDeepLogic.model_package import load_model_package
    from SegDeepLogic.segment import segment_volume
    from SegDeepLogic.training.figures import overlay_figure

    with open(Path(eval_dir) / "per_case.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "model"]
    by_case: dict[str, list[float]] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(float(r["dice"]))
    full = {c: float(np.mean(v)) for c, v in by_case.items() if len(v) >= 6}
    order = sorted(full, key=full.get)
    chosen = order[len(order) // 2]
    package = load_model_package(model)
    ct = read_volume(Path(data_dir) / chosen / "ct.nii.gz")
    result = segment_volume(ct, package, uncertainty=False)
    reference = np.zeros(ct.array.shape, np.uint8)
    for segment in package.card.segments:
        path = Path(data_dir) / chosen / f"{segment.name}.nii.gz"
        if path.exists():
            reference[read_volume(path).array > 0] = segment.value
    overlay_figure(
        ct,
        result.labels,
        package.card.segments,
        out,
        reference=ct.with_array(reference),
        title=f"validation case {chosen} (median mean Dice {full[chosen]:.2f}): prediction (top) vs clinical contours (bottom)",
    )
    print("median case", chosen, round(full[chosen], 3))


def _f(x: float | str | None, digits: int = 3) -> str:
    return x if isinstance(x, str) else ("–" if x is None else f"{x:.{digits}f}")


def tables(summary_path: str) -> None:
    s = json.loads(Path(summary_path).read_text())
    print(
        "| structure | n | Dice median [IQR] | Dice mean | HD95 median (mm) | HD95 mean (mm) | ASSD median (mm) | empty predictions |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, methods in s["structures"].items():
        m = methods["model"]
        d, h, a = m["dice"], m["hd95_mm"], m["assd_mm"]
        print(
            f"| {name} | {d['n']} | {_f(d['median'])} [{_f(d['q1'])}–{_f(d['q3'])}] | {_f(d['mean'])} | "
            f"{_f(h['median'], 1)} | {_f(h['mean'], 1)} | {_f(a['median'], 2)} | {h['n_infinite']} |"
        )
    means = s["mean_dice_over_structures"]
    print(f"\nmean Dice over the structures: of the means {means['of_means']}, of the medians {means['of_medians']}\n")
    print("| mandible method | Dice median [IQR] | Dice mean | HD95 median (mm) | ASSD median (mm) |")
    print("|---|---|---|---|---|")
    for method, m in s["structures"]["mandible"].items():
        d, h, a = m["dice"], m["hd95_mm"], m["assd_mm"]
        print(
            f"| {method} | {_f(d['median'])} [{_f(d['q1'])}–{_f(d['q3'])}] | {_f(d['mean'])} | {_f(h['median'], 1)} | {_f(a['median'], 2)} |"
        )
    print("threshold", {k: v for k, v in (s.get("threshold") or {}).items() if k != "curve"})
    print("out-of-distribution verdicts", (s.get("plausibility") or {}).get("verdicts"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("curve").add_argument("checkpoint")
    p = sub.add_parser("case")
    p.add_argument("eval_dir")
    p.add_argument("model")
    p.add_argument("data_dir")
    sub.add_parser("tables").add_argument("summary")
    args = parser.parse_args()
    if args.what == "curve":
        curve(args.checkpoint)
    elif args.what == "case":
        case(args.eval_dir, args.model, args.data_dir)
    else:
        tables(args.summary)


if __name__ == "__main__":
    main()
