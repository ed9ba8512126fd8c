"""Sliding-window inference with Gaussian blending (the MONAI ``inferers`` layer).

A 3D network is trained on patches; a whole CT is predicted by sliding a patch-sized window
over it, running the network on batches of windows and blending the overlapping outputs with
a Gaussian importance map that trusts window centres more than their borders.

:func:`sliding_window_inference` places the windows, pads small images and builds the
importance map exactly as ``monai.inferers.sliding_window_inference`` does with
``mode="gaussian"``, so both give the same output (within float rounding) for the same
network, patch size and overlap. It is leaner in what it does per window: the importance map
and the normalisation map are built once, windows are gathered into batches with one copy,
outputs are accumulated in place (``addcmul_``), gradients are never tracked, and progress and
cancellation are checked between batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ._compat import zip_strict
from .progress import CancelToken, ProgressCallback, report

__all__ = [
    "gaussian_importance_map",
    "scan_intervals",
    "sliding_window_inference",
    "window_slices",
]

Predictor = Callable[[torch.Tensor], torch.Tensor]


def gaussian_importance_map(
    patch_size: Sequence[int],
    sigma_scale: float | Sequence[float] = 0.125,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gaussian weight of each voxel of a window, highest at the centre.

    ``sigma = sigma_scale * patch_size`` per axis; weights are clamped below at
    ``max(min(weight), 1e-3)`` so that window borders still count a little (as in MONAI's
    ``compute_importance_map``; the peak is 1 for odd sizes).

    Parameters
    ----------
    patch_size : sequence of int
        Window size in array order (D, H, W).
    sigma_scale : float or sequence of float
        Standard deviation as a fraction of the window size (0.125 as in MONAI and nnU-Net).

    Returns
    -------
    Tensor of shape ``patch_size``.

    Examples
    --------
    >>> w = gaussian_importance_map((5, 7, 9))
    >>> tuple(w.shape), float(w.max()), round(float(w.min()), 3)
    ((5, 7, 9), 1.0, 0.001)
    """
    patch_size = tuple(int(p) for p in patch_size)
    scales = (float(sigma_scale),) * len(patch_size) if isinstance(sigma_scale, (int, float)) else tuple(sigma_scale)
    weights = None
    for axis, (n, scale) in enumerate(zip_strict(patch_size, scales)):
        sigma = n * scale
        x = torch.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=torch.float32, device=device)
        g = torch.exp(x**2 / (-2 * sigma**2))
        shape = [1] * len(patch_size)
        shape[axis] = n
        g = g.reshape(shape)
        weights = g if weights is None else weights * g
    assert weights is not None
    floor = max(float(weights.min()), 1e-3)
    return weights.clamp_(min=floor).to(dtype)


def scan_intervals(image_size: Sequence[int], patch_size: Sequence[int], overlap: float | Sequence[float]) -> tuple[int, ...]:
    """Step between window starts along each axis: ``int(patch * (1 - overlap))``, at least 1.

    Examples
    --------
    >>> scan_intervals((100, 64, 50), (64, 64, 32), 0.5)
    (32, 64, 16)
    """
    overlaps = (float(overlap),) * len(patch_size) if isinstance(overlap, (int, float)) else tuple(overlap)
    steps = []
    for n, p, o in zip_strict(image_size, patch_size, overlaps):
        if not 0.0 <= o < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {o}")
        steps.append(int(p) if n == p else max(1, int(p * (1 - o))))
    return tuple(steps)


def window_slices(
    image_size: Sequence[int], patch_size: Sequence[int], overlap: float | Sequence[float] = 0.5
) -> list[tuple[slice, ...]]:
    """Slices of every window covering an image at least as large as the patch.

    Windows start every :func:`scan_intervals` step; the last window along an axis is moved
    back to end at the image border (the same placement as MONAI's ``dense_patch_slices``).

    Examples
    --------
    >>> [s[0] for s in window_slices((10, 4, 4), (4, 4, 4), 0.5)]
    [slice(0, 4, None), slice(2, 6, None), slice(4, 8, None), slice(6, 10, None)]
    """
    image_size = tuple(int(n) for n in image_size)
    patch_size = tuple(int(p) for p in patch_size)
    if any(p > n for p, n in zip_strict(patch_size, image_size)):
        raise ValueError(f"image {image_size} is smaller than the patch {patch_size}; pad it first")
    steps = scan_intervals(image_size, patch_size, overlap)
    starts_per_axis = []
    for n, p, step in zip_strict(image_size, patch_size, steps):
        count = 1 + max(0, math.ceil((n - p) / step))
        starts_per_axis.append([min(i * step, n - p) for i in range(count)])
    grid = torch.cartesian_prod(*[torch.tensor(s) for s in starts_per_axis]).reshape(-1, len(patch_size)).tolist()
    return [tuple(slice(s, s + p) for s, p in zip_strict(starts, patch_size)) for starts in grid]


