"""A new functional Keras model from an old one: the same graph, with some layers built from a changed
config or replaced by a small sub-graph, and every weight given explicitly or copied.

The old model is walked node by node in execution order; each node's recorded call arguments are filled in
with the new tensors (so keyword arguments and list inputs survive), and the new layers keep the old names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgekit.compress.kgraph import KGraph
from edgekit.errors import StageError


def clone_layer(layer: Any, overrides: dict[str, Any] | None = None) -> Any:
    cfg = layer.get_config()
    cfg.update(overrides or {})
    return type(layer).from_config(cfg)


def rebuild(g: KGraph, configs: dict[str, dict[str, Any]] | None = None,
            replace: dict[str, Callable[..., Any]] | None = None,
            weights: dict[str, list[np.ndarray]] | None = None) -> Any:
    """The rebuilt model. ``configs``: layer name -> config overrides; ``replace``: layer name -> a callable
    taking the node's inputs and returning its output (it creates its own, uniquely named layers);
    ``weights``: new layer name -> its weights (others keep the old layer's weights, which must still fit)."""
    from edgekit._tf import keras

    configs, replace, weights = configs or {}, replace or {}, weights or {}
    tmap: dict[int, Any] = {}
    new_inputs = []
    for t in g.fn.inputs:
        name = t._keras_history.operation.name if hasattr(t, "_keras_history") else None
        x = keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=name)
        tmap[id(t)] = x
        new_inputs.append(x)
    made: dict[str, Any] = {}
    for node in g.nodes:
        name = node.layer.name
        if name in replace:
            op = replace[name]
        else:
            if name not in made:
                made[name] = clone_layer(node.layer, configs.get(name))
            op = made[name]
        args, kwargs = node.knode.arguments.fill_in(tmap)
        out = op(*args, **kwargs)
        for old, new in zip(node.knode.outputs, keras.tree.flatten(out), strict=True):
            tmap[id(old)] = new
    outs = [tmap[id(t)] for t in g.fn.outputs]
    model = keras.Model(new_inputs[0] if len(new_inputs) == 1 else new_inputs,
                        outs[0] if len(outs) == 1 else outs, name=g.model.name)
    old_layers = {n.layer.name: n.layer for n in g.nodes}
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name in weights:
            arrays = weights[layer.name]
        elif layer.name in old_layers:
            arrays = old_layers[layer.name].get_weights()
        else:
            raise StageError(f"rebuilt layer {layer.name} has no weights to take")
        want = [tuple(w.shape) for w in layer.weights]
        have = [tuple(a.shape) for a in arrays]
        if want != have:
            raise StageError(f"rebuilt layer {layer.name}: weights of shapes {have} do not fit {want}")
        layer.set_weights(arrays)
    return model
