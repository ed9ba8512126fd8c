"""U-Net segmentation of a CT: from a HU volume to a label map on the CT's own grid.

:func:`segment_volume` runs the whole pipeline with a model package (see
:mod:`SegDeepLogic.model_package`); :func:`segment_file` adds reading and writing. Stages (each
timed in :attr:`SegmentationResult.timings_s`):

``reorient``
    The model's grid gets the axis order and directions the network was trained with (the
    card's ``orientation``, a DICOM code such as ``"LPI"``) by an exact permutation/flip of the
    CT's axes (:func:`SegDeepLogic.grid.reorient_volume` gives the same array; the pipeline only needs the grid).
``resample``
    The CT is resampled (linear, in physical space) onto that grid at the model's spacing,
    covering the same extent, centred on the CT. When the model's voxels are larger the CT is
    first smoothed with a Gaussian (``antialias``) so thin bone is averaged, not aliased.
``normalise``
    ``(clip(HU, lo, hi) - subtract) / divide`` from the card.
``network``
    Sliding windows (:mod:`SegDeepLogic.inferers`) with Gaussian blending of the class
    probabilities, optional mirroring test-time augmentation (softmax averaged over flips),
    mixed precision on GPUs and the out-of-memory fallbacks of :mod:`SegDeepLogic.devices`.
``resample-back``
    The class probabilities (not labels) are interpolated linearly onto the CT's grid, slab by
    slab so that no full-resolution multi-channel array is ever held; each slab is turned into
    labels (argmax, or per-label probability thresholds) and the uncertainty map.
``postprocess``
    Per-label clean-up in physical units (largest component, islands below N mm³).
``refine``
    Optional native-resolution refinement of bone labels with a HU threshold
    (:mod:`SegDeepLogic.refine`).

The label map has exactly the CT's size, spacing, origin and direction.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ._compat import zip_strict
from .atomic import atomic_outputs, check_outputs
from .body import BodyCrop, find_body_crop, region_on_ct
from .devices import (
    RunConfig,
    autocast,
    fits_in_memory,
    precision_name,
    resolve_device,
    resolve_precision,
    run_with_fallbacks,
)
from .dicom_common import Algorithm
from .dicom_seg import write_dicom_seg
from .dicom_series import read_dicom_series
from .errors import MismatchError, SegDeepError
from .filecheck import max_voxels
from .grid import AxisMap, Grid, axis_maps, model_grid, orientation_code
from .inferers import sliding_window_inference
from .io import check_hounsfield, read_volume, to_sitk, validate_volume, write_volume
from .model_card import ModelCard
from .model_input import AIR_HU, IntensityNormalization, antialias_sigma_mm, interpolation_weights, resample_to_model_grid
from .model_package import load_model_package
from .options import SegmentOptions, options_from
from .plausibility import check_plausibility, image_features, mismatch_message, structure_volumes_ml
from .presets import is_bone_like
from .progress import CancelToken, ProgressCallback, report
from .refine import RefineOptions, refine_mask
from .resources import bundled_model_dir, list_bundled_models
from .rtstruct import write_rtstruct
from .segmentation_io import Segmentation, SegmentInfo, sidecar_paths, write_labelmap_nifti, write_seg_nrrd
from .threshold import keep_largest_component, remove_small_islands
from .uncertainty import normalized_entropy, summarize_uncertainty
from .volume import Volume

__all__ = [
    "ModelNotFoundError",
    "SegmentOptions",
    "SegmentationResult",
    "default_batch_size",
    "default_model_path",
    "load_model",
    "segment_file",
    "segment_volume",
]


_STAGES = (
    "read",
    "reorient",
    "resample",
    "normalise",
    "network",
    "resample-back",
    "postprocess",
    "refine",
    "uncertainty",
    "write",
)
# Share of the progress bar per stage (network dominates on a CPU).
_PROGRESS = {
    "read": (0.00, 0.04),
    "reorient": (0.04, 0.05),
    "resample": (0.05, 0.10),
    "normalise": (0.10, 0.11),
    "network": (0.11, 0.80),
    "resample-back": (0.80, 0.92),
    "postprocess": (0.92, 0.95),
    "refine": (0.95, 0.97),
    "uncertainty": (0.97, 0.98),
    "write": (0.98, 1.00),
}


class ModelNotFoundError(SegDeepError, FileNotFoundError):
    """No model package was given and none is bundled."""


def _resample(
    image: sitk.Image,
    grid: Grid,
    *,
    linear: bool = True,
    default: float = 0.0,
    pixel_type: int = sitk.sitkFloat32,
    extrapolate: bool = False,
) -> sitk.Image:
    f = sitk.ResampleImageFilter()
    f.SetSize([int(n) for n in grid.size_ijk])
    f.SetOutputSpacing([float(s) for s in grid.spacing])
    f.SetOutputOrigin([float(o) for o in grid.origin])
    f.SetOutputDirection([float(d) for d in grid.direction.ravel()])
    f.SetInterpolator(sitk.sitkLinear if linear else sitk.sitkNearestNeighbor)
    f.SetDefaultPixelValue(float(default))
    f.SetOutputPixelType(pixel_type)
    f.SetUseNearestNeighborExtrapolator(bool(extrapolate))
    return f.Execute(image)


# --------------------------------------------------------------------------------------------
# Separable resampling between grids whose axes are parallel
# --------------------------------------------------------------------------------------------
# The model grid is the CT grid permuted/flipped and rescaled, so each model axis runs along
# one CT axis and the index maps are 1D affine: trilinear interpolation is then three 1D
# linear interpolations, done here with torch (vectorised, multithreaded) instead of ITK's
# generic per-voxel resampler -- several times faster on a 512² CT, identical results.
def interpolation_matrix(n: int, positions: np.ndarray, sigma_voxels: float = 0.0) -> torch.Tensor:
    """:func:`SegDeepLogic.model_input.interpolation_weights` as a torch tensor (``signal @ W`` samples a signal).

    Examples
    --------
    >>> w = interpolation_matrix(3, np.array([0.0, 0.5, 2.0, 7.0]))
    >>> (torch.tensor([10.0, 20.0, 40.0]) @ w).tolist()
    [10.0, 15.0, 40.0, 40.0]
    """
    return torch.from_numpy(interpolation_weights(n, positions, sigma_voxels))


def _along(x: torch.Tensor, dim: int, w: torch.Tensor) -> torch.Tensor:
    """Apply a 1D resampling matrix along ``dim``."""
    if dim in (-1, x.ndim - 1):
        return x @ w
    return (x.movedim(dim, -1) @ w).movedim(-1, dim)


def _lerp_gather(x: torch.Tensor, dim: int, lower: np.ndarray, upper: np.ndarray, frac: np.ndarray) -> torch.Tensor:
    """Linear interpolation along an outer ``dim`` by gathering whole rows (memory-bound, no wasted flops)."""
    a = x.index_select(dim, torch.from_numpy(lower))
    if not frac.any():
        return a
    shape = [1] * x.ndim
    shape[dim] = -1
    return torch.lerp(a, x.index_select(dim, torch.from_numpy(upper)), torch.from_numpy(frac.astype(np.float32)).reshape(shape))


def _linear_taps(n: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = np.clip(np.asarray(positions, dtype=np.float64), 0.0, n - 1)
    lower = np.minimum(np.floor(pos).astype(np.int64), n - 1)
    return lower, np.minimum(lower + 1, n - 1), pos - lower


class _BackResampler:
    """Interpolates (C, model array) maps onto slabs of CT slices: ``self(k0, k1, channels)``.

    Along the CT's i axis (model size -> CT size, on the few model rows a slab needs) by a
    small matrix product; along j and k by gathering the two neighbouring rows and blending,
    so the work is a few passes over the output instead of a dense product per voxel.
    """

    def __init__(self, maps: torch.Tensor, grid: Grid, ct: Volume, back: list[AxisMap]):
        nk, nj, ni = ct.array.shape
        # Model axes reordered as the CT's [k, j, i].
        self.ordered = maps.permute([0] + [3 - back[2 - q][0] for q in range(3)]).contiguous()
        sizes = [grid.size_ijk[back[t][0]] for t in range(3)]
        positions = [back[t][1] * np.arange(n) + back[t][2] for t, n in enumerate((ni, nj, nk))]
        self.w_i = interpolation_matrix(sizes[0], positions[0])
        self.taps_j = _linear_taps(sizes[1], positions[1])
        self.taps_k = _linear_taps(sizes[2], positions[2])

    def rows(self, k0: int, k1: int) -> tuple[int, int]:
        """Model rows (along the CT's k) that CT slices k0:k1 are interpolated from: r0:r1."""
        lower, upper, _ = self.taps_k
        return int(min(lower[k0:k1].min(), upper[k0:k1].min())), int(max(lower[k0:k1].max(), upper[k0:k1].max())) + 1

    def __call__(self, k0: int, k1: int, channels: Sequence[int] | None = None) -> torch.Tensor:
        r0, r1 = self.rows(k0, k1)
        x = self.ordered[:, r0:r1]
        if channels is not None:
            x = x[list(channels)]
        lower, upper, frac = self.taps_k
        with torch.inference_mode():
            x = _lerp_gather(x @ self.w_i, 2, *self.taps_j)
            return _lerp_gather(x, 1, lower[k0:k1] - r0, upper[k0:k1] - r0, frac[k0:k1])


def _possible_winners(probs: torch.Tensor, thresholds: torch.Tensor | None) -> torch.Tensor:
    """Per channel and model row (along the CT's k): can the channel be chosen in a cell of that row?

    Linear interpolation is a convex combination of a cell's 8 corners, so inside a cell a
    channel's probability lies between its corner minimum and maximum. A channel whose maximum
    is below another channel's minimum can never be the argmax there (nor a label whose maximum
    is below its threshold): such channels need not be interpolated -- most of a CT is certain
    background, so most slabs interpolate one or two channels instead of all.
    Returns bool (C, Dk) for argmax, (C - 1, Dk) label channels for thresholds.
    """

    def over_cells(x: torch.Tensor, pick: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        # Cell (r, q, p) spans voxels r..r+1, q..q+1, p..p+1 (the last cell repeats the edge).
        for dim in (1, 2, 3):
            n = x.shape[dim]
            if n > 1:
                x = pick(x, torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim=dim))
        return x

    upper = over_cells(probs, torch.maximum)
    if thresholds is None:
        possible = upper >= over_cells(probs, torch.minimum).max(dim=0).values
    else:
        possible = upper[1:] >= thresholds.reshape(-1, 1, 1, 1)
    return possible.any(dim=3).any(dim=2)


# --------------------------------------------------------------------------------------------
# Model packages
# --------------------------------------------------------------------------------------------
def default_model_path() -> Path:
    """The first bundled model package (sorted by name; :func:`SegDeepLogic.resources.list_bundled_models`).

    Raises
    ------
    ModelNotFoundError
        When none is bundled; the message says to pass ``--model``.
    """
    packages = list_bundled_models()
    if packages:
        return packages[0]
    raise ModelNotFoundError(
        f"no model package is bundled in {bundled_model_dir()}; pass one with --model PATH (a model package folder "
        "or .zip, e.g. Testing/Data/test_model) or model=... in the API"
    )


def load_model(model: Any = None) -> Any:
    """A model package: ``model`` itself if it has ``card`` and ``network``, else loaded from a path.

    ``None`` loads :func:`default_model_path`.
    """
    if model is None:
        model = default_model_path()
    if isinstance(model, (str, os.PathLike)):
        return load_model_package(model)
    if not (hasattr(model, "card") and hasattr(model, "network")):
        raise SegDeepError(f"model must be a model package (with .card and .network) or a path, got {type(model).__name__}")
    if not isinstance(model.card, ModelCard):
        raise SegDeepError(
            f"the model package's card must be a ModelCard, got {type(model.card).__name__} "
            "(ModelCard.from_dict reads a parsed model.json)"
        )
    return model


def _size_divisor(network: torch.nn.Module) -> tuple[int, int, int] | None:
    value = getattr(network, "size_divisor", None)
    if isinstance(value, int) and value > 0:
        return (value, value, value)
    if isinstance(value, Sequence) and len(value) == 3:
        return tuple(int(v) for v in value)  # type: ignore[return-value]
    return None


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SegmentationResult:
    """Everything :func:`segment_volume` produced.

    Attributes
    ----------
    labels : Volume
        uint8 (uint16 above 255) label map on the input CT's exact grid; 0 = background.
    segments : list of SegmentInfo
        Name, label value, colour and terminology of each structure (from the model card).
    probabilities : dict of str to Volume, or None
        With ``return_probabilities=True``: per structure, its probability on the CT's grid
        quantised to uint8 (``p ≈ value / 255``).
    uncertainty : Volume or None
        Normalised entropy (0 certain .. 1 uniform) of the blended (with TTA: flip-averaged)
        class probabilities, computed on the model's grid and interpolated linearly onto the
        CT's grid; float32.
    tta_variance : Volume or None
        With test-time augmentation: variance of the class probabilities across the flips.
    uncertainty_summary : list of dict
        :func:`SegDeepLogic.uncertainty.summarize_uncertainty` per structure.
    device, precision : str
        Where the network finally ran and its compute precision.
    fallbacks : list of str
        Every fallback taken (out of memory, CPU stitching), in order; empty if none.
    timings_s : dict
        Seconds per stage (read, reorient, resample, normalise, network, resample-back,
        postprocess, refine, write).
    parameters : dict
        The settings used (model, grids, overlap, batch size, thresholds, clean-up, ...).
    plausibility : dict or None
        :func:`SegDeepLogic.plausibility.check_plausibility`: does the CT, and the result, look
        like the model's training data? ``verdict`` is "ok", "caution", "mismatch" (wrong
        anatomy: do not use the output) or "unchecked" (the card has no reference statistics).
    options : SegmentOptions or None
        The options of the run (:class:`~SegDeepLogic.options.SegmentOptions`), as given.
    withheld : list of dict
        Empty unless the verdict was "mismatch" and ``allow_mismatch`` was False: then every
        structure the network predicted, ``{"name", "volume_ml"}``, whose labels (and
        probabilities) were withheld -- ``labels`` is all background. The uncertainty map and
        summary still describe the network's prediction, so the reason can be inspected.
    """

    labels: Volume
    segments: list[Any]
    probabilities: dict[str, Volume] | None
    uncertainty: Volume | None
    tta_variance: Volume | None
    uncertainty_summary: list[dict[str, Any]]
    device: str
    precision: str
    fallbacks: list[str]
    timings_s: dict[str, float]
    parameters: dict[str, Any]
    plausibility: dict[str, Any] | None = None
    withheld: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    options: SegmentOptions | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready report (no voxel data)."""
        # Withheld labels: the uncertainty summary describes the prediction, not the output.
        volumes = {} if self.withheld else {row["name"]: row["volume_mm3"] for row in self.uncertainty_summary}
        counts = None
        if not volumes:
            values, n = np.unique(self.labels.array, return_counts=True)
            counts = dict(zip_strict(values.tolist(), n.tolist()))
        segments = []
        for s in self.segments:
            volume = volumes.get(s.name)
            if volume is None and counts is not None:
                volume = round(counts.get(s.value, 0) * self.labels.voxel_volume_mm3, 3)
            segments.append({"name": s.name, "value": s.value, "color": list(s.color), "volume_mm3": volume})
        return {
            "segments": segments,
            "geometry": self.labels.geometry_dict(),
            "device": self.device,
            "precision": self.precision,
            "fallbacks": list(self.fallbacks),
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "parameters": self.parameters,
            "uncertainty": self.uncertainty_summary,
            "plausibility": self.plausibility,
            "withheld": list(self.withheld),
            "options": self.options.to_dict() if self.options is not None else None,
        }


class _Stages:
    """Times stages and maps their progress into the overall bar."""

    def __init__(self, progress: ProgressCallback | None, cancel: CancelToken | None, timings: dict[str, float]):
        self.progress, self.cancel, self.timings = progress, cancel, timings

    def report(self, stage: str, fraction: float, detail: str | None = None) -> None:
        lo, hi = _PROGRESS[stage]
        report(self.progress, lo + (hi - lo) * fraction, detail or stage, self.cancel)

    def callback(self, stage: str) -> ProgressCallback:
        return lambda fraction, detail: self.report(stage, fraction, detail)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self.report(stage, 0.0)
        start = time.perf_counter()
        yield
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start
        self.report(stage, 1.0)


# --------------------------------------------------------------------------------------------
# Network stage
# --------------------------------------------------------------------------------------------
def default_batch_size(patch_size_kji: Sequence[int], device: torch.device) -> int:
    """Windows per network call: about 2^18 voxels per batch on the CPU, 2^21 on GPUs.

    On the CPU, PyTorch sends a batch of one small 3D window to a slow reference convolution
    and batches of two or more to oneDNN, which is 3-5x faster per window; small windows also
    waste time in per-layer overheads. So the CPU gets at least 2 windows per batch, more for
    small patches (8 for 32³), capped at 16.

    Examples
    --------
    >>> default_batch_size((32, 32, 32), torch.device("cpu")), default_batch_size((128, 128, 128), torch.device("cpu"))
    (8, 2)
    """
    voxels = int(np.prod([int(p) for p in patch_size_kji]))
    if device.type == "cpu":
        return int(min(16, max(2, (1 << 18) // voxels)))
    return int(min(32, max(1, (1 << 21) // voxels)))


ALL_FLIPS = tuple(c for r in range(4) for c in itertools.combinations((2, 3, 4), r))
"""Mirroring test-time augmentation: the 8 flip combinations of the three spatial axes."""


def lateral_swap(orientation: str, label_names: Sequence[str]) -> tuple[int, list[int]] | None:
    """Where mirroring swaps left and right: (tensor dim, channel permutation) or None.

    ``orientation`` is the model's axis code (e.g. ``"LPI"``: i runs to the patient's left);
    channel 0 is background and channel k is ``label_names[k-1]``. Labels named ``*_left`` /
    ``*_right`` (or ``left_*`` / ``right_*``, any case) swap with their counterpart.

    Examples
    --------
    >>> lateral_swap("LPI", ["mandible", "parotid_left", "parotid_right"])
    (4, [0, 1, 3, 2])
    >>> lateral_swap("LPI", ["bone"]) is None
    True
    """
    axis = next((t for t, c in enumerate(orientation.upper()) if c in "LR"), None)
    lower = [n.lower() for n in label_names]
    perm = list(range(len(label_names) + 1))
    for k, name in enumerate(lower):
        for a, b in (("left", "right"), ("right", "left")):
            other = name.replace(a, b)
            if other != name and other in lower:
                perm[k + 1] = lower.index(other) + 1
    if axis is None or perm == list(range(len(perm))):
        return None
    return 4 - axis, perm  # i -> W (dim 4), j -> H (dim 3), k -> D (dim 2)


class _Predictor:
    """Network -> per-window class probabilities (mean over flips, plus their variance)."""

    def __init__(
        self,
        network: torch.nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        flips: Sequence[tuple[int, ...]],
        lateral: tuple[int, list[int]] | None = None,
    ):
        self.network, self.device, self.dtype, self.flips = network, device, dtype, list(flips)
        # (tensor dim of the patient's left-right axis, channel permutation swapping *_left/*_right):
        # a left-right mirror turns a left structure into a right one, so its channels swap back.
        self.lateral = lateral

    def _probabilities(self, windows: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.dtype):
            logits = self.network(windows)
        return torch.softmax(logits.float(), dim=1)

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        if len(self.flips) <= 1:
            return self._probabilities(windows)
        total = squares = None
        for axes in self.flips:
            p = self._probabilities(windows.flip(axes)).flip(axes) if axes else self._probabilities(windows)
            if self.lateral is not None and self.lateral[0] in axes:
                p = p[:, self.lateral[1]]
            total = p if total is None else total.add_(p)
            squares = p * p if squares is None else squares.addcmul_(p, p)
        assert total is not None and squares is not None
        n = len(self.flips)
        mean = total.div_(n)
        variance = (squares.div_(n) - mean * mean).clamp_(min=0.0).mean(dim=1, keepdim=True)
        return torch.cat([mean, variance], dim=1)


@contextmanager
def _restore_threads(threads: int) -> Iterator[None]:
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _predict(
    network: torch.nn.Module,
    image: np.ndarray,
    *,
    patch: tuple[int, int, int],
    overlap: float,
    flips: Sequence[tuple[int, ...]],
    config: RunConfig,
    cval: float,
    progress: ProgressCallback,
    cancel: CancelToken | None,
    channels: int,
    channels_last: bool = True,
    lateral: tuple[int, list[int]] | None = None,
) -> tuple[torch.Tensor, RunConfig, list[str]]:
    events: list[str] = []
    if config.device.type != "cpu":
        # Whole accumulator (channels + normalisation map + input) on the GPU only if it fits.
        need = (channels + 3) * image.size * 4
        if not fits_in_memory(config.device, need):
            config = dataclasses.replace(config, stitch_device=torch.device("cpu"))
            events.append(
                f"output accumulator ({need / 2**30:.2f} GiB) does not fit in free memory on {config.device}: stitching on the CPU"
            )

    def attempt(cfg: RunConfig) -> torch.Tensor:
        # channels-last-3d: oneDNN / cuDNN's native layout for 3D convolutions (about a third
        # faster on the CPU; the weights' values are unchanged).
        network.to(cfg.device, memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
        x = torch.from_numpy(image)[None, None].to(cfg.stitch_device)
        predictor = _Predictor(network, cfg.device, cfg.dtype, flips, lateral)
        out = sliding_window_inference(
            x,
            predictor,
            patch,
            overlap=overlap,
            batch_size=cfg.batch_size,
            cval=cval,
            device=cfg.device,
            stitch_device=cfg.stitch_device,
            channels_last=channels_last,
            progress=progress,
            cancel=cancel,
        )
        return out[0].cpu()

    def on_fallback(message: str) -> None:
        progress(0.0, f"network: {message}")

    out, final, more = run_with_fallbacks(attempt, config, on_fallback=on_fallback)
    return out, final, events + more


# --------------------------------------------------------------------------------------------
# Back to the CT's grid
# --------------------------------------------------------------------------------------------
def _decide(probs: torch.Tensor, thresholds: torch.Tensor | None) -> torch.Tensor:
    """Channel index (uint8/int16) per voxel from (C, ...) probabilities: argmax, or thresholded labels.

    With thresholds, a label is a candidate where its probability reaches its threshold; the
    most probable candidate wins, background where there is none. Ties go to the lower channel
    (as ``argmax``). A running comparison over the few channels: ``torch.argmax`` over a short
    leading axis is many times slower.
    """
    index = torch.zeros(probs.shape[1:], dtype=torch.uint8 if probs.shape[0] <= 256 else torch.int16)
    best = probs[0].clone() if thresholds is None else torch.full(probs.shape[1:], -1.0)
    for c in range(1, probs.shape[0]):
        p = probs[c]
        better = p > best
        if thresholds is not None:
            better &= p >= thresholds[c - 1]
        index.masked_fill_(better, c)
        torch.where(better, p, best, out=best)
    return index


def _to_input_grid(
    channels: list[torch.Tensor],
    grid: Grid,
    ct: Volume,
    *,
    n_classes: int,
    lut: np.ndarray,
    thresholds: np.ndarray | None,
    want_probabilities: bool,
    report_fraction: Callable[[float], None],
    slab_bytes: int = 64 << 20,
    box: tuple[slice, ...] | None = None,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None]:
    """Interpolate model-grid maps onto the CT's grid slab by slab and decide the labels.

    ``channels`` holds the ``n_classes`` class probabilities followed by extra maps (entropy,
    variance) that are interpolated alongside and returned as float32 arrays. Channels that
    cannot win anywhere in a slab are skipped (:func:`_possible_winners`); the labels are the
    same as with all channels interpolated. ``box``: the maps are certain background (extras 0)
    outside this part of the model array, so only the CT voxels that read inside it are interpolated
    (:func:`~SegDeepLogic.body.region_on_ct`); the others are background, exactly as interpolated.
    """
    nk, nj, ni = ct.array.shape
    back = axis_maps(grid, Grid.of(ct))
    region = region_on_ct(box, back, ct.array.shape, grid.shape_kji) if box is not None and back is not None else None
    if region is not None:
        origin = ct.index_to_physical([r.start for r in region[::-1]])
        part = Volume(ct.array[region], ct.spacing, origin, ct.direction)
        sub = _to_input_grid(
            channels, grid, part, n_classes=n_classes, lut=lut, thresholds=thresholds,
            want_probabilities=want_probabilities, report_fraction=report_fraction, slab_bytes=slab_bytes,
        )  # fmt: skip
        labels = np.zeros((nk, nj, ni), dtype=lut.dtype)
        labels[region] = sub[0]
        extras = [np.zeros((nk, nj, ni), np.float32) for _ in sub[1]]
        for extra, values in zip_strict(extras, sub[1]):
            extra[region] = values
        probabilities = None
        if sub[2] is not None:
            probabilities = np.zeros((sub[2].shape[0], nk, nj, ni), np.uint8)
            probabilities[(slice(None), *region)] = sub[2]
        return labels, extras, probabilities
    maps = torch.stack(channels)
    if back is None:  # direction matrices too far from orthonormal for the separable path
        return _to_input_grid_itk(
            maps, grid, ct, n_classes=n_classes, lut=lut, thresholds=thresholds, want_probabilities=want_probabilities
        )
    resample = _BackResampler(maps, grid, ct, back)
    limits = torch.from_numpy(thresholds) if thresholds is not None else None
    possible = _possible_winners(resample.ordered[:n_classes], limits)
    first_label = 0 if limits is None else 1  # rows of `possible` are channels from here on

    labels = np.zeros((nk, nj, ni), dtype=lut.dtype)
    extras = [np.zeros((nk, nj, ni), np.float32) for _ in channels[n_classes:]]
    extra_channels = list(range(n_classes, len(channels)))
    probabilities = np.zeros((n_classes - 1, nk, nj, ni), np.uint8) if want_probabilities else None
    slab = max(1, min(nk, slab_bytes // max(1, nj * ni * len(channels) * 4)))
    with torch.inference_mode():
        for k0 in range(0, nk, slab):
            k1 = min(nk, k0 + slab)
            r0, r1 = resample.rows(k0, k1)
            candidates = [first_label + int(c) for c in torch.nonzero(possible[:, r0 : min(r1, possible.shape[1])].any(dim=1))]
            if want_probabilities:
                candidates = list(range(n_classes))
            settled = not candidates or (limits is None and len(candidates) == 1)
            needed = ([] if settled and not want_probabilities else candidates) + extra_channels
            values = resample(k0, k1, needed) if needed else None
            if settled:
                # Only one class can win anywhere in this slab (or no label can reach its threshold).
                labels[k0:k1] = lut[candidates[0] if candidates else 0]
            else:
                n = len(candidates)
                subset = values[:n]
                if limits is None:
                    index = _decide(subset, None).numpy()
                else:
                    labels_only = [c for c in candidates if c > 0]
                    offset = n - len(labels_only)  # 1 when the background is among the candidates
                    stacked = torch.cat([torch.zeros_like(subset[:1]), subset[offset:]])
                    index = _decide(stacked, limits[[c - 1 for c in labels_only]]).numpy()
                    candidates = [0, *labels_only]
                np.take(lut[np.asarray(candidates)], index, out=labels[k0:k1])
            for e, extra in enumerate(extras):
                extra[k0:k1] = values[values.shape[0] - len(extra_channels) + e].numpy()
            if probabilities is not None:
                probabilities[:, k0:k1] = values[1:n_classes].clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8).numpy()
            report_fraction(k1 / nk)
    return labels, extras, probabilities


def _to_input_grid_itk(
    maps: torch.Tensor,
    grid: Grid,
    ct: Volume,
    *,
    n_classes: int,
    lut: np.ndarray,
    thresholds: np.ndarray | None,
    want_probabilities: bool,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None]:
    """ITK's general resampler (whole grid at once): for grids whose axes are not parallel."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(maps.permute(1, 2, 3, 0).numpy()), isVector=True)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection([float(d) for d in grid.direction.ravel()])
    values = torch.from_numpy(
        sitk.GetArrayFromImage(_resample(image, Grid.of(ct), extrapolate=True, pixel_type=sitk.sitkVectorFloat32))
    )
    values = values.permute(3, 0, 1, 2)
    limits = torch.from_numpy(thresholds) if thresholds is not None else None
    labels = lut[_decide(values[:n_classes], limits).numpy()]
    extras = [values[c].numpy().copy() for c in range(n_classes, values.shape[0])]
    probabilities = values[1:n_classes].clamp(0, 1).mul(255).round_().to(torch.uint8).numpy() if want_probabilities else None
    return labels, extras, probabilities


