"""Does the review queue rank the cases that need correction first? Spearman vs the actual error.

Usage (from the repository root; the OpenKBP validation CTs of /work/shared/data, see docs/review_queue.md)::

    PYTHONPATH=. python scripts/review_queue_eval.py --data ../shared/data/openkbp/validation \
        --batch /tmp/review_batch --overlap 0.25 --out docs/review_queue_validation.json

Runs ``segdeep batch DATA -o BATCH --no-report --uncertainty`` (resumable: finished cases are kept,
``--no-batch`` skips it and evaluates the cases already finished), ranks the cases with
``segdeep review-queue``'s function (:func:`SegDeepLogic.review.review_queue`), and compares with
the error against the clinical contours (``<case>/<structure>.nii.gz``; a structure without a
file is not contoured there and not scored):

* per case: the queue score vs 1 - mean Dice over the contoured structures, and vs 1 - the worst
  structure's Dice;
* per case and structure: the structure's review score (mean entropy inside) vs 1 - its Dice;
  also the mean entropy in the 2 mm boundary band and the uncertain fraction (entropy above 0.5 in
  the structure and its band; the first version's score), for comparison;
* per case, for comparison: the uncertainty part of the score alone (no out-of-distribution
  terms), the same over the structures with a clinical contour only (the error of a structure
  without one cannot be measured, but the queue counts it), and the first version's case score
  (the worst structure's uncertain fraction).

Dice is computed on the CT grid, where the batch writes the segmentation. Writes the JSON
(atomically): settings, the correlations (Spearman rho and p), and the per-case and
per-structure tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from SegDeepLogic.atomic import write_text
from SegDeepLogic.io import read_volume
from SegDeepLogic.review import review_queue
from SegDeepLogic.segmentation_io import read_seg_nrrd

ROOT = Path(__file__).resolve().parents[1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks (1.0 when both are empty)."""
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom


def correlation(x: list[float], y: list[float]) -> dict[str, Any]:
    """Spearman rho and two-sided p (``n`` pairs)."""
    if len(x) < 3:
        return {"n": len(x), "rho": None, "p": None}
    result = spearmanr(x, y)
    return {"n": len(x), "rho": round(float(result.statistic), 4), "p": float(f"{float(result.pvalue):.3g}")}


def run_batch(data: Path, batch: Path, overlap: float, model: str | None) -> None:
    cmd = [sys.executable, "-m", "SegDeepLogic.cli", "batch", str(data), "-o", str(batch), "--no-report", "--uncertainty"]
    cmd += ["--overlap", str(overlap), "--no-progress"]
    if model:
        cmd += ["--model", model]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    status = subprocess.call(cmd, env=env)
    if status not in (0, 1):  # 1: some cases failed; they are in the queue as failed
        raise SystemExit(f"segdeep batch stopped with status {status}")


