"""Fault injection for the serial protocol: a device double behind a faulty line.

``FaultyDevice`` wraps a device engine (``receive(bytes)``, ``write_raw``, ``boot()``, e.g. ReferenceDut)
and damages what it says (and, optionally, what it hears): bytes dropped, duplicated or corrupted with
seeded probabilities, answers split into small pieces and delayed, the device reset in the middle of an
answer every N commands, or, after N commands, an endless stream of log lines or binary noise instead
of answers. ``MemoryTransport`` connects bench to it in-process (for soaks); ``serve_pty`` puts it
behind a real pseudo-terminal for the CLI (``python -m tests.doubles.serve_dut``).
"""

from __future__ import annotations

import os
import random
import select
import time
import tty
from dataclasses import dataclass
from typing import Any, Protocol

from edgekit.errors import TransportTimeout
from edgekit.transports.base import Transport


class Engine(Protocol):
    write_raw: Any

    def receive(self, data: bytes) -> None: ...

    def boot(self) -> None: ...


@dataclass
class Faults:
    drop: float = 0.0  # probability that a byte from the device is lost
    duplicate: float = 0.0  # ... sent twice
    corrupt: float = 0.0  # ... replaced by a random byte
    to_device: bool = False  # also drop/corrupt what the host sends
    split: int = 0  # deliver in pieces of at most this many bytes (0: as written)
    delay: float = 0.0  # seconds before each piece
    reset_every: int = 0  # cut every Nth command's answer in half and reboot
    endless_after: int = -1  # after this many commands, stream forever instead of answering
    endless: str = "lines"  # "lines" (log lines without m-ready) or "binary" (no line ends)
    seed: int = 0


class FaultyDevice:
    def __init__(self, engine: Engine, faults: Faults) -> None:
        self.engine, self.faults = engine, faults
        self.rng = random.Random(faults.seed)
        self.raw = bytearray()  # what the device said and the host has not read
        self.commands = 0
        self.streaming = faults.endless_after == 0
        self.stream_count = 0
        engine.write_raw = self.raw.extend

    def _damage(self, data: bytes, drop: float, dup: float, corrupt: float) -> bytes:
        if not (drop or dup or corrupt):
            return data
        out = bytearray()
        r = self.rng.random
        for b in data:
            if drop and r() < drop:
                continue
            if corrupt and r() < corrupt:
                b = self.rng.randrange(256)
            out.append(b)
            if dup and r() < dup:
                out.append(b)
        return bytes(out)

    def to_device(self, data: bytes) -> None:
        f = self.faults
        if f.to_device:
            data = self._damage(data, f.drop, 0.0, f.corrupt)
        start = 0
        for i, b in enumerate(data):
            if b != 0x25:  # '%'
                continue
            before = len(self.raw)
            self.engine.receive(data[start : i + 1])
            start = i + 1
            self.commands += 1
            if f.reset_every and self.commands % f.reset_every == 0:
                answer = bytes(self.raw[before:])
                del self.raw[before:]
                self.raw += answer[: len(answer) // 2]
                self.engine.boot()
            if f.endless_after >= 0 and self.commands >= f.endless_after:
                self.streaming = True
        if start < len(data):
            self.engine.receive(data[start:])

    def _stream(self, n: int) -> bytes:
        self.stream_count += 1
        if self.faults.endless == "binary":
            return self.rng.randbytes(n).replace(b"\n", b".").replace(b"\r", b".")
        line = f"log: sensor {self.stream_count} ok\r\n".encode()
        return (line * (n // len(line) + 1))[:n]

    def take(self, n: int) -> bytes:
        """The next piece the host receives (at most ``n`` bytes), damaged; b"" if there is none."""
        f = self.faults
        if self.streaming:
            self.raw.clear()
            return self._stream(min(n, f.split or n))
        if not self.raw:
            return b""
        size = min(n, f.split or n, len(self.raw))
        piece = bytes(self.raw[:size])
        del self.raw[:size]
        return self._damage(piece, f.drop, f.duplicate, f.corrupt)


class MemoryTransport(Transport):
    """bench's side of an in-process FaultyDevice (no operating-system port in between)."""

    def __init__(self, device: FaultyDevice, name: str = "memory:reference-dut") -> None:
        self.device, self.name = device, name

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def read(self, n: int, timeout: float) -> bytes:
        delay = self.device.faults.delay
        if delay:
            if delay > timeout:
                time.sleep(timeout)
                raise TransportTimeout(f"no data from {self.name} within {timeout:.3f} s")
            time.sleep(delay)
        data = self.device.take(n)
        if data:
            return data
        time.sleep(min(timeout, 0.0005))  # a synchronous device has said all it will say
        raise TransportTimeout(f"no data from {self.name} within {timeout:.3f} s")

    def write(self, data: bytes, timeout: float) -> None:
        self.device.to_device(data)


def serve_pty(device: FaultyDevice, stop_after: float, on_path: Any = print) -> None:
    """Serve ``device`` on a new pseudo-terminal until ``stop_after`` seconds pass."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    on_path(os.ttyname(slave))
    deadline = time.monotonic() + stop_after
    pending = b""
    delay = device.faults.delay
    try:
        while time.monotonic() < deadline:
            if not pending:
                pending = device.take(4096)
                if pending and delay:
                    time.sleep(delay)
            want_write = [master] if pending else []
            readable, writable, _ = select.select([master], want_write, [], 0.05)
            if readable:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    data = b""
                if data:
                    device.to_device(data)
            if writable and pending:
                try:
                    sent = os.write(master, pending)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    return
                pending = pending[sent:]
    finally:
        os.close(master)
        os.close(slave)