def _per_label(setting: Any, segments: Sequence[Any], default: Any, name: str) -> dict[int, Any]:
    """Expand a global value or a {name or value: setting} mapping to {label value: setting}."""
    if not isinstance(setting, Mapping):
        return {s.value: (default if setting is None else setting) for s in segments}
    out = {s.value: default for s in segments}
    by_name = {s.name.lower(): s.value for s in segments}
    for key, value in setting.items():
        if isinstance(key, str) and key.lower() in by_name:
            out[by_name[key.lower()]] = value
        elif isinstance(key, int) and key in out:
            out[key] = value
        else:
            raise SegDeepError(f"{name}: unknown label {key!r}; the model's labels are {', '.join(s.name for s in segments)}")
    return out


def _select_labels(selection: Any, segments: Sequence[Any]) -> list[Any]:
    if selection is None:
        return [s for s in segments if is_bone_like(s.name)]
    chosen = _per_label(dict.fromkeys(selection, True), segments, False, "refine_labels")
    return [s for s in segments if chosen[s.value]]


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    hits = [np.nonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))[0] for axis in range(3)]
    if hits[0].size == 0:
        return None
    return tuple(slice(int(h[0]), int(h[-1]) + 1) for h in hits)


def _clean_labels(
    labels: np.ndarray, segments: Sequence[Any], keep_largest: dict[int, bool], min_island: dict[int, float], voxel_mm3: float
) -> None:
    for s in segments:
        if not keep_largest[s.value] and not min_island[s.value]:
            continue
        box = _bbox(labels == s.value)
        if box is None:
            continue
        mask = labels[box] == s.value
        cleaned = mask
        if min_island[s.value]:
            cleaned = remove_small_islands(cleaned, float(min_island[s.value]), voxel_volume_mm3=voxel_mm3)
        if keep_largest[s.value]:
            cleaned = keep_largest_component(cleaned)
        labels[box][mask & ~cleaned] = 0


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------
def segment_volume(
    ct: Volume,
    model: Any = None,
    options: SegmentOptions | Mapping[str, Any] | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    _timings: dict[str, float] | None = None,
    **changes: Any,
) -> SegmentationResult:
    """Segment a CT with a U-Net model package; the label map is on the CT's exact grid.

    A short pipeline of named stages: :func:`_plan` (what the card and the options ask for),
    :func:`_prepare_input` (reorient, resample and normalise onto the model's grid),
    :func:`_run_network` (sliding window, TTA), :func:`_back_to_ct_grid` (decision and labels on the
    CT's grid), :func:`_clean_up_and_refine`, :func:`_check_and_summarise` (uncertainty summary,
    out-of-distribution check, withholding) and :func:`_record` (the parameters).

    Parameters
    ----------
    ct : Volume
        CT in Hounsfield units, any orientation (oblique included) and spacing.
    model : ModelPackage, path or None
        A loaded package (``.card``, ``.network``), a package path, or None for the first
        package bundled in ``Resources/Models``.
    options : SegmentOptions or dict, optional
        Every setting of the run (:class:`~SegDeepLogic.options.SegmentOptions`: device,
        precision, overlap, batch size, TTA, thresholds, clean-up, refinement, uncertainty,
        ``allow_mismatch``, threads); default the defaults. Recorded in ``result.options``.
    progress : callable, optional
        ``progress(fraction, stage)``.
    cancel : CancelToken, optional
        Checked between sliding windows and stages; raises
        :class:`~SegDeepLogic.errors.CancelledError`.
    **changes
        Single options by name (e.g. ``tta=True``), applied on top of ``options`` -- the
        keyword arguments this function always took. See :class:`SegmentOptions` for each.

    Returns
    -------
    SegmentationResult

    Raises
    ------
    DeviceError
        An explicit device that is not available.
    InferenceOutOfMemoryError
        Out of memory even on the CPU after every fallback.
    CancelledError
        ``cancel`` was set.

    Examples
    --------
    >>> from SegDeepLogic import read_volume
    >>> ct = read_volume("Resources/SampleData/openkbp_pt_236/ct.nii.gz")  # doctest: +SKIP
    >>> result = segment_volume(ct, "Testing/Data/test_model", SegmentOptions(tta=True))  # doctest: +SKIP
    >>> result.labels.same_grid(ct), result.fallbacks, result.options.tta  # doctest: +SKIP
    (True, [], True)
    """
    opts = options_from(options, **changes)
    timings: dict[str, float] = _timings if _timings is not None else {}
    stages = _Stages(progress, cancel, timings)
    validate_volume(ct, name="the CT")
    package = load_model(model)
    plan = _plan(package.card, package.network, opts)
    prepared = _prepare_input(ct, plan, opts, stages)
    channels, final, fallbacks, threads = _run_network(package.network, prepared, plan, opts, stages, cancel)
    labels, entropy_map, variance_map, probability_maps, decision = _back_to_ct_grid(channels, prepared, ct, plan, opts, stages)
    del channels
    cleaned = _clean_up_and_refine(labels, ct, plan, opts, stages)
    checked = _check_and_summarise(ct, labels, entropy_map, variance_map, probability_maps, prepared, plan, opts, stages)
    parameters = _record(ct, plan, prepared, opts, final, threads, decision, cleaned)
    for stage in _STAGES[1:-1]:
        timings.setdefault(stage, 0.0)
    return SegmentationResult(
        labels=checked.labels,
        segments=plan.segments,
        probabilities=checked.probabilities,
        uncertainty=checked.uncertainty,
        tta_variance=checked.tta_variance,
        uncertainty_summary=checked.summary,
        device=str(final.device),
        precision=precision_name(final.dtype),
        fallbacks=list(fallbacks),
        timings_s=timings,
        parameters=parameters,
        plausibility=checked.plausibility,
        withheld=checked.withheld,
        options=opts,
    )


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What the card and the options ask of one run (validated before any work)."""

    card: ModelCard
    segments: list[SegmentInfo]
    n_classes: int
    lut: np.ndarray
    patch: tuple[int, int, int]
    device: torch.device
    dtype: torch.dtype
    batch_size: int
    flips: tuple[tuple[int, ...], ...]
    normalization: IntensityNormalization
    orientation: str
    spacing_model: list[float]
    reference: dict[str, Any]
    need_entropy: bool


def _plan(card: ModelCard, network: torch.nn.Module, opts: SegmentOptions) -> _Plan:
    """Stage 0: check the card against the network and resolve device, precision, batch size, flips."""
    segments = card.segments
    if not segments:
        raise SegDeepError("the model card lists no labels")
    max_value = max(s.value for s in segments)
    lut = np.array([0] + [s.value for s in segments], dtype=np.uint8 if max_value <= 255 else np.uint16)
    patch = tuple(int(p) for p in card.patch_size_kji)
    divisor = _size_divisor(network)
    if len(patch) != 3 or min(patch) < 1 or (divisor and any(p % d for p, d in zip_strict(patch, divisor))):
        raise SegDeepError(
            f"the model's patch size {patch} (D, H, W) must be 3 sizes divisible by {divisor} (the network's downsampling)"
        )
    torch_device = resolve_device(opts.device)
    dtype = resolve_precision(torch_device, opts.precision)
    batch_size = opts.batch_size if opts.batch_size is not None else default_batch_size(patch, torch_device)
    flips = (opts.tta_flips if opts.tta_flips is not None else ALL_FLIPS) if opts.tta else ((),)
    normalization = IntensityNormalization.from_card(card.intensity or {})
    # The out-of-distribution check compares the entropy inside each structure with the
    # validation run's: computed whenever the card has that reference, returned only if asked.
    reference = dict(card.reference_statistics or {})
    return _Plan(
        card=card,
        segments=segments,
        n_classes=1 + len(segments),
        lut=lut,
        patch=patch,  # type: ignore[arg-type]
        device=torch_device,
        dtype=dtype,
        batch_size=int(batch_size),
        flips=tuple(flips),
        normalization=normalization,
        orientation=str(card.orientation),
        spacing_model=[float(s) for s in card.spacing_ijk_mm],
        reference=reference,
        need_entropy=bool(opts.uncertainty or reference.get("validation_entropy")),
    )


@dataclasses.dataclass
class _ModelInput:
    """The CT on the model's grid, normalised, with the image features of the OOD check."""

    array: np.ndarray | None
    grid: Grid
    features: dict[str, Any]
    cval: float
    body: BodyCrop | None = None  # the box the network runs on (None: the whole grid)


