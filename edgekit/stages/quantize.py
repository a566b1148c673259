"""Convert an Artifact to a TFLite flatbuffer: float32, float16, dynamic range, int8, int16x8.

Keras models are traced through one concrete function with a fixed batch of 1,
so the graph carries no dynamic-shape plumbing (SHAPE/STRIDED_SLICE/PACK) that
a microcontroller would have to execute.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from edgekit import options
from edgekit.data import Dataset
from edgekit.errors import ModelError, StageError
from edgekit.intake import Artifact

MODES = ("float32", "float16", "dynamic", "int8", "int16x8")

ARTIFACT_MODE = {
    "tflite-float32": "float32",
    "tflite-float16": "float16",
    "tflite-dynamic": "dynamic",
    "tflite-int8": "int8",
    "tflite-int16x8": "int16x8",
}


def input_shape(art: Artifact) -> tuple[int, ...]:
    """The model's (single) input shape with batch 1: the declared shape, with the dimensions the
    source leaves dynamic taken from ``art.input_shape`` (--input-shape). A dynamic dimension
    without it is a one-line ModelError naming the dimensions and the option."""
    return resolve_shape(declared_shape(art), art.input_shape, art)


def declared_shape(art: Artifact) -> tuple[int | None, ...]:
    """The source model's own input shape, batch first; None marks a dynamic dimension."""
    if art.declared_shape is None:
        if art.tflite is not None or art.float_tflite_cache is not None:
            from edgekit.analysis.graph import read_graph

            data = art.tflite if art.tflite is not None else art.float_tflite_cache
            assert data is not None
            ins = read_graph(data).input_tensors()
            _single_input(len(ins), art)
            sig = ins[0].signature or ins[0].shape
            art.declared_shape = tuple(None if d < 0 else d for d in sig)
        elif art.keras_model is not None:
            inputs = art.keras_model.inputs
            _single_input(len(inputs), art)
            art.declared_shape = tuple(None if d is None else int(d) for d in inputs[0].shape)
        else:
            spec = _saved_model_spec(art)
            art.declared_shape = tuple(None if d is None else int(d) for d in spec.shape)
    return art.declared_shape


