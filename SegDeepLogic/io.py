"""Reading and writing volumes with their geometry (SimpleITK underneath).

Reads NRRD, NIfTI, MHA/MHD and DICOM series folders; writes NRRD and NIfTI (and MHA). Files
are written atomically: a reader never sees a half-written file under the final name.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from .errors import VolumeError, VolumeReadError, WriteError
from .filecheck import check_image_file, check_voxel_limit
from .volume import Volume

READ_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
WRITE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")


class HounsfieldWarning(UserWarning):
    """The intensities do not look like CT Hounsfield units."""


class NotHounsfieldError(VolumeError):
    """The image cannot be a CT in Hounsfield units (no value as low as fat or air): a raw scanner
    image without its rescale intercept, or an MR image."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".seg.nrrd", ".nii.gz"):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def from_sitk(image: sitk.Image) -> Volume:
    """Convert a SimpleITK image to a :class:`Volume` (geometry copied, LPS)."""
    if image.GetDimension() != 3:
        raise VolumeError(f"expected a 3D image, got a {image.GetDimension()}D image of size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(
            f"expected a single-component (scalar) image, got {image.GetNumberOfComponentsPerPixel()} components "
            "per voxel (RGB or vector image); convert it to a scalar CT volume first"
        )
    array = sitk.GetArrayFromImage(image)
    return Volume(array, image.GetSpacing(), image.GetOrigin(), np.array(image.GetDirection()).reshape(3, 3))


def to_sitk(volume: Volume) -> sitk.Image:
    """Convert a :class:`Volume` to a SimpleITK image with the same geometry."""
    array = volume.array
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(tuple(volume.direction.ravel()))
    return image


def validate_volume(volume: Volume, *, name: str = "volume") -> Volume:
    """Reject volumes no segmentation can work on; return ``volume`` unchanged otherwise.

    Raises :class:`VolumeError` for empty or single-voxel volumes, a 2D image stored as a 3D
    volume with one slice, and non-finite values.
    """
    shape = volume.shape_ijk
    if volume.array.size == 0:
        raise VolumeError(f"{name} is empty (size {shape})")
    if volume.array.size == 1:
        raise VolumeError(f"{name} has a single voxel (size {shape}); a 3D volume is required")
    if sum(n > 1 for n in shape) < 3:
        raise VolumeError(
            f"{name} is not a 3D volume: size {shape} voxels (i, j, k) has fewer than 3 axes longer than 1 (a 2D image?)"
        )
    if np.issubdtype(volume.array.dtype, np.floating) and not np.all(np.isfinite(volume.array)):
        n_bad = int(np.count_nonzero(~np.isfinite(volume.array)))
        raise VolumeError(f"{name} contains {n_bad} non-finite voxel values (NaN or infinity)")
    if not (np.issubdtype(volume.array.dtype, np.number) or volume.array.dtype == bool):
        raise VolumeError(f"{name} has a non-numeric voxel type {volume.array.dtype}")
    return volume


