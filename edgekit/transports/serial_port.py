"""Serial transport over pyserial's ``serial_for_url``: device paths, ``socket://``, ``rfc2217://``, ``loop://``."""

from __future__ import annotations

import time
from typing import Any

from edgekit.errors import TransportClosed, TransportError, TransportTimeout
from edgekit.transports.base import Transport

DIALOUT_HINT = ("check the cable and the port name; on Linux your user needs the dialout group "
                "(sudo usermod -aG dialout $USER, then log in again)")


def _not_a_port(url: str) -> str | None:
    """Why ``url`` (a local path) cannot be a serial port, found without opening it; None if it may be one."""
    import os
    import stat

    if "://" in url:
        return None
    try:
        mode = os.stat(url).st_mode
    except FileNotFoundError:
        return "the port does not exist"
    except OSError as exc:
        return f"it cannot be examined ({exc.strerror})"
    if stat.S_ISREG(mode):
        return "it is a regular file, not a serial port"
    if stat.S_ISDIR(mode):
        return "it is a directory, not a serial port"
    if not stat.S_ISCHR(mode):
        return "it is not a character device, so not a serial port"
    return None


class SerialTransport(Transport):
    def __init__(self, url: str, baud: int = 115200) -> None:
        if not isinstance(baud, int) or baud <= 0:
            raise TransportError(f"invalid baud rate {baud!r} (must be a positive whole number, e.g. 115200)")
        self.url, self.baud = url, baud
        self.name = url
        self.port: Any = None

    def open(self) -> None:
        import serial

        why = _not_a_port(self.url)
        if why == "the port does not exist":
            raise TransportError(f"could not open {self.url}: the port does not exist", DIALOUT_HINT)
        if why:
            raise TransportError(f"could not open {self.url}: {why}",
                                 "pass the board's port, e.g. /dev/ttyACM0 or /dev/ttyUSB0 (ls /dev/tty*)")
        try:
            self.port = serial.serial_for_url(self.url, baudrate=self.baud, timeout=0, write_timeout=0,
                                              exclusive=True if "://" not in self.url else None)
        except (serial.SerialException, OSError, ValueError) as exc:
            text = str(exc)
            if "busy" in text.lower() or "lock" in text.lower() or "Resource temporarily" in text:
                raise TransportError(f"could not open {self.url}: the port is busy (another program has it open)",
                                     "close the other program (screen, minicom, an IDE serial monitor)") from None
            if "Inappropriate ioctl" in text or "(25," in text:
                raise TransportError(f"could not open {self.url}: it is not a serial port (a device without "
                                     "terminal settings)", "pass the board's port, e.g. /dev/ttyACM0") from None
            if "Permission denied" in text or "Errno 13" in text:
                raise TransportError(f"could not open {self.url}: permission denied", DIALOUT_HINT) from None
            if "baud" in text.lower():
                raise TransportError(f"could not open {self.url} at {self.baud} baud: {text}",
                                     "pass a baud rate the port supports with --baud") from None
            raise TransportError(f"could not open {self.url}: {text}", DIALOUT_HINT) from None

    def close(self) -> None:
        if self.port is not None:
            try:
                self.port.close()
            finally:
                self.port = None

    def read(self, n: int, timeout: float) -> bytes:
        """Block (no polling) until at least one byte arrives or ``timeout`` passes; then take what else is
        already waiting, up to ``n`` bytes."""
        import serial

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportTimeout(f"no data from {self.url} within {timeout:.1f} s",
                                       "is the firmware running and the baud rate right?")
            try:
                self.port.timeout = left
                first = self.port.read(1)
                if not first:
                    continue  # the port's own timeout ended the wait: the loop checks the deadline
                self.port.timeout = 0
                more = self.port.read(n - 1) if n > 1 else b""
            except (serial.SerialException, OSError) as exc:
                raise TransportClosed(f"{self.url} closed: {exc}", "the device was unplugged or reset") from None
            return bytes(first) + bytes(more)

    def write(self, data: bytes, timeout: float) -> None:
        import serial

        deadline = time.monotonic() + timeout
        view = memoryview(data)
        while view:
            try:
                sent = self.port.write(view)
            except serial.SerialTimeoutException:
                sent = 0
            except (serial.SerialException, OSError) as exc:
                raise TransportClosed(f"{self.url} closed: {exc}") from None
            view = view[sent or 0 :]
            if view and time.monotonic() >= deadline:
                raise TransportTimeout(f"{self.url} did not accept data within {timeout:.1f} s")
            if view:
                time.sleep(0.0005)
