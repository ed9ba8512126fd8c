"""Patch sampling and data augmentation on the CPU (numpy/scipy, one patch at a time).

* :func:`class_locations` / :func:`sample_center` -- foreground oversampling: a fraction of the
  patches is centred on a random voxel of a random *available* structure present in the case,
  so small structures (oesophagus, larynx) are seen often.
* :func:`extract_patch` -- a patch around a centre, optionally rotated and scaled (in mm, so
  anisotropic voxels are handled), CT linear and labels nearest-neighbour.
* :func:`flip_left_right` -- mirror along the patient's left-right axis **and swap the lateral
  labels** (``parotid_left`` <-> ``parotid_right``) and their availability. A mirror without
  the swap would teach the network that left and right are interchangeable; this is the only
  mirroring the training uses.
* :func:`augment_intensity` -- intensity scale/shift, Gaussian noise, blur (lower resolution).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from .._compat import zip_strict

__all__ = [
    "augment_intensity",
    "class_locations",
    "extract_patch",
    "flip_left_right",
    "lateral_pairs",
    "random_rotation_scale",
    "sample_center",
]


def lateral_pairs(structures: Sequence[str]) -> list[tuple[int, int]]:
    """Label values (1-based) of ``*_left``/``*_right`` structure pairs.

    Examples
    --------
    >>> lateral_pairs(["mandible", "parotid_left", "parotid_right"])
    [(2, 3)]
    """
    values = {name: c for c, name in enumerate(structures, start=1)}
    pairs = []
    for name, c in values.items():
        for a, b in (("_left", "_right"), ("left_", "right_")):
            if a in name:
                other = name.replace(a, b)
                if other in values:
                    pairs.append((c, values[other]))
    return pairs


def flip_left_right(
    image: np.ndarray,
    labels: np.ndarray,
    available: np.ndarray,
    pairs: Sequence[tuple[int, int]],
    axis: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mirror a patch along the left-right array ``axis`` and swap the lateral labels.

    Parameters
    ----------
    image, labels : ndarray
        Patch arrays ``[..., k, j, i]``; ``axis`` counts from the spatial axes (2 = i, which
        is left-right in the LPI orientation the models use).
    available : ndarray of bool, shape (C,)
        Label availability; swapped with the labels.
    pairs : sequence of (int, int)
        Label values to swap (:func:`lateral_pairs`).

    Returns
    -------
    image, labels, available (new arrays).

    Examples
    --------
    >>> lab = np.array([[[1, 0, 2]]], np.uint8)
    >>> img = np.array([[[5.0, 6.0, 7.0]]])
    >>> _, out, av = flip_left_right(img, lab, np.array([True, True, False]), [(1, 2)])
    >>> out.tolist(), av.tolist()
    ([[[1, 0, 2]]], [True, False, True])
    """
    ax = labels.ndim - 3 + axis
    image = np.flip(image, axis=image.ndim - 3 + axis).copy()
    labels = np.flip(labels, axis=ax).copy()
    available = available.copy()
    lut = np.arange(max(256, len(available)), dtype=labels.dtype)
    for a, b in pairs:
        lut[a], lut[b] = b, a
        available[a], available[b] = available[b], available[a]
    return image, lut[labels], available


def class_locations(labels: np.ndarray, n_classes: int, rng: np.random.Generator, max_per_class: int = 4000) -> list[np.ndarray]:
    """Up to ``max_per_class`` random voxel indices ``(k, j, i)`` of each class 1..n_classes-1.

    Index 0 of the result is an empty array (background is never oversampled).
    """
    out = [np.zeros((0, 3), np.int32)]
    flat = labels.ravel()
    for c in range(1, n_classes):
        idx = np.flatnonzero(flat == c)
        if idx.size > max_per_class:
            idx = rng.choice(idx, max_per_class, replace=False)
        out.append(np.stack(np.unravel_index(idx, labels.shape), axis=1).astype(np.int32))
    return out


def sample_center(
    shape: Sequence[int],
    locations: list[np.ndarray],
    available: np.ndarray,
    rng: np.random.Generator,
    foreground_fraction: float,
) -> np.ndarray:
    """A patch centre: with probability ``foreground_fraction`` on a random voxel of a random
    available class present in the case, otherwise uniformly in the volume."""
    if rng.random() < foreground_fraction:
        candidates = [c for c in range(1, len(locations)) if available[c] and len(locations[c])]
        if candidates:
            c = candidates[int(rng.integers(len(candidates)))]
            return locations[c][int(rng.integers(len(locations[c])))].astype(float)
    return np.array([rng.uniform(0, n - 1) for n in shape])


