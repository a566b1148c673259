#!/usr/bin/env python3
"""Wall time of `analyze` on Keras MobileNetV2 (alpha 0.35, 96x96x3, weights=None, no softmax) to cortex-m7.

Prints, after imports: the analyze time from the float .keras (includes the int8 conversion),
the analyze time from the resulting int8 .tflite, and - measured in the same run, as the
reference - a bare TFLiteConverter int8 conversion of the same model with the same data, so
edgekit's own overhead reads as a ratio. Targets: < 15 s and < 2 s.

    .venv/bin/python benchmarks/analyze_speed.py
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from edgekit._tf import keras, quiet_native, tf
    from edgekit.analyzer import analyze
    from edgekit.data import synthetic

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None,
                                           classifier_activation=None)
    calib = synthetic((1, 96, 96, 3))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "mbv2.keras"
        model.save(src)

        # reference: a bare converter int8 conversion, same data, same process
        t0 = time.perf_counter()
        inp = keras.Input(batch_shape=(1, 96, 96, 3))
        conv = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, model(inp)))
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([calib.x[i:i + 1]] for i in range(len(calib)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int8
        with quiet_native((1, 2)):
            conv.convert()
        t_ref = time.perf_counter() - t0

        t0 = time.perf_counter()
        report = analyze(src, "cortex-m7")
        t_float = time.perf_counter() - t0
        assert report.deployable is not None
        int8 = Path(tmp) / "mbv2_int8.tflite"
        int8.write_bytes(report.deployable)

        t0 = time.perf_counter()
        report8 = analyze(int8, "cortex-m7")
        t_int8 = time.perf_counter() - t0

    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
          f"{__import__('os').cpu_count()} cores, Python {platform.python_version()}")
    print(f"model: MobileNetV2 a=0.35 96x96x3, {report.graph.params:,} params, {report.graph.macs:,} MACs, "
          f"int8 {report8.flash_bytes:,} B, arena {report8.ram_bytes:,} B")
    print(f"reference: bare TFLiteConverter int8 conversion      {t_ref:6.2f} s")
    print(f"analyze .keras -> cortex-m7 (converts to int8)      {t_float:6.2f} s  "
          f"(target < 15 s; {t_float / t_ref:.2f}x the bare conversion)")
    print(f"analyze int8 .tflite -> cortex-m7                   {t_int8:6.2f} s  (target < 2 s)")
    assert np.isfinite(t_int8)


if __name__ == "__main__":
    main()
