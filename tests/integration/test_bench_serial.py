"""bench over real pseudo-terminals against the device emulator (a child process speaking the
protocol with the model on the TFLM host interpreter), and the robustness cases."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
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
    assert r["method"] == "per-inference" and r["upload_bytes_per_line"] == 64  # edgekit-info's cmd_buffer=255
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
    assert r["host_overhead_ms_per_command"] is None  # virtual time: not comparable with the host clock
    # QEMU's TCP serial runs with nodelay=on: a command's round trip is milliseconds, not Nagle's ~45 ms
    from edgekit.bench.protocol import Client
    from edgekit.transports.qemu import QemuTransport

    with QemuTransport(tmp_path / "b") as t:
        c = Client(t)
        c.drain()
        trips = []
        for _ in range(20):
            t0 = time.perf_counter()
            c.command("timestamp")
            trips.append(time.perf_counter() - t0)
    assert sorted(trips)[10] < 0.025, trips


# ------------------------------------------------------------------ device-sim as an MLPerf Tiny device


class SimWire:
    def __init__(self, model: Path, **opts: object) -> None:
        from edgekit.sim.device import DeviceSim, SimOptions

        self.out = bytearray()
        self.sim = DeviceSim(model.read_bytes(), SimOptions(**opts), name=model.stem,  # type: ignore[arg-type]
                             write=self.out.extend)

    def say(self, cmd: str) -> str:
        self.out.clear()
        self.sim.handle(cmd)
        return self.out.decode()


def test_device_sim_follows_the_mlperf_tiny_device_api(models: dict[str, Path]) -> None:
    w = SimWire(models["int8"])
    assert "m-model-[cnn_int8]\r\n" in w.say("profile")  # the runner needs an m-model line
    assert w.say("infer 0") == "e-[Inference iterations must be >0]\r\nm-ready\r\n"
    assert w.say("infer -2 1") == "e-[Inference iterations must be >0]\r\nm-ready\r\n"
    assert w.say("infer 2 -1") == "e-[Inference warmup must be >=0]\r\nm-ready\r\n"
    assert w.say("db load 0") == "e-[Command 'db load' must be >0 bytes]\r\nm-ready\r\n"
    assert w.say("db load 65").startswith("e-[Supplied buffer size 65 exceeds maximum of 64]")
    assert w.say("db load 32") == "m-[Expecting 32 bytes]\r\nm-ready\r\n"  # any 0 < N <= the buffer
    assert w.say("db " + "00" * 32) == "m-load-done\r\nm-ready\r\n"
    assert w.say("infer").startswith("e-[Input db has 32 bytes, expected 64]")
    assert w.say("db 0") == "e-[Insufficent number of hex digits]\r\nm-ready\r\n"
    w.say("db load 64")
    w.say("db " + "01" * 64)
    assert w.say("infer").startswith("m-warmup-start-10\r\nm-warmup-done\r\nm-infer-start-1\r\n")  # infer = 1 10
    assert w.say("infer 3").startswith("m-warmup-start-10\r\n")
    info = w.say("edgekit-info")
    assert "cmd_buffer=255,timer_bits=32,mlperf_model=none]" in info
    assert w.say("x" * 300).startswith("e-[command too long")
    laps = [int(v) for v in re.findall(r"m-lap-us-(\d+)", w.say("infer 1 0"))]
    assert len(laps) == 2 and all(0 <= v < 2**32 for v in laps)


def test_device_sim_as_anomaly_detection(models: dict[str, Path]) -> None:
    w = SimWire(models["int8"], mlperf_model="ad01")
    assert "m-model-[ad01]" in w.say("profile") and "mlperf_model=ad01]" in w.say("edgekit-info")
    assert w.say("db load 512").startswith("m-[Expecting 512 bytes]")  # float32: 64 x 4 bytes, two inputs fit
    assert w.say("db load 513").startswith("e-[Supplied buffer size 513 exceeds maximum of 512]")
    w.say("db load 256")
    for _ in range(4):  # 16 floats a line
        out = w.say("db " + np.full(16, 0.25, dtype="<f4").tobytes().hex())
    assert out.startswith("m-load-done")
    results = re.findall(r"m-results-\[([^\]]*)\]", w.say("infer 1 0"))
    assert len(results) == 1 and re.fullmatch(r"\d+\.\d{3}", results[0])  # one anomaly score


def test_float_output_within_tolerance(models: dict[str, Path]) -> None:
    with device(models["float"], "--corrupt-output") as port:  # one bit of the first float: 1 ulp
        proc = _bench(models["float"], port, "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["checks"]["output"].startswith("float32 within tolerance of the TFLM host interpreter")
    assert 0 < r["output_error"]["max_abs"] < 1e-5 and 0 < r["output_error"]["max_rel"] < 1e-4


def test_float_output_beyond_tolerance_is_a_mismatch(models: dict[str, Path]) -> None:
    from edgekit.bench.protocol import Client
    from edgekit.bench.runner import _check_output
    from edgekit.evaluate import tflm_session
    from tests.unit.test_protocol_parser import Scripted

    x = np.load(models["calib"])["x"][:1].astype(np.float32)
    model = models["float"].read_bytes()
    host = tflm_session([model], x)[0].raw.astype("<f4")
    off = host.copy()
    off.reshape(-1)[int(np.argmax(host))] *= 1.01
    client = Client(Scripted([f"m-edgekit-output-[{off.tobytes().hex()}]\r\nm-ready\r\n".encode()]), timeout=1.0)
    text, err = _check_output(client, model, x)
    assert text.startswith("MISMATCH: float32 output differs") and err is not None
    assert err["max_rel"] == pytest.approx(0.01, rel=1e-3)


def test_host_overhead_only_where_the_device_clock_is_real_time(models: dict[str, Path]) -> None:
    from edgekit.bench.runner import bench
    from tests.doubles.faults import Faults, FaultyDevice, MemoryTransport
    from tests.doubles.mlperf_dut import Clock, ReferenceDut

    def run(kind: str):  # type: ignore[no-untyped-def]
        dut = ReferenceDut("kws01", models["int8"].read_bytes(), clock=Clock())
        return bench(models["int8"], "cortex-m4", MemoryTransport(FaultyDevice(dut, Faults())), runs=5, warmup=0,
                     method="per-inference", time_kind=kind)

    real = run("device")
    assert real.host_overhead_ms_per_command is not None and real.host_overhead_ms_per_command >= 0
    virtual = run("virtual time (QEMU -icount shift=7)")
    assert virtual.host_overhead_ms_per_command is None
    assert any("host overhead per command not computed" in n for n in virtual.notes)


def test_arena_figures_are_labelled(models: dict[str, Path]) -> None:
    """edgekit firmware reports arena_min (the smallest arena that allocates on the device) beside TFLM's
    arena_used_bytes(); bench reports both, and says which one the arena must be sized against."""
    from edgekit.bench.runner import bench
    from tests.doubles.faults import Faults, FaultyDevice, MemoryTransport
    from tests.doubles.serve_dut import SimEngine

    engine = SimEngine(models["int8"].read_bytes(), "cnn_int8", None)
    device = FaultyDevice(engine, Faults())
    plain = engine.write_raw
    engine.write_raw = lambda data: plain(data.replace(b",arena_used=", b",arena_min=7040,arena_used="))
    engine.boot()
    r = bench(models["int8"], "cortex-m4", MemoryTransport(device), runs=3, warmup=0)
    assert r.arena_min == 7040 and r.arena_used == engine.sim.arena_used
    assert r.checks["arena"].startswith("arena_min 7040 bytes (the smallest arena that allocates on the device")
    assert "not a safe arena size" in r.checks["arena"]
