"""Interoperation with MLPerf Tiny's own code (mlcommons/tiny).

- `edgekit bench` against a device double that behaves as the reference firmware's C sources do
  (tests/doubles/mlperf_dut.py: 80-character command buffer, CRLF, its error strings and quirks): bench
  completes, its latencies equal the device's own timestamps (through a 32-bit wrap), and each benchmark
  model gets its input in its own convention.
- MLPerf Tiny's runner (``benchmark/runner``, unchanged; USB discovery replaced by
  tests/doubles/mlperf_runner_shim.py) completes performance-mode runs against `edgekit device-sim`
  and against the reference double; needs ``MLPERF_TINY_ROOT`` (a mlcommons/tiny checkout).
- The same runner against the generated QEMU firmware; needs ``MLPERF_TINY_ROOT`` and ``TFLM_ROOT``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.doubles.faults import Faults, FaultyDevice, MemoryTransport
from tests.doubles.mlperf_dut import Clock, ReferenceDut

pytestmark = pytest.mark.slow
TINY = os.environ.get("MLPERF_TINY_ROOT", "")
RUNNER = Path(TINY) / "benchmark" / "runner"


def _runner_missing() -> str | None:
    if not TINY:
        return "MLPERF_TINY_ROOT is not set (a mlcommons/tiny checkout; its benchmark/runner is run unchanged)"
    if not (RUNNER / "main.py").is_file():
        return f"no benchmark/runner/main.py under MLPERF_TINY_ROOT={TINY}"
    return None


# ------------------------------------------------------------------ the reference double's behaviour


class Wire:
    def __init__(self, model: bytes, model_id: str = "ic01", **kw: object) -> None:
        self.out = bytearray()
        self.dut = ReferenceDut(model_id, model, write=self.out.extend, **kw)  # type: ignore[arg-type]

    def say(self, text: str) -> str:
        self.out.clear()
        self.dut.receive(text.encode())
        return self.out.decode("latin-1")


def test_the_reference_double_answers_as_the_c_sources_do(models: dict[str, Path]) -> None:
    w = Wire(models["int8"].read_bytes())
    boot = w.out.decode()
    assert re.fullmatch(r"m-timestamp-mode-performance\r\nm-lap-us-\d+\r\nm-init-done\r\nm-ready\r\n", boot)
    assert w.say("name%") == "m-name-dut-[unspecified]\r\nm-ready\r\n"
    assert w.say("profile%") == "m-profile-[ULPMark for tinyML Firmware V0.0.1]\r\nm-model-[ic01]\r\nm-ready\r\n"
    assert w.say("bogus 1 2%") == "e-[Unknown command: bogus]\r\nm-ready\r\n"
    assert w.say("%") == "e-[Unknown command: (null)]\r\nm-ready\r\n"
    assert w.say("db%") == "e-[Command 'db' requires a subcommand]\r\nm-ready\r\n"
    assert w.say("db load%") == "e-[Command 'db load' requires the # of bytes]\r\nm-ready\r\n"
    assert w.say("db load 0%") == "e-[Command 'db load' must be >0 bytes]\r\nm-ready\r\n"
    assert w.say("db load 3073%") == "Supplied buffer size 3073 exceeds maximum of 3072\nm-ready\r\n"
    assert w.say("db load 64%") == "m-[Expecting 64 bytes]\r\nm-ready\r\n"
    # edgekit's old 64-byte lines: 131 characters, cut to 80, an odd digit count
    assert w.say("db " + "ab" * 64 + "%") == "e-[Insufficent number of hex digits]\r\nm-ready\r\n"
    assert w.say("db 0g%") == "e-[Invalid hex digit '0g']\r\nm-ready\r\n"
    assert w.say("infer%").startswith("Input db has 0 elemented, expected 64\nm-warmup-start-10\r\n")
    assert w.say("db " + "01" * 31 + "%") == "m-ready\r\n"
    assert w.say("db " + "02" * 31 + "%") == "m-ready\r\n"
    assert w.say("db 0304ffff%") == "m-load-done\r\nm-ready\r\n"  # the rest of the line is ignored
    assert w.say("db print%").startswith("m-buffer-01-01-01-01-01-01-01-01\r\n")
    assert w.say("infer 0%") == "e-[Inference iterations must be >0]\r\nm-ready\r\n"
    assert w.say("infer -3%") == "e-[Inference iterations must be >0]\r\nm-ready\r\n"
    assert w.say("infer 2 -1%") == "e-[Inference warmup must be >=0]\r\nm-ready\r\n"
    out = w.say("infer 2%")
    assert re.fullmatch(r"m-warmup-start-10\r\nm-warmup-done\r\nm-infer-start-2\r\nm-lap-us-\d+\r\nm-lap-us-\d+\r\n"
                        r"m-infer-done\r\nm-results-\[(-?\d+\.\d{3},){9}-?\d+\.\d{3}\]\r\nm-ready\r\n", out), out
    assert w.dut.commands[-1] == "infer 2" and all(len(c) <= 80 for c in w.dut.commands)
    assert w.say("infer 1 abc%").startswith("m-warmup-start-0\r\n")  # atoi("abc") is 0 warm-ups


def test_the_reference_double_prints_each_models_results(models: dict[str, Path]) -> None:
    model = models["int8"].read_bytes()
    vww = Wire(model, "vww01")
    vww.say("db load 64%")
    vww.say("db " + "00" * 31 + "%")
    vww.say("db " + "00" * 33 + "%")
    assert re.search(r"m-results-\[(\d\.\d{3},){10}\]", vww.say("infer 1 0%"))  # the trailing comma
    kws = Wire(model, "kws01")
    kws.say("db load 64%")
    kws.say("db " + "00" * 31 + "%")
    kws.say("db " + "00" * 33 + "%")
    assert re.search(r"m-results-\[(0\.\d+,){9}0\.\d+\]", kws.say("infer 1 0%"))
    ad = Wire(model, "ad01")
    assert ad.say("db load 5120%") == "m-[Expecting 5120 bytes]\r\nm-ready\r\n"  # two inputs fit
    assert ad.say("db load 5121%").startswith("Supplied buffer size 5121 exceeds maximum of 5120\n")


# ------------------------------------------------------------------ bench against the reference double


@contextmanager
def served(model: Path, *flags: str) -> Iterator[str]:
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


def _laps(log: Path) -> list[dict[str, int]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_bench_window_method_equals_the_devices_timestamps(models: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "laps.jsonl"
    with served(models["int8"], "--model-id", "ic01", "--baud", "115200", "--log", str(log)) as port:
        proc = run_cli("bench", str(models["int8"]), "-t", "cortex-m4", "--port", port, "--window-seconds", "0.3",
                       "--warmup", "2", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["method"] == "window" and r["extensions"] is False and r["mlperf_model"] == "ic01"
    assert r["upload_bytes_per_line"] == 31
    windows = [lap for lap in _laps(log) if lap["w"] == 2]
    assert len(windows) == 5 and all(w["n"] == r["window_inferences"] for w in windows)
    assert r["latencies_us"] == [((w["t1"] - w["t0"]) % 2**32) / w["n"] for w in windows]
    # each window is sized from a calibration run to last the time asked for; the double runs on this host's
    # clock, so a busy host can make a window shorter than planned: a loose bound, not the exact figure
    assert all((w["t1"] - w["t0"]) % 2**32 >= 0.25 * 0.3e6 for w in windows)
    assert r["throughput_inf_per_s"] == pytest.approx(1e6 / float(np.median(r["latencies_us"])), rel=1e-9)


def test_bench_per_inference_equals_the_devices_timestamps_across_a_wrap(models: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    log = tmp_path / "laps.jsonl"
    # the 32-bit microsecond counter wraps 50 us into the third `infer` (the second timed run)
    with served(models["int8"], "--model-id", "kws01", "--baud", "115200", "--log", str(log), "--wrap-in", "50",
                "--wrap-at-infer", "3") as port:
        proc = run_cli("bench", str(models["int8"]), "-t", "cortex-m4", "--port", port, "--method", "per-inference",
                       "--runs", "6", "--warmup", "1", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    timed = [lap for lap in _laps(log) if lap["n"] == 1 and lap["w"] == 0]
    assert len(timed) == 6 and timed[1]["t1"] < timed[1]["t0"]  # the wrap happened inside a timed window
    assert r["latencies_us"] == [float((t["t1"] - t["t0"]) % 2**32) for t in timed]
    assert all(0 < v < 1e6 for v in r["latencies_us"])
    # per-inference against the reference includes the UART line it prints inside the window
    assert any("start stamp is printed inside the timed window" in n for n in r["notes"])
    assert min(r["latencies_us"]) > 12 * 10 / 115200 * 1e6  # "m-lap-us-N\r\n" at 115200 baud, 8N1


@pytest.mark.parametrize("model_id", ["ic01", "vww01", "kws01", "ad01"])
def test_each_benchmark_model_gets_its_input_convention(models: dict[str, Path], model_id: str) -> None:
    from edgekit.analysis.graph import read_graph
    from edgekit.bench.mlperf import quantize_like_reference
    from edgekit.bench.runner import bench
    from edgekit.evaluate import _quantize

    model = models["int8"].read_bytes()
    dut = ReferenceDut(model_id, model, clock=Clock())
    r = bench(models["int8"], "cortex-m4", MemoryTransport(FaultyDevice(dut, Faults())), method="per-inference",
              runs=3, warmup=0, input_path=str(models["calib"]))
    x = np.load(models["calib"])["x"][:1].astype(np.float32)
    t = read_graph(model).input_tensors()[0]
    if model_id == "ad01":
        want = quantize_like_reference(x, t.scale[0], t.zero_point[0])
    else:
        want = _quantize(x, np.int8, t.scale[0], t.zero_point[0])
    assert np.array_equal(dut.input.reshape(-1), np.asarray(want).reshape(-1))
    assert r.mlperf_model == model_id and model_id in r.input_convention
    loads = [c for c in dut.commands if c.startswith("db load")]
    assert loads == [f"db load {64 * (4 if model_id == 'ad01' else 1)}"]
    assert all(len(c) <= 80 for c in dut.commands)  # nothing cut by the reference's command buffer
    assert r.latencies_us == [float((t1 - t0) % 2**32) for n, t0, t1 in dut.laps[-3:]]


# ------------------------------------------------------------------ MLPerf Tiny's runner


def _dataset(root: Path, model_id: str, payload: list[bytes], send: int = 0, stride: int = 0) -> Path:
    """A data set in the runner's layout: MODEL_ID/y_labels.csv (file, classes, class, bytes_to_send, stride)."""
    folder = root / model_id
    folder.mkdir(parents=True)
    rows = []
    for i, data in enumerate(payload):
        (folder / f"sample{i}.bin").write_bytes(data)
        rows.append(f"sample{i}.bin,10,{i % 2},{send or len(data)},{stride}")
    (folder / "y_labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _run_runner(port: str, data: Path, work: Path, device_list: str, test_script: str) -> tuple[str, list]:  # type: ignore[type-arg]
    proc = subprocess.run([sys.executable, "-m", "tests.doubles.mlperf_runner_shim", "--runner", str(RUNNER),
                           "--port", port, "--workdir", str(work), "--", f"--dataset_path={data}",
                           f"--test_script={test_script}", f"--device_list={device_list}", "--mode=p"],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]),
                                                                            os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = list(work.glob("sessions/*/results.json"))
    assert len(results) == 1, proc.stdout[-2000:]
    text = (results[0].parent / "results.txt").read_text()
    return text, json.loads(results[0].read_text())


