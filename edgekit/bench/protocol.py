"""Host side of the MLPerf Tiny runner protocol (docs/protocol.md) over any Transport.

Commands end with '%'; the device answers lines and ends every answer with ``m-ready``.
Lines that are neither ``m-`` nor ``e-`` are noise (counted, ignored); a partial line waits for its
end; a boot banner in the middle of an answer means the device reset (DeviceReset).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from edgekit.errors import TransportError, TransportTimeout
from edgekit.transports.base import READ_TIMEOUT, WRITE_TIMEOUT, Transport

BOOT_MARKERS = ("m-timestamp-mode-performance", "m-init-done")
UPLOAD_CHUNK = 64  # input bytes per `db` line the host sends
COMMAND_BUFFER = 256  # bytes the firmware buffers for one command: "db " + UPLOAD_CHUNK as hex + slack


class DeviceReset(TransportError):
    """The device printed its boot banner in the middle of a command."""


@dataclass
class Answer:
    command: str
    lines: list[str]
    errors: list[str]
    seconds: float

    def value(self, prefix: str) -> str | None:
        for line in self.lines:
            if line.startswith(prefix):
                return line[len(prefix):]
        return None

    def values(self, prefix: str) -> list[str]:
        return [line[len(prefix):] for line in self.lines if line.startswith(prefix)]

    @property
    def unknown(self) -> bool:
        return any("Unknown command" in e for e in self.errors)


@dataclass
class Client:
    transport: Transport
    timeout: float = field(default_factory=lambda: READ_TIMEOUT.value)
    noise_lines: int = 0
    bytes_sent: int = 0
    commands: int = 0
    _buf: bytearray = field(default_factory=bytearray)

    def _lines(self, deadline: float, what: str) -> list[str]:
        out: list[str] = []
        while True:
            while b"\n" in self._buf:
                raw, _, rest = bytes(self._buf).partition(b"\n")
                self._buf = bytearray(rest)
                line = raw.decode("ascii", errors="replace").strip()
                if line:
                    out.append(line)
            if out and out[-1] == "m-ready":
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportTimeout(f"no m-ready from {self.transport.name} after {what!r} within "
                                       f"{self.timeout:.1f} s", "is the device running edgekit or MLPerf firmware?")
            self._buf += self.transport.read(4096, left)

    def drain(self, quiet_for: float = 0.2) -> list[str]:
        """Read whatever the device prints until it is quiet (boot banners, stale answers)."""
        lines: list[str] = []
        while True:
            try:
                self._buf += self.transport.read(4096, quiet_for)
            except TransportTimeout:
                break
        text = bytes(self._buf).decode("ascii", errors="replace")
        self._buf = bytearray()
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return lines

    def command(self, cmd: str, timeout: float | None = None) -> Answer:
        t0 = time.perf_counter()
        data = (cmd + "%").encode("ascii")
        self.transport.write(data, WRITE_TIMEOUT.value)
        self.bytes_sent += len(data)
        self.commands += 1
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        lines = self._lines(deadline, cmd)
        kept, errors = [], []
        for i, line in enumerate(lines):
            if line in BOOT_MARKERS and i < len(lines) - 1:
                raise DeviceReset(f"the device reset during {cmd!r} (boot banner {line!r})")
            if line.startswith("e-"):
                errors.append(line)
            elif line.startswith("m-"):
                kept.append(line)
            else:
                self.noise_lines += 1
        if any(ln in BOOT_MARKERS for ln in kept):
            raise DeviceReset(f"the device reset during {cmd!r}")
        return Answer(cmd, kept, errors, time.perf_counter() - t0)
