"""Volumes carry their geometry through conversions, files and resampling; bad input is refused."""

from __future__ import annotations

import locale
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SegDeepLogic import Volume, VolumeError, VolumeReadError, read_volume, write_volume
from SegDeepLogic.errors import GeometryMismatchError
from SegDeepLogic.io import HounsfieldWarning, check_hounsfield, from_sitk, to_sitk
from SegDeepLogic.resample import resample_to_grid, resample_to_spacing
from SegDeepLogic.volume import lps_to_ras

SAMPLE = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "openkbp_pt_236"


def rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * k @ k


@pytest.fixture
def oblique_volume() -> Volume:
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 2000, size=(7, 9, 11)).astype(np.int16)
    direction = rotation([1, 2, 3], 0.4) @ np.diag([1, -1, 1])  # rotation and a reflection
    return Volume(array, spacing=(0.7, 1.1, 2.5), origin=(-12.5, 30.0, 101.25), direction=direction)


def test_index_to_physical_matches_simpleitk(oblique_volume: Volume) -> None:
    image = to_sitk(oblique_volume)
    for ijk in [(0, 0, 0), (10, 8, 6), (3, 1, 4)]:
        expected = image.TransformIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(oblique_volume.index_to_physical(ijk), expected, atol=1e-9)
    cont = (2.5, 0.25, 5.75)
    np.testing.assert_allclose(
        oblique_volume.index_to_physical(cont), image.TransformContinuousIndexToPhysicalPoint(cont), atol=1e-9
    )


def test_physical_to_index_inverts_index_to_physical_in_lps_and_ras(oblique_volume: Volume) -> None:
    ijk = np.array([[0, 0, 0], [10.5, 8, 6], [3, 1.25, 4]])
    for space in ("LPS", "RAS"):
        pts = oblique_volume.index_to_physical(ijk, space=space)
        np.testing.assert_allclose(oblique_volume.physical_to_index(pts, space=space), ijk, atol=1e-9)
    np.testing.assert_allclose(
        oblique_volume.index_to_physical(ijk, space="RAS"), lps_to_ras(oblique_volume.index_to_physical(ijk)), atol=1e-12
    )


def test_array_index_order_is_kji(oblique_volume: Volume) -> None:
    image = to_sitk(oblique_volume)
    assert image.GetSize() == oblique_volume.shape_ijk == (11, 9, 7)
    assert image.GetPixel(10, 8, 6) == oblique_volume.array[6, 8, 10]
    assert oblique_volume.spacing_kji == (2.5, 1.1, 0.7)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".nii", ".mha"])
def test_file_round_trip_keeps_values_and_geometry(tmp_path: Path, oblique_volume: Volume, suffix: str) -> None:
    path = write_volume(oblique_volume, tmp_path / f"ct{suffix}")
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, oblique_volume.array)
    np.testing.assert_allclose(back.spacing, oblique_volume.spacing, atol=1e-5)
    np.testing.assert_allclose(back.origin, oblique_volume.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, oblique_volume.direction, atol=1e-5)
    assert back.same_grid(oblique_volume)
    assert [p.name for p in tmp_path.iterdir()] == [f"ct{suffix}"]  # no temporary files left


def test_nifti_written_by_us_has_lps_geometry_as_itk_reads_it(tmp_path: Path, oblique_volume: Volume) -> None:
    path = write_volume(oblique_volume, tmp_path / "ct.nii.gz")
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(
        image.TransformIndexToPhysicalPoint((10, 8, 6)), oblique_volume.index_to_physical((10, 8, 6)), atol=1e-3
    )


def test_write_refuses_to_overwrite_when_asked_and_keeps_the_old_file(tmp_path: Path, oblique_volume: Volume) -> None:
    path = write_volume(oblique_volume, tmp_path / "ct.nrrd")
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        write_volume(oblique_volume.with_array(oblique_volume.array * 0), path, overwrite=False)
    assert path.read_bytes() == before


def test_failed_write_leaves_no_file(tmp_path: Path, oblique_volume: Volume) -> None:
    with pytest.raises(VolumeError, match="cannot write"):
        write_volume(oblique_volume, tmp_path / "ct.png")
    assert list(tmp_path.iterdir()) == []


def test_dicom_series_folder_is_read_with_its_geometry(tmp_path: Path) -> None:
    array = (np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5) * 10) - 1000
    vol = Volume(array, spacing=(0.8, 0.8, 2.0), origin=(-20.0, 15.0, 40.0))
    image = to_sitk(vol)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    saved_locale = locale.setlocale(locale.LC_ALL)  # GDCM's writer switches the process to the "C" locale
    try:
        for k in range(image.GetDepth()):
            sl = image[:, :, k]
            sl.SetMetaData("0008|0060", "CT")
            sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.1")
            sl.SetMetaData("0020|000d", "1.2.826.0.1.3680043.2.1125.1.2")
            sl.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
            sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
            sl.SetMetaData("0020|0013", str(k + 1))
            sl.SetMetaData("0028|0030", "0.8\\0.8")
            sl.SetMetaData("0018|0050", "2.0")
            writer.SetFileName(str(tmp_path / f"slice{k:03d}.dcm"))
            writer.Execute(sl)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)  # later tests decode subprocess output with it
    back = read_volume(tmp_path)
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-4)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)


