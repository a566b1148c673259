"""Level-2 rungs built from the clustered float model (``stages.cluster``, fine-tuned with ``--train``).

One clustered copy per k, shared by the rungs that use it, with its own conversion and calibration:

- ``int4`` (TFLM): clustered -> per-channel int8 -> INT4 filters (``stages.int4``), bit-exact with the
  int8 twin on the TFLM host interpreter, like the ``int4`` rung;
- ``lut`` (TFLM): clustered -> per-channel int8, which then holds at most k values per channel, -> TFLM's
  LUT compression at log2(k) bits (``stages.lut``), lossless: bit-exact with the clustered int8 model;
- ``aeq`` (LiteRT CPU): clustered float32 .tflite -> ai-edge-quantizer int4 channel-wise weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import intake
from edgekit.data import Dataset
from edgekit.errors import EdgekitError, StageError
from edgekit.evaluate import Metric
from edgekit.fitting.build import Job, _float_bytes, finish_tflite, keras_outputs
from edgekit.fitting.types import Candidate, Rung


@dataclass
class Variant:
    """The clustered model for one k: an Artifact the converter takes like the source, and what was done."""

    k: int
    art: intake.Artifact
    records: list[Any]  # stages.cluster.Clustered, one per clustered kernel
    tune: Any = None  # stages.cluster_tune.TuneReport with --train
    calibration: Any = None

    conversion: str = ""  # how the clustered model was converted (said in the candidate's detail)

    def calibrated(self, job: Job) -> Any:
        """The clustered model's calibration. Not fine-tuned: the search's shared calibrated graph with the
        clustered kernels swapped in, recalibrated by the converter's calibrator (the converter's graph for the
        clustered model, without a second conversion); fine-tuned (every weight moved): a conversion of its own."""
        if self.calibration is None:
            from edgekit.stages import cluster
            from edgekit.stages.calibrated import Calibration

            swapped = None
            if self.tune is None and job.art.keras_model is not None:
                swapped = cluster.swap_into_tflite(job.calibrated().model, self.records)
            if swapped is not None:
                self.calibration = Calibration.recalibrated(self.art, job.cal, swapped)
                self.conversion = "clustered kernels swapped into the shared calibrated graph, recalibrated"
            else:
                self.calibration = Calibration(self.art, job.cal)
                self.conversion = "converted and calibrated on its own"
        return self.calibration

    def float_tflite(self, job: Job) -> bytes:
        """The clustered model's float32 .tflite (swapped into the source's when not fine-tuned)."""
        from edgekit.stages import cluster, quantize

        if self.tune is None and job.art.keras_model is not None:
            swapped = cluster.swap_into_tflite(quantize.convert(job.art, "float32"), self.records)
            if swapped is not None:
                self.conversion = "clustered kernels swapped into the float32 .tflite"
                return swapped
        self.conversion = "converted on its own"
        return quantize.convert(self.art, "float32")

    def describe(self) -> str:
        layers = ", ".join(f"{r.layer} ({len(r.centroids)} values, weight error {100 * r.rel_error:.1f}%)"
                           for r in self.records)
        text = f"float kernels clustered per layer (k-means, k={self.k}): {layers}"
        return text + ("; " + self.tune.describe() if self.tune is not None else "; not fine-tuned (no --train)")


def training_loss(met: Metric, train: Dataset | None) -> str:
    """What the fine-tune fits: the labels when the governing metric scores labels of a kind training can
    use (class labels: cross-entropy; regression targets with mse/mae: squared error), otherwise the float
    model's own outputs (soft targets)."""
    if train is not None and train.y is not None and met.reference == "labels":
        if met.kind == "classes":
            return "labels-ce"
        if met.name in ("mse", "mae"):
            return "labels-mse"
    return "soft"


def variant(job: Job, k: int) -> Variant:
    """The clustered (and, with --train, fine-tuned) model for ``k``, made once per search."""
    found = job.clusters.get(k)
    if isinstance(found, EdgekitError):
        raise found
    if found is not None:
        return found
    try:
        job.clusters[k] = v = _make(job, k)
    except EdgekitError as exc:
        job.clusters[k] = exc
        raise
    return v


