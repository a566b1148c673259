"""The generated cmake scaffold, built against a real TFLM tree and run under QEMU (mps2-an386).

Needs TFLM_ROOT (a tflite-micro checkout whose Cortex-M4F library was built once with TFLM's Makefile,
see the generated CMakeLists.txt), arm-none-eabi-gcc, cmake and qemu-system-arm; skipped otherwise.
The fault-reporting test needs only arm-none-eabi-gcc and qemu-system-arm.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.integration import qemu_uart
from tests.integration.qemu_uart import Serial

pytestmark = [pytest.mark.slow, pytest.mark.tflm_tree]

TFLM_ROOT = os.environ.get("TFLM_ROOT", "")
LIB = "gen/cortex_m_generic_cortex-m4+fp_default_cmsis_nn_gcc/lib/libtensorflow-microlite.a"
QEMU = ["qemu-system-arm", "-M", "mps2-an386", "-display", "none", "-monitor", "none", "-serial", "stdio",
        "-icount", "shift=0", "-semihosting-config", "enable=on,target=native", "-kernel"]
M4F = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]


def _tools(*names: str) -> str | None:
    for tool in names:
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _requirements() -> str | None:
    if not TFLM_ROOT:
        return "TFLM_ROOT is not set (a tflite-micro checkout with its Cortex-M4F library built)"
    if not (Path(TFLM_ROOT) / LIB).is_file():
        return f"no TFLM library at $TFLM_ROOT/{LIB}: build it with the make command in the scaffold's CMakeLists.txt"
    return _tools("arm-none-eabi-gcc", "cmake", "qemu-system-arm")


@pytest.fixture
def tflm() -> None:
    reason = _requirements()
    if reason:
        pytest.skip(reason)


@contextmanager
def qemu(elf: Path) -> Iterator[Serial]:
    with qemu_uart.qemu(QEMU, elf) as serial:
        yield serial


def _build(project: Path, build: Path, *defs: str) -> Path:
    for cmd in (["cmake", "-S", str(project), "-B", str(build), f"-DTFLM_ROOT={TFLM_ROOT}", *defs],
                ["cmake", "--build", str(build), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return build / "firmware.elf"


_info = qemu_uart.info
_raw = qemu_uart.raw_output


def _host_on(model: bytes, q: np.ndarray) -> object:
    """The TFLM host interpreter's run on exactly the int8 input q (given as the floats that quantize to it)."""
    from edgekit.analysis.graph import read_graph
    from edgekit.evaluate import tflm_session

    inp = read_graph(model).input_tensors()[0]
    x = ((q.astype(np.float64) - inp.zero_point[0]) * inp.scale[0]).astype(np.float32)
    return tflm_session([model], x.reshape(1, *[max(d, 1) for d in inp.shape[1:]]))[0]