@contextmanager
def device_sim(model: Path, *flags: str) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "device-sim", str(model), "--stop-after", "300",
                             *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/"), proc.stderr.read() if proc.stderr else ""
        yield path
    finally:
        proc.kill()
        proc.wait()


def _host_outputs(model: Path, q: np.ndarray) -> np.ndarray:
    from edgekit.analysis.graph import read_graph
    from edgekit.evaluate import _dequantize, tflm_session

    t = read_graph(model.read_bytes()).input_tensors()[0]
    x = _dequantize(q, t.scale[0], t.zero_point[0]).reshape(1, *t.shape[1:])
    return tflm_session([model.read_bytes()], x)[0].outputs.reshape(-1)


def test_mlperf_runner_performance_mode_against_device_sim(models: dict[str, Path], tmp_path: Path) -> None:
    reason = _runner_missing()
    if reason:
        pytest.skip(reason)
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, 64, dtype=np.uint8).tobytes() for _ in range(5)]
    data = _dataset(tmp_path / "data", "ic01", pixels)
    (tmp_path / "work").mkdir()
    with device_sim(models["int8"], "--mlperf-model", "ic01") as port:
        text, results = _run_runner(port, data, tmp_path / "work", "devices_kws_ic_vww.yaml", "tests_performance.yaml")
    windows = [r for r in results if "infer" in r]
    assert len(windows) == 5 and text.count("Performance results for window") == 5
    for r, px in zip(windows, pixels, strict=True):
        assert r["infer"]["iterations"] == 20 and r["infer"]["elapsed_time"] > 0
        # the runner's bytes are uint8 pixels; device-sim subtracts 128, as the ic01 reference does
        q = (np.frombuffer(px, dtype=np.uint8).astype(np.int16) - 128).astype(np.int8)
        assert r["infer"]["results"] == pytest.approx(_host_outputs(models["int8"], q).tolist(), abs=5.01e-4)
    # the emulator is faster than MLPerf's 10-second rule; the runner says so rather than failing
    assert "Median throughput is" in text or "ERROR 2 - loop exited before 10 seconds elapsed" in text


