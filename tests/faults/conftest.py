"""The fault-injection suite's harness: every case runs the real CLI in a child process and is judged
the same way - the exit code, exactly one stderr line (no traceback, no "internal error"), nothing
written or left behind (output, cache, $TMPDIR), no process left running, and a bounded time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT


@dataclass
class Outcome:
    proc: subprocess.CompletedProcess[str]
    seconds: float
    tmpdir: Path

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.proc.stderr.splitlines() if ln.strip()]


def _stray_processes(tag: str) -> list[int]:
    """Processes still carrying this run's tag in their environment (children that outlived the CLI)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"EDGEKIT_FAULT_TAG={tag}".encode() in env:
            found.append(int(entry.name))
    return found


class FaultRunner:
    """Runs ``edgekit ARGS`` with a private $TMPDIR and cache, and checks what a fault must never do."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.tmpdir = base / "tmp"
        self.cache = base / "cache"
        self.tmpdir.mkdir(exist_ok=True)

    def run(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120, stdin: str | None = None) -> Outcome:
        tag = uuid.uuid4().hex
        full_env = {**os.environ, "TMPDIR": str(self.tmpdir), "EDGEKIT_CACHE_DIR": str(self.cache),
                    "EDGEKIT_FAULT_TAG": tag, "PYTHONPATH": str(ROOT), **(env or {})}
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, cwd=cwd,
                              env=full_env, timeout=timeout, check=False, input=stdin)
        seconds = time.monotonic() - t0
        deadline = time.monotonic() + 5
        while _stray_processes(tag) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _stray_processes(tag), f"processes left running after `edgekit {' '.join(args)}`"
        return Outcome(proc, seconds, self.tmpdir)

    def error(self, *args: str, needle: str | tuple[str, ...], code: int = 2, max_seconds: float = 60,
              **kw: object) -> Outcome:
        """A clean refusal: ``code``, one `edgekit: error:` line containing every needle, nothing left."""
        out = self.run(*args, **kw)  # type: ignore[arg-type]
        p = out.proc
        assert p.returncode == code, f"exit {p.returncode}, expected {code}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
        assert "Traceback" not in p.stderr and "internal error" not in p.stderr, p.stderr[-3000:]
        assert len(out.lines) == 1, f"expected one stderr line, got {len(out.lines)}:\n{p.stderr[-3000:]}"
        assert out.lines[0].startswith("edgekit: error:"), out.lines[0]
        for n in (needle,) if isinstance(needle, str) else needle:
            assert n in out.lines[0], f"{n!r} not in {out.lines[0]!r}"
        assert out.seconds <= max_seconds, f"took {out.seconds:.1f} s (bound {max_seconds} s)"
        self.assert_clean()
        return out

    def assert_clean(self) -> None:
        left = [p.name for p in self.tmpdir.iterdir()]
        assert not left, f"left in $TMPDIR: {left}"


@pytest.fixture()
def faults(tmp_path: Path) -> FaultRunner:
    return FaultRunner(tmp_path)


def assert_untouched(path: Path, before: dict[str, bytes]) -> None:
    """``path`` holds exactly the files it held before (same bytes), nothing more."""
    now = snapshot(path)
    assert now == before, f"{path} changed: {sorted(set(now) ^ set(before)) or 'contents differ'}"


def snapshot(path: Path) -> dict[str, bytes]:
    if not path.exists():
        return {}
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(path.rglob("*"))}
