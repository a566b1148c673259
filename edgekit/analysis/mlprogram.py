"""Activation memory of a Core ML program (.mlpackage), read from its MIL program with coremltools.

The estimate is the graph's: the largest sum of live activations (operation outputs that are not
constants) over the program's operation order, with each value's declared data type and shape. Weights
(``const`` operations) are counted apart. Core ML may fuse or tile operations on the device, so this is an
estimate of the order a runtime starts from, labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from pathlib import Path

# MIL DataType value names -> bytes per element
_BYTES = {"FLOAT16": 2, "FLOAT32": 4, "FLOAT64": 8, "BFLOAT16": 2, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2,
          "INT32": 4, "UINT32": 4, "INT64": 8, "UINT64": 8, "BOOL": 1, "INT4": 1, "UINT4": 1, "UINT2": 1,
          "UINT1": 1, "UINT6": 1, "UINT3": 1, "FLOAT8E4M3FN": 1, "FLOAT8E5M2": 1}


@dataclass(frozen=True)
class ProgramMemory:
    peak_activation_bytes: int
    weight_bytes: int
    operations: int
    dynamic: bool  # some shape was not a constant: the figure then counts those dimensions as 1


def _value_bytes(vtype: object, names: dict[int, str]) -> tuple[int, bool]:
    tt = vtype.tensorType  # type: ignore[attr-defined]
    dims = []
    dynamic = False
    for d in tt.dimensions:
        if d.WhichOneof("dimension") == "constant":
            dims.append(int(d.constant.size))
        else:
            dims.append(1)
            dynamic = True
    return prod(dims) * _BYTES.get(names.get(int(tt.dataType), ""), 4), dynamic


def program_memory(pkg: Path) -> ProgramMemory:
    """Peak live activations and weight bytes of the ``main`` function of an .mlpackage."""
    from edgekit._extras import require
    from edgekit._quiet import quiet_native

    with quiet_native((1, 2)):
        ct = require("coremltools", "reading Core ML programs")
        mil = require("coremltools.proto.MIL_pb2", "reading Core ML programs")
    names = {v: k for k, v in mil.DataType.items()}
    spec = ct.models.MLModel(str(pkg), skip_model_load=True).get_spec()
    if not spec.HasField("mlProgram"):
        raise ValueError("not an ML program (a neural-network .mlmodel)")
    fn = spec.mlProgram.functions["main"]
    block = fn.block_specializations[fn.opset]
    size: dict[str, int] = {}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    dynamic = False
    for inp in fn.inputs:
        size[inp.name], dyn = _value_bytes(inp.type, names)
        dynamic |= dyn
        first[inp.name] = last[inp.name] = 0
    weights = 0
    ops = list(block.operations)
    for step, op in enumerate(ops):
        for args in op.inputs.values():
            for a in args.arguments:
                if a.name in first:
                    last[a.name] = max(last[a.name], step)
        for out in op.outputs:
            nbytes, dyn = _value_bytes(out.type, names)
            if op.type == "const":
                weights += nbytes
                continue
            dynamic |= dyn
            size[out.name] = nbytes
            first[out.name] = last[out.name] = step
    for name in block.outputs:
        if name in last:
            last[name] = len(ops)
    peak = 0
    for step in range(len(ops) + 1):
        peak = max(peak, sum(size[n] for n in first if first[n] <= step <= last[n]))
    return ProgramMemory(peak, weights, len(ops), dynamic)
