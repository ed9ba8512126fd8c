"""Python 3.9 stand-ins for newer built-ins (3D Slicer 5.8 runs Python 3.9).

Everything installed into Slicer parses and runs on Python 3.9 (``Testing/test_python39.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


def zip_strict(*iterables: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
    """``zip(*iterables, strict=True)`` of Python 3.10: raise ``ValueError`` when the lengths differ.

    Examples
    --------
    >>> list(zip_strict([1, 2], "ab"))
    [(1, 'a'), (2, 'b')]
    >>> list(zip_strict([1, 2], "a"))
    Traceback (most recent call last):
    ...
    ValueError: zip_strict() arguments have different lengths
    """
    sentinel = object()
    iterators = [iter(it) for it in iterables]
    while True:
        items = [next(it, sentinel) for it in iterators]
        done = [item is sentinel for item in items]
        if all(done):
            return
        if any(done):
            raise ValueError("zip_strict() arguments have different lengths")
        yield tuple(items)
