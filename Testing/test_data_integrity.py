"""Data integrity under hostile input and faults (issue 17): never a wrong number, never a damaged file.

The whole matrix: every case is a real file on disk fed to the ``segdeep`` command line (or the
reader), asserting the exit code, the one-line message, that no file was created or changed, and
-- for the memory bombs -- that a subprocess under an address-space cap (RLIMIT_AS) refuses the
file with the project's message instead of running out of memory. A property test truncates and
corrupts real files at random offsets: the reader returns the identical volume or raises the
project's error, never different numbers.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import locale
import os
import pickle
import resource
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from SegDeepLogic import atomic
from SegDeepLogic.cli import main
from SegDeepLogic.errors import OutputError, SegDeepError, WriteError
from SegDeepLogic.io import read_volume
from SegDeepLogic.segmentation_io import SegmentInfo, read_seg_nrrd, write_seg_nrrd
from SegDeepLogic.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "Resources" / "SampleData" / "openkbp_pt_236"
TEST_MODEL = ROOT / "Testing" / "Data" / "test_model"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def small_ct() -> np.ndarray:
    """A 24 x 28 x 32 CT in HU: air, fat, soft tissue and a bone block (k, j, i)."""
    a = np.full((24, 28, 32), -1000, np.int16)
    a[3:21, 4:24, 4:28] = 40
    a[3:21, 4:8, 4:28] = -100
    a[8:16, 10:18, 10:22] = 1200
    return a


def write_ct(path: Path, array: np.ndarray | None = None, spacing=(1.0, 1.0, 1.5), compress: bool = True) -> Path:
    image = sitk.GetImageFromArray(small_ct() if array is None else array)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -20.0, 30.0))
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (hidden ones too) with its type, size and content hash."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st_ = os.lstat(p)
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st_.st_mode) else None
        out[str(p.relative_to(folder))] = (stat.S_IFMT(st_.st_mode), st_.st_size, digest)
    return out


def cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    """Run ``segdeep ARGS`` in-process; return (exit code, stderr)."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err


