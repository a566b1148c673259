"""An emulated device on a real pseudo-terminal pair: the protocol of docs/protocol.md, with the model
running on the TFLM host interpreter. ``edgekit device-sim MODEL`` prints the pty path.

It follows MLPerf Tiny's device API where the runner depends on it (``infer N [W=10]`` with its errors,
``db load N`` for any 0 < N <= the buffer, its error strings, ``m-model-[ID]`` from ``profile``) and, with
``mlperf_model``, that model's input convention (edgekit/bench/mlperf.py). Its latencies are host times
and are labelled as such (``board=host-sim``); ``m-lap-us`` is a 32-bit counter as on a board.

Fault switches make it behave like the devices the robustness tests need (each still speaks the real
protocol): ``no_extensions`` (a plain MLPerf Tiny device), ``reset_after`` (reboot every N commands),
``garbage`` (noise and split lines), ``silent`` (never answers), ``wrong_hash``, ``corrupt_output``.
"""

from __future__ import annotations

import hashlib
import os
import select
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.bench import mlperf
from edgekit.bench.protocol import COMMAND_BUFFER, TIMER_BITS


@dataclass
class SimOptions:
    no_extensions: bool = False
    reset_after: int = 0
    garbage: bool = False
    silent: bool = False
    wrong_hash: bool = False
    corrupt_output: bool = False
    mlperf_model: str | None = None
    timer_offset_us: int = 0  # added to the 32-bit counter (tests start it just before a wrap)


def _atoi(text: str) -> int:
    """C's atoi: leading blanks, an optional sign, digits; 0 when there are none."""
    s = text.lstrip()
    sign, i = 1, 0
    if s[:1] in "+-" and s[:1]:
        sign, i = (-1 if s[0] == "-" else 1), 1
    j = i
    while j < len(s) and s[j].isdigit():
        j += 1
    return sign * int(s[i:j]) if j > i else 0


