"""Read a .tflite flatbuffer: operators, tensors, parameters, MACs, activation memory.

Pure Python over the TFLite schema; no TensorFlow import, so analysing an
already-converted model takes well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from edgekit.analysis.schema import schema_fb
from edgekit.errors import ModelError

_TENSOR_TYPES = {v: k.lower() for k, v in vars(schema_fb.TensorType).items() if not k.startswith("_")}
_OP_NAMES = {v: k for k, v in vars(schema_fb.BuiltinOperator).items() if not k.startswith("_")}
_ITEM_BYTES = {
    "float32": 4, "float16": 2, "float64": 8, "int32": 4, "uint8": 1, "int64": 8, "string": 1,
    "bool": 1, "int16": 2, "complex64": 8, "int8": 1, "uint64": 8, "uint32": 4, "uint16": 2,
    "int4": 1, "bfloat16": 2, "complex128": 16, "resource": 0, "variant": 0,
}


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    is_const: bool
    const_bytes: int
    is_variable: bool
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()

    @property
    def elements(self) -> int:
        return prod(max(d, 1) for d in self.shape) if self.shape else 1

    @property
    def nbytes(self) -> int:
        if self.dtype == "int4":
            return (self.elements + 1) // 2
        return self.elements * _ITEM_BYTES.get(self.dtype, 4)


@dataclass(frozen=True)
class Layer:
    index: int
    op: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    output_shapes: tuple[tuple[int, ...], ...]
    params: int
    weight_bytes: int
    macs: int


@dataclass
class Graph:
    size_bytes: int
    tensors: list[Tensor]
    layers: list[Layer]
    inputs: list[int]
    outputs: list[int]
    subgraphs: int
    description: str = ""
    metadata_names: list[str] = field(default_factory=list)
    signature_count: int = 0

    @property
    def ops(self) -> list[str]:
        return sorted({layer.op for layer in self.layers})

    @property
    def params(self) -> int:
        return sum(t.elements for t in self.tensors if t.is_const and t.const_bytes)

    @property
    def weight_bytes(self) -> int:
        return sum(t.const_bytes for t in self.tensors if t.is_const)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def dtypes(self) -> list[str]:
        return sorted({t.dtype for t in self.tensors})

    @property
    def activation_dtypes(self) -> list[str]:
        return sorted({t.dtype for t in self.tensors if not t.is_const})

    def input_tensors(self) -> list[Tensor]:
        return [self.tensors[i] for i in self.inputs]

    def output_tensors(self) -> list[Tensor]:
        return [self.tensors[i] for i in self.outputs]

    @property
    def is_integer_only(self) -> bool:
        return not any(t.dtype in ("float32", "float16") for t in self.tensors if not t.is_const)

    def peak_activation_bytes(self) -> int:
        """Largest sum of live non-constant tensors at any step of the execution order.

        A lower bound for any memory planner (no fragmentation, no kernel scratch):
        the figure a mobile runtime's arena approaches.
        """
        n = len(self.layers)
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for i in self.inputs:
            first[i] = 0
        for step, layer in enumerate(self.layers):
            for t in layer.outputs:
                first.setdefault(t, step)
                last[t] = max(last.get(t, step), step)
            for t in layer.inputs:
                if t < 0 or self.tensors[t].is_const:
                    continue
                first.setdefault(t, 0)
                last[t] = max(last.get(t, step), step)
        for o in self.outputs:
            last[o] = max(n - 1, 0)
        for tensor in self.tensors:
            if tensor.is_variable:
                first[tensor.index], last[tensor.index] = 0, max(n - 1, 0)
        peak = 0
        for step in range(max(n, 1)):
            live = sum(
                self.tensors[t].nbytes for t in first if first[t] <= step <= last.get(t, first[t])
            )
            peak = max(peak, live)
        return peak


def _macs(op: str, ins: list[Tensor | None], outs: list[Tensor]) -> int:
    if not outs:
        return 0
    out_elems = outs[0].elements
    w = ins[1] if len(ins) > 1 else None
    if w is None:
        return 0
    ws = w.shape
    if op == "CONV_2D" and len(ws) == 4:  # [cout, kh, kw, cin]
        return out_elems * ws[1] * ws[2] * ws[3]
    if op == "CONV_3D" and len(ws) == 5:  # [kd, kh, kw, cin, cout]
        return out_elems * ws[0] * ws[1] * ws[2] * ws[3]
    if op == "DEPTHWISE_CONV_2D" and len(ws) == 4:  # [1, kh, kw, cout]
        return out_elems * ws[1] * ws[2]
    if op == "FULLY_CONNECTED" and len(ws) == 2:  # [units, in]
        return out_elems * ws[1]
    if op == "TRANSPOSE_CONV":  # inputs: output_shape, weights [cout, kh, kw, cin], input
        wt = ins[1]
        x = ins[2] if len(ins) > 2 else None
        if wt is not None and x is not None and len(wt.shape) == 4:
            return x.elements * wt.shape[0] * wt.shape[1] * wt.shape[2]
    if op == "BATCH_MATMUL" and ins[0] is not None and ins[0].shape:
        return out_elems * ins[0].shape[-1]
    return 0


def read_graph(data: bytes, where: str = "model") -> Graph:
    """Parse a .tflite flatbuffer. Raises ModelError on anything that is not one."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(
            f"{where} is not a TFLite flatbuffer (no 'TFL3' identifier)",
            "pass a .tflite file written by the TFLite converter",
        )
    try:
        model = schema_fb.Model.GetRootAsModel(data, 0)
        return _read(model, data)
    except ModelError:
        raise
    except Exception as exc:  # flatbuffers raises struct/index errors on corrupt data
        raise ModelError(
            f"{where} is truncated or corrupt ({type(exc).__name__}: {exc})",
            "re-export the model; a partial download or copy is the usual cause",
        ) from None


