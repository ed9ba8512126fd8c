"""Write a model's own clean-up into its card (``extra.postprocessing``; weights unchanged).

Usage: ``python scripts/card_postprocessing.py MODEL [--min-island-ml NAME=ML ...] [--why TEXT]``

:func:`SegDeepLogic.segment.segment_volume` applies it to every run of the model (as nnU-Net's
post-processing is part of its model); ``model_postprocessing=False`` switches it off. The
bundled model's setting (the default here): detached mandible pieces under 2 mL are removed.
"""

from __future__ import annotations

import argparse
import dataclasses

from SegDeepLogic.model_package import load_model_package, save_model_package

WHY = (
    "The mandible is one bone: detached mandible pieces under 2 mL (under a tenth of the smallest training "
    "contour, 25 mL) are removed. Motivated by the 1 mm head CT, where the upper teeth (0.4-1.4 mL pieces) "
    "were labelled mandible; checked on the 33 validation CTs, where it changes nothing measurable "
    "(mandible mean Dice 0.8483 -> 0.8486, HD95 unchanged)."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--min-island-ml", action="append", default=None, metavar="NAME=ML")
    parser.add_argument("--why", default=WHY)
    args = parser.parse_args()
    islands = {}
    for item in args.min_island_ml or ["mandible=2"]:
        name, ml = item.split("=", 1)
        islands[name] = float(ml) * 1000.0
    package = load_model_package(args.model)
    unknown = set(islands) - set(package.card.label_names)
    if unknown:
        raise SystemExit(f"unknown label(s) {sorted(unknown)}; the card has {package.card.label_names}")
    extra = dict(package.card.extra)
    extra["postprocessing"] = {"min_island_mm3": islands, "why": args.why}
    card = dataclasses.replace(package.card, extra=extra)
    path = save_model_package(package.network, card, package.path, overwrite=True)
    print(f"{path}: postprocessing {extra['postprocessing']['min_island_mm3']}")


if __name__ == "__main__":
    main()
