"""A configurable 3D U-Net (encoder-decoder with skip connections) for volumetric segmentation.

The layout follows the common nnU-Net / MONAI design:

* every resolution level has a *block* of two 3x3x3 convolutions, each followed by a
  normalisation and a nonlinearity (optionally a residual block with a 1x1x1 projection
  shortcut where the shape changes);
* the encoder downsamples with *strided* convolutions (the first convolution of each deeper
  level), so the network learns its own pooling;
* the decoder upsamples with transposed convolutions, concatenates the encoder features of
  the same level and applies another block;
* a 1x1x1 convolution maps the finest features to ``out_channels`` logits.

Input size
----------
Each encoder level ``l >= 1`` divides the size by its stride, so the input ``(D, H, W)`` must
be divisible by the product of the strides along each axis (:attr:`UNet3D.size_divisor`,
``2 ** (depth - 1)`` for the default stride 2). The sliding-window inferer pads images to the
patch size, and model cards are validated so that their patch size is divisible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Optional, Union

import torch
from torch import nn

from .._compat import zip_strict
from ..architectures import normalise_strides, resolve_channels, unet3d_size_divisor

__all__ = ["UNet3D", "normalise_strides"]

Norm = Optional[Literal["instance", "batch", "group"]]
Act = Literal["leaky_relu", "relu", "gelu"]
Stride = Union[int, Sequence[int]]

_NORMS = ("instance", "batch", "group", None)
_ACTS = ("leaky_relu", "relu", "gelu")


def _norm_layer(norm: Norm, channels: int) -> nn.Module:
    if norm == "instance":
        # Affine like nnU-Net; no running statistics so train and eval behave the same per patch.
        return nn.InstanceNorm3d(channels, affine=True)
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    if norm == "group":
        # Up to 8 groups, dividing the channel count (GroupNorm requires it).
        return nn.GroupNorm(math.gcd(8, channels), channels)
    return nn.Identity()


def _act_layer(act: Act) -> nn.Module:
    if act == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    if act == "relu":
        return nn.ReLU(inplace=True)
    return nn.GELU()


class ConvBlock(nn.Module):
    """Two (conv -> norm -> act) layers; optionally residual, optionally strided first conv.

    With ``residual=True`` the block computes ``act(norm(conv(act(norm(conv(x))))) + skip(x))``
    where ``skip`` is the identity, or a strided 1x1x1 convolution (+ norm) when the channel
    count or the size changes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: tuple[int, int, int] = (1, 1, 1),
        kernel_size: int = 3,
        norm: Norm = "instance",
        act: Act = "leaky_relu",
        residual: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        bias = norm is None  # a bias before a normalisation is cancelled by it
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=bias)
        self.norm1 = _norm_layer(norm, out_channels)
        self.act1 = _act_layer(act)
        self.drop = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size, padding=pad, bias=bias)
        self.norm2 = _norm_layer(norm, out_channels)
        self.act2 = _act_layer(act)
        self.residual = residual
        self.skip: nn.Module | None = None
        if residual and (in_channels != out_channels or stride != (1, 1, 1)):
            self.skip = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=bias), _norm_layer(norm, out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.act1(self.norm1(self.conv1(x))))
        y = self.norm2(self.conv2(y))
        if self.residual:
            y = y + (x if self.skip is None else self.skip(x))
        return self.act2(y)