@pytest.fixture(scope="module")
def digits_fw(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The digits CNN scaffolded for cortex-m4 and built for BOARD=qemu: (project, firmware.elf)."""
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    from edgekit.codegen.scaffold import scaffold

    root = tmp_path_factory.mktemp("qemu")
    scaffold(models["int8"], "cortex-m4", "cmake", root / "fw", name="digits")
    return root / "fw", _build(root / "fw", root / "build", "-DBOARD=qemu")


def test_scaffold_builds_boots_and_matches_the_host_interpreter(models: dict[str, Path],
                                                                digits_fw: tuple[Path, Path]) -> None:
    from edgekit.analysis.graph import read_graph
    from edgekit.bench.protocol import COMMAND_BUFFER, UPLOAD_CHUNK
    from edgekit.evaluate import tflm_session

    model = models["int8"].read_bytes()
    graph = read_graph(model)
    x = np.load(models["calib"])["x"][:1].astype(np.float32)
    host = tflm_session([model], x)[0]
    inp = graph.input_tensors()[0]
    q = np.clip(np.round(x / inp.scale[0] + inp.zero_point[0]), -128, 127).astype(np.int8).tobytes()

    with qemu(digits_fw[1]) as serial:
        boot = serial.until(b"m-ready", timeout=120)
        assert "m-init-done" in boot and "e-[" not in boot, boot
        info = _info(serial.command("edgekit-info%"))
        used, least, reserved = int(info["arena_used"]), int(info["arena_min"]), int(info["arena_bytes"])
        assert 0 < used <= least <= reserved and least % 16 == 0
        # the 32-bit target needs less than the 64-bit host measured (pointer-sized bookkeeping)
        assert used <= host.arena_bytes
        assert info["cmd_buffer"] == str(COMMAND_BUFFER - 1) and info["timer_bits"] == "32"
        assert info["mlperf_model"] == "none" and info["board"] == "qemu-mps2-an386"
        assert info["clock_hz"] == "25000000"
        assert "m-model-[digits]" in serial.command("profile%")
        # one 64-byte upload line is 131 characters: within the command buffer the device reports
        assert len(f"db {q[:UPLOAD_CHUNK].hex()}") <= int(info["cmd_buffer"])
        assert "m-load-done" in serial.upload(q, UPLOAD_CHUNK)
        infer = serial.command("infer 3 1%", timeout=300)
        laps = [int(v) for v in re.findall(r"m-lap-us-(\d+)", infer)]
        assert "m-warmup-start-1" in infer and "m-infer-done" in infer and len(laps) == 2
        assert 0 < (laps[1] - laps[0]) % 2**32 < 10**7
        assert _raw(serial) == host.raw.tobytes()  # int8 CMSIS-NN kernels: exactly equal
        assert "CONV_2D" in serial.command("edgekit-ops%")
        print(f"\nQEMU: arena used {used} B, smallest that allocates {least} B on the 32-bit target, host "
              f"measured {host.arena_bytes} B, reserved {reserved} B; 3 inferences "
              f"{(laps[1] - laps[0]) % 2**32} us virtual time")
        assert "e-[Unknown command" in serial.command("nosuch%")
        serial.send("edgekit-exit%")
        assert serial.proc.wait(timeout=60) == 0


def test_runner_commands_follow_the_mlperf_reference(digits_fw: tuple[Path, Path]) -> None:
    """infer defaults and errors, db load bounds, odd hex, overlong commands: as MLPerf Tiny's runner API."""
    with qemu(digits_fw[1]) as serial:
        serial.until(b"m-ready", timeout=120)
        answer = serial.command("infer%")  # `infer`: 1 inference after 10 warm-ups
        assert "m-warmup-start-10" in answer and "m-infer-start-1\r\n" in answer
        answer = serial.command("infer 2%")
        assert "m-warmup-start-10" in answer and "m-infer-start-2" in answer  # `infer N`: 10 warm-ups
        assert "e-[Inference iterations must be >0]" in serial.command("infer 0%")
        assert "e-[Inference iterations must be >0]" in serial.command("infer -4%")
        assert "e-[Inference warmup must be >=0]" in serial.command("infer 1 -1%")
        assert "e-[Command 'db load' must be >0 bytes]" in serial.command("db load 0%")
        assert "exceeds the 64-byte input buffer" in serial.command("db load 65%")
        assert "m-[Expecting 10 bytes]" in serial.command("db load 10%")  # any 0 < N <= the buffer
        assert "e-[Insufficent number of hex digits]" in serial.command("db 123%")
        assert "m-load-done" in serial.command(f"db {'ab' * 10}%")
        assert "e-[Input db has 10 bytes, expected 64]" in serial.command("infer 1 0%")
        assert "e-[command longer than 255 characters]" in serial.command("x" * 300 + "%")
        assert "m-name-dut-[edgekit-digits]" in serial.command("name%")  # the buffer recovered
        stamp = re.search(r"m-lap-us-(\d+)", serial.command("timestamp%"))
        assert stamp and int(stamp.group(1)) < 2**32


def test_arena_min_is_the_smallest_arena_that_allocates_and_tflm_says_why(
        digits_fw: tuple[Path, Path], tmp_path: Path) -> None:
    """Trim kTensorArenaSize to the reported arena_min: it boots; 16 bytes less: TFLM's own reason comes out."""
    project, elf = digits_fw
    with qemu(elf) as serial:
        serial.until(b"m-ready", timeout=120)
        least = int(_info(serial.command("edgekit-info%"))["arena_min"])
    for arena, boots in ((least, True), (least - 16, False)):
        trimmed = tmp_path / f"fw{arena}"
        shutil.copytree(project, trimmed)
        settings = trimmed / "src" / "model_settings.h"
        text, n = re.subn(r"kTensorArenaSize = \d+;", f"kTensorArenaSize = {arena};", settings.read_text())
        assert n == 1
        settings.write_text(text)
        with qemu(_build(trimmed, tmp_path / f"build{arena}", "-DBOARD=qemu")) as serial:
            boot = serial.until(b"m-ready", timeout=120)
        if boots:
            assert "e-[" not in boot, boot
        else:
            # TFLM's message, forwarded through its debug-log callback, then the firmware's own line
            assert re.search(r"e-\[TFLM: [^\]]*(Failed|failed)[^\]]*\]", boot), boot
            assert f"e-[AllocateTensors failed with the {arena}-byte tensor arena" in boot


def test_switching_board_never_keeps_the_other_cores_library(models: dict[str, Path], tmp_path: Path,
                                                             tflm: None) -> None:
    """One build folder: BOARD=qemu (Cortex-M4F), then BOARD=generic for a Cortex-M7 target. Only the M4F
    library exists here, so the second configure must fail and name the M7 library, not link the M4F one."""
    from edgekit.codegen.scaffold import scaffold

    scaffold(models["int8"], "cortex-m7", "cmake", tmp_path / "fw")
    build = tmp_path / "build"
    m7_lib = Path(TFLM_ROOT) / "gen/cortex_m_generic_cortex-m7+fp_default_cmsis_nn_gcc/lib/libtensorflow-microlite.a"
    first = subprocess.run(["cmake", "-S", str(tmp_path / "fw"), "-B", str(build), "-DBOARD=qemu",
                            f"-DTFLM_ROOT={TFLM_ROOT}"], capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr
    assert "cortex-m4+fp" in first.stdout
    second = subprocess.run(["cmake", "-S", str(tmp_path / "fw"), "-B", str(build), "-DBOARD=generic"],
                            capture_output=True, text=True, timeout=300, check=False)
    if m7_lib.is_file():
        assert second.returncode == 0 and str(m7_lib) in second.stdout
    else:
        assert second.returncode != 0
        assert "needs TFLM built for cortex-m7+fp" in second.stderr and str(m7_lib) in second.stderr


# ---------------------------------------------------------------- MLPerf Tiny input conventions


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small int8 dense autoencoder (64 -> 8 -> 64), the shape of MLPerf Tiny's AD01 at a smaller size."""
    from edgekit import data, intake
    from edgekit._tf import keras, tf
    from edgekit.stages import quantize

    tf.random.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 64)).astype(np.float32)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(64)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, x, epochs=2, verbose=0)
    out = tmp_path_factory.mktemp("ad")
    model.save(out / "ad.keras")
    np.save(out / "calib.npy", x[:64])
    tfl = quantize.convert(intake.load(out / "ad.keras"), "int8", data.load(out / "calib.npy", (1, 64)), "int8")
    (out / "ad01.tflite").write_bytes(tfl)
    return out / "ad01.tflite"