def check_hounsfield(volume: Volume, *, name: str = "volume", strict: bool = False) -> bool:
    """Warn (:class:`HounsfieldWarning`) when intensities do not look like CT Hounsfield units.

    A CT in HU has air near -1000 (outside the body, in the airways) and no values far below
    -1024. Returns True when the intensities look like HU. With ``strict``, an image with no
    value below -200 (neither air nor fat) -- which cannot be a CT in HU: a raw uint16 image whose
    rescale intercept was not applied (air near 0) or an MR image -- raises
    :class:`NotHounsfieldError` with its range instead (what ``segdeep threshold`` and
    ``segment`` use).
    """
    a = volume.array
    lo_all = float(a.min())
    if lo_all > -200 and strict:
        raise NotHounsfieldError(
            f"{name} is not a CT in Hounsfield units: its values run from {lo_all:g} to {float(a.max()):g} ({a.dtype}), "
            "with nothing below -200 HU (no air, no fat). Is it a raw scanner image without its rescale intercept "
            "(HU = stored value x slope + intercept, usually -1024), or an MR image? Convert it to HU first"
            " (or pass --allow-non-hu to threshold it as it is)"
        )
    sample = a[:: max(1, a.shape[0] // 64), :: max(1, a.shape[1] // 128), :: max(1, a.shape[2] // 128)].astype(np.float32)
    lo, hi = float(sample.min()), float(sample.max())
    air_fraction = float(np.mean((sample > -1100) & (sample < -850)))
    problems = []
    if lo < -1100 - 1e-3 and lo > -3100:
        pass  # padding values such as -2000 or -3024 are common outside the scan circle
    elif lo < -3100:
        problems.append(f"minimum {lo:.0f} is far below air (-1000 HU)")
    if air_fraction < 0.001:
        problems.append(f"no air peak near -1000 HU (only {100 * air_fraction:.2f}% of voxels in [-1100, -850])")
    if hi - lo < 500:
        problems.append(f"intensity range {lo:.0f}..{hi:.0f} is too narrow for CT")
    if problems:
        warnings.warn(
            f"{name} does not look like a CT in Hounsfield units: {'; '.join(problems)}. "
            "HU thresholds and the network assume calibrated HU; check the rescale slope/intercept.",
            HounsfieldWarning,
            stacklevel=2,
        )
        return False
    return True


def read_volume(path: str | os.PathLike, *, check_hu: bool = False, allow_non_hu: bool = False) -> Volume:
    """Read a 3D scalar image file (NRRD, NIfTI, MHA/MHD) or a DICOM series folder.

    Parameters
    ----------
    path : path-like
        Image file, or a folder holding one DICOM series (the largest is taken if several).
    check_hu : bool, optional
        Also warn (:class:`HounsfieldWarning`) if the values do not look like Hounsfield units,
        and refuse (:class:`NotHounsfieldError`) an image with no value below -200 (see
        :func:`check_hounsfield`) unless ``allow_non_hu``.
    allow_non_hu : bool, optional
        Accept an image that cannot be HU (with ``check_hu``; only a warning then).

    Raises
    ------
    VolumeReadError
        Missing, unreadable, truncated or corrupt file; untrustworthy DICOM slice positions.
    ImageSizeError
        The header declares more voxels than ``SEGDEEP_MAX_VOXELS``.
    VolumeError
        Non-finite values, zero voxel size, not a 3D scalar image.

    Returns
    -------
    Volume
        The voxel array with spacing, origin and direction in LPS millimetres.

    Examples
    --------
    >>> vol = read_volume("Resources/SampleData/openkbp_pt_236/ct.nii.gz")  # doctest: +SKIP
    >>> vol.shape_ijk  # doctest: +SKIP
    (128, 128, 128)
    """
    path = Path(path)
    if not path.exists():
        raise VolumeReadError(f"no such file or folder: {path}")
    if path.is_dir():
        image = _read_dicom_folder(path)
    else:
        facts = check_image_file(path)  # header vs data, size limit, finite values: before any allocation
        try:
            reader = sitk.ImageFileReader()
            reader.SetImageIO(facts.imageio)
            reader.SetFileName(str(path))
            image = reader.Execute()
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
            raise VolumeReadError(
                f"cannot read {path} as an image (supported: {', '.join(READ_SUFFIXES)}, DICOM folder): {first}"
            ) from exc
    volume = validate_volume(from_sitk(image), name=str(path))
    if check_hu:
        check_hounsfield(volume, name=str(path), strict=not allow_non_hu)
    return volume


class DicomSeriesWarning(UserWarning):
    """A DICOM folder holds several series; the largest was read."""


def _dicom_slice_positions(files: Sequence[str], folder: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Each file's position along the slice normal (mm) and the slice size, from the headers only."""
    positions = []
    normal = None
    size = (0, 0)
    for name in files:
        r = sitk.ImageFileReader()
        r.SetImageIO("GDCMImageIO")
        r.SetFileName(name)
        try:
            r.ReadImageInformation()
            if normal is None:
                size = tuple(int(n) for n in r.GetSize()[:2])
            ipp = [float(x) for x in r.GetMetaData("0020|0032").replace("\\", " ").split()]
            if normal is None:
                iop = [float(x) for x in r.GetMetaData("0020|0037").replace("\\", " ").split()]
                normal = np.cross(iop[:3], iop[3:6])
        except (RuntimeError, ValueError, IndexError):
            return np.array([]), size  # no usable position tags: SimpleITK's own ordering and spacing stand
        positions.append(float(np.dot(ipp[:3], normal)))
    return np.array(positions), size


def check_slice_positions(positions: Sequence[float], where: str, *, rtol: float = 0.05, atol_mm: float = 0.01) -> None:
    """Raise :class:`VolumeError` unless slice positions are distinct and evenly spaced.

    A series whose slices are all at one position has no slice spacing; a missing slice (or
    mixed spacings) would make every distance and volume wrong, since a volume has one spacing.

    Examples
    --------
    >>> check_slice_positions([0.0, 2.5, 5.0, 7.5], "series")
    >>> check_slice_positions([0.0, 2.5, 7.5, 10.0], "series")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    SegDeepLogic.errors.VolumeError: series: non-uniform slice spacing: gaps of 2.5 to 5 mm ...
    """
    z = np.sort(np.asarray(positions, dtype=float))
    if z.size < 2:
        return
    gaps = np.diff(z)
    if float(z[-1] - z[0]) < atol_mm:
        raise VolumeError(
            f"{where}: all {z.size} slices are at one position ({z[0]:.3f} mm along the slice normal); the slice spacing is "
            "unknown, so no distance or volume could be trusted"
        )
    if np.any(gaps < atol_mm):
        k = int(np.argmax(gaps < atol_mm))
        raise VolumeError(f"{where}: two slices are at the same position ({z[k]:.3f} mm); duplicated or mixed series?")
    median = float(np.median(gaps))
    bad = np.abs(gaps - median) > max(atol_mm, rtol * median)
    if np.any(bad):
        k = int(np.argmax(bad))
        raise VolumeError(
            f"{where}: non-uniform slice spacing: gaps of {gaps.min():.4g} to {gaps.max():.4g} mm (median {median:.4g}); "
            f"the gap between {z[k]:.3f} and {z[k + 1]:.3f} mm is {gaps[k]:.4g} mm -- a missing slice? A volume has one "
            "spacing, so every distance and volume would be wrong"
        )


def _read_dicom_folder(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise VolumeReadError(f"folder {folder} holds no DICOM series")
    candidates = sorted(((reader.GetGDCMSeriesFileNames(str(folder), s), s) for s in series), key=lambda fs: -len(fs[0]))
    files, uid = candidates[0]
    if len(candidates) > 1:
        others = ", ".join(f"{s} ({len(f)} files)" for f, s in candidates[1:])
        warnings.warn(
            f"{folder} holds {len(candidates)} DICOM series; reading the largest, {uid} ({len(files)} files), and "
            f"ignoring {others}. Put one series per folder to choose another.",
            DicomSeriesWarning,
            stacklevel=3,
        )
    positions, size = _dicom_slice_positions(files, folder)
    check_voxel_limit(folder, (*size, len(files)), np.dtype(np.int16))
    check_slice_positions(positions, f"DICOM series in {folder}")
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise VolumeReadError(f"cannot read the DICOM series in {folder}: {str(exc).strip().splitlines()[-1]}") from exc


def write_volume(volume: Volume, path: str | os.PathLike, *, compress: bool = True, overwrite: bool = True) -> Path:
    """Write ``volume`` atomically as NRRD, NIfTI (.nii/.nii.gz) or MHA, keeping its geometry.

    Boolean masks are written as uint8. Returns the final path.
    """
    path = Path(path)
    if _suffix(path) not in WRITE_SUFFIXES:
        raise VolumeError(f"cannot write {path.name}: use one of {', '.join(WRITE_SUFFIXES)}")
    image = to_sitk(volume)
    with atomic_path(path, overwrite=overwrite, verify=lambda tmp: verify_image_file(tmp, image)) as tmp:
        write_image(image, tmp, compress=compress)
    return path


def write_image(image: sitk.Image, path: str | os.PathLike, *, compress: bool = True) -> None:
    """``sitk.WriteImage`` with its errors as :class:`WriteError` (use inside :func:`atomic_path` with
    ``verify=lambda tmp: verify_image_file(tmp, image)``: SimpleITK does not report a short write)."""
    try:
        sitk.WriteImage(image, str(path), useCompression=compress)
    except RuntimeError as exc:
        raise WriteError(f"writing {path} failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}") from exc


def verify_image_file(path: str | os.PathLike, expected: sitk.Image) -> None:
    """Read a just-written image back and raise :class:`WriteError` unless it holds exactly ``expected``.

    SimpleITK ignores write errors (a full disk, a file size limit) and leaves a short file;
    reading it back through :func:`~SegDeepLogic.filecheck.check_image_file` catches that.
    """
    path = Path(path)
    try:
        facts = check_image_file(path)
        reader = sitk.ImageFileReader()
        reader.SetImageIO(facts.imageio)
        reader.SetFileName(str(path))
        back = reader.Execute()
    except (VolumeReadError, VolumeError, RuntimeError) as exc:
        raise WriteError(f"the file just written does not read back intact ({exc}); disk full or a file size limit?") from exc
    same = (
        back.GetSize() == expected.GetSize()
        and np.allclose(back.GetSpacing(), expected.GetSpacing(), rtol=1e-6, atol=1e-6)
        and np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(expected), equal_nan=True)
    )
    if not same:
        raise WriteError(f"the file just written does not hold the data that was written ({path.name})")
