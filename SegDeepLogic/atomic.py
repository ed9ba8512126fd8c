"""Atomic file writes: a file appears under its final name only once it is complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``final_path``; rename it into place on success.

    The temporary file lives in the same folder (same file system, so the rename is atomic)
    and keeps the final suffix (``.nii.gz``, ``.seg.nrrd``, ``.stl``) because writers such as
    SimpleITK choose the format from it. On any exception the temporary file is removed and
    ``final_path`` is left untouched.

    Parameters
    ----------
    final_path : path-like
        Where the finished file must appear.
    overwrite : bool, optional
        If False, refuse (``FileExistsError``) when ``final_path`` already exists.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    final = Path(final_path)
    if not overwrite and final.exists():
        raise FileExistsError(f"refusing to overwrite existing file: {final}")
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name.split('.')[0]}.", suffix=suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(final_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``final_dir``; rename it into place on success.

    For outputs made of several files (a DICOM series): nothing appears under the final name
    until every file is written. With ``overwrite=True`` an existing folder is replaced (it is
    moved aside first and deleted only after the new one is in place).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "series"
    >>> with atomic_dir(target) as tmp:
    ...     _ = (tmp / "a.dcm").write_text("x")
    >>> sorted(p.name for p in target.iterdir())
    ['a.dcm']
    """
    final = Path(final_dir)
    if final.exists() and not overwrite:
        raise FileExistsError(f"refusing to overwrite existing folder: {final}")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