def test_mlperf_runner_anomaly_detection_against_device_sim(models: dict[str, Path], tmp_path: Path) -> None:
    reason = _runner_missing()
    if reason:
        pytest.skip(reason)
    rng = np.random.default_rng(1)
    spectrogram = rng.random(64 * 3, dtype=np.float32).tobytes()  # segments of 64 floats, stride 32 floats
    data = _dataset(tmp_path / "data", "ad01", [spectrogram] * 5, send=256, stride=128)
    (tmp_path / "work").mkdir()
    with device_sim(models["int8"], "--mlperf-model", "ad01") as port:
        _, results = _run_runner(port, data, tmp_path / "work", "devices_ad.yaml", "tests_performance.yaml")
    windows = [r for r in results if "infer" in r]
    assert len(windows) == 5 and all(len(r["infer"]["results"]) == 1 for r in windows)  # one anomaly score
    assert all(r["infer"]["iterations"] == 1500 for r in windows)


def test_mlperf_runner_against_the_reference_double(models: dict[str, Path], tmp_path: Path) -> None:
    reason = _runner_missing()
    if reason:
        pytest.skip(reason)
    rng = np.random.default_rng(2)
    inputs = [rng.integers(-128, 128, 64, dtype=np.int8).tobytes() for _ in range(5)]
    data = _dataset(tmp_path / "data", "kws01", inputs)
    (tmp_path / "work").mkdir()
    with served(models["int8"], "--model-id", "kws01") as port:
        _, results = _run_runner(port, data, tmp_path / "work", "devices_kws_ic_vww.yaml", "tests_performance.yaml")
    windows = [r for r in results if "infer" in r]
    assert len(windows) == 5 and all(r["infer"]["iterations"] == 70 for r in windows)
    assert all(len(r["infer"]["results"]) == 10 for r in windows)


