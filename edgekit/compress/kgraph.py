"""A Keras 3 functional graph and its channel dependency groups.

Every tensor's last (channel) axis is described as a :class:`Chan`: the channel *spaces* it is made of (a
space is created by the layer that produces new channels: a convolution, a dense layer, the model input or a
layer this module does not understand) and, after a ``Flatten``, how often the pattern repeats. Layers that
tie channels together unite their spaces: a residual ``Add`` (its inputs must keep equal channel counts),
a depthwise convolution or BatchNorm after its producer (per-channel parameters), a ``Concatenate`` (its
output is its inputs' spaces side by side, each pruned with its own producer), a ``Dense`` after
``Flatten``/global pooling (its rows follow the flattened channels). A *group* is one united set of spaces:
pruning a group removes the same channel indices from every producer, per-channel layer and consumer in it.
Spaces the model's inputs and outputs are made of, and spaces any unknown layer touches, are frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np

from edgekit.errors import StageError

# layers whose output has new channels (kernel: [..., in, out]); groups > 1 freezes them
PRODUCERS = {"Conv1D", "Conv2D", "Conv3D", "Dense", "SeparableConv1D", "SeparableConv2D"}
# per-channel parameters, the channel count passes through
PER_CHANNEL = {"BatchNormalization", "DepthwiseConv1D", "DepthwiseConv2D", "PReLU"}
# (LayerNormalization is not one: it normalizes across the channel axis, so removing channels changes every
# kept one; it is an unknown layer and freezes its input)
# no parameters, channels pass through one to one
PASS_THROUGH = {
    "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D",
    "UpSampling2D", "UpSampling3D", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
    "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "Identity",
}
MERGE = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}


@dataclass(frozen=True)
class Chan:
    """The layout of a tensor's channel axis: spaces side by side, the pattern repeated ``repeat`` times
    (the spatial positions a Flatten folded in front of the channels)."""

    spaces: tuple[int, ...]
    repeat: int = 1


@dataclass
class Space:
    sid: int
    size: int
    origin: str  # the layer that created it ("input", a producer, or an unknown layer)
    frozen: str = ""  # why it cannot be pruned ("" = it can)


@dataclass
class GNode:
    """One call of a layer: its inputs and outputs as tensor keys."""

    index: int
    layer: Any
    knode: Any  # the keras Node (its arguments are filled in when rebuilding)
    inputs: list[int]
    outputs: list[int]
    kind: str  # input | producer | per-channel | pass | merge | concat | flatten | reshape | other


@dataclass
class Group:
    gid: int
    size: int
    spaces: list[int]
    producers: list[str] = field(default_factory=list)  # layers whose output channels these are
    per_channel: list[str] = field(default_factory=list)  # BatchNorm, depthwise ... on these channels
    consumers: list[str] = field(default_factory=list)  # layers reading these channels (rows of their kernel)
    frozen: str = ""

    @property
    def prunable(self) -> bool:
        return not self.frozen and self.size >= 2 and bool(self.producers)

    def describe(self) -> str:
        return f"group {self.gid} ({self.size} channels: {', '.join(self.producers)})"


def class_name(layer: Any) -> str:
    """The Keras class of a layer; a user's subclass of a Keras layer is not the Keras layer."""
    cls = type(layer)
    return cls.__name__ if cls.__module__.startswith("keras.") else f"user:{cls.__name__}"


def functional(model: Any) -> Any:
    """The functional graph behind a model (a Sequential keeps one once it is built with an input)."""
    from edgekit._tf import keras

    if isinstance(model, keras.Sequential):
        f = getattr(model, "_functional", None)
        if f is None:
            raise StageError(f"Sequential model {model.name!r} has no input shape",
                             "build it with keras.Input(...) as its first layer")
        return f
    if not hasattr(model, "_nodes_by_depth"):
        raise StageError(f"model {getattr(model, 'name', '?')!r} is a subclassed Keras model: level 3 needs a "
                         "functional or Sequential graph", "rebuild it with the functional API")
    return model


