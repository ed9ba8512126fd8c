"""Atomic, verified file writes and output checks: the one place every SegDeep write goes through.

A file written by SegDeep appears under its final name only once it is complete and known to
be intact; on any failure the final name is left exactly as it was (absent, or the old file).

Public API (stable; other modules and the Slicer extension use it)
-----------------------------------------------------------------
``atomic_path(final_path, *, overwrite=True, verify=None)``
    Context manager yielding a hidden temporary path next to ``final_path`` (same folder, same
    suffix so that SimpleITK/VTK pick the format from it). Write the file there. On success
    the temporary file is checked -- it exists, is a regular non-empty file, ``verify(tmp)``
    (if given) does not raise -- flushed to disk with ``fsync`` and renamed into place. A
    special file (FIFO, device, socket) or a folder under ``final_path`` is refused
    (:class:`~SegDeepLogic.errors.OutputError`), so ``/dev/null`` is never replaced.
    Use ``verify`` for writers that can fail silently (SimpleITK ignores a short write):
    :func:`SegDeepLogic.io.write_volume` passes a read-back check.

``write_bytes(final_path, data, *, overwrite=True)`` / ``write_text(final_path, text, ...)``
    Write a complete file through :func:`atomic_path`, checking that every byte reached the
    disk (size compared after ``flush`` + ``fsync``). Use these for JSON, CSV, HTML.
    ``write_all(tmp, data)`` does the same into a path an :func:`atomic_path` yielded (for
    several files written under one :class:`contextlib.ExitStack`).

``atomic_dir(final_dir, *, overwrite=False)``
    Like :func:`atomic_path` for an output made of several files (a DICOM series): yields a
    hidden staging folder, checks and ``fsync``-s every file in it and renames the folder into
    place; inside :func:`atomic_outputs` it joins the all-or-nothing group.

``make_temp_dir(final_path, kind)`` / ``pid_alive(pid)`` / ``refuse_special(path)``
    A hidden staging folder next to ``final_path`` that the stale-temporary cleanup knows (for
    writers that build a folder and rename it into place); whether a process exists (safe on
    Windows, where ``os.kill(pid, 0)`` would send Ctrl-C); the special-file check on its own.

How to adopt it in new code: write every file through :func:`atomic_path` (pass ``verify`` for
SimpleITK: ``verify=lambda tmp: SegDeepLogic.io.verify_image_file(tmp, image)``, or simply
call :func:`SegDeepLogic.io.write_volume`), or through :func:`write_text` / :func:`write_bytes`;
call :func:`check_outputs` at the start of a command; wrap several outputs that belong together
in :func:`atomic_outputs` (the CLI already wraps every command except ``train``).

``atomic_outputs()``
    Context manager that groups every :func:`atomic_path` inside it (in this thread / task)
    into one all-or-nothing commit: temporary files are written and verified as usual, but
    renamed into place only when the ``with`` block ends without an exception, all together
    (files they replace are restored if a rename fails half-way). ``segdeep`` wraps each
    command in it, so a command that fails leaves no new or changed file. Nested groups join
    the outermost one. Do not read a file back under its final name inside the group.

``check_outputs(outputs, *, inputs=None, overwrite=False, folders=())``
    Validate every output of a command *before any work*: a path that exists (without
    ``overwrite``), is a folder where a file is expected (or a file where a folder is), is a
    special file, equals an input or another output, has an over-long name or lies in a folder
    that cannot be written raises one :class:`~SegDeepLogic.errors.OutputError` naming all
    problems.

``remove_stale_temporaries(folder)``
    Delete hidden temporary files and folders left by killed SegDeep runs (their process is
    gone, or they are over a day old). Called automatically by :func:`atomic_path`.

Temporary names look like ``.<stem>.<host>-<pid>.<random>.segdeep-tmp<suffix>`` (``<host>``: six
hex digits of this machine's name); the host and process id let a later run recognise (and
remove) what a killed run left behind, never a temporary another machine is still writing.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Union

from .errors import OutputError, WriteError

PathLike = Union[str, "os.PathLike[str]"]

TEMP_MARK = ".segdeep-tmp"
STALE_AFTER_S = 24 * 3600.0
_TEMP_RE = re.compile(r"^\..*\.([0-9a-f]{6})-(\d+)\.[^.]+\.segdeep-tmp")
# Which machine made a temporary: a process id means nothing on another host sharing the folder.
HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
_DOUBLE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".tar.gz")


def _read_umask() -> int:
    """The process umask without changing it (Linux: /proc/self/status), else read once at import."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # at import only (single-threaded); restored at once
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _read_umask()