def run_capped(code: str, *, cap_mib: int, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run Python ``code`` in a subprocess whose address space is capped at ``cap_mib`` MiB."""
    cap = cap_mib << 20

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        timeout=timeout,
        cwd=ROOT,
    )


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert lines, "no message"
    assert "Traceback" not in err, err
    message = lines[-1]
    for needle in needles:
        assert needle in message, message


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    write_ct(folder / "ct.nii.gz")
    return folder


@pytest.fixture
def seg(work: Path) -> Path:
    labels = (small_ct() > 300).astype(np.uint8)
    vol = Volume(labels, (1.0, 1.0, 1.5), (10.0, -20.0, 30.0))
    return write_seg_nrrd(vol, [SegmentInfo("bone", 1)], work / "bone.seg.nrrd")


# --------------------------------------------------------------------------------------------
# (1) Reads: the data must match the header
# --------------------------------------------------------------------------------------------
def _nifti_bytes(array: np.ndarray, *, pixdim=(1.0, 1.0, 1.5)) -> bytes:
    """A minimal single-file NIfTI-1 (uncompressed bytes) written by hand, so that any field can be set."""
    header = bytearray(352)
    dtype = {np.dtype(np.int16): (4, 16), np.dtype(np.float32): (16, 32), np.dtype(np.float64): (64, 64)}[array.dtype]
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, array.shape[2], array.shape[1], array.shape[0], 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, *dtype)
    struct.pack_into("<8f", header, 76, 1.0, *pixdim, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<f", header, 112, 1.0)
    struct.pack_into("<h", header, 254, 1)  # sform_code: scanner
    struct.pack_into("<12f", header, 280, *pixdim[:1], 0, 0, 0, 0, pixdim[1], 0, 0, 0, 0, pixdim[2], 0)
    header[252:254] = struct.pack("<h", 0)
    header[344:348] = b"n+1\0"
    return bytes(header) + array.astype(array.dtype.newbyteorder("<")).tobytes()


def bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """Broken CT files and the message their refusal must contain."""
    ct = folder / "ct.nii.gz"
    data = ct.read_bytes()
    cases: dict[str, tuple[Path, str]] = {}
    (folder / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    cases["truncated .nii.gz"] = (folder / "truncated.nii.gz", "truncated")
    cut = bytearray(data)
    cut[len(cut) // 2] ^= 0xFF
    (folder / "corrupt.nii.gz").write_bytes(bytes(cut))
    cases["corrupt .nii.gz"] = (folder / "corrupt.nii.gz", "corrupt")
    raw = _nifti_bytes(small_ct())
    (folder / "truncated.nii").write_bytes(raw[: len(raw) - 100])
    cases["truncated .nii"] = (folder / "truncated.nii", "truncated")
    nan = small_ct().astype(np.float32)
    nan[5, 5, 5] = np.nan
    (folder / "nan.nii.gz").write_bytes(gzip.compress(_nifti_bytes(nan)))
    cases["NaN in .nii.gz"] = (folder / "nan.nii.gz", "1 non-finite")
    inf = small_ct().astype(np.float64)
    inf[1, 2, 3] = np.inf
    inf[2, 2, 3] = -np.inf
    (folder / "inf.nii").write_bytes(_nifti_bytes(inf))
    cases["Inf in .nii"] = (folder / "inf.nii", "2 non-finite")
    (folder / "pixdim0.nii.gz").write_bytes(gzip.compress(_nifti_bytes(small_ct(), pixdim=(1.0, 1.0, 0.0))))
    cases["NIfTI pixdim[3]=0"] = (folder / "pixdim0.nii.gz", "pixdim[3] = 0.0")
    for suffix in (".nrrd", ".mha"):
        image = sitk.GetImageFromArray(nan)
        sitk.WriteImage(image, str(folder / f"nan{suffix}"), useCompression=True)
        cases[f"NaN in {suffix}"] = (folder / f"nan{suffix}", "non-finite")
        sitk.WriteImage(sitk.GetImageFromArray(small_ct()), str(folder / f"full{suffix}"), useCompression=True)
        whole = (folder / f"full{suffix}").read_bytes()
        (folder / f"truncated{suffix}").write_bytes(whole[: len(whole) - 40])
        cases[f"truncated {suffix}"] = (folder / f"truncated{suffix}", "cannot read")
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "truncated .nii.gz",
        "corrupt .nii.gz",
        "truncated .nii",
        "NaN in .nii.gz",
        "Inf in .nii",
        "NIfTI pixdim[3]=0",
        "NaN in .nrrd",
        "NaN in .mha",
        "truncated .nrrd",
        "truncated .mha",
    ],
)
@pytest.mark.parametrize("command", ["threshold", "compare"])
def test_broken_image_is_refused_by_every_command_and_nothing_is_written(
    work: Path, seg: Path, capsys: pytest.CaptureFixture, case: str, command: str
) -> None:
    path, needle = bad_inputs(work)[case]
    before = snapshot(work)
    if command == "threshold":
        rc, err = cli(capsys, "threshold", path, "-o", work / "out.seg.nrrd", "--json", work / "s.json", "--no-progress")
    else:
        rc, err = cli(capsys, "compare", path, seg, "-o", work / "m.json", "--no-progress")
    assert rc == 1
    assert_one_line_error(err, needle)
    assert snapshot(work) == before


def test_intact_sample_ct_still_reads_and_thresholds_to_the_same_volume(tmp_path: Path, capsys) -> None:
    vol = read_volume(SAMPLE / "ct.nii.gz")
    assert vol.shape_ijk == (128, 128, 128)
    rc, err = cli(capsys, "threshold", SAMPLE / "ct.nii.gz", "-o", tmp_path / "b.seg.nrrd", "--no-progress")
    assert rc == 0 and "1274.6 mL" in err


def test_truncated_sample_ct_gives_no_volume_at_all(tmp_path: Path, capsys) -> None:
    """The issue's reproduction: head -c 233637 of the sample used to give 768.7 mL of bone and exit 0."""
    cut = tmp_path / "t.nii.gz"
    cut.write_bytes((SAMPLE / "ct.nii.gz").read_bytes()[:233637])
    rc, err = cli(capsys, "threshold", cut, "-o", tmp_path / "t.seg.nrrd", "--no-progress")
    assert rc == 1
    assert_one_line_error(err, "truncated", "of 4194304 bytes")
    assert not (tmp_path / "t.seg.nrrd").exists()


def test_truncated_seg_nrrd_and_label_map_are_refused(work: Path, seg: Path, capsys) -> None:
    data = seg.read_bytes()
    (work / "cut.seg.nrrd").write_bytes(data[:-30])
    before = snapshot(work)
    rc, err = cli(capsys, "export", work / "cut.seg.nrrd", "-o", work / "meshes", "--report", work / "r.json", "--no-progress")
    assert rc == 1
    assert_one_line_error(err, "cut.seg.nrrd")
    assert snapshot(work) == before


# --- memory bombs: refused before allocation, in a subprocess under RLIMIT_AS -------------------------
def _nifti_claiming(path: Path, size: tuple[int, int, int]) -> Path:
    header = bytearray(_nifti_bytes(np.zeros((2, 2, 2), np.int16))[:352])
    struct.pack_into("<8h", header, 40, 3, *size, 1, 1, 1, 1)
    path.write_bytes(gzip.compress(bytes(header) + bytes(200_000)))
    return path


READ = "from SegDeepLogic.io import read_volume; from SegDeepLogic.segmentation_io import read_seg_nrrd\n"


def _read_capped(path: Path, reader: str = "read_volume", env: dict | None = None) -> subprocess.CompletedProcess:
    return run_capped(
        READ
        + f"""
        try:
            {reader}({str(path)!r})
        except Exception as exc:
            print(type(exc).__name__, exc)
        else:
            print("READ OK")
        """.replace("\n        ", "\n"),
        cap_mib=768,
        env=env,
    )


def test_nifti_header_claiming_1024_cubed_is_refused_with_the_limit_before_allocating(tmp_path: Path) -> None:
    bomb = _nifti_claiming(tmp_path / "bomb.nii.gz", (1024, 1024, 1024))
    assert bomb.stat().st_size < 300_000
    r = _read_capped(bomb)
    assert "ImageSizeError" in r.stdout and "1073741824 voxels" in r.stdout and "SEGDEEP_MAX_VOXELS" in r.stdout, r


def test_raised_limit_still_refuses_the_short_bomb_with_bounded_memory(tmp_path: Path) -> None:
    bomb = _nifti_claiming(tmp_path / "bomb.nii.gz", (1024, 1024, 1024))
    r = _read_capped(bomb, env={"SEGDEEP_MAX_VOXELS": str(2**31)})
    assert "VolumeReadError" in r.stdout and "truncated" in r.stdout, r


def test_nrrd_header_declaring_1024_cubed_is_refused_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "big.nrrd"
    path.write_bytes(
        b"NRRD0004\ntype: short\ndimension: 3\nsizes: 1024 1024 1024\nspace: left-posterior-superior\n"
        b"space directions: (1,0,0) (0,1,0) (0,0,1)\nencoding: raw\n\n" + bytes(1000)
    )
    r = _read_capped(path)
    assert "ImageSizeError" in r.stdout and "1024 x 1024 x 1024" in r.stdout, r


@pytest.fixture(scope="module")
def gzip_bomb(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """1 GiB of zeros as 64 concatenated gzip members of 16 MiB (valid gzip; about 1 MB on disk)."""
    member = gzip.compress(bytes(16 << 20), compresslevel=9)
    return member * 64


def test_seg_nrrd_gzip_bomb_is_refused_with_bounded_memory(tmp_path: Path, gzip_bomb: bytes, capsys) -> None:
    header = (
        b"NRRD0004\ntype: unsigned char\ndimension: 3\nsizes: 64 64 64\nspace: left-posterior-superior\n"
        b"space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\nkinds: domain domain domain\nencoding: gzip\n\n"
    )
    bomb = tmp_path / "bomb.seg.nrrd"
    bomb.write_bytes(header + gzip_bomb)
    r = _read_capped(bomb, "read_seg_nrrd")
    assert "SegmentationFileError" in r.stdout and "inflates to more than the 262144 bytes" in r.stdout, r
    claiming = tmp_path / "claiming.seg.nrrd"
    claiming.write_bytes(header.replace(b"64 64 64", b"1024 1024 1024") + gzip_bomb)
    r = _read_capped(claiming, "read_seg_nrrd")
    assert "ImageSizeError" in r.stdout and "1073741824 voxels" in r.stdout, r
    before = snapshot(tmp_path)
    rc, err = cli(capsys, "export", bomb, "-o", tmp_path / "m", "--report", tmp_path / "r.json", "--no-progress")
    assert rc == 1 and snapshot(tmp_path) == before
    assert_one_line_error(err, "decompression bomb")


def test_cli_refuses_a_bomb_under_a_memory_cap_with_the_limit_message(tmp_path: Path) -> None:
    bomb = _nifti_claiming(tmp_path / "bomb.nii.gz", (1024, 1024, 1024))
    r = run_capped(
        f"import sys; from SegDeepLogic.cli import main; sys.exit(main(['threshold', {str(bomb)!r}, '-o', "
        f"{str(tmp_path / 'o.seg.nrrd')!r}, '--no-progress']))",
        cap_mib=2048,
    )
    assert r.returncode == 1, r.stderr
    assert "over the limit of 536870912 voxels" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.seg.nrrd").exists()


def test_huge_model_card_is_refused_before_it_is_read(tmp_path: Path, work: Path, capsys) -> None:
    model = tmp_path / "model"
    shutil.copytree(TEST_MODEL, model)
    with open(model / "model.json", "r+b") as f:
        f.truncate(3 << 30)  # a 3 GiB sparse file: reading it whole would need 3 GiB
    r = run_capped(
        f"from SegDeepLogic.model_card import load_model_card\ntry:\n    load_model_card({str(model)!r})\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)",
        cap_mib=2048,  # torch is imported (about 1.5 GiB of address space); the card alone would need 3 GiB
    )
    assert "ModelPackageError" in r.stdout and "3221225472 bytes" in r.stdout, r


# --- geometry that cannot be trusted ------------------------------------------------------------
def write_dicom_series(folder: Path, positions_mm: list[float], *, series_uid: str = "1.2.826.0.1.3680043.2.1125.1", array=None):
    folder.mkdir(parents=True, exist_ok=True)
    slices = small_ct() if array is None else array
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    saved_locale = locale.setlocale(locale.LC_ALL)  # GDCM's writer switches the process to the "C" locale
    try:
        _write_slices(writer, folder, slices, positions_mm, series_uid)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)
    return folder


def _write_slices(writer: sitk.ImageFileWriter, folder: Path, slices: np.ndarray, positions_mm, series_uid: str) -> None:
    for n, z in enumerate(positions_mm):
        image = sitk.GetImageFromArray(slices[n % slices.shape[0]][None])
        image.SetSpacing((1.0, 1.0, 1.0))
        for tag, value in {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.9",
            "0020|000e": series_uid,
            "0020|0013": str(n + 1),
            "0020|0032": f"0\\0\\{z}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0008|0018": f"{series_uid}.{n + 1}",
            "0028|1052": "0",
            "0028|1053": "1",
        }.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid[-3:]}_{n:03d}.dcm"))
        writer.Execute(image)


