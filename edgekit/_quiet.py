"""Silence native (C/C++) writes to stdout/stderr around chatty library calls."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_native(fds: tuple[int, ...] = (2,)) -> Iterator[None]:
    """Send native (C++) and Python writes on ``fds`` to /dev/null for the duration.

    Set EDGEKIT_VERBOSE_TF=1 to see everything TensorFlow and LiteRT print.
    """
    if os.environ.get("EDGEKIT_VERBOSE_TF"):
        yield
        return
    import io
    import sys
    import warnings

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
        with contextlib.ExitStack() as stack:
            if 1 in fds:
                stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            if 2 in fds:
                stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            yield
    finally:
        for fd, keep in saved.items():
            os.dup2(keep, fd)
            os.close(keep)
        os.close(devnull)
