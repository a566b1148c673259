"""Structured channel pruning that physically shrinks the model: channels are removed from every layer of
a dependency group (producers, per-channel layers, consumers' kernel rows) and a smaller Keras model is
built; no masks, no zeros.

Channel importance (``CRITERIA``): ``l1`` / ``l2`` norm of the producers' filters, ``bn`` the |gamma| of the
BatchNorms on the channels (l1 where a group has none), ``taylor`` the first-order Taylor estimate of the
loss change when a channel is removed, (sum over the channel's parameters of weight x gradient)^2
(Molchanov et al. 2019), summed over batches of training data.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgekit.compress.kgraph import Group, KGraph, class_name
from edgekit.compress.rebuild import rebuild
from edgekit.errors import StageError

CRITERIA = ("l1", "l2", "bn", "taylor")
ROUND_TO = 4  # kept channel counts are multiples of this (SIMD kernels like them), unless a group is smaller
UNIT_KEY = {"Dense": "units"}


def _weight(layer: Any, name: str) -> np.ndarray | None:
    for w in layer.weights:
        if w.path.split("/")[-1] == name:
            return np.asarray(w.numpy())
    return None


def _filter_norms(layer: Any, order: int) -> np.ndarray:
    w = _weight(layer, "pointwise_kernel")
    if w is None:
        w = _weight(layer, "kernel")
    assert w is not None
    flat = w.reshape(-1, w.shape[-1])
    return np.abs(flat).sum(axis=0) if order == 1 else np.sqrt((flat ** 2).sum(axis=0))


def _normalized(v: np.ndarray) -> np.ndarray:
    mean = float(np.mean(v))
    return v / mean if mean > 0 else v


def importance(g: KGraph, criterion: str = "l1", x: np.ndarray | None = None, y: np.ndarray | None = None,
               batch: int = 64, batches: int = 4) -> dict[int, np.ndarray]:
    """Group id -> one score per channel (higher = more important), for every prunable group."""
    if criterion not in CRITERIA:
        raise StageError(f"pruning criterion {criterion!r} is unknown (must be one of {', '.join(CRITERIA)})")
    if criterion == "taylor":
        if x is None:
            raise StageError("the Taylor criterion needs training data")
        return _taylor(g, x, y, batch, batches)
    scores: dict[int, np.ndarray] = {}
    for grp in g.prunable():
        if criterion == "bn":
            bn = _bn_scores(g, grp)
            if bn is not None:
                scores[grp.gid] = bn
                continue
        order = 2 if criterion == "l2" else 1
        total = np.zeros(grp.size)
        for name in grp.producers:
            total += _normalized(_filter_norms(_layer(g, name), order))
        scores[grp.gid] = total
    return scores


def _layer(g: KGraph, name: str) -> Any:
    return g.node_of(name).layer


def _bn_scores(g: KGraph, grp: Group) -> np.ndarray | None:
    total, found = np.zeros(grp.size), False
    for name in grp.per_channel:
        node = g.node_of(name)
        if class_name(node.layer) != "BatchNormalization":
            continue
        gamma = _weight(node.layer, "gamma")
        if gamma is None:
            continue
        offset = 0
        for sid in g.chan[node.inputs[0]].spaces:
            size = g.spaces[sid].size
            if g.find(sid) == grp.gid:
                total += _normalized(np.abs(gamma[offset : offset + size]))
                found = True
            offset += size
    return total if found else None


def _taylor(g: KGraph, x: np.ndarray, y: np.ndarray | None, batch: int, batches: int) -> dict[int, np.ndarray]:
    from edgekit._tf import tf

    model = g.model
    groups = g.prunable()
    logits_model, kind = logits_of(model)
    variables = {v.path: v for v in model.trainable_variables}
    acc = {grp.gid: np.zeros(grp.size) for grp in groups}
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    for b in range(min(batches, max(1, math.ceil(len(x) / batch)))):
        idx = order[b * batch : (b + 1) * batch]
        xb = tf.constant(x[idx])
        with tf.GradientTape() as tape:
            out = logits_model(xb, training=False)
            if kind == "probs":
                out = tf.math.log(tf.clip_by_value(out, 1e-12, 1.0))
            if kind != "raw":
                labels = np.asarray(y) if y is not None else None
                one_per_sample = labels is not None and labels.reshape(len(x), -1).shape[1] == 1
                target = (labels[idx].reshape(-1).astype(np.int64) if labels is not None and one_per_sample
                          else np.argmax(out.numpy(), axis=-1))
                loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(target, out, from_logits=True))
            else:
                ref = y[idx] if y is not None else out.numpy() + 0.1 * rng.standard_normal(out.shape)
                loss = tf.reduce_mean(tf.square(out - tf.constant(np.asarray(ref, np.float32).reshape(out.shape))))
        names = list(variables)
        grads = dict(zip(names, tape.gradient(loss, [variables[n] for n in names]), strict=True))
        for grp in groups:
            contrib = np.zeros(grp.size)
            for lname in grp.producers:
                layer = _layer(g, lname)
                for w in layer.trainable_weights:
                    short = w.path.split("/")[-1]
                    if short in ("kernel", "pointwise_kernel", "bias") and grads.get(w.path) is not None:
                        wg = (np.asarray(w.numpy()) * np.asarray(grads[w.path])).reshape(-1, grp.size)
                        contrib += wg.sum(axis=0)
            for lname in grp.per_channel:
                node = g.node_of(lname)
                per = np.zeros(g.channels(g.chan[node.inputs[0]]))
                for w in node.layer.trainable_weights:
                    if grads.get(w.path) is not None:
                        wg = np.asarray(w.numpy()) * np.asarray(grads[w.path])
                        axis = -2 if w.path.split("/")[-1] in ("kernel", "depthwise_kernel") else -1
                        per += np.moveaxis(wg, axis, -1).reshape(-1, per.size).sum(axis=0)
                offset = 0
                for sid in g.chan[node.inputs[0]].spaces:
                    size = g.spaces[sid].size
                    if g.find(sid) == grp.gid:
                        contrib += per[offset : offset + size]
                    offset += size
            acc[grp.gid] += contrib ** 2
    return acc


def logits_of(model: Any) -> tuple[Any, str]:
    """A model giving scores a softmax turns into the model's class probabilities, and what they are:
    ``logits`` (the input of a final Softmax layer or softmax Activation, sharing the model's layers),
    ``probs`` (the model ends in a layer with a softmax activation: take the log of its outputs) or ``raw``
    (no softmax at the end: regression, scores, an autoencoder)."""
    from edgekit._tf import keras

    g = KGraph(model)
    last = [n for n in g.nodes if n.outputs[0] == g.outputs[0]] if len(g.outputs) == 1 else []
    if last:
        node = last[0]
        kind = class_name(node.layer)
        cfg = node.layer.get_config()
        if kind == "Softmax" or (kind == "Activation" and cfg.get("activation") == "softmax"):
            inputs = g.fn.inputs[0] if len(g.fn.inputs) == 1 else g.fn.inputs
            return keras.Model(inputs, node.knode.input_tensors[0]), "logits"
        if cfg.get("activation") == "softmax":
            return model, "probs"
    return model, "raw"


def keep_counts(g: KGraph, ratios: dict[int, float], round_to: int = ROUND_TO) -> dict[int, int]:
    """Group id -> channels kept for a removal ratio per group (0 = keep all)."""
    counts = {}
    for grp in g.prunable():
        r = float(ratios.get(grp.gid, 0.0))
        if r <= 0:
            continue
        n = grp.size * (1 - min(r, 0.99))
        step = round_to if grp.size >= 2 * round_to else 1
        kept = max(step, math.ceil(n / step - 1e-9) * step)
        if kept < grp.size:
            counts[grp.gid] = kept
    return counts


def plan(g: KGraph, counts: dict[int, int], scores: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Group id -> the kept channel indices (the highest scores, in their original order)."""
    keep = {}
    for gid, n in counts.items():
        s = scores[gid]
        keep[gid] = np.sort(np.argsort(-s, kind="stable")[:n])
    return keep


def apply(g: KGraph, keep: dict[int, np.ndarray]) -> Any:
    """The physically smaller model: every layer of a pruned group rebuilt with the kept channels only."""
    for gid in keep:
        if gid not in g.groups or not g.groups[gid].prunable:
            raise StageError(f"group {gid} cannot be pruned ({g.groups[gid].frozen if gid in g.groups else 'unknown'})")
    configs: dict[str, dict[str, Any]] = {}
    weights: dict[str, list[np.ndarray]] = {}
    for node in g.nodes:
        layer = node.layer
        if node.kind == "producer":
            in_idx = g.index(g.chan[node.inputs[0]], keep)
            out_idx = g.index(g.chan[node.outputs[0]], keep)
            configs[layer.name] = {UNIT_KEY.get(class_name(layer), "filters"): len(out_idx)}
            weights[layer.name] = [_slice(w, in_idx, out_idx) for w in layer.weights]
        elif node.kind == "per-channel":
            idx = g.index(g.chan[node.inputs[0]], keep)
            weights[layer.name] = [_slice(w, idx, idx, per_channel=True) for w in layer.weights]
        elif node.kind == "reshape":
            n = len(g.index(g.chan[node.inputs[0]], keep))
            target = list(layer.get_config()["target_shape"])
            target[-1] = n
            configs[layer.name] = {"target_shape": tuple(target)}
    return rebuild(g, configs=configs, weights=weights)


def _slice(w: Any, in_idx: np.ndarray, out_idx: np.ndarray, per_channel: bool = False) -> np.ndarray:
    a = np.asarray(w.numpy())
    name = w.path.split("/")[-1]
    if name == "depthwise_kernel" or (per_channel and name == "kernel"):  # (..., channels, multiplier 1)
        return a.take(in_idx, axis=-2)
    if name in ("kernel", "pointwise_kernel"):
        return a.take(in_idx, axis=-2).take(out_idx, axis=-1)
    if name in ("bias", "gamma", "beta", "moving_mean", "moving_variance"):
        return a.take(out_idx, axis=0)
    if name == "alpha":
        return a.take(out_idx, axis=-1)
    return a


def prune(model: Any, ratios: float | dict[int, float], criterion: str = "l1", x: np.ndarray | None = None,
          y: np.ndarray | None = None, round_to: int = ROUND_TO) -> tuple[Any, dict[int, int]]:
    """(the pruned model, group id -> channels kept): ``ratios`` is one removal ratio for every prunable
    group or one per group id."""
    g = KGraph(model)
    if not isinstance(ratios, dict):
        ratios = {grp.gid: float(ratios) for grp in g.prunable()}
    counts = keep_counts(g, ratios, round_to)
    if not counts:
        return model, {}
    scores = importance(g, criterion, x, y)
    return apply(g, plan(g, counts, scores)), counts
