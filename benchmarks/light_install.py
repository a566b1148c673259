#!/usr/bin/env python3
"""The core install (no `convert` extra): size, install time, and `check`'s cold start.

Builds a wheel of this checkout, installs it into a fresh virtual environment with the pinned
constraints (from PyPI, or pip's cache), and reports the environment's size and the install time.
Then times whole-process `edgekit check model.tflite -t cortex-m4` (cold start: a new process every
time, TFLM worker included) against a reference measured in the same run, alternating: a bare
`python -c "import numpy, tflite_micro"` in the same environment (what any tool that runs the TFLM
interpreter pays). Goals (issue 13): <= 200 MB, <= 1 s cold start for `check` on a small model.

    .venv/bin/python benchmarks/light_install.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def _small_model(path: Path) -> None:
    """A small int8 CNN written with this checkout's own environment (which has the convert extra)."""
    code = (
        "import sys, numpy as np\n"
        "from edgekit.demo import train_digits_cnn\n"
        "from edgekit import intake, data\n"
        "from edgekit.stages import quantize\n"
        "m, (x, _, _, _) = train_digits_cnn(epochs=1)\n"
        "m.save(sys.argv[1] + '.keras')\n"
        "art = intake.load(sys.argv[1] + '.keras')\n"
        "open(sys.argv[1], 'wb').write(quantize.convert(art, 'int8', data.Dataset(x[:50], None, 'x'), 'int8'))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=ROOT)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="keep the environment here")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="edgekit-light-"))
    try:
        dist = work / "dist"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
                       check=True)
        wheel = next(dist.glob("edgekit-*.whl"))
        env_dir = work / "env"
        venv.EnvBuilder(with_pip=True).create(env_dir)
        py = env_dir / "bin" / "python"
        base = _du(env_dir)
        t0 = time.perf_counter()
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c",
                        str(ROOT / "constraints.txt"), str(wheel)], check=True)
        install_s = time.perf_counter() - t0
        size = _du(env_dir)
        site = next((env_dir / "lib").glob("python3*/site-packages"))
        heavy = [m for m in ("tensorflow", "keras", "coremltools", "onnx", "onnx2tf", "torch") if (site / m).exists()]
        model = work / "small_int8.tflite"
        _small_model(model)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
        check = [str(env_dir / "bin" / "edgekit"), "check", str(model), "-t", "cortex-m4"]
        ref = [str(py), "-c", "import numpy, tflite_micro.python.tflite_micro.runtime"]
        _timed(check, env)  # warm the page cache once
        t_check, t_ref = [], []
        for _ in range(args.runs):  # alternating, whole processes
            t_check.append(_timed(check, env))
            t_ref.append(_timed(ref, env))
        mc, mr = statistics.median(t_check), statistics.median(t_ref)
        print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
              f"Python {platform.python_version()}")
        print(f"core install: {size / 1e6:.1f} MB in the environment ({(size - base) / 1e6:.1f} MB over an empty "
              f"venv), {install_s:.1f} s to install (pip cache {'warm' if install_s < 60 else 'cold'}); "
              f"heavy packages present: {heavy or 'none'}")
        print(f"check cold start: median {mc:.3f} s over {args.runs} runs; reference (python + numpy + TFLM "
              f"runtime import) {mr:.3f} s; ratio {mc / mr:.2f}x")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
