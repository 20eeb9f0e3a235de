"""Atomic file writes: a kill never leaves a half-written report where a finished one is expected."""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from fimaudit.errors import UsageError

NEW_FILE_MODE = 0o644


def atomic_write(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """Write data to a temporary file beside `path`, fsync it, then rename it into place.

    Without `mode`, a file being replaced keeps its permission bits (a report someone made 0600
    stays private when `sign` rewrites it) and a new file gets NEW_FILE_MODE.
    """
    target = Path(path)
    refuse_special(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    chosen = _existing_mode(target) if mode is None else mode
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, NEW_FILE_MODE if chosen is None else chosen)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def _existing_mode(target: Path) -> int | None:
    """Permission bits of the regular file at `target`, None when there is none to keep."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return None


def refuse_special(path: str | Path, what: str = "output") -> None:
    """Refuse to write over anything but a regular file: a missing path is fine.

    The atomic rename replaces whatever the name points at, so `--out /dev/null` would turn the
    device into a regular file, and a symlink would be replaced by a file instead of followed
    (or, for SQLite, followed into its target). Either is a surprise the user did not ask for.
    """
    target = Path(path)
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"cannot check the {what} path {target}: {exc.strerror or exc}",
                         "pass a path in a directory you can read") from exc
    if stat.S_ISLNK(info.st_mode):
        raise UsageError(f"the {what} path {target} is a symbolic link; fimaudit does not write through links.",
                         "pass the link's target path itself, or another path")
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"the {what} path {target} exists and is a {_kind(info.st_mode)}, not a regular file.",
                         "pass the path of a regular file (or of one to create)")


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "directory"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
             (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"))
    return next((name for test, name in kinds if test(mode)), "special file")


def _fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the directory entry is flushed.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
