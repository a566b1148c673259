"""Host side of the MLPerf Tiny runner protocol (docs/protocol.md) over any Transport.

Commands end with '%'; the device answers lines and ends every answer with ``m-ready``. Lines end with
LF, CR LF or CR alone. Bytes outside printable ASCII (NUL, 0xFF line noise) are dropped, and a line that
*ends* with ``m-ready`` ends the answer even with noise glued to its front (MLPerf Tiny's runner drops
NUL and matches ``m-ready`` as a substring). Other lines that are neither ``m-`` nor ``e-`` are noise:
counted and kept (bounded) so that an error can quote them. A boot banner in the middle of an answer
means the device reset (DeviceReset).

Every wait has a deadline and every buffer a bound: a device that streams bytes forever costs at most
``MAX_ANSWER_BYTES`` of memory and one command timeout.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from edgekit.errors import TransportError, TransportTimeout
from edgekit.options import Option
from edgekit.transports.base import READ_TIMEOUT, WRITE_TIMEOUT, Transport

BOOT_MARKERS = ("m-timestamp-mode-performance", "m-init-done")
UPLOAD_CHUNK = 64  # input bytes per `db` line at most (edgekit firmware with a large enough command buffer)
COMMAND_BUFFER = 256  # edgekit firmware's command buffer with its NUL: cmd_buffer = 255 characters
REFERENCE_CMD_SIZE = 80  # MLPerf Tiny's EE_CMD_SIZE: the reference firmware keeps the first 80 characters
RUNNER_CHUNK = 31  # bytes per `db` line that MLPerf Tiny's runner sends ("db " + 62 hex digits < 80)
TIMER_BITS = 32  # m-lap-us-N is an unsigned 32-bit microsecond counter (wraps every 71.6 minutes)
MAX_LINE_BYTES = 1 << 20  # a longer line is cut (and counted as noise)
MAX_ANSWER_BYTES = 4 << 20  # more than this without m-ready is an error, not a memory leak
MAX_ANSWER_LINES = 10_000  # lines kept per answer (the longest real answer, `db print` of 5 KiB, has 640)
MAX_KEPT_NOISE = 20  # noise lines kept per answer (for error messages); the rest are only counted

DRAIN_SECONDS = Option("drain_seconds", 2.0, "seconds at most to discard what a device prints before the first command")


class DeviceReset(TransportError):
    """The device printed its boot banner in the middle of a command."""


def upload_chunk(cmd_buffer: int | None) -> int:
    """Input bytes per `db` line for a device that buffers ``cmd_buffer`` characters of one command
    (None: unknown, so the MLPerf Tiny reference's 80 characters, in the runner's 31-byte lines)."""
    if cmd_buffer is None:
        return RUNNER_CHUNK
    return max(1, min(UPLOAD_CHUNK, (cmd_buffer - len("db ")) // 2))


def lap_us(t0: int, t1: int, what: str, bits: int = TIMER_BITS) -> int:
    """Microseconds between two ``m-lap-us`` stamps of the device's unsigned ``bits``-bit counter (32).

    The difference is taken modulo 2**bits (a wrap between the stamps is normal). Zero means the
    timer did not run; a difference of 2**(bits-1) or more means time went backwards (serial-number
    arithmetic: a counter that ran forward that long is indistinguishable from one that ran back).
    """
    mod = 1 << bits
    d = (t1 - t0) % mod
    if d == 0:
        raise TransportError(f"the device's timer did not advance during {what} (m-lap-us {t0} twice)",
                             "its microsecond counter is not running or too coarse: configure the board's "
                             "timer, or time more inferences per window (--method window)")
    if d >= mod // 2:
        raise TransportError(f"the device's time went backwards during {what} (m-lap-us {t0} then {t1})",
                             "its microsecond counter is not monotonic: check the board's timer code")
    return d


def clean(raw: bytes) -> str:
    """One received line as text: printable ASCII only, surrounding blanks removed."""
    return raw.translate(None, _UNPRINTABLE).decode("ascii").strip()


_UNPRINTABLE = bytes(b for b in range(256) if not 0x20 <= b <= 0x7E)


def parse_fields(body: str) -> dict[str, str]:
    """``k=v,k=v`` as a dict (items without '=' are ignored)."""
    out: dict[str, str] = {}
    for item in body.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


@dataclass
class Answer:
    command: str
    lines: list[str]
    errors: list[str]
    seconds: float
    noise: list[str] = field(default_factory=list)

    def value(self, prefix: str) -> str | None:
        for line in self.lines:
            if line.startswith(prefix):
                return line[len(prefix):]
        return None

    def values(self, prefix: str) -> list[str]:
        return [line[len(prefix):] for line in self.lines if line.startswith(prefix)]

    def bracket(self, prefix: str) -> str | None:
        """The text inside ``prefix[...]``, e.g. ``bracket("m-model-")`` for ``m-model-[ic01]``."""
        v = self.value(prefix + "[")
        return None if v is None else v[:-1] if v.endswith("]") else v

    @property
    def unknown(self) -> bool:
        return any("Unknown command" in e for e in self.errors)


class LineReader:
    """Splits a byte stream into cleaned lines with bounded memory (see the module docstring)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.cut_lines = 0

    def feed(self, data: bytes) -> list[str]:
        buf = self._buf
        buf += data
        last = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
        if last < 0:
            if len(buf) > MAX_LINE_BYTES:  # no line end in sight: keep the tail, count the cut
                del buf[: len(buf) - MAX_LINE_BYTES // 2]
                self.cut_lines += 1
            return []
        complete = bytes(buf[:last])
        del buf[: last + 1]
        return [line for part in complete.replace(b"\r", b"\n").split(b"\n") if (line := clean(part))]

    @property
    def pending(self) -> bytes:
        return bytes(self._buf)

    def clear(self) -> None:
        self._buf.clear()


def _describe(received: int, sample: bytes) -> str:
    if not received:
        return "it sent nothing at all"
    text = sample[-120:].decode("ascii", errors="backslashreplace")
    return f"it sent {received} bytes, the last: {text!r}"


@dataclass
class Client:
    transport: Transport
    timeout: float = field(default_factory=lambda: READ_TIMEOUT.value)
    noise_lines: int = 0
    bytes_sent: int = 0
    commands: int = 0
    _reader: LineReader = field(default_factory=LineReader)
    _pending: deque[str] = field(default_factory=deque)

    def _answer_lines(self, deadline: float, what: str, timeout: float) -> list[str]:
        out: list[str] = []
        size = 0  # bytes of this answer's lines kept so far
        received = 0
        tail = b""
        hint = "is the device running edgekit or MLPerf Tiny firmware at the right baud rate?"
        while True:
            while self._pending:
                line = self._pending.popleft()
                if line.endswith("m-ready"):
                    if line != "m-ready":
                        self.noise_lines += 1
                    out.append("m-ready")
                    return out
                size += len(line)
                if size <= MAX_ANSWER_BYTES and len(out) < MAX_ANSWER_LINES:
                    out.append(line)
            if received > MAX_ANSWER_BYTES:
                raise TransportError(f"no m-ready from {self.transport.name} after {what!r} in more than "
                                     f"{MAX_ANSWER_BYTES >> 20} MiB; {_describe(received, tail)}", hint)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportTimeout(f"no m-ready from {self.transport.name} after {what!r} within {timeout:g} s; "
                                       f"{_describe(received, tail)}", hint)
            try:
                chunk = self.transport.read(4096, left)
            except TransportTimeout:
                continue
            received += len(chunk)
            tail = (tail + chunk)[-160:]
            self._pending.extend(self._reader.feed(chunk))

    def drain(self, quiet_for: float = 0.2, at_most: float | None = None) -> int:
        """Discard what the device prints until it is quiet for ``quiet_for`` s, or ``at_most`` s passed
        (a device that never stops talking does not hold bench up). Returns the bytes discarded."""
        limit = DRAIN_SECONDS.value if at_most is None else at_most
        deadline = time.monotonic() + limit
        dropped = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                dropped += len(self.transport.read(4096, min(quiet_for, left)))
            except TransportTimeout:
                break
        self._reader.clear()
        self._pending.clear()
        return dropped

    def send(self, cmd: str) -> None:
        data = (cmd + "%").encode("ascii")
        self.transport.write(data, WRITE_TIMEOUT.value)
        self.bytes_sent += len(data)
        self.commands += 1

    def read_answer(self, what: str, timeout: float | None = None) -> Answer:
        t0 = time.perf_counter()
        limit = timeout if timeout is not None else self.timeout
        lines = self._answer_lines(time.monotonic() + limit, what, limit)
        kept: list[str] = []
        errors: list[str] = []
        noise: list[str] = []
        for i, line in enumerate(lines):
            if any(line.endswith(b) for b in BOOT_MARKERS) and i < len(lines) - 1:
                raise DeviceReset(f"the device reset during {what!r} (boot banner {line!r})")
            if line.startswith("e-"):
                errors.append(line)
            elif line.startswith("m-"):
                kept.append(line)
            else:
                self.noise_lines += 1
                if len(noise) < MAX_KEPT_NOISE:
                    noise.append(line[:200])
        return Answer(what, kept, errors, time.perf_counter() - t0, noise)

    def command(self, cmd: str, timeout: float | None = None) -> Answer:
        t0 = time.perf_counter()
        self.send(cmd)
        ans = self.read_answer(cmd, timeout)
        ans.seconds = time.perf_counter() - t0
        return ans
