"""Strip flatbuffer content a microcontroller never reads, and prove nothing else changed.

A bare converter int8 model carries tensor names, conversion metadata and
signature definitions. TFLM reads none of them, so for TFLM targets they are
removed. The model is repacked with every buffer 16-byte aligned (weights are
read in place from flash, and an unaligned int32 bias faults on cores without
unaligned access). :func:`strip_verified` runs both forms on the real TFLM
interpreter and compares the outputs bit for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.analysis.schema import schema_fb
from edgekit.errors import EdgekitError, StageError

if TYPE_CHECKING:
    from edgekit.evaluate import TflmRun, TflmWorker

BUFFER_ALIGNMENT = 16
VERIFY_SAMPLES = 128  # inputs on which the stripped and original models must agree bit for bit


class AlignedBuffer:
    """Packs a BufferT with its data vector aligned to BUFFER_ALIGNMENT bytes, through the flatbuffers
    Builder's public API only: ``Prep`` pads so that the next ``len(data)`` bytes end on the alignment,
    then ``CreateNumpyVector`` writes them (its own 1-byte and length-prefix alignment add no padding)."""

    def __init__(self, buf: Any) -> None:
        self.buf = buf

    def Pack(self, builder: Any) -> int:
        data_off = None
        data = self.buf.data
        if data is not None and len(data):
            raw = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
            builder.Prep(BUFFER_ALIGNMENT, raw.size)
            data_off = builder.CreateNumpyVector(raw)
        schema_fb.BufferStart(builder)
        if data_off is not None:
            schema_fb.BufferAddData(builder, data_off)
        schema_fb.BufferAddOffset(builder, self.buf.offset)
        schema_fb.BufferAddSize(builder, self.buf.size)
        return int(schema_fb.BufferEnd(builder))


_BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}


def strip_for_micro(data: bytes, bias_quantization: bool = True) -> bytes:
    """Remove names, metadata, signatures and description; align buffers; keep the graph.

    With ``bias_quantization=False`` the quantization parameters of int32/int64 bias
    tensors are dropped as well: TFLM's integer kernels derive the bias scale from the
    input and filter scales and never read them. Callers verify this bit-exact.
    """
    import flatbuffers

    model = schema_fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    if not bias_quantization:
        names = {v: k for k, v in vars(schema_fb.BuiltinOperator).items() if not k.startswith("_")}
        for sg in model.subgraphs or []:
            for op in sg.operators or []:
                code = model.operatorCodes[op.opcodeIndex]
                slot = _BIAS_INPUT.get(names.get(max(code.builtinCode, code.deprecatedBuiltinCode), ""))
                if slot is None or op.inputs is None or len(op.inputs) <= slot or op.inputs[slot] < 0:
                    continue
                bias = sg.tensors[op.inputs[slot]]
                if bias.type in (schema_fb.TensorType.INT32, schema_fb.TensorType.INT64):
                    bias.quantization = None
    if any(b.offset and b.offset > 1 for b in model.buffers or []):
        raise StageError("models larger than 2 GB (external buffers) cannot be stripped")
    for md in model.metadata or []:
        if 0 < md.buffer < len(model.buffers):
            model.buffers[md.buffer].data = None
    model.metadata = None
    model.signatureDefs = None
    model.description = None
    for sg in model.subgraphs or []:
        sg.name = None
        for t in sg.tensors or []:
            t.name = None
    model.buffers = [AlignedBuffer(b) for b in model.buffers or []]
    builder = flatbuffers.Builder(len(data))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def buffer_alignments(data: bytes) -> list[int]:
    """Byte offset of every non-empty buffer's data in ``data`` (for checks)."""
    model = schema_fb.Model.GetRootAsModel(data, 0)
    start = np.frombuffer(data, dtype=np.uint8).__array_interface__["data"][0]
    offsets = []
    for i in range(model.BuffersLength()):
        b = model.Buffers(i)
        if b.DataLength():
            offsets.append(int(b.DataAsNumpy().__array_interface__["data"][0] - start))
    return offsets


def strip_verified(data: bytes, x: np.ndarray, worker: TflmWorker | None = None) -> tuple[bytes, str, TflmRun]:
    """The smallest stripped form whose TFLM outputs on ``x`` equal the original's bit for bit.

    The stripped form runs on every sample and the original on the first VERIFY_SAMPLES, in one
    TFLM child; the returned run (outputs, arena) is the chosen form's own.
    """
    from edgekit.evaluate import tflm_session

    forms = [(strip_for_micro(data, bias_quantization=False), "names, metadata, signatures, bias quantization"),
             (strip_for_micro(data, bias_quantization=True), "names, metadata, signatures")]
    for form, label in forms:  # smallest first: the original and one form per TFLM child process
        try:
            # the original on the first VERIFY_SAMPLES inputs, the stripped form on all of them
            original, stripped = tflm_session([data, form], x, worker, limits=[VERIFY_SAMPLES, 0])
        except EdgekitError:
            continue
        head = stripped.raw[: len(original.raw)]
        if head.dtype == original.raw.dtype and np.array_equal(head, original.raw):
            return form, label, stripped
    return data, "nothing (no stripped form ran bit-exact on TFLM)", tflm_session([data], x, worker)[0]

