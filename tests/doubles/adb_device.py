"""Test double: an emulated Android device for the real `adb` client and server: the device side of the adb
transport over TCP on 127.0.0.1 (CNXN, AUTH, OPEN, OKAY, WRTE, CLSE), with the legacy ``shell:``
service and the ``sync:`` push service (STAT, SEND/DATA/DONE, QUIT).

Pushed files land in a sandbox directory; ``shell:`` commands run there with ``/data/local/tmp``
mapped to it and a ``getprop`` that answers the emulated properties. It stands in for a phone, which
cannot exist here; ``adb connect 127.0.0.1:PORT`` attaches it. Modes for robustness tests:
``unauthorized`` (never accepts the host's key), ``offline`` (accepts TCP, never answers CNXN),
``disconnect_after`` (drops the connection after N shell commands).
"""

from __future__ import annotations

import os
import shlex
import socket
import stat
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

A_SYNC, A_CNXN, A_AUTH, A_OPEN, A_OKAY, A_CLSE, A_WRTE = (
    0x434E5953, 0x4E584E43, 0x48545541, 0x4E45504F, 0x59414B4F, 0x45534C43, 0x45545257)
VERSION = 0x01000001
MAX_PAYLOAD = 256 * 1024
DEVICE_DIR = "/data/local/tmp"


def _pack(cmd: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    return struct.pack("<6I", cmd, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, cmd ^ 0xFFFFFFFF) + data


@dataclass
class DeviceProps:
    model: str = "EdgekitSim"
    soc: str = "sim-soc"
    android: str = "14"
    extra: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, str]:
        return {"ro.product.model": self.model, "ro.soc.model": self.soc, "ro.board.platform": self.soc,
                "ro.build.version.release": self.android, "ro.product.cpu.abi": "arm64-v8a", **self.extra}


