"""Active learning on OpenKBP: add the most uncertain cases each round versus random cases.

Usage::

    PYTHONPATH=. nice -n 10 python scripts/experiment_active_learning.py --data /path/to/openkbp \\
        --work /tmp/segdeep_al [--pool 16 --initial 4 --k 4 --rounds 3 --iterations 40 --val-cases 4 ...]

The clinical training contours play the annotator. A seeded random ``--pool`` of OpenKBP
training cases is the unlabelled pool; ``--initial`` of them start labelled. Round 0 trains on
those (shared by both arms). In each later round each arm adds ``--k`` cases from its own
remaining pool and **fine-tunes its previous round's model** (``--init-from``) for another
``--iterations`` steps with the same settings and seed, so both arms get the same training per
round and differ only in which cases they added:

* ``uncertainty``: the ``k`` cases on which the arm's previous model is least certain -- the
  mean normalised predictive entropy (:func:`SegDeepLogic.uncertainty.normalized_entropy`) over
  the body voxels (> -500 HU) of the case on the model grid;
* ``random``: ``k`` cases drawn at random (seeded).

Every model is validated on the same ``--val-cases`` validation cases (Dice per structure on
the model grid, final weights). Writes ``docs/active_learning.json`` and
``docs/img/active_learning.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _experiment_common import (  # noqa: E402
    add_model_arguments,
    base_config,
    final_validation,
    machine,
    training_cases,
    write_case_list,
)

from SegDeepLogic.atomic import atomic_path, write_text  # noqa: E402
from SegDeepLogic.inferers import sliding_window_inference  # noqa: E402
from SegDeepLogic.model_package import load_model_package  # noqa: E402
from SegDeepLogic.training.data import CaseFiles, load_cases  # noqa: E402
from SegDeepLogic.training.train import TrainConfig, _normalise, train  # noqa: E402
from SegDeepLogic.uncertainty import normalized_entropy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def case_uncertainty(network: torch.nn.Module, image: np.ndarray, cfg: TrainConfig) -> float:
    """Mean normalised predictive entropy over the body voxels (> -500 HU) of a prepared case.

    Sliding windows without overlap (scoring the whole pool is the slow part on a CPU).
    """
    x = torch.from_numpy(_normalise(image.astype(np.float32), cfg))[None, None]
    cval = float(_normalise(np.array([-1024.0]), cfg)[0])
    network.eval()
    with torch.no_grad():
        logits = sliding_window_inference(x, network, cfg.patch_size_kji, overlap=0.0, batch_size=2, cval=cval)
    entropy = normalized_entropy(torch.softmax(logits[0], dim=0), axis=0).numpy()
    body = image > -500
    return float(entropy[body].mean()) if body.any() else float(entropy.mean())


def _train_round(
    args: argparse.Namespace, work: Path, name: str, labelled: list[CaseFiles], init_from: str | None = None
) -> tuple[dict[str, Any], TrainConfig, float]:
    case_list = write_case_list(work / f"{name}.json", labelled, labelled=True)
    cfg = base_config(args, work, name, case_list, init_from=init_from)
    t0 = time.perf_counter()
    summary = train(cfg, write_package=True, progress_bar=False)
    return summary, cfg, time.perf_counter() - t0


def args_structures(result: dict) -> list[str]:
    return list(result["config"]["structures"])


def _figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"uncertainty": "#d62728", "random": "#1f77b4"}
    for arm, rounds in result["arms"].items():
        n = [r["n_labelled"] for r in rounds]
        axes[0].plot(n, [r["validation"]["mean_dice"] for r in rounds], "o-", color=colors[arm], label=arm)
        for s, style in zip(args_structures(result)[:3], ("o-", "s--", "^:")):
            axes[1].plot(
                n,
                [r["validation"]["dice"].get(s, float("nan")) for r in rounds],
                style,
                color=colors[arm],
                label=f"{arm}: {s}",
            )
    cfg = result["config"]
    axes[0].set_title(
        f"mean validation Dice ({cfg['val_cases']} cases), +{cfg['iterations']} steps per round, k={cfg['k']}", fontsize=9
    )
    axes[1].set_title("per structure (up to three)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("labelled training cases")
        ax.set_ylabel("validation Dice (model grid)")
        ax.set_xticks(sorted({r["n_labelled"] for rounds in result["arms"].values() for r in rounds}))
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, iterations=40)
    parser.add_argument("--pool", type=int, default=16, help="training cases in the pool (seeded random draw)")
    parser.add_argument("--initial", type=int, default=4, help="labelled cases to start from")
    parser.add_argument("--k", type=int, default=4, help="cases added per round")
    parser.add_argument("--rounds", type=int, default=3, help="models per arm, the shared initial one included")
    parser.add_argument("--out", default=str(ROOT / "docs" / "active_learning.json"))
    parser.add_argument("--figure", default=str(ROOT / "docs" / "img" / "active_learning.png"))
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    cases = training_cases(args.data, args.structures)
    order = np.random.default_rng(args.seed).permutation(len(cases))
    pool = [cases[i] for i in order if cases[i].masks][: args.pool]  # the annotator contours at least one structure
    initial = pool[: args.initial]
    before = machine()
    print(f"pool {len(pool)}, initial {len(initial)}; load {before['load_average_1_5_15']}", flush=True)

    summary, cfg, seconds = _train_round(args, work, "round0", initial)
    first = {
        "round": 0,
        "n_labelled": len(initial),
        "added": [c.case_id for c in initial],
        "validation": final_validation(summary),
        "train_seconds": round(seconds, 1),
    }
    print(f"round 0: {len(initial)} cases, mean Dice {first['validation']['mean_dice']}", flush=True)
    prepared = {
        c.case_id: c for c in load_cases(pool, args.structures, cfg.spacing_ijk_mm, cfg.orientation, cache_dir=cfg.cache_dir)
    }
    torch.set_num_threads(max(1, args.threads))
    arms: dict[str, list[dict[str, Any]]] = {}
    for arm in ("uncertainty", "random"):
        pick_rng = np.random.default_rng([args.seed, 7])
        labelled = list(initial)
        package = summary["package"]
        rounds = [dict(first)]
        for r in range(1, args.rounds):
            remaining = [c for c in pool if c not in labelled]
            scores: dict[str, float] = {}
            if arm == "uncertainty":
                network = load_model_package(package).network
                t0 = time.perf_counter()
                scores = {c.case_id: round(case_uncertainty(network, prepared[c.case_id].image, cfg), 5) for c in remaining}
                score_seconds = time.perf_counter() - t0
                chosen = sorted(remaining, key=lambda c: -scores[c.case_id])[: args.k]
            else:
                score_seconds = 0.0
                chosen = [remaining[i] for i in sorted(pick_rng.choice(len(remaining), args.k, replace=False))]
            labelled += chosen
            summary_r, _, seconds = _train_round(args, work, f"{arm}_round{r}", labelled, init_from=package)
            package = summary_r["package"]
            rounds.append(
                {
                    "round": r,
                    "n_labelled": len(labelled),
                    "added": [c.case_id for c in chosen],
                    "scores_of_pool": scores,
                    "scoring_seconds": round(score_seconds, 1),
                    "validation": final_validation(summary_r),
                    "train_seconds": round(seconds, 1),
                }
            )
            print(f"{arm} round {r}: {len(labelled)} cases, mean Dice {rounds[-1]['validation']['mean_dice']}", flush=True)
        arms[arm] = rounds

    result = {
        "experiment": "active learning (most uncertain k vs random k per round), OpenKBP",
        "command": "PYTHONPATH=. nice -n 10 python scripts/experiment_active_learning.py " + " ".join(sys.argv[1:]),
        "config": {
            "pool": len(pool),
            "pool_cases": [c.case_id for c in pool],
            "initial": args.initial,
            "k": args.k,
            "rounds": args.rounds,
            "retraining": "fine-tuned from the arm's previous model each round (--init-from), same steps and seed",
            "uncertainty": "mean normalised predictive entropy over body voxels (> -500 HU), model grid, "
            "sliding windows without overlap",
            "iterations": args.iterations,
            "seed": args.seed,
            "structures": args.structures,
            "random_pick_seed": [args.seed, 7],
            "channels": args.channels,
            "spacing_ijk_mm": args.spacing,
            "patch_kji": args.patch,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "val_cases": args.val_cases,
            "threads": args.threads,
        },
        "machine_before": before,
        "machine_after": machine(),
        "arms": arms,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(result, indent=1))
    _figure(result, Path(args.figure))
    print(f"wrote {out} and {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