def _prepare_input(ct: Volume, plan: _Plan, opts: SegmentOptions, stages: _Stages) -> _ModelInput:
    """Stages reorient, resample, normalise: one interpolation from the CT onto the model's grid."""
    orientation, spacing_model = plan.orientation, plan.spacing_model
    with stages("reorient"):
        grid = model_grid(ct, orientation, spacing_model)
        n_model = int(np.prod(grid.size_ijk, dtype=np.int64))
        if n_model > max_voxels():
            raise SegDeepError(
                f"the model's grid for this CT would be {' x '.join(str(n) for n in grid.size_ijk)} = {n_model} voxels "
                f"(CT extent at the card's spacing {spacing_model} mm), over the limit of {max_voxels()} voxels "
                "(SEGDEEP_MAX_VOXELS); is the card's spacing_ijk_mm right?"
            )
    with stages("resample"):
        sigma_mm = antialias_sigma_mm(ct, grid, antialias=opts.antialias)  # the rule training data is prepared with
        if axis_maps(Grid.of(ct), grid) is not None:
            array = resample_to_model_grid(ct, grid, sigma_mm)
        else:  # direction matrices too far from orthonormal for the separable path
            image = to_sitk(ct)
            if max(sigma_mm) > 0:
                image = sitk.Cast(image, sitk.sitkFloat32)
                for axis in range(3):
                    if sigma_mm[axis] > 0:
                        image = sitk.RecursiveGaussian(image, sigma=sigma_mm[axis], direction=axis)
            array = sitk.GetArrayFromImage(_resample(image, grid, default=AIR_HU))
            del image
        # The out-of-distribution check's image features, measured where training measured them.
        features = image_features(array, grid.spacing[::-1], axial_axis=_axial_axis(orientation))
        body = (
            find_body_crop(array, grid.spacing[::-1], plan.patch, axial_axis=_axial_axis(orientation))
            if opts.restrict_to_body
            else None
        )
    with stages("normalise"):
        norm = plan.normalization
        norm.apply(array, out=array)
        cval = norm.fill_value
        if not (np.isfinite(cval) and np.isfinite(array.min()) and np.isfinite(array.max())):
            raise SegDeepError(
                f"the model card's intensity normalisation (clip {norm.clip_lo:g}..{norm.clip_hi:g}, "
                f"subtract {norm.subtract:g}, divide {norm.divide:g}) gives non-finite network input"
            )
    return _ModelInput(array, grid, features, float(cval), body)


