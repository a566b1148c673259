"""A Keras functional model rebuilt from a float32 .tflite graph, so that sources without a Keras graph of
their own (ONNX through onnx2tf, SavedModel directories, legacy .h5 exports) can be pruned and factorized.

Each operator becomes the Keras layer that computes the same thing (CONV_2D -> Conv2D with the filter
transposed to HWIO and the fused activation, DEPTHWISE_CONV_2D -> DepthwiseConv2D, FULLY_CONNECTED -> Dense
after a Flatten where the input has more dimensions, MEAN over H and W -> GlobalAveragePooling2D, PAD ->
ZeroPadding2D, ...). A constant operand of ADD/MUL becomes a per-channel affine layer the pruner leaves
alone. The rebuilt model is run against the .tflite in LiteRT before it is used; any operator outside the
list, or a difference in the outputs, is a one-line StageError.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.errors import StageError
from edgekit.stages import flatbuf

ACTIVATIONS = {0: None, 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh"}
UNARY = {"RELU": "relu", "RELU6": "relu6", "LOGISTIC": "sigmoid", "TANH": "tanh", "HARD_SWISH": "hard_swish",
         "ELU": "elu"}
LIFT_TOLERANCE = 1e-4  # relative to the outputs' largest magnitude


def _act(x: Any, code: int, name: str) -> Any:
    from edgekit._tf import keras

    kind = ACTIVATIONS.get(code)
    if code not in ACTIVATIONS:
        raise StageError(f"fused activation {code} of {name} cannot be rebuilt in Keras")
    if kind is None:
        return x
    if kind == "relu6":
        return keras.layers.ReLU(6.0, name=f"{name}_relu6")(x)
    if kind == "relu":
        return keras.layers.ReLU(name=f"{name}_relu")(x)
    if kind == "relu_n1_to_1":
        # a named activation, not a lambda: the workers reload the teacher in Keras' safe mode, which refuses
        # lambdas (every fine-tune of such a model failed)
        return keras.layers.Activation("hard_tanh", name=f"{name}_clip")(x)
    return keras.layers.Activation(kind, name=f"{name}_{kind}")(x)


def _padding(code: int) -> str:
    return "same" if code == 0 else "valid"


def lift(tfl: bytes) -> Any:
    """The Keras model computing what the float .tflite ``tfl`` computes (subgraph 0, one input)."""
    from edgekit._tf import keras

    model = flatbuf.load(tfl)
    sg = model.subgraphs[0]
    if len(sg.inputs) != 1:
        raise StageError(f"level 3 needs a model with one input (this one has {len(sg.inputs)})")
    tensors = sg.tensors
    vals: dict[int, Any] = {}
    consts: dict[int, np.ndarray] = {}
    for i, t in enumerate(tensors):
        arr = flatbuf.tensor_array(model, t)
        if arr is not None:
            consts[i] = arr.astype(np.float32) if arr.dtype == np.float16 else arr
    inp = tensors[sg.inputs[0]]
    shape = tuple(int(d) for d in inp.shape)
    if inp.type != flatbuf.TT.FLOAT32:
        raise StageError("level 3 needs the float32 model (its input is not float32)")
    x_in = keras.Input(shape[1:], batch_size=None, name="input")
    vals[sg.inputs[0]] = x_in
    weights: dict[str, list[np.ndarray]] = {}

    def const(i: int) -> np.ndarray | None:
        return consts.get(i) if i >= 0 else None

    for n, op in enumerate(sg.operators):
        kind = flatbuf.op_name(model, op)
        opts = op.builtinOptions
        ins = list(op.inputs)
        name = f"{kind.lower()}_{n}"
        out_i = op.outputs[0]
        if kind == "DEQUANTIZE" and ins[0] in consts:
            consts[out_i] = consts[ins[0]].astype(np.float32)
            continue
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            w = const(ins[1])
            b = const(ins[2]) if len(ins) > 2 else None
            if w is None or ins[0] not in vals:
                raise StageError(f"{name} has a non-constant filter; level 3 cannot rebuild it")
            x = vals[ins[0]]
            if kind == "CONV_2D":
                c_in = int(x.shape[-1])
                groups = c_in // int(w.shape[3]) if w.shape[3] else 1
                layer = keras.layers.Conv2D(int(w.shape[0]), (int(w.shape[1]), int(w.shape[2])),
                                            strides=(opts.strideH, opts.strideW), padding=_padding(opts.padding),
                                            dilation_rate=(opts.dilationHFactor, opts.dilationWFactor),
                                            groups=groups, use_bias=b is not None, name=name)
                weights[name] = [w.transpose(1, 2, 3, 0), *([b] if b is not None else [])]
            elif kind == "DEPTHWISE_CONV_2D":
                c_in = int(x.shape[-1])
                mult = max(1, int(w.shape[3]) // c_in)
                layer = keras.layers.DepthwiseConv2D((int(w.shape[1]), int(w.shape[2])),
                                                     strides=(opts.strideH, opts.strideW),
                                                     padding=_padding(opts.padding), depth_multiplier=mult,
                                                     dilation_rate=(opts.dilationHFactor, opts.dilationWFactor),
                                                     use_bias=b is not None, name=name)
                weights[name] = [w.reshape(w.shape[1], w.shape[2], c_in, mult), *([b] if b is not None else [])]
            else:
                if len(x.shape) > 2 and not opts.keepNumDims:
                    x = keras.layers.Flatten(name=f"{name}_flatten")(x)
                layer = keras.layers.Dense(int(w.shape[0]), use_bias=b is not None, name=name)
                weights[name] = [w.T, *([b] if b is not None else [])]
            vals[out_i] = _act(layer(x), opts.fusedActivationFunction, name)
        elif kind in ("ADD", "MUL", "SUB"):
            a, c = ins[0], ins[1]
            act = getattr(opts, "fusedActivationFunction", 0) if opts is not None else 0
            if a in vals and c in vals:
                layer_cls = {"ADD": keras.layers.Add, "MUL": keras.layers.Multiply,
                             "SUB": keras.layers.Subtract}[kind]
                y = layer_cls(name=name)([vals[a], vals[c]])
            else:
                var, k = (a, c) if a in vals else (c, a)
                value = const(k)
                if value is None or var not in vals:
                    raise StageError(f"{name}: operands are neither computed nor constant")
                if kind == "SUB" and var != a:
                    raise StageError(f"{name}: constant minus tensor cannot be rebuilt")
                scale = value if kind == "MUL" else np.ones_like(value)
                offset = value if kind == "ADD" else (-value if kind == "SUB" else np.zeros_like(value))
                y = keras.layers.Rescaling(scale.tolist() if scale.ndim else float(scale),
                                           offset.tolist() if offset.ndim else float(offset), name=name)(vals[var])
            vals[out_i] = _act(y, act, name)
        elif kind == "CONCATENATION":
            vals[out_i] = _act(keras.layers.Concatenate(axis=opts.axis, name=name)([vals[i] for i in ins]),
                               opts.fusedActivationFunction, name)
        elif kind in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
            cls = keras.layers.AveragePooling2D if kind == "AVERAGE_POOL_2D" else keras.layers.MaxPooling2D
            y = cls((opts.filterHeight, opts.filterWidth), strides=(opts.strideH, opts.strideW),
                    padding=_padding(opts.padding), name=name)(vals[ins[0]])
            vals[out_i] = _act(y, opts.fusedActivationFunction, name)
        elif kind == "MEAN":
            axes = sorted(int(v) % 4 for v in np.asarray(const(ins[1])).reshape(-1))
            if axes != [1, 2] or len(vals[ins[0]].shape) != 4:
                raise StageError(f"{name}: MEAN over axes {axes} cannot be rebuilt (only global pooling)")
            vals[out_i] = keras.layers.GlobalAveragePooling2D(keepdims=bool(opts.keepDims), name=name)(vals[ins[0]])
        elif kind == "RESHAPE":
            target = [int(d) for d in tensors[out_i].shape]
            src = vals[ins[0]]
            if len(target) == 2 and len(src.shape) > 2 and target[1] == int(np.prod(src.shape[1:])):
                vals[out_i] = keras.layers.Flatten(name=name)(src)  # what the converter made of a Flatten
            else:
                vals[out_i] = keras.layers.Reshape(tuple(target[1:]), name=name)(src)
        elif kind == "TRANSPOSE":  # onnx2tf's NHWC -> NCHW before an ONNX Flatten, and the like
            perm = [int(v) for v in np.asarray(const(ins[1])).reshape(-1)]
            if not perm or perm[0] != 0 or sorted(perm) != list(range(len(perm))):
                raise StageError(f"{name}: a transpose that moves the batch axis cannot be rebuilt ({perm})")
            # an unknown layer to the grouping: the channels it reorders keep their count (frozen)
            vals[out_i] = keras.layers.Permute(tuple(perm[1:]), name=name)(vals[ins[0]])
        elif kind == "SOFTMAX":
            if abs(opts.beta - 1.0) > 1e-6:
                raise StageError(f"{name}: softmax with beta {opts.beta} cannot be rebuilt")
            vals[out_i] = keras.layers.Softmax(name=name)(vals[ins[0]])
        elif kind in UNARY:
            if kind == "RELU":
                vals[out_i] = keras.layers.ReLU(name=name)(vals[ins[0]])
            elif kind == "RELU6":
                vals[out_i] = keras.layers.ReLU(6.0, name=name)(vals[ins[0]])
            else:
                vals[out_i] = keras.layers.Activation(UNARY[kind], name=name)(vals[ins[0]])
        elif kind == "LEAKY_RELU":
            vals[out_i] = keras.layers.LeakyReLU(negative_slope=float(opts.alpha), name=name)(vals[ins[0]])
        elif kind in ("PAD", "PADV2"):
            pads = np.asarray(const(ins[1])).astype(int)
            if pads.shape != (4, 2) or pads[0].any() or pads[3].any() or (kind == "PADV2" and
                                                                         np.any(const(ins[2]) != 0)):
                raise StageError(f"{name}: only zero padding of H and W can be rebuilt")
            vals[out_i] = keras.layers.ZeroPadding2D(((int(pads[1][0]), int(pads[1][1])),
                                                      (int(pads[2][0]), int(pads[2][1]))), name=name)(vals[ins[0]])
        else:
            raise StageError(f"level 3 cannot rebuild a Keras model from this graph: operator {kind} (#{n}) is not "
                             "supported", "pass the .keras source model, or a graph of convolutions, dense, "
                             "pooling, add/concatenate and activations")
    outs = [vals[o] for o in sg.outputs]
    km = keras.Model(x_in, outs[0] if len(outs) == 1 else outs, name="lifted")
    for layer_name, arrays in weights.items():
        km.get_layer(layer_name).set_weights([np.asarray(a, np.float32) for a in arrays])
    return km


def verify(km: Any, tfl: bytes, samples: int = 4, seed: int = 0) -> float:
    """The largest output difference between ``km`` and the .tflite on random inputs, relative to the
    outputs' magnitude; a StageError when it exceeds LIFT_TOLERANCE."""
    from edgekit.evaluate import run_litert

    shape = tuple(int(d or 1) for d in km.inputs[0].shape[1:])
    x = np.random.default_rng(seed).random((samples, *shape), dtype=np.float32)
    ref = run_litert(tfl, x)
    got = np.asarray(km(x, training=False)).reshape(ref.shape)
    err = float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-6))
    if err > LIFT_TOLERANCE:
        raise StageError(f"the Keras model rebuilt from the float graph differs from it (relative error {err:.2g})",
                         "pass the .keras source model")
    return err


def from_artifact(art: Any) -> Any:
    """A verified Keras model for an Artifact that has none (ONNX, SavedModel, legacy .h5)."""
    from edgekit.stages import quantize

    tfl = art.float_tflite_cache or quantize.convert(art, "float32")
    km = lift(tfl)
    verify(km, tfl)
    return km


def describe(km: Any) -> str:
    return f"{len(km.layers)} layers, {km.count_params():,} parameters"
