"""``fit --level 3``: architectures changed by structured pruning and low-rank factorization, recovered by
distillation from the original model with the user's training data (``--train``), chosen by a black-box
search (:mod:`edgekit.compress.search`), then measured like any candidate: the level-2 ladder runs on every
finalist architecture (conversion, the target's interpreter, every budget, the eval data).

The search's cheap budget estimates scale the original model's own measured int8 figures (flash by the
parameters, the arena by the peak activations, latency by the MACs); only finalists are converted and
measured. A finalist whose int8 candidates lose more than ``--max-drop`` while its float held-out score
is within it gets a quantization-aware fine-tune, and the ladder runs again on that model.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import data as data_mod
from edgekit import intake, options
from edgekit._hashing import content_hash
from edgekit.errors import DataError, EdgekitError
from edgekit.evaluate import Metric
from edgekit.fitting import cache
from edgekit.fitting.build import BUILDERS, Job
from edgekit.fitting.types import Candidate, Rung

HOLDOUT = options.Option("l3_holdout", 0.15, "share of --train held out for early stopping and the search's scores")
HOLDOUT_MAX = 2000  # held-out samples at most
QAT_EPOCHS = 8


@dataclass
class Level3Options:
    train: str | None = None  # --train
    time_budget: float | None = None  # --time-budget, minutes
    jobs: int = 1  # --jobs


@dataclass
class Outcome:
    candidates: list[Candidate] = field(default_factory=list)
    artifacts: dict[str, Path] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def check_options(level: int, opts: Level3Options | None) -> None:
    """Checked before any work starts."""
    opts = opts or Level3Options()
    if level >= 3 and opts.train is None:
        raise DataError("--level 3 needs training data: pass --train x.npz (same formats as --eval; labels optional, "
                        "the original model is the teacher)")
    if opts.time_budget is not None and not (math.isfinite(opts.time_budget) and opts.time_budget > 0):
        raise DataError(f"--time-budget {opts.time_budget} is invalid (must be a number of minutes > 0)")
    if int(opts.jobs) < 1:
        raise DataError(f"--jobs {opts.jobs} is invalid (must be an integer >= 1)")
    if level < 3 and (opts.time_budget is not None or opts.jobs != 1):
        raise DataError("--time-budget and --jobs steer level 3's search", "add --level 3, or leave them out")


def split(train: data_mod.Dataset, seed: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(x, y, x held out, y held out): a fixed random share held out."""
    n = len(train)
    hold = min(HOLDOUT_MAX, max(1, round(n * float(HOLDOUT.value))))
    order = np.random.default_rng(seed).permutation(n)
    tr, ho = order[hold:], order[:hold]
    y = None if train.y is None else np.asarray(train.y)
    return train.x[tr], None if y is None else y[tr], train.x[ho], None if y is None else y[ho]


def held_out_metric(met: Metric, train: data_mod.Dataset, is_classifier: bool) -> tuple[str, str, str]:
    """(metric name, reference, why) for the search's held-out score: the governing metric when the
    training data can score it, else agreement with the original model (classifiers) or mse-to-float."""
    if met.reference == "float" or (train.y is not None and met.name in ("top1", "top5", "f1", "mse", "mae")):
        return met.name, met.reference, f"{met.name} (the governing metric)"
    fallback = "agreement" if is_classifier else "mse-to-float"
    why = "it has no labels" if train.y is None else f"--metric {met.name} is not scored on training labels here"
    return fallback, "float", f"{fallback} with the original model ({why})"


def teacher_of(art: Any) -> tuple[Any, str]:
    """(the Keras model level 3 changes, a note when it was rebuilt from the float graph); raises the one-line
    StageError of a model level 3 cannot work on (a subclassed model, an operator the rebuild does not know)
    - called before the ladder, so that error comes before minutes of level-1/2 work, not after them."""
    from edgekit.compress import lift
    from edgekit.compress.kgraph import KGraph

    teacher, note = art.keras_model, ""
    if teacher is None:
        teacher = lift.from_artifact(art)
        note = ("level 3 works on a Keras model rebuilt from the converted float graph "
                f"({lift.describe(teacher)}); its outputs match the float .tflite's")
    KGraph(teacher)
    return teacher, note


