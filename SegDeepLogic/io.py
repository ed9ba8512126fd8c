"""Reading and writing volumes with their geometry (SimpleITK underneath).

Reads NRRD, NIfTI, MHA/MHD and DICOM series folders; writes NRRD and NIfTI (and MHA). Files
are written atomically: a reader never sees a half-written file under the final name.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from .errors import VolumeError, VolumeReadError, WriteError
from .filecheck import check_image_file
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


def read_volume(
    path: str | os.PathLike, *, check_hu: bool = False, allow_non_hu: bool = False, series_uid: str | None = None
) -> Volume:
    """Read a 3D scalar image file (NRRD, NIfTI, MHA/MHD) or a DICOM series folder.

    Parameters
    ----------
    path : path-like
        Image file, or a folder of DICOM files (read with
        :func:`~SegDeepLogic.dicom_series.read_dicom_series`: the series ``series_uid``, else the
        largest readable image series, with a warning naming the others; gantry-tilted,
        irregularly spaced or mixed series are refused with the reason).
    check_hu : bool, optional
        Also warn (:class:`HounsfieldWarning`) if the values do not look like Hounsfield units,
        and refuse (:class:`NotHounsfieldError`) an image with no value below -200 (see
        :func:`check_hounsfield`) unless ``allow_non_hu``.
    allow_non_hu : bool, optional
        Accept an image that cannot be HU (with ``check_hu``; only a warning then).
    series_uid : str, optional
        Series Instance UID to read from a DICOM folder (``segdeep dicom-info`` lists them).

    Raises
    ------
    VolumeReadError
        Missing, unreadable, truncated or corrupt file; a DICOM series that is not a regular grid
        (:class:`~SegDeepLogic.dicom_series.DicomSeriesError`: slices at one position, a missing
        slice, gantry tilt, ...).
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
    if series_uid is not None and not path.is_dir():
        raise VolumeReadError(f"a series UID was given but {path} is not a DICOM folder")
    if path.is_dir():
        from .dicom_series import read_dicom_series

        volume = validate_volume(read_dicom_series(path, series_uid)[0], name=str(path))
        if check_hu:
            check_hounsfield(volume, name=str(path), strict=not allow_non_hu)
        return volume
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
