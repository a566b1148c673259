#!/usr/bin/env python3
"""QEMU's TCP serial with and without ``nodelay=on``: the round trip of one protocol command and the
wall time of a whole `bench` (same model, same firmware, same session, alternating, 3 runs each).

    .venv/bin/python benchmarks/qemu_serial_latency.py MODEL.tflite BUILD_DIR [--runs 50]

BUILD_DIR holds the firmware.elf of `edgekit scaffold MODEL -t cortex-m4 --build cmake` built with
``-DBOARD=qemu``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path


def round_trip_ms(build: Path, nodelay: bool, commands: int = 50) -> float:
    from edgekit.bench.protocol import Client
    from edgekit.transports.qemu import QemuTransport

    with QemuTransport(build, nodelay=nodelay) as t:
        c = Client(t)
        c.drain()
        c.command("name")
        t0 = time.perf_counter()
        for _ in range(commands):
            c.command("timestamp")
        return (time.perf_counter() - t0) / commands * 1000


def bench_s(model: str, build: Path, nodelay: bool, runs: int) -> tuple[float, float]:
    from edgekit.bench.runner import bench
    from edgekit.transports.qemu import QemuTransport

    t0 = time.perf_counter()
    r = bench(model, "cortex-m4", QemuTransport(build, nodelay=nodelay), runs=runs, warmup=5,
              time_kind="virtual time")
    return time.perf_counter() - t0, r.stats["median_us"]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("build", type=Path)
    p.add_argument("--runs", type=int, default=50)
    a = p.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; model {Path(a.model).name}, {a.runs} runs")
    rows: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    for _ in range(3):
        for nodelay in (False, True):
            rt = round_trip_ms(a.build, nodelay)
            wall, median = bench_s(a.model, a.build, nodelay, a.runs)
            rows[nodelay].append((rt, wall, median))
    for nodelay, vals in rows.items():
        rts, walls, medians = zip(*vals, strict=True)
        print(f"nodelay={'on ' if nodelay else 'off'}: round trip {statistics.median(rts):.2f} ms per command "
              f"({', '.join(f'{v:.2f}' for v in rts)}); bench {statistics.median(walls):.2f} s "
              f"({', '.join(f'{v:.2f}' for v in walls)}); device median {medians[0]:.0f} us virtual")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
