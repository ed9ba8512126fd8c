"""The ``segdeep`` command line: one sub-command per module in :mod:`SegDeepLogic.commands`.

Every sub-command checks all its outputs before any work, reports long steps with a progress
bar on stderr, writes its files all-or-nothing (:func:`SegDeepLogic.atomic.atomic_outputs`:
a failed command leaves no new or changed file; ``train`` and ``batch`` instead write each
checkpoint / case atomically as it is finished, and keep those) and exits with status

* 0 on success;
* 1 on an error of the input or the environment (``batch``: also when some cases failed) (bad or truncated file, an output that exists
  or cannot be written, disk full, permission denied, out of memory), shown as one line;
* 2 on bad command-line usage, including out-of-range option values (argparse);
* 3 on an unexpected internal error: one line, and the traceback with ``--debug``;
* 130 when cancelled with Ctrl-C.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
import traceback
import warnings

from . import __version__
from .atomic import atomic_outputs
from .errors import CancelledError, SegDeepError

# Each name is a module SegDeepLogic.commands.<name> (hyphens as underscores) with add_parser(subparsers) and run(args) -> int.
COMMANDS = (
    "threshold",
    "compare",
    "export",
    "segment",
    "batch",
    "review-queue",
    "train",
    "evaluate",
    "report",
    "mesh-check",
    "dicom-info",
    "convert",
)
# Commands whose files appear as they are made (training checkpoints, batch cases), not all at the end.
_INCREMENTAL = ("train", "batch")
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERNAL, EXIT_CANCELLED = 0, 1, 2, 3, 130
_OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory")  # as devices.OOM_MESSAGES
_OOM_HINT = "out of memory ({detail}); free memory, or use a smaller input, --batch-size 1, fewer --threads, or another --device"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segdeep",
        description="Segment CT (U-Net or Hounsfield threshold), compare segmentations and export printable meshes. "
        "Coordinates are LPS millimetres unless stated otherwise.",
    )
    parser.add_argument("--version", action="version", version=f"segdeep {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f".commands.{name.replace('-', '_')}", __package__).add_parser(sub)
    for subparser in sub.choices.values():
        subparser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an unexpected error"
        )
    return parser


def _is_oom(exc: BaseException) -> bool:
    """Out of memory on any backend: MemoryError, torch's CPU "can't allocate memory", CUDA "out of memory", ENOMEM."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in message for m in _OOM_TEXTS)


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: what failed and on which file."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    name = exc.filename if exc.filename is not None else None
    hint = {
        errno.ENOSPC: " (the disk is full)",
        errno.EDQUOT: " (disk quota exceeded)",
        errno.EFBIG: " (file size limit reached)",
    }.get(exc.errno or -1, "")
    text = f"{reason}{hint if hint.strip(' ()').lower() not in reason.lower() else ''}"
    return f"{text}: {name}" if name else text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    warnings.showwarning = _show_warning
    name = f"segdeep {args.command}"
    # What a failure leaves: nothing, or (batch, train) the files finished before it, kept on purpose.
    nothing = "files finished before this are kept" if args.command in _INCREMENTAL else "nothing was written"
    try:
        if args.command in _INCREMENTAL:
            return int(args.run(args) or 0)
        with atomic_outputs():
            return int(args.run(args) or 0)
    except CancelledError as exc:
        print(f"{name}: cancelled ({exc}); {nothing}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted; {nothing}", file=sys.stderr)
        return EXIT_CANCELLED
    except (SegDeepError, FileExistsError) as exc:
        print(f"{name}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        if _is_oom(exc):
            print(f"{name}: error: {_OOM_HINT.format(detail=_one_line(exc))}; {nothing}", file=sys.stderr)
            return EXIT_ERROR
        if isinstance(exc, OSError):
            print(f"{name}: error: {describe_os_error(exc)}; {nothing}", file=sys.stderr)
            return EXIT_ERROR
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(
            f"{name}: internal error: {type(exc).__name__}: {_one_line(exc)}; {nothing}. "
            f"{'' if getattr(args, 'debug', False) else 'Run again with --debug for the traceback, and '}please report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + " ..."


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
