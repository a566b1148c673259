"""The Transport interface: open, close, read(n, timeout), write(data, timeout).

Every wait has a timeout; a timeout raises TransportTimeout, a closed peer TransportClosed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType

from edgekit.options import Option

READ_TIMEOUT = Option("read_timeout", 10.0, "seconds to wait for a device's answer to one command")
WRITE_TIMEOUT = Option("write_timeout", 10.0, "seconds to wait for the device to accept one command")


class Transport(ABC):
    name = "transport"

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def read(self, n: int, timeout: float) -> bytes:
        """Up to ``n`` bytes; at least one unless ``timeout`` passes (TransportTimeout)."""

    @abstractmethod
    def write(self, data: bytes, timeout: float) -> None: ...

    def __enter__(self) -> Transport:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
