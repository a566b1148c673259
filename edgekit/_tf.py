"""TensorFlow and Keras, imported on first use only (keeps `edgekit --help` fast).

TensorFlow's C++ start-up chatter (absl "InitializeLog", CUDA stubs) is written
to file descriptor 2 before any Python logging applies; it is silenced for the
duration of the import only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")


@contextlib.contextmanager
def quiet_native(fds: tuple[int, ...] = (2,)) -> Iterator[None]:
    """Send native (C++) and Python writes on ``fds`` to /dev/null for the duration.

    Set EDGEKIT_VERBOSE_TF=1 to see everything TensorFlow prints.
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


with quiet_native():
    import keras
    import tensorflow as tf

tf.get_logger().setLevel("ERROR")

__all__ = ["keras", "quiet_native", "tf"]