class KGraph:
    """The nodes of a functional Keras model in execution order, the channel layout of every tensor, the
    spaces and the dependency groups."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.fn = functional(model)
        self.nodes: list[GNode] = []
        self.chan: dict[int, Chan] = {}
        self.shape: dict[int, tuple[int, ...]] = {}
        self.spaces: list[Space] = []
        self._parent: list[int] = []
        self.out_space: dict[str, int] = {}  # producer layer name -> its output space
        self.inputs = [id(t) for t in self.fn.inputs]
        self.outputs = [id(t) for t in self.fn.outputs]
        self._walk()
        self.groups = self._groups()

    # ----------------------------------------------------------------- spaces

    def _new_space(self, size: int, origin: str, frozen: str = "") -> int:
        sid = len(self.spaces)
        self.spaces.append(Space(sid, int(size), origin, frozen))
        self._parent.append(sid)
        return sid

    def find(self, sid: int) -> int:
        while self._parent[sid] != sid:
            self._parent[sid] = self._parent[self._parent[sid]]
            sid = self._parent[sid]
        return sid

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def _freeze(self, chan: Chan, why: str) -> None:
        for sid in chan.spaces:
            if not self.spaces[sid].frozen:
                self.spaces[sid].frozen = why

    def channels(self, chan: Chan) -> int:
        return sum(self.spaces[s].size for s in chan.spaces)

    # ----------------------------------------------------------------- walk

    def _walk(self) -> None:
        depth_keys = sorted(self.fn._nodes_by_depth, reverse=True)
        order = [n for d in depth_keys for n in self.fn._nodes_by_depth[d]]
        for t in self.fn.inputs:
            key = id(t)
            self.shape[key] = _shape(t)
            self.chan[key] = Chan((self._new_space(self.shape[key][-1] if self.shape[key] else 1, "input",
                                                   "model input"),))
        calls: dict[str, int] = {}
        for kn in order:
            if kn.operation is None or kn.is_input:
                continue
            calls[kn.operation.name] = calls.get(kn.operation.name, 0) + 1
        for kn in order:
            if kn.operation is None or kn.is_input:
                continue
            node = GNode(len(self.nodes), kn.operation, kn, [id(t) for t in kn.input_tensors],
                         [id(t) for t in kn.outputs], "other")
            for t in kn.outputs:
                self.shape[id(t)] = _shape(t)
            self._visit(node, calls[kn.operation.name] > 1)
            self.nodes.append(node)
        for key in self.outputs:
            self._freeze(self.chan[key], "model output")

    def _visit(self, node: GNode, shared: bool) -> None:
        from edgekit._tf import keras

        layer = node.layer
        kind = class_name(layer) if isinstance(layer, keras.layers.Layer) else "op"
        ins = [self.chan[k] for k in node.inputs if k in self.chan]
        in_shapes = [self.shape[k] for k in node.inputs if k in self.shape]
        out_key = node.outputs[0]
        out_shape = self.shape[out_key]
        cfg = layer.get_config() if hasattr(layer, "get_config") else {}
        last_axis = _is_last_axis(cfg.get("axis", -1), len(out_shape))
        channels_last = cfg.get("data_format", "channels_last") == "channels_last"
        if len(ins) != len(node.inputs) or len(node.outputs) != 1:
            return self._other(node, ins, "multi-output or foreign input")
        if kind in PRODUCERS and channels_last and int(cfg.get("groups", 1)) == 1 and \
                int(cfg.get("depth_multiplier", 1)) == 1 and len(ins) == 1:
            node.kind = "producer"
            sid = self._new_space(out_shape[-1], layer.name)
            self.out_space[layer.name] = sid
            self.chan[out_key] = Chan((sid,))
            if shared:
                self._freeze(ins[0], f"{layer.name} is shared by several calls")
                self._freeze(self.chan[out_key], f"{layer.name} is shared by several calls")
            if ins[0].repeat > 1 and kind != "Dense":
                self._freeze(ins[0], f"{layer.name} reads a flattened tensor")
            return None
        if (kind in PER_CHANNEL and channels_last and len(ins) == 1 and int(cfg.get("depth_multiplier", 1)) == 1
                and (kind not in ("BatchNormalization", "LayerNormalization") or last_axis)
                and (kind != "PReLU" or _prelu_per_channel(layer, out_shape))):
            node.kind = "per-channel"
            self.chan[out_key] = ins[0]
            if shared:  # one set of per-channel weights serving two inputs: both would need the same channels
                self._freeze(ins[0], f"{layer.name} is shared by several calls")
            if ins[0].repeat > 1:
                self._freeze(ins[0], f"{layer.name} has per-channel parameters on a flattened tensor")
            return None
        if kind in PASS_THROUGH and len(ins) == 1 and channels_last and in_shapes[0][-1:] == out_shape[-1:]:
            node.kind = "pass"
            self.chan[out_key] = ins[0]
            noise = cfg.get("noise_shape")
            if noise and noise[-1] not in (None, 1):  # a Dropout mask shaped for the unpruned channel count
                self._freeze(ins[0], f"{layer.name} has a noise_shape over the channels")
            return None
        if kind in MERGE and len(ins) >= 2:
            return self._merge(node, ins, in_shapes)
        if kind == "Concatenate" and last_axis and len(ins) >= 1 and all(c.repeat == 1 for c in ins):
            node.kind = "concat"
            self.chan[out_key] = Chan(tuple(s for c in ins for s in c.spaces))
            return None
        if kind == "Flatten" and len(ins) == 1 and (channels_last or len(in_shapes[0]) <= 2):
            node.kind = "flatten"
            spatial = prod(in_shapes[0][1:-1]) if len(in_shapes[0]) > 2 else 1
            self.chan[out_key] = Chan(ins[0].spaces, ins[0].repeat * spatial)
            return None
        if kind == "Reshape" and len(ins) == 1 and ins[0].repeat == 1 and _keeps_last_axis(in_shapes[0], out_shape):
            node.kind = "reshape"
            self.chan[out_key] = ins[0]
            return None
        return self._other(node, ins, f"{layer.name} ({kind}) is not understood by the pruner")

    def _merge(self, node: GNode, ins: list[Chan], in_shapes: list[tuple[int, ...]]) -> None:
        full = [c for c, s in zip(ins, in_shapes, strict=True) if (s[-1] if s else 1) != 1]  # broadcast inputs
        if not full:
            return self._other(node, ins, "merge of broadcast inputs")
        first = full[0]
        same = all(len(c.spaces) == len(first.spaces) and c.repeat == first.repeat and
                   all(self.spaces[a].size == self.spaces[b].size for a, b in zip(c.spaces, first.spaces, strict=True))
                   for c in full)
        if not same:
            return self._other(node, ins, f"{node.layer.name} merges tensors with different channel layouts")
        node.kind = "merge"
        for c in full[1:]:
            for a, b in zip(c.spaces, first.spaces, strict=True):
                self._union(a, b)
        self.chan[node.outputs[0]] = first
        return None

    def _other(self, node: GNode, ins: list[Chan], why: str) -> None:
        node.kind = "other"
        for c in ins:
            self._freeze(c, why)
        for key in node.outputs:
            shape = self.shape[key]
            self.chan[key] = Chan((self._new_space(shape[-1] if shape else 1, node.layer.name, why),))
        return None

    # ----------------------------------------------------------------- groups

    def _groups(self) -> dict[int, Group]:
        groups: dict[int, Group] = {}
        for s in self.spaces:
            root = self.find(s.sid)
            g = groups.setdefault(root, Group(root, self.spaces[root].size, []))
            g.spaces.append(s.sid)
            if s.size != g.size and not g.frozen:
                g.frozen = "spaces of different sizes were tied together"
            if s.frozen and not g.frozen:
                g.frozen = s.frozen
        for name, sid in self.out_space.items():
            groups[self.find(sid)].producers.append(name)
        for node in self.nodes:
            if node.kind in ("per-channel", "producer"):
                for sid in self.chan[node.inputs[0]].spaces:
                    g = groups[self.find(sid)]
                    lst = g.per_channel if node.kind == "per-channel" else g.consumers
                    if node.layer.name not in lst:
                        lst.append(node.layer.name)
        return groups

    def prunable(self) -> list[Group]:
        return [g for g in self.groups.values() if g.prunable]

    def group_of(self, layer_name: str) -> Group:
        return self.groups[self.find(self.out_space[layer_name])]

    # ----------------------------------------------------------------- slicing

    def index(self, chan: Chan, keep: dict[int, np.ndarray]) -> np.ndarray:
        """The channel indices of a tensor laid out as ``chan`` that survive ``keep`` (group -> kept indices)."""
        total = self.channels(chan)
        parts, offset = [], 0
        for sid in chan.spaces:
            size = self.spaces[sid].size
            kept = keep.get(self.find(sid))
            parts.append(offset + (np.arange(size) if kept is None else np.asarray(kept)))
            offset += size
        one = np.concatenate(parts) if parts else np.arange(0)
        if chan.repeat == 1:
            return one
        return np.concatenate([p * total + one for p in range(chan.repeat)])

    def node_of(self, layer_name: str) -> GNode:
        for n in self.nodes:
            if n.layer.name == layer_name:
                return n
        raise KeyError(layer_name)


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) if d is not None else 1 for d in t.shape)


def _is_last_axis(axis: Any, rank: int) -> bool:
    if isinstance(axis, list | tuple):
        if len(axis) != 1:
            return False
        axis = axis[0]
    return int(axis) in (-1, rank - 1)


def _keeps_last_axis(src: tuple[int, ...], dst: tuple[int, ...]) -> bool:
    """A Reshape that only adds or drops size-1 axes in front of the channels, e.g. (N, C) -> (N, 1, 1, C)."""
    return bool(src) and bool(dst) and src[-1] == dst[-1] and prod(src[1:-1]) == 1 and prod(dst[1:-1]) == 1


def _prelu_per_channel(layer: Any, out_shape: tuple[int, ...]) -> bool:
    alpha = [w for w in layer.weights if w.path.endswith("alpha")]
    return bool(alpha) and all(int(d) == 1 for d in alpha[0].shape[:-1]) and int(alpha[0].shape[-1]) == out_shape[-1]
