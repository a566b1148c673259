"""Building one candidate from a rung and measuring it as it will run: flash, RAM, operators, data
types, accuracy on the artifact itself, and a latency figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit import data as data_mod
from edgekit import intake
from edgekit.analysis import compat
from edgekit.analysis.graph import read_graph
from edgekit.errors import StageError
from edgekit.evaluate import Metric, host_latency_ms, run_litert
from edgekit.fitting.types import Candidate, Rung
from edgekit.profiles import TargetProfile

# cycles per MAC by arithmetic, for the TFLM latency estimate (CMSIS-NN int8 on a DSP core,
# reference int16x8, FPU float32, soft float). An estimate for ranking, labelled as such.
CYCLES_PER_MAC = {"int8": 1.0, "int16x8": 3.0, "float32": 4.0, "float32-soft": 40.0}


def keras_outputs(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Float outputs of a Keras model, called directly in batches (no predict() tracing)."""
    return np.concatenate([np.asarray(model(x[i : i + batch], training=False)) for i in range(0, len(x), batch)])


def coreml_predicts() -> bool:
    from edgekit.stages import coreml

    return coreml.can_predict()


def _budgets(cand: Candidate, profile: TargetProfile, graph: Any | None) -> None:
    from edgekit.analyzer import Budget

    budgets = [Budget("flash", profile.flash_bytes, cand.flash_bytes, "bytes"),
               Budget("ram", profile.ram_bytes, cand.ram_bytes, "bytes", cand.ram_kind)]
    if graph is not None:
        cand.unsupported = compat.unsupported_ops(graph, profile)
        bad_types = list(compat.constraint_dtypes(graph, profile))
        budgets.append(Budget("ops", 0, len(cand.unsupported), "unsupported operators", ", ".join(cand.unsupported)))
        budgets.append(Budget("dtypes", 0, len(bad_types), "unsupported data types", ", ".join(bad_types)))
    if profile.latency_ms is not None and cand.latency_ms is not None:
        budgets.append(Budget("latency", profile.latency_ms, round(cand.latency_ms, 4), "ms", cand.latency_kind))
    cand.budgets = {b.name: b.to_dict() for b in budgets}
    cand.fits = all(b.fits for b in budgets)


def build_tflite(art: intake.Artifact, profile: TargetProfile, rung: Rung, cal: data_mod.Dataset,
                  ev: data_mod.Dataset, met: Metric, work: Path, cand: Candidate, worker: Any = None) -> Path:
    from edgekit.stages import quantize

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
        arith = rung.mode if rung.mode != "float32" else ("float32" if profile.fpu else "float32-soft")
        if profile.clock_hz:
            cand.latency_ms = graph.macs * CYCLES_PER_MAC.get(arith, 4.0) / profile.clock_hz * 1000
            cand.latency_kind = f"estimate: MACs x {CYCLES_PER_MAC.get(arith, 4.0)} cycles / {profile.clock_hz} Hz"
    else:
        graph = read_graph(tfl)
        cand.ram_bytes, cand.ram_kind = graph.peak_activation_bytes(), "peak-activation"
        cand.metric = met(ev.y, run_litert(tfl, ev.x))
        cand.evaluated_on = "LiteRT (ai-edge-litert) on the host CPU"
        cand.latency_ms = host_latency_ms(tfl, ev.x, profile.threads)
        cand.latency_kind = f"host CPU, LiteRT, {profile.threads} threads (a proxy, not the phone)"
    cand.flash_bytes = len(tfl)
    _budgets(cand, profile, graph)
    path = work / f"{rung.name}.tflite"
    path.write_bytes(tfl)
    cand.artifact = "model.tflite"
    return path


def build_coreml(art: intake.Artifact, profile: TargetProfile, rung: Rung, base: Path, work: Path,
                  cand: Candidate, ev: data_mod.Dataset, met: Metric) -> Path:
    from edgekit.stages import coreml

    assert ev.y is not None
    path = base if rung.mode == "none" else coreml.compress(base, rung.mode, rung.value,
                                                            work / f"{rung.name}.mlpackage")
    cand.flash_bytes = coreml.package_bytes(path)
    from edgekit.stages import quantize

    graph = read_graph(quantize.convert(art, "float32"))
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