class AdbDeviceEmulator:
    def __init__(self, sandbox: Path, mode: str = "device", props: DeviceProps | None = None,
                 disconnect_after: int = 0) -> None:
        self.sandbox = sandbox
        self.mode, self.props, self.disconnect_after = mode, props or DeviceProps(), disconnect_after
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = int(self.sock.getsockname()[1])
        self.shell_commands = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._write_getprop()

    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> AdbDeviceEmulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass

    def _write_getprop(self) -> None:
        bindir = self.sandbox / ".bin"
        bindir.mkdir(parents=True, exist_ok=True)
        lines = "\n".join(f"  {shlex.quote(k)}) echo {shlex.quote(v)} ;;" for k, v in self.props.as_dict().items())
        script = bindir / "getprop"
        script.write_text(f"#!/bin/sh\ncase \"$1\" in\n{lines}\n  *) echo ;;\nesac\n")
        script.chmod(0o755)

    # ------------------------------------------------------------------ connection

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _recv(self, conn: socket.socket) -> tuple[int, int, int, bytes] | None:
        header = self._read_exact(conn, 24)
        if header is None:
            return None
        cmd, arg0, arg1, length, _, magic = struct.unpack("<6I", header)
        if magic != cmd ^ 0xFFFFFFFF:
            return None
        data = self._read_exact(conn, length) if length else b""
        if data is None:
            return None
        return cmd, arg0, arg1, data

    @staticmethod
    def _read_exact(conn: socket.socket, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = conn.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def _serve(self, conn: socket.socket) -> None:
        streams: dict[int, _Stream] = {}
        next_id = 1
        with conn:
            while not self._stop.is_set():
                msg = self._recv(conn)
                if msg is None:
                    return
                cmd, arg0, arg1, data = msg
                if cmd == A_CNXN:
                    if self.mode == "offline":
                        continue
                    if self.mode == "unauthorized":
                        conn.sendall(_pack(A_AUTH, 1, 0, os.urandom(20)))  # TOKEN, never satisfied
                        continue
                    banner = ("device::" + ";".join(f"{k}={v}" for k, v in self.props.as_dict().items()
                                                    if k.startswith("ro.product")) + ";features=cmd").encode()
                    conn.sendall(_pack(A_CNXN, VERSION, MAX_PAYLOAD, banner))
                elif cmd == A_AUTH:
                    if self.mode == "unauthorized" and arg0 == 2:  # a signature we never accept
                        conn.sendall(_pack(A_AUTH, 1, 0, os.urandom(20)))
                    # arg0 == 3: the host offers its public key; the user never taps "allow"
                elif cmd == A_OPEN:
                    service = data.rstrip(b"\0").decode(errors="replace")
                    local = next_id
                    next_id += 1
                    stream = _Stream(self, conn, local, arg0, service)
                    streams[local] = stream
                    conn.sendall(_pack(A_OKAY, local, arg0))
                    if service.startswith("shell:"):
                        self.shell_commands += 1
                        if self.disconnect_after and self.shell_commands >= self.disconnect_after:
                            conn.close()  # the phone went away mid-run
                            return
                        threading.Thread(target=stream.run_shell, daemon=True).start()
                    elif not service.startswith("sync:"):
                        stream.close()
                elif cmd == A_WRTE:
                    conn.sendall(_pack(A_OKAY, arg1, arg0))
                    s = streams.get(arg1)
                    if s is not None:
                        s.feed(data)
                elif cmd == A_OKAY:
                    s = streams.get(arg1)
                    if s is not None:
                        s.acked.set()
                elif cmd == A_CLSE:
                    streams.pop(arg1, None)


class _Stream:
    def __init__(self, dev: AdbDeviceEmulator, conn: socket.socket, local: int, remote: int, service: str) -> None:
        self.dev, self.conn, self.local, self.remote, self.service = dev, conn, local, remote, service
        self.acked = threading.Event()
        self.acked.set()
        self.buf = b""
        self.file: tuple[Path, int] | None = None
        self.file_data = bytearray()
        self.lock = threading.Lock()

    def send(self, data: bytes) -> None:
        for i in range(0, len(data), MAX_PAYLOAD // 4 or 1):
            if not self.acked.wait(timeout=30):
                return
            self.acked.clear()
            try:
                self.conn.sendall(_pack(A_WRTE, self.local, self.remote, data[i : i + MAX_PAYLOAD // 4]))
            except OSError:
                return

    def close(self) -> None:
        try:
            self.acked.wait(timeout=30)
            self.conn.sendall(_pack(A_CLSE, self.local, self.remote))
        except OSError:
            pass

    def _map(self, path: str) -> Path:
        if path.startswith(DEVICE_DIR):
            return self.dev.sandbox / path[len(DEVICE_DIR):].lstrip("/")
        return self.dev.sandbox / ".outside" / path.lstrip("/")

    def run_shell(self) -> None:
        command = self.service[len("shell:"):].replace(DEVICE_DIR, str(self.dev.sandbox))
        env = {"PATH": f"{self.dev.sandbox / '.bin'}:/usr/bin:/bin", "HOME": str(self.dev.sandbox)}
        try:
            proc = subprocess.run(["sh", "-c", command], cwd=self.dev.sandbox, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env=env, timeout=600, check=False)
            out = proc.stdout  # one stream, in order, as a legacy (pty-less) adb shell delivers it
        except subprocess.TimeoutExpired:
            out = b"timeout\n"
        self.send(out)
        self.close()

    # --------------------------------------------------------------- sync: service

    def feed(self, data: bytes) -> None:
        with self.lock:
            self.buf += data
            while True:
                if self.file is not None:
                    if len(self.buf) < 8:
                        return
                    tag, n = self.buf[:4], struct.unpack("<I", self.buf[4:8])[0]
                    if tag == b"DATA":
                        if len(self.buf) < 8 + n:
                            return
                        self.file_data += self.buf[8 : 8 + n]
                        self.buf = self.buf[8 + n :]
                        continue
                    if tag == b"DONE":
                        self.buf = self.buf[8:]
                        path, mode = self.file
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_bytes(bytes(self.file_data))
                        path.chmod(mode & 0o777)
                        self.file, self.file_data = None, bytearray()
                        self.send(b"OKAY" + struct.pack("<I", 0))
                        continue
                    self.send(b"FAIL" + struct.pack("<I", 11) + b"bad message")
                    return
                if len(self.buf) < 8:
                    return
                tag, n = self.buf[:4], struct.unpack("<I", self.buf[4:8])[0]
                if len(self.buf) < 8 + n:
                    return
                arg = self.buf[8 : 8 + n].decode(errors="replace")
                self.buf = self.buf[8 + n :]
                if tag == b"STAT":
                    p = self._map(arg)
                    if p.exists():
                        st = p.stat()
                        mode, size, mtime = st.st_mode, st.st_size, int(st.st_mtime)
                    else:
                        mode = size = mtime = 0
                    if arg.rstrip("/") == DEVICE_DIR:
                        mode = stat.S_IFDIR | 0o771
                    self.send(b"STAT" + struct.pack("<3I", mode, size, mtime))
                elif tag == b"SEND":
                    remote, _, mode_s = arg.rpartition(",")
                    self.file = (self._map(remote), int(mode_s or "420"))
                elif tag == b"QUIT":
                    self.close()
                    return
                else:
                    self.send(b"FAIL" + struct.pack("<I", 19) + b"unsupported request")
