"""Write a file all at once or not at all, and only ever over a regular file.

The bytes go to a temporary file beside the target (same directory, so the same file system), are flushed
to disk, and the temporary file is renamed over the target: a crash leaves the old file or the new one,
never half of one. rename(2) replaces whatever the name points at, for root even a device node, so the
target is checked before writing and again just before the rename: only a missing path or a regular file
(or a link to one) is replaced; a directory, a device, a FIFO or a socket is refused with one line and
left as it is. Checkpoints, merged weights, Hugging Face directories and the presets cache are written here.
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.cli import BadInput
from common.procs import pid_alive

TMP_MARK = ".tmp-"


class NotAFileTarget(BadInput):
    """The target exists and is not a regular file, or its directory is not a directory: nothing written."""


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_target(path: str | Path) -> Path:
    """`path` if writing it replaces nothing but a regular file; else NotAFileTarget naming what is there."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        parent = p.parent
        if parent.exists() and not parent.is_dir():
            raise NotAFileTarget(f"{p}: {parent} is not a directory; choose a path in a directory") from None
        return p
    except NotADirectoryError:
        raise NotAFileTarget(f"{p}: part of the path is a file, not a directory; choose a path in a "
                             "directory") from None
    if not stat.S_ISREG(mode):
        raise NotAFileTarget(f"{p} is {file_kind(mode)}, not a regular file; it was left as it is: give a "
                             "file path")
    return p


def describe(e: OSError) -> str:
    """What an OSError from a write means for the user, its system message kept for searching."""
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({reason})"
    if e.errno == errno.EROFS:
        return f"the file system is read-only ({reason})"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied ({reason})"
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        return f"the directory is gone or is not a directory ({reason})"
    if e.errno == errno.EFBIG:
        return f"the file would be larger than this process may write ({reason})"
    return reason


def remedy(e: OSError) -> str:
    """What to do about an OSError from a write, as the start of a sentence."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space"
    if e.errno == errno.EFBIG:
        return "raise the file-size limit (ulimit -f)"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR):
        return "make the directory writable again"
    return "fix the cause"


def temp_path(path: Path, pid: int | None = None) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid() if pid is None else pid}")


def remove_stale_temps(path: Path) -> None:
    """Delete temporary files of `path` left by writers that died mid-write (SIGKILL, power loss). A temp
    file whose writer is alive belongs to a write in progress and stays."""
    for tmp in path.parent.glob(f".{path.name}{TMP_MARK}*"):
        pid = tmp.name.rsplit(TMP_MARK, 1)[1]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        try:
            tmp.unlink()
        except OSError:
            pass


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write; when the block ends without an exception the file is
    flushed to disk and renamed over `path`. On any exception (or a refused target) `path` is untouched and
    the temporary file is gone. NotAFileTarget for a target that is not a regular file; OSError (see
    describe) for a failed write."""
    path = check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotAFileTarget(f"{path}: part of the path is a file, not a directory; choose a path in a "
                             "directory") from None
    remove_stale_temps(path)
    tmp = temp_path(path)
    if os.path.lexists(tmp):  # left by an earlier process with this pid; never written through (a link)
        tmp.unlink()
    try:
        yield tmp
        _fsync(tmp)
        check_target(path)  # again: something may have appeared there while the file was written
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink()
        except OSError:  # renamed (the usual case), or never created
            pass


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write `data` (str as UTF-8) to `path` all at once; see atomic_path."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(raw)
    return Path(path)
