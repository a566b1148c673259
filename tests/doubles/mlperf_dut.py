"""Test double: a device running MLPerf Tiny's reference firmware, as its C sources behave.

Written from reading mlcommons/tiny ``benchmark/api/internally_implemented.cpp`` (command buffer, parser,
``db``, ``infer``), ``benchmark/main.cpp`` (one character at a time into the parser) and the reference
submissions' ``submitter_implemented.cpp`` (boot lines, timestamps, ``th_load_tensor``, ``th_results`` per
model). Nothing is copied; every behaviour below is re-expressed in Python, quirks included:

- The command buffer keeps the first ``EE_CMD_SIZE`` = 80 characters; later ones overwrite the 81st
  slot, which the terminating '%' then clears. CR and LF are ordinary characters (the runner sends none).
- ``strtok(" ")`` tokenizing, ``strncmp(.., 80)`` exact verbs, ``atoi`` numbers.
- ``db load N``: N = 0 (or no number parsed) -> ``e-[Command 'db load' must be >0 bytes]`` (the size is
  set to 0 anyway); N above ``MAX_DB_INPUT_SIZE`` -> the plain line ``Supplied buffer size N exceeds
  maximum of M`` ending in LF only (not an error line, and the size is kept). The load position restarts
  at 0 only with ``db load``.
- ``db HEX``: only the first token counts; an odd digit count -> ``e-[Insufficent number of hex digits]``
  (sic); a bad pair -> ``e-[Invalid hex digit 'XY']`` after the pairs before it were stored; ``m-load-done``
  exactly when the position reaches the size, and the rest of that line is ignored.
- ``infer`` = ``infer 1 10``, ``infer N`` = ``infer N 10``; N <= 0 -> ``e-[Inference iterations must be >0]``,
  W < 0 -> ``e-[Inference warmup must be >=0]``. The start stamp is read, then printed, inside the timed
  window (with ``baud`` set, the double spends that line's UART time there, as a board does).
- ``th_load_tensor`` with fewer bytes than the input: the plain line ``Input db has N elemented, expected M``
  (sic, LF only) and the previous input is used.
- Results: ic01 ``%0.3f`` values; vww01 with a trailing comma; kws01 printed as ``0.%d%d%d`` digit by digit;
  ad01 one score, the mean squared error between the dequantized output and the float input.
- ``m-lap-us-%lu`` of a 32-bit microsecond ticker (``us_ticker_read``), which wraps.
- Float arithmetic in float32 where the C code uses ``float`` (dequantization, the ad01 score's running sum).

Where the C code has undefined behaviour the double does something fixed and harmless, and says so:
bytes beyond the buffer are dropped (the C code overruns it), ``db print`` stops at the buffer's end,
an empty command answers ``e-[Unknown command: (null)]`` (what newlib's printf prints for the NULL
token on a Cortex-M, where reading address 0 does not fault), and results cover the model's own output
count (the C code has a fixed count per benchmark model).

It stands in for a board, which cannot exist here. The model runs on the TFLM host interpreter.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EE_CMD_SIZE = 80
FW_VERSION = "ULPMark for tinyML Firmware V0.0.1"
MAX_DB = {"ic01": 32 * 32 * 3, "kws01": 49 * 10 * 1, "vww01": 96 * 96 * 3, "ad01": 5 * 128 * 4 * 2}
HELP = [FW_VERSION, "", "help         : Print this information", "name         : Print the name of the device",
        "timestsamp   : Generate a timetsamp", "db SUBCMD    : Manipulate a generic byte buffer",
        "  load N     : Allocate N bytes and set load counter", "  db HH[HH]* : Load 8-bit hex byte(s) until N bytes",
        "  print [N=16] [offset=0]", "             : Print N bytes at offset as hex",
        "infer N [W=0]: Load input, execute N inferences after W warmup loops",
        "results      : Return the result fp32 vector"]


def atoi(text: str | None) -> int:
    """C atoi on an int32: leading blanks, sign, digits; 0 without digits; wraps like a 32-bit int."""
    if text is None:
        return 0
    s = text.lstrip(" \t\n\v\f\r")
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    digits = ""
    for ch in s:
        if not ch.isdigit() or not ch.isascii():
            break
        digits += ch
    v = sign * int(digits[:19]) if digits else 0
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def c_mod(a: int, b: int) -> int:
    """C's % (the sign of the dividend)."""
    return a - b * int(a / b)


