#!/usr/bin/env python3
"""`fit --level 3` on an ONNX model, end to end: the demo's digits CNN (trained as `edgekit demo` trains it)
written as an ONNX graph with onnx.helper (Conv/Relu/MaxPool/Flatten/Gemm/Softmax, NCHW, the dense rows
permuted from NHWC to NCHW order), then intake (onnx2tf, offline), the Keras model rebuilt from the converted
float graph, the search and the level-2 ladder for cortex-m4.

    python benchmarks/level3_onnx.py [--jobs 2] [--work DIR]
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


def to_onnx(model: object, path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    (k1, b1), (k2, b2), (w3, b3), (w4, b4) = [layer.get_weights() for layer in model.layers  # type: ignore
                                              if layer.get_weights()]
    # Keras Flatten reads (h, w, c); ONNX Flatten of NCHW reads (c, h, w): permute the dense rows to match
    h = w = 2
    c = k2.shape[-1]
    rows = np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("k1", k1.transpose(3, 2, 0, 1)), ("b1", b1), ("k2", k2.transpose(3, 2, 0, 1)), ("b2", b2),
        ("w3", w3[rows].T), ("b3", b3), ("w4", w4.T), ("b4", b4))]
    nodes = [helper.make_node("Conv", ["x", "k1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "k2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p2"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["d3"], transB=1),
             helper.make_node("Relu", ["d3"], ["r3"]),
             helper.make_node("Gemm", ["r3", "w4", "b4"], ["d4"], transB=1),
             helper.make_node("Softmax", ["d4"], ["y"], axis=1)]
    g = helper.make_graph(nodes, "digits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from edgekit.demo import train_digits_cnn

    work = Path(args.work or tempfile.mkdtemp(prefix="edgekit-l3-onnx-"))
    work.mkdir(parents=True, exist_ok=True)
    print("machine:", machine())
    model, (xtr, ytr, xte, yte) = train_digits_cnn()
    to_onnx(model, work / "digits.onnx")
    np.savez(work / "calib.npz", x=xtr[:200], y=ytr[:200])
    np.savez(work / "eval.npz", x=xte, y=yte)
    np.savez(work / "train.npz", x=xtr, y=ytr)
    cmd = [sys.executable, "-m", "edgekit", "fit", str(work / "digits.onnx"), "-t", "cortex-m4", "--calib",
           str(work / "calib.npz"), "--eval", str(work / "eval.npz"), "--train", str(work / "train.npz"),
           "--level", "3", "--jobs", str(args.jobs), "-o", str(work / "out"), "--force"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "EDGEKIT_CACHE_DIR": str(work / "cache")})
    took = time.perf_counter() - t0
    print(f"fit --level 3 of digits.onnx: exit {proc.returncode} in {took:.0f} s")
    if proc.returncode not in (0, 1):
        print(proc.stderr[-2000:])
        return 1
    report = json.loads((work / "out" / "report.json").read_text())
    by = {c["name"]: c for c in report["candidates"]}
    win = by.get(report["winner"] or "")
    for name in ("float32", "int8", report["winner"]):
        c = by.get(name or "")
        if c:
            print(f"  {name}: {c['flash_bytes']:,} B, arena {c['ram_bytes']:,} B, top-1 {c['metric']:.2f}% "
                  f"(drop {c['drop']:+.2f})")
    print("notes:", *[n for n in report["notes"] if "level 3" in n], sep="\n  ")
    return 0 if win else 1


if __name__ == "__main__":
    sys.exit(main())
