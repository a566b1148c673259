"""The generated cmake scaffold, built against a real TFLM tree and run under QEMU (mps2-an386).

Needs TFLM_ROOT (a tflite-micro checkout whose Cortex-M4F library was built once with TFLM's Makefile,
see the generated CMakeLists.txt), arm-none-eabi-gcc, cmake and qemu-system-arm; skipped otherwise.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.tflm_tree]

TFLM_ROOT = os.environ.get("TFLM_ROOT", "")
LIB = "gen/cortex_m_generic_cortex-m4+fp_default_cmsis_nn_gcc/lib/libtensorflow-microlite.a"


def _requirements() -> str | None:
    if not TFLM_ROOT:
        return "TFLM_ROOT is not set (a tflite-micro checkout with its Cortex-M4F library built)"
    if not (Path(TFLM_ROOT) / LIB).is_file():
        return f"no TFLM library at $TFLM_ROOT/{LIB}: build it with the make command in the scaffold's CMakeLists.txt"
    for tool in ("arm-none-eabi-gcc", "cmake", "qemu-system-arm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


class Serial:
    """The firmware's UART over QEMU's stdio, with a deadline on every read."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None and proc.stdin is not None
        self.proc, self.buf = proc, b""
        self.sel = selectors.DefaultSelector()
        self.sel.register(proc.stdout, selectors.EVENT_READ)

    def until(self, marker: bytes, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {marker!r} within {timeout} s; got {self.buf[-300:]!r}")
            if self.sel.select(timeout=left):
                chunk = os.read(self.proc.stdout.fileno(), 4096)  # type: ignore[union-attr]
                if not chunk:
                    raise EOFError(f"QEMU exited; got {self.buf[-300:]!r}")
                self.buf += chunk
        head, _, self.buf = self.buf.partition(marker)
        return (head + marker).decode(errors="replace")

    def command(self, text: str, timeout: float = 60.0) -> str:
        self.proc.stdin.write(text.encode())  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.until(b"m-ready", timeout)


def test_scaffold_builds_boots_and_matches_the_host_interpreter(models: dict[str, Path], tmp_path: Path) -> None:
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    from edgekit.analysis.graph import read_graph
    from edgekit.bench.protocol import UPLOAD_CHUNK
    from edgekit.codegen.scaffold import scaffold
    from edgekit.evaluate import tflm_session

    project = tmp_path / "fw"
    scaffold(models["int8"], "cortex-m4", "cmake", project, name="digits")
    build = tmp_path / "build"
    for cmd in (["cmake", "-S", str(project), "-B", str(build), "-DBOARD=qemu", f"-DTFLM_ROOT={TFLM_ROOT}"],
                ["cmake", "--build", str(build), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    elf = build / "firmware.elf"
    assert elf.is_file()

    model = models["int8"].read_bytes()
    graph = read_graph(model)
    x = np.load(models["calib"])["x"][:1].astype(np.float32)
    host = tflm_session([model], x)[0]
    inp = graph.input_tensors()[0]
    q = np.clip(np.round(x / inp.scale[0] + inp.zero_point[0]), -128, 127).astype(np.int8).tobytes()

    qemu = subprocess.Popen(
        ["qemu-system-arm", "-M", "mps2-an386", "-display", "none", "-monitor", "none", "-serial", "stdio",
         "-icount", "shift=0", "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        serial = Serial(qemu)
        boot = serial.until(b"m-ready", timeout=120)
        assert "m-init-done" in boot and "e-[" not in boot, boot
        info = serial.command("edgekit-info%")
        used = int(re.search(r"arena_used=(\d+)", info).group(1))  # type: ignore[union-attr]
        reserved = int(re.search(r"arena_bytes=(\d+)", info).group(1))  # type: ignore[union-attr]
        assert 0 < used <= reserved
        # the 32-bit target needs less than the 64-bit host measured (pointer-sized bookkeeping)
        assert used <= host.arena_bytes
        assert "m-[Expecting" in serial.command(f"db load {len(q)}%")
        for i in range(0, len(q), UPLOAD_CHUNK):
            last = serial.command(f"db {q[i:i + UPLOAD_CHUNK].hex()}%")
        assert "m-load-done" in last
        infer = serial.command("infer 3 1%", timeout=300)
        laps = [int(v) for v in re.findall(r"m-lap-us-(\d+)", infer)]
        assert "m-infer-done" in infer and len(laps) == 2 and laps[1] > laps[0]
        raw = re.search(r"m-edgekit-output-\[([0-9a-f]+)\]", serial.command("edgekit-output%")).group(1)  # type: ignore[union-attr]
        assert bytes.fromhex(raw) == host.raw.tobytes()  # int8 reference kernels: exactly equal
        ops = serial.command("edgekit-ops%")
        assert "CONV_2D" in ops
        print(f"\nQEMU: arena used {used} B on the 32-bit target, host measured {host.arena_bytes} B, "
              f"reserved {reserved} B; 3 inferences {laps[1] - laps[0]} us virtual time")
        assert "e-[Unknown command" in serial.command("nosuch%")
        qemu.stdin.write(b"edgekit-exit%")  # type: ignore[union-attr]
        qemu.stdin.flush()  # type: ignore[union-attr]
        assert qemu.wait(timeout=60) == 0
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
