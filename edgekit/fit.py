"""`fit`: the smallest/fastest deployable artifact that meets every budget of a target while
losing at most the allowed accuracy, measured on the artifact itself.

The search walks a ladder of candidates from least to most aggressive. Every
candidate is built, measured (flash, RAM, operators, data types) and evaluated
the way it will run (LiteRT, the TFLM host interpreter, or - for Core ML on
Linux - the same weight compression applied to the source model). Candidates
are cached by content hash, so a re-run with the same inputs does no work twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import data as data_mod
from edgekit import intake, options
from edgekit._hashing import content_hash
from edgekit.analysis import compat
from edgekit.analysis.graph import read_graph
from edgekit.errors import DataError, EdgekitError, StageError
from edgekit.evaluate import Metric, get_metric, host_latency_ms, run_litert
from edgekit.profiles import TargetProfile, load_profile

GOALS = ("size", "latency", "ram")
LATENCY_TIE = 0.25
CACHE_VERSION = "fit-1"
# cycles per MAC by arithmetic, for the TFLM latency estimate (CMSIS-NN int8 on a DSP core,
# reference int16x8, FPU float32, soft float). An estimate for ranking, labelled as such.
CYCLES_PER_MAC = {"int8": 1.0, "int16x8": 3.0, "float32": 4.0, "float32-soft": 40.0}


@dataclass(frozen=True)
class Rung:
    """One step of the ladder: a named way to build a candidate."""

    name: str
    stage: str  # quantize | coreml
    mode: str  # quantize mode, or Core ML compression kind
    value: float = 0.0  # palettization bits / pruning sparsity


@dataclass
class Candidate:
    name: str
    stage: str
    mode: str
    value: float
    flash_bytes: int = 0
    ram_bytes: int = 0
    ram_kind: str = ""
    metric: float | None = None
    drop: float | None = None
    latency_ms: float | None = None
    latency_kind: str = ""
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)
    fits: bool = False
    within_drop: bool = False
    evaluated_on: str = ""
    stripped: str = ""
    error: str = ""
    cached: bool = False
    seconds: float = 0.0
    artifact: str = ""  # file name in the cache entry

    @property
    def eligible(self) -> bool:
        return not self.error and self.fits and self.within_drop


@dataclass
class FitResult:
    model: str
    target: str
    metric: str
    max_drop: float
    goal: str
    baseline: float
    candidates: list[Candidate]
    winner: Candidate | None
    closest: Candidate | None
    notes: list[str]
    calibration: str
    eval_source: str
    eval_samples: int
    out_dir: Path | None = None
    artifact_path: Path | None = None
    seconds: float = 0.0

    @property
    def fits(self) -> bool:
        return self.winner is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "target": self.target,
            "fits": self.fits,
            "metric": self.metric,
            "max_drop": self.max_drop,
            "goal": self.goal,
            "baseline": self.baseline,
            "calibration": self.calibration,
            "eval": {"source": self.eval_source, "samples": self.eval_samples},
            "winner": self.winner.name if self.winner else None,
            "closest": self.closest.name if (self.closest and not self.winner) else None,
            "artifact": self.artifact_path.name if self.artifact_path else None,
            "candidates": [asdict(c) for c in self.candidates],
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
        }


# ------------------------------------------------------------------ ladder


def ladder(profile: TargetProfile, level: int = 1) -> list[Rung]:
    if level != 1:
        raise StageError(
            f"--level {level} is not available yet: levels 2 and 3 (pruning that shrinks, clustering, "
            "low-rank factorization, distillation) come with a later edgekit release",
            "use --level 1 (post-training quantization)",
        )
    if profile.runtime == "coreml":
        return [Rung("fp16", "coreml", "none"), Rung("linear-int8", "coreml", "linear-int8"),
                Rung("palettize-8bit", "coreml", "palettize", 8), Rung("palettize-6bit", "coreml", "palettize", 6),
                Rung("palettize-4bit", "coreml", "palettize", 4), Rung("palettize-2bit", "coreml", "palettize", 2),
                Rung("prune-50", "coreml", "prune", 0.5)]
    rungs = []
    if profile.is_tflm:
        if "float32" in profile.dtypes:
            rungs.append(Rung("float32", "quantize", "float32"))
        if "int16" in profile.dtypes:
            rungs.append(Rung("int16x8", "quantize", "int16x8"))
        rungs.append(Rung("int8", "quantize", "int8"))
        return rungs
    for mode in ("float32", "float16", "dynamic", "int8"):
        if mode == "float16" and "float16" not in profile.dtypes:
            continue
        if mode == "dynamic" and profile.delegate == "gpu":
            continue  # hybrid (dynamic-range) kernels are not taken by the GPU delegate: CPU fallback
        rungs.append(Rung(mode, "quantize", mode))
    return rungs


# ------------------------------------------------------------------ hashing / cache


def _array_hash(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """Hash of edgekit's own source: a changed edgekit never reuses an old candidate."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for f in sorted(root.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()


