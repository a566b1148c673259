"""Cheap cost figures of a Keras model from its graph (no conversion): deployed parameters (BatchNorm
folded), MACs, and a peak activation estimate (tensors alive at once in execution order; BatchNorm,
activations, dropout and reshapes work in place, as they do once converted and fused).

These rank search candidates before any conversion; every finalist is then measured on the artifact."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

from edgekit.compress.kgraph import KGraph, class_name

IN_PLACE = {"BatchNormalization", "Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D",
            "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
            "Identity", "Reshape", "Flatten", "Softmax"}


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int
    peak_activations: int  # elements (bytes at int8)

    def to_dict(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs, "peak_activations": self.peak_activations}


def estimate(model: Any, g: KGraph | None = None) -> Cost:
    g = g or KGraph(model)
    params = macs = 0
    for node in g.nodes:
        layer = node.layer
        kind = class_name(layer)
        if kind == "BatchNormalization":
            continue  # folded into the convolution before it
        weights = {w.path.split("/")[-1]: tuple(int(d) for d in w.shape) for w in getattr(layer, "weights", [])}
        params += sum(prod(s) for s in weights.values())
        out = g.shape[node.outputs[0]]
        positions = prod(out[1:-1]) if len(out) > 2 else 1
        if kind in ("Conv1D", "Conv2D", "Conv3D", "Dense") and "kernel" in weights:
            macs += positions * prod(weights["kernel"])  # a grouped kernel is already (kh, kw, in/groups, out)
        elif kind in ("DepthwiseConv1D", "DepthwiseConv2D") and "kernel" in weights:
            macs += positions * prod(weights["kernel"])
        elif kind in ("SeparableConv1D", "SeparableConv2D"):
            macs += positions * (prod(weights.get("depthwise_kernel", (0,))) + prod(weights.get("pointwise_kernel",
                                                                                                  (0,))))
    return Cost(params, macs, peak_activations(g))


def peak_activations(g: KGraph, counts: dict[int, int] | None = None) -> int:
    """The most activation elements alive at once when the nodes run in order (in-place layers share their
    input's buffer; a tensor lives from its producer to its last reader; model inputs and outputs count).
    ``counts`` (group id -> channels kept) gives the figure of the pruned model without building it."""
    return peak(g, counts)[0]


def peak(g: KGraph, counts: dict[int, int] | None = None) -> tuple[int, set[int]]:
    """(peak elements, the dependency groups whose channels make up the tensors alive at the peak)."""
    counts = counts or {}
    alias: dict[int, int] = {}
    for node in g.nodes:
        if class_name(node.layer) in IN_PLACE and len(node.inputs) == 1:
            alias[node.outputs[0]] = alias.get(node.inputs[0], node.inputs[0])
    root = {k: alias.get(k, k) for k in g.shape}

    def elements(k: int) -> int:
        s = g.shape[k]
        chan = g.chan.get(k)
        if chan is None or not counts:
            return prod(s[1:]) if len(s) > 1 else 1
        kept = sum(counts.get(g.find(sid), g.spaces[sid].size) for sid in chan.spaces) * chan.repeat
        return (prod(s[1:-1]) if len(s) > 2 else 1) * kept

    size = {k: elements(k) for k in g.shape}
    last_use: dict[int, int] = {}
    for i, node in enumerate(g.nodes):
        for k in node.inputs:
            last_use[root[k]] = i
    for k in g.outputs:
        last_use[root[k]] = len(g.nodes)
    live = {root[k] for k in g.inputs}
    best, at = sum(size[k] for k in live), set(live)
    for i, node in enumerate(g.nodes):
        for k in node.outputs:
            live.add(root[k])
        total = sum(size[k] for k in live)
        if total > best:
            best, at = total, set(live)
        live = {k for k in live if last_use.get(k, -1) > i}
    groups = {g.find(sid) for k in at if k in g.chan for sid in g.chan[k].spaces}
    return int(best), groups