class Strtok:
    """strtok(s, " ") over one command string."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def next(self) -> str | None:
        t, i = self.text, self.pos
        while i < len(t) and t[i] == " ":
            i += 1
        if i >= len(t):
            self.pos = i
            return None
        j = i
        while j < len(t) and t[j] != " ":
            j += 1
        self.pos = j + 1
        return t[i:j]


@dataclass
class Clock:
    """us_ticker_read(): a 32-bit microsecond counter starting at ``start`` (tests start it near a wrap)."""

    start: int = 0
    frozen: bool = False  # a timer that never runs (the Zephyr k_cycle_get_64 case)
    wrap_in: int | None = None  # arm(): make the counter wrap this many microseconds later
    wrap_at_infer: int = 1  # ... when the Nth `infer` starts
    t0: float = field(default_factory=time.perf_counter)

    def arm(self) -> None:
        if self.wrap_in is not None:
            self.start = (1 << 32) - self.wrap_in - int((time.perf_counter() - self.t0) * 1e6)
            self.wrap_in = None

    def read(self) -> int:
        if self.frozen:
            return self.start & 0xFFFFFFFF
        return (self.start + int((time.perf_counter() - self.t0) * 1e6)) & 0xFFFFFFFF


class ReferenceDut:
    def __init__(self, model_id: str, tflite: bytes, write: Callable[[bytes], None] | None = None,
                 clock: Clock | None = None, baud: int = 0, log: Path | None = None) -> None:
        from tflite_micro.python.tflite_micro import runtime

        if model_id not in MAX_DB:
            raise ValueError(f"unknown MLPerf Tiny model {model_id!r}")
        self.model_id, self.write_raw = model_id, write or (lambda b: None)
        self.clock, self.baud, self.log = clock or Clock(), baud, log
        self.interp = runtime.Interpreter.from_bytes(tflite, arena_size=1 << 20)
        d = self.interp.get_input_details(0)
        self.in_shape = tuple(int(v) for v in d["shape"])
        self.in_count = int(np.prod(self.in_shape))
        q = d["quantization_parameters"]
        self.in_scale = float(q["scales"][0]) if len(q["scales"]) else 1.0
        self.in_zp = int(q["zero_points"][0]) if len(q["zero_points"]) else 0
        o = self.interp.get_output_details(0)["quantization_parameters"]
        self.out_scale = float(o["scales"][0]) if len(o["scales"]) else 1.0
        self.out_zp = int(o["zero_points"][0]) if len(o["zero_points"]) else 0
        self.elem = 4 if model_id == "ad01" else 1
        self.max_db = max(MAX_DB[model_id], self.in_count * self.elem * (2 if model_id == "ad01" else 1))
        self.laps: list[tuple[int, int, int]] = []  # (iterations, t0, t1) of every infer, as printed
        self.infers = 0
        self.commands: list[str] = []  # every command as the parser saw it (after the 80-character cut)
        self.boot()

    # ------------------------------------------------------------ the board

    def boot(self) -> None:
        self.cmd: list[str] = []
        self.cmd_pos = 0
        self.buff = bytearray(self.max_db)
        self.buff_size = 0
        self.buff_pos = 0
        self.input = np.zeros(self.in_shape, dtype=np.int8)
        self.features = np.zeros(self.in_count, dtype=np.float32)
        self.parser_enabled = False
        self.printf("m-timestamp-mode-performance\r\n")
        self.timestamp()
        self.printf("m-init-done\r\n")
        self.parser_enabled = True
        self.printf("m-ready\r\n")

    def printf(self, text: str) -> None:
        data = text.encode("latin-1", errors="replace")
        self.write_raw(data)
        if self.baud:  # a blocking UART: the CPU waits until the bits are out (8N1: 10 bits a byte)
            time.sleep(len(data) * 10 / self.baud)

    def timestamp(self) -> int:
        t = self.clock.read()
        self.printf(f"m-lap-us-{t}\r\n")
        return t

    def receive(self, data: bytes) -> None:
        """main(): every character from the UART into ee_serial_callback."""
        for byte in data:
            c = chr(byte)
            if c == "%":
                command = "".join(self.cmd[: self.cmd_pos]).split("\0")[0]  # a C string ends at NUL
                self.cmd, self.cmd_pos = [], 0
                self.dispatch(command)
            else:
                if self.cmd_pos < len(self.cmd):
                    self.cmd[self.cmd_pos] = c
                else:
                    self.cmd.append(c)
                self.cmd_pos = EE_CMD_SIZE if self.cmd_pos >= EE_CMD_SIZE else self.cmd_pos + 1

    # ------------------------------------------------------------ the parser

    def dispatch(self, command: str) -> None:
        if not self.parser_enabled:
            return
        if len(self.commands) < 100_000:
            self.commands.append(command)
        tok = Strtok(command)
        verb = tok.next()
        if verb == "name":
            self.printf("m-name-dut-[unspecified]\r\n")
        elif verb == "timestamp":
            self.timestamp()
        elif not self.profile_parse(verb, tok):
            self.printf(f"e-[Unknown command: {verb if verb is not None else '(null)'}]\r\n")
        self.printf("m-ready\r\n")

    def profile_parse(self, verb: str | None, tok: Strtok) -> bool:
        if verb == "profile":
            self.printf(f"m-profile-[{FW_VERSION}]\r\n")
            self.printf(f"m-model-[{self.model_id}]\r\n")
        elif verb == "help":
            for line in HELP:
                self.printf(line + "\r\n")
        elif verb == "db":
            self.buffer_parse(tok)
        elif verb == "infer":
            n, w = 1, 10
            arg = tok.next()
            if arg is not None:
                i = atoi(arg)
                if i <= 0:
                    self.printf("e-[Inference iterations must be >0]\r\n")
                    return True
                n = i
                arg = tok.next()
                if arg is not None:
                    i = atoi(arg)
                    if i < 0:
                        self.printf("e-[Inference warmup must be >=0]\r\n")
                        return True
                    w = i
            self.infer(n, w)
        elif verb == "results":
            self.results()
        else:
            return False
        return True

    def buffer_parse(self, tok: Strtok) -> None:
        sub = tok.next()
        if sub is None:
            self.printf("e-[Command 'db' requires a subcommand]\r\n")
        elif sub == "load":
            arg = tok.next()
            if arg is None:
                self.printf("e-[Command 'db load' requires the # of bytes]\r\n")
                return
            size = atoi(arg) & 0xFFFFFFFF  # size_t on a 32-bit core
            self.buff_size = size
            if size == 0:
                self.printf("e-[Command 'db load' must be >0 bytes]\r\n")
                return
            self.buff_pos = 0
            shown = size - (1 << 32) if size >= 1 << 31 else size  # %d of a size_t
            if size > self.max_db:
                self.printf(f"Supplied buffer size {shown} exceeds maximum of {self.max_db}\n")
            else:
                self.printf(f"m-[Expecting {shown} bytes]\r\n")
        elif sub == "print":
            count = min(self.buff_size, self.max_db)
            for i in range(count):
                if i % 8 == 0:
                    self.printf("m-buffer-")
                self.printf(f"{self.buff[i]:02x}")
                self.printf("\r\n" if (i + 1) % 8 == 0 or i + 1 == self.buff_size else "-")
            if count % 8 != 0:
                self.printf("\r\n")
        else:
            digits = sub[:EE_CMD_SIZE]
            if len(digits) & 1:
                self.printf("e-[Insufficent number of hex digits]\r\n")
                return
            for k in range(0, len(digits), 2):
                pair = digits[k : k + 2]
                if any(ch not in "0123456789abcdefABCDEF" for ch in pair):
                    self.printf(f"e-[Invalid hex digit '{pair}']\r\n")
                    return
                if self.buff_pos < self.max_db:
                    self.buff[self.buff_pos] = int(pair, 16)
                self.buff_pos = (self.buff_pos + 1) & 0xFFFFFFFF
                if self.buff_pos == self.buff_size:
                    self.printf("m-load-done\r\n")
                    return

    # ------------------------------------------------------------ the model (th_*)

    def load_tensor(self) -> None:
        want = self.in_count * self.elem
        got = min(want, self.buff_pos)
        if got // self.elem != self.in_count:
            self.printf(f"Input db has {got // self.elem} elemented, expected {self.in_count}\n")
            return
        raw = bytes(self.buff[:want])
        if self.model_id in ("ic01", "vww01"):
            q = (np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128).astype(np.int8)
        elif self.model_id == "kws01":
            q = np.frombuffer(raw, dtype=np.int8)
        else:
            self.features = np.frombuffer(raw, dtype="<f4").astype(np.float32)
            v = (self.features / np.float32(self.in_scale)).astype(np.float64)
            r = np.where(v >= 0, np.floor(v + 0.5), np.ceil(v - 0.5)) + self.in_zp  # C round()
            q = np.clip(r, -128, 127).astype(np.int8)
        self.input = q.reshape(self.in_shape).copy()

    def invoke(self) -> None:
        self.interp.set_input(self.input, 0)
        self.interp.invoke()

    def infer(self, n: int, w: int) -> None:
        self.infers += 1
        self.load_tensor()
        self.printf(f"m-warmup-start-{w}\r\n")
        for _ in range(w):
            self.invoke()
        self.printf("m-warmup-done\r\n")
        self.printf(f"m-infer-start-{n}\r\n")
        if self.infers == self.clock.wrap_at_infer:
            self.clock.arm()  # tests: the 32-bit counter wraps inside this timed window
        t0 = self.timestamp()
        for _ in range(n):
            self.invoke()
        t1 = self.timestamp()
        self.laps.append((n, t0, t1))
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(json.dumps({"n": n, "w": w, "t0": t0, "t1": t1}) + "\n")
        self.printf("m-infer-done\r\n")
        self.results()

    def outputs(self) -> np.ndarray:
        y = np.asarray(self.interp.get_output(0)).reshape(-1)
        return ((y.astype(np.float32) - self.out_zp) * np.float32(self.out_scale)).astype(np.float32)

    def results(self) -> None:
        v = self.outputs()
        if self.model_id == "ad01":
            n = min(v.size, self.features.size)
            total = np.float32(0)
            for k in range(n):  # float accumulation in order, as the C loop does
                d = np.float32(v[k] - self.features[k])
                total = np.float32(total + d * d)
            score = float(np.float32(total / np.float32(max(n, 1))))
            self.printf(f"m-results-[{score:0.3f}]\r\n")
            return
        self.printf("m-results-[")
        last = v.size if self.model_id == "vww01" else v.size - 1  # vww01: nresults = 3 for 2 classes
        for i, x in enumerate(v):
            if self.model_id == "kws01":  # float products truncated to int, digit by digit
                self.printf(f"0.{int(np.float32(x) * np.float32(10))}")
                self.printf(f"{c_mod(int(np.float32(x) * np.float32(100)), 10)}")
                self.printf(f"{c_mod(int(np.float32(x) * np.float32(1000)), 10)}")
            else:
                self.printf(f"{float(x):0.3f}")
            if i < last:
                self.printf(",")
        self.printf("]\r\n")
