"""Mixed 16x8 / int8 graphs for TFLM: chosen layers with int16 activations, the rest int8.

The TFLite converter quantizes a whole model in one activation type, so this stage stitches two of its
outputs, written from the same calibrated model (same operators, same tensor names): the int8 model
and the 16x8 model. The operators of the region (the worst layer and its consumers up to the next
weighted layer, see :func:`edgekit.stages.layer_error.region`) are taken from the 16x8 model with their
own tensors (int8 weights, int64 biases, int16 activations and their scales); a QUANTIZE operator
requantizes each int8 activation entering the region to int16 and each int16 activation leaving it back
to the int8 tensor (and scale) the rest of the graph reads. TFLM's QUANTIZE kernel takes int8 -> int16
and int16 -> int8, its CONV_2D / FULLY_CONNECTED / pooling kernels take int16 activations: whether the
stitched graph runs, and what it computes, is checked on the TFLM interpreter by the caller.
"""

from __future__ import annotations

import copy
from typing import Any

from edgekit.analysis.schema import schema_fb
from edgekit.errors import StageError
from edgekit.stages import flatbuf


def _name(t: Any) -> str:
    n = t.name
    return n.decode(errors="replace") if isinstance(n, bytes) else (n or "")


def _opcode(model: Any, src_model: Any, src_index: int, cache: dict[tuple[int, int, str], int]) -> int:
    code = src_model.operatorCodes[src_index]
    custom = code.customCode.decode() if isinstance(code.customCode, bytes) else (code.customCode or "")
    key = (max(code.builtinCode, code.deprecatedBuiltinCode), code.version, custom)
    if key not in cache:
        for i, c in enumerate(model.operatorCodes):
            ccustom = c.customCode.decode() if isinstance(c.customCode, bytes) else (c.customCode or "")
            if (max(c.builtinCode, c.deprecatedBuiltinCode), c.version, ccustom) == key:
                cache[key] = i
                break
        else:
            model.operatorCodes.append(copy.deepcopy(code))
            cache[key] = len(model.operatorCodes) - 1
    return cache[key]


def _quantize_opcode(model: Any, cache: dict[tuple[int, int, str], int]) -> int:
    key = (schema_fb.BuiltinOperator.QUANTIZE, 1, "q")
    if key not in cache:
        code = schema_fb.OperatorCodeT()
        code.builtinCode = schema_fb.BuiltinOperator.QUANTIZE
        code.deprecatedBuiltinCode = schema_fb.BuiltinOperator.QUANTIZE
        code.version = 1
        model.operatorCodes.append(code)
        cache[key] = len(model.operatorCodes) - 1
    return cache[key]


def stitch(int8_model: bytes, x16_model: bytes, region: list[int]) -> bytes:
    """The int8 model with the operators ``region`` (indices in the int8 model) in 16x8."""
    m8, m16 = flatbuf.load(int8_model), flatbuf.load(x16_model)
    sg8, sg16 = m8.subgraphs[0], m16.subgraphs[0]
    by_name16 = {_name(sg16.tensors[op.outputs[0]]): op for op in sg16.operators}
    keep = set(region)
    produced_in = {t for i in keep for t in sg8.operators[i].outputs}
    consumed_out = {t for i, op in enumerate(sg8.operators) if i not in keep for t in op.inputs if t >= 0}
    consumed_out |= set(sg8.outputs)
    opcodes: dict[tuple[int, int, str], int] = {}
    t16_of: dict[int, int] = {}  # tensor index in m16 -> its copy in m8

    def copy_tensor(i16: int) -> int:
        if i16 not in t16_of:
            t = copy.deepcopy(sg16.tensors[i16])
            buf = m16.buffers[t.buffer] if 0 < t.buffer < len(m16.buffers) else None
            if buf is not None and buf.data is not None and len(buf.data):
                nb = schema_fb.BufferT()
                nb.data = copy.deepcopy(buf.data)
                m8.buffers.append(nb)
                t.buffer = len(m8.buffers) - 1
            else:
                t.buffer = 0
            sg8.tensors.append(t)
            t16_of[i16] = len(sg8.tensors) - 1
        return t16_of[i16]

    def quantize_op(src: int, dst: int) -> Any:
        op = schema_fb.OperatorT()
        op.opcodeIndex = _quantize_opcode(m8, opcodes)
        op.inputs, op.outputs = [src], [dst]
        return op

    ops: list[Any] = []
    entered: dict[int, int] = {}  # int8 tensor entering the region -> its int16 copy
    for i, op8 in enumerate(sg8.operators):
        if i not in keep:
            ops.append(op8)
            continue
        name = _name(sg8.tensors[op8.outputs[0]])
        op16 = by_name16.get(name)
        if op16 is None or len(op16.inputs) != len(op8.inputs) or len(op16.outputs) != len(op8.outputs):
            raise StageError(f"the 16x8 model has no operator matching {flatbuf.op_name(m8, op8)} #{i} ({name})")
        new = copy.deepcopy(op16)
        new.opcodeIndex = _opcode(m8, m16, op16.opcodeIndex, opcodes)
        inputs = []
        for t8, t16 in zip(op8.inputs, op16.inputs, strict=True):
            if t8 < 0:
                inputs.append(-1)
            elif sg16.tensors[t16].buffer and flatbuf.tensor_array(m16, sg16.tensors[t16]) is not None:
                inputs.append(copy_tensor(t16))  # weights and bias of the 16x8 layer
            elif t8 in produced_in:
                inputs.append(copy_tensor(t16))  # an int16 activation made inside the region
            else:  # an int8 activation entering the region: requantized to int16 once
                if t8 not in entered:
                    entered[t8] = copy_tensor(t16)
                    ops.append(quantize_op(t8, entered[t8]))
                inputs.append(entered[t8])
        new.inputs = inputs
        new.outputs = [copy_tensor(t16) for t16 in op16.outputs]
        ops.append(new)
        for t8, t16c in zip(op8.outputs, new.outputs, strict=True):
            if t8 in consumed_out:  # leaving the region: back to the int8 tensor the rest reads
                ops.append(quantize_op(t16c, t8))
    sg8.operators = ops
    flatbuf.prune(m8)  # the int8 region's weights and activations are no longer read
    return flatbuf.pack(m8)
