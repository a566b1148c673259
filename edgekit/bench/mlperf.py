"""MLPerf Tiny's benchmark models and the input each reference firmware expects over `db`.

Read from the reference submissions (mlcommons/tiny ``benchmark/reference_submissions/*/
submitter_implemented.cpp``, ``th_load_tensor`` and ``th_results``) and the runner
(``benchmark/runner``), which sends the dataset files' bytes unchanged:

- ``ic01`` (image classification) and ``vww01`` (visual wake words): uint8 pixels; the firmware
  subtracts 128 to get the int8 input tensor.
- ``kws01`` (keyword spotting): the int8 input tensor's bytes as they are.
- ``ad01`` (anomaly detection): float32 features (little-endian); the firmware quantizes them to int8
  (``round(x / scale) + zero_point``, rounding half away from zero, clamped) and prints one anomaly
  score in ``m-results``: the mean squared difference between the dequantized output and the input.
  Its `db` buffer holds two inputs (``MAX_DB_INPUT_SIZE`` = 5 x 128 x 4 x 2 bytes).

A device names its model in ``profile``'s ``m-model-[ID]`` line (and edgekit firmware in
``edgekit-info``'s ``mlperf_model=``); any other name means the raw input tensor bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.errors import DataError


@dataclass(frozen=True)
class Convention:
    model_id: str
    task: str
    wire: str  # "uint8-128" | "int8" | "float32"
    buffer_inputs: int  # how many inputs the reference firmware's db buffer holds

    @property
    def description(self) -> str:
        return {"uint8-128": "uint8 pixels; the device subtracts 128",
                "int8": "the int8 input tensor's bytes",
                "float32": "float32 values; the device quantizes them to int8"}[self.wire]


MODELS: dict[str, Convention] = {
    "ic01": Convention("ic01", "image classification", "uint8-128", 1),
    "vww01": Convention("vww01", "visual wake words", "uint8-128", 1),
    "kws01": Convention("kws01", "keyword spotting", "int8", 1),
    "ad01": Convention("ad01", "anomaly detection", "float32", 2),
}


def convention(model_id: str | None) -> Convention | None:
    return MODELS.get((model_id or "").strip().lower())


def quantize_like_reference(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """int8 of float ``x`` as MLPerf Tiny's ``QuantizeFloatToInt8``: a float32 division, C ``round``
    (half away from zero), plus the zero point, clamped to [-128, 127]."""
    v = (np.asarray(x, dtype=np.float32) / np.float32(scale)).astype(np.float64)
    r = np.where(v >= 0, np.floor(v + 0.5), np.ceil(v - 0.5)) + zero_point
    return np.clip(r, -128, 127).astype(np.int8)


def host_input(conv: Convention, x: np.ndarray, dtype: str, scale: float, zero_point: int) -> np.ndarray:
    """The int8 input tensor the device computes from what the host sends for float input ``x``."""
    if dtype != "int8":
        raise DataError(f"the device runs MLPerf Tiny model {conv.model_id} ({conv.task}), whose firmware feeds "
                        f"an int8 input tensor, but this model's input is {dtype}",
                        "bench the int8 model that the firmware was built with")
    if conv.wire == "float32":
        return quantize_like_reference(x, scale, zero_point)
    from edgekit.evaluate import _quantize

    return np.asarray(_quantize(np.asarray(x, dtype=np.float32), np.int8, scale, zero_point))


def encode(conv: Convention, q: np.ndarray, x: np.ndarray) -> bytes:
    """The `db` payload for int8 input tensor ``q`` (computed from float ``x``) in ``conv``'s convention."""
    if conv.wire == "uint8-128":
        return (q.astype(np.int16) + 128).astype(np.uint8).tobytes()
    if conv.wire == "int8":
        return q.astype(np.int8).tobytes()
    return np.asarray(x, dtype="<f4").tobytes()


def decode(conv: Convention, raw: bytes, count: int, scale: float, zero_point: int) -> tuple[np.ndarray, np.ndarray]:
    """Device side: (int8 input tensor, float features or empty) from ``raw`` `db` bytes."""
    if conv.wire == "uint8-128":
        return (np.frombuffer(raw[:count], dtype=np.uint8).astype(np.int16) - 128).astype(np.int8), np.zeros(0)
    if conv.wire == "int8":
        return np.frombuffer(raw[:count], dtype=np.int8).copy(), np.zeros(0)
    x = np.frombuffer(raw[: count * 4], dtype="<f4").astype(np.float32)
    return quantize_like_reference(x, scale, zero_point), x


def wire_bytes(conv: Convention | None, input_elements: int, raw_bytes: int) -> int:
    """Bytes of one input on the wire: ``raw_bytes`` for a device without an MLPerf Tiny model."""
    if conv is None:
        return raw_bytes
    return input_elements * (4 if conv.wire == "float32" else 1)


def anomaly_score(output: np.ndarray, features: np.ndarray) -> float:
    """ad01's m-results value: mean of (dequantized output - input)^2 over the input's elements."""
    out = np.asarray(output, dtype=np.float32).reshape(-1)
    feat = np.asarray(features, dtype=np.float32).reshape(-1)
    n = min(out.size, feat.size)
    if n == 0:
        return 0.0
    d = out[:n] - feat[:n]
    return float(np.sum(d * d, dtype=np.float32) / np.float32(n))
