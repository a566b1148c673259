#!/usr/bin/env python3
"""Memory planner: arena against TFLM's greedy planner and the liveness bound, and planning time.

For each model: TFLM's own non-persistent arena ("head", measured by the TFLM host interpreter on the
model as converted), the liveness bound of the chosen operator order, the head TFLM measures with the
plan embedded, whether the outputs stayed bit-exact, and the planning time (wall, median of 5).
Models: MLPerf Tiny's four reference int8 models (with MLPERF_TINY_ROOT), Keras MobileNetV2 0.35/96
int8 (residual blocks; weights=None, synthetic calibration), and synthetic graphs of about 200
activation tensors (branching blocks; many parallel chains, where the search runs to the time limit).

    MLPERF_TINY_ROOT=/path/to/tiny .venv/bin/python benchmarks/planner_speed.py
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

from edgekit.analysis import liveness, planner
from edgekit.analysis.graph import Graph, read_graph
from edgekit.evaluate import TflmWorker
from edgekit.stages import memplan

MLPERF = {
    "MLPerf Tiny VWW (vww_96_int8)": "benchmark/training/visual_wake_words/trained_models/vww_96_int8.tflite",
    "MLPerf Tiny KWS (kws_ref_model)": "benchmark/training/keyword_spotting/trained_models/kws_ref_model.tflite",
    "MLPerf Tiny IC (pretrainedResnet_quant)":
        "benchmark/training/image_classification/trained_models/pretrainedResnet_quant.tflite",
    "MLPerf Tiny AD (ad01_int8)": "benchmark/training/anomaly_detection/trained_models/ad01_int8.tflite",
}


def timed_plan(model: bytes | Graph, runs: int = 5) -> tuple[planner.MemoryPlan, float]:
    times, plan = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        plan = planner.plan(model)
        times.append(time.perf_counter() - t0)
    assert plan is not None
    return plan, statistics.median(times)


def describe(plan: planner.MemoryPlan) -> str:
    return plan.method + (", reordered" if plan.reordered else "") + (", time-limited" if plan.time_limited else "")


def mobilenet_v2() -> bytes:
    from edgekit._tf import keras, quiet_native, tf
    from edgekit.data import synthetic

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None,
                                           classifier_activation=None)
    calib = synthetic((1, 96, 96, 3))
    inp = keras.Input(batch_shape=(1, 96, 96, 3))
    conv = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, model(inp)))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib.x[i:i + 1]] for i in range(len(calib)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    with quiet_native((1, 2)):
        return bytes(conv.convert())


def main() -> None:
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    rows = []
    models: list[tuple[str, bytes]] = []
    root = os.environ.get("MLPERF_TINY_ROOT", "")
    for label, rel in MLPERF.items():
        if root and (Path(root) / rel).is_file():
            models.append((label, (Path(root) / rel).read_bytes()))
    if not root:
        print("MLPERF_TINY_ROOT is not set: MLPerf Tiny models skipped")
    models.append(("Keras MobileNetV2 0.35/96 int8", mobilenet_v2()))
    with TflmWorker() as worker:
        for label, data in models:
            plan, seconds = timed_plan(data)
            v = memplan.verify(data, memplan.apply(data, plan), worker=worker)
            g = read_graph(data)
            rows.append((label, len(g.tensors), len(liveness.planned_tensors(g)), v.head_before, plan.bound_bytes,
                         v.head_after, describe(plan), v.bit_exact, seconds))
    from tests.unit.test_planner import synthetic_network, wide_network

    for label, g in [("synthetic: 26 three-branch blocks, seed 0", synthetic_network(26, 0)),
                     ("synthetic: 26 three-branch blocks, seed 3", synthetic_network(26, 3)),
                     ("synthetic: 28 three-branch blocks, seed 5", synthetic_network(28, 5)),
                     ("synthetic: 50 parallel chains of 4 (reordering by beam search)", wide_network(50, 4)),
                     ("synthetic: 20 parallel chains of 5 (reordering by beam search)", wide_network(20, 5))]:
        plan, seconds = timed_plan(g)
        rows.append((label, len(g.tensors), len(liveness.planned_tensors(g)), plan.greedy_bytes, plan.bound_bytes,
                     plan.arena_bytes, describe(plan), None, seconds))
    print("| model | tensors (planned) | TFLM greedy head | bound | planned head | planned / bound | "
          "method | bit-exact | planning time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, n, planned, greedy, bound, head, method, exact, seconds in rows:
        exact_text = "—" if exact is None else ("yes" if exact else "**no**")
        print(f"| {label} | {n} ({planned}) | {greedy:,} B | {bound:,} B | {head:,} B | {head / bound:.3f} | "
              f"{method} | {exact_text} | {seconds * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