def _run_network(
    network: torch.nn.Module,
    prepared: _ModelInput,
    plan: _Plan,
    opts: SegmentOptions,
    stages: _Stages,
    cancel: CancelToken | None,
) -> tuple[list[Any], RunConfig, list[str], int]:
    """Stage network: the sliding window (and TTA) on the model's grid; the class probabilities, the
    entropy and the TTA variance as channels. Frees the input array."""
    threads = torch.get_num_threads()
    if opts.num_threads is not None:
        torch.set_num_threads(max(1, int(opts.num_threads)))
    n_classes = plan.n_classes
    with stages("network"), _restore_threads(threads):
        network.eval()
        config = RunConfig(plan.device, plan.device, plan.batch_size, plan.dtype)
        extra_channels = 1 if len(plan.flips) > 1 else 0
        maps, final, fallbacks = _predict(
            network,
            prepared.array if prepared.body is None else prepared.body.crop(prepared.array),
            patch=plan.patch,
            overlap=opts.overlap,
            flips=plan.flips,
            config=config,
            cval=prepared.cval,
            progress=stages.callback("network"),
            cancel=cancel,
            channels=n_classes + extra_channels,
            lateral=lateral_swap(plan.orientation, [s.name for s in plan.segments]),
        )
        prepared.array = None
        maps = maps if prepared.body is None else prepared.body.paste(maps)
        n_bad = int((~torch.isfinite(torch.as_tensor(maps))).sum())
        if n_bad:
            raise SegDeepError(
                f"the network's output has {n_bad} non-finite values (NaN or infinity): the weights or the card's "
                "intensity normalisation are broken; no segmentation was made"
            )
        if maps.shape[0] != n_classes + extra_channels:
            raise SegDeepError(
                f"the network returned {maps.shape[0] - extra_channels} channels but the card lists "
                f"{len(plan.segments)} labels (+ background)"
            )
        channels = list(maps[:n_classes])
        if plan.need_entropy:
            channels.append(normalized_entropy(maps[:n_classes], axis=0))
            if opts.uncertainty and extra_channels:
                channels.append(maps[n_classes])
        del maps
    return channels, final, list(fallbacks), threads


