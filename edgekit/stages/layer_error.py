"""Per-layer quantization error: every layer's int8 output against the float model's, side by side.

Method (our own side-by-side run, not TensorFlow's quantization debugger): the calibrated float model
and the int8 model written from it share their graph and tensor names. Both run in LiteRT with every
intermediate tensor preserved, on the calibration samples; each int8 layer output is dequantized and
compared with the float tensor of the same name:

- ``error``: the mean over output channels of RMSE / RMS of the float channel (1.0 = the channel's signal
  is lost). Per channel, because one outlier channel sets a per-tensor activation scale that rounds every
  other channel to zero, while a whole-tensor RMSE or cosine (dominated by that channel) looks fine.
- ``added``: ``error`` minus the largest error among the layer's inputs: what this layer itself adds. The
  ranking (worst first) is by ``added``, so the blame lands on the layer where the loss happens, not on
  every layer downstream of it.
- ``rmse_scale``: RMSE in units of the output's quantization step (TensorFlow's debugger's figure; about
  0.29 for pure rounding) and ``cosine`` of the flattened tensors, for reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgekit.analysis.graph import read_graph
from edgekit.stages.flatbuf import short_name

SAMPLES = 64  # calibration samples the comparison runs on
SKIP_OPS = {"QUANTIZE", "DEQUANTIZE"}
WEIGHTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"}


@dataclass(frozen=True)
class LayerError:
    index: int  # operator index in the int8 model
    op: str
    layer: str  # the layer's name scope (from the converter's tensor names) or the Keras layer name
    tensor: str  # the output tensor's full name: the node name the converter's denylist takes
    error: float
    added: float
    rmse_scale: float
    cosine: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("error", "added", "rmse_scale", "cosine"):
            d[k] = round(float(d[k]), 5)
        return d


def _run_all(model: bytes, x: np.ndarray) -> tuple[dict[str, np.ndarray], Any]:
    """Every tensor of ``model`` (by name), dequantized, for each sample of ``x``, stacked."""
    from edgekit._quiet import quiet_native
    from edgekit.evaluate import _dequantize, _interpreter_class, _quantize

    with quiet_native():
        interp = _interpreter_class()(model_content=model, experimental_preserve_all_tensors=True)
        interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    scale, zp = inp["quantization"]
    details = [d for d in interp.get_tensor_details() if d["name"]]
    out: dict[str, list[np.ndarray]] = {}
    for i in range(len(x)):
        interp.set_tensor(inp["index"], _quantize(x[i : i + 1].reshape(inp["shape"]), inp["dtype"], scale, zp))
        interp.invoke()
        for d in details:
            try:
                v = interp.get_tensor(d["index"])
            except ValueError:
                continue
            qs = d["quantization_parameters"]
            if v.dtype.kind in "iu" and len(qs["scales"]) == 1:
                v = _dequantize(v, float(qs["scales"][0]), int(qs["zero_points"][0]))
            elif v.dtype.kind not in "f":
                continue
            out.setdefault(d["name"], []).append(np.asarray(v, dtype=np.float32).copy())
    return {k: np.stack(v) for k, v in out.items()}, interp


def _channel_error(q: np.ndarray, f: np.ndarray) -> float:
    """Mean over the last axis (channels) of RMSE / RMS of the float channel."""
    ch = f.shape[-1] if f.ndim > 1 else 1
    fq = q.reshape(-1, ch).astype(np.float64)
    ff = f.reshape(-1, ch).astype(np.float64)
    rms = np.sqrt(np.mean(ff**2, axis=0))
    live = rms > 1e-6 * max(float(rms.max()), 1e-30)
    if not live.any():
        return 0.0
    rmse = np.sqrt(np.mean((fq - ff) ** 2, axis=0))
    return float(np.mean(rmse[live] / rms[live]))


def layer_errors(float_model: bytes, int8_model: bytes, x: np.ndarray,
                 names: dict[int, str] | None = None) -> list[LayerError]:
    """The per-layer error of ``int8_model`` against ``float_model`` on (up to SAMPLES of) ``x``, worst
    first. ``names`` maps operator indices of the int8 model to friendlier layer names (e.g. Keras')."""
    xs = x[:SAMPLES]
    fl, _ = _run_all(float_model, xs)
    qt, _ = _run_all(int8_model, xs)
    g = read_graph(int8_model)
    produced: dict[int, float] = {}
    rows = []
    for layer in g.layers:
        if layer.op in SKIP_OPS or not layer.outputs:
            for o in layer.outputs:  # a QUANTIZE carries its input's error forward
                produced[o] = max((produced.get(i, 0.0) for i in layer.inputs if i >= 0), default=0.0)
            continue
        t = g.tensors[layer.outputs[0]]
        if t.name not in fl or t.name not in qt or fl[t.name].shape != qt[t.name].shape:
            continue
        f, q = fl[t.name], qt[t.name]
        err = _channel_error(q, f)
        before = max((produced.get(i, 0.0) for i in layer.inputs if i >= 0), default=0.0)
        produced[layer.outputs[0]] = err
        diff = (q.astype(np.float64) - f).reshape(-1)
        rmse = float(np.sqrt(np.mean(diff**2)))
        step = t.scale[0] if t.scale else 0.0
        denom = float(np.linalg.norm(q) * np.linalg.norm(f))
        cos = float(np.dot(q.reshape(-1).astype(np.float64), f.reshape(-1)) / denom) if denom > 0 else 1.0
        label = (names or {}).get(layer.index) or short_name(t.name)
        rows.append(LayerError(layer.index, layer.op, label, t.name, err, max(err - before, 0.0),
                               rmse / step if step else 0.0, cos))
    return sorted(rows, key=lambda r: (-r.added, -r.error, r.index))


def region(int8_model: bytes, index: int) -> list[int]:
    """The operators to keep in higher precision together with operator ``index``: it, and its consumers
    up to and including the next weighted layer on every path (its output activation, whose range is the
    problem, must not be re-quantized to int8 before a layer has mixed its channels)."""
    g = read_graph(int8_model)
    consumers: dict[int, list[int]] = {}
    for layer in g.layers:
        for t in layer.inputs:
            if t >= 0:
                consumers.setdefault(t, []).append(layer.index)
    keep = {index}
    frontier = list(g.layers[index].outputs)
    while frontier:
        t = frontier.pop()
        for c in consumers.get(t, []):
            if c in keep:
                continue
            keep.add(c)
            if g.layers[c].op not in WEIGHTED and g.layers[c].op not in SKIP_OPS:
                frontier.extend(g.layers[c].outputs)
    return sorted(keep)
