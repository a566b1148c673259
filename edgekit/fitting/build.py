"""Building one candidate from a rung and measuring it as it will run: flash, RAM, operators, data
types, accuracy on the artifact itself, and a latency figure."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import data as data_mod
from edgekit import intake
from edgekit.analysis import compat, cost
from edgekit.analysis.graph import read_graph
from edgekit.errors import EdgekitError, StageError
from edgekit.evaluate import Metric, run_litert
from edgekit.fitting.types import Candidate, Rung
from edgekit.profiles import TargetProfile

LATENCY_SOURCES = ("model", "host")
HOST_ROUND = 20  # invokes per timing round
HOST_MAX_ROUNDS = 15
HOST_STABLE = 0.02  # stop when the round medians' standard error is under 2% of their median


@dataclass
class Job:
    """What every candidate of one search is built and measured with."""

    art: intake.Artifact
    profile: TargetProfile
    cal: data_mod.Dataset
    ev: data_mod.Dataset
    met: Metric
    work: Path
    worker: Any = None
    latency: str = "model"  # model: the deterministic cost model; host: LiteRT timed on this host (opt-in)
    coreml_base: Path | None = None
    mets: list[Metric] = field(default_factory=list)  # every --metric (mets[0] is met)
    float_ref: np.ndarray | None = None  # the float source model's outputs on ev.x (agreement metrics)
    calibration: Any = None  # stages.calibrated.Calibration, made on first use and shared by every rung
    layer_errs: list[Any] | None = None  # stages.layer_error.LayerError of the int8 model, worst first
    layer_names: dict[int, str] = field(default_factory=dict)
    train: data_mod.Dataset | None = None  # --train: fine-tunes the clustered rungs
    clusters: dict[int, Any] = field(default_factory=dict)  # k -> fitting.clustered.Variant (or its error)

    def calibrated(self) -> Any:
        if self.calibration is None:
            from edgekit.stages.calibrated import Calibration

            self.calibration = Calibration(self.art, self.cal)
        return self.calibration

    def int8_reference(self) -> bytes:
        """The per-channel int8 model (converter names kept) that level-2 rewrites start from."""
        return bytes(self.calibrated().int8(self.profile.io_dtype))

    def score(self, cand: Candidate, outputs: np.ndarray) -> None:
        """Every metric of ``outputs`` (on ev.x); ``cand.metric`` is the first (the governing one)."""
        for m in self.mets or [self.met]:
            truth = self.float_ref if m.reference == "float" else self.ev.y
            assert truth is not None
            cand.metrics[m.name] = m(truth, outputs, self.ev.x)
        cand.metric = cand.metrics[(self.mets or [self.met])[0].name]
    plan_memory: bool = True  # embed a verified offline memory plan in TFLM candidates

    @property
    def host_timing(self) -> bool:
        """Host timing only where the target computes on a CPU like this host's (never a GPU or ANE)."""
        return (self.latency == "host" and self.profile.runtime == "litert"
                and self.profile.delegate != "gpu")


def host_latency(model: bytes, x: np.ndarray, threads: int) -> tuple[float, float, int]:
    """LiteRT on this host: (median ms, noise as the relative spread of round medians, threads used).

    No more threads than this host has cores; rounds of HOST_ROUND invokes repeat until the round
    medians agree within HOST_STABLE (or HOST_MAX_ROUNDS), so the figure is as stable as the host lets it be."""
    from edgekit._quiet import quiet_native
    from edgekit.evaluate import _interpreter_class, _quantize

    threads = max(1, min(threads, os.cpu_count() or 1))
    with quiet_native():
        interp = _interpreter_class()(model_content=model, num_threads=threads)
        interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    scale, zp = inp["quantization"]
    interp.set_tensor(inp["index"], _quantize(x[:1].reshape(inp["shape"]), inp["dtype"], scale, zp))
    for _ in range(5):
        interp.invoke()
    medians: list[float] = []
    for _ in range(HOST_MAX_ROUNDS):
        times = []
        for _ in range(HOST_ROUND):
            t0 = time.perf_counter()
            interp.invoke()
            times.append(time.perf_counter() - t0)
        medians.append(statistics.median(times) * 1000)
        if len(medians) >= 3:
            mid = statistics.median(medians)
            sem = statistics.stdev(medians) / len(medians) ** 0.5
            if mid > 0 and sem / mid < HOST_STABLE:
                break
    mid = statistics.median(medians)
    spread = (max(medians) - min(medians)) / mid if mid > 0 else 0.0
    return mid, spread, threads


