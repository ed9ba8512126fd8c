"""Append the measured validation limits to a model card's ``limitations`` (weights unchanged).

Usage: ``python scripts/card_limitations.py MODEL [--key evaluation_validation] [--note TEXT]``

Reads the evaluation that ``segdeep evaluate --record-in-card`` stored in the card and writes one
sentence per structure (median Dice, HD95, how often it came out empty), so that the card states
every structure's quality, not only the best ones. Re-running replaces the previous sentence.
"""

from __future__ import annotations

import argparse
import dataclasses

from SegDeepLogic.model_package import load_model_package, save_model_package

MARK = " Validation ("


def _mm(x: float | str) -> str:
    return "no surface" if isinstance(x, str) else f"{x:.1f} mm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--key", default="evaluation_validation")
    parser.add_argument("--note", default="", help="a further sentence (e.g. the out-of-distribution findings)")
    args = parser.parse_args()
    package = load_model_package(args.model)
    card = package.card
    evaluation = card.validation_metrics[args.key]
    parts = []
    for name, methods in evaluation["structures"].items():
        model = methods["model"]
        dice, hd95 = model["dice"], model["hd95_mm"]
        empty = hd95.get("n_infinite", 0)
        text = f"{name} median Dice {dice['median']:.2f}, HD95 {_mm(hd95['median'])}"
        if "model+refine" in methods:
            refined = methods["model+refine"]
            text += f" ({refined['dice']['median']:.2f} / {_mm(refined['hd95_mm']['median'])} refined)"
        if empty:
            text += f", empty in {empty} of {dice['n']} cases"
        parts.append(text)
    mean = evaluation["mean_dice_over_structures"]
    sentence = (
        f"{MARK}{evaluation['cases']} OpenKBP validation CTs, native grid): "
        + "; ".join(parts)
        + f". Mean Dice over the structures {mean['of_means']:.2f} (of the means)."
        + (f" {args.note}" if args.note else "")
    )
    base = card.limitations.split(MARK)[0]
    save_model_package(package.network, dataclasses.replace(card, limitations=base + sentence), package.path, overwrite=True)
    print(base + sentence)


if __name__ == "__main__":
    main()
