"""Run a firmware built from the ``qemu`` scaffold under ``qemu-system-arm -M mps2-an386``.

The UART is a loopback TCP socket (``-serial tcp:127.0.0.1:PORT,server=on,wait=on,nodelay=on``), so
QEMU starts the guest only once edgekit has connected and no boot output is lost (``nodelay``: without
it Nagle's algorithm holds each answer's tail until the host's delayed ACK, ~40 ms per command);
edgekit then talks to it through pyserial's ``socket://`` URL, the same path as a real serial port.
With ``-icount shift=0`` every guest instruction advances virtual time by 1 ns: timings are
instruction-proportional and repeatable, and are reported as virtual time, never as real-board
milliseconds.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from edgekit.errors import TransportError
from edgekit.transports.serial_port import SerialTransport


def find_elf(build_dir: Path) -> Path:
    if build_dir.is_file() and build_dir.suffix == ".elf":
        return build_dir
    elf = build_dir / "firmware.elf"
    if not elf.is_file():
        raise TransportError(f"no firmware.elf in {build_dir}",
                             "build the scaffold first: cmake -B build -DBOARD=qemu ... && cmake --build build")
    return elf


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class QemuTransport(SerialTransport):
    def __init__(self, build_dir: Path, start_timeout: float = 20.0, nodelay: bool = True,
                 machine: str = "mps2-an386") -> None:
        self.elf = find_elf(build_dir)
        self.tcp = _free_port()
        super().__init__(f"socket://127.0.0.1:{self.tcp}")
        self.name = f"qemu:{self.elf}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_timeout = start_timeout
        self.nodelay = nodelay  # off: QEMU's Nagle delays each answer by ~40 ms (benchmarks/qemu_serial_latency.py)
        self.machine = machine  # mps2-an385/an386/an500: the qemu board's memory map and UART (QEMU_CORE=target)

    def open(self) -> None:
        qemu = shutil.which("qemu-system-arm")
        if qemu is None:
            raise TransportError("qemu-system-arm is not installed", "Debian: apt-get install qemu-system-arm")
        self.proc = subprocess.Popen(
            [qemu, "-M", self.machine, "-display", "none", "-monitor", "none", "-icount", "shift=0",
             "-semihosting-config", "enable=on,target=native", "-kernel", str(self.elf),
             "-serial", f"tcp:127.0.0.1:{self.tcp},server=on,wait=on{',nodelay=on' if self.nodelay else ''}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                super().open()
                return
            except TransportError:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    raise TransportError(f"qemu-system-arm exited: {err.strip()[:300]}") from None
                if time.monotonic() > deadline:
                    self.close()
                    raise TransportError(f"qemu-system-arm did not open its UART within {self.start_timeout:.0f} s") \
                        from None
                time.sleep(0.05)

    def close(self) -> None:
        super().close()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