class UNet3D(nn.Module):
    """3D U-Net with configurable depth, widths, strides, normalisation and residual blocks.

    Parameters
    ----------
    in_channels : int
        Input channels (1 for CT).
    out_channels : int
        Output channels: background plus one per label (the logits of each class).
    channels : sequence of int or int
        Feature channels of each resolution level, finest first; its length is the depth.
        An int is the width of the first level, doubled at each deeper level (``depth`` then
        required).
    strides : sequence, optional
        Downsampling stride of each deeper level (``depth - 1`` entries), an int or a
        (D, H, W) triple each. Default 2 everywhere.
    depth : int, optional
        Number of resolution levels; checked against ``channels`` when both are given.
    norm : {"instance", "batch", "group", None}
        Normalisation after every convolution (``None``: no normalisation, convolutions get
        a bias). ``"group"`` uses up to 8 groups.
    residual : bool
        Residual blocks (a shortcut around each pair of convolutions).
    dropout : float
        Channel dropout (``Dropout3d``) probability inside every block; inactive in eval mode.
    kernel_size : int
        Odd convolution kernel size (3).
    act : {"leaky_relu", "relu", "gelu"}
        Nonlinearity (LeakyReLU with slope 0.01, as nnU-Net).

    Notes
    -----
    Input ``(N, in_channels, D, H, W)`` with each of D, H, W divisible by the matching entry
    of :attr:`size_divisor` (``2 ** (depth - 1)`` with the default strides). The output is
    ``(N, out_channels, D, H, W)`` logits (no softmax).

    Examples
    --------
    >>> import torch
    >>> net = UNet3D(1, 3, channels=(4, 8, 16), norm="instance", residual=True)
    >>> net.size_divisor
    (4, 4, 4)
    >>> net(torch.zeros(2, 1, 8, 12, 16)).shape
    torch.Size([2, 3, 8, 12, 16])
    >>> UNet3D(1, 2, channels=8, depth=4).channels
    (8, 16, 32, 64)
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] | int = (16, 32, 64, 128),
        strides: Sequence[Stride] | None = None,
        *,
        depth: int | None = None,
        norm: Norm = "instance",
        residual: bool = False,
        dropout: float = 0.0,
        kernel_size: int = 3,
        act: Act = "leaky_relu",
    ) -> None:
        super().__init__()
        channels = self._resolve_channels(channels, depth)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        if act not in _ACTS:
            raise ValueError(f"act must be one of {_ACTS}, got {act!r}")
        if not isinstance(residual, bool):
            raise ValueError(f"residual must be true or false, got {residual!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.strides = normalise_strides(strides, len(channels))
        self.norm = norm
        self.residual = residual
        self.dropout = float(dropout)
        self._divisor = self.required_divisor({"channels": channels, "strides": self.strides})

        block = dict(kernel_size=kernel_size, norm=norm, act=act, residual=residual, dropout=float(dropout))
        self.encoder = nn.ModuleList([ConvBlock(in_channels, channels[0], **block)])  # type: ignore[arg-type]
        for level in range(1, len(channels)):
            self.encoder.append(
                ConvBlock(channels[level - 1], channels[level], stride=self.strides[level - 1], **block)  # type: ignore[arg-type]
            )
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(len(channels) - 2, -1, -1):
            stride = self.strides[level]
            self.upsample.append(nn.ConvTranspose3d(channels[level + 1], channels[level], stride, stride=stride, bias=False))
            self.decoder.append(ConvBlock(2 * channels[level], channels[level], **block))  # type: ignore[arg-type]
        self.head = nn.Conv3d(channels[0], out_channels, 1)
        self._initialise()

    @staticmethod
    def _resolve_channels(channels: Sequence[int] | int, depth: int | None) -> tuple[int, ...]:
        return resolve_channels(channels, depth)

    def _initialise(self) -> None:
        # He initialisation for the leaky ReLU (as nnU-Net); PyTorch's default is tuned for
        # linear layers and trains deep plain U-Nets more slowly.
        for module in self.modules():
            if isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
                nn.init.kaiming_normal_(module.weight, a=1e-2)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def depth(self) -> int:
        """Number of resolution levels."""
        return len(self.channels)

    @property
    def size_divisor(self) -> tuple[int, int, int]:
        """What D, H, W must each be divisible by: the product of the strides per axis."""
        return self._divisor

    @classmethod
    def required_divisor(cls, params: dict[str, Any]) -> tuple[int, int, int]:
        """The (D, H, W) size divisor of a network built with ``params``, without building it.

        Examples
        --------
        >>> UNet3D.required_divisor({"channels": [8, 16, 32, 64]})
        (8, 8, 8)
        >>> UNet3D.required_divisor({"channels": 8, "depth": 3, "strides": [[1, 2, 2], 2]})
        (2, 4, 4)
        """
        return unet3d_size_divisor(params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, out_channels, D, H, W)`` of an input ``(N, in_channels, D, H, W)``."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, D, H, W), got {tuple(x.shape)}")
        divisor = self.size_divisor
        if any(n % d for n, d in zip_strict(x.shape[2:], divisor)):
            raise ValueError(
                f"input size {tuple(x.shape[2:])} (D, H, W) must be divisible by {divisor}; pad it (the sliding-window "
                "inferer pads to the model's patch size)"
            )
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for up, block in zip_strict(self.upsample, self.decoder):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, channels={self.channels}, "
            f"strides={self.strides}, norm={self.norm!r}, residual={self.residual}, dropout={self.dropout}"
        )
