"""TFLM's own LUT compression (the ``compression`` package of the ``tflite-micro`` wheel) on clustered weights.

Each CONV_2D / FULLY_CONNECTED filter of the int8 model is clustered per output channel (k-means on the
channel's int8 values, k = 2**bits, centres rounded to integers), so every channel holds at most k values;
TFLM's compressor then stores per-channel value tables plus bit-packed indices and inserts a DECODE
operator (custom ``TFLM_DECODE``) before each consumer. Lossless by construction: the compressed model
must run bit-exact with the clustered one, which the caller checks on the TFLM interpreter.

What we found (see the level-2 notes of the fit report and ``benchmarks/RESULTS.md``):

- the tables must be **per channel** along the quantized axis. TFLM's ``DecodeStateLut::Setup`` takes the
  channel count from the decoded tensor's quantization (one table per quantization channel, stepping by
  the stride written in the ancillary data) and does not read the table-axis field the compressor writes;
  a ``per_tensor`` spec on a per-channel-quantized filter writes one table and TFLM walks past it:
  garbage weights (8% top-1 on the digits CNN instead of 98.6%). That is why an earlier try differed from
  the uncompressed clustered model.
- the decoded filter lives in the arena while its consumer runs: flash goes down, RAM goes up by the
  largest decoded filter, and the DECODE operator and its uint8 index tensors are a custom operator and
  a data type a target must register (the profile's operator list decides).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import numpy as np

from edgekit.errors import StageError
from edgekit.stages import flatbuf

MIN_ELEMENTS = 1024
KMEANS_ITERS = 20


def kmeans_int(values: np.ndarray, k: int, iters: int = KMEANS_ITERS) -> np.ndarray:
    """``values`` (1-D integers) replaced by the nearest of at most ``k`` integer centres (1-D k-means,
    initialized at the quantiles, so the result does not depend on a random seed)."""
    v = values.astype(np.float64)
    uniq = np.unique(v)
    if len(uniq) <= k:
        return values.copy()
    centers = np.quantile(v, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        idx = np.abs(v[:, None] - centers[None, :]).argmin(axis=1)
        sums = np.bincount(idx, weights=v, minlength=k)
        counts = np.bincount(idx, minlength=k)
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), centers)
        if np.allclose(moved, centers):
            break
        centers = moved
    centers = np.unique(np.round(centers))
    idx = np.abs(v[:, None] - centers[None, :]).argmin(axis=1)
    return centers[idx].astype(values.dtype)


def cluster(data: bytes, bits: int, min_elements: int = MIN_ELEMENTS) -> tuple[bytes, list[int]]:
    """The int8 model with every large CONV_2D / FULLY_CONNECTED filter clustered to at most 2**bits values
    per output channel (per-channel quantization) or in the whole tensor (per-tensor quantization: one table);
    (model, filter tensor indices clustered)."""
    model = flatbuf.load(data)
    sg = model.subgraphs[0]
    done = []
    for _, op, name in flatbuf.weighted_ops(model):
        ti = op.inputs[flatbuf.FILTER_INPUT[name]]
        t = sg.tensors[ti]
        a = flatbuf.tensor_array(model, t)
        q = t.quantization
        if a is None or t.type != flatbuf.TT.INT8 or a.size < min_elements or ti in done:
            continue
        per_channel = q is not None and q.scale is not None and len(q.scale) > 1
        if not per_channel:
            # one table for the whole tensor (what compress() asks TFLM for): at most 2**bits values in all of
            # it. Clustering each channel apart is not enough once the converter folded a BatchNorm into the
            # filter (every channel scaled differently): TFLM's compressor then needs 8-bit indices and refuses
            flatbuf.set_buffer(model, t, kmeans_int(a.reshape(-1), 2**bits).reshape(a.shape).astype(np.int8)
                               .tobytes())
            done.append(ti)
            continue
        axis = int(q.quantizedDimension)
        if axis not in (0, a.ndim - 1):
            continue  # TFLM's decoder takes channel axis 0 or the last one only
        rows = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)
        out = np.stack([kmeans_int(r, 2**bits) for r in rows])
        flatbuf.set_buffer(model, t, np.moveaxis(out.reshape(np.moveaxis(a, axis, 0).shape), 0, axis)
                           .astype(np.int8).tobytes())
        done.append(ti)
    if not done:
        raise StageError("no CONV_2D or FULLY_CONNECTED int8 filter large enough to cluster")
    return flatbuf.pack(model), done


def compress(clustered: bytes, tensors: list[int], bits: int) -> bytes:
    """TFLM's LUT compression of ``tensors`` (per-channel tables along the quantized axis)."""
    try:
        spec = importlib.import_module("tflite_micro.tensorflow.lite.micro.compression.spec")
        comp = importlib.import_module("tflite_micro.tensorflow.lite.micro.compression.compress")
    except ImportError as exc:
        raise StageError(f"TFLM's compression package is not installed ({exc})",
                         "install the tflite-micro wheel edgekit pins") from None
    model = flatbuf.load(clustered)
    specs: list[Any] = []
    for ti in tensors:
        t = model.subgraphs[0].tensors[ti]
        q = t.quantization
        axis = int(q.quantizedDimension) if q is not None and q.scale is not None and len(q.scale) > 1 else 0
        mode = spec.PerChannel(axis) if q is not None and q.scale is not None and len(q.scale) > 1 else spec.PerTensor()
        specs.append(spec.Tensor(0, ti, [spec.LookUpTableCompression(bits, mode)]))
    import contextlib
    import io

    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            return bytes(comp.compress(clustered, specs))
    except Exception as exc:
        raise StageError(f"TFLM LUT compression failed: {str(exc).splitlines()[0][:200] if str(exc) else exc}") \
            from None
