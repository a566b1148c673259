"""A firmware's UART over QEMU's stdio, for the firmware tests: every read has a deadline."""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Serial:
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

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode())  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def command(self, text: str, timeout: float = 60.0) -> str:
        self.send(text)
        return self.until(b"m-ready", timeout)

    def upload(self, data: bytes, chunk: int) -> str:
        assert "m-[Expecting" in self.command(f"db load {len(data)}%")
        last = ""
        for i in range(0, len(data), chunk):
            last = self.command(f"db {data[i:i + chunk].hex()}%")
        return last


@contextmanager
def qemu(command: list[str], elf: Path) -> Iterator[Serial]:
    """QEMU with the UART on stdio (``command`` ends where the kernel path goes)."""
    proc = subprocess.Popen([*command, str(elf)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        yield Serial(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def info(text: str) -> dict[str, str]:
    """The fields of an m-edgekit-info-[...] answer."""
    body = re.search(r"m-edgekit-info-\[([^\]]*)\]", text)
    assert body, text
    return dict(item.split("=", 1) for item in body.group(1).split(","))


def raw_output(serial: Serial) -> bytes:
    raw = re.search(r"m-edgekit-output-\[([0-9a-f]+)\]", serial.command("edgekit-output%"))
    assert raw
    return bytes.fromhex(raw.group(1))