def _back_to_ct_grid(
    channels: list[Any], prepared: _ModelInput, ct: Volume, plan: _Plan, opts: SegmentOptions, stages: _Stages
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None, str | dict[str, float]]:
    """Stage resample-back: the decision (argmax or thresholds) and the maps on the CT's grid."""
    segments = plan.segments
    threshold_array = None
    decision: str | dict[str, float] = "argmax"
    thresholds = opts.per_label("thresholds")
    if thresholds is not None:
        per = _per_label(thresholds, segments, 0.5, "thresholds")
        decision = {s.name: float(per[s.value]) for s in segments}
        if not all(0.0 <= t <= 1.0 for t in decision.values()):
            raise SegDeepError(f"probability thresholds must be in [0, 1], got {decision}")
        threshold_array = np.array(list(decision.values()), dtype=np.float32)
    with stages("resample-back"):
        labels, extras, probability_maps = _to_input_grid(
            channels,
            prepared.grid,
            ct,
            n_classes=plan.n_classes,
            lut=plan.lut,
            thresholds=threshold_array,
            want_probabilities=opts.return_probabilities,
            report_fraction=lambda f: stages.report("resample-back", f),
            box=None if prepared.body is None else prepared.body.box,
        )
        channels.clear()
    has_variance = opts.uncertainty and len(plan.flips) > 1
    entropy_map = extras[0] if plan.need_entropy else None
    variance_map = extras[1] if has_variance else None
    return labels, entropy_map, variance_map, probability_maps, decision


