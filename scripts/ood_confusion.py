"""The out-of-distribution rule on inputs it was not designed on: a confusion table.

The rule in ``SegDeepLogic/plausibility.py`` was tuned on two CTs (the 1 mm cranium and the
abdomen) that are also its evidence in docs/training.md. This script runs the default
``segment_volume`` (CPU, the bundled model) on inputs that played no part in designing it --
crops of other body regions cut from the shared abdomen and head CTs, OpenKBP CTs whose
intensities are mapped to MR-like or raw-detector ranges, a water phantom, and OpenKBP
*training* CTs with and without simulated low-dose noise (in-distribution) -- and tabulates the
verdict against what a careful user would want ("use" for head-and-neck CT, "refuse" for the
rest). The two design CTs are run too, marked as such.

Usage (from the repository root)::

    python scripts/ood_confusion.py --data ../shared/data --out docs/ood_confusion.json

Writes the JSON (every input: expected, verdict, findings, seconds) and prints a Markdown table.
``--feature-scan`` also measures the image features (no network) of every OpenKBP training and
validation CT, the same way the pipeline does, and counts how many fall outside the training
range: the false-alarm side of the image rule.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from SegDeepLogic.io import read_volume
from SegDeepLogic.model_card import load_model_card
from SegDeepLogic.model_input import prepare_ct
from SegDeepLogic.plausibility import FEATURE_NAMES, FEATURE_TOLERANCE, image_features
from SegDeepLogic.segment import _axial_axis, segment_volume
from SegDeepLogic.volume import Volume


def _crop_k(volume: Volume, start: float, stop: float) -> Volume:
    """Slices [start, stop) as fractions of the k axis, with the origin moved to stay in place."""
    n = volume.array.shape[0]
    k0, k1 = int(round(start * n)), int(round(stop * n))
    origin = volume.index_to_physical((0, 0, k0))
    return Volume(np.ascontiguousarray(volume.array[k0:k1]), volume.spacing, tuple(origin), volume.direction)


def _mr_like(hu: np.ndarray) -> np.ndarray:
    """A T1-weighted-like intensity map of HU: air dark, fat bright, soft tissue mid, bone dark."""
    xp = [-1024, -200, -100, 40, 300, 3000]
    fp = [0, 900, 800, 420, 120, 60]
    return np.interp(hu.astype(np.float32), xp, fp).astype(np.int16)


def inputs(data: Path, n_train: int) -> list[tuple[str, str, str, Volume]]:
    """(name, group, expected, volume) of every input."""
    items = []
    abdomen = read_volume(data / "totalsegmentator" / "example_ct.nii.gz")
    cranium = read_volume(data / "invesalius" / "cranium_ct.nii.gz")
    items.append(("abdomen (design case)", "design", "refuse", abdomen))
    items.append(("cranium 1 mm (design case)", "design", "use", cranium))
    for name, (a, b) in {"upper": (0.0, 0.4), "middle": (0.3, 0.7), "lower": (0.6, 1.0)}.items():
        items.append((f"abdomen {name} 40 %", "other region", "refuse", _crop_k(abdomen, a, b)))
    # the slice axis (k) of the cranium runs towards the patient's head when its LPS z component is positive
    upward = float(np.asarray(cranium.direction)[2, 2]) > 0
    lower, upper = ((0.0, 0.5), (0.5, 1.0)) if upward else ((0.5, 1.0), (0.0, 0.5))
    items.append(("cranium inferior half (skull base, mandible)", "head crop", "use", _crop_k(cranium, *lower)))
    items.append(("cranium superior half (vault and brain only)", "head crop", "refuse", _crop_k(cranium, *upper)))
    validation = sorted((data / "openkbp" / "validation").glob("pt_*/ct.nii.gz"))[:4]
    for path in validation:
        ct = read_volume(path)
        case = path.parent.name
        items.append((f"{case} MR-like intensities", "MR-like", "refuse", ct.with_array(_mr_like(ct.array))))
        raw = (ct.array.astype(np.int32) + 1024).clip(0, 4095).astype(np.int16)
        items.append((f"{case} raw values (HU + 1024, no rescale)", "raw detector values", "refuse", ct.with_array(raw)))
    z, y, x = np.mgrid[:64, :96, :96]
    water = np.where((y - 48) ** 2 + (x - 48) ** 2 < 40**2, 0, -1000).astype(np.int16)
    items.append(("water cylinder phantom", "phantom", "refuse", Volume(water, (1.0, 1.0, 2.5), (0.0, 0.0, 0.0))))
    rng = np.random.default_rng(0)
    train = sorted((data / "openkbp" / "train").glob("pt_*/ct.nii.gz"))
    for path in [train[i] for i in rng.choice(len(train), size=n_train, replace=False)]:
        ct = read_volume(path)
        case = path.parent.name
        items.append((f"{case} (training CT)", "head-and-neck", "use", ct))
        noisy = np.clip(ct.array + rng.normal(0, 40, ct.array.shape), -1024, 3071).astype(np.int16)
        items.append((f"{case} + 40 HU noise (low dose)", "head-and-neck, noisy", "use", ct.with_array(noisy)))
    return items


def model_grid_features(ct: Volume, card) -> dict[str, float] | None:  # noqa: ANN001
    """:func:`image_features` of ``ct`` on the model grid, as ``segment_volume`` measures them."""
    grid, array = prepare_ct(ct, card.orientation, card.spacing_ijk_mm)
    return image_features(array, grid.spacing[::-1], axial_axis=_axial_axis(card.orientation))


def outside(features: dict[str, float] | None, reference: dict) -> list[str]:
    """The image features outside the training range (with the rule's tolerance)."""
    if features is None:
        return ["no body"]
    names = []
    for name in FEATURE_NAMES:
        q = reference["image"][name]
        if features[name] < (1 - FEATURE_TOLERANCE) * q["min"] or features[name] > (1 + FEATURE_TOLERANCE) * q["max"]:
            names.append(name)
    return names


def feature_scan(model: str, data: Path) -> dict[str, Counter]:
    card = load_model_card(model)
    reference = card.reference_statistics["training"]
    counts = {}
    for split in ("train", "validation"):
        counter: Counter = Counter()
        for path in sorted((data / "openkbp" / split).glob("pt_*/ct.nii.gz")):
            counter[len(outside(model_grid_features(read_volume(path), card), reference))] += 1
        counts[split] = counter
        print(f"{split}: CTs by number of image features outside the training range: {dict(sorted(counter.items()))}")
    return counts


def _verdict(findings: list[dict]) -> str:
    severities = {f["severity"] for f in findings}
    return "mismatch" if "mismatch" in severities else "caution" if "caution" in severities else "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Resources/Models/headneck-ct")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--train-cases", type=int, default=4)
    parser.add_argument("--out", default="docs/ood_confusion.json")
    parser.add_argument("--feature-scan", action="store_true", help="also scan every OpenKBP CT's image features")
    args = parser.parse_args()
    scan = feature_scan(args.model, Path(args.data)) if args.feature_scan else None
    card = load_model_card(args.model)
    rows = []
    for name, group, expected, ct in inputs(Path(args.data), args.train_cases):
        t = time.perf_counter()
        result = segment_volume(ct, args.model, device="cpu")
        check = result.plausibility or {}
        rows.append(
            {
                "input": name,
                "group": group,
                "expected": expected,
                "verdict": check.get("verdict"),
                # the rule before the image-mismatch rule was added (evidence for adding it)
                "verdict_before_image_rule": _verdict(
                    [f for f in check.get("findings", []) if not (f["check"] == "image" and f["severity"] == "mismatch")]
                ),
                "reasons": [f["message"] for f in check.get("findings", []) if f.get("severity") in ("caution", "mismatch")],
                "features_outside_training_range": outside(model_grid_features(ct, card), card.reference_statistics["training"]),
                "withheld": [w["name"] for w in (result.withheld or [])],
                "seconds": round(time.perf_counter() - t, 1),
            }
        )
        print(f"{name}: {rows[-1]['verdict']}", flush=True)
    result = {"model": args.model, "rows": rows}
    if scan is not None:
        result["feature_scan"] = {split: dict(sorted(c.items())) for split, c in scan.items()}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("\n| input | group | wanted | verdict (before the image rule) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['input']} | {r['group']} | {r['expected']} | {r['verdict']} ({r['verdict_before_image_rule']}) |")
    table = Counter((r["expected"], r["verdict"]) for r in rows if r["group"] != "design")
    print("\n| wanted \\ verdict | ok | caution | mismatch |\n|---|---|---|---|")
    for wanted in ("use", "refuse"):
        print(f"| {wanted} | " + " | ".join(str(table[(wanted, v)]) for v in ("ok", "caution", "mismatch")) + " |")


if __name__ == "__main__":
    main()
