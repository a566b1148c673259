"""The generated Zephyr project, built for QEMU's mps2-an385 (Cortex-M3) with Zephyr's TFLM module and run:
the benchmark protocol over its console UART, output bit-exact with the TFLM host interpreter, a working
clock, the running board's name, and an exit that ends QEMU.

Needs a Zephyr tree and its modules, named by environment variables (skipped with the reason otherwise):
  ZEPHYR_BASE       the zephyr/ folder of a workspace (tested with Zephyr 4.1.0)
  ZEPHYR_MODULES    ';'-separated module folders for CMake: cmsis (or cmsis_6), cmsis-dsp, cmsis-nn,
                    tflite-micro (and picolibc where the toolchain has none)
  ZEPHYR_TOOLCHAIN_VARIANT (+ GNUARMEMB_TOOLCHAIN_PATH, or the Zephyr SDK's variables)
  ZEPHYR_PYTHON     optional: a Python with Zephyr's scripts/requirements-base.txt (its folder goes first on PATH)
The first build compiles TFLM and CMSIS-NN inside the application: several minutes on 2 cores.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATA, run_cli
from tests.integration import qemu_uart

pytestmark = [pytest.mark.slow]

ZEPHYR_BASE = os.environ.get("ZEPHYR_BASE", "")
ZEPHYR_MODULES = os.environ.get("ZEPHYR_MODULES", "")
PROFILE = DATA / "targets" / "valid_qemu_cortex_m3.toml"
QEMU = ["qemu-system-arm", "-M", "mps2-an385", "-cpu", "cortex-m3", "-display", "none", "-monitor", "none",
        "-icount", "shift=0", "-semihosting-config", "enable=on,target=native"]
BUILD_TIMEOUT_S = 3600


def _requirements() -> str | None:
    if not ZEPHYR_BASE or not (Path(ZEPHYR_BASE) / "VERSION").is_file():
        return "ZEPHYR_BASE is not set to a Zephyr tree"
    modules = [m for m in ZEPHYR_MODULES.split(";") if m]
    if not any((Path(m) / "tensorflow" / "lite" / "micro").is_dir() for m in modules):
        return "ZEPHYR_MODULES does not name Zephyr's tflite-micro module"
    if not os.environ.get("ZEPHYR_TOOLCHAIN_VARIANT"):
        return "ZEPHYR_TOOLCHAIN_VARIANT is not set"
    for tool in ("cmake", "ninja", "dtc", "qemu-system-arm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    if os.environ.get("ZEPHYR_PYTHON"):
        env["PATH"] = str(Path(os.environ["ZEPHYR_PYTHON"]).parent) + os.pathsep + env["PATH"]
    return env


@pytest.fixture(scope="module")
def zephyr_fw(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """(project, zephyr.elf, build seconds) of the digits CNN's Zephyr project built for mps2/an385."""
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    from edgekit.codegen.scaffold import scaffold

    root = tmp_path_factory.mktemp("zephyr")
    project, build = root / "fw", root / "build"
    scaffold(models["int8"], str(PROFILE), "zephyr", project, name="digits")
    start = time.monotonic()
    for cmd in (["cmake", "-G", "Ninja", "-S", str(project), "-B", str(build), f"-DZEPHYR_MODULES={ZEPHYR_MODULES}"],
                ["ninja", "-C", str(build)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False, env=_env())
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    seconds = time.monotonic() - start
    elf = build / "zephyr" / "zephyr.elf"
    assert elf.is_file()
    config = (build / "zephyr" / ".config").read_text()
    assert "CONFIG_TENSORFLOW_LITE_MICRO_CMSIS_NN_KERNELS=y" in config and "CONFIG_NEWLIB_LIBC=y" not in config
    assert "CONFIG_SEMIHOST=y" in config  # boards/mps2_an385.conf was read
    return project, elf, seconds


def test_zephyr_firmware_serves_the_protocol_bit_exact(models: dict[str, Path],
                                                       zephyr_fw: tuple[Path, Path, float]) -> None:
    from edgekit.analysis.graph import read_graph
    from edgekit.bench.protocol import UPLOAD_CHUNK
    from edgekit.evaluate import tflm_session

    model = models["int8"].read_bytes()
    inp = read_graph(model).input_tensors()[0]
    x = np.load(models["calib"])["x"][3:4].astype(np.float32)
    q = np.clip(np.round(x / inp.scale[0] + inp.zero_point[0]), -128, 127).astype(np.int8)
    host = tflm_session([model], x)[0]
    with qemu_uart.qemu([*QEMU, "-serial", "stdio", "-kernel"], zephyr_fw[1]) as serial:
        boot = serial.until(b"m-ready", timeout=120)
        assert "m-init-done" in boot and "e-[" not in boot, boot
        info = qemu_uart.info(serial.command("edgekit-info%"))
        assert info["board"] == "mps2/an385" and info["clock_hz"] == "25000000"  # the running board, not "zephyr"
        assert info["timer_bits"] == "32" and info["cmd_buffer"] == "255"
        assert 0 < int(info["arena_used"]) <= int(info["arena_min"]) <= int(info["arena_bytes"])
        assert "m-load-done" in serial.upload(q.tobytes(), UPLOAD_CHUNK)
        spans = []
        for _ in range(2):
            answer = serial.command("infer 5 2%", timeout=300)
            laps = [int(v) for v in re.findall(r"m-lap-us-(\d+)", answer)]
            assert len(laps) == 2, answer
            spans.append((laps[1] - laps[0]) % 2**32)
        assert all(0 < s < 10**7 for s in spans), spans  # the clock runs (Zephyr 3.4's k_cycle_get_64 gave 0)
        assert abs(spans[0] - spans[1]) <= max(2, spans[0] // 100), spans  # -icount: repeatable
        assert qemu_uart.raw_output(serial) == host.raw.tobytes()  # CMSIS-NN int8 kernels: bit-exact
        assert "CONV_2D" in serial.command("edgekit-ops%")
        print(f"\nZephyr mps2/an385: built in {zephyr_fw[2]:.0f} s; 5 inferences {spans[0]} us virtual time; "
              f"arena used {info['arena_used']} B, smallest that allocates {info['arena_min']} B")
        serial.send("edgekit-exit%")
        serial.until(b"m-exit", timeout=30)
        assert serial.proc.wait(timeout=60) == 0  # semihosting exit, not a reboot


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_edgekit_bench_against_the_zephyr_firmware(zephyr_fw: tuple[Path, Path, float]) -> None:
    """`edgekit bench PROJECT --port socket://...` against the firmware on QEMU's TCP serial port."""
    port = _free_port()
    qemu = subprocess.Popen([*QEMU, "-serial", f"tcp:127.0.0.1:{port},server=on,wait=off,nodelay=on",
                             "-kernel", str(zephyr_fw[1])], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:  # QEMU listens once it has started
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and qemu.poll() is None, "QEMU did not open its serial port"
                time.sleep(0.2)
        proc = run_cli("bench", str(zephyr_fw[0]), "--port", f"socket://127.0.0.1:{port}", "--runs", "5",
                       "--warmup", "1", "--json", timeout=600)
        assert proc.returncode == 0, proc.stderr
        import json

        result = json.loads(proc.stdout)
        assert result["checks"]["output"].startswith("exact match"), result["checks"]
        assert result["stats"]["min_us"] > 0
    finally:
        qemu.kill()
        qemu.wait(timeout=30)


def test_a_workspace_without_the_tflm_module_is_named(models: dict[str, Path], tmp_path: Path) -> None:
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    from edgekit.codegen.scaffold import scaffold

    scaffold(models["int8"], str(PROFILE), "zephyr", tmp_path / "fw")
    without = ";".join(m for m in ZEPHYR_MODULES.split(";") if m and not (Path(m) / "tensorflow").is_dir())
    proc = subprocess.run(["cmake", "-G", "Ninja", "-S", str(tmp_path / "fw"), "-B", str(tmp_path / "build"),
                           f"-DZEPHYR_MODULES={without}"], capture_output=True, text=True, timeout=600,
                          check=False, env=_env())
    assert proc.returncode != 0
    assert "Zephyr's tflite-micro module was not found" in proc.stderr.replace("\n  ", " ")
