"""A device emulator on a real pseudo-terminal pair: the protocol of docs/protocol.md, with the model
running on the TFLM host interpreter. ``edgekit device-sim MODEL`` prints the pty path.

Its latencies are host times and are labelled as such (``board=host-sim``). Fault switches make it
behave like the devices the robustness tests need (each still speaks the real protocol):
``no_extensions`` (a plain MLPerf Tiny device), ``reset_after`` (reboot every N commands),
``garbage`` (noise and split lines), ``silent`` (never answers), ``wrong_hash``, ``corrupt_output``.
"""

from __future__ import annotations

import hashlib
import os
import select
import time
import tty
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class SimOptions:
    no_extensions: bool = False
    reset_after: int = 0
    garbage: bool = False
    silent: bool = False
    wrong_hash: bool = False
    corrupt_output: bool = False


class DeviceSim:
    def __init__(self, model: bytes, opts: SimOptions | None = None, name: str = "sim") -> None:
        from tflite_micro.python.tflite_micro import runtime

        from edgekit.analysis.arena import measure_arena

        self.model, self.opts, self.name = model, opts or SimOptions(), name
        arena = measure_arena(model)
        self.arena_used, self.arena_size = arena.total_bytes, arena.trial_arena_bytes
        self.interp = runtime.Interpreter.from_bytes(model, arena_size=self.arena_size)
        self.in_detail = self.interp.get_input_details(0)
        self.in_shape = tuple(int(d) for d in self.in_detail["shape"])
        self.in_bytes = int(np.prod(self.in_shape)) * np.dtype(self.in_detail["dtype"]).itemsize
        self.input = np.zeros(self.in_shape, dtype=self.in_detail["dtype"])
        self.loading: bytearray | None = None
        self.expected = 0
        self.output: np.ndarray | None = None
        self.commands = 0
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    # ----------------------------------------------------------------- I/O

    def send(self, text: str) -> None:
        data = text.encode()
        while data:
            n = os.write(self.master, data)
            data = data[n:]

    def line(self, text: str) -> None:
        self.send(text + "\r\n")

    def boot(self) -> None:
        self.line("m-timestamp-mode-performance")
        self.line("m-init-done")
        self.line("m-ready")

    def serve(self, stop_after: float | None = None) -> None:
        """Answer commands until stopped (``edgekit-exit%``) or ``stop_after`` seconds pass."""
        self.boot()
        buf = b""
        deadline = None if stop_after is None else time.monotonic() + stop_after
        while deadline is None or time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            buf += chunk
            while b"%" in buf:
                raw, _, buf = buf.partition(b"%")
                if not self.handle(raw.decode("ascii", errors="replace").strip()):
                    return

    # ----------------------------------------------------------------- commands

    def handle(self, cmd: str) -> bool:
        self.commands += 1
        if self.opts.silent:
            return True
        if self.opts.reset_after and self.commands % self.opts.reset_after == 0:
            self.send("m-lap-us-1")  # a partial answer, then the reboot
            self.loading, self.expected = None, 0
            self.boot()
            return True
        if self.opts.garbage:
            self.send("\x00\xffgarbage ~~\r\nm-rea")  # noise, then a line split across writes
            self.send("dy-not-really\r\n")
        verb, _, args = cmd.partition(" ")
        keep_running = True
        if verb == "name":
            self.line(f"m-name-dut-[edgekit-{self.name}]")
        elif verb == "profile":
            self.line("m-profile-[edgekit device-sim, MLPerf Tiny performance mode]")
        elif verb == "timestamp":
            self.line(f"m-lap-us-{int(time.perf_counter() * 1e6)}")
        elif verb == "db":
            self.db(args)
        elif verb == "infer":
            self.infer(args)
        elif verb == "results":
            self.results()
        elif verb.startswith("edgekit-") and not self.opts.no_extensions:
            keep_running = self.extension(verb)
        else:
            self.line(f"e-[Unknown command: {cmd}]")
        self.line("m-ready")
        return keep_running

    def db(self, args: str) -> None:
        if args.startswith("load "):
            n = int(args[5:] or 0)
            if n != self.in_bytes:
                self.line(f"e-[db load expects {self.in_bytes} bytes]")
                return
            self.loading, self.expected = bytearray(), n
            self.line(f"m-[Expecting {n} bytes]")
            return
        if self.loading is None:
            self.line("e-[db load N first]")
            return
        try:
            self.loading += bytes.fromhex(args)
        except ValueError:
            self.line("e-[bad hex]")
            return
        if len(self.loading) >= self.expected:
            raw = bytes(self.loading[: self.expected])
            self.input = np.frombuffer(raw, dtype=self.in_detail["dtype"]).reshape(self.in_shape).copy()
            self.loading = None
            self.line("m-load-done")

    def infer(self, args: str) -> None:
        parts = [int(p) for p in args.split()] + [1, 0]
        count, warmup = max(parts[0], 1), max(parts[1], 0)
        self.line(f"m-warmup-start-{warmup}")
        for _ in range(warmup):
            self.interp.set_input(self.input, 0)
            self.interp.invoke()
        self.line("m-warmup-done")
        self.line(f"m-infer-start-{count}")
        t0 = time.perf_counter()
        for _ in range(count):
            self.interp.set_input(self.input, 0)
            self.interp.invoke()
        t1 = time.perf_counter()
        self.output = np.array(self.interp.get_output(0))
        self.line(f"m-lap-us-{int(t0 * 1e6)}")
        self.line(f"m-lap-us-{int(t1 * 1e6)}")
        self.line("m-infer-done")
        self.results()

    def results(self) -> None:
        if self.output is None:
            self.line("m-results-[]")
            return
        from edgekit.evaluate import _dequantize

        q = self.interp.get_output_details(0)["quantization_parameters"]
        scale = float(q["scales"][0]) if len(q["scales"]) else 0.0
        zp = int(q["zero_points"][0]) if len(q["zero_points"]) else 0
        vals = _dequantize(self.output, scale, zp)
        self.line("m-results-[" + ",".join(f"{v:.3f}" for v in vals.reshape(-1)) + "]")

    def extension(self, verb: str) -> bool:
        if verb == "edgekit-info":
            digest = hashlib.sha256(self.model).hexdigest()
            if self.opts.wrong_hash:
                digest = "0" * 64
            self.line(f"m-edgekit-info-[model={self.name},sha256={digest},model_bytes={len(self.model)},"
                      f"arena_bytes={self.arena_size},arena_used={self.arena_used},clock_hz=0,board=host-sim]")
        elif verb == "edgekit-output":
            raw = b"" if self.output is None else self.output.tobytes()
            if self.opts.corrupt_output and raw:
                raw = bytes([raw[0] ^ 0x01]) + raw[1:]
            self.line(f"m-edgekit-output-[{raw.hex()}]")
        elif verb == "edgekit-ops":
            self.line("e-[Unknown command: edgekit-ops (the host interpreter has no per-op profiler)]")
        elif verb == "edgekit-exit":
            self.line("m-exit")
            return False
        else:
            self.line(f"e-[Unknown command: {verb}]")
        return True

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def run_device_sim(model_path: str, opts: SimOptions, stop_after: float | None = None) -> int:
    """``edgekit device-sim``: print the pty path, then serve until edgekit-exit or interrupted."""
    from edgekit.analysis.graph import read_graph
    from edgekit.errors import ModelError

    p = Path(model_path)
    if not p.is_file():
        raise ModelError(f"model file {p} does not exist")
    data = p.read_bytes()
    read_graph(data, where=str(p))
    sim = DeviceSim(data, opts, name=p.stem)
    print(sim.path, flush=True)
    try:
        sim.serve(stop_after)
    finally:
        sim.close()
    return 0


