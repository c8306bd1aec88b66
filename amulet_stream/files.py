"""Files and folders only the daemon's user may read: clips, the MQTT outbox, state files."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

FILE_MODE = 0o600
"""Files the daemon writes are readable by its user only, whatever the umask."""
DIR_MODE = 0o700
"""Folders the daemon creates (and their missing parents), whatever the umask."""
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def private_fd(path: Path) -> int:
    """A descriptor of `path` opened for writing with FILE_MODE (an existing file is truncated
    and set to it); a symlink in its place is refused (OSError)."""
    fd = os.open(path, _OPEN_FLAGS, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have removed bits; an old file kept its mode
    except OSError:
        os.close(fd)
        raise
    return fd


def make_private_dirs(folder: Path) -> None:
    """Create `folder` and its missing parents with DIR_MODE; existing ones are left as they
    are (their owner chose their mode)."""
    missing: list[Path] = []
    for path in (folder, *folder.parents):
        if path.is_dir():
            break
        missing.append(path)
    for path in reversed(missing):
        try:
            path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            if not path.is_dir():
                raise
            continue  # created meanwhile by someone else: theirs
        os.chmod(path, DIR_MODE)


def read_small(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, not through a symlink and never
    waiting (a FIFO, a device or a symlink in its place is an OSError, a larger file a
    ValueError): for files in the state directory, which anyone able to write there controls."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ValueError("a symbolic link, not a file") from err
        raise
    with os.fdopen(fd, "rb", closefd=True) as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data


def write_all(fd: int, data: bytes) -> None:
    """Write every byte (os.write may write fewer: a full disk, a file-size limit); the
    error that stops it is raised (OSError)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def replace_file(path: Path, data: bytes) -> None:
    """Put `data` in `path` whole or not at all: a private `<path>.tmp`, fsynced, renamed over
    `path`, then the folder fsynced (the rename survives a power cut). OSError: nothing
    changed (the temporary file is removed)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = private_fd(tmp)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
