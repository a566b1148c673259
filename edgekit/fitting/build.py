"""Building one candidate from a rung and measuring it as it will run: flash, RAM, operators, data
types, accuracy on the artifact itself, and a latency figure."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import data as data_mod
from edgekit import intake
from edgekit.analysis import compat, cost
from edgekit.analysis.graph import read_graph
from edgekit.errors import StageError
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
    est = cost.estimate(graph, job.profile, cand.mode)
    if est is not None:
        cand.latency_ms, cand.latency_kind = est.ms, est.kind


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


def build_tflite(job: Job, rung: Rung, cand: Candidate) -> Path:
    from edgekit.stages import quantize

    art, profile, cal, ev, met, work, worker = job.art, job.profile, job.cal, job.ev, job.met, job.work, job.worker

    assert ev.y is not None
    tfl = quantize.convert(art, rung.mode, cal, profile.io_dtype)
    if profile.is_tflm:
        from edgekit.evaluate import tflm_session
        from edgekit.stages.strip import strip_verified

        graph = read_graph(tfl)
        if not compat.unsupported_ops(graph, profile):
            if profile.strip_metadata:
                tfl, cand.stripped, run = strip_verified(tfl, ev.x, worker)
            else:
                run = tflm_session([tfl], ev.x, worker)[0]
            graph = read_graph(tfl)
            cand.ram_bytes, cand.ram_kind = run.arena_bytes, "tflm-arena"
            cand.metric = met(ev.y, run.outputs)
            cand.evaluated_on = "TFLM host interpreter (reference kernels)"
        else:
            cand.ram_bytes, cand.ram_kind = graph.peak_activation_bytes(), "peak-activation"
            cand.evaluated_on = "not evaluated: TFLM lacks " + ", ".join(compat.unsupported_ops(graph, profile))
    else:
        graph = read_graph(tfl)
        cand.ram_bytes, cand.ram_kind = graph.peak_activation_bytes(), "peak-activation"
        cand.metric = met(ev.y, run_litert(tfl, ev.x))
        cand.evaluated_on = "LiteRT (ai-edge-litert) on the host CPU"
    _latency(job, cand, graph, tfl)
    cand.flash_bytes = len(tfl)
    _budgets(cand, profile, graph)
    path = work / f"{rung.name}.tflite"
    path.write_bytes(tfl)
    cand.artifact = "model.tflite"
    return path


def build_coreml(job: Job, rung: Rung, cand: Candidate) -> Path:
    from edgekit.stages import coreml

    art, profile, ev, met, work = job.art, job.profile, job.ev, job.met, job.work
    if job.coreml_base is None:
        job.coreml_base = coreml.convert(art, profile, work / "base.mlpackage")
    base = job.coreml_base

    assert ev.y is not None
    path = base if rung.mode == "none" else coreml.compress(base, rung.mode, rung.value,
                                                            work / f"{rung.name}.mlpackage")
    cand.flash_bytes = coreml.package_bytes(path)
    from edgekit.stages import quantize

    graph = read_graph(quantize.convert(art, "float32"))
    _latency(job, cand, graph, None)
    cand.ram_bytes = graph.peak_activation_bytes() // (2 if profile.compute_precision == "fp16" else 1)
    cand.ram_kind = "peak-activation (fp16)"
    if coreml.can_predict():  # pragma: no cover - macOS only
        cand.metric = met(ev.y, _predict_mlpackage(path, ev.x))
        cand.evaluated_on = "Core ML (.mlpackage) on this Mac"
    elif art.keras_model is not None:
        with coreml.emulate_on_keras(art.keras_model, rung.mode, rung.value) as m:
            pred = keras_outputs(m, ev.x)
        if profile.compute_precision == "fp16":
            pred = pred.astype(np.float16).astype(np.float32)
        cand.metric = met(ev.y, pred)
        cand.evaluated_on = "source Keras model with the same weight compression applied (Linux)"
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