def _latency(job: Job, cand: Candidate, graph: Any, tfl: bytes | None) -> None:
    if job.host_timing and tfl is not None:
        ms, noise, threads = host_latency(tfl, job.ev.x, job.profile.threads)
        cand.latency_ms = ms
        cand.latency_kind = (f"host CPU timing, LiteRT, {threads} threads, noise +-{noise * 100:.0f}% "
                             "(a proxy, not the phone)")
        return
    est = cost.estimate(graph, job.profile, ARITHMETIC.get(cand.stage, {}).get(cand.mode, cand.mode))
    if est is not None:
        cand.latency_ms, cand.latency_kind = est.ms, est.kind


# the arithmetic a candidate's kernels run in, for the cost model (INT4/LUT filters feed int8 kernels)
ARITHMETIC = {"quantize": {"int8-per-tensor": "int8"}, "int4": {"all": "int8", "keep": "int8"},
              "lut": {"per-channel": "int8"}, "mixed": {"float": "float32", "int16x8": "int16x8"},
              "cluster": {"int4": "int8", "lut": "int8", "aeq": "dynamic"},
              "aeq": {"dynamic_wi4c_afp32": "dynamic", "dynamic_wi4_afp32": "dynamic",
                      "weight_only_wi4_afp32": "float32"}}


