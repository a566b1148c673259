"""`fit`: the smallest/fastest deployable artifact that meets every budget of a target while
losing at most the allowed accuracy, measured on the artifact itself.

The search walks a ladder of candidates from least to most aggressive. Every
candidate is built, measured (flash, RAM, operators, data types) and evaluated
the way it will run (LiteRT, the TFLM host interpreter, or - for Core ML on
Linux - the same weight compression applied to the source model). Candidates
are cached by content hash, so a re-run with the same inputs does no work twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import data as data_mod
from edgekit import intake, options, output
from edgekit._hashing import content_hash
from edgekit.analysis.graph import read_graph
from edgekit.errors import DataError, EdgekitError, StageError
from edgekit.evaluate import Metric, get_metrics, run_litert
from edgekit.fitting import cache
from edgekit.fitting.build import BUILDERS, LATENCY_SOURCES, Job, coreml_predicts, keras_outputs
from edgekit.fitting.ladder import IOS18_MODES_FROM, ios_version, ladder
from edgekit.fitting.level3 import Level3Options, check_options, teacher_of
from edgekit.fitting.level3 import run as run_level3
from edgekit.fitting.measured import Device, check_device, rank
from edgekit.fitting.select import closest, select
from edgekit.fitting.types import GOALS, Candidate, FitResult, Rung
from edgekit.profiles import TargetProfile, load_profile


def check_labels(y: np.ndarray | None, out_shape: tuple[int, ...], metric: Metric | list[Metric], where: str) -> None:
    """Labels fit every metric that needs them (agreement metrics need none): checked before any work."""
    mets = metric if isinstance(metric, list) else [metric]
    need = [m for m in mets if m.reference == "labels"]
    if not need:
        return
    if y is None:
        raise DataError(f"{where} has no labels (array 'y'), which --metric {need[0].name} needs",
                        "save eval data with np.savez(path, x=..., y=...), or use --metric agreement / "
                        "mse-to-float (scored against the float model's own outputs)")
    y = np.asarray(y)
    if y.dtype.kind not in "fiub":
        raise DataError(f"{where}: labels have dtype {y.dtype} (must be numeric)")
    if not np.all(np.isfinite(y.astype(np.float64))):
        raise DataError(f"{where}: labels contain NaN or Inf")
    per_sample = tuple(out_shape[1:])
    for m in need:
        _check_one(y, per_sample, m, where)


def _check_one(y: np.ndarray, per_sample: tuple[int, ...], metric: Metric, where: str) -> None:
    if metric.kind == "classes":
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
        if metric.name == "top1" and len(y) < classes:
            raise DataError(f"{where}: {len(y)} evaluation samples for {classes} classes",
                            "the eval set needs at least one sample per class")
    elif metric.kind == "binary":
        flat = y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)
        labels = y.reshape(-1)
        if not flat or not np.all(np.isin(labels, (0, 1))):
            raise DataError(f"{where}: --metric {metric.name} needs one 0/1 label per sample (1 = positive / "
                            "anomalous)")
        if len(np.unique(labels)) < 2:
            raise DataError(f"{where}: --metric {metric.name} needs both classes (0 and 1) in the labels")
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
    latency: str = "model",
    input_shape: str | Sequence[int] | None = None,
    train: str | None = None,
    device: Device | None = None,
    time_budget: float | None = None,
    jobs: int = 1,
) -> FitResult:
    """Fit ``model`` to ``target``; ``latency`` is what phone candidates are ranked by: ``model`` (the
    deterministic cost model of :mod:`edgekit.analysis.cost`, the default) or ``host`` (LiteRT timed on
    this host; CPU targets only). ``train`` (level 2): data the clustered candidates are fine-tuned on
    (same formats as ``eval_data``; labels optional); level 3 needs it (the original model is the teacher), and
    ``time_budget`` (minutes) and ``jobs`` (parallel fine-tunes) steer its search. ``device`` measures the
    finalists there (:mod:`edgekit.fitting.measured`; Cortex-M candidates are ranked on QEMU by themselves when
    TFLM_ROOT allows)."""
    t_start = time.perf_counter()
    if latency not in LATENCY_SOURCES:
        raise DataError(f"--latency {latency!r} is invalid (must be one of {', '.join(LATENCY_SOURCES)})")
    if not np.isfinite(max_drop) or max_drop < 0:
        raise DataError(f"--max-drop {max_drop} is invalid (must be a number >= 0)")
    profile = target if isinstance(target, TargetProfile) else load_profile(target)
    goal = goal or ("latency" if profile.runtime in ("litert", "coreml") else "size")
    if goal not in GOALS:
        raise DataError(f"--optimize {goal!r} is invalid (must be one of {', '.join(GOALS)})")
    if device is not None:
        check_device(device, profile)
    rungs = ladder(profile, level)
    l3 = Level3Options(train, time_budget, jobs)
    check_options(level, l3)
    if train is not None and level < 2:
        raise DataError(f"--train is used by level 2's clustered candidates, not by --level {level}",
                        "add --level 2, or leave out --train")
    if train is not None and not Path(train).exists():  # before the model is loaded (seconds)
        raise DataError(f"--train: data file {train} does not exist",
                        "pass a .npy, .npz (keys x, y) or an image folder")
    if only:
        known = [r.name for r in rungs]
        unknown = [n for n in only if n not in known]
        if unknown:
            raise DataError(f"--candidates {','.join(unknown)} is not on the {profile.name} ladder",
                            "choose from " + ", ".join(known))
        rungs = [r for r in rungs if r.name in only]
    mets = get_metrics(metric)
    model_path = Path(model)
    if model_path.suffix.lower() == ".tflite" and model_path.is_file():
        if profile.runtime == "coreml":
            raise StageError(f"target {profile.name} runs Core ML, which cannot take a .tflite file ({model_path})",
                             "pass the source model (.keras, .h5, SavedModel or .onnx)")
        raise StageError(f"{model_path} is already a .tflite file: fit needs the float source model to "
                         "quantize", "pass the .keras, .h5, SavedModel or .onnx it came from")
    out: output.Output | None = None
    if out_dir is not None:  # checked, locked and staged before any work starts
        size = model_path.stat().st_size if model_path.is_file() else 0
        out = output.Output(out_dir, force, inputs=[model, eval_data, calib, train], command="fit",
                            expected_bytes=2 * size).open()
    try:
        art = intake.load(model_path, input_shape=input_shape)
        try:
            return _fit(art, profile, rungs, eval_data, calib, max_drop, mets, goal, out, use_cache, quiet, t_start,
                        latency, level, train, device, l3)
        finally:
            art.cleanup()
    finally:
        if out is not None:
            out.close()


def _fit(art: intake.Artifact, profile: TargetProfile, rungs: list[Rung], eval_path: str, calib_path: str | None,
         max_drop: float, mets: list[Metric], goal: str, out: output.Output | None, use_cache: bool, quiet: bool,
         t_start: float, latency: str, level: int = 1, train_path: str | None = None,
         device: Device | None = None, l3: Level3Options | None = None) -> FitResult:

    from edgekit.evaluate import TflmWorker

    worker = TflmWorker().start() if profile.is_tflm else None  # its start-up overlaps the conversions
    try:
        return _fit_inner(art, profile, rungs, eval_path, calib_path, max_drop, mets, goal, out, use_cache, quiet,
                          t_start, worker, latency, level, train_path, device, l3)
    finally:
        if worker is not None:
            worker.close()


def _fit_inner(art: intake.Artifact, profile: TargetProfile, rungs: list[Rung], eval_path: str,
               calib_path: str | None, max_drop: float, mets: list[Metric], goal: str, out: output.Output | None,
               use_cache: bool, quiet: bool, t_start: float, worker: Any, latency: str, level: int = 1,
               train_path: str | None = None, device: Device | None = None,
               l3: Level3Options | None = None) -> FitResult:
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
    met = mets[0]
    check_labels(ev.y, out_shape, mets, ev.source)
    if calib_path:
        cal = data_mod.load(calib_path, shape)
        calib_label = f"{cal.source} ({len(cal)} samples)"
    else:
        n = min(len(ev), int(options.CALIB_MAX_SAMPLES.value))
        cal = data_mod.Dataset(ev.x[:n], None, f"first {n} eval samples")
        calib_label = f"first {n} samples of the eval data (no --calib given)"
        notes.append("calibrated on eval samples: pass --calib with separate data for an unbiased figure")
    train = _load_train(train_path, shape, out_shape, met, rungs, notes)
    if train is not None:
        shared = _shared_rows(train.x, ev.x)
        if shared:
            notes.append(f"{shared} of the {len(ev)} eval samples are also in --train: the fine-tuned candidates' "
                         "accuracy is optimistic (evaluate on data the fine-tune did not see)")
    if art.keras_model is not None:
        float_out = keras_outputs(art.keras_model, ev.x)
        baseline_on = "the source Keras model (float32, TensorFlow)"
    else:
        assert float_tfl is not None
        float_out = run_litert(float_tfl, ev.x)
        baseline_on = "the float32 .tflite (LiteRT)"
    truth = {m.name: float_out if m.reference == "float" else ev.y for m in mets}
    baselines = {m.name: m(t, float_out, ev.x) for m in mets if (t := truth[m.name]) is not None}
    baseline = baselines[met.name]
    notes.append(f"baseline measured on {baseline_on}")
    if any(m.reference == "float" for m in mets):
        notes.append("agreement metrics (" + ", ".join(m.name for m in mets if m.reference == "float")
                     + f") compare each candidate with the float model's own outputs on {baseline_on}")
    key_base = {
        "v": cache.CACHE_VERSION, "model": content_hash(art.source), "target": json.dumps(dict(profile.values),
                                                                                     sort_keys=True, default=str),
        "calib": cache.array_hash(cal.x), "eval": cache.array_hash(ev.x, ev.y),
        "metric": ",".join(m.name for m in mets), "seed": options.SEED.value, "code": cache.code_hash(),
        "latency": latency,
    }
    # a model level 3 cannot change is the one-line error now, before the ladder's minutes
    l3_teacher = teacher_of(art) if level >= 3 and l3 is not None else None
    progress = _Progress(len(rungs), profile.name, quiet)
    candidates: list[Candidate] = []
    not_built: list[str] = []  # why each clustered rung skipped over RAM was not built
    artifacts: dict[str, Path] = {}
    work = tempfile.TemporaryDirectory(prefix="edgekit-fit-")
    job = Job(art, profile, cal, ev, met, Path(work.name), worker, latency, mets=mets, float_ref=float_out,
              train=train)
    # what a clustered rung depends on beyond the shared inputs: the training data and fine-tune settings
    cluster_key = _cluster_key(train) if any(r.stage == "cluster" for r in rungs) else {}
    if latency == "host" and not job.host_timing:
        notes.append(f"--latency host ignored: {profile.name} does not compute on a CPU like this host's; "
                     "ranked by the cost model")
    if level >= 2 and profile.runtime == "coreml" and ios_version(profile) < IOS18_MODES_FROM:
        notes.append(f"level 2 adds no Core ML rung for {profile.name}: per-grouped-channel palettization and "
                     f"4-bit blockwise weights need iOS {IOS18_MODES_FROM} (the profile deploys to "
                     f"{profile.min_deployment_target or 'iOS16'}; see the ios18-ane target)")
    layer_method = ""
    if profile.runtime != "coreml" and art.tflite is None:
        layer_method = _layer_errors(job, key_base, use_cache, notes)
    try:
        for i, rung in enumerate(rungs):
            progress.show(i, f"{rung.name} ...")
            extra = cluster_key if rung.stage == "cluster" else {}
            key = hashlib.sha256(json.dumps({**key_base, **extra, "rung": asdict(rung)}, sort_keys=True).encode()
                                 ).hexdigest()
            entry = cache.cache_dir() / key[:2] / key
            cached_copy = Path(work.name) / f"cached-{rung.name}{'.mlpackage' if rung.stage == 'coreml' else '.tflite'}"
            hopeless = _cluster_over_ram(candidates, profile) if rung.stage == "cluster" else ""
            if hopeless:  # a fine-tune per k that cannot fit: not run, and said so in the row
                candidates.append(Candidate(rung.name, rung.stage, rung.mode, rung.value, level=rung.level,
                                            error="not built: " + hopeless))
                not_built.append(hopeless)
                progress.show(i + 1, f"{rung.name} not built (over RAM)")
                continue
            cand, problem = cache.load_cached(entry, cached_copy) if use_cache else (None, "")
            if problem:
                notes.append(f"cache entry for {rung.name} was not used ({problem}): rebuilt")
            if cand is None:
                t0 = time.perf_counter()
                cand = Candidate(rung.name, rung.stage, rung.mode, rung.value, level=rung.level)
                try:
                    path = BUILDERS[rung.stage](job, rung, cand)
                    cand.drop = met.drop(baseline, cand.metric) if cand.metric is not None else None
                    cand.within_drop = cand.drop is not None and cand.drop <= max_drop + 1e-9
                except EdgekitError as exc:
                    cand.error = str(exc)
                    path = None
                cand.seconds = round(time.perf_counter() - t0, 3)
                if use_cache:
                    cache.store_cached(entry, cand, path)
                if path is not None:
                    artifacts[rung.name] = path
            else:
                cand.cached = True
                cand.drop = met.drop(baseline, cand.metric) if cand.metric is not None else None
                cand.within_drop = cand.drop is not None and cand.drop <= max_drop + 1e-9
                if cand.artifact:
                    artifacts[rung.name] = cached_copy
            candidates.append(cand)
            status = cand.error[:100] if cand.error else (
                f"{cand.flash_bytes:,} B, {met.name} {cand.metric:.3f}" if cand.metric is not None else "")
            progress.show(i + 1, f"{rung.name} {'(cached) ' if cand.cached else ''}{status}")
        progress.close()
        if not_built:
            notes[:] = [n for n in notes if not n.startswith("clustered candidates fine-tuned on ")]
            notes.append(f"{len(not_built)} clustered candidates not built: {not_built[0]}")
        level3_record: dict[str, Any] = {}
        if level >= 3 and l3 is not None:  # architectures changed, each through this ladder (fitting.level3)
            done = run_level3(job, candidates, rungs, key_base, baseline, max_drop, goal, l3, use_cache, t_start,
                              None if quiet else lambda text: progress.show(len(rungs), f"level 3: {text}"),
                              prepared=l3_teacher)
            candidates += done.candidates
            artifacts.update(done.artifacts)
            notes[:] = [n for n in notes if not (n.startswith("--train ") and " not used" in n)]  # level 3 used it
            notes += done.notes
            level3_record = done.search
        # finalists measured on a device (or QEMU) replace the estimate before the winner is chosen
        pool = rank(candidates, artifacts, profile, goal, device, notes, use_cache,
                    say=None if quiet else lambda text: print(text, file=sys.stderr, flush=True))
        winner = select(pool, goal)
        nearest = winner or closest(candidates)
        if profile.runtime == "coreml":
            notes.append("Core ML accuracy on Linux: each package's own compressed weights (decompressed by "
                         "coremltools) put back into the source model and evaluated with TensorFlow (Core ML cannot "
                         "run predictions off macOS)"
                         if not coreml_predicts() else "Core ML accuracy: the .mlpackage itself, run by Core ML")
        notes += _verdict_notes(candidates, job, met, max_drop)
        if any(c.stage == "int4" and not c.error for c in candidates):
            notes.append("INT4 candidates were checked bit-exact on the TFLM host interpreter here; on the device "
                         "CMSIS-NN's s4 kernels read them (tests/integration/test_level2.py runs one bit-exact on "
                         "TFLM + CMSIS-NN under QEMU); `edgekit bench` compares a device's raw output with the host")
        result = FitResult(
            model=str(art.source), target=profile.name, metric=met.name, max_drop=max_drop, goal=goal,
            baseline=baseline, candidates=candidates, winner=winner, closest=nearest, notes=notes,
            calibration=calib_label, eval_source=ev.source, eval_samples=len(ev), level=level,
            metrics=[m.name for m in mets], baselines=baselines,
            layer_errors=[e.to_dict() for e in job.layer_errs or []], layer_error_method=layer_method,
            level3=level3_record,
        )
        result.seconds = time.perf_counter() - t_start
        if out is not None:
            _write_output(result, artifacts, out, profile)
        return result
    finally:
        work.cleanup()


def _load_train(path: str | None, shape: tuple[int, ...], out_shape: tuple[int, ...], met: Metric,
                rungs: list[Rung], notes: list[str]) -> data_mod.Dataset | None:
    """--train, loaded and checked before any work starts; None without it (or when no rung uses it)."""
    if path is None:
        return None
    train = data_mod.load_training(path, shape)
    if not any(r.stage == "cluster" for r in rungs):
        notes.append(f"--train {train.source} not used: no clustered candidate on this ladder (Core ML, the GPU "
                     "delegate or --candidates without cluster*)")
        return None
    from edgekit.fitting.clustered import training_loss

    if training_loss(met, train) != "soft":  # the labels train: they must fit the model and metric
        check_labels(train.y, out_shape, met, f"--train {train.source}")
        notes.append(f"clustered candidates fine-tuned on {train.source} ({len(train)} samples, its labels)")
    else:
        why = "it has no labels" if train.y is None else f"--metric {met.name} does not score them as class labels " \
              "or regression targets"
        notes.append(f"clustered candidates fine-tuned on {train.source} ({len(train)} samples) with the float "
                     f"model's own outputs as targets ({why})")
    return train


def _shared_rows(a: np.ndarray, b: np.ndarray) -> int:
    """How many samples of ``b`` occur (byte for byte) in ``a``."""
    seen = {hashlib.sha256(row.tobytes()).digest() for row in np.ascontiguousarray(a)}
    return sum(hashlib.sha256(row.tobytes()).digest() in seen for row in np.ascontiguousarray(b))


INT8_ACTIVATIONS = {("quantize", "int8"), ("quantize", "int8-per-tensor"), ("int4", "all"), ("int4", "keep"),
                    ("lut", "per-channel")}


def _cluster_over_ram(done: list[Candidate], profile: TargetProfile) -> str:
    """Why a clustered rung cannot fit a TFLM target's RAM, or "": clustering changes the weights (in flash),
    not the activations the arena holds, so its arena is at least the smallest one measured on the int8
    rungs before it. A fine-tune per k spent on a model whose arena is over the budget only delays level 3,
    which changes the activations."""
    if not profile.is_tflm:
        return ""
    arenas = [(c.budgets["ram"]["used"], c.budgets["ram"]["limit"], c.name) for c in done
              if not c.error and "ram" in c.budgets and (c.stage, c.mode) in INT8_ACTIVATIONS]
    if not arenas:
        return ""
    arena, limit, name = min(arenas)
    if arena <= limit:
        return ""
    return (f"clustering changes weights, not activations, and the smallest RAM use of an int8 rung "
            f"({arena:,} B, {name}) is over the {limit:,} B RAM budget; level 3 (pruning) shrinks activations")


def _cluster_key(train: data_mod.Dataset | None) -> dict[str, Any]:
    from edgekit.stages import cluster, cluster_tune

    return {"cluster": {"min_elements": cluster.MIN_ELEMENTS, "iters": cluster.MAX_ITERS},
            "train": None if train is None else {"data": cache.array_hash(train.x, train.y),
                                                 "tune": cluster_tune.settings()}}


def _write_output(result: FitResult, artifacts: dict[str, Path], out: output.Output, profile: TargetProfile) -> None:
    from edgekit.report.fit_report import render_layer_plot, render_markdown, render_plot

    chosen = result.winner or result.closest
    if chosen is not None and chosen.name in artifacts:
        src = artifacts[chosen.name]
        stem = "model" if result.winner else "closest"
        suffix = ".mlpackage" if src.suffix == ".mlpackage" or src.is_dir() else ".tflite"
        out.write(f"{stem}{suffix}", src)
        result.artifact_path = out.out / f"{stem}{suffix}"
    plot = render_plot(result)
    if plot is not None:
        out.write("candidates.svg", plot)
    has_plot = plot is not None
    layer_plot = render_layer_plot(result)
    if layer_plot is not None:
        out.write("layer_error.svg", layer_plot)
    if result.level3:
        from edgekit.report.level3_report import render_pareto

        pareto = render_pareto(result)
        if pareto is not None:
            out.write("level3_pareto.svg", pareto)
    out.write("report.json", json.dumps(result.to_dict(), indent=2))
    out.write("report.md", render_markdown(result, profile, has_plot))
    from edgekit.report.html import fit_html

    out.write("report.html", fit_html(result, profile, plot))
    out.publish()
    result.out_dir = out.out


LAYER_ERROR_METHOD = ("own side-by-side run in LiteRT with all tensors preserved: the int8 model against the "
                      "calibrated float model (same graph and tensor names) on {n} calibration samples; error = "
                      "mean over channels of RMSE / RMS of the float channel, added = error minus its inputs' error")


def keras_layer_names(art: intake.Artifact, int8_model: bytes) -> dict[int, str]:
    """Operator index -> Keras layer name for the weighted operators (conv, dense), matched in order."""
    from edgekit.stages.layer_error import WEIGHTED

    model = art.keras_model
    if model is None:
        return {}
    layers: list[Any] = []

    def walk(layer: Any) -> None:
        subs = getattr(layer, "layers", None)
        if subs:
            for sub in subs:
                walk(sub)
        elif any("kernel" in w.path.split("/")[-1] for w in getattr(layer, "weights", [])):
            layers.append(layer)

    walk(model)
    ops = [layer for layer in read_graph(int8_model).layers if layer.op in WEIGHTED]
    if len(ops) != len(layers):
        return {}
    return {op.index: lay.name for op, lay in zip(ops, layers, strict=True)}


def _layer_errors(job: Job, key_base: dict[str, Any], use_cache: bool, notes: list[str]) -> str:
    """The int8 model's per-layer error (cached like a candidate); sets job.layer_errs and job.layer_names."""
    from edgekit.stages import layer_error

    n = min(layer_error.SAMPLES, len(job.cal))
    method = LAYER_ERROR_METHOD.format(n=n)
    key = hashlib.sha256(json.dumps({**key_base, "layer-errors": 1}, sort_keys=True).encode()).hexdigest()
    path = cache.cache_dir() / cache.LAYER_ERRORS_DIR / f"{key}.json"
    if use_cache and path.is_file():
        try:
            doc = json.loads(path.read_text())
            job.layer_errs = [layer_error.LayerError(**d) for d in doc["layers"]]
            job.layer_names = {int(k): v for k, v in doc["names"].items()}
            cache.touch_file(path)
            return method
        except (OSError, ValueError, TypeError, KeyError):
            pass
    try:
        base = job.int8_reference()
        job.layer_names = keras_layer_names(job.art, base)
        job.layer_errs = layer_error.layer_errors(job.calibrated().model, base, job.cal.x, job.layer_names)
    except EdgekitError as exc:
        notes.append(f"per-layer quantization error not computed: {exc}")
        return ""
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps({"layers": [asdict(e) for e in job.layer_errs],
                                       "names": {str(k): v for k, v in job.layer_names.items()}}))
            tmp.replace(path)
        except OSError:
            pass
    return method


def _verdict_notes(cands: list[Candidate], job: Job, met: Metric, max_drop: float) -> list[str]:
    """One line per int8 candidate that misses --max-drop, naming the worst layers."""
    worst = [e for e in (job.layer_errs or []) if e.added > 0][:3]
    if not worst:
        return []
    names = ", ".join(f"{e.layer} ({e.op}, error {e.error:.3f}, added {e.added:.3f})" for e in worst)
    lines = []
    for c in cands:
        if c.mode in ("int8", "int8-per-tensor") and c.drop is not None and not c.within_drop:
            lines.append(f"{c.name} loses {c.drop:.3f} {met.name} (more than --max-drop {max_drop:g}); worst layers "
                         f"by quantization error: {names}")
    return lines
