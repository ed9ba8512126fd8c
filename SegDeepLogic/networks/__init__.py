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

from ..architectures import network_size_divisor
from ..errors import ModelPackageError
from .unet import UNet3D

__all__ = ["ARCHITECTURES", "UNet3D", "build_network", "network_size_divisor"]

ARCHITECTURES: dict[str, type[nn.Module]] = {"unet3d": UNet3D}
"""Architecture name (as written in model cards) -> network class."""


def _error(message: str) -> Exception:
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