@pytest.mark.parametrize(
    ("positions", "needle"),
    [
        ([5.0] * 8, "all 8 slices are at one position"),
        ([0.0, 2.0, 4.0, 6.0, 10.0, 12.0, 14.0], "a missing slice"),
        ([0.0, 2.0, 2.0, 4.0, 6.0], "same position"),
    ],
)
def test_dicom_series_with_untrustworthy_slice_positions_is_refused(tmp_path: Path, positions, needle, capsys) -> None:
    folder = write_dicom_series(tmp_path / "dicom", positions)
    rc, err = cli(capsys, "threshold", folder, "-o", tmp_path / "o.seg.nrrd", "--no-progress")
    assert rc == 1
    assert_one_line_error(err, needle)
    assert not (tmp_path / "o.seg.nrrd").exists()


def test_dicom_folder_with_two_series_reads_the_larger_and_says_so(tmp_path: Path, capsys) -> None:
    folder = write_dicom_series(tmp_path / "dicom", [2.0 * n for n in range(12)], series_uid="1.2.826.0.1.3680043.2.1125.111")
    write_dicom_series(folder, [2.0 * n for n in range(5)], series_uid="1.2.826.0.1.3680043.2.1125.222")
    rc, err = cli(capsys, "threshold", folder, "-o", tmp_path / "o.seg.nrrd", "--no-progress")
    assert rc == 0
    assert "holds 2 image series" in err and "12 slices" in err and "5 file(s)" in err
    assert read_seg_nrrd(tmp_path / "o.seg.nrrd").labelmap.shape_ijk[2] == 12


def test_uniform_dicom_series_reads_with_its_slice_spacing(tmp_path: Path) -> None:
    folder = write_dicom_series(tmp_path / "dicom", [2.5 * n for n in range(10)])
    assert read_volume(folder).spacing[2] == pytest.approx(2.5)


def test_raw_uint16_ct_without_rescale_is_refused_with_its_range(work: Path, capsys) -> None:
    raw = (small_ct().astype(np.int32) + 1024).astype(np.uint16)  # stored values: air near 24, no intercept applied
    write_ct(work / "raw.nrrd", raw)
    before = snapshot(work)
    rc, err = cli(capsys, "threshold", work / "raw.nrrd", "-o", work / "o.seg.nrrd", "--no-progress")
    assert rc == 1 and snapshot(work) == before
    assert_one_line_error(err, "not a CT in Hounsfield units", "from 24 to 2224", "rescale intercept")
    rc, err = cli(capsys, "threshold", work / "raw.nrrd", "-o", work / "o.seg.nrrd", "--allow-non-hu", "--no-progress")
    assert rc == 0


@pytest.mark.skipif(not (TEST_MODEL / "model.json").is_file(), reason="test model package not built")
def test_mr_like_image_is_refused_by_segment(work: Path, capsys) -> None:
    mr = np.clip(small_ct().astype(np.int32) + 1000, 0, None).astype(np.int16)  # 0..2200, no negatives
    write_ct(work / "mr.nii.gz", mr)
    before = snapshot(work)
    rc, err = cli(capsys, "segment", work / "mr.nii.gz", "-o", work / "o.seg.nrrd", "--model", TEST_MODEL, "--no-progress")
    assert rc == 1 and snapshot(work) == before
    assert_one_line_error(err, "not a CT in Hounsfield units")


# --------------------------------------------------------------------------------------------
# (2) Writes: verified, atomic, never into special files
# --------------------------------------------------------------------------------------------
def _run_with_file_size_limit(args: list[str], limit_bytes: int, cwd: Path) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        [sys.executable, "-m", "SegDeepLogic.cli", *args], preexec_fn=limit, capture_output=True, text=True, env=ENV, cwd=cwd
    )


@pytest.mark.parametrize("output", ["o.nii.gz", "o.seg.nrrd", "o.nrrd"])
def test_write_cut_short_by_a_file_size_limit_leaves_no_file(tmp_path: Path, output: str) -> None:
    """(ulimit -f 8; segdeep threshold CT -o o.nii.gz) used to leave an 8 KB broken file and exit 0."""
    shutil.copy(SAMPLE / "ct.nii.gz", tmp_path / "ct.nii.gz")
    before = snapshot(tmp_path)
    if output == "o.nrrd":  # a plain volume file: the uncertainty writer (SimpleITK) of segment; here via the API
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))\n"
                "from SegDeepLogic.io import read_volume, write_volume\nfrom SegDeepLogic.errors import WriteError\n"
                "v = read_volume('ct.nii.gz')\ntry:\n    write_volume(v, 'o.nrrd', compress=False)\n"
                "except WriteError as e:\n    print('WriteError', e)",
            ],
            capture_output=True,
            text=True,
            env=ENV,
            cwd=tmp_path,
        )
        assert "WriteError" in r.stdout, r
    else:
        r = _run_with_file_size_limit(["threshold", "ct.nii.gz", "-o", output, "--no-progress"], 8192, tmp_path)
        assert r.returncode == 1, r.stderr
        assert_one_line_error(r.stderr, "nothing was written" if output.endswith(".seg.nrrd") else "does not read back")
    assert snapshot(tmp_path) == before


def test_metrics_file_cut_short_leaves_the_old_one(work: Path, seg: Path) -> None:
    (work / "m.json").write_text("old metrics")
    before = snapshot(work)
    r = _run_with_file_size_limit(
        ["compare", "bone.seg.nrrd", "bone.seg.nrrd", "-o", "m.json", "--overwrite", "--no-progress"], 100, work
    )
    assert r.returncode == 1, r.stderr
    assert_one_line_error(r.stderr, "File too large")
    assert snapshot(work) == before