@dataclasses.dataclass(frozen=True)
class _Cleaned:
    largest: dict[int, bool]
    islands: dict[int, float]
    card_post: dict[str, Any]
    refine_options: RefineOptions
    refined_names: list[str]


def _clean_up_and_refine(labels: np.ndarray, ct: Volume, plan: _Plan, opts: SegmentOptions, stages: _Stages) -> _Cleaned:
    """Stages postprocess and refine, in place on ``labels``."""
    segments = plan.segments
    largest = _per_label(opts.per_label("keep_largest"), segments, False, "keep_largest")
    islands = _per_label(opts.per_label("min_island_mm3"), segments, 0.0, "min_island_mm3")
    # The model's own clean-up (card extra.postprocessing, chosen on validation data) is part of
    # the model, as nnU-Net's post-processing is; the caller's settings can only add to it.
    card_post = ((plan.card.extra or {}).get("postprocessing") or {}) if opts.model_postprocessing else {}
    card_islands = _per_label(card_post.get("min_island_mm3", 0.0), segments, 0.0, "the card's min_island_mm3")
    islands = {v: max(float(islands[v]), float(card_islands[v])) for v in islands}
    with stages("postprocess"):
        _clean_labels(labels, segments, largest, islands, ct.voxel_volume_mm3)
    refined_names: list[str] = []
    # The network's boundary is off by up to about one model voxel: grow at least that far.
    refine_options = opts.refine_options or RefineOptions(grow_mm=max(RefineOptions.grow_mm, *plan.spacing_model))
    if opts.refine:
        with stages("refine"):
            for s in _select_labels(opts.refine_labels, segments):
                mask = labels == s.value
                if not mask.any():
                    continue
                allowed = (labels == 0) | mask
                refined = refine_mask(ct, ct.with_array(mask), refine_options, allowed=allowed).array
                labels[mask & ~refined] = 0
                labels[refined] = s.value
                refined_names.append(s.name)
    return _Cleaned(largest, islands, card_post, refine_options, refined_names)


