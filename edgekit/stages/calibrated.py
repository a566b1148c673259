"""One conversion and one calibration, shared by every integer rung of a level-2 search.

The TFLite converter traces the model, converts it to a float flatbuffer and runs the calibration
samples through it to record every tensor's range; that is almost all of a conversion's time. With
``_experimental_calibrate_only`` it stops there and hands back the calibrated float model. From that one
model the MLIR quantizer (``mlir_quantize``, what the converter itself calls next) writes each variant
in milliseconds: per-channel int8 (byte for byte the converter's own int8 graph), per-tensor int8, and
int8 with chosen layers left in float (its ``denylisted_nodes``: the converter's selective
quantization). int16 activations (16x8) go through the converter's other quantizer, which takes the
same calibrated model and samples.

The calibrated model is also the float reference of the per-layer error (same graph, same tensor names).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from edgekit.data import Dataset
from edgekit.errors import StageError
from edgekit.intake import Artifact


def _fail(what: str, art: Artifact, exc: Exception) -> StageError:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    key = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else type(exc).__name__)
    return StageError(f"{what} of {art.source} failed: {key.strip()[:300]}")


class Calibration:
    """The calibrated float model of ``art`` and the quantized variants written from it."""

    def __init__(self, art: Artifact, calib: Dataset) -> None:
        from edgekit._tf import quiet_native, tf
        from edgekit.stages import quantize

        self.art, self.calib = art, calib
        conv = quantize._converter(art)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: quantize._representative(calib)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv._experimental_calibrate_only = True
        try:
            with quiet_native((1, 2)):
                self.model: bytes = bytes(conv.convert())
        except Exception as exc:
            raise _fail("calibration", art, exc) from None
        self._cache: dict[tuple[Any, ...], bytes] = {}

    def int8(self, io_dtype: str = "int8", per_channel: bool = True, float_nodes: Iterable[str] = ()) -> bytes:
        """Full-integer int8 (model I/O as ``io_dtype``), per-channel or per-tensor weights; the operators
        whose output tensor is named in ``float_nodes`` stay float (QUANTIZE/DEQUANTIZE around them)."""
        nodes = tuple(sorted(float_nodes))
        key = ("int8", io_dtype, per_channel, nodes)
        if key not in self._cache:
            from tensorflow.lite.python import convert as tfl_convert

            from edgekit._tf import quiet_native, tf

            io = tf.int8 if io_dtype == "int8" else tf.float32
            try:
                with quiet_native((1, 2)):
                    self._cache[key] = bytes(tfl_convert.mlir_quantize(
                        self.model, disable_per_channel=not per_channel, fully_quantize=True,
                        input_data_type=io, output_data_type=io, denylisted_nodes=list(nodes) or None))
            except Exception as exc:
                raise _fail("int8 quantization", self.art, exc) from None
        return self._cache[key]

    def int16x8(self, io_dtype: str = "int8") -> bytes:
        """int16 activations, int8 weights (the converter's 16x8 mode) from the same calibrated model."""
        key = ("int16x8", io_dtype)
        if key not in self._cache:
            from tensorflow.lite.python.optimize import calibrator

            from edgekit._tf import quiet_native, tf
            from edgekit.stages import quantize

            io = tf.int16 if io_dtype == "int8" else tf.float32
            try:
                with quiet_native((1, 2)):
                    cal = calibrator.Calibrator(self.model)
                    self._cache[key] = bytes(cal.calibrate_and_quantize(
                        lambda: quantize._representative(self.calib), io, io, False, tf.int16, tf.int64))
            except Exception as exc:
                raise _fail("16x8 quantization", self.art, exc) from None
        return self._cache[key]

    def float_outputs(self, x: np.ndarray) -> np.ndarray:
        """The calibrated float model's outputs (the float reference as the converter sees it)."""
        from edgekit.evaluate import run_litert

        return run_litert(self.model, x)