def _round_half_away(r: np.ndarray) -> np.ndarray:
    r64 = r.astype(np.float64)
    return np.where(r64 >= 0, np.floor(r64 + 0.5), np.ceil(r64 - 0.5))


def test_mlperf_ic01_takes_uint8_pixels_and_subtracts_128(models: dict[str, Path], tmp_path: Path,
                                                         tflm: None) -> None:
    from edgekit.bench.protocol import UPLOAD_CHUNK
    from edgekit.codegen.scaffold import scaffold

    scaffold(models["int8"], "cortex-m4", "cmake", tmp_path / "fw", name="digits", mlperf_model="ic01")
    elf = _build(tmp_path / "fw", tmp_path / "build", "-DBOARD=qemu")
    model = models["int8"].read_bytes()
    q = np.random.default_rng(1).integers(-128, 128, size=64).astype(np.int8)
    pixels = (q.astype(np.int16) + 128).astype(np.uint8)  # what the MLPerf runner sends for IC
    host = _host_on(model, q)
    with qemu(elf) as serial:
        serial.until(b"m-ready", timeout=120)
        assert "m-model-[ic01]" in serial.command("profile%")
        assert _info(serial.command("edgekit-info%"))["mlperf_model"] == "ic01"
        assert "m-load-done" in serial.upload(pixels.tobytes(), UPLOAD_CHUNK)
        assert "m-infer-done" in serial.command("infer 1 0%", timeout=120)
        assert _raw(serial) == host.raw.tobytes()  # type: ignore[attr-defined]


