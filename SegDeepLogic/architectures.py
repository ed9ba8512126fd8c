"""The network architectures a model card may name, and their input-size rules, without torch.

:data:`ARCHITECTURE_NAMES` lists the keys a card's ``architecture`` may take (the classes are in
:data:`SegDeepLogic.networks.ARCHITECTURES`, which imports torch; a test checks the two agree).
:func:`network_size_divisor` says what every input size must be divisible by, from the card's
``architecture_params`` alone, so a card can be validated where torch is not installed or not yet
imported (the Slicer panel, the report).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

from ._compat import zip_strict
from .errors import ModelPackageError

__all__ = ["ARCHITECTURE_NAMES", "network_size_divisor", "normalise_strides", "resolve_channels", "unet3d_size_divisor"]

Stride = Union[int, Sequence[int]]


def normalise_strides(strides: Sequence[Stride] | None, depth: int) -> tuple[tuple[int, int, int], ...]:
    """Per-level (D, H, W) strides of the ``depth - 1`` downsampling levels.

    ``None`` means stride 2 along every axis at every level. An entry may be one int (the
    same along all axes) or three ints (anisotropic, e.g. ``(1, 2, 2)`` to keep thick
    slices).

    Examples
    --------
    >>> normalise_strides(None, 3)
    ((2, 2, 2), (2, 2, 2))
    >>> normalise_strides([(1, 2, 2), 2], 3)
    ((1, 2, 2), (2, 2, 2))
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    if strides is None:
        return ((2, 2, 2),) * (depth - 1)
    if isinstance(strides, (str, bytes)) or not isinstance(strides, Sequence):
        raise ValueError(f"strides must be a list of {depth - 1} ints or (D, H, W) triples, got {strides!r}")
    if len(strides) != depth - 1:
        raise ValueError(f"strides must have depth - 1 = {depth - 1} entries (one per downsampling), got {len(strides)}")
    result = []
    for s in strides:
        triple = (s, s, s) if isinstance(s, int) else tuple(s)
        if len(triple) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in triple):
            raise ValueError(f"each stride must be a positive int or 3 positive ints (D, H, W), got {s!r}")
        result.append(triple)
    return tuple(result)  # type: ignore[return-value]


def resolve_channels(channels: Sequence[int] | int, depth: int | None) -> tuple[int, ...]:
    """The U-Net's width per level from ``channels`` (a list, or the first width with ``depth``).

    Examples
    --------
    >>> resolve_channels(8, 3)
    (8, 16, 32)
    """
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    if isinstance(channels, int) and not isinstance(channels, bool):
        if depth is None:
            raise ValueError("channels given as one int (the first level's width) needs depth")
        channels = [channels * 2**level for level in range(depth)]
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or len(channels) == 0:
        raise ValueError(f"channels must be a non-empty list of positive ints, got {channels!r}")
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels):
        raise ValueError(f"channels must be positive ints, got {list(channels)}")
    if depth is not None and len(channels) != depth:
        raise ValueError(f"depth={depth} but channels has {len(channels)} levels: {list(channels)}")
    return tuple(channels)


def unet3d_size_divisor(params: dict[str, Any]) -> tuple[int, int, int]:
    """The (D, H, W) size divisor of a ``unet3d`` built with ``params``, without building it.

    Examples
    --------
    >>> unet3d_size_divisor({"channels": [8, 16, 32, 64]})
    (8, 8, 8)
    >>> unet3d_size_divisor({"channels": 8, "depth": 3, "strides": [[1, 2, 2], 2]})
    (2, 4, 4)
    """
    channels = resolve_channels(params.get("channels", (16, 32, 64, 128)), params.get("depth"))
    divisor = [1, 1, 1]
    for stride in normalise_strides(params.get("strides"), len(channels)):
        divisor = [d * s for d, s in zip_strict(divisor, stride)]
    return tuple(divisor)  # type: ignore[return-value]


_SIZE_DIVISORS: dict[str, Callable[[dict[str, Any]], tuple[int, int, int]]] = {"unet3d": unet3d_size_divisor}
ARCHITECTURE_NAMES: tuple[str, ...] = tuple(sorted(_SIZE_DIVISORS))
"""Architecture names a model card may use (keys of :data:`SegDeepLogic.networks.ARCHITECTURES`)."""


def network_size_divisor(architecture: str, params: dict[str, Any]) -> tuple[int, int, int]:
    """What each input size (D, H, W) must be divisible by, without building the network (nor importing torch).

    Raises
    ------
    ModelPackageError
        Unknown architecture or parameters that do not define a valid network.

    Examples
    --------
    >>> network_size_divisor("unet3d", {"channels": [4, 8, 16]})
    (4, 4, 4)
    """
    if not isinstance(architecture, str) or architecture not in _SIZE_DIVISORS:
        raise ModelPackageError(
            f"unknown architecture {architecture!r}; known architectures: {', '.join(sorted(ARCHITECTURE_NAMES))}"
        )
    if not isinstance(params, dict):
        raise ModelPackageError(f"architecture_params must be a JSON object, got {type(params).__name__}")
    try:
        return tuple(int(d) for d in _SIZE_DIVISORS[architecture](params))  # type: ignore[return-value]
    except (TypeError, ValueError) as exc:
        raise ModelPackageError(f"invalid architecture_params for {architecture!r}: {exc}") from exc
