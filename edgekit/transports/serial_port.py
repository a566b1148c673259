"""Serial transport over pyserial's ``serial_for_url``: device paths, ``socket://``, ``rfc2217://``, ``loop://``."""

from __future__ import annotations

import time
from typing import Any

from edgekit.errors import TransportClosed, TransportError, TransportTimeout
from edgekit.transports.base import Transport

DIALOUT_HINT = ("check the cable and the port name; on Linux your user needs the dialout group "
                "(sudo usermod -aG dialout $USER, then log in again)")


class SerialTransport(Transport):
    def __init__(self, url: str, baud: int = 115200) -> None:
        self.url, self.baud = url, baud
        self.name = url
        self.port: Any = None

    def open(self) -> None:
        import serial

        try:
            self.port = serial.serial_for_url(self.url, baudrate=self.baud, timeout=0, write_timeout=0,
                                              exclusive=True if "://" not in self.url else None)
        except (serial.SerialException, OSError, ValueError) as exc:
            text = str(exc)
            if "busy" in text.lower() or "lock" in text.lower() or "Resource temporarily" in text:
                raise TransportError(f"could not open {self.url}: the port is busy (another program has it open)",
                                     "close the other program (screen, minicom, an IDE serial monitor)") from None
            raise TransportError(f"could not open {self.url}: the port is busy or doesn't exist ({text})",
                                 DIALOUT_HINT) from None

    def close(self) -> None:
        if self.port is not None:
            try:
                self.port.close()
            finally:
                self.port = None

    def read(self, n: int, timeout: float) -> bytes:
        import serial

        deadline = time.monotonic() + timeout
        while True:
            try:
                data = self.port.read(n)
            except (serial.SerialException, OSError) as exc:
                raise TransportClosed(f"{self.url} closed: {exc}", "the device was unplugged or reset") from None
            if data:
                return bytes(data)
            if time.monotonic() >= deadline:
                raise TransportTimeout(f"no data from {self.url} within {timeout:.1f} s",
                                       "is the firmware running and the baud rate right?")
            time.sleep(0.0005)

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
