#!/usr/bin/env python3
"""C array generation for a 10 MB model vs `xxd -i` on the same file, measured in one run.

Both write a complete C source file to disk; the ratio is edgekit's time over xxd's (target <= 1.0).
edgekit's file also carries alignas(16), the size constant and the header comment.

    .venv/bin/python benchmarks/c_array_speed.py
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def best_of(n: int, fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    from edgekit.codegen import render
    from edgekit.codegen.c_array import format_bytes

    xxd = shutil.which("xxd")
    if xxd is None:
        print("xxd is not installed (Debian: xxd): no reference to measure against", file=sys.stderr)
        return 2
    data = os.urandom(10 * 1024 * 1024)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.tflite"
        src.write_bytes(data)

        def run_xxd() -> None:
            with open(Path(tmp) / "xxd.c", "w") as out:
                subprocess.run([xxd, "-i", str(src)], stdout=out, check=True)

        def run_edgekit() -> None:
            text = render.render("codegen/model_data.cc.j2", {
                "edgekit_version": "bench", "source_name": "model.tflite", "sha256": "0" * 64, "section": None,
                "array": "g_model_data", "array_body": format_bytes(src.read_bytes()), "size": len(data)})
            (Path(tmp) / "model_data.cc").write_text(text)

        t_xxd = best_of(3, run_xxd)
        t_ek = best_of(3, run_edgekit)
        size_xxd = (Path(tmp) / "xxd.c").stat().st_size
        size_ek = (Path(tmp) / "model_data.cc").stat().st_size
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"10 MiB model -> C source: xxd -i {t_xxd:.3f} s ({size_xxd:,} B), edgekit {t_ek:.3f} s ({size_ek:,} B); "
          f"edgekit/xxd = {t_ek / t_xxd:.2f} (target <= 1.0), best of 3")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
