"""Segmentation networks (the MONAI ``networks`` layer) and the registry model cards refer to.

A model card names its network by a key of :data:`ARCHITECTURES` and gives the constructor's
keyword arguments (``architecture_params``); :func:`build_network` turns the two into a
module. Registering a class here is all it takes for model packages to use it.

Examples
--------
>>> import torch
>>> net = build_network("unet3d", {"in_channels": 1, "out_channels": 3, "channels": [4, 8]})
>>> net(torch.zeros(1, 1, 4, 4, 4)).shape
torch.Size([1, 3, 4, 4, 4])
>>> network_size_divisor("unet3d", {"channels": [4, 8, 16]})
(4, 4, 4)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .unet import UNet3D

__all__ = ["ARCHITECTURES", "UNet3D", "build_network", "network_size_divisor"]

ARCHITECTURES: dict[str, type[nn.Module]] = {"unet3d": UNet3D}
"""Architecture name (as written in model cards) -> network class."""


def _error(message: str) -> Exception:
    # Imported here: model_package imports this module, so a top-level import would be circular.
    from ..model_package import ModelPackageError

    return ModelPackageError(message)


def _architecture(name: str) -> type[nn.Module]:
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise _error(f"unknown architecture {name!r}; known architectures: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


def build_network(architecture: str, params: dict[str, Any]) -> nn.Module:
    """Build the network ``architecture`` with keyword arguments ``params`` (random weights).

    Parameters
    ----------
    architecture : str
        A key of :data:`ARCHITECTURES` (e.g. ``"unet3d"``).
    params : dict
        Keyword arguments of the class (a model card's ``architecture_params``).

    Returns
    -------
    torch.nn.Module
        In training mode, float32, on the CPU.

    Raises
    ------
    ModelPackageError
        Unknown architecture (the message lists the known ones) or invalid parameters.
    """
    cls = _architecture(architecture)
    if not isinstance(params, dict):
        raise _error(f"architecture_params must be a JSON object, got {type(params).__name__}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise _error(f"invalid architecture_params for {architecture!r}: {exc}") from exc


def network_size_divisor(architecture: str, params: dict[str, Any]) -> tuple[int, int, int]:
    """What each input size (D, H, W) must be divisible by, without building the network.

    Uses the class's ``required_divisor(params)`` when it has one; otherwise ``(1, 1, 1)``.

    Raises
    ------
    ModelPackageError
        Unknown architecture or parameters that do not define a valid network.
    """
    cls = _architecture(architecture)
    required = getattr(cls, "required_divisor", None)
    if required is None:
        return (1, 1, 1)
    try:
        return tuple(int(d) for d in required(params))  # type: ignore[return-value]
    except (TypeError, ValueError) as exc:
        raise _error(f"invalid architecture_params for {architecture!r}: {exc}") from exc