def run(job: Job, base: list[Candidate], rungs: list[Rung], key_base: dict[str, Any], baseline: float,
        max_drop: float, goal: str, opts: Level3Options, use_cache: bool, t_start: float,
        progress: Any = None, prepared: tuple[Any, str] | None = None) -> Outcome:
    """The level-3 candidates (every finalist architecture through ``rungs``) and the search's record."""
    from edgekit.compress import executor as executor_mod
    from edgekit.compress import search as search_mod
    from edgekit.compress.prune import logits_of
    from edgekit.stages import quantize

    out = Outcome()
    teacher, note = prepared or teacher_of(job.art)
    if note:
        out.notes.append(note)
    train = job.train
    assert opts.train is not None
    if train is None:
        train = data_mod.load_training(opts.train, quantize.input_shape(job.art))
    seed = int(options.SEED.value)
    x, y, xv, yv = split(train, seed)
    _, kind = logits_of(teacher)
    metric, reference, why = held_out_metric(job.met, train, kind != "raw")
    deadline_fit = None if opts.time_budget is None else t_start + 60.0 * opts.time_budget
    elapsed_base = time.perf_counter() - t_start
    reserve = 0.0
    if deadline_fit is not None:  # time for measuring the finalists after the search
        left = deadline_fit - time.perf_counter()
        # the original's ladder took elapsed_base; a finalist's runs the same rungs but the clustered ones, and
        # the second finalist is measured only when the first has no eligible artifact
        reserve = min(max(0.0, left) / 2, 1.2 * elapsed_base)
    deadline = None if deadline_fit is None else time.monotonic() + (deadline_fit - time.perf_counter()) - reserve
    ref = _reference(base, job)
    estimate = _estimator(job, teacher, ref, goal)
    cfg = search_mod.SearchConfig(metric=metric, reference=reference, max_drop=max_drop, goal=goal, deadline=deadline,
                                  seed=seed)
    cfg.distill.seed = seed
    # what a fine-tune's result depends on (model, target, data, metric); not --max-drop or --optimize, which
    # only choose among the results: changing them reuses every finished fine-tune
    skey = hashlib.sha256(json.dumps({**{k: v for k, v in key_base.items() if k != "eval"}, "train":
                                      cache.array_hash(train.x, train.y), "holdout": HOLDOUT.value,
                                      "search": metric + reference, "level3": 1}, sort_keys=True,
                                     default=str).encode()).hexdigest()
    root = cache.cache_dir() / cache.LEVEL3_DIR if use_cache else None
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="l3-", dir=job.work))
    ex = executor_mod.LocalExecutor(opts.jobs, work / "logs")
    try:
        s = search_mod.Search(teacher, search_mod.SearchData(x, y, xv, yv), cfg, estimate, ex, work, root, skey,
                              progress=progress)
        result = s.run()
        out.notes += [f"level 3: {n}" for n in result.notes]
        out.notes.append(f"level 3: held-out score {why} on {len(xv)} samples of {train.source}; "
                         f"{len(x)} samples train (distillation: T={cfg.distill.temperature:g}, "
                         f"alpha={cfg.distill.alpha:g}{', hard labels' if y is not None else ', no labels'})")
        for trial in result.finalists:
            if any(c.eligible for c in out.candidates):
                break  # the next finalist is only a fallback for one whose artifacts all miss
            if deadline_fit is not None and time.perf_counter() > deadline_fit and out.candidates:
                out.notes.append(f"level 3: finalist {trial.name} not measured (--time-budget)")
                continue
            cands = _measure(job, trial, rungs, key_base, baseline, max_drop, use_cache, out, teacher)
            if _needs_qat(cands, trial, max_drop) and not s.out_of_time():
                qat_cfg = search_mod.distill.DistillConfig(**{**cfg.distill.__dict__, "qat": True,
                                                              "epochs": QAT_EPOCHS, "deadline": None})
                qtrial = search_mod.Trial(trial.name + "q", trial.spec)
                qtrial.goal_value = trial.goal_value
                s.finetune([qtrial], qat_cfg, init={qtrial.name: trial.model_path})
                s.trials.append(qtrial)
                qtrial.status = "quantization-aware fine-tune: " + qtrial.status
                if qtrial.model_path:
                    _measure(job, qtrial, rungs, key_base, baseline, max_drop, use_cache, out, teacher)
        out.search = result.to_dict()
        out.search.update({"metric": metric, "reference": reference, "why": why, "holdout": len(xv),
                           "train": len(x), "jobs": opts.jobs, "time_budget_minutes": opts.time_budget,
                           "goal": goal, "reference_candidate": ref.name if ref else None,
                           "trials": [t.to_dict() for t in s.trials]})
        if result.stopped or s.stopped:
            out.notes.append("level 3: stopped at --time-budget; best so far reported")
    finally:
        ex.close()
    return out


def _reference(base: list[Candidate], job: Job) -> Candidate | None:
    """The original model's measured candidate the estimates scale from (int8 where there is one)."""
    ok = [c for c in base if not c.error and c.level == 1 and c.flash_bytes]
    for name in ("int8", "int8-per-tensor", "fp16", "float32"):
        for c in ok:
            if c.name == name:
                return c
    return ok[0] if ok else None