def _pad_to_patch(inputs: torch.Tensor, patch_size: tuple[int, ...], mode: str, cval: float) -> tuple[torch.Tensor, list[int]]:
    # Same split as MONAI: the smaller half before, the larger after; F.pad lists the last axis first.
    pad: list[int] = []
    for axis in range(inputs.ndim - 1, 1, -1):
        diff = max(patch_size[axis - 2] - inputs.shape[axis], 0)
        pad += [diff // 2, diff - diff // 2]
    if any(pad):
        inputs = F.pad(inputs, pad, mode=mode, value=cval) if mode == "constant" else F.pad(inputs, pad, mode=mode)
    return inputs, pad


def sliding_window_inference(
    inputs: torch.Tensor,
    predictor: Predictor,
    patch_size: Sequence[int],
    *,
    overlap: float | Sequence[float] = 0.5,
    batch_size: int = 1,
    sigma_scale: float | Sequence[float] = 0.125,
    mode: str = "gaussian",
    padding_mode: str = "constant",
    cval: float = 0.0,
    device: torch.device | str | None = None,
    stitch_device: torch.device | str | None = None,
    channels_last: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    stage: str = "network",
) -> torch.Tensor:
    """Predict a whole image with a patch-based network, blending overlapping windows.

    Parameters
    ----------
    inputs : Tensor, shape (N, C, D, H, W)
        The image batch (any device).
    predictor : callable
        Maps a batch of windows ``(B, C, *patch_size)`` on ``device`` to outputs
        ``(B, C_out, *patch_size)`` -- usually the network itself.
    patch_size : sequence of 3 int
        Window size (D, H, W). Images smaller than this are padded (and cropped back).
    overlap : float in [0, 1)
        Fraction of the window shared with its neighbour along each axis.
    batch_size : int
        Windows per ``predictor`` call.
    sigma_scale : float
        Gaussian standard deviation as a fraction of the window size (``mode="gaussian"``).
    mode : {"gaussian", "constant"}
        Blending weights: Gaussian importance map or uniform.
    padding_mode, cval
        How to pad an image smaller than the window (``torch.nn.functional.pad`` modes).
    device : torch.device, optional
        Where windows are sent (where the predictor runs). Default: the device of ``inputs``.
    stitch_device : torch.device, optional
        Where the blended output is accumulated. Default: ``device``. Use the CPU when the
        whole output does not fit in GPU memory.
    channels_last : bool
        Send windows in ``channels_last_3d`` memory format (for networks converted to it).
    progress, cancel
        Progress callback (``fraction, stage``) and cancellation token, both handled after
        every batch of windows; a cancelled token raises
        :class:`~SegDeepLogic.errors.CancelledError`.

    Returns
    -------
    Tensor, shape (N, C_out, D, H, W), float32 on ``stitch_device``

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(1, 1, 20, 16, 12)
    >>> out = sliding_window_inference(x, lambda w: torch.cat([w, 2 * w], 1), (8, 8, 8), overlap=0.5)
    >>> out.shape, bool(torch.allclose(out[:, 1], 2 * x[:, 0], atol=1e-6))
    (torch.Size([1, 2, 20, 16, 12]), True)
    """
    if inputs.ndim != 5:
        raise ValueError(f"inputs must be (N, C, D, H, W), got shape {tuple(inputs.shape)}")
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"patch_size must be 3 positive integers (D, H, W), got {patch_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else inputs.device
    stitch_device = torch.device(stitch_device) if stitch_device is not None else device
    original_size = tuple(inputs.shape[2:])

    with torch.inference_mode():
        inputs, pad = _pad_to_patch(inputs, patch, padding_mode, cval)
        image_size = tuple(inputs.shape[2:])
        slices = window_slices(image_size, patch, overlap)
        n_images = inputs.shape[0]
        jobs = [(b, s) for b in range(n_images) for s in slices]

        if mode == "gaussian":
            weight = gaussian_importance_map(patch, sigma_scale, device=stitch_device)
        elif mode == "constant":
            weight = torch.ones(patch, device=stitch_device)
        else:
            raise ValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}")

        # Normalisation map: the sum of the weights of the windows covering each voxel.
        norm = torch.zeros(image_size, dtype=torch.float32, device=stitch_device)
        for s in slices:
            norm[s] += weight

        output: torch.Tensor | None = None
        done = 0
        report(progress, 0.0, stage, cancel)
        for first in range(0, len(jobs), batch_size):
            batch = jobs[first : first + batch_size]
            windows = torch.stack([inputs[b][(slice(None), *s)] for b, s in batch]).to(device, non_blocking=True)
            if channels_last:
                windows = windows.contiguous(memory_format=torch.channels_last_3d)
            predicted = predictor(windows)
            if predicted.ndim != 5 or tuple(predicted.shape[2:]) != patch or predicted.shape[0] != len(batch):
                raise ValueError(
                    f"the predictor returned shape {tuple(predicted.shape)} for {len(batch)} windows of {patch}; "
                    f"expected ({len(batch)}, C, {', '.join(map(str, patch))})"
                )
            predicted = predicted.to(stitch_device, torch.float32)
            if output is None:
                output = torch.zeros((n_images, predicted.shape[1], *image_size), dtype=torch.float32, device=stitch_device)
            for (b, s), p in zip_strict(batch, predicted):
                output[b][(slice(None), *s)].addcmul_(p, weight)
            done += len(batch)
            report(progress, done / len(jobs), stage, cancel)
        assert output is not None
        output /= norm
        if any(pad):
            crop = [slice(None), slice(None)]
            for axis in range(3):
                before = pad[2 * (2 - axis)]
                crop.append(slice(before, before + original_size[axis]))
            output = output[tuple(crop)]
    return output
