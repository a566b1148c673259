"""4-bit packed filters for TFLM: CONV_2D and FULLY_CONNECTED weights stored as INT4, two per byte.

TFLM's reference kernels and CMSIS-NN both take an INT4 filter with int8 activations (TFLM's
``conv_common.cc`` / ``fully_connected.cc`` unpack it into an arena scratch buffer; CMSIS-NN's s4 kernels
read it packed). The TFLite converter does not write INT4 filters from a float model, so this stage
rewrites the int8 model the converter wrote: per output channel, the int8 weights are re-quantized to
the 16 levels -8..7 with the clipping scale that minimizes the squared weight error, the filter is packed
low nibble first (as TFLM's ``UnpackDenseInt4IntoInt8`` reads it), and the int32 bias is re-expressed in
the new scale (TFLM derives the bias scale from the input and filter scales).

:func:`rewrite` returns the packed model and its *twin*: the same 4-bit values stored as plain INT8.
The two compute the same thing by construction, so running both on TFLM and comparing the outputs bit
for bit checks the packing and TFLM's INT4 path on every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.errors import StageError
from edgekit.stages import flatbuf

QMIN, QMAX = -8, 7
MIN_ELEMENTS = 1024  # smaller filters stay int8 (the saving is a few hundred bytes, the error is not)
CLIP_RATIOS = np.linspace(1.0, 0.55, 10)


@dataclass(frozen=True)
class PackedLayer:
    index: int  # operator index
    label: str
    elements: int
    bytes_before: int
    bytes_after: int
    rel_error: float  # RMS weight error of the 4-bit weights relative to the RMS of the int8 weights


def requantize(w: np.ndarray, axis: int, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """4-bit values (-8..7) and their scales (one per channel along ``axis``, or one) for float weights ``w``.

    The clipping scale is chosen among CLIP_RATIOS of the largest magnitude (per channel, or of the whole
    tensor) to minimize the squared weight error: a 4-bit grid wastes its few levels on a lone outlier."""
    rows = np.moveaxis(w.astype(np.float64), axis, 0).reshape(w.shape[axis], -1)
    if not per_channel:
        rows = rows.reshape(1, -1)
    peak = np.maximum(np.abs(rows).max(axis=1), 1e-30)
    best_err = np.full(len(rows), np.inf)
    best_step = peak / QMAX
    for r in CLIP_RATIOS:
        step = peak * r / QMAX
        k = np.clip(np.round(rows / step[:, None]), QMIN, QMAX)
        err = ((k * step[:, None] - rows) ** 2).sum(axis=1)
        better = err < best_err
        best_err[better], best_step[better] = err[better], step[better]
    k = np.clip(np.round(rows / best_step[:, None]), QMIN, QMAX).astype(np.int8)
    k = np.moveaxis(k.reshape(np.moveaxis(w, axis, 0).shape), 0, axis)
    return k, best_step


def pack_nibbles(values: np.ndarray) -> bytes:
    """Two int4 values per byte, element 2i in the low nibble (TFLM's UnpackDenseInt4IntoInt8 order)."""
    flat = values.reshape(-1).astype(np.int16) & 0x0F
    if len(flat) % 2:
        flat = np.append(flat, 0)
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_nibbles(raw: bytes, count: int) -> np.ndarray:
    b = np.frombuffer(raw, dtype=np.uint8).astype(np.int16)
    lo, hi = b & 0x0F, b >> 4
    vals = np.empty(2 * len(b), dtype=np.int16)
    vals[0::2], vals[1::2] = lo, hi
    vals = np.where(vals > 7, vals - 16, vals)
    return vals[:count].astype(np.int8)


def rewrite(data: bytes, keep_int8: frozenset[int] = frozenset(),
            min_elements: int = MIN_ELEMENTS) -> tuple[bytes, bytes, list[PackedLayer]]:
    """(packed model, int8 twin with the same 4-bit values, the layers packed) of the int8 model ``data``.

    Operators whose index is in ``keep_int8`` (e.g. the layers with the worst quantization error) and
    filters under ``min_elements`` stay int8."""
    packed, twin = flatbuf.load(data), flatbuf.load(data)
    layers: list[PackedLayer] = []
    for (i, op, name), (_, op2, _) in zip(flatbuf.weighted_ops(packed), flatbuf.weighted_ops(twin), strict=True):
        if i in keep_int8:
            continue
        sg, sg2 = packed.subgraphs[0], twin.subgraphs[0]
        filt = sg.tensors[op.inputs[flatbuf.FILTER_INPUT[name]]]
        q8 = flatbuf.tensor_array(packed, filt)
        quant = filt.quantization
        if (q8 is None or filt.type != flatbuf.TT.INT8 or q8.size < min_elements or quant is None
                or quant.scale is None or len(quant.scale) == 0):
            continue
        scales = np.asarray(quant.scale, dtype=np.float64)
        axis = int(quant.quantizedDimension) if len(scales) > 1 else 0
        w = q8.astype(np.float64) * _bcast(scales, axis, q8.ndim)
        # TFLM takes per-channel INT4 filters for CONV_2D only; FULLY_CONNECTED needs one scale
        # (fully_connected_common.cc refuses a per-channel INT4 filter)
        per_channel = name == "CONV_2D" and len(scales) > 1
        k, new_scales = requantize(w, axis if len(scales) > 1 else 0, per_channel)
        step = _bcast(new_scales, axis, q8.ndim) if per_channel else new_scales[0]
        err = float(np.sqrt(np.mean((k * step - w) ** 2)) / max(float(np.sqrt(np.mean(w ** 2))), 1e-30))
        old_per_out = scales if len(scales) > 1 else np.full(1, scales[0])
        for model, s, o, as_int4 in ((packed, sg, op, True), (twin, sg2, op2, False)):
            t = s.tensors[o.inputs[flatbuf.FILTER_INPUT[name]]]
            t.quantization.scale = [float(v) for v in new_scales]
            t.quantization.zeroPoint = [0] * len(new_scales)
            if not per_channel:
                t.quantization.quantizedDimension = 0
            if as_int4:
                t.type = flatbuf.TT.INT4
                flatbuf.set_buffer(model, t, pack_nibbles(k))
            else:
                flatbuf.set_buffer(model, t, k.astype(np.int8).tobytes())
            _rescale_bias(model, s, o, name, old_per_out, new_scales)
        layers.append(PackedLayer(i, flatbuf.layer_label(packed, i), int(q8.size), int(q8.size),
                                  (int(q8.size) + 1) // 2, err))
    if not layers:
        raise StageError("no CONV_2D or FULLY_CONNECTED int8 filter large enough to pack into 4 bits")
    return flatbuf.pack(packed), flatbuf.pack(twin), layers


def _bcast(values: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    if len(values) == 1:
        return np.asarray(values[0])
    shape = [1] * ndim
    shape[axis] = len(values)
    return values.reshape(shape)


def _rescale_bias(model: object, sg: object, op: object, name: str, old: np.ndarray, new: np.ndarray) -> None:
    """The int32 bias in the filter's new scale (bias scale = input scale x filter scale, per channel)."""
    slot = flatbuf.BIAS_INPUT[name]
    inputs = op.inputs  # type: ignore[attr-defined]
    if inputs is None or len(inputs) <= slot or inputs[slot] < 0:
        return
    bias = sg.tensors[inputs[slot]]  # type: ignore[attr-defined]
    b = flatbuf.tensor_array(model, bias)
    if b is None or bias.type not in (flatbuf.TT.INT32, flatbuf.TT.INT64):
        return
    old_c = old if len(old) == b.size else np.full(b.size, old[0])
    new_c = new if len(new) == b.size else np.full(b.size, new[0])
    ratio = new_c / old_c
    info = np.iinfo(b.dtype)
    value = np.clip(np.round(b.astype(np.float64) / ratio), info.min, info.max).astype(b.dtype)
    flatbuf.set_buffer(model, bias, value.tobytes())
    q = bias.quantization
    if q is not None and q.scale is not None and len(q.scale):
        q.scale = [float(s * rr) for s, rr in zip(np.resize(np.asarray(q.scale), b.size), ratio, strict=True)]
        q.zeroPoint = [0] * len(q.scale)
