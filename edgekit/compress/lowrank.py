"""Low-rank factorization: a Dense layer becomes two (truncated SVD), a Conv2D becomes a 1x1 -> kxk -> 1x1
chain (channel Tucker-2: higher-order SVD refined by a few HOOI sweeps). A layer is factorized only where
both its parameters and its MACs drop.

Ranks are chosen by retained energy (the share of squared singular values kept) or given per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.compress.kgraph import KGraph, class_name
from edgekit.compress.rebuild import rebuild
from edgekit.errors import StageError

HOOI_SWEEPS = 3


@dataclass(frozen=True)
class Factor:
    """A planned factorization of one layer: ``ranks`` = (r,) for Dense, (r_in, r_out) for Conv2D."""

    layer: str
    kind: str  # svd | tucker2
    ranks: tuple[int, ...]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    energy: float  # share of the squared singular values kept


def candidates(model: Any) -> list[str]:
    """Layers that could be factorized: Dense, and Conv2D with groups 1 and more than one input channel."""
    g = KGraph(model)
    out = []
    for node in g.nodes:
        kind = class_name(node.layer)
        if node.kind != "producer":
            continue
        if kind == "Dense" or (kind == "Conv2D" and g.shape[node.inputs[0]][-1] > 1):
            out.append(node.layer.name)
    return out


def _kernel(layer: Any) -> np.ndarray:
    return np.asarray(next(w for w in layer.weights if w.path.split("/")[-1] == "kernel").numpy())


def _energy_rank(s: np.ndarray, energy: float) -> int:
    e = np.cumsum(s ** 2) / max(float(np.sum(s ** 2)), 1e-30)
    return min(len(s), int(np.searchsorted(e, energy - 1e-12)) + 1)


def _unfold(k: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(k, axis, 0).reshape(k.shape[axis], -1)


def plan_layer(g: KGraph, name: str, energy: float | None = None, ranks: tuple[int, ...] | None = None
               ) -> Factor | None:
    """The factorization of one layer for a retained ``energy`` or explicit ``ranks``; None when it would not
    reduce both parameters and MACs."""
    node = g.node_of(name)
    layer = node.layer
    kind = class_name(layer)
    k = _kernel(layer)
    in_shape, out_shape = g.shape[node.inputs[0]], g.shape[node.outputs[0]]
    if kind == "Dense":
        n_in, n_out = k.shape
        s = np.linalg.svd(k, compute_uv=False)
        r = ranks[0] if ranks else _energy_rank(s, energy or 0.95)
        r = max(1, min(r, min(n_in, n_out)))
        pos = int(np.prod(out_shape[1:-1])) if len(out_shape) > 2 else 1
        before, after = n_in * n_out, r * (n_in + n_out)
        kept = float(np.sum(s[:r] ** 2) / max(np.sum(s ** 2), 1e-30))
        f = Factor(name, "svd", (r,), before, after, before * pos, after * pos, kept)
    elif kind == "Conv2D":
        kh, kw, c_in, c_out = k.shape
        s_in = np.linalg.svd(_unfold(k, 2), compute_uv=False)
        s_out = np.linalg.svd(_unfold(k, 3), compute_uv=False)
        if ranks:
            r1, r2 = ranks
        else:
            r1, r2 = _energy_rank(s_in, energy or 0.95), _energy_rank(s_out, energy or 0.95)
        r1, r2 = max(1, min(r1, c_in)), max(1, min(r2, c_out))
        hw_in = int(np.prod(in_shape[1:-1]))
        hw_out = int(np.prod(out_shape[1:-1]))
        before = kh * kw * c_in * c_out
        after = kh * kw * r1 * r2 + (c_in * r1 if r1 < c_in else 0) + (r2 * c_out if r2 < c_out else 0)
        macs_after = (hw_in * c_in * r1 if r1 < c_in else 0) + hw_out * (kh * kw * r1 * r2 +
                                                                         (r2 * c_out if r2 < c_out else 0))
        kept = float(np.sqrt(np.sum(s_in[:r1] ** 2) / max(np.sum(s_in ** 2), 1e-30) *
                             np.sum(s_out[:r2] ** 2) / max(np.sum(s_out ** 2), 1e-30)))
        f = Factor(name, "tucker2", (r1, r2), before, after, before * hw_out, macs_after, kept)
    else:
        raise StageError(f"layer {name} ({kind}) cannot be factorized (Dense and Conv2D can)")
    if f.params_after >= f.params_before or f.macs_after >= f.macs_before:
        return None
    return f


def _tucker2(k: np.ndarray, r1: int, r2: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U_in (Cin, r1), core (kh, kw, r1, r2), U_out (Cout, r2)) by HOSVD and HOOI sweeps."""
    u_in = np.linalg.svd(_unfold(k, 2), full_matrices=False)[0][:, :r1]
    u_out = np.linalg.svd(_unfold(k, 3), full_matrices=False)[0][:, :r2]
    for _ in range(HOOI_SWEEPS):
        t = np.einsum("hwio,os->hwis", k, u_out)
        u_in = np.linalg.svd(_unfold(t, 2), full_matrices=False)[0][:, :r1]
        t = np.einsum("hwio,ir->hwro", k, u_in)
        u_out = np.linalg.svd(_unfold(t, 3), full_matrices=False)[0][:, :r2]
    core = np.einsum("hwio,ir,os->hwrs", k, u_in, u_out)
    return u_in, core, u_out