@dataclasses.dataclass(frozen=True)
class _Checked:
    labels: Volume
    probabilities: dict[str, Volume] | None
    uncertainty: Volume | None
    tta_variance: Volume | None
    summary: list[dict[str, Any]]
    plausibility: dict[str, Any]
    withheld: list[dict[str, Any]]


def _check_and_summarise(
    ct: Volume,
    labels: np.ndarray,
    entropy_map: np.ndarray | None,
    variance_map: np.ndarray | None,
    probability_maps: np.ndarray | None,
    prepared: _ModelInput,
    plan: _Plan,
    opts: SegmentOptions,
    stages: _Stages,
) -> _Checked:
    """Stage uncertainty, then the out-of-distribution check: a "mismatch" withholds the labels
    unless ``allow_mismatch``."""
    segments = plan.segments
    label_volume = ct.with_array(labels)
    uncertainty_volume = ct.with_array(entropy_map) if entropy_map is not None else None
    variance_volume = ct.with_array(variance_map) if variance_map is not None else None
    summary: list[dict[str, Any]] = []
    if uncertainty_volume is not None:
        with stages("uncertainty"):
            summary = summarize_uncertainty(
                label_volume,
                uncertainty_volume,
                segments,
                band_mm=opts.uncertainty_band_mm,
                threshold=opts.uncertainty_threshold,
                variance=variance_volume,
            )
    if summary:
        volumes_ml = {row["name"]: row["volume_mm3"] / 1000.0 for row in summary}
        entropy = {row["name"]: row["mean_entropy_inside"] for row in summary}
    else:
        values = structure_volumes_ml(labels, ct.voxel_volume_mm3, max(s.value for s in segments))
        volumes_ml = {s.name: values[s.value - 1] for s in segments}
        entropy = None
    plausibility = check_plausibility(
        prepared.features,
        volumes_ml,
        plan.reference.get("training"),
        mean_entropy_inside=entropy,
        entropy_reference=plan.reference.get("validation_entropy"),
    )
    withheld: list[dict[str, Any]] = []
    if plausibility.get("verdict") == "mismatch" and not opts.allow_mismatch:
        withheld = [
            {"name": s.name, "volume_ml": round(float(volumes_ml[s.name]), 3)} for s in segments if volumes_ml[s.name] > 0
        ]
        label_volume = label_volume.with_array(np.zeros_like(label_volume.array))
        probability_maps = None
    if not opts.uncertainty:  # computed for the out-of-distribution check only
        uncertainty_volume, summary = None, []
    probabilities = None
    if probability_maps is not None:
        probabilities = {s.name: ct.with_array(probability_maps[c]) for c, s in enumerate(segments)}
    return _Checked(label_volume, probabilities, uncertainty_volume, variance_volume, summary, plausibility, withheld)


def _record(
    ct: Volume,
    plan: _Plan,
    prepared: _ModelInput,
    opts: SegmentOptions,
    final: RunConfig,
    threads: int,
    decision: str | dict[str, float],
    cleaned: _Cleaned,
) -> dict[str, Any]:
    """The parameters of the run, as recorded in the result (and the sidecars and reports)."""
    card, segments = plan.card, plan.segments
    return {
        "model": {
            "name": card.name,
            "version": card.version,
            "architecture": card.architecture,
            "weights_sha256": card.weights_sha256 or "",
        },
        "model_orientation": plan.orientation,
        "model_spacing_ijk_mm": plan.spacing_model,
        "model_grid": prepared.grid.as_dict(),
        "input_orientation": orientation_code(ct.direction),
        "patch_size_kji": list(plan.patch),
        "overlap": float(opts.overlap),
        "blending": "gaussian (sigma_scale 0.125) of the class probabilities",
        "batch_size": final.batch_size,
        "requested_batch_size": plan.batch_size,
        "num_threads": int(opts.num_threads) if opts.num_threads else threads,
        "stitch_device": str(final.stitch_device),
        "tta": bool(opts.tta),
        "tta_flips_dhw": [list(a - 2 for a in f) for f in plan.flips] if opts.tta else [],
        "decision": decision,
        "keep_largest": {s.name: bool(cleaned.largest[s.value]) for s in segments},
        "min_island_mm3": {s.name: float(cleaned.islands[s.value]) for s in segments},
        "model_postprocessing": cleaned.card_post or False,
        "refine": {"labels": cleaned.refined_names, **cleaned.refine_options.as_dict()} if opts.refine else False,
        "antialias": bool(opts.antialias),
        "intensity": {
            "clip_hu": [plan.normalization.clip_lo, plan.normalization.clip_hi],
            "subtract": plan.normalization.subtract,
            "divide": plan.normalization.divide,
        },
        "uncertainty": {"band_mm": opts.uncertainty_band_mm, "threshold": opts.uncertainty_threshold}
        if opts.uncertainty
        else False,
        "allow_mismatch": bool(opts.allow_mismatch),
        "restrict_to_body": prepared.body.as_dict() if prepared.body is not None else False,
    }


def _axial_axis(orientation: str) -> int:
    """Array axis (0 = k) running inferior-superior on a grid with this orientation code."""
    for t, letter in enumerate(orientation.upper()):
        if letter in "IS":
            return 2 - t
    return 0