def _umask() -> int:
    """The current umask; never sets it (no window in which another thread gets umask 0)."""
    if os.path.exists("/proc/self/status"):
        return _read_umask()
    return _UMASK_AT_IMPORT


def _suffix(name: str) -> str:
    lower = name.lower()
    for s in _DOUBLE_SUFFIXES:
        if lower.endswith(s):
            return name[-len(s) :]
    return Path(name).suffix or ".tmp"


def _temp_prefix(final: Path) -> str:
    stem = final.name.split(".")[0][:40] or "out"
    return f".{stem}.{HOST_TAG}-{os.getpid()}."


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists (on Windows without sending it anything: os.kill(pid, 0) would
    send CTRL_C_EVENT there)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.GetLastError() == 5  # access denied: it exists
        try:
            code = ctypes.c_ulong()
            kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


_pid_alive = pid_alive


def remove_stale_temporaries(folder: PathLike, *, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove SegDeep temporaries in ``folder`` left by runs that were killed.

    A temporary (file or folder named ``.<stem>.<host>-<pid>.<random>.segdeep-tmp...``) is
    removed when it was made on this machine by a process that no longer exists, or when it is
    older than ``max_age_s`` (a temporary of another machine sharing the folder). Returns
    what was removed. Errors (a file vanishing, no permission) are ignored.
    """
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if not m:
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            ours_and_dead = m.group(1) == HOST_TAG and not pid_alive(int(m.group(2)))
            if not ours_and_dead and age < max_age_s:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def make_temp_dir(final_path: PathLike, kind: str = "dir") -> Path:
    """A hidden temporary folder next to ``final_path`` that :func:`remove_stale_temporaries` knows.

    For writers that build a folder (a model package) and rename it into place.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent)
    return Path(tempfile.mkdtemp(prefix=_temp_prefix(final), suffix=f"{TEMP_MARK}-{kind}", dir=final.parent))


def refuse_special(path: PathLike, what: str = "output") -> None:
    """Raise :class:`OutputError` if ``path`` exists and is not a regular file (folder, FIFO, device, socket)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputError(f"cannot use {path} as {what}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{what} {path} is a folder; give a file name")
    if not stat.S_ISREG(st.st_mode):
        kind = "FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "device"
        raise OutputError(f"{what} {path} is a {kind}, not a regular file; refusing to replace it")


def _fsync_file(path: Path) -> int:
    """fsync ``path``; return its size. Raises :class:`WriteError` if it is not a regular file."""
    fd = os.open(str(path), os.O_RDONLY if os.name != "nt" else os.O_RDWR)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise WriteError(f"the temporary file {path} is not a regular file")
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):  # file systems without fsync
                raise
        return st.st_size
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":
        return
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a file or (a staged output folder) a whole tree; errors ignored."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _refuse_non_folder(path: Path, what: str = "output folder") -> None:
    """Raise :class:`OutputError` if ``path`` exists and is not a folder (a file, FIFO, device)."""
    if os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
        raise OutputError(f"{what} {path} exists and is not a folder; refusing to replace it")


class _Group:
    """Pending (temporary, final, overwrite) renames of an :func:`atomic_outputs` block.

    A temporary may be a file (:func:`atomic_path`) or a folder (:func:`atomic_dir`).
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path, bool]] = []

    def add(self, tmp: Path, final: Path, overwrite: bool) -> None:
        for _, other, _ in self.pending:
            if _same(other, final):
                raise OutputError(f"{final} would be written twice by one command")
        self.pending.append((tmp, final, overwrite))

    def discard(self) -> None:
        for tmp, _, _ in self.pending:
            _remove(tmp)
        self.pending.clear()

    def commit(self) -> None:
        for tmp, final, overwrite in self.pending:  # last checks before anything is moved
            if not overwrite and os.path.lexists(final):
                raise FileExistsError(f"refusing to overwrite existing file: {final}")
            if tmp.is_dir():
                _refuse_non_folder(final)
            else:
                refuse_special(final)
        backups: list[tuple[Path, Path]] = []  # (backup, final)
        placed: list[Path] = []
        try:
            for tmp, final, _ in self.pending:
                if os.path.lexists(final):
                    # Not a ".segdeep-tmp" name: if this process is killed in the instant between the two
                    # renames, the stale cleanup must not delete the only copy of the old file.
                    backup = Path(tempfile.mktemp(prefix=_temp_prefix(final), suffix=".segdeep-old", dir=final.parent))
                    os.replace(final, backup)
                    backups.append((backup, final))
                os.replace(tmp, final)
                placed.append(final)
        except BaseException:
            for final in placed:
                _remove(final)
            for backup, final in backups:
                with contextlib.suppress(OSError):
                    os.replace(backup, final)
            raise
        finally:
            for tmp, _, _ in self.pending:
                if os.path.lexists(tmp):
                    _remove(tmp)
        for backup, _ in backups:
            _remove(backup)
        for folder in {final.parent for _, final, _ in self.pending}:
            _fsync_dir(folder)
        self.pending.clear()