def keras_outputs(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Float outputs of a Keras model, called directly in batches (no predict() tracing)."""
    return np.concatenate([np.asarray(model(x[i : i + batch], training=False)) for i in range(0, len(x), batch)])


def coreml_predicts() -> bool:
    from edgekit.stages import coreml

    return coreml.can_predict()


def _budgets(cand: Candidate, profile: TargetProfile, graph: Any | None) -> None:
    from edgekit.analysis.verdict import Budget, tflm_ram_budget

    # one rule with check and codegen: a TFLM arena is judged by what the firmware reserves
    ram = (tflm_ram_budget(profile, cand.ram_bytes) if cand.ram_kind == "tflm-arena"
           else Budget("ram", profile.ram_bytes, cand.ram_bytes, "bytes", cand.ram_kind))
    budgets = [Budget("flash", profile.flash_bytes, cand.flash_bytes, "bytes"), ram]
    if graph is not None:
        cand.unsupported = compat.unsupported_ops(graph, profile)
        bad_types = list(compat.constraint_dtypes(graph, profile))
        budgets.append(Budget("ops", 0, len(cand.unsupported), "unsupported operators", ", ".join(cand.unsupported)))
        budgets.append(Budget("dtypes", 0, len(bad_types), "unsupported data types", ", ".join(bad_types)))
    if profile.latency_ms is not None and cand.latency_ms is not None:
        budgets.append(Budget("latency", profile.latency_ms, round(cand.latency_ms, 4), "ms", cand.latency_kind))
    cand.budgets = {b.name: b.to_dict() for b in budgets}
    cand.fits = all(b.fits for b in budgets)


INTEGER_MODES = ("int8", "int16x8", "int8-per-tensor")


def _convert(job: Job, mode: str) -> bytes:
    """A quantize rung's model: integer modes from the search's one shared calibration (byte for byte the
    converter's own output), the others from the converter."""
    from edgekit.stages import quantize

    if mode in INTEGER_MODES and job.art.tflite is None:
        c = job.calibrated()
        if mode == "int16x8":
            return bytes(c.int16x8(job.profile.io_dtype))
        return bytes(c.int8(job.profile.io_dtype, per_channel=mode == "int8"))
    return quantize.convert(job.art, mode, job.cal, job.profile.io_dtype)


def _float_bytes(job: Job) -> int:
    from edgekit.stages import quantize

    return len(quantize.convert(job.art, "float32"))


def build_tflite(job: Job, rung: Rung, cand: Candidate) -> Path:
    tfl = _convert(job, rung.mode)
    if rung.mode != "float32":
        cand.saved[f"quantization ({rung.mode}) vs the float32 .tflite"] = _float_bytes(job) - len(tfl)
    return finish_tflite(job, rung, cand, tfl)


def finish_tflite(job: Job, rung: Rung, cand: Candidate, tfl: bytes, reference: bytes | None = None,
                  reference_label: str = "", force_tflm: bool = False) -> Path:
    """Measure a .tflite candidate as it will run. On TFLM: stripped (kept only where bit-exact), run on
    every eval sample in the TFLM host interpreter; ``reference`` (e.g. an INT4 model's int8 twin) must
    give the very same raw outputs on the first VERIFY_SAMPLES inputs. On LiteRT: run in ai-edge-litert."""
    profile, ev, work = job.profile, job.ev, job.work
    if profile.is_tflm:
        graph = read_graph(tfl)
        if not compat.unsupported_ops(graph, profile) or force_tflm:
            run, tfl = _tflm_verified(job, cand, tfl, reference, reference_label)
            arena = run.arena_bytes
            if job.plan_memory:  # every Cortex-M candidate: a verified offline memory plan, applied last
                from edgekit.stages import memplan

                planned = memplan.optimize(tfl, worker=job.worker)
                cand.memory_plan = planned.note
                if planned.applied and planned.verification is not None:
                    tfl = planned.data
                    arena = planned.verification.head_after + planned.verification.tail_after
            graph = read_graph(tfl)
            cand.ram_bytes, cand.ram_kind = arena, "tflm-arena"
            job.score(cand, run.outputs)
            cand.evaluated_on = "TFLM host interpreter (reference kernels)"
        else:
            cand.ram_bytes, cand.ram_kind = graph.peak_activation_bytes(), "peak-activation"
            cand.evaluated_on = "not evaluated: TFLM lacks " + ", ".join(compat.unsupported_ops(graph, profile))
    else:
        graph = read_graph(tfl)
        cand.ram_bytes, cand.ram_kind = graph.peak_activation_bytes(), "peak-activation"
        job.score(cand, run_litert(tfl, ev.x))
        cand.evaluated_on = "LiteRT (ai-edge-litert) on the host CPU"
        cand.verified.append("LiteRT (ai-edge-litert) on the host CPU: ran every eval sample")
    _latency(job, cand, graph, tfl)
    cand.flash_bytes = len(tfl)
    _budgets(cand, profile, graph)
    path = work / f"{rung.name}.tflite"
    path.write_bytes(tfl)
    cand.artifact = "model.tflite"
    return path


def _tflm_verified(job: Job, cand: Candidate, tfl: bytes, reference: bytes | None, label: str) -> tuple[Any, bytes]:
    """(the TFLM run of the chosen form, the chosen form): the smallest stripped form whose raw outputs
    equal the unstripped model's (and ``reference``'s) bit for bit on the first VERIFY_SAMPLES inputs."""
    from edgekit.evaluate import tflm_session
    from edgekit.stages.strip import VERIFY_SAMPLES, strip_for_micro

    x, n = job.ev.x, min(VERIFY_SAMPLES, len(job.ev.x))
    forms = [(strip_for_micro(tfl, bias_quantization=False), "names, metadata, signatures, bias quantization"),
             (strip_for_micro(tfl, bias_quantization=True), "names, metadata, signatures")] \
        if job.profile.strip_metadata else [(tfl, "")]
    ref = [] if reference is None else [strip_for_micro(reference, bias_quantization=False)
                                        if job.profile.strip_metadata else reference]
    for form, what in forms:
        try:
            runs = tflm_session([tfl, form, *ref] if what else [form, *ref], x, job.worker,
                                limits=([n, 0] if what else [0]) + [n] * len(ref))
        except EdgekitError as exc:
            if what:
                continue
            raise StageError(f"the TFLM interpreter could not run it: {exc}") from None
        chosen = runs[1] if what else runs[0]
        head = chosen.raw[:n]
        if what and not (runs[0].raw.dtype == head.dtype and np.array_equal(runs[0].raw, head)):
            continue
        if ref and not np.array_equal(runs[-1].raw, head):
            raise StageError(f"not bit-exact: its TFLM outputs differ from {label} on the first {n} samples")
        if what:
            cand.stripped = what
            cand.saved["strip for the microcontroller (" + what + ")"] = len(tfl) - len(form)
            cand.verified.append(f"TFLM host interpreter: stripped form bit-exact with the unstripped model on {n} "
                                 "samples")
        if ref:
            cand.verified.append(f"TFLM host interpreter: bit-exact with {label} on {n} samples")
        cand.verified.append(f"TFLM host interpreter: ran all {len(x)} eval samples")
        return chosen, form
    cand.stripped = "nothing (no stripped form ran bit-exact on TFLM)"
    runs = tflm_session([tfl, *ref], x, job.worker, limits=[0] + [n] * len(ref))
    if ref and not np.array_equal(runs[-1].raw, runs[0].raw[:n]):
        raise StageError(f"not bit-exact: its TFLM outputs differ from {label} on the first {n} samples")
    return runs[0], tfl


def _worst_weighted(job: Job, count: int) -> list[Any]:
    from edgekit.stages.layer_error import WEIGHTED

    return [e for e in (job.layer_errs or []) if e.op in WEIGHTED][:count]


def build_int4(job: Job, rung: Rung, cand: Candidate) -> Path:
    """INT4-packed CONV_2D/FULLY_CONNECTED filters (TFLM); ``keep``: the worst layers stay int8."""
    from edgekit.stages import int4

    base = job.int8_reference()
    packed, twin, layers = int4.rewrite(base)
    keep: frozenset[int] = frozenset()
    if rung.mode == "keep":  # the worst of the layers INT4 would pack (smaller ones stay int8 anyway)
        packable = {p.index for p in layers}
        worst = [e.index for e in _worst_weighted(job, len(job.layer_errs or [])) if e.index in packable]
        keep = frozenset(worst[: int(rung.value)])
        if not keep or keep == packable:
            raise StageError("no packable layer to keep in int8 besides the ones INT4 packs (same as int4)")
        packed, twin, layers = int4.rewrite(base, keep_int8=keep)
    names = [job.layer_names.get(p.index, p.label) for p in layers]
    kept = [job.layer_names.get(i, str(i)) for i in sorted(keep)]
    cand.detail = f"INT4 filters: {', '.join(names)}" + (f"; kept int8 (worst error): {', '.join(kept)}"
                                                         if kept else "")
    cand.saved["quantization (int8) vs the float32 .tflite"] = _float_bytes(job) - len(base)
    cand.saved[f"INT4 packing ({len(layers)} layers)"] = len(base) - len(packed)
    return finish_tflite(job, rung, cand, packed, reference=twin,
                         reference_label="its int8 twin (the same 4-bit values stored unpacked)")


def build_lut(job: Job, rung: Rung, cand: Candidate) -> Path:
    """TFLM's LUT compression of per-channel clustered int8 filters (DECODE operators)."""
    from edgekit.stages import lut

    base = job.int8_reference()
    clustered, tensors = lut.cluster(base, int(rung.value))
    compressed = lut.compress(clustered, tensors, int(rung.value))
    cand.detail = (f"{len(tensors)} filters clustered per channel to {2 ** int(rung.value)} values, "
                   "LUT-compressed by TFLM's compression package (per-channel tables)")
    cand.saved["quantization (int8) vs the float32 .tflite"] = _float_bytes(job) - len(base)
    cand.saved[f"LUT compression ({len(tensors)} tensors)"] = len(clustered) - len(compressed)
    return finish_tflite(job, rung, cand, compressed, reference=clustered,
                         reference_label="the uncompressed clustered model", force_tflm=True)


def build_mixed(job: Job, rung: Rung, cand: Candidate) -> Path:
    """The worst layers (per-layer error) and their activations kept in higher precision - int16 activations
    (``int16x8``: a 16x8 region stitched into the int8 graph) or ``float`` (the converter's denylist) -
    and int8 elsewhere."""
    from edgekit.analysis.graph import read_graph as rg
    from edgekit.stages import layer_error, mixed

    base = job.int8_reference()
    worst = (job.layer_errs or [])[: int(rung.value) or 1]
    if not worst:
        raise StageError("no per-layer error to choose the layers from")
    g = rg(base)
    ops = sorted({i for e in worst for i in layer_error.region(base, e.index)})
    names = [job.layer_names.get(i, g.layers[i].op) for i in ops]
    if rung.mode == "int16x8":
        tfl = mixed.stitch(base, bytes(job.calibrated().int16x8(job.profile.io_dtype)), ops)
        kind = "int16 activations (16x8)"
    else:
        nodes = [g.tensors[g.layers[i].outputs[0]].name for i in ops]
        tfl = bytes(job.calibrated().int8(job.profile.io_dtype, float_nodes=nodes))
        kind = "float"
    cand.detail = f"{kind}: {', '.join(names)} (worst: {', '.join(e.layer for e in worst)}); int8 elsewhere"
    cand.saved[f"quantization (int8, {kind} around the worst layer) vs the float32 .tflite"] = (
        _float_bytes(job) - len(tfl))
    cand.saved[f"{kind} region vs all-int8"] = len(base) - len(tfl)
    return finish_tflite(job, rung, cand, tfl)


def build_aeq(job: Job, rung: Rung, cand: Candidate) -> Path:
    """int4 weights for LiteRT with ai-edge-quantizer (dynamic-range int4, XNNPACK)."""
    from edgekit.stages import litert_int4, quantize

    base = quantize.convert(job.art, "float32")
    tfl = litert_int4.quantize(base, rung.mode)
    cand.detail = f"ai-edge-quantizer recipe {rung.mode}"
    cand.saved[f"int4 weights ({rung.mode}) vs the float32 .tflite"] = len(base) - len(tfl)
    return finish_tflite(job, rung, cand, tfl)


def build_coreml(job: Job, rung: Rung, cand: Candidate) -> Path:
    from edgekit.stages import coreml

    art, profile, ev, work = job.art, job.profile, job.ev, job.work
    if job.coreml_base is None:
        job.coreml_base = coreml.convert(art, profile, work / "base.mlpackage")
    base = job.coreml_base

    path = base if rung.mode == "none" else coreml.compress(base, rung.mode, rung.value,
                                                            work / f"{rung.name}.mlpackage")
    cand.flash_bytes = coreml.package_bytes(path)
    if rung.mode != "none":
        cand.saved[f"{rung.mode} vs the fp16 .mlpackage"] = coreml.package_bytes(base) - cand.flash_bytes
    from edgekit.stages import quantize

    graph = read_graph(quantize.convert(art, "float32"))
    _latency(job, cand, graph, None)
    cand.ram_bytes = graph.peak_activation_bytes() // (2 if profile.compute_precision == "fp16" else 1)
    cand.ram_kind = "peak-activation (fp16)"
    if coreml.can_predict():  # pragma: no cover - macOS only
        job.score(cand, _predict_mlpackage(path, ev.x))
        cand.evaluated_on = "Core ML (.mlpackage) on this Mac"
    elif art.keras_model is not None:
        try:
            if rung.mode == "none":
                raise StageError("nothing to decompress")
            with coreml.weights_from_package(art.keras_model, path) as m:
                pred = keras_outputs(m, ev.x)
            cand.evaluated_on = ("source Keras model with the package's own weights (coremltools "
                                 "decompress_weights, Linux)")
            cand.verified.append("Core ML emulated on Linux: the weights coremltools' compression wrote (its "
                                 "k-means palettes / linear scales / pruning masks, expanded by coremltools.optimize."
                                 "coreml.decompress_weights) run in the Keras model")
        except StageError:
            with coreml.emulate_on_keras(art.keras_model, rung.mode, rung.value) as m:
                pred = keras_outputs(m, ev.x)
            cand.evaluated_on = ("source Keras model (fp16)" if rung.mode == "none" else
                                 "source Keras model with the same weight compression re-implemented (Linux; the "
                                 "package's weights could not be mapped back)")
        if profile.compute_precision == "fp16":
            pred = pred.astype(np.float16).astype(np.float32)
        job.score(cand, pred)
        if rung.level >= 2:
            cand.detail = (f"coremltools.optimize.coreml {rung.mode} ({int(rung.value)}-bit), deployment target "
                           f"{profile.min_deployment_target}")
    else:
        raise StageError("Core ML accuracy on Linux needs a Keras source model",
                         "pass the .keras/.h5 model, or run fit on macOS")
    _budgets(cand, profile, None)
    cand.artifact = "model.mlpackage"
    return path


def _predict_mlpackage(path: Path, x: np.ndarray) -> np.ndarray:  # pragma: no cover - macOS only
    import coremltools as ct

    ml = ct.models.MLModel(str(path))
    name = ml.get_spec().description.input[0].name
    outs = [next(iter(ml.predict({name: x[i : i + 1]}).values())) for i in range(len(x))]
    return np.concatenate([np.asarray(o).reshape(1, -1) for o in outs])


def build_cluster(job: Job, rung: Rung, cand: Candidate) -> Path:
    """A rung built from the clustered float model (k = rung.value): see fitting.clustered."""
    from edgekit.fitting import clustered

    return clustered.build(job, rung, cand)


BUILDERS = {"quantize": build_tflite, "coreml": build_coreml, "int4": build_int4, "lut": build_lut,
            "mixed": build_mixed, "aeq": build_aeq, "cluster": build_cluster}
