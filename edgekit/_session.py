"""One private temporary directory per CLI run, removed however the run ends.

Everything a run writes to ``$TMPDIR`` - edgekit's own work directories, the TensorFlow converter's
``tmp*`` folders, the TFLM worker's files, onnx2tf's scratch - goes into
``$TMPDIR/edgekit-run-<pid>-<random>/`` (``TMPDIR`` and ``tempfile.tempdir`` point there, so child
processes inherit it). The directory is removed when the run returns, raises, or is stopped with
SIGINT, SIGTERM or SIGHUP (turned into :class:`Terminated`, which unwinds every ``finally`` and
context manager on the way: workers and QEMU are stopped, staged outputs removed). A run killed with
SIGKILL cannot clean up: the next run removes the directories of runs whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

PREFIX = "edgekit-run-"
OWNER = ".edgekit-owner"


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwind like KeyboardInterrupt does for SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _start_time(pid)
    return now is None or not started or now == started


def clean_stale(root: Path) -> list[Path]:
    """Remove run directories under ``root`` whose owning process is gone; return what was removed."""
    removed: list[Path] = []
    try:
        candidates = list(root.glob(PREFIX + "*"))
    except OSError:
        return removed
    for d in candidates:
        try:  # another user's run directory is unreadable to us: not ours to judge, skip it
            owner = d / OWNER
            if d.is_symlink() or not d.is_dir() or not owner.is_file():
                continue  # not ours: never delete what edgekit did not write
            pid_text, _, started = owner.read_text().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not _alive(pid, started):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def run_session() -> Iterator[Path | None]:
    """Private temporary directory and signal handling for one CLI run (None if $TMPDIR is unusable)."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for s in previous:
        signal.signal(s, _raise_terminated)
    root = Path(tempfile.gettempdir())
    old_env, old_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    session: Path | None = None
    try:
        clean_stale(root)
        try:
            session = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root))
            (session / OWNER).write_text(f"{os.getpid()} {_start_time(os.getpid()) or ''}\n")
        except OSError:
            session = None
        if session is not None:
            os.environ["TMPDIR"] = str(session)
            tempfile.tempdir = str(session)
        yield session
    finally:
        # no signal may interrupt the clean-up itself
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        tempfile.tempdir = old_tempdir
        if old_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_env
        if session is not None:
            shutil.rmtree(session, ignore_errors=True)
        for s, handler in previous.items():
            signal.signal(s, handler)
