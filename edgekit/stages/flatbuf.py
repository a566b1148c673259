"""Small helpers for the level-2 flatbuffer rewrites (int4 packing, LUT clustering, mixed precision):
open a .tflite as the schema's object API, name operators, read and write constant tensors, pack it back.

The stages that use this never change what an operator computes beyond the one thing they name (a filter's
storage type, its values); every rewritten model is run against its source on the TFLM interpreter by the
caller before it is trusted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.analysis.schema import schema_fb

OP_NAMES = {v: k for k, v in vars(schema_fb.BuiltinOperator).items() if not k.startswith("_")}
TT = schema_fb.TensorType
NP_TYPES = {TT.INT8: np.int8, TT.INT16: np.int16, TT.INT32: np.int32, TT.INT64: np.int64, TT.UINT8: np.uint8,
            TT.FLOAT32: np.float32, TT.FLOAT16: np.float16}
# operator -> index of its filter input, and of its bias input
FILTER_INPUT = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1}
BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}


def load(data: bytes) -> Any:
    """The model as the schema's mutable object tree (schema_fb.ModelT)."""
    return schema_fb.ModelT.InitFromPackedBuf(bytearray(data), 0)


def pack(model: Any) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def op_name(model: Any, op: Any) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    return OP_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode), f"BUILTIN_{code.builtinCode}")


def tensor_array(model: Any, tensor: Any) -> np.ndarray | None:
    """The constant data of ``tensor`` as a numpy array of its shape (None when it has no data)."""
    buf = model.buffers[tensor.buffer] if 0 < tensor.buffer < len(model.buffers) else None
    if buf is None or buf.data is None or not len(buf.data) or tensor.type not in NP_TYPES:
        return None
    raw = np.asarray(buf.data, dtype=np.uint8).tobytes()
    return np.frombuffer(raw, dtype=NP_TYPES[tensor.type]).reshape(tuple(tensor.shape)).copy()


def set_buffer(model: Any, tensor: Any, raw: bytes) -> None:
    """Store ``raw`` as ``tensor``'s data: in place when no other tensor shares its buffer, else in a new
    buffer of its own (a buffer the converter deduplicated between tensors is never edited)."""
    data = np.frombuffer(raw, dtype=np.uint8).copy()
    users = sum(1 for sg in model.subgraphs or [] for t in sg.tensors or [] if t.buffer == tensor.buffer)
    if 0 < tensor.buffer < len(model.buffers) and users == 1:
        model.buffers[tensor.buffer].data = data
        return
    buf = schema_fb.BufferT()
    buf.data = data
    model.buffers.append(buf)
    tensor.buffer = len(model.buffers) - 1


def weighted_ops(model: Any, ops: tuple[str, ...] = ("CONV_2D", "FULLY_CONNECTED")) -> list[tuple[int, Any, str]]:
    """(operator index, operator, name) of every operator of ``ops`` in subgraph 0 with a constant filter."""
    sg = model.subgraphs[0]
    found = []
    for i, op in enumerate(sg.operators or []):
        name = op_name(model, op)
        if name in ops and op.inputs is not None and len(op.inputs) > FILTER_INPUT[name]:
            filt = sg.tensors[op.inputs[FILTER_INPUT[name]]]
            if tensor_array(model, filt) is not None:
                found.append((i, op, name))
    return found


def layer_label(model: Any, index: int) -> str:
    """``OP #index`` plus the output tensor's name where the model still has names (before stripping)."""
    sg = model.subgraphs[0]
    op = sg.operators[index]
    name = op_name(model, op)
    out = sg.tensors[op.outputs[0]].name if op.outputs is not None and len(op.outputs) else None
    text = out.decode(errors="replace") if isinstance(out, bytes) else (out or "")
    return f"{name} #{index}" + (f" ({short_name(text)})" if text else "")


def short_name(name: str) -> str:
    """A converter tensor name ("model/sequential/conv2d_1/Relu;model/sequential/conv2d_1/BiasAdd") to the
    name scope of its layer ("conv2d_1")."""
    parts = [p for p in name.split(";")[0].split("/") if p]
    return parts[-2] if len(parts) >= 2 else (parts[0] if parts else name)


def prune(model: Any) -> None:
    """For TFLM models (signatures are dropped). Drop the tensors no operator, input or output names, then
    the buffers no tensor or metadata names (a rewrite that replaced operators leaves their old weights
    behind); indices remapped."""
    for sg in model.subgraphs or []:
        used = {t for op in sg.operators or [] for t in (*(op.inputs if op.inputs is not None else []),
                                                           *(op.outputs if op.outputs is not None else []),
                                                           *(op.intermediates if op.intermediates is not None
                                                             else [])) if t >= 0}
        used |= set(sg.inputs if sg.inputs is not None else []) | set(sg.outputs if sg.outputs is not None else [])
        order = sorted(used)
        remap = {old: new for new, old in enumerate(order)}
        sg.tensors = [sg.tensors[i] for i in order]
        for op in sg.operators or []:
            op.inputs = [remap[t] if t >= 0 else t for t in (op.inputs if op.inputs is not None else [])]
            op.outputs = [remap[t] for t in (op.outputs if op.outputs is not None else [])]
            if op.intermediates is not None:
                op.intermediates = [remap[t] for t in op.intermediates]
        sg.inputs = [remap[t] for t in (sg.inputs if sg.inputs is not None else [])]
        sg.outputs = [remap[t] for t in (sg.outputs if sg.outputs is not None else [])]
    keep = {0} | {t.buffer for sg in model.subgraphs or [] for t in sg.tensors or []}
    keep |= {md.buffer for md in model.metadata or []}
    order = sorted(b for b in keep if 0 <= b < len(model.buffers))
    bremap = {old: new for new, old in enumerate(order)}
    model.buffers = [model.buffers[i] for i in order]
    for sg in model.subgraphs or []:
        for t in sg.tensors or []:
            t.buffer = bremap.get(t.buffer, 0)
    for md in model.metadata or []:
        md.buffer = bremap.get(md.buffer, 0)
    model.signatureDefs = None  # their tensor indices would be stale (TFLM reads none; use for TFLM models)
