"""The ``segdeep`` command line: one sub-command per module in :mod:`SegDeepLogic.commands`.

Every sub-command reports long steps with a progress bar on stderr, writes results atomically,
and exits with status 0 on success, 1 on a user error (bad input, shown as one clear message),
130 when cancelled with Ctrl-C, and 2 on bad command-line usage (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from . import __version__
from .errors import CancelledError, SegDeepError

# Each name is a module SegDeepLogic.commands.<name> with add_parser(subparsers) and run(args) -> int.
COMMANDS = ("threshold", "compare", "export", "segment", "batch", "train", "evaluate", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segdeep",
        description="Segment CT (U-Net or Hounsfield threshold), compare segmentations and export printable meshes. "
        "Coordinates are LPS millimetres unless stated otherwise.",
    )
    parser.add_argument("--version", action="version", version=f"segdeep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    warnings.showwarning = _show_warning
    try:
        return int(args.run(args) or 0)
    except CancelledError as exc:
        print(f"segdeep {args.command}: cancelled ({exc}); nothing was written", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"\nsegdeep {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (SegDeepError, FileExistsError) as exc:
        print(f"segdeep {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
