#!/usr/bin/env python3
"""Level 3's pruner on ``keras.applications`` ResNet50 (``weights=None``, 64x64x3, 10 classes; seed 0): every
prunable dependency group loses half its channels (L1 importance), and the pruned model is checked the way a
user would use it: its residual ``Add``s add equal channel counts, it is saved and reloaded as ``.keras`` with
identical outputs, converted to int8 (calibrated on generated inputs), and its TFLM arena is measured in the
TFLM interpreter beside the original's.

    python benchmarks/level3_resnet50.py [--work DIR] [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.level3_m0plus import machine  # noqa: E402

SHAPE = (64, 64, 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".level3_resnet50"))
    ap.add_argument("--ratio", type=float, default=0.5)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    print("machine:", machine())

    from edgekit import data, intake
    from edgekit._tf import keras
    from edgekit.analysis.arena import measure_arena
    from edgekit.compress import prune
    from edgekit.compress.distill import recalibrate_batchnorm
    from edgekit.compress.kgraph import KGraph
    from edgekit.stages import quantize

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(input_shape=SHAPE, weights=None, classes=10)
    x = np.random.default_rng(0).random((64, *SHAPE), dtype=np.float32)
    np.savez(work / "calib.npz", x=x)
    recalibrate_batchnorm(model, x)  # fresh BatchNorms: statistics of these inputs, so int8 calibrates sanely
    g = KGraph(model)
    print(f"dependency groups: {len(g.groups)}, prunable: {len(g.prunable())}")
    t0 = time.perf_counter()
    small, counts = prune.prune(model, args.ratio, "l1")
    print(f"pruned {args.ratio:.0%} of every prunable group in {time.perf_counter() - t0:.1f} s: "
          f"{model.count_params():,} -> {small.count_params():,} parameters ({len(counts)} groups)")
    recalibrate_batchnorm(small, x)
    adds = [layer for layer in small.layers if isinstance(layer, keras.layers.Add)]
    matching = sum(len({int(t.shape[-1]) for t in a._inbound_nodes[0].input_tensors}) == 1 for a in adds)
    print(f"residual Adds with matching channel counts: {matching} of {len(adds)}")
    model.save(work / "resnet50.keras")
    small.save(work / "resnet50_pruned.keras")
    again = keras.models.load_model(work / "resnet50_pruned.keras", compile=False)
    same = np.array_equal(np.asarray(again(x[:2])), np.asarray(small(x[:2])))
    print(f"saved and reloaded, identical outputs: {same}")
    arenas = {}
    for name in ("resnet50.keras", "resnet50_pruned.keras"):
        t0 = time.perf_counter()
        art = intake.load(work / name)
        try:
            tfl = quantize.convert(art, "int8", data.load(str(work / "calib.npz"), (1, *SHAPE)), "int8")
        finally:
            art.cleanup()
        arena = measure_arena(tfl)
        arenas[name] = arena.total_bytes
        print(f"{name}: int8 .tflite {len(tfl):,} B, TFLM arena measured {arena.total_bytes:,} B "
              f"({time.perf_counter() - t0:.0f} s)")
    a0, a1 = arenas["resnet50.keras"], arenas["resnet50_pruned.keras"]
    print(f"arena pruned / original: {a1 / a0:.3f}")
    ok = matching == len(adds) and same and a1 < a0
    print("acceptance: Adds match, reload identical, arena smaller:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