OUTPUT_FORMATS = ("seg.nrrd", "nii.gz", "rtstruct", "dicom-seg")
DICOM_OUTPUT_FORMATS = ("rtstruct", "dicom-seg")


def _output_format(path: Path, fmt: str | None) -> str:
    name = path.name.lower()
    if fmt is None:
        if name.endswith(".seg.nrrd"):
            return "seg.nrrd"
        if name.endswith((".nii.gz", ".nii")):
            return "nii.gz"
        raise SegDeepError(
            f"cannot tell the output format from {path.name}: name it .seg.nrrd or .nii.gz, or pass a format "
            f"({', '.join(OUTPUT_FORMATS)})"
        )
    fmt = fmt.lower().lstrip(".")
    if fmt not in OUTPUT_FORMATS:
        raise SegDeepError(f"unknown output format {fmt!r}: use one of {', '.join(OUTPUT_FORMATS)}")
    if fmt in DICOM_OUTPUT_FORMATS:
        if not name.endswith(".dcm"):
            raise SegDeepError(f"output {path.name} does not match the format {fmt!r}: name the DICOM file *.dcm")
        return fmt
    expected = ".seg.nrrd" if fmt == "seg.nrrd" else (".nii.gz", ".nii")
    if not name.endswith(expected):
        raise SegDeepError(f"output {path.name} does not match the format {fmt!r}")
    return fmt


def segment_file(
    ct_path: str | os.PathLike,
    output: str | os.PathLike,
    model: Any = None,
    options: SegmentOptions | Mapping[str, Any] | None = None,
    *,
    output_format: str | None = None,
    uncertainty_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    series_uid: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **changes: Any,
) -> tuple[SegmentationResult, list[Path]]:
    """Read a CT, segment it (:func:`segment_volume`) and write the label map.

    Parameters
    ----------
    ct_path : path-like
        CT file or DICOM folder.
    output : path-like
        ``.seg.nrrd`` (3D Slicer segmentation with the card's names and colours) or
        ``.nii.gz`` (label map with ``.labels.json`` / ``.labels.csv`` sidecars).
    model : ModelPackage, path or None
        As in :func:`segment_volume`.
    output_format : {"seg.nrrd", "nii.gz", "rtstruct", "dicom-seg"}, optional
        Checked against the file name; inferred from it by default. ``"rtstruct"`` (an RT
        Structure Set, :func:`SegDeepLogic.rtstruct.write_rtstruct`) and ``"dicom-seg"`` (a
        DICOM Segmentation, :func:`SegDeepLogic.dicom_seg.write_dicom_seg`) need the CT as a
        DICOM series folder, whose UIDs they reference, and a ``.dcm`` output name.
    uncertainty_path : path-like, optional
        Also write the uncertainty map (float32, .nii.gz/.nrrd/.mha) here.
    overwrite : bool
        Replace existing files (default: refuse before doing any work).
    options : SegmentOptions or dict, optional
        The options of :func:`segment_volume`. With ``allow_mismatch`` the result is written even
        when the out-of-distribution check says "mismatch" (the CT is not the anatomy the model
        knows); without it (the default, as on the command line) :class:`MismatchError` names the
        reasons and the withheld structures and nothing is written, so a batch never stores
        output the check calls meaningless.
    series_uid : str, optional
        With a DICOM folder: the Series Instance UID to segment (default: the largest series).
    **changes
        Single options by name (e.g. ``refine=True``, ``allow_mismatch=True``) on top of ``options``.

    Returns
    -------
    result, written paths
        Nothing is written when the run fails or is cancelled (files appear atomically, and
        only after the whole segmentation succeeded).

    Examples
    --------
    >>> result, paths = segment_file(  # doctest: +SKIP
    ...     "Resources/SampleData/openkbp_pt_236/ct.nii.gz", "ct.seg.nrrd", "Testing/Data/test_model", refine=True
    ... )
    >>> [p.name for p in paths], result.timings_s["network"] > 0  # doctest: +SKIP
    (['ct.seg.nrrd'], True)
    """
    opts = options_from(options, **changes)
    output = Path(output)
    fmt = _output_format(output, output_format)

    targets = [output] + ([Path(uncertainty_path)] if uncertainty_path else [])
    if fmt == "nii.gz":
        targets += list(sidecar_paths(output).values())
    if not overwrite:
        existing = [str(p) for p in targets if p.exists()]
        if existing:
            raise FileExistsError(f"refusing to overwrite existing file(s): {', '.join(existing)} (use overwrite)")
    # Before any work: no output may be the CT or another output, a folder or a special file.
    check_outputs({f"output {n}": t for n, t in enumerate(targets)}, inputs={"CT": Path(ct_path)}, overwrite=overwrite)
    if uncertainty_path is not None and not opts.uncertainty:
        raise SegDeepError("an uncertainty file was requested with uncertainty=False")
    timings: dict[str, float] = {}
    stages = _Stages(progress, cancel, timings)
    ct_reference = None
    if fmt in DICOM_OUTPUT_FORMATS and not Path(ct_path).is_dir():
        raise SegDeepError(
            f"the {fmt} output references the CT's DICOM series: give the CT as a DICOM series folder, not {Path(ct_path).name}"
        )
    with stages("read"):
        if fmt in DICOM_OUTPUT_FORMATS:
            ct, ct_reference = read_dicom_series(ct_path, series_uid)
            validate_volume(ct, name=str(ct_path))
            check_hounsfield(ct, name=str(ct_path), strict=True)  # as read_volume(check_hu=True)
        else:
            ct = read_volume(ct_path, check_hu=True, series_uid=series_uid)
    result = segment_volume(ct, model, opts, progress=progress, cancel=cancel, _timings=timings)
    del ct
    if (result.plausibility or {}).get("verdict") == "mismatch" and not opts.allow_mismatch:
        raise MismatchError(
            f"nothing written: {mismatch_message(result.plausibility, result.withheld, Path(ct_path).name)} "
            "Pass --allow-mismatch (allow_mismatch=True) to write the segmentation anyway.",
            result,
        )
    report(progress, _PROGRESS["write"][0], "write", cancel)  # last chance to cancel: nothing written yet

    start = time.perf_counter()
    written: list[Path] = []
    with atomic_outputs():  # the label map, its sidecars and the uncertainty map appear together or not at all
        if fmt == "seg.nrrd":
            written.append(write_seg_nrrd(result.labels, result.segments, output, overwrite=overwrite))
        elif fmt in DICOM_OUTPUT_FORMATS:
            segmentation = Segmentation(result.labels, result.segments)
            algorithm = Algorithm.from_parameters(result.parameters)
            if fmt == "rtstruct":
                written.append(write_rtstruct(segmentation, ct_reference, output, algorithm=algorithm, overwrite=overwrite))
            else:
                written.append(write_dicom_seg(segmentation, ct_reference, output, algorithm=algorithm, overwrite=overwrite))
        else:
            written.extend(write_labelmap_nifti(result.labels, result.segments, output, overwrite=overwrite).values())
        if uncertainty_path is not None and result.uncertainty is not None:
            written.append(write_volume(result.uncertainty, uncertainty_path, overwrite=overwrite))
    timings["write"] = time.perf_counter() - start
    result.timings_s = {stage: timings.get(stage, 0.0) for stage in _STAGES}
    report(progress, 1.0, "done")
    return result, written
