"""Set a model card's version and its training-schedule sentence (weights unchanged).

Usage: ``python scripts/card_release.py MODEL --version 1.1.0 [--schedule TEXT]``

``--schedule`` replaces the card's "with a short CPU schedule (...)" phrase of the limitations with
the whole history of the weights (e.g. training from scratch, then a fine-tune), which a single
``segdeep train`` run cannot know: its card describes that run only (``training``), and names the
package it started from (``training.init_from``).
"""

from __future__ import annotations

import argparse
import dataclasses
import re

from SegDeepLogic.model_package import load_model_package, save_model_package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--version", required=True)
    parser.add_argument("--schedule", default=None, help="replaces 'with a short CPU schedule (...)' in the limitations")
    args = parser.parse_args()
    package = load_model_package(args.model)
    limitations = package.card.limitations
    if args.schedule:
        limitations, n = re.subn(r"with a short CPU schedule \([^)]*\)", args.schedule, limitations)
        if n != 1:
            raise SystemExit("the card's limitations have no 'with a short CPU schedule (...)' phrase to replace")
    card = dataclasses.replace(package.card, version=args.version, limitations=limitations)
    path = save_model_package(package.network, card, package.path, overwrite=True)
    print(f"{path}: version {card.version}")


if __name__ == "__main__":
    main()