@pytest.mark.parametrize(
    "args",
    [
        ["threshold", "ct.nii.gz", "-o", "SPECIAL", "--overwrite"],
        ["threshold", "ct.nii.gz", "-o", "o.seg.nrrd", "--json", "SPECIAL", "--overwrite"],
        ["compare", "bone.seg.nrrd", "bone.seg.nrrd", "-o", "SPECIAL", "--overwrite"],
        ["export", "bone.seg.nrrd", "-o", "meshes", "--report", "SPECIAL", "--overwrite"],
    ],
)
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_special_file_output_is_never_replaced(work: Path, seg: Path, capsys, args: list[str], kind: str) -> None:
    special = work / (
        "special.seg.nrrd" if "-o" == args[args.index("SPECIAL") - 1] and args[0] == "threshold" else "special.json"
    )
    if kind == "fifo":
        os.mkfifo(special)
    elif IS_ROOT:
        os.mknod(special, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of our own
    else:
        pytest.skip("creating a device node needs root")
    before = snapshot(work)
    rc, err = cli(capsys, *[str(work / a) if a.endswith((".gz", ".nrrd", "meshes")) else a for a in args[:1]],
                  *[str(special) if a == "SPECIAL" else (str(work / a) if a.endswith((".gz", ".nrrd", "meshes")) else a) for a in args[1:]],
                  "--no-progress")  # fmt: skip
    assert rc == 1
    assert_one_line_error(err, "not a regular file")
    assert snapshot(work) == before


def test_atomic_path_refuses_special_files_and_folders(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    for target in ("fifo", "folder"):
        with pytest.raises(OutputError), atomic.atomic_path(tmp_path / target) as tmp:
            tmp.write_text("x")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder"]


def test_verify_failure_and_empty_writes_leave_nothing(tmp_path: Path) -> None:
    def broken(path: Path) -> None:
        raise WriteError("short")

    with pytest.raises(WriteError), atomic.atomic_path(tmp_path / "a.txt", verify=broken) as tmp:
        tmp.write_text("x")
    with pytest.raises(WriteError, match="empty"), atomic.atomic_path(tmp_path / "b.txt") as tmp:
        tmp.write_text("")
    with pytest.raises(WriteError, match="no file"), atomic.atomic_path(tmp_path / "c.txt") as tmp:
        tmp.unlink()
    assert list(tmp_path.iterdir()) == []


def test_atomic_outputs_put_all_files_in_place_or_none_and_restore_replaced_ones(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("old a")
    with pytest.raises(RuntimeError):
        with atomic.atomic_outputs():
            atomic.write_text(tmp_path / "a.txt", "new a")
            atomic.write_text(tmp_path / "b.txt", "new b")
            raise RuntimeError("the third output failed")
    assert snapshot(tmp_path) == {"a.txt": (stat.S_IFREG, 5, hashlib.sha256(b"old a").hexdigest())}
    (tmp_path / "c.txt").mkdir()  # the rename onto c.txt fails at commit: a and b must be rolled back
    with pytest.raises(OutputError):
        with atomic.atomic_outputs():
            atomic.write_text(tmp_path / "a.txt", "new a")
            atomic.write_text(tmp_path / "b.txt", "new b")
            with atomic.atomic_path(tmp_path / "c.txt") as tmp:
                tmp.write_text("c")
    assert (tmp_path / "a.txt").read_text() == "old a" and not (tmp_path / "b.txt").exists()
    with atomic.atomic_outputs():
        atomic.write_text(tmp_path / "a.txt", "new a")
        atomic.write_text(tmp_path / "b.txt", "new b")
        assert (tmp_path / "a.txt").read_text() == "old a"  # nothing is visible before the group ends
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "new b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "c.txt"]


def test_umask_is_read_without_ever_being_set_to_zero(tmp_path: Path) -> None:
    """atomic._umask() used to set umask 0 for an instant: a file made by another thread then was world-writable."""
    old = os.umask(0o027)
    try:
        stop = threading.Event()
        modes: list[int] = []

        def make_files() -> None:
            n = 0
            while not stop.is_set():
                p = tmp_path / f"f{n}"
                p.touch()
                modes.append(p.stat().st_mode & 0o777)
                n += 1

        thread = threading.Thread(target=make_files)
        thread.start()
        for _ in range(3000):
            assert atomic._umask() == 0o027
        stop.set()
        thread.join()
        assert modes and all(m & 0o027 == 0 for m in modes)
        with atomic.atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("x")
        assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


# --------------------------------------------------------------------------------------------
# (3) Every output checked before any work
# --------------------------------------------------------------------------------------------
OUTPUT_CASES = {
    "threshold -o the input CT": (["threshold", "ct.nii.gz", "-o", "ct.nii.gz", "--overwrite"], "is the input CT"),
    "threshold --json the -o file": (["threshold", "ct.nii.gz", "-o", "o.nii.gz", "--json", "o.nii.gz"], "is also -o"),
    "threshold --json exists": (["threshold", "ct.nii.gz", "-o", "o.seg.nrrd", "--json", "exists.json"], "exists.json exists"),
    "threshold -o a folder": (["threshold", "ct.nii.gz", "-o", "folder"], "is a folder"),
    "threshold -o bad suffix": (["threshold", "ct.nii.gz", "-o", "o.txt"], "use a .seg.nrrd"),
    "threshold -o sidecar of input": (["threshold", "ct.nii.gz", "-o", "ct.seg.nrrd", "--json", "ct.labels.json"], "is the input"),
    "compare -o exists": (["compare", "bone.seg.nrrd", "bone.seg.nrrd", "-o", "exists.json"], "exists.json exists"),
    "compare -o the input": (["compare", "bone.seg.nrrd", "ct.nii.gz", "-o", "bone.seg.nrrd", "--overwrite"], "is the input A"),
    "compare --disagreement bad": (["compare", "bone.seg.nrrd", "bone.seg.nrrd", "-o", "m.json", "--disagreement", "d.txt"], "d.txt"),
    "compare --disagreement exists": (["compare", "bone.seg.nrrd", "bone.seg.nrrd", "-o", "m.json", "--disagreement", "old.seg.nrrd"], "old.seg.nrrd exists"),
    "compare -o = --disagreement": (["compare", "bone.seg.nrrd", "bone.seg.nrrd", "-o", "d.seg.nrrd", "--disagreement", "d.seg.nrrd"], "is also -o"),
    "export --report exists": (["export", "bone.seg.nrrd", "-o", "meshes", "--report", "exists.json"], "exists.json exists"),
    "export -o an existing file": (["export", "bone.seg.nrrd", "-o", "exists.json", "--overwrite"], "is not a folder"),
    "export --report the input": (["export", "bone.seg.nrrd", "-o", "meshes", "--report", "bone.seg.nrrd", "--overwrite"], "is the input"),
    "over-long output name": (["threshold", "ct.nii.gz", "-o", "x" * 300 + ".seg.nrrd"], "longer than the file system allows"),
    "output under a file": (["threshold", "ct.nii.gz", "-o", "exists.json/o.seg.nrrd"], "is a file, not a folder"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_bad_outputs_are_refused_before_any_work_and_nothing_changes(work: Path, seg: Path, capsys, case: str) -> None:
    args, needle = OUTPUT_CASES[case]
    (work / "exists.json").write_text("{}")
    (work / "folder").mkdir()
    (work / "old.seg.nrrd").write_bytes(seg.read_bytes())
    before = snapshot(work)
    rc, err = cli(
        capsys,
        *[str(work / a) if ("." in a or a in ("folder", "meshes")) and not a.startswith("-") else a for a in args],
        "--no-progress",
    )
    assert rc == 1
    assert_one_line_error(err, needle)
    assert snapshot(work) == before


@pytest.mark.skipif(IS_ROOT, reason="root may write into any folder")
def test_unwritable_output_folder_is_refused_before_work(work: Path, capsys) -> None:
    locked = work / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        rc, err = cli(capsys, "threshold", work / "ct.nii.gz", "-o", locked / "o.seg.nrrd", "--no-progress")
    finally:
        locked.chmod(0o700)
    assert rc == 1
    assert_one_line_error(err, "not writable")


def test_read_only_file_system_error_is_one_line(work: Path, capsys) -> None:
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")
    rc, err = cli(capsys, "threshold", work / "ct.nii.gz", "-o", "/proc/self/segdeep.seg.nrrd", "--no-progress")
    assert rc == 1
    assert_one_line_error(err, "segdeep threshold: error:")


@pytest.mark.skipif(not (TEST_MODEL / "model.json").is_file(), reason="test model package not built")
@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--uncertainty", "u.txt"], "--uncertainty"),
        (["--uncertainty", "o.seg.nrrd"], "is also -o"),
        (["--json", "exists.json"], "exists.json exists"),
        (["--json", "ct.nii.gz", "--overwrite"], "is the input CT"),
    ],
)
def test_segment_outputs_are_all_checked_before_the_network_runs(work: Path, capsys, extra, needle) -> None:
    (work / "exists.json").write_text("{}")
    before = snapshot(work)
    args = [str(work / a) if "." in a and not a.startswith("-") else a for a in extra]
    rc, err = cli(capsys, "segment", work / "ct.nii.gz", "-o", work / "o.seg.nrrd", "--model", TEST_MODEL, *args, "--no-progress")
    assert rc == 1
    assert_one_line_error(err, needle)
    assert snapshot(work) == before


@pytest.mark.skipif(not (TEST_MODEL / "model.json").is_file(), reason="test model package not built")
def test_segment_writes_label_map_sidecars_uncertainty_and_json_together(work: Path, capsys) -> None:
    rc, err = cli(
        capsys, "segment", work / "ct.nii.gz", "-o", work / "o.nii.gz", "--model", TEST_MODEL,
        "--uncertainty", work / "u.nii.gz", "--json", work / "s.json", "--no-progress",
    )  # fmt: skip
    assert rc == 0, err
    names = sorted(p.name for p in work.iterdir())
    assert names == ["ct.nii.gz", "o.labels.csv", "o.labels.json", "o.nii.gz", "s.json", "u.nii.gz"]
    assert json.loads((work / "s.json").read_text())["output"]


# --------------------------------------------------------------------------------------------
# (4) Temporary files
# --------------------------------------------------------------------------------------------
def test_stale_temporaries_of_killed_runs_are_removed_by_the_next_run(work: Path, capsys) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = atomic.HOST_TAG
    stale = work / f".o.{host}-{dead.pid}.abcd1234.segdeep-tmp.seg.nrrd"
    stale.write_bytes(b"x" * 1000)
    stale_dir = work / f".model.{host}-{dead.pid}.zz.segdeep-tmp-partial"
    stale_dir.mkdir()
    mine = work / f".o.{host}-{os.getpid()}.live.segdeep-tmp.seg.nrrd"  # a live process's temporary stays
    mine.write_bytes(b"y")
    remote = work / f".o.{'0' * 6 if host != '0' * 6 else '1' * 6}-{dead.pid}.xy.segdeep-tmp.seg.nrrd"
    remote.write_bytes(b"another machine may still be writing this")
    old_remote = work / f".o.{'0' * 6 if host != '0' * 6 else '1' * 6}-{dead.pid}.old.segdeep-tmp.seg.nrrd"
    old_remote.write_bytes(b"left two days ago")
    os.utime(old_remote, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    other = work / ".hidden-user-file"
    other.write_bytes(b"z")
    rc, _ = cli(capsys, "threshold", work / "ct.nii.gz", "-o", work / "o.seg.nrrd", "--no-progress")
    assert rc == 0
    assert not stale.exists() and not stale_dir.exists() and mine.exists() and other.exists()
    assert remote.exists() and not old_remote.exists()


def test_killed_export_leaves_only_a_temporary_that_the_next_run_removes(work: Path, seg: Path, capsys) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from SegDeepLogic import atomic
        with atomic.atomic_path({str(work / "meshes" / "bone.stl")!r}) as tmp:
            tmp.write_bytes(b"partial mesh" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    r = subprocess.run([sys.executable, "-c", script], env=ENV, cwd=ROOT)
    assert r.returncode == -9
    leftovers = [p.name for p in (work / "meshes").iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".bone.") and "segdeep-tmp" in leftovers[0]
    rc, err = cli(capsys, "export", seg, "-o", work / "meshes", "--report", work / "r.json", "--no-progress")
    assert rc == 0, err
    assert sorted(p.name for p in (work / "meshes").iterdir()) == ["bone.stl"]


def test_worker_removes_its_folder_when_its_parent_dies(tmp_path: Path) -> None:
    workdir = tmp_path / "SegDeep-worker"
    workdir.mkdir()
    (workdir / "input.nrrd").write_bytes(b"patient CT copy")
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ext = ROOT / "SegDeepExtension"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys, time; sys.path[:0] = [{str(ext)!r}, {str(ROOT)!r}]\n"
            "from pathlib import Path\nfrom SegDeepLib.worker import watch_parent\n"
            f"watch_parent({parent.pid}, Path({str(workdir)!r}), interval_s=0.05)\ntime.sleep(60)",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    assert worker.poll() is None and workdir.exists()
    parent.kill()
    parent.wait()
    assert worker.wait(timeout=30) == 4
    assert not workdir.exists()
    assert "is gone" in worker.stderr.read()


def test_stale_worker_folders_of_a_dead_slicer_are_removed(tmp_path: Path) -> None:
    pytest.importorskip("slicer")
    sys.path.insert(0, str(ROOT / "SegDeepExtension"))
    try:
        from SegDeepLib.logic import removeStaleWorkFolders
    except ImportError as exc:  # pragma: no cover - slicer without the parts the logic needs
        pytest.skip(str(exc))
    finally:
        sys.path.pop(0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"SegDeep-{dead.pid}-abc").mkdir()
    (tmp_path / f"SegDeep-{os.getpid()}-def").mkdir()
    removed = removeStaleWorkFolders(str(tmp_path))
    assert [p.name for p in removed] == [f"SegDeep-{dead.pid}-abc"]
    assert (tmp_path / f"SegDeep-{os.getpid()}-def").exists()


# --------------------------------------------------------------------------------------------
# (5) No code from checkpoints
# --------------------------------------------------------------------------------------------
class _Planted:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - what a malicious pickle does
        return (os.system, (f"touch {self.marker}",))


def test_planted_training_checkpoint_runs_nothing(bone_data: Path, tmp_path: Path, capsys) -> None:
    work = tmp_path / "train-work"
    work.mkdir()
    marker = tmp_path / "PWNED"
    with open(work / "checkpoint.pt", "wb") as f:
        pickle.dump({"network": _Planted(str(marker))}, f)
    rc, err = cli(
        capsys, "train", "--train", bone_data, "--work-dir", work, "-o", tmp_path / "pkg", "--iterations", "1", "--resume",
        "--no-progress",
    )  # fmt: skip
    assert rc == 1
    assert_one_line_error(err, "refused to load the checkpoint")
    assert not marker.exists()
    assert not (tmp_path / "pkg").exists()


# --------------------------------------------------------------------------------------------
# (6) Card values bounded; NaN network output is an error
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(not (TEST_MODEL / "model.json").is_file(), reason="test model package not built")
@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"patch_size_kji": [512, 512, 512]}, "too large"),
        ({"spacing_ijk_mm": [0.05, 4, 4]}, "must be 0.2 to 20.0 mm"),
        ({"intensity": {"clip_hu": [-1000, 2000], "subtract": 0, "divide": 1e-40}}, "network input spanning"),
        ({"intensity": {"clip_hu": [-1000, 2000], "subtract": 0, "divide": 1e40}}, "network input spanning"),
    ],
)
def test_out_of_bounds_card_values_are_refused_before_work(work: Path, tmp_path: Path, capsys, change, needle) -> None:
    model = tmp_path / "model"
    shutil.copytree(TEST_MODEL, model)
    card = json.loads((model / "model.json").read_text())
    card.update(change)
    (model / "model.json").write_text(json.dumps(card))
    before = snapshot(work)
    rc, err = cli(capsys, "segment", work / "ct.nii.gz", "-o", work / "o.seg.nrrd", "--model", model, "--no-progress")
    assert rc == 1
    assert_one_line_error(err, needle)
    assert snapshot(work) == before


def test_nan_network_output_is_an_error_not_an_empty_result() -> None:
    import torch

    from SegDeepLogic.model_package import ModelCard
    from SegDeepLogic.segment import segment_volume

    class NaNNet(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 3, *x.shape[2:]), float("nan"))

    card = ModelCard(
        name="nan",
        version="0",
        architecture="unet3d",
        architecture_params={},
        labels=[{"name": "bone", "value": 1, "color": [1, 1, 1]}, {"name": "soft", "value": 2, "color": [1, 0, 0]}],
        spacing_ijk_mm=[2.0, 2.0, 2.0],
        orientation="LPS",
        intensity={"clip_hu": [-1024, 3071], "subtract": 0.0, "divide": 1000.0},
        patch_size_kji=[16, 16, 16],
        license="CC0-1.0",
    )
    ct = Volume(small_ct(), (1.0, 1.0, 1.5))
    with pytest.raises(SegDeepError, match="non-finite values"):
        segment_volume(ct, types.SimpleNamespace(card=card, network=NaNNet()), uncertainty=False)