class DeviceSim:
    """The protocol engine. ``write`` receives the bytes the device sends; ``handle`` takes one command."""

    def __init__(self, model: bytes, opts: SimOptions | None = None, name: str = "sim",
                 write: Callable[[bytes], None] | None = None) -> None:
        from tflite_micro.python.tflite_micro import runtime

        from edgekit.analysis.arena import measure_arena

        self.model, self.opts, self.name = model, opts or SimOptions(), name
        self.write = write or (lambda data: None)
        self.conv = mlperf.convention(self.opts.mlperf_model)
        arena = measure_arena(model)
        self.arena_used, self.arena_size = arena.total_bytes, arena.trial_arena_bytes
        self.interp = runtime.Interpreter.from_bytes(model, arena_size=self.arena_size)
        d = self.interp.get_input_details(0)
        self.in_dtype = np.dtype(d["dtype"])
        self.in_shape = tuple(int(v) for v in d["shape"])
        self.in_elements = int(np.prod(self.in_shape))
        q = d["quantization_parameters"]
        self.in_scale = float(q["scales"][0]) if len(q["scales"]) else 0.0
        self.in_zp = int(q["zero_points"][0]) if len(q["zero_points"]) else 0
        self.in_bytes = mlperf.wire_bytes(self.conv, self.in_elements, self.in_elements * self.in_dtype.itemsize)
        self.buffer_bytes = self.in_bytes * (self.conv.buffer_inputs if self.conv else 1)
        self.buffer = bytearray(self.buffer_bytes)
        self.expected = 0
        self.received = 0
        self.input = np.zeros(self.in_shape, dtype=self.in_dtype)
        self.features = np.zeros(0, dtype=np.float32)
        self.output: np.ndarray | None = None
        self.commands = 0

    # ----------------------------------------------------------------- I/O

    def send(self, text: str) -> None:
        self.write(text.encode())

    def line(self, text: str) -> None:
        self.send(text + "\r\n")

    def now_us(self) -> int:
        return (time.perf_counter_ns() // 1000 + self.opts.timer_offset_us) % (1 << TIMER_BITS)

    def boot(self) -> None:
        self.line("m-timestamp-mode-performance")
        self.line("m-init-done")
        self.line("m-ready")

    # ----------------------------------------------------------------- commands

    def handle(self, cmd: str) -> bool:
        """Answer one command (without its '%'); False once the device should stop (edgekit-exit)."""
        self.commands += 1
        if self.opts.silent:
            return True
        if self.opts.reset_after and self.commands % self.opts.reset_after == 0:
            self.send("m-lap-us-1")  # a partial answer, then the reboot
            self.expected = self.received = 0
            self.boot()
            return True
        if self.opts.garbage:
            self.send("\x00\xffgarbage ~~\r\nm-rea")  # noise, then a line split across writes
            self.send("dy-not-really\r\n")
        if len(cmd) > COMMAND_BUFFER - 1:
            self.line(f"e-[command too long: more than {COMMAND_BUFFER - 1} characters]")
            self.line("m-ready")
            return True
        words = cmd.split()
        verb = words[0] if words else ""
        keep_running = True
        if verb == "name":
            self.line(f"m-name-dut-[edgekit-{self.name}]")
        elif verb == "profile":
            self.line("m-profile-[edgekit device-sim, MLPerf Tiny performance mode]")
            self.line(f"m-model-[{self.conv.model_id if self.conv else self.name}]")
        elif verb == "timestamp":
            self.line(f"m-lap-us-{self.now_us()}")
        elif verb == "db":
            self.db(words[1:])
        elif verb == "infer":
            self.infer(words[1:])
        elif verb == "results":
            self.results()
        elif verb.startswith("edgekit-") and not self.opts.no_extensions:
            keep_running = self.extension(verb)
        else:
            self.line(f"e-[Unknown command: {verb}]")
        self.line("m-ready")
        return keep_running

    def db(self, args: list[str]) -> None:
        if not args:
            self.line("e-[Command 'db' requires a subcommand]")
            return
        if args[0] == "load":
            if len(args) < 2:
                self.line("e-[Command 'db load' requires the # of bytes]")
                return
            n = _atoi(args[1])
            if n <= 0:
                self.line("e-[Command 'db load' must be >0 bytes]")
                return
            if n > self.buffer_bytes:
                self.line(f"e-[Supplied buffer size {n} exceeds maximum of {self.buffer_bytes}]")
                return
            self.expected, self.received = n, 0
            self.line(f"m-[Expecting {n} bytes]")
            return
        if self.expected == 0:
            self.line("e-[Command 'db load' must come first]")
            return
        hexdigits = args[0]
        if len(hexdigits) % 2:
            self.line("e-[Insufficent number of hex digits]")
            return
        for i in range(0, len(hexdigits), 2):
            pair = hexdigits[i : i + 2]
            try:
                value = int(pair, 16)
            except ValueError:
                self.line(f"e-[Invalid hex digit '{pair}']")
                return
            if self.received < self.expected:
                self.buffer[self.received] = value
                self.received += 1
                if self.received == self.expected:
                    self.line("m-load-done")
                    return

    def _load_tensor(self) -> bool:
        if self.received < self.in_bytes:
            self.line(f"e-[Input db has {self.received} bytes, expected {self.in_bytes}]")
            return False
        raw = bytes(self.buffer[: self.in_bytes])
        if self.conv is None:
            self.input = np.frombuffer(raw, dtype=self.in_dtype).reshape(self.in_shape).copy()
        else:
            q, self.features = mlperf.decode(self.conv, raw, self.in_elements, self.in_scale, self.in_zp)
            self.input = q.astype(self.in_dtype).reshape(self.in_shape)
        return True

    def infer(self, args: list[str]) -> None:
        count, warmup = 1, 10  # MLPerf Tiny's defaults: `infer` = `infer 1 10`, `infer N` = `infer N 10`
        if args:
            count = _atoi(args[0])
            if count <= 0:
                self.line("e-[Inference iterations must be >0]")
                return
            if len(args) > 1:
                warmup = _atoi(args[1])
                if warmup < 0:
                    self.line("e-[Inference warmup must be >=0]")
                    return
        if not self._load_tensor():
            return
        self.line(f"m-warmup-start-{warmup}")
        for _ in range(warmup):
            self.interp.set_input(self.input, 0)
            self.interp.invoke()
        self.line("m-warmup-done")
        self.line(f"m-infer-start-{count}")
        t0 = self.now_us()
        for _ in range(count):
            self.interp.set_input(self.input, 0)
            self.interp.invoke()
        t1 = self.now_us()
        self.output = np.array(self.interp.get_output(0))
        self.line(f"m-lap-us-{t0}")
        self.line(f"m-lap-us-{t1}")
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
        if self.conv is not None and self.conv.model_id == "ad01":
            self.line(f"m-results-[{mlperf.anomaly_score(vals, self.features):0.3f}]")
            return
        self.line("m-results-[" + ",".join(f"{v:.3f}" for v in vals.reshape(-1)) + "]")

    def extension(self, verb: str) -> bool:
        if verb == "edgekit-info":
            digest = hashlib.sha256(self.model).hexdigest()
            if self.opts.wrong_hash:
                digest = "0" * 64
            self.line(f"m-edgekit-info-[model={self.name},sha256={digest},model_bytes={len(self.model)},"
                      f"arena_bytes={self.arena_size},arena_used={self.arena_used},clock_hz=0,board=host-sim,"
                      f"cmd_buffer={COMMAND_BUFFER - 1},timer_bits={TIMER_BITS},"
                      f"mlperf_model={self.conv.model_id if self.conv else 'none'}]")
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


class PtyDevice:
    """A DeviceSim behind the master side of a pseudo-terminal; ``path`` is the side a host opens."""

    def __init__(self, sim: DeviceSim) -> None:
        self.sim = sim
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        sim.write = self._write

    def _write(self, data: bytes) -> None:
        while data:
            n = os.write(self.master, data)
            data = data[n:]

    def serve(self, stop_after: float | None = None) -> None:
        """Answer commands until stopped (``edgekit-exit%``) or ``stop_after`` seconds pass."""
        self.sim.boot()
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
                text = raw.decode("ascii", errors="replace").replace("\r", "").replace("\n", "")
                if not self.sim.handle(text.strip()):
                    return
            if len(buf) > 4 * COMMAND_BUFFER:  # no terminator in sight: drop what no command can use
                buf = buf[-COMMAND_BUFFER:]

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def run_device_sim(model_path: str, opts: SimOptions, stop_after: float | None = None) -> int:
    """``edgekit device-sim``: print the pty path, then serve until edgekit-exit or interrupted."""
    from edgekit.analysis.graph import read_graph
    from edgekit.errors import DataError, ModelError

    p = Path(model_path)
    if not p.is_file():
        raise ModelError(f"model file {p} does not exist", "pass the .tflite the emulated device should run")
    if opts.reset_after < 0:
        raise DataError(f"--reset-after {opts.reset_after} is negative (0 = never, N = reboot every N commands)")
    if stop_after is not None and not stop_after > 0:
        raise DataError(f"--stop-after {stop_after} must be a positive number of seconds")
    if opts.mlperf_model is not None and mlperf.convention(opts.mlperf_model) is None:
        raise DataError(f"--mlperf-model {opts.mlperf_model!r} is not an MLPerf Tiny model",
                        "one of " + ", ".join(mlperf.MODELS))
    data = p.read_bytes()
    read_graph(data, where=str(p))
    sim = DeviceSim(data, opts, name=p.stem)
    if sim.conv is not None and sim.in_dtype != np.int8:
        raise DataError(f"--mlperf-model {sim.conv.model_id}: its firmware feeds an int8 input tensor, but {p}'s "
                        f"input is {sim.in_dtype}", "use the int8 model")
    dev = PtyDevice(sim)
    print(dev.path, flush=True)
    try:
        dev.serve(stop_after)
    finally:
        dev.close()
    return 0
