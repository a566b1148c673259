#!/usr/bin/env python3
"""Level 3 on a model that does not fit a Cortex-M0+ at levels 1-2.

Keras MobileNetV2 (alpha 0.35, 128x128x3, ``weights=None``, 4 classes) trained briefly on a synthetic task
defined here (stripes in one of four orientations, random frequency, phase, colours and noise). At 96x96 the
int8 model already fits ``cortex-m0plus`` (a 138 KB arena), so the input is 128x128: its first expanded
block alone needs 64x64x48 int8 activations, and the arena is over the 180,224-byte budget at every level-1
and level-2 rung. Then ``fit --level 3 --train``: pruning (the expansion groups shrink the activations),
distillation from the original, the level-2 ladder on the finalists.

    python benchmarks/level3_m0plus.py [--work DIR] [--time-budget MINUTES] [--jobs N]

Prints the machine, the training, both fits (exit codes, candidates, arena and flash), the winner's drop, and
checks that a pruned copy saves, reloads and converts with its residual Adds matching.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIZE = 128
CLASSES = 4


def stripes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images (SIZE x SIZE x 3 in [0, 1]) of stripes: class 0 horizontal, 1 vertical, 2 and 3 the diagonals."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    y = rng.integers(0, CLASSES, n)
    x = np.empty((n, SIZE, SIZE, 3), np.float32)
    for i in range(n):
        freq = rng.uniform(3, 9) * 2 * np.pi
        phase = rng.uniform(0, 2 * np.pi)
        coord = (yy, xx, (xx + yy) / np.sqrt(2), (xx - yy) / np.sqrt(2))[y[i]]
        wave = 0.5 + 0.5 * np.sin(freq * coord + phase)
        fg, bg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        img = wave[..., None] * fg + (1 - wave[..., None]) * bg
        x[i] = np.clip(img + rng.normal(0, 0.08, img.shape), 0, 1)
    return x, y.astype(np.int64)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def train(work: Path, epochs: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    if (work / "mnv2.keras").is_file():
        print("trained model found:", work / "mnv2.keras")
        return
    x, y = stripes(2400, 1)
    xe, ye = stripes(600, 2)
    np.savez(work / "train.npz", x=x, y=y)
    np.savez(work / "eval.npz", x=xe, y=ye)
    np.savez(work / "calib.npz", x=x[:200], y=y[:200])
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, weights=None, classes=CLASSES)
    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, validation_data=(xe, ye))
    lag = model.evaluate(xe, ye, verbose=0)[1]
    # MobileNetV2's BatchNorms average with momentum 0.999: after a few hundred steps their moving statistics
    # still lag far behind the weights; re-estimate them from 512 training samples
    from edgekit.compress.distill import recalibrate_batchnorm

    recalibrate_batchnorm(model, x[:512])
    acc = model.evaluate(xe, ye, verbose=0)[1]
    print(f"trained MobileNetV2 0.35 {SIZE}x{SIZE} ({model.count_params():,} params) for {epochs} epochs in "
          f"{time.perf_counter() - t0:.0f} s: eval accuracy {100 * acc:.2f}% (BatchNorm statistics re-estimated "
          f"on 512 training samples; {100 * lag:.2f}% with the lagging moving averages)")
    model.save(work / "mnv2.keras")


def fit(work: Path, level: int, extra: list[str], out: str) -> dict:
    cmd = [sys.executable, "-m", "edgekit", "fit", str(work / "mnv2.keras"), "-t", "cortex-m0plus", "--calib",
           str(work / "calib.npz"), "--eval", str(work / "eval.npz"), "--level", str(level), "-o", str(work / out),
           "--force", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          check=False)
    took = time.perf_counter() - t0
    print(f"\n$ edgekit fit ... --level {level} {' '.join(extra)}\nexit {proc.returncode} in {took:.0f} s")
    if proc.returncode not in (0, 1):
        print(proc.stderr[-3000:])
        raise SystemExit(1)
    report = json.loads((work / out / "report.json").read_text())
    for c in report["candidates"]:
        if c["error"]:
            print(f"  {c['name']:<26} error: {c['error'][:90]}")
            continue
        over = [k for k, b in c["budgets"].items() if not b["fits"]]
        print(f"  {c['name']:<26} flash {c['flash_bytes']:>9,} B  arena {c['ram_bytes']:>8,} B  {report['metric']} "
              f"{c['metric']:.2f}  drop {c['drop']:+.2f}  {'fits' if c['fits'] else 'over ' + ','.join(over)}")
    print("winner:", report["winner"], "| closest:", report["closest"])
    report["_seconds"] = took
    return report


def check_pruned(work: Path) -> None:
    """A pruned copy: saved, reloaded, converted; its Adds add equal channel counts; its arena measured."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from edgekit import analyzer
    from edgekit.compress import prune

    model = keras.models.load_model(work / "mnv2.keras", compile=False)
    x = np.load(work / "calib.npz")["x"]
    small, _ = prune.prune(model, 0.5, "bn", x=x[:64])
    small.save(work / "pruned.keras")
    again = keras.models.load_model(work / "pruned.keras", compile=False)
    same = np.array_equal(np.asarray(again(x[:4])), np.asarray(small(x[:4])))
    adds = [layer for layer in again.layers if isinstance(layer, keras.layers.Add)]
    matching = all(len({int(t.shape[-1]) for t in a._inbound_nodes[0].input_tensors}) == 1 for a in adds)
    print(f"\npruned copy (50% of every prunable group, BN-scale importance): {model.count_params():,} -> "
          f"{small.count_params():,} params; reloaded identical: {same}; {len(adds)} residual Adds with matching "
          f"channels: {matching}")
    for name in ("mnv2.keras", "pruned.keras"):
        rep = analyzer.analyze(work / name, "cortex-m0plus", calib=str(work / "calib.npz"))
        print(f"  {name}: int8 flash {rep.flash_bytes:,} B, TFLM arena (measured) {rep.arena_measured:,} B")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".level3_m0plus"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--time-budget", type=float, default=45.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--skip-level2", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print("machine:", machine())
    train(work, args.epochs)
    check_pruned(work)
    if not args.skip_level2:
        l2 = fit(work, 2, [], "fit-level2")
        print("level 2 fits:", l2["fits"])
    l3 = fit(work, 3, ["--train", str(work / "train.npz"), "--time-budget", str(args.time_budget), "--jobs",
                       str(args.jobs)], "fit-level3")
    print("level 3 fits:", l3["fits"], "| search:", json.dumps({k: v for k, v in l3.get("level3", {}).items()
                                                                if k not in ("trials", "notes")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
