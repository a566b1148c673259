"""Read a .tflite flatbuffer: operators, tensors, parameters, MACs, activation memory.

Pure Python over the TFLite schema; no TensorFlow import, so analysing an
already-converted model takes well under a second.

The file is untrusted input, so it is read by a small bounds-checked flatbuffer
reader rather than the generated accessors (which trust every offset): every
table, vtable, vector and string is checked to lie inside the file, every index
(opcode, tensor, buffer) to name something that exists, and the total number of
elements visited is bounded by the file's size (flatbuffers may share tables, so a
hostile file could otherwise make a small file cost quadratic time). Anything else
than a well-formed model is a one-line :class:`ModelError`.
"""

from __future__ import annotations

import struct
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
SCHEMA_VERSION = 3
_FLOATS = ("float32", "float16")
_QUANTIZED_WEIGHTS = ("int8", "uint8", "int4")


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
    signature: tuple[int, ...] = ()  # shape_signature: -1 marks a dynamic dimension

    @property
    def elements(self) -> int:
        return prod(max(d, 1) for d in self.shape) if self.shape else 1

    @property
    def nbytes(self) -> int:
        if self.dtype == "int4":
            return (self.elements + 1) // 2
        return self.elements * _ITEM_BYTES.get(self.dtype, 4)

    @property
    def dynamic_dims(self) -> tuple[int, ...]:
        """Positions of dynamic dimensions other than the batch (dimension 0)."""
        return tuple(i for i, d in enumerate(self.signature) if d < 0 and i > 0)

    def shape_text(self) -> str:
        """The shape as the converter declared it, dynamic dimensions shown as '?'."""
        dims = self.signature if self.signature else self.shape
        return "(" + ", ".join("?" if d < 0 else str(d) for d in dims) + ")"


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
        return not any(t.dtype in _FLOATS for t in self.tensors if not t.is_const)

    def dynamic_inputs(self) -> list[Tensor]:
        """Inputs with dynamic dimensions other than the batch (which runs as 1)."""
        return [t for t in self.input_tensors() if t.dynamic_dims]

    def hybrid_layers(self) -> list[Layer]:
        """Layers computing in float on quantized weights (dynamic-range "hybrid" kernels)."""
        out = []
        for layer in self.layers:
            if layer.op == "DEQUANTIZE":
                continue
            ins = [self.tensors[i] for i in layer.inputs if i >= 0]
            if any(not t.is_const and t.dtype == "float32" for t in ins) and \
                    any(t.is_const and t.dtype in _QUANTIZED_WEIGHTS for t in ins):
                out.append(layer)
        return out

    @property
    def quantization(self) -> str:
        """What the converter made of this model: float32, float16 (float16 weights), dynamic (hybrid:
        float activations, int8 weights), int16x8 or int8 (float model I/O around an integer graph
        still counts as integer)."""
        if "float16" in self.dtypes:
            return "float16"
        if self.hybrid_layers():
            return "dynamic"
        for layer in self.layers:
            if layer.op in ("QUANTIZE", "DEQUANTIZE"):
                continue
            if any(i >= 0 and not self.tensors[i].is_const and self.tensors[i].dtype in _FLOATS
                   for i in layer.inputs):
                return "float32"
        return "int16x8" if "int16" in self.activation_dtypes else "int8"

    def dequantized_weights(self) -> set[int]:
        """Tensors that are weights in another form: outputs of a DEQUANTIZE of a constant (float16 and
        similar models), computed once when the interpreter prepares and held like weights."""
        return {t for layer in self.layers if layer.op == "DEQUANTIZE"
                for t in layer.outputs if t >= 0 and all(i >= 0 and self.tensors[i].is_const for i in layer.inputs)}

    @property
    def dequantized_weight_bytes(self) -> int:
        return sum(self.tensors[t].nbytes for t in self.dequantized_weights())

    def peak_activation_bytes(self) -> int:
        """Largest sum of live activations (non-constant tensors) at any step of the execution order.

        A lower bound for any memory planner (no fragmentation, no kernel scratch): the figure a mobile
        runtime's arena approaches. Dequantized constants (:meth:`dequantized_weights`) are weights, not
        activations, and are counted apart (:attr:`dequantized_weight_bytes`).
        """
        skip = self.dequantized_weights()
        n = len(self.layers)
        end = max(n - 1, 0)
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for i in self.inputs:
            first[i] = 0
        for step, layer in enumerate(self.layers):
            for t in layer.outputs:
                if t < 0:
                    continue
                first.setdefault(t, step)
                last[t] = max(last.get(t, step), step)
            for t in layer.inputs:
                if t < 0 or self.tensors[t].is_const:
                    continue
                first.setdefault(t, 0)
                last[t] = max(last.get(t, step), step)
        for o in self.outputs:
            first.setdefault(o, 0)
            last[o] = end
        for tensor in self.tensors:
            if tensor.is_variable:
                first[tensor.index], last[tensor.index] = 0, end
        delta = [0] * (max(n, 1) + 1)  # a sweep over interval ends: linear in layers + tensors
        for t, start in first.items():
            if t in skip:
                continue
            size = self.tensors[t].nbytes
            delta[start] += size
            delta[max(last.get(t, start), start) + 1] -= size
        peak = live = 0
        for step in range(max(n, 1)):
            live += delta[step]
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