def test_mlperf_runner_valid_run_of_at_least_10_seconds(models: dict[str, Path], tmp_path: Path) -> None:
    """A run that meets MLPerf Tiny's rules (5 windows, the loop lasting >= 10 s, sized with `edgekit bench
    --method window` on the same device): the runner prints its median throughput."""
    reason = _runner_missing()
    if reason:
        pytest.skip(reason)
    rng = np.random.default_rng(3)
    data = _dataset(tmp_path / "data", "kws01", [rng.integers(-128, 128, 64, dtype=np.int8).tobytes()] * 5)
    (tmp_path / "work").mkdir()
    with device_sim(models["int8"], "--mlperf-model", "kws01", "--no-extensions") as port:
        proc = run_cli("bench", str(models["int8"]), "-t", "cortex-m4", "--port", port, "--window-seconds", "1.5",
                       "--windows", "1", "--json", timeout=120)
        assert proc.returncode == 0, proc.stderr
        # windows of ~3.3 s: the loop of 5 lasts >= 10 s even if the shared machine gets 1.6x faster meanwhile
        n = 2 * json.loads(proc.stdout)["window_inferences"]
        script = tmp_path / "tests_valid.yaml"
        script.write_text(f"kws01:\n  name: keyword_spotting\n  model: kws01\n  truth_file: y_labels.csv\n"
                          f"  script:\n    - loop 5:\n      - download\n      - infer {n} 10\n")
        text, results = _run_runner(port, data, tmp_path / "work", "devices_kws_ic_vww.yaml", str(script))
    median = re.search(r"Median throughput is\s+([\d.]+) inf\./sec\.", text)
    assert median, text
    windows = [r for r in results if "infer" in r]
    assert len(windows) == 5 and not any("error" in r for r in results)
    assert float(median.group(1)) == pytest.approx(float(np.median([w["infer"]["throughput"] for w in windows])),
                                                   rel=1e-3)


