#!/usr/bin/env python3
"""fit quality and speed on the digits CNN, each figure against a reference measured in the same run.

1. size: the cortex-m4 int8 artifact vs the float32 .tflite (target >= 3.6x), and the accuracy drop on
   the held-out split (target <= 1.0 point);
2. overhead: `fit --level 1 --candidates int8` wall time vs a bare TFLiteConverter int8 conversion plus one
   TFLM evaluation pass over the same eval set, same model, same process (target <= 1.5x); the whole
   three-step cortex-m4 ladder is timed too, for information;
3. host latency of the int8 vs the float32 artifact under LiteRT/XNNPACK (a ratio; host CPU, not a phone).

    .venv/bin/python benchmarks/fit_speed.py
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def bare_reference(src: Path, xtr, xte, yte) -> tuple[float, bytes, float]:  # type: ignore[no-untyped-def]
    """What a user's own script does: load the model file, convert to int8, run one TFLM eval pass."""
    from tflite_micro.python.tflite_micro import runtime

    from edgekit._tf import keras, quiet_native, tf

    t0 = time.perf_counter()
    model = keras.models.load_model(src, compile=False)
    inp = keras.Input(batch_shape=(1, 8, 8, 1))
    conv = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, model(inp)))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([xtr[i : i + 1]] for i in range(200))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    with quiet_native((1, 2)):
        int8 = conv.convert()
    interp = runtime.Interpreter.from_bytes(int8, arena_size=1 << 20)
    d = interp.get_input_details(0)
    scale = float(d["quantization_parameters"]["scales"][0])
    zp = int(d["quantization_parameters"]["zero_points"][0])
    correct = 0
    for i in range(len(xte)):
        q = np.clip(np.round(xte[i : i + 1] / scale + zp), -128, 127).astype(np.int8)
        interp.set_input(q, 0)
        interp.invoke()
        correct += int(np.argmax(interp.get_output(0)) == yte[i])
    return time.perf_counter() - t0, int8, 100 * correct / len(xte)


def main() -> None:
    from edgekit._tf import keras, quiet_native, tf
    from edgekit.demo import train_digits_cnn
    from edgekit.evaluate import host_latency_ms
    from edgekit.fitting import fit

    model, (xtr, _, xte, yte) = train_digits_cnn()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EDGEKIT_CACHE_DIR"] = str(Path(tmp) / "cache")
        src = Path(tmp) / "digits.keras"
        model.save(src)
        np.savez(Path(tmp) / "calib.npz", x=xtr[:200])
        np.savez(Path(tmp) / "eval.npz", x=xte, y=yte)
        inp = keras.Input(batch_shape=(1, 8, 8, 1))
        with quiet_native((1, 2)):
            float_tfl = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, model(inp))).convert()

        bare_reference(src, xtr, xte, yte)  # warm-up: TF's first conversion pays one-off set-up
        t_ref, bare_int8, bare_acc = bare_reference(src, xtr, xte, yte)
        kw = dict(eval_data=str(Path(tmp) / "eval.npz"), calib=str(Path(tmp) / "calib.npz"), quiet=True,
                  use_cache=False)
        t0 = time.perf_counter()
        one = fit(src, "cortex-m4", only=["int8"], out_dir=Path(tmp) / "one", **kw)  # type: ignore[arg-type]
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = fit(src, "cortex-m4", out_dir=Path(tmp) / "full", **kw)  # type: ignore[arg-type]
        t_full = time.perf_counter() - t0
        phone = fit(src, "android-arm64-cpu", only=["float32", "int8"], **kw)  # type: ignore[arg-type]
        from edgekit import intake
        from edgekit.data import Dataset
        from edgekit.stages import quantize

        art = intake.load(src)
        lat_f = 1000 * host_latency_ms(quantize.convert(art, "float32"), xte, runs=300, warmup=20)
        lat_q = 1000 * host_latency_ms(quantize.convert(art, "int8", Dataset(xtr[:200], None, "calib"), "float32"), xte,
                                       runs=300, warmup=20)

    w = full.winner
    assert w is not None and one.winner is not None
    by = {c.name: c for c in phone.candidates}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"model: digits CNN, float32 .tflite {len(float_tfl):,} B; float accuracy {full.baseline:.2f}%")
    print(f"size: cortex-m4 winner {w.name} {w.flash_bytes:,} B -> {len(float_tfl) / w.flash_bytes:.2f}x smaller "
          f"than float32 (target >= 3.6x); bare converter int8 {len(bare_int8):,} B -> "
          f"{len(float_tfl) / len(bare_int8):.2f}x")
    print(f"accuracy: {w.metric:.2f}% on {full.eval_samples} held-out samples, drop {w.drop:+.2f} points "
          f"(target <= 1.0); bare int8 on TFLM {bare_acc:.2f}%")
    print(f"overhead: reference (bare int8 conversion + one TFLM eval pass) {t_ref:.2f} s; "
          f"fit --candidates int8 {t_fit:.2f} s -> {t_fit / t_ref:.2f}x (target <= 1.5x); "
          f"full cortex-m4 ladder ({len(full.candidates)} candidates) {t_full:.2f} s -> {t_full / t_ref:.2f}x")
    print(f"host latency (LiteRT/XNNPACK, 1 thread, median of 300): float32 {lat_f:.1f} us, int8 {lat_q:.1f} us "
          f"-> int8/float32 = {lat_q / lat_f:.2f}; fit's own proxy: float32 {by['float32'].latency_ms:.4f} ms, "
          f"int8 {by['int8'].latency_ms:.4f} ms")


if __name__ == "__main__":
    main()
