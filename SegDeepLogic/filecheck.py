"""Checks an image file's header against its data *before* a reader allocates anything.

Every image SegDeep reads (:func:`SegDeepLogic.io.read_volume`, the ``.seg.nrrd`` reader) goes
through :func:`check_image_file` first. It parses the header itself (NIfTI-1/2, NRRD/NHDR,
MetaImage MHA/MHD) and then

* refuses a header that declares more voxels than the limit (``SEGDEEP_MAX_VOXELS``, default
  :data:`DEFAULT_MAX_VOXELS`), with the numbers in the message, before any allocation;
* streams the voxel data (decompressing gzip/zlib/bzip2 in chunks, nothing kept) and refuses a
  file whose data is shorter than the header declares (a truncated download), whose
  compressed stream is incomplete or fails its checksum (CRC), or that inflates to more than
  the header declares (a decompression bomb) -- memory stays bounded by the chunk size;
* refuses NaN or infinite voxels in floating-point data (ITK's NIfTI reader silently turns
  them into 0) and a non-finite or zero NIfTI scaling slope;
* refuses a zero or non-finite voxel size (NIfTI ``pixdim``; ITK would read 1 mm) and a NRRD or
  MetaImage header that declares no voxel size at all (ITK would assume 1 mm).

What cannot be detected: a changed byte in *uncompressed* data or in a text header (there is
no checksum to compare with). Compressed data is covered by its CRC-32/Adler-32.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import ImageSizeError, VolumeError, VolumeReadError

DEFAULT_MAX_VOXELS = 512 * 512 * 2048  # 537 million voxels: 1 GiB as int16
CHUNK = 1 << 20
_SLACK = 1 << 16  # compressed streams may decode to a little more than the data (ignored padding)


def max_voxels() -> int:
    """The largest voxel count (all components) an image header may declare: ``SEGDEEP_MAX_VOXELS`` or the default."""
    text = os.environ.get("SEGDEEP_MAX_VOXELS", "").strip()
    if text:
        try:
            value = int(float(text))
        except ValueError:
            raise VolumeReadError(f"SEGDEEP_MAX_VOXELS must be a whole number, got {text!r}") from None
        if value > 0:
            return value
    return DEFAULT_MAX_VOXELS


@dataclasses.dataclass(frozen=True)
class ImageFacts:
    """What the header declares: ``format`` ('nifti', 'nrrd', 'meta'), size, voxel type and the ITK reader to use."""

    format: str
    sizes: tuple[int, ...]
    dtype: np.dtype
    components: int
    spacing: tuple[float, ...] | None
    imageio: str

    @property
    def voxels(self) -> int:
        return int(np.prod(self.sizes, dtype=np.int64)) * self.components


def _fail(path: Path, message: str) -> VolumeReadError:
    return VolumeReadError(f"cannot read {path}: {message}")


def check_voxel_limit(path: Path, sizes: tuple[int, ...], dtype: np.dtype, components: int = 1) -> None:
    """Raise :class:`ImageSizeError` if ``sizes`` x ``components`` exceeds :func:`max_voxels`."""
    if any(n < 0 for n in sizes):
        raise _fail(path, f"the header declares a negative size {list(sizes)}")
    count = int(np.prod([int(n) for n in sizes], dtype=object)) * int(components)
    limit = max_voxels()
    if count > limit:
        mib = count * np.dtype(dtype).itemsize / 2**20
        raise ImageSizeError(
            f"cannot read {path}: its header declares {' x '.join(str(n) for n in sizes)}"
            f"{f' x {components} components' if components > 1 else ''} = {count} voxels ({mib:.0f} MiB as "
            f"{np.dtype(dtype).name}), over the limit of {limit} voxels; set SEGDEEP_MAX_VOXELS to raise it"
        )


def _open_regular(path: Path) -> BinaryIO:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _fail(path, exc.strerror or str(exc)) from None
    if not stat.S_ISREG(st.st_mode):
        raise _fail(path, "not a regular file (a FIFO, device or folder)")
    try:
        return open(path, "rb")
    except OSError as exc:
        raise _fail(path, exc.strerror or str(exc)) from None


# --- streaming the data ---------------------------------------------------------------------
def scan_payload(
    path: Path,
    *,
    offset: int,
    nbytes: int,
    compression: str = "raw",
    data_offset: int = 0,
    check_finite: np.dtype | None = None,
    keep: bool = False,
) -> bytes | None:
    """Stream the voxel data of ``path`` and check it is complete; optionally return it.

    Parameters
    ----------
    offset : int
        Where the (possibly compressed) data starts in the file.
    nbytes : int
        Bytes of voxel data the header declares.
    compression : {'raw', 'gzip', 'zlib'}
        Compression of the stream that starts at ``offset``.
    data_offset : int
        Bytes to skip in the *decoded* stream before the voxels (NIfTI ``vox_offset`` in a ``.nii.gz``).
    check_finite : dtype, optional
        Refuse NaN or infinite values, interpreting the data as this floating-point dtype.
    keep : bool
        Return the ``nbytes`` of voxel data (else None).
    """
    need = data_offset + nbytes
    got = 0
    kept: list[bytes] = []
    n_bad = 0
    carry = b""
    itemsize = np.dtype(check_finite).itemsize if check_finite is not None else 1

    def take(block: bytes) -> None:
        nonlocal got, n_bad, carry
        start = got
        got += len(block)
        lo, hi = max(data_offset - start, 0), min(need - start, len(block))
        if hi <= lo:
            return
        part = block[lo:hi]
        if keep:
            kept.append(part)
        if check_finite is not None:
            part = carry + part
            usable = len(part) - len(part) % itemsize
            values = np.frombuffer(part[:usable], dtype=check_finite)
            n_bad += int(values.size - np.count_nonzero(np.isfinite(values)))
            carry = part[usable:]

    with _open_regular(path) as f:
        f.seek(offset)
        if compression == "raw":
            while got < need:
                block = f.read(min(CHUNK, need - got))
                if not block:
                    break
                take(block)
        else:
            if compression not in ("gzip", "zlib"):
                raise _fail(path, f"unsupported compression {compression!r}")
            wbits = 31 if compression == "gzip" else 47  # 47: zlib or gzip header, detected
            decoder = zlib.decompressobj(wbits=wbits)
            pending = b""
            try:
                while True:
                    if not pending:
                        pending = f.read(CHUNK)
                        if not pending:
                            break
                    block = decoder.decompress(pending, CHUNK)
                    pending = decoder.unconsumed_tail
                    if block:
                        take(block)
                    if got > need + _SLACK:
                        raise _fail(
                            path,
                            f"the compressed data inflates to more than the {nbytes} bytes the header declares "
                            "(a corrupt file or a decompression bomb)",
                        )
                    if decoder.eof:
                        rest = decoder.unused_data + pending + f.read(CHUNK)
                        if compression == "gzip" and rest.strip(b"\0"):
                            decoder = zlib.decompressobj(wbits=31)  # a further gzip member (valid gzip)
                            pending = rest
                            continue
                        break
            except zlib.error as exc:
                raise _fail(path, f"the compressed data is corrupt ({exc})") from None
            if not decoder.eof:
                raise _fail(
                    path,
                    f"the compressed data ends early (truncated file): {max(0, min(got, need) - data_offset)} of "
                    f"{nbytes} bytes of voxel data decoded",
                )
    if got < need:
        raise _fail(
            path,
            f"data too short (truncated file): {max(0, got - data_offset)} of the {nbytes} bytes of voxel data the header "
            "declares",
        )
    if n_bad:
        raise VolumeError(f"cannot read {path}: it contains {n_bad} non-finite voxel values (NaN or infinity)")
    return b"".join(kept) if keep else None


# --- NIfTI -----------------------------------------------------------------------------------
_NIFTI_TYPES = {
    2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 256: np.int8, 512: np.uint16,
    768: np.uint32, 1024: np.int64, 1280: np.uint64, 32: np.complex64, 1792: np.complex128,
}  # fmt: skip
_NIFTI_COMPONENTS = {128: (np.uint8, 3), 2304: (np.uint8, 4)}


def _nifti_header(raw: bytes, path: Path) -> tuple[str, dict]:
    if len(raw) < 348:
        raise _fail(path, f"the NIfTI header is incomplete ({len(raw)} of 348 bytes); truncated file?")
    for endian in "<>":
        size = struct.unpack(endian + "i", raw[:4])[0]
        if size == 348:
            h = {
                "dim": struct.unpack(endian + "8h", raw[40:56]),
                "datatype": struct.unpack(endian + "h", raw[70:72])[0],
                "bitpix": struct.unpack(endian + "h", raw[72:74])[0],
                "pixdim": struct.unpack(endian + "8f", raw[76:108]),
                "vox_offset": struct.unpack(endian + "f", raw[108:112])[0],
                "scl_slope": struct.unpack(endian + "f", raw[112:116])[0],
                "scl_inter": struct.unpack(endian + "f", raw[116:120])[0],
                "magic": raw[344:348],
            }
            return endian, h
        if size == 540:
            if len(raw) < 540:
                raise _fail(path, f"the NIfTI-2 header is incomplete ({len(raw)} of 540 bytes); truncated file?")
            h = {
                "datatype": struct.unpack(endian + "h", raw[12:14])[0],
                "bitpix": struct.unpack(endian + "h", raw[14:16])[0],
                "dim": struct.unpack(endian + "8q", raw[16:80]),
                "pixdim": struct.unpack(endian + "8d", raw[104:168]),
                "vox_offset": struct.unpack(endian + "q", raw[168:176])[0],
                "scl_slope": struct.unpack(endian + "d", raw[176:184])[0],
                "scl_inter": struct.unpack(endian + "d", raw[184:192])[0],
                "magic": raw[4:8],
            }
            return endian, h
    raise _fail(path, "not a NIfTI file (header size is neither 348 nor 540)")


def _check_nifti(path: Path, compressed: bool) -> ImageFacts:
    with _open_regular(path) as f:
        head = f.read(4096)
    if compressed and not head.startswith(b"\x1f\x8b"):
        compressed = False  # a .nii.gz that is not compressed: ITK reads it as plain NIfTI, and so do we
    if compressed:
        try:
            d = zlib.decompressobj(wbits=31)
            raw = d.decompress(head, 540)
        except zlib.error as exc:
            raise _fail(path, f"not a gzip file ({exc})") from None
    else:
        raw = head
    endian, h = _nifti_header(raw, path)
    if h["magic"][:3] not in (b"n+1", b"n+2"):
        raise _fail(path, f"NIfTI magic {h['magic']!r}: only single-file NIfTI (.nii/.nii.gz) is supported")
    ndim = int(h["dim"][0])
    if not 1 <= ndim <= 7:
        raise _fail(path, f"the NIfTI header declares {ndim} dimensions (1 to 7 allowed); corrupt header")
    sizes = tuple(int(n) for n in h["dim"][1 : ndim + 1])
    if any(n < 1 for n in sizes):
        raise _fail(path, f"the NIfTI header declares a size of {list(sizes)}")
    datatype = int(h["datatype"])
    if datatype in _NIFTI_COMPONENTS:
        dtype, components = _NIFTI_COMPONENTS[datatype]
    elif datatype in _NIFTI_TYPES:
        dtype, components = _NIFTI_TYPES[datatype], 1
    else:
        raise _fail(path, f"unsupported NIfTI datatype code {datatype}")
    dtype = np.dtype(dtype).newbyteorder(endian)
    check_voxel_limit(path, sizes, dtype, components)
    spacing = tuple(float(p) for p in h["pixdim"][1 : min(ndim, 3) + 1])
    for axis, s in enumerate(spacing, start=1):
        if not np.isfinite(s) or s == 0:
            raise _fail(
                path,
                f"pixdim[{axis}] = {s} in the NIfTI header: the voxel size along axis {axis} is unknown "
                "(a reader would assume 1 mm and every volume would be wrong); fix the header",
            )
    slope, inter = float(h["scl_slope"]), float(h["scl_inter"])
    if not (np.isfinite(slope) and np.isfinite(inter)):
        raise _fail(path, f"non-finite NIfTI intensity scaling (scl_slope {slope}, scl_inter {inter})")
    vox_offset = int(h["vox_offset"])
    if vox_offset < len(raw[:348]) and h["magic"][:3] == b"n+1" and vox_offset < 348:
        raise _fail(path, f"NIfTI vox_offset {vox_offset} points into the header")
    nbytes = int(np.prod(sizes, dtype=np.int64)) * dtype.itemsize * components
    finite = dtype if dtype.kind in "fc" else None
    if finite is not None and dtype.kind == "c":
        finite = np.dtype(np.float32 if dtype.itemsize == 8 else np.float64).newbyteorder(endian)
    if compressed:
        scan_payload(path, offset=0, nbytes=nbytes, compression="gzip", data_offset=vox_offset, check_finite=finite)
    else:
        scan_payload(path, offset=vox_offset, nbytes=nbytes, check_finite=finite)
    return ImageFacts("nifti", sizes, dtype, components, spacing, "NiftiImageIO")


# --- NRRD ------------------------------------------------------------------------------------
NRRD_DTYPES = {
    "signed char": np.int8, "int8": np.int8, "int8_t": np.int8,
    "uchar": np.uint8, "unsigned char": np.uint8, "uint8": np.uint8, "uint8_t": np.uint8,
    "short": np.int16, "short int": np.int16, "signed short": np.int16, "signed short int": np.int16, "int16": np.int16, "int16_t": np.int16,
    "ushort": np.uint16, "unsigned short": np.uint16, "unsigned short int": np.uint16, "uint16": np.uint16, "uint16_t": np.uint16,
    "int": np.int32, "signed int": np.int32, "int32": np.int32, "int32_t": np.int32,
    "uint": np.uint32, "unsigned int": np.uint32, "uint32": np.uint32, "uint32_t": np.uint32,
    "longlong": np.int64, "long long": np.int64, "long long int": np.int64, "signed long long": np.int64,
    "signed long long int": np.int64, "int64": np.int64, "int64_t": np.int64,
    "ulonglong": np.uint64, "unsigned long long": np.uint64, "unsigned long long int": np.uint64, "uint64": np.uint64, "uint64_t": np.uint64,
    "float": np.float32, "double": np.float64,
}  # fmt: skip
MAX_HEADER_BYTES = 1 << 22  # 4 MiB of text header


def read_text_header(path: Path, *, magic: bytes | None, end: str) -> tuple[bytes, int]:
    """The header text of a NRRD (``end='blank'``) or MetaImage (``end='ElementDataFile'``) and where data starts."""
    with _open_regular(path) as f:
        buf = b""
        while True:
            block = f.read(65536)
            buf += block
            if magic is not None and len(buf) >= len(magic) and not buf.startswith(magic):
                raise _fail(path, f"not a {magic.decode()[:4]} file (no {magic.decode()[:4]} magic line)")
            if end == "blank":
                positions = [p for p in (buf.find(b"\n\n"), buf.find(b"\r\n\r\n")) if p >= 0]
                if positions:
                    p = min(positions)
                    return buf[:p], p + (4 if buf[p : p + 4] == b"\r\n\r\n" else 2)
            else:
                m = re.search(rb"(^|\n)\s*ElementDataFile\s*=\s*([^\r\n]*)\r?\n", buf)
                if m:
                    return buf[: m.end()], m.end()
            if not block:
                if end != "blank" and re.search(rb"(^|\n)\s*ElementDataFile\s*=\s*\S", buf):
                    return buf, len(buf)  # ElementDataFile is the last line and the file has no data
                if end == "blank" and buf.endswith(b"\n") and b"data file" in buf.lower():
                    return buf, len(buf)  # detached header (.nhdr) without a final blank line
                raise _fail(path, "the header has no end; truncated file?")
            if len(buf) > MAX_HEADER_BYTES:
                raise _fail(path, f"the header is longer than {MAX_HEADER_BYTES} bytes")


def parse_nrrd_fields(header: bytes) -> tuple[dict[str, str], dict[str, str]]:
    """NRRD ``field: value`` pairs (lower-case field names) and ``key:=value`` pairs."""
    fields: dict[str, str] = {}
    keys: dict[str, str] = {}
    for line in header.decode("utf-8", errors="replace").splitlines()[1:]:
        if not line.strip() or line.startswith("#"):
            continue
        if ":=" in line:
            key, value = line.split(":=", 1)
            keys[key] = value
        elif ": " in line:
            field, value = line.split(": ", 1)
            fields[field.strip().lower()] = value.strip()
    return fields, keys


def nrrd_layout(path: Path, fields: dict[str, str]) -> tuple[tuple[int, ...], np.dtype, str]:
    """Sizes (file order, fastest first), dtype and compression of a NRRD; checks the voxel limit."""
    try:
        dtype = np.dtype(NRRD_DTYPES[fields["type"].lower()])
        dimension = int(fields["dimension"])
        sizes = tuple(int(s) for s in fields["sizes"].split())
    except KeyError as exc:
        raise _fail(path, f"the NRRD header lacks or has an unknown {exc} field") from None
    except ValueError as exc:
        raise _fail(path, f"unreadable NRRD sizes or dimension ({exc})") from None
    if len(sizes) != dimension or any(n < 1 for n in sizes):
        raise _fail(path, f"the NRRD header declares dimension {dimension} with sizes {list(sizes)}")
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if fields.get("endian", "little").lower() == "big" else "<")
    check_voxel_limit(path, sizes, dtype)
    encoding = fields.get("encoding", "raw").lower()
    compression = {"raw": "raw", "gzip": "gzip", "gz": "gzip"}.get(encoding)
    if compression is None:
        raise _fail(path, f"NRRD encoding {encoding!r} is not supported (use raw or gzip)")
    if fields.get("byte skip", "0") != "0" or fields.get("line skip", "0") != "0":
        raise _fail(path, "NRRD 'byte skip' / 'line skip' are not supported")
    return sizes, dtype, compression


def _check_nrrd(path: Path) -> ImageFacts:
    header, start = read_text_header(path, magic=b"NRRD000", end="blank")
    fields, _ = parse_nrrd_fields(header)
    sizes, dtype, compression = nrrd_layout(path, fields)
    if "space directions" not in fields and "spacings" not in fields:
        raise _fail(
            path,
            "the NRRD header declares no voxel size (neither 'space directions' nor 'spacings'); a reader would assume "
            "1 mm and every distance and volume would be wrong",
        )
    data_path = path
    detached = fields.get("data file") or fields.get("datafile")
    if detached:
        if detached.split()[0].upper() == "LIST" or len(detached.split()) > 1 or "%" in detached:
            raise _fail(path, f"NRRD data split over several files ('data file: {detached}') is not supported")
        data_path = (path.parent / detached).resolve()
        start = 0
    nbytes = int(np.prod(sizes, dtype=np.int64)) * dtype.itemsize
    scan_payload(
        data_path, offset=start, nbytes=nbytes, compression=compression, check_finite=dtype if dtype.kind == "f" else None
    )
    return ImageFacts("nrrd", sizes, dtype, 1, None, "NrrdImageIO")


# --- MetaImage -------------------------------------------------------------------------------
_META_TYPES = {
    "MET_CHAR": np.int8, "MET_UCHAR": np.uint8, "MET_SHORT": np.int16, "MET_USHORT": np.uint16, "MET_INT": np.int32,
    "MET_UINT": np.uint32, "MET_LONG": np.int32, "MET_ULONG": np.uint32, "MET_LONG_LONG": np.int64,
    "MET_ULONG_LONG": np.uint64, "MET_FLOAT": np.float32, "MET_DOUBLE": np.float64,
}  # fmt: skip


def _check_meta(path: Path) -> ImageFacts:
    header, start = read_text_header(path, magic=None, end="ElementDataFile")
    fields: dict[str, str] = {}
    for line in header.decode("utf-8", errors="replace").splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip().lower()] = value.strip()
    try:
        sizes = tuple(int(s) for s in fields["dimsize"].split())
        dtype = np.dtype(_META_TYPES[fields["elementtype"].upper()])
        components = int(fields.get("elementnumberofchannels", "1"))
        ndims = int(fields.get("ndims", len(sizes)))
    except KeyError as exc:
        raise _fail(path, f"the MetaImage header lacks or has an unknown {exc} field") from None
    except ValueError as exc:
        raise _fail(path, f"unreadable MetaImage header value ({exc})") from None
    if len(sizes) != ndims or any(n < 1 for n in sizes) or components < 1:
        raise _fail(path, f"the MetaImage header declares NDims {ndims}, DimSize {list(sizes)}")
    big = fields.get("binarydatabyteordermsb", fields.get("elementbyteordermsb", "false")).lower() == "true"
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if big else "<")
    check_voxel_limit(path, sizes, dtype, components)
    if "elementspacing" not in fields and "elementsize" not in fields:
        raise _fail(
            path,
            "the MetaImage header declares no voxel size (no ElementSpacing); a reader would assume 1 mm and every "
            "distance and volume would be wrong",
        )
    if fields.get("binarydata", "true").lower() != "true":
        raise _fail(path, "ASCII MetaImage data is not supported (BinaryData = False)")
    compressed = fields.get("compresseddata", "false").lower() == "true"
    data_file = fields.get("elementdatafile", "")
    if data_file.upper() == "LOCAL":
        data_path, offset = path, start
    elif not data_file or data_file.split()[0].upper() == "LIST" or len(data_file.split()) > 1 or "%" in data_file:
        raise _fail(path, f"MetaImage data in several files ('ElementDataFile = {data_file}') is not supported")
    else:
        data_path, offset = path.parent / data_file, 0
        header_size = int(fields.get("headersize", "0") or 0)
        if header_size > 0:
            offset = header_size
        elif header_size == -1 and not compressed:
            nbytes = int(np.prod(sizes, dtype=np.int64)) * dtype.itemsize * components
            try:
                offset = max(0, os.stat(data_path).st_size - nbytes)
            except OSError as exc:
                raise _fail(data_path, exc.strerror or str(exc)) from None
    nbytes = int(np.prod(sizes, dtype=np.int64)) * dtype.itemsize * components
    scan_payload(
        data_path,
        offset=offset,
        nbytes=nbytes,
        compression="zlib" if compressed else "raw",
        check_finite=dtype if dtype.kind == "f" else None,
    )
    return ImageFacts("meta", sizes, dtype, components, None, "MetaImageIO")


def check_image_file(path: str | os.PathLike) -> ImageFacts:
    """Check an image file before reading it (see the module doc); return what its header declares.

    Raises
    ------
    VolumeReadError
        Unsupported format, truncated or corrupt data, non-finite values or voxel sizes.
    ImageSizeError
        The header declares more voxels than :func:`max_voxels`.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return _check_nifti(path, compressed=True)
    if name.endswith(".nii"):
        return _check_nifti(path, compressed=False)
    if name.endswith((".nrrd", ".nhdr")):
        return _check_nrrd(path)
    if name.endswith((".mha", ".mhd")):
        return _check_meta(path)
    raise _fail(path, "unsupported file type (supported: .nrrd, .nhdr, .nii, .nii.gz, .mha, .mhd, or a DICOM folder)")


__all__ = ["ImageFacts", "check_image_file", "check_voxel_limit", "max_voxels", "scan_payload"]