class _Corrupt(Exception):
    """Raised inside the reader; read_graph turns it into a one-line ModelError."""


class _Buffer:
    """The file's bytes with bounds-checked little-endian reads and a work budget."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.size = len(data)
        self.budget = len(data) + 65536  # elements visited at most: 4 B each in a well-formed file

    def need(self, at: int, length: int, what: str) -> None:
        if at < 0 or length < 0 or at + length > self.size:
            raise _Corrupt(f"{what} at byte {at} ({length} bytes) lies outside the {self.size}-byte file")

    def get(self, fmt: str, at: int, what: str) -> int:
        self.need(at, struct.calcsize(fmt), what)
        return int(struct.unpack_from("<" + fmt, self.data, at)[0])

    def spend(self, count: int, what: str) -> None:
        self.budget -= count
        if self.budget < 0:
            raise _Corrupt(f"{what}: more elements than a {self.size}-byte file can hold (tables overlap)")


class _Table:
    """One flatbuffer table, its vtable checked on construction."""

    __slots__ = ("buf", "objlen", "pos", "vt", "vtlen", "what")

    def __init__(self, buf: _Buffer, pos: int, what: str) -> None:
        self.buf, self.pos, self.what = buf, pos, what
        buf.need(pos, 4, what)
        self.vt = pos - buf.get("i", pos, what)
        buf.need(self.vt, 4, f"{what} vtable")
        self.vtlen = buf.get("H", self.vt, f"{what} vtable")
        self.objlen = buf.get("H", self.vt + 2, f"{what} vtable")
        if self.vtlen < 4 or self.vtlen % 2 or self.objlen < 4:
            raise _Corrupt(f"{what} has a malformed vtable")
        buf.need(self.vt, self.vtlen, f"{what} vtable")
        buf.need(pos, self.objlen, what)

    def _field(self, fid: int, size: int, name: str) -> int:
        """Absolute position of field ``fid`` (schema field number), 0 when absent."""
        slot = 4 + 2 * fid
        if slot + 2 > self.vtlen:
            return 0
        off = self.buf.get("H", self.vt + slot, self.what)
        if off == 0:
            return 0
        if off + size > self.objlen:
            raise _Corrupt(f"{self.what}.{name} lies outside its table")
        return self.pos + off

    def scalar(self, fid: int, fmt: str, name: str, default: int = 0) -> int:
        at = self._field(fid, struct.calcsize(fmt), name)
        return self.buf.get(fmt, at, f"{self.what}.{name}") if at else default

    def _target(self, fid: int, name: str) -> int | None:
        at = self._field(fid, 4, name)
        return at + self.buf.get("I", at, f"{self.what}.{name}") if at else None

    def _vector(self, fid: int, elem: int, name: str) -> tuple[int, int] | None:
        start = self._target(fid, name)
        if start is None:
            return None
        what = f"{self.what}.{name}"
        count = self.buf.get("I", start, what)
        self.buf.need(start + 4, count * elem, what)
        self.buf.spend(count, what)
        return start + 4, count

    def numbers(self, fid: int, fmt: str, name: str) -> tuple[float | int, ...]:
        vec = self._vector(fid, struct.calcsize(fmt), name)
        if vec is None:
            return ()
        start, count = vec
        return tuple(struct.unpack_from(f"<{count}{fmt}", self.buf.data, start))

    def byte_length(self, fid: int, name: str) -> int:
        """The length of a byte vector (checked to lie in the file; not read, so not counted)."""
        start = self._target(fid, name)
        if start is None:
            return 0
        count = self.buf.get("I", start, f"{self.what}.{name}")
        self.buf.need(start + 4, count, f"{self.what}.{name}")
        return count

    def text(self, fid: int, name: str) -> str:
        vec = self._vector(fid, 1, name)
        if vec is None:
            return ""
        start, count = vec
        return bytes(self.buf.data[start : start + count]).decode(errors="replace")

    def table(self, fid: int, name: str) -> _Table | None:
        at = self._target(fid, name)
        return _Table(self.buf, at, f"{self.what}.{name}") if at is not None else None

    def tables(self, fid: int, name: str) -> list[_Table]:
        vec = self._vector(fid, 4, name)
        if vec is None:
            return []
        start, count = vec
        out = []
        for i in range(count):
            at = start + 4 * i
            out.append(_Table(self.buf, at + self.buf.get("I", at, name), f"{name}[{i}]"))
        return out

    def count(self, fid: int, name: str) -> int:
        vec = self._vector(fid, 4, name)
        return vec[1] if vec else 0


# Field numbers from the TFLite schema (schema.fbs); tests/unit/test_graph_fuzz.py checks them
# against the generated accessors' vtable slots.
FIELDS = {
    "Model": {"version": 0, "operator_codes": 1, "subgraphs": 2, "description": 3, "buffers": 4,
              "metadata": 6, "signature_defs": 7},
    "OperatorCode": {"deprecated_builtin_code": 0, "custom_code": 1, "builtin_code": 3},
    "SubGraph": {"tensors": 0, "inputs": 1, "outputs": 2, "operators": 3},
    "Tensor": {"shape": 0, "type": 1, "buffer": 2, "name": 3, "quantization": 4, "is_variable": 5,
               "shape_signature": 7},
    "QuantizationParameters": {"scale": 2, "zero_point": 3},
    "Operator": {"opcode_index": 0, "inputs": 1, "outputs": 2},
    "Buffer": {"data": 0, "offset": 1, "size": 2},
    "Metadata": {"name": 0},
}
_F = FIELDS


def read_graph(data: bytes, where: str = "model") -> Graph:
    """Parse a .tflite flatbuffer. Raises ModelError (one line) on anything that is not one."""
    if not data:
        raise ModelError(f"{where} is empty (0 bytes)", "pass a .tflite file written by the TFLite converter")
    if len(data) < 8 or bytes(data[4:8]) != b"TFL3":
        raise ModelError(
            f"{where} is not a TFLite flatbuffer (no 'TFL3' identifier)",
            "pass a .tflite file written by the TFLite converter",
        )
    try:
        return _read(_Buffer(data))
    except _Corrupt as exc:
        reason = str(exc)
    except ModelError as exc:
        raise ModelError(f"{where}: {exc.message}", exc.hint) from None
    except (struct.error, ValueError, OverflowError, IndexError, KeyError, TypeError) as exc:  # pragma: no cover
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    raise ModelError(
        f"{where} is truncated or corrupt: {reason[:200]}",
        "re-export the model; a partial download or copy is the usual cause",
    ) from None


def _read_buffers(model: _Table, size: int) -> list[int]:
    sizes = []
    for i, b in enumerate(model.tables(_F["Model"]["buffers"], "buffers")):
        length = b.byte_length(_F["Buffer"]["data"], "data")
        if length == 0:  # models over 2 GB keep the data after the flatbuffer: (offset, size) in the file
            offset = b.scalar(_F["Buffer"]["offset"], "Q", "offset")
            ext = b.scalar(_F["Buffer"]["size"], "Q", "size")
            if ext > 1 or offset:
                if offset <= 0 or offset + ext > size:
                    raise ModelError(f"buffer {i} (offset {offset}, size {ext}) lies outside the {size}-byte file")
                length = ext
        sizes.append(length)
    return sizes


def _read_opcodes(model: _Table) -> list[str]:
    names = []
    f = _F["OperatorCode"]
    for oc in model.tables(_F["Model"]["operator_codes"], "operator_codes"):
        code = max(oc.scalar(f["builtin_code"], "i", "builtin_code"),
                   oc.scalar(f["deprecated_builtin_code"], "b", "deprecated_builtin_code"))
        name = _OP_NAMES.get(code, f"BUILTIN_{code}")
        if name == "CUSTOM":
            name = "CUSTOM:" + (oc.text(f["custom_code"], "custom_code") or "?")
        names.append(name)
    return names


def _read_tensor(i: int, t: _Table, buffer_sizes: list[int], sg: int) -> Tensor:
    f = _F["Tensor"]
    shape = tuple(int(d) for d in t.numbers(f["shape"], "i", "shape"))
    sig = tuple(int(d) for d in t.numbers(f["shape_signature"], "i", "shape_signature"))
    if any(d < -1 for d in shape + sig) or (sig and len(sig) != len(shape)):
        raise ModelError(f"subgraph {sg} tensor {i} has an invalid shape {shape} (signature {sig})")
    if any(d < 0 for d in shape):  # a dynamic dimension written into the shape itself
        sig = sig or shape
        shape = tuple(max(d, 1) for d in shape)
    buf = t.scalar(f["buffer"], "I", "buffer")
    if buf >= max(len(buffer_sizes), 1):
        raise ModelError(f"subgraph {sg} tensor {i} names buffer {buf}, but the model has {len(buffer_sizes)}")
    const_bytes = buffer_sizes[buf] if buf > 0 else 0
    q = t.table(f["quantization"], "quantization")
    scale: tuple[float, ...] = ()
    zp: tuple[int, ...] = ()
    if q is not None:
        qf = _F["QuantizationParameters"]
        scale = tuple(float(s) for s in q.numbers(qf["scale"], "f", "scale"))
        zp = tuple(int(z) for z in q.numbers(qf["zero_point"], "q", "zero_point"))
    kind = t.scalar(f["type"], "b", "type")
    return Tensor(index=i, name=t.text(f["name"], "name"), shape=shape, dtype=_TENSOR_TYPES.get(kind, f"type{kind}"),
                  is_const=const_bytes > 0, const_bytes=const_bytes,
                  is_variable=bool(t.scalar(f["is_variable"], "B", "is_variable")), scale=scale, zero_point=zp,
                  signature=sig)


def _indices(values: tuple[float | int, ...], count: int, what: str, optional: bool) -> tuple[int, ...]:
    low = -1 if optional else 0
    for v in values:
        if not low <= v < count:
            raise ModelError(f"{what} names tensor {v}, but the subgraph has {count}")
    return tuple(int(v) for v in values)


def _read_subgraph(sg: _Table, n: int, opcodes: list[str], buffer_sizes: list[int]
                   ) -> tuple[list[Tensor], list[Layer], tuple[int, ...], tuple[int, ...]]:
    f = _F["SubGraph"]
    tensors = [_read_tensor(i, t, buffer_sizes, n) for i, t in enumerate(sg.tables(f["tensors"], "tensors"))]
    layers = []
    of = _F["Operator"]
    for i, o in enumerate(sg.tables(f["operators"], "operators")):
        idx = o.scalar(of["opcode_index"], "I", "opcode_index")
        if idx >= len(opcodes):
            raise ModelError(f"subgraph {n} operator {i} names opcode {idx}, but the model has {len(opcodes)}")
        op = opcodes[idx]
        ins = _indices(o.numbers(of["inputs"], "i", "inputs"), len(tensors), f"operator {i} ({op})", True)
        outs = _indices(o.numbers(of["outputs"], "i", "outputs"), len(tensors), f"operator {i} ({op})", True)
        in_t = [tensors[x] if x >= 0 else None for x in ins]
        out_t = [tensors[x] for x in outs if x >= 0]
        consts = [t for t in in_t if t is not None and t.is_const]
        layers.append(Layer(
            index=i, op=op, inputs=ins, outputs=outs,
            input_shapes=tuple(t.shape for t in in_t if t is not None and not t.is_const),
            output_shapes=tuple(t.shape for t in out_t),
            params=sum(t.elements for t in consts),
            weight_bytes=sum(t.const_bytes for t in consts),
            macs=_macs(op, in_t, out_t),
        ))
    inputs = _indices(sg.numbers(f["inputs"], "i", "inputs"), len(tensors), f"subgraph {n} inputs", False)
    outputs = _indices(sg.numbers(f["outputs"], "i", "outputs"), len(tensors), f"subgraph {n} outputs", False)
    return tensors, layers, inputs, outputs


def _read(buf: _Buffer) -> Graph:
    model = _Table(buf, buf.get("I", 0, "root offset"), "model")
    mf = _F["Model"]
    version = model.scalar(mf["version"], "I", "version")
    if version != SCHEMA_VERSION:
        raise ModelError(f"TFLite schema version {version}, expected {SCHEMA_VERSION}",
                         "re-convert the model with a current TFLite converter")
    opcodes = _read_opcodes(model)
    buffer_sizes = _read_buffers(model, buf.size)
    subgraphs = model.tables(mf["subgraphs"], "subgraphs")
    if not subgraphs:
        raise ModelError("the model has no subgraph")
    # every subgraph is checked (TFLM reads them all for IF/WHILE); subgraph 0 is the model
    read = [_read_subgraph(sg, n, opcodes, buffer_sizes) for n, sg in enumerate(subgraphs)]
    tensors, layers, inputs, outputs = read[0]
    metadata = [m.text(_F["Metadata"]["name"], "name") for m in model.tables(mf["metadata"], "metadata")]
    return Graph(
        size_bytes=buf.size, tensors=tensors, layers=layers, inputs=list(inputs), outputs=list(outputs),
        subgraphs=len(subgraphs), description=model.text(mf["description"], "description"),
        metadata_names=metadata, signature_count=model.count(mf["signature_defs"], "signature_defs"),
    )
