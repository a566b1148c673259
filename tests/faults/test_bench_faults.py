"""Fault injection for `edgekit bench` over the serial protocol, and bench's bad inputs.

The device is the MLPerf Tiny reference double (or edgekit's device-sim engine) behind a faulty line
(tests/doubles/faults.py) on a real pseudo-terminal, and the real CLI runs against it. Every case
asserts the exit code, exactly one stderr line (no traceback, no "internal error"), nothing written to
the output directory unless bench succeeded, and a bounded time. A soak drives bench through 10,000+
commands under random faults in-process and checks that memory stays bounded.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.doubles.faults import Faults, FaultyDevice, MemoryTransport
from tests.doubles.mlperf_dut import Clock, ReferenceDut

pytestmark = pytest.mark.slow
FAST = {"EDGEKIT_READ_TIMEOUT": "1", "EDGEKIT_DRAIN_SECONDS": "0.5"}


@contextmanager
def faulty(model: Path, *flags: str) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.doubles.serve_dut", str(model), "--stop-after", "120",
                             *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/"), proc.stderr.read() if proc.stderr else ""
        yield path
    finally:
        proc.kill()
        proc.wait()


def _bench(model: Path, port: str, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    proc = run_cli("bench", str(model), "-t", "cortex-m4", "--port", port, "--method", "per-inference", "--runs", "3",
                   "--warmup", "1", "-o", str(out), *extra, env=FAST, timeout=120)
    return proc, time.monotonic() - t0


def _one_line_error(proc: subprocess.CompletedProcess[str], needle: str, code: int = 2) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgekit: error: ") and "internal error" not in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------ faults on the line


FAILING = [
    ("endless log lines from the start", ["--endless-after", "0"], "it sent"),
    ("endless binary noise from the start", ["--endless-after", "0", "--endless", "binary"], "it sent"),
    ("endless stream in the middle of the upload", ["--endless-after", "5"], "after 'db "),
    ("every byte lost", ["--drop", "1.0"], "it sent nothing at all"),
    ("every byte corrupted", ["--corrupt", "1.0", "--seed", "3"], "no m-ready"),
    ("every byte duplicated", ["--duplicate", "1.0"], "no m-ready"),
    ("a reset in the middle of every fourth answer", ["--reset-every", "4"], "reset twice"),
    ("a timer that does not run", ["--frozen-timer"], "timer did not advance"),
    ("commands corrupted on the way to the device", ["--corrupt", "1.0", "--to-device", "--seed", "5"], ""),
]


@pytest.mark.parametrize(("case", "flags", "needle"), FAILING, ids=[c[0] for c in FAILING])
def test_a_faulty_line_is_one_clear_error(models: dict[str, Path], tmp_path: Path, case: str, flags: list[str],
                                          needle: str) -> None:
    with faulty(models["int8"], "--model-id", "kws01", *flags) as port:
        proc, seconds = _bench(models["int8"], port, tmp_path / "out")
    line = _one_line_error(proc, needle)
    assert not (tmp_path / "out").exists()
    assert seconds < 30, f"{case}: {seconds:.1f} s"
    if "endless" in case:
        assert "bytes, the last:" in line  # says what arrived


def test_answers_split_into_single_bytes_with_delays_still_bench(models: dict[str, Path], tmp_path: Path) -> None:
    with faulty(models["int8"], "--model-id", "kws01", "--split", "1", "--delay", "0.0005") as port:
        proc, seconds = _bench(models["int8"], port, tmp_path / "out", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "" and seconds < 60
    r = json.loads(proc.stdout)
    assert len(r["latencies_us"]) == 3 and all(v > 0 for v in r["latencies_us"])
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["latencies_us"] == r["latencies_us"]


def test_one_reset_mid_answer_is_survived(models: dict[str, Path], tmp_path: Path) -> None:
    # commands: name, profile, edgekit-info, db load, 3 x db, warm-up, run 1, run 2 (10th: cut by the reset);
    # then name, db load, 3 x db, runs 2 and 3: done before the 20th
    with faulty(models["int8"], "--model-id", "kws01", "--reset-every", "10") as port:
        proc, _ = _bench(models["int8"], port, tmp_path / "out", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["resyncs"] == 1 and any("reset once mid-run" in n for n in r["notes"])


def test_an_edgekit_device_behind_a_lossy_line_fails_cleanly(models: dict[str, Path], tmp_path: Path) -> None:
    with faulty(models["int8"], "--sim", "--drop", "0.02", "--seed", "11") as port:
        proc, seconds = _bench(models["int8"], port, tmp_path / "out")
    _one_line_error(proc, "")
    assert not (tmp_path / "out").exists() and seconds < 30


# ------------------------------------------------------------------ bad inputs


def test_a_regular_file_as_port(models: dict[str, Path], tmp_path: Path) -> None:
    f = tmp_path / "port.txt"
    f.write_text("not a port")
    proc, _ = _bench(models["int8"], str(f), tmp_path / "out")
    _one_line_error(proc, "is a regular file, not a serial port")
    assert not (tmp_path / "out").exists()


def test_a_directory_as_port(models: dict[str, Path], tmp_path: Path) -> None:
    proc, _ = _bench(models["int8"], str(tmp_path), tmp_path / "out")
    _one_line_error(proc, "is a directory, not a serial port")


def test_dev_null_as_port(models: dict[str, Path], tmp_path: Path) -> None:
    proc, _ = _bench(models["int8"], "/dev/null", tmp_path / "out")
    _one_line_error(proc, "not a serial port")
    assert "busy or doesn't exist" not in proc.stderr


@pytest.mark.parametrize("baud", ["-1", "0", "fast"])
def test_invalid_baud(models: dict[str, Path], tmp_path: Path, baud: str) -> None:
    proc, _ = _bench(models["int8"], "/dev/null", tmp_path / "out", f"--baud={baud}")
    _one_line_error(proc, "--baud")


def test_missing_model(tmp_path: Path) -> None:
    proc = run_cli("bench", str(tmp_path / "nosuch.tflite"), "-t", "cortex-m4", "--port", "/dev/null",
                   "-o", str(tmp_path / "out"), timeout=60)
    _one_line_error(proc, "model file")
    assert "does not exist" in proc.stderr and not (tmp_path / "out").exists()


def test_input_npz_without_x(models: dict[str, Path], tmp_path: Path) -> None:
    np.savez(tmp_path / "in.npz", y=np.zeros(3))
    proc, _ = _bench(models["int8"], "/dev/null", tmp_path / "out", "--input", str(tmp_path / "in.npz"))
    _one_line_error(proc, "has no array 'x' (it has: y)")


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("empty.npz", b"", "No data left in file"),
    ("garbage.npy", bytes(range(256)) * 4, "not a NumPy array file"),
    ("text.npy", b"1,2,3\n", "not a NumPy array file"),
])
def test_unreadable_input(models: dict[str, Path], tmp_path: Path, name: str, content: bytes, needle: str) -> None:
    (tmp_path / name).write_bytes(content)
    proc, _ = _bench(models["int8"], "/dev/null", tmp_path / "out", "--input", str(tmp_path / name))
    line = _one_line_error(proc, needle)
    assert "allow_pickle" not in line and "unsafely" not in line


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"target": ""}', "\xff\xfe"])
def test_bad_project_manifest(tmp_path: Path, content: str) -> None:
    (tmp_path / "fw").mkdir()
    (tmp_path / "fw" / "edgekit-project.json").write_bytes(content.encode("latin-1"))
    proc = run_cli("bench", str(tmp_path / "fw"), "--port", "/dev/null", "-o", str(tmp_path / "out"), timeout=60)
    _one_line_error(proc, "edgekit-project.json")
    assert not (tmp_path / "out").exists()


def test_too_many_runs(models: dict[str, Path], tmp_path: Path) -> None:
    proc = run_cli("bench", str(models["int8"]), "-t", "cortex-m4", "--port", "/dev/null", "--runs", "1000000000",
                   "-o", str(tmp_path / "out"), timeout=60)
    _one_line_error(proc, "more than bench takes")
    assert not (tmp_path / "out").exists()


def test_progress_is_shown_on_a_terminal(models: dict[str, Path], tmp_path: Path) -> None:
    import os
    import pty

    master, slave = pty.openpty()
    try:
        with faulty(models["int8"], "--model-id", "kws01") as port:
            proc = subprocess.run([sys.executable, "-m", "edgekit", "bench", str(models["int8"]), "-t", "cortex-m4",
                                   "--port", port, "--method", "per-inference", "--runs", "40", "--warmup", "0"],
                                  stdout=subprocess.PIPE, stderr=slave, text=True, timeout=120, check=False)
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0, shown
    assert b"bench 40/40:" in shown and b"\r" in shown  # one line, rewritten in place


@pytest.mark.parametrize("flags", [["--stop-after", "-1"], ["--reset-after", "-2"], ["--stop-after", "0"]])
def test_device_sim_refuses_negative_settings(models: dict[str, Path], flags: list[str]) -> None:
    proc = run_cli("device-sim", str(models["int8"]), *flags, timeout=60)
    _one_line_error(proc, flags[0])


# ------------------------------------------------------------------ the soak


def test_soak_ten_thousand_commands_under_random_faults(models: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """bench, in-process, against the reference double behind a line with random faults (seeded), until
    10,000 commands were sent: every run ends in a result or an edgekit error within its deadlines, and
    the process's memory does not grow (resident set size after each run; tracemalloc would slow the
    soak several times over)."""
    import psutil

    from edgekit.bench.runner import bench
    from edgekit.errors import EdgekitError
    from edgekit.profiles import load_profile

    monkeypatch.setenv("EDGEKIT_READ_TIMEOUT", "0.05")
    monkeypatch.setenv("EDGEKIT_INFER_TIMEOUT", "0.5")
    monkeypatch.setenv("EDGEKIT_DRAIN_SECONDS", "0.01")
    profile = load_profile("cortex-m4")
    model = models["int8"].read_bytes()
    rng = random.Random(0)
    me = psutil.Process()
    outcomes: Counter[str] = Counter()
    commands, calls, slowest = 0, 0, 0.0
    rss: list[int] = []
    t_start = time.monotonic()
    while commands < 10_000:
        faults = Faults(drop=rng.choice([0.0, 0.0, 1e-4, 1e-3]), duplicate=rng.choice([0.0, 0.0, 1e-4]),
                        corrupt=rng.choice([0.0, 0.0, 1e-4]), split=rng.choice([0, 0, 1, 7]),
                        reset_every=rng.choice([0, 0, 0, 97, 300]), endless_after=rng.choice([-1] * 9 + [150]),
                        endless=rng.choice(["lines", "binary"]), seed=rng.randrange(1 << 30))
        device = FaultyDevice(ReferenceDut("kws01", model, clock=Clock()), faults)
        t0 = time.monotonic()
        try:
            bench(models["int8"], profile, MemoryTransport(device), method="per-inference", runs=200, warmup=0)
            outcomes["ok"] += 1
        except EdgekitError as exc:  # anything else is a bug and fails the test
            outcomes[type(exc).__name__] += 1
        slowest = max(slowest, time.monotonic() - t0)
        commands += device.commands
        calls += 1
        rss.append(me.memory_info().rss)
    seconds = time.monotonic() - t_start
    half = len(rss) // 2
    print(f"\nsoak: {commands} commands in {calls} bench runs, {seconds:.1f} s, slowest run {slowest:.2f} s, "
          f"RSS {rss[0] / 1e6:.0f} MB after the first run, {max(rss) / 1e6:.0f} MB at most, "
          f"outcomes {dict(outcomes)}")
    assert commands >= 10_000 and outcomes["ok"] > 0 and len(outcomes) > 1
    assert slowest < 10  # every phase has a deadline
    assert max(rss[half:]) < max(rss[:half]) + 16e6  # no growth over the second half
    assert max(rss) < rss[0] + 64e6  # bounded, even with endless streams (4 MiB per answer at most)