def evaluate(data: Path, batch: Path) -> dict[str, Any]:
    items = review_queue(batch)
    cases, pairs = [], []
    for item in items:
        if item.status != "done" or not item.segmentation:
            cases.append({"case_id": item.case_id, "rank": item.rank, "status": item.status, "score": item.score})
            continue
        seg = read_seg_nrrd(item.segmentation)
        record = json.loads((batch / "cases" / item.case_id / "case.json").read_text())
        unc = {row["name"]: row for row in record["uncertainty"]}
        per = {}
        for s in seg.segments:
            contour = data / item.case_id / f"{s.name}.nii.gz"
            if not contour.exists():
                continue
            ref = read_volume(contour)
            if not ref.same_grid(seg.labelmap):
                raise SystemExit(f"{contour} is not on the segmentation's grid")
            d = dice(seg.labelmap.array == s.value, ref.array > 0)
            per[s.name] = d
            row = unc.get(s.name, {})
            pairs.append(
                {
                    "case_id": item.case_id,
                    "structure": s.name,
                    "dice": round(d, 4),
                    "error": round(1 - d, 4),
                    "review_score": item.structure_scores.get(s.name),
                    "mean_entropy_inside": row.get("mean_entropy_inside"),
                    "mean_entropy_boundary": row.get("mean_entropy_boundary"),
                    "uncertain_fraction": row.get("uncertain_fraction"),
                    "found": bool(row.get("voxels")),
                }
            )
        cases.append(
            {
                "case_id": item.case_id,
                "rank": item.rank,
                "status": item.status,
                "score": item.score,
                "most_uncertain_structure": item.most_uncertain_structure,
                "ood_verdict": item.ood_verdict,
                "contoured": len(per),
                "mean_dice": round(float(np.mean(list(per.values()))), 4) if per else None,
                "min_dice": round(float(min(per.values())), 4) if per else None,
                "worst_structure": min(per, key=per.get) if per else None,
                "uncertainty_only": max(item.structure_scores.values()) if item.structure_scores else None,
                "uncertainty_contoured_only": max((v for k, v in item.structure_scores.items() if k in per), default=None),
                "first_version_score": max(
                    (
                        r["uncertain_fraction"]
                        for r in record["uncertainty"]
                        if r.get("voxels") and r.get("uncertain_fraction") is not None
                    ),
                    default=None,
                ),
                "reasons": item.reasons,
            }
        )
    scored = [c for c in cases if c.get("mean_dice") is not None and c.get("score") is not None]
    found = [p for p in pairs if p["review_score"] is not None]
    n_third = max(1, len(scored) // 3)
    by_rank = sorted(scored, key=lambda c: c["rank"])
    return {
        "n_cases": len(cases),
        "n_scored_cases": len(scored),
        "n_case_structures": len(pairs),
        "n_case_structures_found": len(found),
        "case_level": {
            "score_vs_1_minus_mean_dice": correlation([c["score"] for c in scored], [1 - c["mean_dice"] for c in scored]),
            "score_vs_1_minus_worst_dice": correlation([c["score"] for c in scored], [1 - c["min_dice"] for c in scored]),
            "uncertainty_only_vs_1_minus_mean_dice": correlation(
                [c["uncertainty_only"] for c in scored], [1 - c["mean_dice"] for c in scored]
            ),
            "uncertainty_contoured_structures_only_vs_1_minus_mean_dice": correlation(
                [c["uncertainty_contoured_only"] for c in scored if c["uncertainty_contoured_only"] is not None],
                [1 - c["mean_dice"] for c in scored if c["uncertainty_contoured_only"] is not None],
            ),
            "first_version_score_vs_1_minus_mean_dice": correlation(
                [c["first_version_score"] for c in scored], [1 - c["mean_dice"] for c in scored]
            ),
            "mean_error_first_third": round(float(np.mean([1 - c["mean_dice"] for c in by_rank[:n_third]])), 4),
            "mean_error_last_third": round(float(np.mean([1 - c["mean_dice"] for c in by_rank[-n_third:]])), 4),
            "most_uncertain_is_worst_structure": sum(c["most_uncertain_structure"] == c["worst_structure"] for c in scored),
        },
        "structure_level": {
            "review_score_vs_error": correlation([p["review_score"] for p in found], [p["error"] for p in found]),
            "mean_entropy_inside_vs_error": correlation([p["mean_entropy_inside"] for p in found], [p["error"] for p in found]),
            "mean_entropy_boundary_vs_error": correlation(
                [p["mean_entropy_boundary"] for p in found if p["mean_entropy_boundary"] is not None],
                [p["error"] for p in found if p["mean_entropy_boundary"] is not None],
            ),
            "uncertain_fraction_vs_error": correlation([p["uncertain_fraction"] for p in found], [p["error"] for p in found]),
            "uncertain_fraction_zero": sum(p["uncertain_fraction"] == 0 for p in found),
            "per_structure_review_score_vs_error": {
                name: correlation(
                    [p["review_score"] for p in found if p["structure"] == name],
                    [p["error"] for p in found if p["structure"] == name],
                )
                for name in dict.fromkeys(p["structure"] for p in found)
            },
            "not_found_but_contoured": [f"{p['case_id']}:{p['structure']}" for p in pairs if not p["found"]],
        },
        "cases": cases,
        "case_structures": pairs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="OpenKBP split: <case>/ct.nii.gz + <structure>.nii.gz")
    parser.add_argument("--batch", required=True, type=Path, help="batch output folder (made or resumed)")
    parser.add_argument("--model", default=None, help="model package (default: the bundled one)")
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap of the batch (default 0.25)")
    parser.add_argument("--no-batch", action="store_true", help="evaluate the cases already finished, run nothing")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "review_queue_validation.json")
    args = parser.parse_args()
    if not args.no_batch:
        run_batch(args.data, args.batch, args.overlap, args.model)
    result = evaluate(args.data, args.batch)
    records = [json.loads(p.read_text()) for p in sorted((args.batch / "cases").glob("*/case.json"))]
    result = {
        "command": "PYTHONPATH=. python scripts/review_queue_eval.py --data DATA --batch BATCH "
        f"--overlap {args.overlap}" + (" --no-batch" if args.no_batch else ""),
        "data": str(args.data),
        "model_sha256": sorted({r.get("model_sha256") for r in records if r.get("model_sha256")}),
        "overlap": args.overlap,
        "score": "mean normalised entropy inside the most uncertain structure + 0.02 per out-of-distribution caution "
        "+ 0.02 per volume finding; failed and mismatch cases first",
        **result,
    }
    write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("n_cases", "n_scored_cases", "case_level")}, indent=1))
    print(json.dumps({k: v for k, v in result["structure_level"].items() if k != "not_found_but_contoured"}))


if __name__ == "__main__":
    main()
