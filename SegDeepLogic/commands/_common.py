"""Helpers shared by the CLI sub-commands: progress bars and result output."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from ..atomic import atomic_path
from ..progress import ProgressCallback


@contextlib.contextmanager
def progress_bar(description: str, *, enabled: bool = True) -> Iterator[ProgressCallback]:
    """A tqdm bar on stderr driven by the engine's ``progress(fraction, stage)`` callback."""
    bar = tqdm(
        total=100,
        desc=description,
        unit="%",
        file=sys.stderr,
        disable=not enabled,
        leave=False,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]",
    )

    def update(fraction: float, stage: str) -> None:
        bar.n = round(100 * fraction, 1)
        bar.set_postfix_str(stage, refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def write_table(rows: list[dict], path: str | Path | None, fmt: str) -> None:
    """Write ``rows`` as JSON or CSV to ``path`` (atomically) or to stdout when ``path`` is None or '-'."""
    if fmt == "json":
        text = json.dumps(rows if len(rows) != 1 else rows[0], indent=2, default=_json_default) + "\n"
    elif fmt == "csv":
        buf = io.StringIO()
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
        text = buf.getvalue()
    else:
        raise ValueError(f"unknown format {fmt!r}")
    if path is None or str(path) == "-":
        sys.stdout.write(text)
    else:
        with atomic_path(path) as tmp:
            tmp.write_text(text)


def _json_default(value: object) -> object:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _csv_value(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return value