def test_real_ct_sample_reads_with_openkbp_geometry() -> None:
    ct = read_volume(SAMPLE / "ct.nii.gz", check_hu=True)
    assert ct.shape_ijk == (128, 128, 128)
    np.testing.assert_allclose(ct.spacing, (3.906, 3.906, 3.0), atol=1e-3)
    np.testing.assert_allclose(ct.direction, np.diag([1.0, 1.0, -1.0]))  # slices run superior to inferior
    lo, hi = ct.bounds()
    np.testing.assert_allclose(hi - lo, [127 * 3.906, 127 * 3.906, 127 * 3.0], atol=0.1)


# --- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((0, 4, 4)), "empty"),
        (np.zeros((1, 1, 1)), "single voxel"),
        (np.zeros((1, 8, 8)), "2D image"),
        (np.array([[[0.0, np.nan], [1, 2]], [[0, 1], [1, 2]]]), "non-finite"),
    ],
)
def test_unusable_arrays_are_rejected_with_a_specific_message(tmp_path: Path, array: np.ndarray, message: str) -> None:
    image = sitk.GetImageFromArray(array) if array.size else None
    if image is None:
        from SegDeepLogic.io import validate_volume

        with pytest.raises(VolumeError, match=message):
            validate_volume(Volume(array, spacing=(1, 1, 1)))
        return
    sitk.WriteImage(image, str(tmp_path / "bad.nrrd"))
    with pytest.raises(VolumeError, match=message):
        read_volume(tmp_path / "bad.nrrd")


def test_2d_file_is_rejected(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkInt16), str(tmp_path / "slice.nrrd"))
    with pytest.raises(VolumeError, match="3D"):
        read_volume(tmp_path / "slice.nrrd")


def test_multi_component_image_is_rejected(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3), str(tmp_path / "rgb.nrrd"))
    with pytest.raises(VolumeError, match="components"):
        read_volume(tmp_path / "rgb.nrrd")


@pytest.mark.parametrize("spacing", [(1.0, 0.0, 1.0), (1.0, -2.0, 1.0), (1.0, np.inf, 1.0)])
def test_zero_or_negative_spacing_is_rejected(spacing: tuple[float, float, float]) -> None:
    with pytest.raises(VolumeError, match="spacing"):
        Volume(np.zeros((4, 4, 4)), spacing=spacing)


def test_missing_and_unreadable_files_raise_read_errors(tmp_path: Path) -> None:
    with pytest.raises(VolumeReadError, match="no such file"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(VolumeReadError, match="cannot read"):
        read_volume(tmp_path / "junk.nii.gz")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(VolumeReadError, match="no DICOM series"):
        read_volume(tmp_path / "empty_dir")


def test_non_hounsfield_intensities_warn_and_real_ct_does_not() -> None:
    mri_like = Volume(np.random.default_rng(1).uniform(0, 400, (16, 16, 16)).astype(np.float32), spacing=(1, 1, 1))
    with pytest.warns(HounsfieldWarning, match="air peak"):
        assert not check_hounsfield(mri_like)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_hounsfield(read_volume(SAMPLE / "ct.nii.gz"))


def test_non_orthonormal_direction_is_rejected() -> None:
    with pytest.raises(VolumeError, match="orthonormal"):
        Volume(np.zeros((4, 4, 4)), spacing=(1, 1, 1), direction=np.diag([1.0, 2.0, 1.0]))


# --- resampling ------------------------------------------------------------------------------
def test_resampling_to_new_spacing_keeps_physical_positions() -> None:
    # A bright voxel block at a known physical place stays there after resampling.
    array = np.zeros((20, 30, 40), np.float32)
    array[8:12, 10:20, 20:30] = 100.0
    vol = Volume(array, spacing=(1.0, 1.0, 2.0), origin=(5.0, -3.0, 10.0), direction=rotation([0, 0, 1], 0.3))
    out = resample_to_spacing(vol, (0.5, 0.5, 1.0))
    assert out.shape_ijk == (80, 60, 40)
    np.testing.assert_allclose(out.origin, vol.origin)
    np.testing.assert_allclose(out.direction, vol.direction)

    def centroid(v: Volume) -> np.ndarray:
        kji = np.argwhere(v.array > 50).mean(axis=0)
        return v.index_to_physical(kji[::-1])

    np.testing.assert_allclose(centroid(out), centroid(vol), atol=0.6)


def test_nearest_resampling_keeps_labels_and_dtype() -> None:
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:5, 2:5, 2:5] = 3
    vol = Volume(labels, spacing=(2, 2, 2))
    out = resample_to_spacing(vol, (1, 1, 1), interpolation="nearest")
    assert out.array.dtype == np.uint8
    assert set(np.unique(out.array)) == {0, 3}


def test_resample_to_grid_of_the_same_grid_is_identity(oblique_volume: Volume) -> None:
    out = resample_to_grid(oblique_volume, oblique_volume, interpolation="nearest")
    np.testing.assert_array_equal(out.array, oblique_volume.array)
    assert out.same_grid(oblique_volume)


def test_grid_mismatch_names_the_differing_property(oblique_volume: Volume) -> None:
    other = Volume(oblique_volume.array, oblique_volume.spacing, (0.0, 0.0, 0.0), oblique_volume.direction)
    with pytest.raises(GeometryMismatchError, match="origin"):
        oblique_volume.require_same_grid(other)


def test_from_sitk_keeps_geometry_of_real_image() -> None:
    image = sitk.ReadImage(str(SAMPLE / "mandible.nii.gz"))
    vol = from_sitk(image)
    assert vol.array.sum() > 0
    np.testing.assert_allclose(vol.index_to_physical((5, 6, 7)), image.TransformIndexToPhysicalPoint((5, 6, 7)))