def test_mlperf_runner_against_the_qemu_firmware(models: dict[str, Path], tmp_path: Path) -> None:
    reason = _runner_missing()
    root = os.environ.get("TFLM_ROOT", "")
    lib = Path(root) / "gen/cortex_m_generic_cortex-m4+fp_default_cmsis_nn_gcc/lib/libtensorflow-microlite.a"
    if not reason and (not root or not lib.is_file()):
        reason = "TFLM_ROOT with a built Cortex-M4F TFLM library is needed for the QEMU firmware"
    for tool in ("arm-none-eabi-gcc", "cmake", "qemu-system-arm"):
        if not reason and shutil.which(tool) is None:
            reason = f"{tool} is not installed"
    if reason:
        pytest.skip(reason)
    fw, build = tmp_path / "fw", tmp_path / "build"
    proc = run_cli("scaffold", str(models["int8"]), "-t", "cortex-m4", "--build", "cmake", "-o", str(fw),
                   "--mlperf-model", "ic01", timeout=300)
    assert proc.returncode == 0, proc.stderr
    for cmd in (["cmake", "-S", str(fw), "-B", str(build), "-DBOARD=qemu", f"-DTFLM_ROOT={root}"],
                ["cmake", "--build", str(build), "-j2"]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    qemu = subprocess.Popen(["qemu-system-arm", "-M", "mps2-an386", "-display", "none", "-monitor", "none",
                             "-icount", "shift=0", "-semihosting-config", "enable=on,target=native",
                             "-kernel", str(build / "firmware.elf"), "-serial", "pty"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert qemu.stdout is not None
        line = qemu.stdout.readline()
        found = re.search(r"(/dev/pts/\d+)", line)
        assert found, line
        rng = np.random.default_rng(4)
        pixels = [rng.integers(0, 256, 64, dtype=np.uint8).tobytes() for _ in range(5)]
        data = _dataset(tmp_path / "data", "ic01", pixels)
        (tmp_path / "work").mkdir()
        text, results = _run_runner(found.group(1), data, tmp_path / "work", "devices_kws_ic_vww.yaml",
                                    "tests_performance.yaml")
    finally:
        qemu.kill()
        qemu.wait()
    windows = [r for r in results if "infer" in r]
    assert len(windows) == 5 and text.count("Performance results for window") == 5
    for r, px in zip(windows, pixels, strict=True):
        q = (np.frombuffer(px, dtype=np.uint8).astype(np.int16) - 128).astype(np.int8)
        assert r["infer"]["results"] == pytest.approx(_host_outputs(models["int8"], q).tolist(), abs=5.01e-4)
