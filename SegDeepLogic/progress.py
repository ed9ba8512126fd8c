"""Progress reporting and cooperative cancellation for long operations.

Engine functions that take time accept ``progress: ProgressCallback | None``. The callback is
called with a fraction in [0, 1] and a short stage name; it may raise
:class:`~SegDeepLogic.errors.CancelledError` (or the caller may pass a :class:`CancelToken`) to
stop the work between steps. The CLI turns these calls into a tqdm bar, the Slicer module into
its progress bar.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .errors import CancelledError

ProgressCallback = Callable[[float, str], None]


class CancelToken:
    """A thread-safe flag that long operations check between steps.

    Examples
    --------
    >>> token = CancelToken()
    >>> token.cancel()
    >>> token.cancelled
    True
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("operation cancelled by the user")


def report(progress: ProgressCallback | None, fraction: float, stage: str, cancel: CancelToken | None = None) -> None:
    """Forward progress to ``progress`` (if any) and honour ``cancel`` (if any)."""
    if cancel is not None:
        cancel.raise_if_cancelled()
    if progress is not None:
        progress(min(max(float(fraction), 0.0), 1.0), stage)