def _read(model: schema_fb.Model, data: bytes) -> Graph:
    if model.SubgraphsLength() < 1:
        raise ModelError("the model has no subgraph")
    opcodes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        name = _OP_NAMES.get(code, f"BUILTIN_{code}")
        if name == "CUSTOM":
            custom = oc.CustomCode()
            name = "CUSTOM:" + (custom.decode() if custom else "?")
        opcodes.append(name)
    buffer_sizes = []
    for i in range(model.BuffersLength()):
        b = model.Buffers(i)
        size = b.DataLength()
        if size == 0 and b.Size() > 1:  # large models store data after the flatbuffer
            size = b.Size()
            if b.Offset() + size > len(data):
                raise ModelError(f"buffer {i} points past the end of the file")
        buffer_sizes.append(size)
    sg = model.Subgraphs(0)
    tensors = []
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        sig = tuple(int(d) for d in t.ShapeSignatureAsNumpy()) if t.ShapeSignatureLength() else ()
        if sig and any(d < 0 for d in sig):
            shape = tuple(1 if d < 0 else s for d, s in zip(sig, shape, strict=False))
        buf = t.Buffer()
        const_bytes = buffer_sizes[buf] if 0 < buf < len(buffer_sizes) else 0
        q = t.Quantization()
        scale: tuple[float, ...] = ()
        zp: tuple[int, ...] = ()
        if q is not None and q.ScaleLength():
            scale = tuple(float(s) for s in q.ScaleAsNumpy())
            zp = tuple(int(z) for z in q.ZeroPointAsNumpy()) if q.ZeroPointLength() else ()
        tensors.append(
            Tensor(
                index=i,
                name=(t.Name() or b"").decode(errors="replace"),
                shape=shape,
                dtype=_TENSOR_TYPES.get(t.Type(), f"type{t.Type()}"),
                is_const=const_bytes > 0,
                const_bytes=const_bytes,
                is_variable=bool(t.IsVariable()),
                scale=scale,
                zero_point=zp,
            )
        )
    layers = []
    for i in range(sg.OperatorsLength()):
        o = sg.Operators(i)
        idx = o.OpcodeIndex()
        if idx >= len(opcodes):
            raise ModelError(f"operator {i} names opcode {idx}, but the model has {len(opcodes)}")
        op = opcodes[idx]
        ins = tuple(int(x) for x in o.InputsAsNumpy()) if o.InputsLength() else ()
        outs = tuple(int(x) for x in o.OutputsAsNumpy()) if o.OutputsLength() else ()
        for t_idx in (*ins, *outs):
            if t_idx >= len(tensors):
                raise ModelError(f"operator {i} ({op}) names tensor {t_idx}, but the model has {len(tensors)}")
        in_t = [tensors[x] if x >= 0 else None for x in ins]
        out_t = [tensors[x] for x in outs]
        consts = [t for t in in_t if t is not None and t.is_const]
        layers.append(
            Layer(
                index=i,
                op=op,
                inputs=ins,
                outputs=outs,
                input_shapes=tuple(t.shape for t in in_t if t is not None and not t.is_const),
                output_shapes=tuple(t.shape for t in out_t),
                params=sum(t.elements for t in consts),
                weight_bytes=sum(t.const_bytes for t in consts),
                macs=_macs(op, in_t, out_t),
            )
        )
    metadata = [
        (model.Metadata(i).Name() or b"").decode(errors="replace") for i in range(model.MetadataLength())
    ]
    return Graph(
        size_bytes=len(data),
        tensors=tensors,
        layers=layers,
        inputs=[int(x) for x in sg.InputsAsNumpy()] if sg.InputsLength() else [],
        outputs=[int(x) for x in sg.OutputsAsNumpy()] if sg.OutputsLength() else [],
        subgraphs=model.SubgraphsLength(),
        description=(model.Description() or b"").decode(errors="replace"),
        metadata_names=metadata,
        signature_count=model.SignatureDefsLength(),
    )