def _make(job: Job, k: int) -> Variant:
    from edgekit.stages import cluster, cluster_tune

    src = job.art.keras_model
    if src is None:
        raise StageError("weight clustering needs a Keras source model (.keras, or a Keras 3 .h5)",
                         "pass the .keras model the SavedModel/.onnx came from")
    model, records = cluster.cluster_model(src, k)
    tune = None
    if job.train is not None:
        loss = training_loss(job.met, job.train)
        outputs = keras_outputs(src, job.train.x)
        probs = cluster_tune.is_distribution(outputs)
        if loss == "soft":
            loss, targets = ("soft-ce" if probs else "soft-mse"), outputs
        else:
            assert job.train.y is not None
            targets = job.train.y
        tune = cluster_tune.fine_tune(model, records, job.train.x, targets, loss, probabilities=probs)
    for r in records:  # the model holds exactly what the records say: at most k values per kernel
        held = np.unique(np.asarray(r.variable.numpy()))
        if len(held) > k or not np.array_equal(np.asarray(r.variable.numpy()), r.weights()):
            raise StageError(f"clustering {r.layer}: the kernel holds {len(held)} values, not its {k} centroids")
    art = intake.Artifact(source=job.art.source, fmt=job.art.fmt, keras_model=model,
                          input_shape=job.art.input_shape, declared_shape=job.art.declared_shape)
    return Variant(k, art, records, tune)


def build(job: Job, rung: Rung, cand: Candidate) -> Path:
    v = variant(job, int(rung.value))
    cand.detail = v.describe()
    if rung.mode == "aeq":
        from edgekit.stages import litert_int4

        tfl = litert_int4.quantize(v.float_tflite(job), "dynamic_wi4c_afp32")
        cand.detail += f"; {v.conversion}; ai-edge-quantizer recipe dynamic_wi4c_afp32"
        cand.saved["int4 weights (dynamic_wi4c_afp32) vs the float32 .tflite"] = _float_bytes(job) - len(tfl)
        return finish_tflite(job, rung, cand, tfl)
    # LUT: per-tensor int8, so a kernel clustered per layer keeps its k values in every channel and TFLM's
    # decoder needs one k-entry table per tensor (per-channel scales would need one table per channel); a
    # BatchNorm folded into the filter scales each channel apart, which lut.cluster re-clusters (lossy)
    per_channel = rung.mode != "lut"
    base = bytes(v.calibrated(job).int8(job.profile.io_dtype, per_channel=per_channel))
    cand.detail += f"; {v.conversion}"
    cand.saved[f"quantization (int8{'' if per_channel else ' per-tensor'}) vs the float32 .tflite"] = (
        _float_bytes(job) - len(base))
    if rung.mode == "int4":
        from edgekit.stages import int4

        packed, twin, layers = int4.rewrite(base)
        names = [job.layer_names.get(p.index, p.label) for p in layers]
        cand.detail += f"; INT4 filters: {', '.join(names)}"
        cand.saved[f"INT4 packing ({len(layers)} layers)"] = len(base) - len(packed)
        return finish_tflite(job, rung, cand, packed, reference=twin,
                             reference_label="its int8 twin (the same 4-bit values stored unpacked)")
    if rung.mode == "lut":
        from edgekit.stages import lut

        bits = int(math.log2(v.k))
        clustered, tensors = lut.cluster(base, bits)
        changed = _changed_filters(base, clustered, tensors)
        if changed:  # a filter the float clustering left alone, or a BatchNorm the converter folded into it
            cand.detail += f"; {changed} int8 filter(s) re-clustered at the int8 level to {v.k} values"
        compressed = lut.compress(clustered, tensors, bits)
        cand.detail += (f"; {len(tensors)} per-tensor int8 filters (at most {v.k} values each) LUT-compressed at "
                        f"{bits} bits by TFLM's compression package (one table per tensor)")
        cand.saved[f"LUT compression ({len(tensors)} tensors, {bits} bits)"] = len(clustered) - len(compressed)
        return finish_tflite(job, rung, cand, compressed, reference=clustered,
                             reference_label="the uncompressed clustered model", force_tflm=True)
    raise StageError(f"unknown clustered rung mode {rung.mode!r}")


def _changed_filters(before: bytes, after: bytes, tensors: list[int]) -> int:
    """How many of ``tensors`` differ between the two models (values re-clustered at the int8 level)."""
    from edgekit.stages import flatbuf

    a, b = flatbuf.load(before), flatbuf.load(after)
    sa, sb = a.subgraphs[0], b.subgraphs[0]
    return sum(not np.array_equal(np.asarray(flatbuf.tensor_array(a, sa.tensors[t])),
                                  np.asarray(flatbuf.tensor_array(b, sb.tensors[t]))) for t in tensors)
