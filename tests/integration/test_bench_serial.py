"""bench over real pseudo-terminals against the device emulator (a child process speaking the
protocol with the model on the TFLM host interpreter), and the robustness cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@contextmanager
def device(model: Path, *flags: str) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "device-sim", str(model), "--stop-after", "120",
                             *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/"), proc.stderr.read() if proc.stderr else ""
        yield path
    finally:
        proc.kill()
        proc.wait()


def _bench(model: Path, port: str, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return run_cli("bench", str(model), "-t", "cortex-m4", "--port", port, "--runs", "8", "--warmup", "1", *extra,
                   env=env, timeout=120)


def _one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_bench_against_the_emulator(models: dict[str, Path], tmp_path: Path) -> None:
    with device(models["int8"]) as port:
        proc = _bench(models["int8"], port, "--json", "-o", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["extensions"] is True and r["runs"] == 8 and len(r["latencies_us"]) == 8
    assert r["method"] == "per-inference" and r["upload_bytes_per_line"] == 64  # edgekit-info's cmd_buffer=256
    assert r["checks"]["model_hash"] == "match"
    assert r["checks"]["output"] == "exact match with the TFLM host interpreter"
    assert r["time_kind"].startswith("host")  # emulator latencies are labelled host times
    s = r["stats"]
    assert 0 < s["min_us"] <= s["median_us"] <= s["p90_us"] <= s["max_us"]
    assert r["wire_bytes_per_input_byte"] >= 2.0  # hex encoding
    assert (tmp_path / "rep" / "bench.json").is_file()
    assert "<rect" in (tmp_path / "rep" / "latency.svg").read_text()


def test_scaffolded_project_needs_only_the_port(models: dict[str, Path], tmp_path: Path) -> None:
    from edgekit.codegen.scaffold import scaffold

    scaffold(models["int8"], "cortex-m4", "cmake", tmp_path / "fw")
    with device(models["int8"]) as port:
        proc = run_cli("bench", str(tmp_path / "fw"), "--port", port, "--runs", "3", "--warmup", "0", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "(cortex-m4)" in proc.stdout and "check model_hash: match" in proc.stdout


def test_plain_mlperf_device_falls_back(models: dict[str, Path]) -> None:
    with device(models["int8"], "--no-extensions") as port:
        proc = _bench(models["int8"], port, "--window-seconds", "0.2")
    assert proc.returncode == 0, proc.stderr
    assert "check model_hash: not possible: the device knows no edgekit extensions" in proc.stdout
    assert "check output: not possible" in proc.stdout and "median" in proc.stdout
    # the default against a plain device is MLPerf Tiny's runner method, in lines that fit its 80-char buffer
    assert "method: window (MLPerf Tiny's runner method): 5 windows" in proc.stdout
    assert "31 bytes per line" in proc.stdout


def test_port_missing_names_it_with_a_dialout_hint(models: dict[str, Path]) -> None:
    proc = _bench(models["int8"], "/dev/ttyEDGEKIT-nonexistent")
    _one_line_error(proc, "/dev/ttyEDGEKIT-nonexistent")
    assert "dialout" in proc.stderr


def test_port_busy(models: dict[str, Path]) -> None:
    from edgekit.transports.serial_port import SerialTransport

    with device(models["int8"]) as port:
        holder = SerialTransport(port)
        holder.open()  # takes the port exclusively, as a terminal program would
        try:
            proc = _bench(models["int8"], port)
        finally:
            holder.close()
    _one_line_error(proc, "busy")


def test_silent_device_times_out(models: dict[str, Path]) -> None:
    with device(models["int8"], "--silent") as port:
        t0 = time.monotonic()
        proc = _bench(models["int8"], port, env={"EDGEKIT_READ_TIMEOUT": "1.5"})
    _one_line_error(proc, "within 1.5 s")
    assert time.monotonic() - t0 < 60


def test_garbage_and_partial_lines_are_survived(models: dict[str, Path]) -> None:
    with device(models["int8"], "--garbage") as port:
        proc = _bench(models["int8"], port)
    assert proc.returncode == 0, proc.stderr
    assert "garbage or partial lines" in proc.stdout and "exact match" in proc.stdout


def test_reset_mid_run_resyncs_once(models: dict[str, Path]) -> None:
    with device(models["int8"], "--reset-after", "10") as port:
        proc = _bench(models["int8"], port, "--runs", "5")
    assert proc.returncode == 0, proc.stderr
    assert "reset once mid-run" in proc.stdout


def test_repeated_resets_fail_clearly(models: dict[str, Path]) -> None:
    with device(models["int8"], "--reset-after", "4") as port:
        proc = _bench(models["int8"], port)
    _one_line_error(proc, "reset twice")


def test_model_hash_mismatch(models: dict[str, Path]) -> None:
    with device(models["int8"], "--wrong-hash") as port:
        proc = _bench(models["int8"], port)
    _one_line_error(proc, "different model")


def test_output_mismatch(models: dict[str, Path]) -> None:
    with device(models["int8"], "--corrupt-output") as port:
        proc = _bench(models["int8"], port)
    _one_line_error(proc, "differs from the TFLM host interpreter")
    assert "MISMATCH: 1 of 10 output bytes" in proc.stdout


def test_bench_against_qemu(models: dict[str, Path], tmp_path: Path) -> None:
    root = os.environ.get("TFLM_ROOT", "")
    lib = Path(root) / "gen/cortex_m_generic_cortex-m4+fp_default_cmsis_nn_gcc/lib/libtensorflow-microlite.a"
    if not root or not lib.is_file():
        pytest.skip("TFLM_ROOT with a built Cortex-M4F TFLM library is needed for the QEMU firmware")
    from edgekit.codegen.scaffold import scaffold

    scaffold(models["int8"], "cortex-m4", "cmake", tmp_path / "fw")
    for cmd in (["cmake", "-S", str(tmp_path / "fw"), "-B", str(tmp_path / "b"), "-DBOARD=qemu",
                 f"-DTFLM_ROOT={root}"], ["cmake", "--build", str(tmp_path / "b"), "-j2"]):
        assert subprocess.run(cmd, capture_output=True, check=False, timeout=900).returncode == 0
    medians = []
    for _ in range(2):
        proc = run_cli("bench", str(models["int8"]), "-t", "cortex-m4", "--qemu", str(tmp_path / "b"), "--runs", "5",
                       "--warmup", "1", "--json", timeout=300)
        assert proc.returncode == 0, proc.stderr
        r = json.loads(proc.stdout)
        assert r["time_kind"].startswith("virtual time") and r["checks"]["output"].startswith("exact match")
        assert r["checks"]["per_op"].endswith("operators") and any(o["op"] == "CONV_2D" for o in r["ops"])
        medians.append(r["stats"]["median_us"])
    assert abs(medians[0] - medians[1]) <= 1  # instruction-proportional virtual time repeats to +-1 tick
