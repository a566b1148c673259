#!/usr/bin/env python3
"""Serial bench overhead on the device emulator: wire bytes per input byte, and host-side time per
command besides the device's own time (target: under 1 ms). Three runs, same machine, same session.

    .venv/bin/python benchmarks/bench_overhead.py MODEL.tflite
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys


def main() -> int:
    from edgekit.bench.runner import bench
    from edgekit.transports.serial_port import SerialTransport

    model = sys.argv[1]
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "device-sim", model, "--stop-after", "300"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        for i in range(3):
            r = bench(model, "cortex-m4", SerialTransport(port), runs=100, warmup=5)
            overhead = ("not computed" if r.host_overhead_ms_per_command is None
                        else f"{r.host_overhead_ms_per_command:.3f} ms per command")
            print(f"run {i + 1}: wire {r.wire_bytes_per_input_byte} bytes per input byte; host overhead "
                  f"{overhead} (target < 1 ms); device-sim median "
                  f"{r.stats['median_us']:.0f} us (host time)")
    finally:
        proc.kill()
        proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