# --------------------------------------------------------------------------------------------
# (8) One line with the right exit code
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["compare", "A", "A", "--tolerance-mm", "-1"], "--tolerance-mm: -1 is out of range"),
        (["compare", "A", "A", "--percentile", "150"], "--percentile: 150 is out of range"),
        (["compare", "A", "A", "--roi-margin-mm", "nan"], "not a finite number"),
        (["export", "A", "-o", "m", "--decimation", "1"], "--decimation: 1 is out of range"),
        (["export", "A", "-o", "m", "--smoothing", "-0.5"], "--smoothing: -0.5 is out of range"),
        (["threshold", "A", "-o", "o.seg.nrrd", "--min-island-mm3", "-5"], "out of range"),
        (["segment", "A", "-o", "o.seg.nrrd", "--overlap", "1"], "--overlap: 1 is out of range"),
        (["segment", "A", "-o", "o.seg.nrrd", "--batch-size", "0"], "--batch-size: 0 is out of range"),
        (["segment", "A", "-o", "o.seg.nrrd", "--threshold", "1.5"], "--threshold: 1.5 is out of range"),
        (["export", "A", "-o", "m", "--hollow", "0"], "--hollow: 0 is out of range"),
        (["export", "A", "-o", "m", "--hollow", "2", "--voxel", "0"], "--voxel: 0 is out of range"),
        (["export", "A", "-o", "m", "--hollow", "2", "--drain-diameter", "-3"], "--drain-diameter: -3 is out of range"),
        (["export", "A", "-o", "m", "--hollow", "2", "--drain-holes", "-1"], "--drain-holes: -1 is out of range"),
        (["export", "A", "-o", "m", "--hollow", "2", "--drain-holes", "1.5"], "'1.5' is not a whole number"),
        (["export", "A", "-o", "m", "--kerf", "-0.5"], "--kerf: -0.5 is out of range"),
        (["export", "A", "-o", "m", "--thin", "0"], "--thin: 0 is out of range"),
        (["export", "A", "-o", "m", "--thin", "inf"], "not a finite number"),
        (["export", "A", "-o", "m", "--build-volume", "200", "0", "200"], "--build-volume: 0 is out of range"),
        (["mesh-check", "A", "--repair", "--max-hole-edges", "-1"], "--max-hole-edges: -1 is out of range"),
    ],
)
def test_out_of_range_options_are_usage_errors(capsys, args, needle) -> None:
    rc, err = cli(capsys, *args)
    assert rc == 2
    assert needle in err and "Traceback" not in err


