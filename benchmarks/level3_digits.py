#!/usr/bin/env python3
"""`fit --level 3` on the demo's digits CNN for cortex-m4, whole process, from an empty cache.

Acceptance (issue 14): an artifact >= 10x smaller than the float32 .tflite, >= 2x fewer MACs than the
original, <= 1 point top-1 drop on the held-out eval data, in <= 5 minutes on 2 cores.

    python benchmarks/level3_digits.py [--jobs 2] [--work DIR]

The model, calibration, eval and training data are made exactly as `edgekit demo` makes them (the digits CNN
trained 15 epochs on scikit-learn's digits; eval = the 360 held-out samples; --train = the 1,437 training
samples, of which the search holds out 15% for early stopping). The fit runs in a child process as a user
runs it; its wall time includes the Python/TensorFlow start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.level3_m0plus import machine  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", default=None)
    ap.add_argument("--time-budget", type=float, default=None)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from edgekit import intake
    from edgekit.analysis.graph import read_graph
    from edgekit.demo import train_digits_cnn
    from edgekit.stages import quantize

    work = Path(args.work or tempfile.mkdtemp(prefix="edgekit-l3-digits-"))
    work.mkdir(parents=True, exist_ok=True)
    print("machine:", machine())
    model, (xtr, ytr, xte, yte) = train_digits_cnn()
    model.save(work / "digits_cnn.keras")
    np.savez(work / "calib.npz", x=xtr[:200], y=ytr[:200])
    np.savez(work / "eval.npz", x=xte, y=yte)
    np.savez(work / "train.npz", x=xtr, y=ytr)
    float_tfl = quantize.convert(intake.load(work / "digits_cnn.keras"), "float32")
    cache = work / "cache"
    cmd = [sys.executable, "-m", "edgekit", "fit", str(work / "digits_cnn.keras"), "-t", "cortex-m4", "--calib",
           str(work / "calib.npz"), "--eval", str(work / "eval.npz"), "--train", str(work / "train.npz"),
           "--level", "3", "--jobs", str(args.jobs), "-o", str(work / "out"), "--force"]
    if args.time_budget:
        cmd += ["--time-budget", str(args.time_budget)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "EDGEKIT_CACHE_DIR": str(cache)})
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:])
        print(f"fit exit {proc.returncode} after {took:.0f} s")
        return 1
    report = json.loads((work / "out" / "report.json").read_text())
    win = next(c for c in report["candidates"] if c["name"] == report["winner"])
    art = (work / "out" / "model.tflite").read_bytes()
    macs0, macs1 = read_graph(float_tfl).macs, read_graph(art).macs
    ratio = len(float_tfl) / len(art)
    search = report.get("level3", {})
    tuned = [t for t in search.get("trials", []) if t.get("tuned_drop") is not None]
    print(f"fit --level 3 --jobs {args.jobs}: {took:.0f} s wall (exit 0); search {search.get('seconds', 0):.0f} s, "
          f"{len(search.get('trials', []))} candidates, {len(tuned)} fine-tuned")
    print(f"winner {win['name']}: {len(art):,} B vs float32 .tflite {len(float_tfl):,} B = {ratio:.1f}x smaller; "
          f"MACs {macs1:,} vs {macs0:,} = {macs0 / max(macs1, 1):.2f}x fewer; top-1 {win['metric']:.2f}% vs "
          f"{report['baseline']:.2f}% (drop {win['drop']:+.2f} points); arena {win['ram_bytes']:,} B")
    int8 = next((c for c in report["candidates"] if c["name"] == "int8"), None)
    if int8:
        print(f"original int8: {int8['flash_bytes']:,} B, arena {int8['ram_bytes']:,} B")
    checks = {"size >= 10x": ratio >= 10, "MACs >= 2x": macs0 >= 2 * macs1, "drop <= 1": win["drop"] <= 1.0,
              "time <= 300 s": took <= 300}
    print("acceptance:", ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
