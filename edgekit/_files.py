"""Read user-named files safely: regular files only, with a size limit, never blocking.

``open()`` on a FIFO blocks until a writer appears, and ``read()`` on ``/dev/zero``
(or a symlink to it) never ends: every file a user names goes through
:func:`read_regular` (or :func:`check_regular` when another library opens it by
path), which opens without blocking, checks what the path really is, and reads at
most ``limit`` bytes. Errors are one line, raised as the caller's EdgekitError
subclass (ModelError for models, DataError for data, ...).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.options import Option

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _limit_value(limit: int | Option) -> int:
    return int(limit.value) if isinstance(limit, Option) else int(limit)


def _too_big(path: Path, size: int, limit: int | Option, what: str, error: type[EdgekitError]) -> EdgekitError:
    hint = (f"set EDGEKIT_{limit.name.upper()} (bytes) to raise the limit" if isinstance(limit, Option)
            else "pass a smaller file")
    return error(f"{what} {path} is {size:,} bytes, over the {_limit_value(limit):,}-byte limit", hint)


def _not_regular(path: Path, mode: int, what: str, error: type[EdgekitError]) -> EdgekitError:
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    link = " (through a symbolic link)" if path.is_symlink() else ""
    return error(f"{what} {path} is {kind}{link}, not a regular file", "pass the file itself")


def _open(path: Path, what: str, error: type[EdgekitError]) -> int:
    try:
        # O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting for a writer
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist", "check the path") from None
    except PermissionError:
        raise error(f"{what} {path} is not readable", "check its permissions") from None
    except OSError as exc:
        raise error(f"cannot open {what} {path}: {exc.strerror}") from None


def check_regular(path: str | os.PathLike[str], limit: int | Option, what: str,
                  error: type[EdgekitError]) -> int:
    """Check that ``path`` is a readable regular file of at most ``limit`` bytes; return its size.

    For files that another library (Keras, h5py, onnx) opens by path.
    """
    p = Path(path)
    fd = _open(p, what, error)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(p, st.st_mode, what, error)
    if st.st_size > _limit_value(limit):
        raise _too_big(p, st.st_size, limit, what, error)
    return st.st_size


def read_regular(path: str | os.PathLike[str], limit: int | Option, what: str,
                 error: type[EdgekitError]) -> bytes:
    """The bytes of regular file ``path`` (at most ``limit`` bytes), or one-line ``error``.

    ``what`` names the file in messages ("model file", "labels file", ...); ``limit`` is a
    byte count or an :class:`~edgekit.options.Option` (its environment variable is then
    named in the message).
    """
    p = Path(path)
    cap = _limit_value(limit)
    fd = _open(p, what, error)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(p, st.st_mode, what, error)
        if st.st_size > cap:
            raise _too_big(p, st.st_size, limit, what, error)
        chunks: list[bytes] = []
        total = 0
        while True:  # the file may grow while it is read: never past the limit
            chunk = os.read(fd, min(1 << 24, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise _too_big(p, total, limit, what, error)
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)