def _rotation(angles_rad: Sequence[float]) -> np.ndarray:
    """Rotation about the k, j, i axes (array order), composed."""
    mats = []
    for axis, a in enumerate(angles_rad):
        c, s = np.cos(a), np.sin(a)
        m = np.eye(3)
        p, q = [x for x in range(3) if x != axis]
        m[p, p], m[p, q], m[q, p], m[q, q] = c, -s, s, c
        mats.append(m)
    return mats[0] @ mats[1] @ mats[2]


def random_rotation_scale(
    rng: np.random.Generator,
    max_angle_deg: Sequence[float] = (15.0, 8.0, 8.0),
    scale_range: tuple[float, float] = (0.85, 1.15),
) -> np.ndarray:
    """A random 3x3 matrix (array axis order, acting on mm offsets): rotation times scale.

    ``max_angle_deg`` bounds the rotation about the k (axial plane), j and i axes.
    """
    angles = [np.deg2rad(rng.uniform(-a, a)) for a in max_angle_deg]
    return _rotation(angles) * rng.uniform(*scale_range)


def extract_patch(
    image: np.ndarray,
    labels: np.ndarray,
    center_kji: np.ndarray,
    patch_size: Sequence[int],
    spacing_kji: Sequence[float],
    transform: np.ndarray | None = None,
    *,
    cval: float = -1024.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a ``patch_size`` patch centred on ``center_kji`` (float32 image, uint8 labels).

    With ``transform`` (3x3, mm offsets, array order) the patch samples the volume at
    ``center + transform @ offset``: a matrix with scale s > 1 zooms out (the patch covers
    more anatomy). Outside the volume the image is ``cval`` and the labels 0.
    """
    size = np.asarray(patch_size, int)
    if transform is None:
        start = np.round(center_kji - (size - 1) / 2).astype(int)
        img = np.full(tuple(size), cval, np.float32)
        lab = np.zeros(tuple(size), np.uint8)
        src, dst = [], []
        for a in range(3):
            lo, hi = max(start[a], 0), min(start[a] + size[a], image.shape[a])
            if hi <= lo:
                return img, lab
            src.append(slice(lo, hi))
            dst.append(slice(lo - start[a], hi - start[a]))
        img[tuple(dst)] = image[tuple(src)]
        lab[tuple(dst)] = labels[tuple(src)]
        return img, lab
    spacing = np.asarray(spacing_kji, float)
    grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in size], indexing="ij"), axis=0).reshape(3, -1)
    mm = transform @ (grid * spacing[:, None])
    coords = mm / spacing[:, None] + np.asarray(center_kji, float)[:, None]
    # Crop the source to the sampled box first: map_coordinates then touches little memory.
    lo = np.maximum(np.floor(coords.min(axis=1)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(coords.max(axis=1)).astype(int) + 2, image.shape)
    if np.any(hi <= lo):
        return np.full(tuple(size), cval, np.float32), np.zeros(tuple(size), np.uint8)
    box = tuple(slice(a, b) for a, b in zip_strict(lo, hi))
    local = coords - lo[:, None]
    img = ndi.map_coordinates(image[box].astype(np.float32), local, order=1, mode="constant", cval=cval)
    lab = ndi.map_coordinates(labels[box], local, order=0, mode="constant", cval=0)
    return img.reshape(tuple(size)).astype(np.float32), lab.reshape(tuple(size)).astype(np.uint8)


def augment_intensity(
    x: np.ndarray,
    rng: np.random.Generator,
    *,
    p_scale: float = 0.3,
    p_noise: float = 0.15,
    p_blur: float = 0.15,
) -> np.ndarray:
    """Intensity augmentation of a normalised patch: scale/shift, Gaussian noise, blur.

    The blur (sigma 0.5-1.25 voxels) imitates thicker slices / smoother reconstruction kernels.
    """
    if rng.random() < p_scale:
        x = x * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
    if rng.random() < p_blur:
        x = ndi.gaussian_filter(x, sigma=rng.uniform(0.5, 1.25))
    if rng.random() < p_noise:
        x = x + rng.normal(0.0, rng.uniform(0.0, 0.1), size=x.shape).astype(np.float32)
    return x.astype(np.float32, copy=False)