def test_negative_labels_are_refused_in_one_line(work: Path, capsys) -> None:
    labels = np.zeros((24, 28, 32), np.int16)
    labels[4:8, 4:8, 4:8] = -3
    labels[10:14, 10:14, 10:14] = 2
    write_ct(work / "neg.nii.gz", labels)
    before = snapshot(work)
    for args in (["compare", work / "neg.nii.gz", work / "neg.nii.gz"], ["export", work / "neg.nii.gz", "-o", work / "m"]):
        rc, err = cli(capsys, *args, "--no-progress")
        assert rc == 1
        assert_one_line_error(err, "negative", "lowest -3")
    assert snapshot(work) == before


def test_over_long_input_name_is_one_line(work: Path, capsys) -> None:
    rc, err = cli(capsys, "threshold", work / ("y" * 300 + ".nii.gz"), "-o", work / "o.seg.nrrd", "--no-progress")
    assert rc == 1
    assert_one_line_error(err, "File name too long")


def test_missing_input_is_one_line(work: Path, capsys) -> None:
    rc, err = cli(capsys, "threshold", work / "nope.nii.gz", "-o", work / "o.seg.nrrd", "--no-progress")
    assert rc == 1
    assert_one_line_error(err, "no such file")


def test_cpu_out_of_memory_is_recognised_in_torch_s_words() -> None:
    import torch

    from SegDeepLogic.cli import _is_oom
    from SegDeepLogic.devices import is_out_of_memory

    r = run_capped(
        "import torch\ntry:\n    torch.empty(1 << 34, dtype=torch.uint8)\nexcept RuntimeError as e:\n    print(e)",
        cap_mib=2048,
    )
    message = r.stdout.strip()
    assert "can't allocate memory" in message, r
    assert is_out_of_memory(RuntimeError(message)) and _is_oom(RuntimeError(message))
    assert _is_oom(MemoryError()) and not _is_oom(RuntimeError("shape mismatch"))
    del torch


def test_unexpected_error_is_one_line_with_a_pointer_to_debug(work: Path, capsys, monkeypatch) -> None:
    from SegDeepLogic.commands import threshold

    def broken(args):  # noqa: ANN001, ANN202 - an internal bug stands in here: no input can cause one on purpose
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(threshold, "run", broken)
    rc, err = cli(capsys, "threshold", work / "ct.nii.gz", "-o", work / "o.seg.nrrd")
    assert rc == 3
    assert_one_line_error(err, "internal error: ZeroDivisionError", "--debug")
    rc, err = cli(capsys, "--debug", "threshold", work / "ct.nii.gz", "-o", work / "o.seg.nrrd")
    assert rc == 3 and "Traceback" in err
    rc, err = cli(capsys, "threshold", work / "ct.nii.gz", "-o", work / "o.seg.nrrd", "--debug")
    assert rc == 3 and "Traceback" in err


# --------------------------------------------------------------------------------------------
# Property: a truncated or corrupted real file reads identically or raises the project's error
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, int, object]]:
    """Small real files cut from the sample CT: (bytes, first offset of the compressed data, the intact result)."""
    folder = tmp_path_factory.mktemp("real")
    image = sitk.ReadImage(str(SAMPLE / "ct.nii.gz"))[40:72, 30:62, 40:64]
    files: dict[str, tuple[bytes, int, object]] = {}
    for name, compress in (("ct.nii.gz", True), ("ct.nii", False), ("ct.nrrd", True), ("ct.mha", True), ("raw.nrrd", False)):
        sitk.WriteImage(image, str(folder / name), useCompression=compress)
    mask = sitk.GetArrayFromImage(image) > 300
    write_seg_nrrd(
        Volume(mask.astype(np.uint8), image.GetSpacing(), image.GetOrigin()), [SegmentInfo("bone", 1)], folder / "b.seg.nrrd"
    )
    for name in ("ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha", "raw.nrrd", "b.seg.nrrd"):
        data = (folder / name).read_bytes()
        if name.endswith(".nii.gz"):
            start = 0
        elif name.endswith(".mha"):
            start = data.index(b"ElementDataFile = LOCAL") + len(b"ElementDataFile = LOCAL\n")
        elif name.endswith(".nrrd"):
            start = data.index(b"\n\n") + 2
        else:
            start = len(data)  # uncompressed .nii: no checksum, so only truncation is checked
        files[name] = (data, start, _read(folder / name))
    return files


def _read(path: Path) -> object:
    if path.name.endswith(".seg.nrrd"):
        s = read_seg_nrrd(path)
        return (s.labelmap.array.copy(), s.labelmap.spacing, s.labelmap.origin, s.names)
    v = read_volume(path)
    return (v.array.copy(), v.spacing, v.origin, v.direction.tolist())


def _same(a: object, b: object) -> bool:
    return np.array_equal(a[0], b[0]) and a[1:] == b[1:]  # type: ignore[index]


NAMES = ["ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha", "raw.nrrd", "b.seg.nrrd"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(NAMES), fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_real_file_reads_identically_or_is_refused(real_files, tmp_path_factory, name: str, fraction: float) -> None:
    data, _, intact = real_files[name]
    cut = int(fraction * len(data))
    folder = tmp_path_factory.mktemp("cut")
    path = folder / name
    path.write_bytes(data[:cut])
    try:
        result = _read(path)
    except SegDeepError:
        return
    assert _same(result, intact), f"{name} cut at {cut} of {len(data)} bytes gave different numbers"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(["ct.nii.gz", "ct.nrrd", "ct.mha", "b.seg.nrrd"]),
    where=st.floats(0.0, 1.0, exclude_max=True),
    flip=st.integers(1, 255),
)
def test_corrupted_compressed_file_reads_identically_or_is_refused(real_files, tmp_path_factory, name, where, flip) -> None:
    data, start, intact = real_files[name]
    offset = start + int(where * (len(data) - start))
    damaged = bytearray(data)
    damaged[offset] ^= flip
    folder = tmp_path_factory.mktemp("bad")
    path = folder / name
    path.write_bytes(bytes(damaged))
    try:
        result = _read(path)
    except SegDeepError:
        return
    assert _same(result, intact), f"{name} with byte {offset} changed gave different numbers"