_GROUP: contextvars.ContextVar[_Group | None] = contextvars.ContextVar("segdeep_atomic_group", default=None)


@contextlib.contextmanager
def atomic_outputs() -> Iterator[None]:
    """Make every :func:`atomic_path` inside the block one all-or-nothing commit (see the module doc).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> try:
    ...     with atomic_outputs():
    ...         _ = write_text(folder / "a.txt", "first")
    ...         raise RuntimeError("the second output failed")
    ... except RuntimeError:
    ...     pass
    >>> sorted(p.name for p in folder.iterdir())  # a.txt was never put in place
    []
    """
    if _GROUP.get() is not None:
        yield
        return
    group = _Group()
    token = _GROUP.set(group)
    try:
        yield
    except BaseException:
        group.discard()
        raise
    else:
        try:
            group.commit()
        except BaseException:
            group.discard()
            raise
    finally:
        _GROUP.reset(token)


@contextlib.contextmanager
def atomic_path(final_path: PathLike, *, overwrite: bool = True, verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``final_path``; check it and rename it into place on success.

    The temporary file lives in the same folder (same file system, so the rename is atomic)
    and keeps the final suffix (``.nii.gz``, ``.seg.nrrd``, ``.stl``) because writers such as
    SimpleITK choose the format from it. On any exception the temporary file is removed and
    ``final_path`` is left untouched. Inside :func:`atomic_outputs` the rename waits for the
    end of the group.

    Parameters
    ----------
    final_path : path-like
        Where the finished file must appear. A folder or a special file (FIFO, device) there
        is refused with :class:`~SegDeepLogic.errors.OutputError`.
    overwrite : bool, optional
        If False, refuse (``FileExistsError``) when ``final_path`` already exists.
    verify : callable, optional
        ``verify(tmp)`` is called after the body; it raises if the written file is incomplete
        (for writers that may fail silently). Besides, the file must exist, be a regular file
        and not be empty, and is ``fsync``-ed before the rename.

    Raises
    ------
    WriteError
        The written file is missing, empty or fails ``verify``; nothing was put in place.

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
    refuse_special(final)
    if not overwrite and os.path.lexists(final):
        raise FileExistsError(f"refusing to overwrite existing file: {final}")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(final), suffix=TEMP_MARK + _suffix(final.name), dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
    group = _GROUP.get() if TEMP_MARK not in final.name else None  # writing into another temporary: at once
    handed_over = False
    try:
        yield tmp
        if not tmp.exists():
            raise WriteError(f"writing {final} failed: the writer produced no file")
        if verify is not None:
            try:
                verify(tmp)
            except WriteError as exc:
                raise WriteError(f"writing {final} failed: {exc}") from exc
        size = _fsync_file(tmp)
        if size == 0:
            raise WriteError(f"writing {final} failed: the written file is empty")
        if group is not None:
            group.add(tmp, final, overwrite)
            handed_over = True
        else:
            if not overwrite and os.path.lexists(final):
                raise FileExistsError(f"refusing to overwrite existing file: {final}")
            refuse_special(final)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
    finally:
        if not handed_over and tmp.exists():
            with contextlib.suppress(OSError):
                tmp.unlink()


def write_all(tmp: PathLike, data: bytes) -> None:
    """Write ``data`` to ``tmp`` (a path from :func:`atomic_path`), flush, fsync and check the size."""
    tmp = Path(tmp)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    size = tmp.stat().st_size
    if size != len(data):
        raise WriteError(f"short write: {size} of {len(data)} bytes reached the disk")


def write_bytes(final_path: PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` atomically to ``final_path``, checking every byte reached the disk; return the path."""
    final = Path(final_path)
    with atomic_path(final, overwrite=overwrite) as tmp:
        write_all(tmp, bytes(data))
    return final


def write_text(final_path: PathLike, text: str, *, overwrite: bool = True, encoding: str = "utf-8") -> Path:
    """Write ``text`` atomically (see :func:`write_bytes`); return the path."""
    return write_bytes(final_path, text.encode(encoding), overwrite=overwrite)


# --- validating outputs before work ----------------------------------------------------------
def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(str(folder), "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute().parent
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_outputs(
    outputs: Mapping[str, PathLike | None],
    *,
    inputs: Mapping[str, PathLike | None] | None = None,
    overwrite: bool = False,
    folders: Iterable[str] = (),
) -> None:
    """Check every output of a command before any work; raise one :class:`OutputError` naming all problems.

    Parameters
    ----------
    outputs : mapping
        ``{description: path}``, e.g. ``{"-o": "ct_seg.nii.gz", "--json": "s.json"}``. ``None``
        and ``"-"`` (stdout) are skipped.
    inputs : mapping, optional
        ``{description: path}`` of the command's inputs; no output may be one of them.
    overwrite : bool
        Allow replacing existing (regular) files.
    folders : iterable of str
        Descriptions in ``outputs`` that name an output *folder* (created if missing) rather
        than a file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> ct = pathlib.Path(tempfile.mkdtemp()) / "ct.nii.gz"
    >>> _ = ct.write_bytes(b"x")
    >>> check_outputs({"-o": ct}, inputs={"CT": ct}, overwrite=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    SegDeepLogic.errors.OutputError: -o ...ct.nii.gz is the input CT; refusing to replace an input
    """
    folders = set(folders)
    problems: list[str] = []
    seen: list[tuple[str, Path]] = []
    ins = [(k, Path(v)) for k, v in (inputs or {}).items() if v is not None and str(v) != "-"]
    for what, value in outputs.items():
        if value is None or str(value) == "-":
            continue
        path = Path(value)
        is_folder = what in folders
        too_long = [part for part in path.parts if len(os.fsencode(part)) > _name_max(_existing_ancestor(path))]
        if too_long:
            problems.append(f"{what} {path}: the name {too_long[0][:40]}... is longer than the file system allows")
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except NotADirectoryError:
            problems.append(f"{what} {path}: a part of the path is a file, not a folder")
            continue
        except OSError as exc:
            problems.append(f"{what} {path}: {exc.strerror or exc}")
            continue
        if st is not None:
            if is_folder:
                if not stat.S_ISDIR(st.st_mode):
                    problems.append(f"{what} {path} exists and is not a folder")
                    continue
            elif stat.S_ISDIR(st.st_mode):
                problems.append(f"{what} {path} is a folder; give a file name")
            elif not stat.S_ISREG(st.st_mode):
                problems.append(f"{what} {path} is a special file (FIFO or device), not a regular file; refusing to replace it")
            elif not overwrite:
                problems.append(f"{what} {path} exists; refusing to overwrite it (pass --overwrite to replace it)")
        for name, other in ins:
            if _same(path, other):
                problems.append(f"{what} {path} is the input {name}; refusing to replace an input")
        for name, other in seen:
            if _same(path, other):
                problems.append(f"{what} {path} is also {name}; every output needs its own file")
        seen.append((what, path))
        folder = path if (is_folder and st is not None) else _existing_ancestor(path)
        if not folder.is_dir():
            problems.append(f"{what} {path}: {folder} is not a folder")
        elif not (os.access(folder, os.W_OK) and os.access(folder, os.X_OK)):
            problems.append(f"{what} {path}: the folder {folder} is not writable")
    if problems:
        raise OutputError("; ".join(problems))


@contextlib.contextmanager
def atomic_dir(final_dir: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``final_dir``; rename it into place on success.

    For outputs made of several files (a DICOM series): nothing appears under the final name
    until every file is written. The staging folder has a temporary name that
    :func:`remove_stale_temporaries` knows, so a killed run leaves nothing for long. Every
    file in it must be a non-empty regular file; they are ``fsync``-ed before the rename.
    With ``overwrite=True`` an existing folder is replaced (moved aside first, deleted only
    after the new one is in place); a file or special file under ``final_dir`` is refused
    (:class:`~SegDeepLogic.errors.OutputError`). Inside :func:`atomic_outputs` the folder joins
    the group: it is put in place together with the command's other outputs, or not at all.

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
    _refuse_non_folder(final)
    if not overwrite and os.path.lexists(final):
        raise FileExistsError(f"refusing to overwrite existing folder: {final}")
    tmp = make_temp_dir(final, "dir")  # creates the parent, removes stale temporaries
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the folder normal permissions
    group = _GROUP.get() if TEMP_MARK not in final.name else None
    handed_over = False
    try:
        yield tmp
        for entry in tmp.rglob("*"):
            if entry.is_symlink() or not (entry.is_dir() or entry.is_file()):
                raise WriteError(f"writing {final} failed: {entry.name} is not a regular file")
            if entry.is_file() and _fsync_file(entry) == 0:
                raise WriteError(f"writing {final} failed: {entry.relative_to(tmp)} is empty")
        _fsync_dir(tmp)
        if group is not None:
            group.add(tmp, final, overwrite)
            handed_over = True
        else:
            pending = _Group()
            pending.add(tmp, final, overwrite)
            pending.commit()
    finally:
        if not handed_over and os.path.lexists(tmp):
            _remove(tmp)