def cache_dir() -> Path:
    root = os.environ.get("EDGEKIT_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "edgekit" / "fit"


# ------------------------------------------------------------------ checks


def check_labels(y: np.ndarray | None, out_shape: tuple[int, ...], metric: Metric, where: str) -> None:
    if y is None:
        raise DataError(f"{where} has no labels (array 'y')", "save eval data with np.savez(path, x=..., y=...)")
    y = np.asarray(y)
    if y.dtype.kind not in "fiub":
        raise DataError(f"{where}: labels have dtype {y.dtype} (must be numeric)")
    if not np.all(np.isfinite(y.astype(np.float64))):
        raise DataError(f"{where}: labels contain NaN or Inf")
    per_sample = tuple(out_shape[1:])
    if metric.name == "top1":
        classes = int(np.prod(per_sample)) if per_sample else 1
        if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
            labels = y.reshape(-1)
            if np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() >= classes:
                raise DataError(
                    f"{where}: class labels must be integers in [0, {classes}) for this model's "
                    f"{classes} outputs (found {labels.min()}..{labels.max()})")
        elif tuple(y.shape[1:]) != per_sample:
            raise DataError(f"{where}: labels have shape {y.shape[1:]} per sample but the model outputs "
                            f"{per_sample}", "give class indices or one-hot rows")
        if len(y) < classes:
            raise DataError(f"{where}: {len(y)} evaluation samples for {classes} classes",
                            "the eval set needs at least one sample per class")
    elif metric.name in ("mse", "mae") and tuple(y.shape[1:]) != per_sample and \
            int(np.prod(y.shape[1:])) != int(np.prod(per_sample)):
        raise DataError(f"{where}: targets have shape {y.shape[1:]} per sample but the model outputs {per_sample}")


# ------------------------------------------------------------------ the search


class _Progress:
    def __init__(self, total: int, label: str, quiet: bool) -> None:
        self.total, self.label, self.quiet = total, label, quiet
        self.tty = sys.stderr.isatty()

    def show(self, i: int, text: str) -> None:
        if self.quiet:
            return
        width = 20
        done = int(width * i / max(self.total, 1))
        line = f"[{'#' * done}{'.' * (width - done)}] {i}/{self.total} {self.label}: {text}"
        if self.tty:
            print("\r" + line.ljust(100)[:140], end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty and not self.quiet:
            print(file=sys.stderr, flush=True)


def fit(
    model: str | os.PathLike[str],
    target: str | TargetProfile,
    eval_data: str,
    calib: str | None = None,
    max_drop: float = 1.0,
    metric: str = "top1",
    goal: str | None = None,
    level: int = 1,
    out_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    use_cache: bool = True,
    quiet: bool = False,
    only: list[str] | None = None,
    input_shape: str | Sequence[int] | None = None,
) -> FitResult:
    t_start = time.perf_counter()
    if not np.isfinite(max_drop) or max_drop < 0:
        raise DataError(f"--max-drop {max_drop} is invalid (must be a number >= 0)")
    profile = target if isinstance(target, TargetProfile) else load_profile(target)
    goal = goal or ("latency" if profile.runtime == "litert" else "size")
    if goal not in GOALS:
        raise DataError(f"--optimize {goal!r} is invalid (must be one of {', '.join(GOALS)})")
    rungs = ladder(profile, level)
    if only:
        known = [r.name for r in rungs]
        unknown = [n for n in only if n not in known]
        if unknown:
            raise DataError(f"--candidates {','.join(unknown)} is not on the {profile.name} ladder",
                            "choose from " + ", ".join(known))
        rungs = [r for r in rungs if r.name in only]
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        from edgekit.codegen.render import check_output

        check_output(out, force)
    met = get_metric(metric)
    model_path = Path(model)
    if model_path.suffix.lower() == ".tflite" and model_path.is_file():
        if profile.runtime == "coreml":
            raise StageError(f"target {profile.name} runs Core ML, which cannot take a .tflite file ({model_path})",
                             "pass the source model (.keras, .h5, SavedModel or .onnx)")
        raise StageError(f"{model_path} is already a .tflite file: fit needs the float source model to "
                         "quantize", "pass the .keras, .h5, SavedModel or .onnx it came from")
    art = intake.load(model_path, input_shape=input_shape)
    try:
        return _fit(art, profile, rungs, eval_data, calib, max_drop, met, goal, out, use_cache, quiet, t_start)
    finally:
        art.cleanup()


def _fit(art: intake.Artifact, profile: TargetProfile, rungs: list[Rung], eval_path: str, calib_path: str | None,
         max_drop: float, met: Metric, goal: str, out: Path | None, use_cache: bool, quiet: bool,
         t_start: float) -> FitResult:

    from edgekit.evaluate import TflmWorker

    worker = TflmWorker().start() if profile.is_tflm else None  # its start-up overlaps the conversions
    try:
        return _fit_inner(art, profile, rungs, eval_path, calib_path, max_drop, met, goal, out, use_cache, quiet,
                          t_start, worker)
    finally:
        if worker is not None:
            worker.close()


def _fit_inner(art: intake.Artifact, profile: TargetProfile, rungs: list[Rung], eval_path: str,
               calib_path: str | None, max_drop: float, met: Metric, goal: str, out: Path | None, use_cache: bool,
               quiet: bool, t_start: float, worker: Any) -> FitResult:
    from edgekit.stages import quantize

    notes: list[str] = list(art.notes)
    shape = quantize.input_shape(art)
    ev = data_mod.load(eval_path, shape)
    if art.keras_model is not None:
        float_tfl: bytes | None = None  # converted only if a rung needs it
        out_shape = (1, *(int(d or 1) for d in art.keras_model.outputs[0].shape[1:]))
    else:
        float_tfl = quantize.convert(art, "float32")
        out_shape = read_graph(float_tfl).output_tensors()[0].shape
    check_labels(ev.y, out_shape, met, ev.source)
    assert ev.y is not None
    if calib_path:
        cal = data_mod.load(calib_path, shape)
        calib_label = f"{cal.source} ({len(cal)} samples)"
    else:
        n = min(len(ev), int(options.CALIB_MAX_SAMPLES.value))
        cal = data_mod.Dataset(ev.x[:n], None, f"first {n} eval samples")
        calib_label = f"first {n} samples of the eval data (no --calib given)"
        notes.append("calibrated on eval samples: pass --calib with separate data for an unbiased figure")
    if art.keras_model is not None:
        baseline = met(ev.y, _keras_outputs(art.keras_model, ev.x))
        baseline_on = "the source Keras model (float32, TensorFlow)"
    else:
        assert float_tfl is not None
        baseline = met(ev.y, run_litert(float_tfl, ev.x))
        baseline_on = "the float32 .tflite (LiteRT)"
    notes.append(f"baseline measured on {baseline_on}")
    key_base = {
        "v": CACHE_VERSION, "model": content_hash(art.source), "target": json.dumps(dict(profile.values),
                                                                                     sort_keys=True, default=str),
        "calib": _array_hash(cal.x), "eval": _array_hash(ev.x, ev.y), "metric": met.name,
        "seed": options.SEED.value, "code": code_hash(),
    }
    progress = _Progress(len(rungs), profile.name, quiet)
    candidates: list[Candidate] = []
    artifacts: dict[str, Path] = {}
    coreml_base: Path | None = None
    work = tempfile.TemporaryDirectory(prefix="edgekit-fit-")
    try:
        for i, rung in enumerate(rungs):
            progress.show(i, f"{rung.name} ...")
            key = hashlib.sha256(json.dumps({**key_base, "rung": asdict(rung)}, sort_keys=True).encode()).hexdigest()
            entry = cache_dir() / key[:2] / key
            cand = _load_cached(entry) if use_cache else None
            if cand is None:
                t0 = time.perf_counter()
                cand = Candidate(rung.name, rung.stage, rung.mode, rung.value)
                try:
                    if rung.stage == "coreml":
                        if coreml_base is None:
                            from edgekit.stages import coreml

                            coreml_base = coreml.convert(art, profile, Path(work.name) / "base.mlpackage")
                        path = _build_coreml(art, profile, rung, coreml_base, Path(work.name), cand, ev, met)
                    else:
                        path = _build_tflite(art, profile, rung, cal, ev, met, Path(work.name), cand, worker)
                    cand.drop = met.drop(baseline, cand.metric) if cand.metric is not None else None
                    cand.within_drop = cand.drop is not None and cand.drop <= max_drop + 1e-9
                except EdgekitError as exc:
                    cand.error = str(exc)
                    path = None
                cand.seconds = round(time.perf_counter() - t0, 3)
                if use_cache:
                    _store_cached(entry, cand, path)
                if path is not None:
                    artifacts[rung.name] = path
            else:
                cand.cached = True
                cand.drop = met.drop(baseline, cand.metric) if cand.metric is not None else None
                cand.within_drop = cand.drop is not None and cand.drop <= max_drop + 1e-9
                if cand.artifact:
                    artifacts[rung.name] = entry / cand.artifact
            candidates.append(cand)
            status = cand.error[:60] if cand.error else (
                f"{cand.flash_bytes:,} B, {met.name} {cand.metric:.3f}" if cand.metric is not None else "")
            progress.show(i + 1, f"{rung.name} {'(cached) ' if cand.cached else ''}{status}")
        progress.close()
        winner = _select(candidates, goal)
        closest = winner or _closest(candidates)
        if profile.runtime == "coreml":
            notes.append("Core ML accuracy on Linux: the same weight compression applied to the source model and "
                         "evaluated with TensorFlow (Core ML cannot run predictions off macOS)"
                         if not _coreml_predicts() else "Core ML accuracy: the .mlpackage itself, run by Core ML")
        result = FitResult(
            model=str(art.source), target=profile.name, metric=met.name, max_drop=max_drop, goal=goal,
            baseline=baseline, candidates=candidates, winner=winner, closest=closest, notes=notes,
            calibration=calib_label, eval_source=ev.source, eval_samples=len(ev),
        )
        result.seconds = time.perf_counter() - t_start
        if out is not None:
            _write_output(result, artifacts, out, profile)
        return result
    finally:
        work.cleanup()


def _keras_outputs(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Float outputs of a Keras model, called directly in batches (no predict() tracing)."""
    return np.concatenate([np.asarray(model(x[i : i + batch], training=False)) for i in range(0, len(x), batch)])


def _coreml_predicts() -> bool:
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


def _build_tflite(art: intake.Artifact, profile: TargetProfile, rung: Rung, cal: data_mod.Dataset,
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


def _build_coreml(art: intake.Artifact, profile: TargetProfile, rung: Rung, base: Path, work: Path,
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
            pred = _keras_outputs(m, ev.x)
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


def _rank_key(goal: str) -> Callable[[Candidate], tuple[float, ...]]:
    def key(c: Candidate) -> tuple[float, ...]:
        lat = c.latency_ms if c.latency_ms is not None else float("inf")
        drop = c.drop if c.drop is not None else float("inf")
        if goal == "latency":
            # latencies within LATENCY_TIE of each other are a tie (host timing noise): then size decides
            bucket = math.floor(math.log(lat) / math.log(1 + LATENCY_TIE)) if 0 < lat < float("inf") else lat
            return (bucket, c.flash_bytes, drop)
        if goal == "ram":
            return (c.ram_bytes, c.flash_bytes, drop)
        return (c.flash_bytes, c.ram_bytes, drop)
    return key


def _select(cands: list[Candidate], goal: str) -> Candidate | None:
    eligible = [c for c in cands if c.eligible]
    return min(eligible, key=_rank_key(goal)) if eligible else None


def _overshoot(c: Candidate) -> float:
    """How far a candidate is from fitting: summed relative overruns (drop counts per point)."""
    total = 0.0
    for b in c.budgets.values():
        if not b["fits"]:
            limit = b["limit"] or 1
            total += (b["used"] - b["limit"]) / limit
    if c.drop is not None and not c.within_drop:
        total += c.drop
    return total


def _closest(cands: list[Candidate]) -> Candidate | None:
    ok = [c for c in cands if not c.error]
    return min(ok, key=_overshoot) if ok else None


# ------------------------------------------------------------------ cache


def _load_cached(entry: Path) -> Candidate | None:
    meta = entry / "candidate.json"
    if not meta.is_file():
        return None
    try:
        raw = json.loads(meta.read_text())
        cand = Candidate(**raw)
    except (ValueError, TypeError):
        return None
    if cand.artifact and not (entry / cand.artifact).exists():
        return None
    return cand


def _store_cached(entry: Path, cand: Candidate, artifact: Path | None) -> None:
    tmp = entry.with_name(entry.name + f".tmp-{os.getpid()}")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        if artifact is not None and cand.artifact:
            if artifact.is_dir():
                shutil.copytree(artifact, tmp / cand.artifact)
            else:
                shutil.copyfile(artifact, tmp / cand.artifact)
        (tmp / "candidate.json").write_text(json.dumps(asdict(cand), indent=1))
        if entry.exists():
            shutil.rmtree(entry)
        tmp.rename(entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a cache that cannot be written is not an error


# ------------------------------------------------------------------ output


def _write_output(result: FitResult, artifacts: dict[str, Path], out: Path, profile: TargetProfile) -> None:
    from edgekit.report.fit_report import render_markdown, render_plot

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        chosen = result.winner or result.closest
        if chosen is not None and chosen.name in artifacts:
            src = artifacts[chosen.name]
            stem = "model" if result.winner else "closest"
            suffix = ".mlpackage" if src.suffix == ".mlpackage" or src.is_dir() else ".tflite"
            dst = tmp / f"{stem}{suffix}"
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copyfile(src, dst)
            result.artifact_path = out / dst.name
        has_plot = render_plot(result, tmp / "candidates.svg")
        (tmp / "report.json").write_text(json.dumps(result.to_dict(), indent=2))
        (tmp / "report.md").write_text(render_markdown(result, profile, has_plot))
        from edgekit.codegen.render import publish

        publish(tmp, out)
        result.out_dir = out
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
