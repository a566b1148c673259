"""Serve a device double on a pseudo-terminal, behind an optionally faulty line; prints the pty path.

    python -m tests.doubles.serve_dut MODEL.tflite --model-id ic01 [--baud 115200] [--timer-start N]
        [--frozen-timer] [--log laps.jsonl] [--drop P --duplicate P --corrupt P --split N --delay S
        --reset-every N --endless-after N --endless lines|binary --seed S] [--sim] [--stop-after S]

``--sim`` serves edgekit's own device emulator (edgekit.sim.device) instead of the MLPerf Tiny reference
double, so the same faults reach a device with the edgekit extensions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tests.doubles.faults import Faults, FaultyDevice, serve_pty
from tests.doubles.mlperf_dut import Clock, ReferenceDut


class SimEngine:
    """edgekit's DeviceSim with the byte-level input of a board (commands end with '%')."""

    def __init__(self, model: bytes, name: str, mlperf_model: str | None) -> None:
        from edgekit.sim.device import DeviceSim, SimOptions

        self.sim = DeviceSim(model, SimOptions(mlperf_model=mlperf_model), name=name, write=self._write)
        self.write_raw: Any = lambda data: None
        self.buf = b""

    def _write(self, data: bytes) -> None:
        self.write_raw(data)

    def boot(self) -> None:
        self.buf = b""
        self.sim.boot()

    def receive(self, data: bytes) -> None:
        self.buf += data
        while b"%" in self.buf:
            raw, _, self.buf = self.buf.partition(b"%")
            self.sim.handle(raw.decode("ascii", errors="replace").strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="serve_dut")
    p.add_argument("tflite")
    p.add_argument("--model-id", default="kws01", choices=["ic01", "kws01", "vww01", "ad01"])
    p.add_argument("--sim", action="store_true", help="serve edgekit's device-sim engine instead")
    p.add_argument("--baud", type=int, default=0)
    p.add_argument("--timer-start", type=int, default=0)
    p.add_argument("--frozen-timer", action="store_true")
    p.add_argument("--wrap-in", type=int, help="the timer wraps this many microseconds after an infer starts")
    p.add_argument("--wrap-at-infer", type=int, default=1, help="... the Nth infer (default 1)")
    p.add_argument("--log")
    p.add_argument("--stop-after", type=float, default=120.0)
    for name in ("drop", "duplicate", "corrupt", "delay"):
        p.add_argument(f"--{name}", type=float, default=0.0)
    for name in ("split", "reset-every", "seed"):
        p.add_argument(f"--{name}", type=int, default=0)
    p.add_argument("--endless-after", type=int, default=-1)
    p.add_argument("--endless", choices=["lines", "binary"], default="lines")
    p.add_argument("--to-device", action="store_true")
    a = p.parse_args(argv)
    model = Path(a.tflite).read_bytes()
    engine: Any
    if a.sim:
        engine = SimEngine(model, Path(a.tflite).stem, a.model_id)
    else:
        clock = Clock(a.timer_start, frozen=a.frozen_timer, wrap_in=a.wrap_in, wrap_at_infer=a.wrap_at_infer)
        engine = ReferenceDut(a.model_id, model, clock=clock, baud=a.baud, log=Path(a.log) if a.log else None)
    faults = Faults(drop=a.drop, duplicate=a.duplicate, corrupt=a.corrupt, to_device=a.to_device, split=a.split,
                    delay=a.delay, reset_every=a.reset_every, endless_after=a.endless_after, endless=a.endless,
                    seed=a.seed)
    device = FaultyDevice(engine, faults)
    if a.sim:
        engine.boot()
    serve_pty(device, a.stop_after, on_path=lambda path: (print(path), sys.stdout.flush()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