def test_mlperf_ad01_quantizes_float32_on_the_device_and_prints_one_score(autoencoder: Path, tmp_path: Path,
                                                                          tflm: None) -> None:
    from edgekit.analysis.graph import read_graph
    from edgekit.bench.protocol import UPLOAD_CHUNK
    from edgekit.codegen.scaffold import scaffold

    scaffold(autoencoder, "cortex-m4", "cmake", tmp_path / "fw", mlperf_model="ad01")
    elf = _build(tmp_path / "fw", tmp_path / "build", "-DBOARD=qemu")
    model = autoencoder.read_bytes()
    graph = read_graph(model)
    inp, out = graph.input_tensors()[0], graph.output_tensors()[0]
    scale, zp = np.float32(inp.scale[0]), int(inp.zero_point[0])
    rng = np.random.default_rng(2)
    # half of the values sit exactly halfway between two quantization steps: there, rounding half away
    # from zero (the reference firmware's round()) and numpy's half-to-even differ
    halves = (rng.integers(-60, 60, size=32) + 0.5).astype(np.float32) * scale
    x = np.concatenate([halves, rng.normal(size=32).astype(np.float32)]).astype(np.float32)
    r = x / scale
    q = np.clip(_round_half_away(r) + zp, -128, 127).astype(np.int8)
    assert (q != np.clip(np.round(r) + zp, -128, 127).astype(np.int8)).any()  # the test can tell them apart
    host = _host_on(model, q)
    y = (host.raw.reshape(-1).astype(np.float32) - np.float32(out.zero_point[0])) * np.float32(out.scale[0])  # type: ignore[attr-defined]
    score = float(np.mean((y - x) ** 2, dtype=np.float32))
    with qemu(elf) as serial:
        serial.until(b"m-ready", timeout=120)
        assert "m-model-[ad01]" in serial.command("profile%")
        assert "m-[Expecting 256 bytes]" in serial.command("db load 256%")  # 64 float32 values
        assert "m-load-done" in serial.upload(x.astype("<f4").tobytes(), UPLOAD_CHUNK)
        answer = serial.command("infer 1 0%", timeout=120)
        results = re.search(r"m-results-\[([^\]]*)\]", answer)
        assert results and "," not in results.group(1), answer  # one anomaly score
        assert abs(float(results.group(1)) - score) <= 0.0015 + 1e-4 * score
        assert _raw(serial) == host.raw.tobytes()  # type: ignore[attr-defined]
        print(f"\nAD01-shaped autoencoder: device score {results.group(1)}, host {score:.4f}")


# ---------------------------------------------------------------- faults are reported, not silent

FAULT_MAIN = r"""
#include <stdint.h>
#include "board.h"
// a test program on the generated start-up code and QEMU board: 'u' executes an undefined instruction,
// 'i' pends interrupt 7, which has no handler
int main(void) {
  board_init();
  board_uart_write("m-fault-test-ready\r\n", 20);
  for (;;) {
    int c = board_uart_read();
    if (c < 0) { board_wait_input(); continue; }
    if (c == 'u') __asm__ volatile("udf #0");
    if (c == 'i') { *(volatile uint32_t*)0xE000E100u = 1u << 7; *(volatile uint32_t*)0xE000E200u = 1u << 7; }
  }
}
"""


@pytest.mark.parametrize("key, expected", [
    ("u", r"e-\[HardFault pc=0x[0-9a-f]{8} lr=0x[0-9a-f]{8} xpsr=0x[0-9a-f]{8} cfsr=0x00010000 hfsr=0x40000000"),
    ("i", r"e-\[unexpected interrupt \(no handler\) exception=0x00000017 pc=0x[0-9a-f]{8}"),
], ids=["undefined-instruction", "interrupt-without-handler"])
def test_faults_are_reported_on_the_uart(models: dict[str, Path], tmp_path: Path, key: str, expected: str) -> None:
    reason = _tools("arm-none-eabi-gcc", "qemu-system-arm")
    if reason:
        pytest.skip(reason)
    from edgekit.codegen.scaffold import scaffold

    fw = tmp_path / "fw"
    scaffold(models["int8"], "cortex-m4", "cmake", fw)
    (tmp_path / "main.c").write_text(FAULT_MAIN)
    elf = tmp_path / "fault.elf"
    cmd = ["arm-none-eabi-gcc", *M4F, "-Os", "-Wall", "-Wextra", "-Werror", "-DEDGEKIT_CLOCK_HZ=25000000u",
           f"-I{fw / 'src'}", str(tmp_path / "main.c"), str(fw / "src" / "startup.c"),
           "-x", "c++", str(fw / "src" / "systick_clock.cc"),
           str(fw / "boards" / "qemu" / "board.cc"), "-x", "none", f"-L{fw / 'boards'}",
           f"-T{fw / 'boards' / 'qemu' / 'linker.ld'}", "--specs=nano.specs", "--specs=nosys.specs", "-o", str(elf)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with qemu(elf) as serial:
        serial.until(b"m-fault-test-ready", timeout=60)
        serial.send(key)
        line = serial.until(b"]\r\n", timeout=60)
        assert re.search(expected, line), line
        assert serial.proc.wait(timeout=60) == 3  # board_exit(3) after the report: QEMU ends
