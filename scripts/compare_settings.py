"""Is a faster inference setting as accurate? Paired comparison of two ``segdeep evaluate`` runs.

Usage (from the repository root)::

    python scripts/compare_settings.py BASELINE/per_case.csv CANDIDATE/per_case.csv [--name NAME] [--json OUT]

Compares the network rows (``method == model``) case by case and structure by structure: median
Dice and HD95 of both, the mean paired Dice difference with a 95 % bootstrap confidence interval
(10,000 resamples of the case-structure pairs, seed 0), and the largest single drop. "Within
noise" means: the interval of the mean paired Dice difference over all pairs contains 0 or lies
within ±0.005, and no structure's median Dice drops by more than 0.01.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def read(path: Path) -> dict[tuple[str, str], dict[str, float]]:
    rows = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["method"] == "model" and r["dice"] not in ("", "nan"):
                hd = float(r["hd95_mm"]) if r["hd95_mm"] not in ("", "inf", "nan") else float("inf")
                rows[(r["case"], r["structure"])] = {"dice": float(r["dice"]), "hd95_mm": hd}
    return rows


def compare(base: dict, cand: dict) -> dict:
    keys = sorted(set(base) & set(cand))
    d = np.array([cand[k]["dice"] - base[k]["dice"] for k in keys])
    rng = np.random.default_rng(0)
    boots = d[rng.integers(0, len(d), size=(10000, len(d)))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    structures = {}
    for s in sorted({k[1] for k in keys}):
        ks = [k for k in keys if k[1] == s]
        structures[s] = {
            "n": len(ks),
            "median_dice": [
                round(float(np.median([base[k]["dice"] for k in ks])), 4),
                round(float(np.median([cand[k]["dice"] for k in ks])), 4),
            ],
            "median_hd95_mm": [
                round(float(np.median([base[k]["hd95_mm"] for k in ks])), 2),
                round(float(np.median([cand[k]["hd95_mm"] for k in ks])), 2),
            ],
            "mean_paired_dice_difference": round(float(np.mean([cand[k]["dice"] - base[k]["dice"] for k in ks])), 4),
        }
    worst = int(np.argmin(d))
    median_drop = max(s["median_dice"][0] - s["median_dice"][1] for s in structures.values())
    within = (lo <= 0 <= hi or (lo >= -0.005 and hi <= 0.005)) and median_drop <= 0.01
    return {
        "pairs": len(keys),
        "mean_paired_dice_difference": round(float(d.mean()), 4),
        "ci95": [round(float(lo), 4), round(float(hi), 4)],
        "largest_drop": {"case": keys[worst][0], "structure": keys[worst][1], "dice_difference": round(float(d[worst]), 4)},
        "largest_median_dice_drop": round(float(median_drop), 4),
        "within_noise": bool(within),
        "structures": structures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline")
    parser.add_argument("candidate")
    parser.add_argument("--name", default=None)
    parser.add_argument("--json", default=None, help="append the result under --name to this JSON file")
    args = parser.parse_args()
    result = compare(read(Path(args.baseline)), read(Path(args.candidate)))
    print(json.dumps(result, indent=1))
    if args.json:
        path = Path(args.json)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[args.name or args.candidate] = result
        path.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