# --------------------------------------------------------------------------------------------
# Cases that already passed before issue 17 (kept in the matrix so that they stay passing)
# --------------------------------------------------------------------------------------------
def test_segmentations_on_different_grids_are_refused(work: Path, seg: Path, capsys) -> None:
    other = Volume((small_ct() > 300).astype(np.uint8), (1.0, 1.0, 2.0), (10.0, -20.0, 30.0))
    write_seg_nrrd(other, [SegmentInfo("bone", 1)], work / "other.seg.nrrd")
    before = snapshot(work)
    rc, err = cli(capsys, "compare", seg, work / "other.seg.nrrd", "-o", work / "m.json", "--no-progress")
    assert rc == 1 and snapshot(work) == before
    assert_one_line_error(err, "differ in spacing")


def test_model_archive_with_an_escaping_entry_is_refused(work: Path, tmp_path: Path, capsys) -> None:
    import zipfile

    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(TEST_MODEL / "model.json", "model.json")
        zf.writestr("../escaped.txt", "x")
    before = snapshot(work)
    rc, err = cli(capsys, "segment", work / "ct.nii.gz", "-o", work / "o.seg.nrrd", "--model", archive, "--no-progress")
    assert rc == 1 and snapshot(work) == before
    assert_one_line_error(err, "unsafe entry")
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_segment_names_cannot_escape_the_export_folder(work: Path, capsys) -> None:
    labels = Volume((small_ct() > 300).astype(np.uint8), (1.0, 1.0, 1.5))
    write_seg_nrrd(labels, [SegmentInfo("../../escape", 1)], work / "evil.seg.nrrd")
    rc, err = cli(capsys, "export", work / "evil.seg.nrrd", "-o", work / "meshes", "--report", work / "r.json", "--no-progress")
    assert rc == 0, err
    written = [p for p in work.rglob("*.stl")]
    assert len(written) == 1 and written[0].parent == work / "meshes"


def test_ctrl_c_cancels_with_130_and_writes_nothing(work: Path) -> None:
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "SegDeepLogic.cli", "segment", str(SAMPLE / "ct.nii.gz"), "-o", str(work / "o.seg.nrrd"),
         "--model", str(TEST_MODEL), "--tta"],
        env=ENV, cwd=ROOT, stderr=subprocess.PIPE,
    )  # fmt: skip
    seen = bytearray()

    def read() -> None:
        while True:
            chunk = proc.stderr.read1(4096)  # type: ignore[union-attr]
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 180
    while b"network" not in seen and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)  # Ctrl-C once the network runs (the progress bar names the stage)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    if proc.returncode == 0:
        pytest.skip("the run finished before Ctrl-C on this machine")
    assert proc.returncode == 130, seen.decode(errors="replace")[-2000:]
    assert "cancel" in seen.decode(errors="replace")
    assert sorted(p.name for p in work.iterdir()) == ["ct.nii.gz"]


# --------------------------------------------------------------------------------------------
# The same guarantees for the commands and writers of issues 13 (DICOM) and 18 (print prep)
# --------------------------------------------------------------------------------------------
@pytest.fixture
def more(work: Path, seg: Path) -> Path:
    """``work`` with a mesh (box.stl), the CT as a DICOM series (dicom/) and files that exist already."""
    from SegDeepLogic.dicom_series import write_ct_series
    from SegDeepLogic.mesh import mask_to_mesh
    from SegDeepLogic.mesh_io import write_mesh

    box = np.zeros((12, 12, 12), np.uint8)
    box[3:9, 3:9, 3:9] = 1
    write_mesh(mask_to_mesh(Volume(box, (1.0, 1.0, 1.0))), work / "box.stl")
    write_ct_series(Volume(small_ct(), (1.0, 1.0, 1.5), (10.0, -20.0, 30.0)), work / "dicom")
    (work / "exists.json").write_text("{}")
    (work / "exists.stl").write_bytes((work / "box.stl").read_bytes())
    (work / "old.seg.nrrd").write_bytes(seg.read_bytes())
    (work / "side.labels.json").write_text("{}")
    (work / "folder").mkdir()
    (work / "prev").mkdir()
    (work / "prev" / "bone.3mf").write_bytes(b"an earlier export")
    (work / "prev" / "structures.3mf").write_bytes(b"an earlier report's meshes")
    return work


NEW_COMMAND_OUTPUT_CASES = {
    "mesh-check --report exists": (["mesh-check", "box.stl", "--report", "exists.json"], "exists.json exists"),
    "mesh-check --report the input": (["mesh-check", "box.stl", "--report", "box.stl", "--overwrite"], "is the input mesh"),
    "mesh-check --report a folder": (["mesh-check", "box.stl", "--report", "folder"], "is a folder"),
    "mesh-check -o exists": (["mesh-check", "box.stl", "--repair", "-o", "exists.stl"], "exists.stl exists"),
    "mesh-check -o the input": (["mesh-check", "box.stl", "--repair", "-o", "box.stl", "--overwrite"], "is the input mesh"),
    "mesh-check -o = --report": (["mesh-check", "box.stl", "--repair", "-o", "r.stl", "--report", "r.stl"], "is also -o"),
    "mesh-check -o without --repair": (["mesh-check", "box.stl", "-o", "r.stl"], "pass --repair"),
    "dicom-info --json exists": (["dicom-info", "dicom", "--json", "exists.json"], "exists.json exists"),
    "dicom-info --json a folder": (["dicom-info", "dicom", "--json", "folder"], "is a folder"),
    "convert -o exists": (["convert", "bone.seg.nrrd", "-o", "old.seg.nrrd", "--reference-ct", "dicom"], "old.seg.nrrd exists"),
    "convert -o the input": (["convert", "bone.seg.nrrd", "-o", "bone.seg.nrrd", "--reference-ct", "dicom", "--overwrite"], "is the input"),
    "convert -o sidecar exists": (["convert", "bone.seg.nrrd", "-o", "side.nii.gz", "--reference-ct", "dicom"], "side.labels.json exists"),
    "convert -o rtstruct exists": (["convert", "bone.seg.nrrd", "-o", "exists.json", "--format", "rtstruct", "--reference-ct", "dicom"], "name the DICOM file"),
    "convert dicom-ct -o a file": (["convert", "ct.nii.gz", "-o", "exists.json", "--format", "dicom-ct", "--overwrite"], "is not a folder"),
    "convert dicom-ct -o the input": (["convert", "dicom", "-o", "dicom", "--format", "dicom-ct", "--overwrite"], "is the input"),
    "convert dicom-ct -o exists": (["convert", "ct.nii.gz", "-o", "folder", "--format", "dicom-ct"], "refusing to overwrite existing folder"),
    "export --format 3mf file exists": (["export", "bone.seg.nrrd", "-o", "prev", "--format", "3mf"], "bone.3mf exists"),
    "export --merge file exists": (["export", "bone.seg.nrrd", "-o", "prev", "--merge", "--format", "3mf", "--name", "bone"], "bone.3mf exists"),
    "report --export-format 3mf file exists": (["report", "ct.nii.gz", "--segmentation", "bone.seg.nrrd", "-o", "r.html", "--export-dir", "prev", "--export-format", "3mf"], "structures.3mf exists"),
    "export --format 3mf --report the input": (["export", "bone.seg.nrrd", "-o", "meshes", "--format", "3mf", "--report", "bone.seg.nrrd", "--overwrite"], "is the input"),
}  # fmt: skip
_NAMED = ("dicom", "folder", "meshes", "prev")


