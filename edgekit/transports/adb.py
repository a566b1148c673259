"""The host side of adb: Debian's real `adb` client (and its server), with a timeout on every call.

Device selection works like pyOCD's probe ids: ``--serial ID``, or the only attached device.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from edgekit.errors import TransportClosed, TransportError, TransportTimeout
from edgekit.options import Option

ADB_TIMEOUT = Option("adb_timeout", 60.0, "seconds one adb call (push, shell, devices) may take")
BENCH_TIMEOUT = Option("adb_bench_timeout", 600.0, "seconds benchmark_model may run on the phone")


@dataclass
class AdbDevice:
    serial: str
    state: str


class Adb:
    def __init__(self, serial: str | None = None, adb: str | None = None, env: dict[str, str] | None = None) -> None:
        exe = adb or shutil.which("adb")
        if exe is None:
            raise TransportError("the adb client is not installed", "Debian: apt-get install adb")
        self.exe, self.requested, self.env = exe, serial, {**os.environ, **(env or {})}
        self.serial: str | None = None

    def _run(self, *args: str, timeout: float | None = None, check_device: bool = True) -> str:
        cmd = [self.exe, *(["-s", self.serial] if self.serial and check_device else []), *args]
        limit = timeout or ADB_TIMEOUT.value
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=self.env, check=False)
        except subprocess.TimeoutExpired:
            raise TransportTimeout(f"adb {' '.join(args[:2])} did not finish within {limit:.0f} s",
                                   "is the phone still connected?") from None
        text = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0 or "error:" in proc.stderr:
            low = text.lower()
            if "not found" in low and self.serial and "device" in low:
                raise TransportClosed(f"device {self.serial} disconnected", "reconnect it and run again")
            if "offline" in low:
                raise TransportError(f"device {self.serial} is offline", "reconnect it (adb reconnect)")
            if "unauthorized" in low:
                raise TransportError(f"device {self.serial} is unauthorized",
                                     "accept the USB debugging prompt on the phone")
            if "closed" in low or "no devices" in low or "disconnected" in low:
                raise TransportClosed(f"device {self.serial} disconnected: {text.splitlines()[-1][:200]}",
                                      "reconnect it and run again")
            raise TransportError(f"adb {' '.join(args[:2])} failed: {text.splitlines()[-1][:200] if text else ''}")
        return proc.stdout

    def devices(self) -> list[AdbDevice]:
        out = self._run("devices", check_device=False)
        found = []
        for line in out.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2:
                found.append(AdbDevice(parts[0], parts[1]))
        return found

    def select(self) -> str:
        devices = self.devices()
        if self.requested:
            match = [d for d in devices if d.serial == self.requested]
            if not match:
                raise TransportError(f"no device {self.requested!r} attached",
                                     "attached: " + (", ".join(d.serial for d in devices) or "none"))
            dev = match[0]
        else:
            if not devices:
                raise TransportError("no Android device attached",
                                     "connect a phone with USB debugging on (adb devices lists it)")
            if len(devices) > 1:
                raise TransportError(f"{len(devices)} devices attached: " + ", ".join(d.serial for d in devices),
                                     "choose one with --serial")
            dev = devices[0]
        if dev.state in ("unauthorized", "authorizing"):
            raise TransportError(f"device {dev.serial} is unauthorized", "accept the USB debugging prompt on the phone")
        if dev.state != "device":
            raise TransportError(f"device {dev.serial} is {dev.state}", "reconnect it (adb reconnect) and retry")
        self.serial = dev.serial
        return dev.serial

    def push(self, local: str, remote: str) -> None:
        self._run("push", local, remote)

    def shell(self, command: str, timeout: float | None = None) -> tuple[str, int]:
        """Run ``command`` on the device; returns (output, exit status)."""
        import re

        marker = "__EDGEKIT_RC="
        out = self._run("shell", f"{command}; echo {marker}$?", timeout=timeout)
        found = list(re.finditer(re.escape(marker) + r"(\d+)", out))
        if not found:
            raise TransportClosed(f"device {self.serial} closed the shell before {command.split()[0]!r} finished",
                                  "the phone disconnected or rebooted")
        last = found[-1]
        return out[: last.start()] + out[last.end() :].lstrip("\r\n"), int(last.group(1))
