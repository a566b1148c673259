#!/usr/bin/env python3
"""fit --level 2 on the demo's digits CNN for cortex-m4: sizes against level 1, and whole-process cost against
a bare reference, measured in alternating runs on the same machine at the same time (medians).

- reference: a fresh Python process that imports TensorFlow, loads the .keras, converts it to int8 with a bare
  TFLiteConverter (200 calibration samples) and runs one TFLM evaluation pass over the held-out split;
- `edgekit fit --level 1` (the whole level-1 ladder) and `edgekit fit --level 2` (every level-2 rung), each a
  fresh process with the cache off.

Target: level 2 <= 2.5x the reference; the level-2 winner <= 0.6x the bytes of the level-1 int8 candidate.

    .venv/bin/python benchmarks/level2_speed.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE = r"""
import sys, numpy as np
from edgekit._tf import keras, quiet_native, tf
from tflite_micro.python.tflite_micro import runtime
src, cal, ev = sys.argv[1:4]
xtr = np.load(cal)["x"].astype(np.float32); z = np.load(ev); xte, yte = z["x"].astype(np.float32), z["y"]
model = keras.models.load_model(src, compile=False)
inp = keras.Input(batch_shape=(1, 8, 8, 1))
conv = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, model(inp)))
conv.optimizations = [tf.lite.Optimize.DEFAULT]
conv.representative_dataset = lambda: ([xtr[i : i + 1]] for i in range(len(xtr)))
conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
conv.inference_input_type = conv.inference_output_type = tf.int8
with quiet_native((1, 2)):
    int8 = conv.convert()
interp = runtime.Interpreter.from_bytes(int8, arena_size=1 << 20)
d = interp.get_input_details(0)
scale = float(d["quantization_parameters"]["scales"][0]); zp = int(d["quantization_parameters"]["zero_points"][0])
correct = 0
for i in range(len(xte)):
    interp.set_input(np.clip(np.round(xte[i : i + 1] / scale + zp), -128, 127).astype(np.int8), 0)
    interp.invoke()
    correct += int(np.argmax(interp.get_output(0)) == yte[i])
print(len(int8), 100 * correct / len(xte))
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{cmd[:4]} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - t0, proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import numpy as np

    from edgekit.demo import train_digits_cnn

    model, (xtr, ytr, xte, yte) = train_digits_cnn()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        model.save(t / "digits.keras")
        np.savez(t / "calib.npz", x=xtr[:200], y=ytr[:200])
        np.savez(t / "eval.npz", x=xte, y=yte)
        env = {**os.environ, "EDGEKIT_CACHE_DIR": str(t / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
        ref_cmd = [sys.executable, "-c", REFERENCE, str(t / "digits.keras"), str(t / "calib.npz"), str(t / "eval.npz")]

        def fit_cmd(level: int, i: int, only: str = "") -> list[str]:
            return [sys.executable, "-m", "edgekit", "fit", str(t / "digits.keras"), "-t", "cortex-m4", "--calib",
                    str(t / "calib.npz"), "--eval", str(t / "eval.npz"), "--level", str(level), "--no-cache",
                    "--json", "-o", str(t / f"out{level}-{i}{'-' if only else ''}"),
                    *(["--candidates", only] if only else [])]

        times: dict[str, list[float]] = {"reference": [], "level1": [], "level2": [], "level2-no-cluster": []}
        # the level-2 ladder without the weight-clustering rungs, to show what those cost
        no_cluster = ("float32,int16x8,int8,int8-per-tensor,mixed-16x8,mixed-float,int4-keep-worst,int4,"
                      "lut-4bit")
        reports: dict[str, dict[str, object]] = {}
        timed(ref_cmd, env)  # warm-up: file caches, first TensorFlow import
        for i in range(args.runs):  # alternating, so both see the same machine load
            for name, cmd in (("reference", ref_cmd), ("level1", fit_cmd(1, i)), ("level2", fit_cmd(2, i)),
                              ("level2-no-cluster", fit_cmd(2, i, no_cluster))):
                sec, proc = timed(cmd, env)
                times[name].append(sec)
                if name != "reference":
                    reports[name] = json.loads(proc.stdout)
                else:
                    ref_out = proc.stdout.split()
        med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"reference: bare int8 {int(ref_out[0]):,} B, {float(ref_out[1]):.2f}% on TFLM")
    for name in ("level1", "level2"):
        r = reports[name]
        cands = {c["name"]: c for c in r["candidates"]}  # type: ignore[attr-defined]
        w = cands[r["winner"]] if r["winner"] else None  # type: ignore[index]
        print(f"{name}: winner {r['winner']} {w['flash_bytes'] if w else 0:,} B, drop {w['drop'] if w else 0:+.2f}; "
              f"int8 candidate {cands['int8']['flash_bytes']:,} B")
        for c in cands.values():
            print(f"   {c['name']:<16} {c['flash_bytes']:>8,} B  ram {c['ram_bytes']:>7,} B  top1 {c['metric']}  "
                  f"{'fits' if c['fits'] else 'over'}  {c['error'][:60]}")
    l1, l2 = reports["level1"], reports["level2"]
    c1 = {c["name"]: c for c in l1["candidates"]}  # type: ignore[attr-defined]
    c2 = {c["name"]: c for c in l2["candidates"]}  # type: ignore[attr-defined]
    w2 = c2[l2["winner"]]  # type: ignore[index]
    print(f"size: level-2 winner / level-1 int8 = {w2['flash_bytes'] / c1['int8']['flash_bytes']:.3f} "
          f"(target <= 0.6); / level-1 winner = {w2['flash_bytes'] / c1[l1['winner']]['flash_bytes']:.3f}")  # type: ignore[index]
    for k, v in times.items():
        print(f"{k}: " + ", ".join(f"{s:.2f} s" for s in v) + f"; median {med[k]:.2f} s")
    print(f"ratio to the reference (medians): level 1 {med['level1'] / med['reference']:.2f}x, "
          f"level 2 {med['level2'] / med['reference']:.2f}x (target <= 2.5x); level 2 without the clustering rungs "
          f"{med['level2-no-cluster'] / med['reference']:.2f}x")


if __name__ == "__main__":
    main()
