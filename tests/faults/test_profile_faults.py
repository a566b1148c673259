"""Fault injection for target profiles, through the real CLI: every bad profile is one stderr line and exit 2
(never a traceback, never a hang), and one broken file on EDGEKIT_TARGETS_PATH never hides the others."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import DATA, run_cli

TIME_LIMIT_S = 60  # a CLI start-up plus one profile load; generous for a loaded 2-core machine


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("edgekit: error: ") and "Traceback" not in stderr and "internal error" not in stderr
    return lines[0]


def test_targets_list_skips_a_non_utf8_profile_with_one_warning(tmp_path: Path) -> None:
    (tmp_path / "latin1.toml").write_bytes(b'schema_version = 1\ndescription = "caf\xe9"\ninherit = "cortex-m4"\n')
    (tmp_path / "mine.toml").write_text('schema_version = 1\ninherit = "cortex-m4"\ndescription = "my board"\n')
    start = time.monotonic()
    proc = run_cli("targets", "list", env={"EDGEKIT_TARGETS_PATH": str(tmp_path)}, timeout=TIME_LIMIT_S)
    assert time.monotonic() - start < TIME_LIMIT_S
    assert proc.returncode == 0, proc.stderr
    assert "cortex-m4" in proc.stdout and "mine" in proc.stdout and "latin1" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: warning: skipping target profile 'latin1'")
    assert "not UTF-8" in lines[0]


@pytest.mark.parametrize("make, needle", [
    (lambda d: d, "is a directory, not a profile file"),
    (lambda d: DATA / "targets" / "invalid_not_utf8.toml", "is not UTF-8 text"),
    (lambda d: DATA / "targets" / "invalid_negative_latency.toml", "latency_ms = -3"),
    (lambda d: DATA / "targets" / "invalid_negative_clock.toml", "clock_hz = -64"),
    (lambda d: DATA / "targets" / "invalid_huge_number.toml", "malformed profile"),
], ids=["directory", "not-utf8", "negative-latency", "negative-clock", "huge-number"])
def test_targets_show_refuses_in_one_line(tmp_path: Path, make: object, needle: str) -> None:
    target = make(tmp_path)  # type: ignore[operator]
    proc = run_cli("targets", "show", str(target), timeout=TIME_LIMIT_S)
    assert proc.returncode == 2
    assert needle in _one_error_line(proc.stderr)
    assert proc.stdout == ""


def test_a_fifo_named_like_a_profile_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "board.toml"
    os.mkfifo(fifo)
    proc = run_cli("targets", "show", str(fifo), timeout=TIME_LIMIT_S)
    assert proc.returncode == 2 and "not a regular file" in _one_error_line(proc.stderr)


def test_analyze_with_a_directory_target_names_the_directory(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\0" * 64)
    proc = run_cli("analyze", str(model), "--target", str(tmp_path), timeout=TIME_LIMIT_S)
    assert proc.returncode == 2
    assert "is a directory, not a profile file" in _one_error_line(proc.stderr)