def apply(model: Any, factors: list[Factor]) -> Any:
    """The model with each planned layer replaced by its factors (names: <layer>_svd_a/_b,
    <layer>_tk_a/_b/_c)."""
    from edgekit._tf import keras

    g = KGraph(model)
    replace: dict[str, Any] = {}
    weights: dict[str, list[np.ndarray]] = {}
    for f in factors:
        layer = g.node_of(f.layer).layer
        cfg = layer.get_config()
        k = _kernel(layer)
        bias = [np.asarray(w.numpy()) for w in layer.weights if w.path.split("/")[-1] == "bias"]
        dtype = cfg.get("dtype")
        if f.kind == "svd":
            (r,) = f.ranks
            u, s, vt = np.linalg.svd(k, full_matrices=False)
            root = np.sqrt(s[:r])
            a = keras.layers.Dense(r, use_bias=False, name=f"{f.layer}_svd_a", dtype=dtype)
            b = keras.layers.Dense(k.shape[1], activation=cfg.get("activation"), use_bias=bool(bias),
                                   name=f"{f.layer}_svd_b", dtype=dtype)
            weights[a.name] = [(u[:, :r] * root).astype(np.float32)]
            weights[b.name] = [(root[:, None] * vt[:r]).astype(np.float32), *bias]
            replace[f.layer] = _chain([a, b])
        else:
            r1, r2 = f.ranks
            kh, kw, c_in, c_out = k.shape
            u_in, core, u_out = _tucker2(k, r1, r2)
            chain = []
            if r1 < c_in:
                first = keras.layers.Conv2D(r1, 1, use_bias=False, name=f"{f.layer}_tk_a", dtype=dtype)
                weights[first.name] = [u_in.reshape(1, 1, c_in, r1).astype(np.float32)]
                chain.append(first)
            else:
                core = np.einsum("hwrs,ir->hwis", core, u_in)  # r1 == c_in: fold U_in back into the core
            last_in_core = r2 >= c_out
            if last_in_core:
                core = np.einsum("hwrs,os->hwro", core, u_out)
            mid = keras.layers.Conv2D(
                c_out if last_in_core else r2, (kh, kw), strides=cfg["strides"], padding=cfg["padding"],
                dilation_rate=cfg["dilation_rate"], use_bias=last_in_core and bool(bias),
                activation=cfg.get("activation") if last_in_core else None, name=f"{f.layer}_tk_b", dtype=dtype)
            weights[mid.name] = [core.astype(np.float32), *(bias if last_in_core else [])]
            chain.append(mid)
            if not last_in_core:
                end = keras.layers.Conv2D(c_out, 1, activation=cfg.get("activation"), use_bias=bool(bias),
                                          name=f"{f.layer}_tk_c", dtype=dtype)
                weights[end.name] = [u_out.T.reshape(1, 1, r2, c_out).astype(np.float32), *bias]
                chain.append(end)
            replace[f.layer] = _chain(chain)
    return rebuild(g, replace=replace, weights=weights)


def _chain(layers: list[Any]) -> Any:
    def call(x: Any, **_: Any) -> Any:
        for layer in layers:
            x = layer(x)
        return x
    return call


def plan(model: Any, energy: float | dict[str, float], layers: list[str] | None = None) -> list[Factor]:
    """The factorizations for a retained energy (one for all, or per layer name) over ``layers`` (default:
    every candidate), keeping only those that reduce both parameters and MACs."""
    g = KGraph(model)
    out = []
    for name in layers if layers is not None else candidates(model):
        e = energy.get(name) if isinstance(energy, dict) else energy
        if e is None or e >= 1:
            continue
        f = plan_layer(g, name, energy=e)
        if f is not None:
            out.append(f)
    return out