def _in(work: Path, args: list[str]) -> list[str]:
    return [str(work / a) if ("." in a or a in _NAMED) and not a.startswith("-") else a for a in args]


@pytest.mark.parametrize("case", sorted(NEW_COMMAND_OUTPUT_CASES))
def test_new_commands_refuse_bad_outputs_before_any_work(more: Path, capsys, case: str) -> None:
    args, needle = NEW_COMMAND_OUTPUT_CASES[case]
    before = snapshot(more)
    rc, err = cli(capsys, *_in(more, args))
    assert rc == 1, err
    assert_one_line_error(err, needle)
    assert snapshot(more) == before


@pytest.mark.parametrize(
    "args",
    [
        ["mesh-check", "box.stl", "--report", "SPECIAL", "--overwrite"],
        ["mesh-check", "box.stl", "--repair", "-o", "SPECIAL.stl", "--overwrite"],
        ["dicom-info", "dicom", "--json", "SPECIAL", "--overwrite"],
        ["export", "bone.seg.nrrd", "-o", "meshes", "--format", "3mf", "--report", "SPECIAL", "--overwrite"],
    ],
)
def test_new_commands_never_replace_a_special_file(more: Path, capsys, args: list[str]) -> None:
    special = more / "special.json"
    os.mkfifo(special)
    os.mkfifo(more / "special.stl")
    named = {"SPECIAL": str(special), "SPECIAL.stl": str(more / "special.stl")}
    before = snapshot(more)
    rc, err = cli(capsys, *_in(more, [named.get(a, a) for a in args]))
    assert rc == 1
    assert_one_line_error(err, "not a regular file")
    assert snapshot(more) == before


def test_new_commands_write_their_outputs(more: Path, capsys) -> None:
    """The happy paths still work under the checks: dicom-info --json, mesh-check --repair, convert, 3MF export."""
    assert cli(capsys, "dicom-info", more / "dicom", "--json", more / "series.json")[0] == 0
    assert json.loads((more / "series.json").read_text())[0]["modality"] == "CT"
    rc, err = cli(capsys, "mesh-check", more / "box.stl", "--repair", "-o", more / "fixed.stl", "--report", more / "r.json")
    assert rc == 0, err
    assert json.loads((more / "r.json").read_text())["repaired_file"] == str(more / "fixed.stl")
    rc, err = cli(capsys, "convert", more / "bone.seg.nrrd", "-o", more / "b.nii.gz", "--reference-ct", more / "dicom")
    assert rc == 0, err
    assert (more / "b.labels.json").is_file()
    rc, err = cli(capsys, "export", more / "bone.seg.nrrd", "-o", more / "meshes", "--format", "3mf", "--hollow", "1",
                  "--report", more / "m.json", "--no-progress")  # fmt: skip
    assert rc == 0, err
    assert [p.name for p in (more / "meshes").iterdir()] == ["bone.3mf"]
    assert not [p for p in more.rglob(".*") if "segdeep" in p.name]  # no temporaries left anywhere


def test_atomic_dir_is_part_of_the_all_or_nothing_group(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic.atomic_outputs():
            with atomic.atomic_dir(tmp_path / "series") as staging:
                (staging / "CT0001.dcm").write_bytes(b"slice")
            atomic.write_text(tmp_path / "report.json", "{}")
            assert not (tmp_path / "series").exists()  # nothing in place before the group ends
            raise RuntimeError("a later output failed")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "old.dcm").write_bytes(b"old")
    with atomic.atomic_outputs():
        with atomic.atomic_dir(tmp_path / "series", overwrite=True) as staging:
            (staging / "CT0001.dcm").write_bytes(b"new")
        atomic.write_text(tmp_path / "report.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "series"]
    assert [p.name for p in (tmp_path / "series").iterdir()] == ["CT0001.dcm"]


def test_atomic_dir_refuses_files_and_checks_what_was_written(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    for name in ("file", "fifo"):
        with pytest.raises(OutputError, match="is not a folder"):
            with atomic.atomic_dir(tmp_path / name, overwrite=True):
                pass
    with pytest.raises(FileExistsError, match="refusing to overwrite existing folder"):
        (tmp_path / "series").mkdir()
        with atomic.atomic_dir(tmp_path / "series"):
            pass
    with pytest.raises(WriteError, match="CT0002.dcm is empty"):
        with atomic.atomic_dir(tmp_path / "new") as staging:
            (staging / "CT0001.dcm").write_bytes(b"slice")
            (staging / "CT0002.dcm").touch()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "file", "series"]


def test_killed_dicom_series_write_leaves_a_staging_folder_the_next_run_removes(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from SegDeepLogic import atomic
        with atomic.atomic_dir({str(tmp_path / "series")!r}) as staging:
            (staging / "CT0001.dcm").write_bytes(b"partial" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert subprocess.run([sys.executable, "-c", script], env=ENV, cwd=ROOT).returncode == -9
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".series.") and "segdeep-tmp" in leftovers[0]
    atomic.write_text(tmp_path / "next.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["next.json"]


def test_short_3mf_and_dicom_writes_are_caught_before_the_rename(more: Path, tmp_path: Path) -> None:
    from SegDeepLogic.dicom_common import verify_dicom_file
    from SegDeepLogic.mesh_3mf import PrintPart, _verify_3mf, write_3mf
    from SegDeepLogic.mesh_io import read_mesh

    good = write_3mf([PrintPart("box", read_mesh(more / "box.stl"))], tmp_path / "good.3mf")
    _verify_3mf(good)
    data = good.read_bytes()
    (tmp_path / "short.3mf").write_bytes(data[: len(data) // 2])
    with pytest.raises(WriteError, match="3MF file just written is corrupt"):
        _verify_3mf(tmp_path / "short.3mf")
    dcm = sorted((more / "dicom").iterdir())[0]
    verify_dicom_file(dcm)
    (tmp_path / "short.dcm").write_bytes(dcm.read_bytes()[:-200])
    with pytest.raises(WriteError, match="cannot be read back"):
        verify_dicom_file(tmp_path / "short.dcm")


@pytest.mark.parametrize(
    "args",
    [
        ["export", "bone.seg.nrrd", "-o", "meshes", "--format", "3mf", "--no-progress"],
        ["convert", "ct.nii.gz", "-o", "series", "--format", "dicom-ct"],
    ],
)
def test_3mf_and_dicom_series_cut_short_by_a_file_size_limit_leave_nothing(more: Path, args: list[str]) -> None:
    before = snapshot(more)
    r = _run_with_file_size_limit(args, 2048, more)
    assert r.returncode == 1, r.stderr
    assert_one_line_error(r.stderr, "segdeep")
    after = {k: v for k, v in snapshot(more).items() if k != "meshes"}  # export may create its (empty) folder
    assert after == before
    assert not [p for p in more.rglob("*") if p.is_file() and p.relative_to(more).as_posix() not in before]


def test_dicom_series_over_the_voxel_limit_is_refused_before_decoding(more: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", "from SegDeepLogic.io import read_volume\ntry:\n    read_volume('dicom')\n"
         "except Exception as e:\n    print(type(e).__name__, e)"],
        capture_output=True, text=True, env={**ENV, "SEGDEEP_MAX_VOXELS": "1000"}, cwd=more,
    )  # fmt: skip
    assert "ImageSizeError" in r.stdout and "32 x 28 x 24" in r.stdout and "SEGDEEP_MAX_VOXELS" in r.stdout, r