def _dims(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def resolve_shape(declared: tuple[int | None, ...], given: tuple[int, ...] | None, art: Artifact
                  ) -> tuple[int, ...]:
    """Batch 1, and every other dimension fixed: by the model, or by ``given`` (--input-shape)."""
    if not declared:
        raise ModelError(f"{art.source} has a scalar input; edgekit needs a batch dimension")
    dynamic = [i for i, d in enumerate(declared) if d is None and i > 0]
    if given is None:
        if dynamic:
            example = ",".join("1" if i == 0 else (f"<d{i}>" if d is None else str(d))
                               for i, d in enumerate(declared))
            hint = ("re-convert it from the source model with --input-shape; a .tflite cannot be resized for TFLM"
                    if art.tflite is not None else f"pass a fixed shape: --input-shape {example}")
            layout = " (NHWC, as onnx2tf converted it)" if art.fmt == "onnx" else ""
            raise ModelError(f"{art.source}: input dimensions {', '.join(str(i) for i in dynamic)} of "
                             f"{_dims(declared)}{layout} are dynamic; a deployable model needs a fixed shape", hint)
        return (1, *(int(d) for d in declared[1:] if d is not None))
    shape = given if len(given) == len(declared) else (1, *given)
    if len(shape) != len(declared):
        raise ModelError(f"--input-shape {','.join(map(str, given))} has {len(given)} dimensions; the model's "
                         f"input {_dims(declared)} has {len(declared)}", "give every dimension, batch first")
    if shape[0] != 1:
        raise ModelError(f"--input-shape batch {shape[0]} is not supported (the model runs one sample at a time)",
                         f"use --input-shape 1,{','.join(map(str, shape[1:]))}")
    clash = [i for i, (d, g) in enumerate(zip(declared, shape, strict=True)) if i > 0 and d is not None and d != g]
    if clash:
        raise ModelError(f"--input-shape {','.join(map(str, shape))} contradicts the model's input {_dims(declared)} "
                         f"in dimension {', '.join(map(str, clash))}", "change only the dynamic (?) dimensions")
    if art.tflite is not None and dynamic:
        raise ModelError(f"{art.source}: input dimensions {', '.join(map(str, dynamic))} of {_dims(declared)} are "
                         "dynamic and a .tflite cannot be resized for TFLM",
                         "re-convert it from the source model with --input-shape")
    return shape


def _single_input(n: int, art: Artifact) -> None:
    if n != 1:
        raise StageError(f"{art.source} has {n} inputs; edgekit converts single-input models for now")


def _saved_model_spec(art: Artifact) -> Any:
    from edgekit._tf import tf

    loaded = tf.saved_model.load(str(art.saved_model_dir))
    sig = loaded.signatures.get("serving_default")
    if sig is None:
        raise StageError(f"{art.saved_model_dir} has no serving_default signature")
    specs = list(sig.structured_input_signature[1].values())
    _single_input(len(specs), art)
    return specs[0]


def _converter(art: Artifact) -> Any:
    from edgekit._tf import tf

    if art.keras_model is not None:
        from edgekit._tf import keras

        model = art.keras_model
        shape = input_shape(art)
        # Re-wrap with a fixed batch of 1: no dynamic-shape plumbing in the converted graph.
        inp = keras.Input(batch_shape=shape, dtype=model.inputs[0].dtype)
        fixed = keras.Model(inp, model(inp, training=False))
        return tf.lite.TFLiteConverter.from_keras_model(fixed)
    if art.saved_model_dir is not None:
        loaded = tf.saved_model.load(str(art.saved_model_dir))
        sig = loaded.signatures.get("serving_default")
        if sig is None:
            return tf.lite.TFLiteConverter.from_saved_model(str(art.saved_model_dir))
        name, spec = next(iter(sig.structured_input_signature[1].items()))
        fixed_shape = list(input_shape(art))
        fixed = tf.function(lambda x: sig(**{name: x}))
        concrete = fixed.get_concrete_function(tf.TensorSpec(fixed_shape, spec.dtype))
        return tf.lite.TFLiteConverter.from_concrete_functions([concrete], loaded)
    raise StageError(f"{art.source} is already a .tflite file; it cannot be re-quantized from here",
                     "pass the source model (.keras, SavedModel or .onnx) to quantize it")


def _representative(calib: Dataset) -> Iterator[list[np.ndarray]]:
    n = min(len(calib), int(options.CALIB_MAX_SAMPLES.value))
    for i in range(n):
        yield [calib.x[i : i + 1].astype(np.float32)]


def convert(art: Artifact, mode: str, calib: Dataset | None = None, io_dtype: str = "float32") -> bytes:
    """Return the .tflite bytes of ``art`` converted in ``mode``."""
    if mode not in MODES:
        raise StageError(f"unknown quantization mode {mode!r} (must be one of {', '.join(MODES)})")
    if mode == "float32" and art.float_tflite_cache is not None:
        return art.float_tflite_cache
    if art.tflite is not None:
        if mode == "float32":
            return art.tflite
        _converter(art)  # raises the clear error for .tflite sources
    from edgekit._tf import tf

    conv = _converter(art)
    if mode == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode in ("int8", "int16x8"):
        if calib is None:
            raise StageError(f"{mode} quantization needs calibration data")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: _representative(calib)
        if mode == "int8":
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if io_dtype == "int8":
                conv.inference_input_type = tf.int8
                conv.inference_output_type = tf.int8
        else:
            conv.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
            if io_dtype == "int8":
                conv.inference_input_type = tf.int16
                conv.inference_output_type = tf.int16
    from edgekit._tf import quiet_native

    try:
        with quiet_native((1, 2)):
            data = conv.convert()
    except Exception as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        key = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else type(exc).__name__)
        raise StageError(f"TFLite conversion ({mode}) of {art.source} failed: {key.strip()[:300]}") from None
    if mode == "float32":
        art.float_tflite_cache = data
    return bytes(data)