def _estimator(job: Job, teacher: Any, ref: Candidate | None, goal: str) -> Any:
    """Budgets of a candidate architecture from its graph cost, scaled from the original's measured ones."""
    from edgekit.compress import cost

    c0 = cost.estimate(teacher)
    bits = 4 if job.profile.runtime != "coreml" else 2  # the smallest weights the level-2 ladder writes
    budgets = ref.budgets if ref is not None else {}

    def estimate(c: Any) -> tuple[dict[str, dict[str, Any]], float]:
        est: dict[str, dict[str, Any]] = {}
        flash_ref = budgets.get("flash", {}).get("used") or c0.params
        overhead = max(0, flash_ref - c0.params) if ref is not None and ref.stage != "coreml" else flash_ref * 0.05
        flash8 = c.params + overhead
        if "flash" in budgets:
            smallest = c.params * bits / 8 + overhead
            est["flash"] = {"limit": budgets["flash"]["limit"], "estimate": round(smallest), "fits":
                            smallest <= budgets["flash"]["limit"]}
        ram = None
        if "ram" in budgets and c0.peak_activations:
            ram = budgets["ram"]["used"] * c.peak_activations / c0.peak_activations
            est["ram"] = {"limit": budgets["ram"]["limit"], "estimate": round(ram),
                          "fits": ram <= budgets["ram"]["limit"]}
        lat = None
        if "latency" in budgets and c0.macs:
            lat = budgets["latency"]["used"] * c.macs / c0.macs
            est["latency"] = {"limit": budgets["latency"]["limit"], "estimate": round(lat, 4),
                              "fits": lat <= budgets["latency"]["limit"]}
        value = {"size": flash8, "ram": ram if ram is not None else c.peak_activations,
                 "latency": lat if lat is not None else c.macs}[goal]
        return est, float(value)

    return estimate


def _needs_qat(cands: list[Candidate], trial: Any, max_drop: float) -> bool:
    ints = [c for c in cands if c.mode in ("int8", "int8-per-tensor") and not c.error and c.drop is not None]
    return bool(ints) and not any(c.within_drop for c in ints) and trial.tuned_drop is not None and \
        trial.tuned_drop <= max_drop


def _measure(job: Job, trial: Any, rungs: list[Rung], key_base: dict[str, Any], baseline: float, max_drop: float,
             use_cache: bool, out: Outcome, teacher: Any) -> list[Candidate]:
    """The ladder on one finalist architecture; its candidates are named ``<trial>-<rung>``."""
    from edgekit._tf import keras
    from edgekit.compress import cost
    from edgekit.fitting.search import _layer_errors

    path = Path(trial.model_path)
    model = keras.models.load_model(path, compile=False)
    art = intake.Artifact(source=path, fmt="keras", keras_model=model)
    sub = Job(art, job.profile, job.cal, job.ev, job.met, job.work, job.worker, job.latency, mets=job.mets,
              float_ref=job.float_ref, train=None)
    fkey = {**key_base, "model": content_hash(path), "level3": trial.name}
    notes: list[str] = []
    if job.profile.runtime != "coreml":
        _layer_errors(sub, fkey, use_cache, notes)
    c0, c1 = cost.estimate(teacher), cost.estimate(model)
    detail = (f"level 3 {trial.name}: {trial.spec.label()}; parameters {c0.params:,} -> {c1.params:,}, MACs "
              f"{c0.macs:,} -> {c1.macs:,}; distilled from the original (held-out drop "
              f"{trial.tuned_drop:.2f})")
    made = []
    for rung in rungs:
        if rung.stage == "cluster":
            continue  # clustering needs its own fine-tune per k; level 3 already fine-tunes the whole model
        name = f"{trial.name}-{rung.name}"
        key = hashlib.sha256(json.dumps({**fkey, "rung": asdict(rung)}, sort_keys=True, default=str).encode()
                             ).hexdigest()
        entry = cache.cache_dir() / key[:2] / key
        suffix = ".mlpackage" if rung.stage == "coreml" else ".tflite"
        copy = job.work / f"cached-{name}{suffix}"
        cand, _problem = cache.load_cached(entry, copy) if use_cache else (None, "")
        artifact: Path | None = None
        if cand is None:
            t0 = time.perf_counter()
            cand = Candidate(name, rung.stage, rung.mode, rung.value, level=3)
            try:
                built = BUILDERS[rung.stage](sub, Rung(name, rung.stage, rung.mode, rung.value, 3), cand)
                artifact = built
            except EdgekitError as exc:
                cand.error = str(exc)
            cand.detail = detail + ("; " + cand.detail if cand.detail else "")
            cand.saved = {f"level 3 architecture: {c0.params - c1.params:,} fewer parameters (float32 bytes)":
                          4 * (c0.params - c1.params), **cand.saved}
            cand.seconds = round(time.perf_counter() - t0, 3)
            if use_cache:
                cache.store_cached(entry, cand, artifact)
        else:
            cand.cached = True
            artifact = copy if cand.artifact else None
        cand.drop = job.met.drop(baseline, cand.metric) if cand.metric is not None else None
        cand.within_drop = cand.drop is not None and cand.drop <= max_drop + 1e-9
        if artifact is not None:
            out.artifacts[name] = artifact
        out.candidates.append(cand)
        made.append(cand)
    art.cleanup()
    return made
