"""The level-3 black-box search over per-group pruning ratios and low-rank energies.

1. Cheap proxies, in this process, no training: each candidate is built (pruned, factorized, BatchNorm
   statistics re-estimated), its parameters, MACs and peak activations are counted from the graph, its
   budgets estimated (the caller scales the original model's measured figures), and - when the estimate
   fits - its score on the held-out part of the training data taken as it is. Candidates: when the RAM
   estimate of the original is over, the groups alive at the activation peak alone pruned until it fits;
   uniform ratios, ratios weighted by each group's sensitivity (the proxy drop when that group alone loses
   half its channels, measured by probes), seeded random perturbations of both, each with and without
   low-rank factorization; every one RAM-repaired (the groups at its peak pruned harder until it fits).
2. Fine-tunes (distillation, in worker processes through an :class:`Executor`) only for the promising:
   the proxy Pareto front (estimated goal value vs proxy score) among the candidates whose estimates fit,
   in rounds that bisect between the smallest candidate that recovers within ``max_drop`` and the
   smallest that does not.
3. Finalists: the fine-tuned candidates within ``max_drop`` on the held-out data, smallest goal first; the
   caller measures them on the artifact (conversion, the level-2 ladder, the target's interpreter).

Everything is deterministic for a seed, so an interrupted search replays the same decisions: proxies and
finished fine-tunes come back from the cache (a fine-tune cut short by the deadline is not "finished").
The search never starts work after its deadline; running fine-tunes stop at the end of their epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.compress import candidate, cost, distill, prune
from edgekit.compress.candidate import Spec
from edgekit.compress.executor import Executor
from edgekit.compress.kgraph import KGraph

UNIFORM = (0.25, 0.4, 0.5, 0.6, 0.7, 0.8, 0.875)
ENERGIES = (0.0, 0.9)
RANDOM_CANDIDATES = 6
MAX_SENSITIVITY_GROUPS = 48
PROXY_SAMPLES = 300  # held-out samples a proxy is scored on (the ranking only needs a rough score)
PROXY_SHARE = 0.35  # of the search time, when there is a deadline
MAX_FINETUNES = 8
FINALISTS = 2
# a RAM repair aims this far under the limit: the estimate scales the measured arena by the peak activations,
# and what does not scale with them (the input, scratch buffers, per-channel quantization parameters) made a
# 50%-pruned MobileNetV2's measured arena 4.9% larger than estimated (166,704 B against 158,872 B)
REPAIR_TARGET = 0.95
PROBE = "probe"  # a sensitivity probe's origin: one group at half its channels, scored whatever its size
CANCEL_GRACE = 60.0  # seconds running fine-tunes get after the deadline to finish their epoch and save


@dataclass
class SearchData:
    """Training data split for the search: ``x``/``y`` train, ``xv``/``yv`` held out (labels optional)."""

    x: np.ndarray
    y: np.ndarray | None
    xv: np.ndarray
    yv: np.ndarray | None


@dataclass
class SearchConfig:
    metric: str = "agreement"  # the held-out score (a metric name of edgekit.evaluate)
    reference: str = "float"  # labels | float: what the metric compares with
    max_drop: float = 1.0
    goal: str = "size"
    deadline: float | None = None  # time.monotonic()
    distill: distill.DistillConfig = field(default_factory=distill.DistillConfig)
    seed: int = 0
    criteria: tuple[str, ...] = ("l1",)
    max_finetunes: int = MAX_FINETUNES
    uniform: tuple[float, ...] = UNIFORM
    energies: tuple[float, ...] = ENERGIES
    random_candidates: int = RANDOM_CANDIDATES
    sensitivity: bool = True


@dataclass
class Trial:
    name: str
    spec: Spec
    params: int = 0
    macs: int = 0
    peak_activations: int = 0
    estimates: dict[str, dict[str, Any]] = field(default_factory=dict)  # budget -> {limit, estimate, fits}
    fits_estimate: bool = False
    goal_value: float = math.inf
    proxy_score: float | None = None
    proxy_drop: float | None = None
    tuned_score: float | None = None
    tuned_drop: float | None = None
    status: str = "proxy"
    model_path: str = ""
    cached: bool = False
    seconds: float = 0.0
    distill: dict[str, Any] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    factors: list[dict[str, Any]] = field(default_factory=list)
    front: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec.to_dict(), "label": self.spec.label(), "params": self.params,
                "macs": self.macs, "peak_activations": self.peak_activations, "estimates": self.estimates,
                "fits_estimate": self.fits_estimate,
                "goal_value": None if math.isinf(self.goal_value) else self.goal_value,
                "proxy_score": self.proxy_score, "proxy_drop": self.proxy_drop, "tuned_score": self.tuned_score,
                "tuned_drop": self.tuned_drop, "status": self.status, "cached": self.cached,
                "seconds": round(self.seconds, 2), "distill": self.distill, "kept": self.kept,
                "factors": self.factors, "front": self.front}


@dataclass
class SearchResult:
    baseline_score: float
    trials: list[Trial]
    finalists: list[Trial]
    stopped: str  # "" | "time budget"
    notes: list[str]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"baseline_score": self.baseline_score, "stopped": self.stopped, "notes": self.notes,
                "finalists": [t.name for t in self.finalists], "seconds": round(self.seconds, 2),
                "trials": [t.to_dict() for t in self.trials]}


# estimate(Cost) -> ({budget: {"limit", "estimate", "fits"}}, goal value)
Estimator = Callable[[cost.Cost], tuple[dict[str, dict[str, Any]], float]]


def frozen_groups(g: KGraph, most: int = 8) -> list[str]:
    """The groups with producers that cannot be pruned for a reason other than being the model's input or
    output, as "layer, ...: reason" lines (at most ``most``, then how many more)."""
    lines = [f"{', '.join(grp.producers[:3])}{' ...' if len(grp.producers) > 3 else ''}: {grp.frozen}"
             for grp in g.groups.values() if grp.producers and grp.frozen and grp.frozen not in
             ("model output", "model input")]
    return lines[:most] + ([f"{len(lines) - most} more"] if len(lines) > most else [])


class Search:
    def __init__(self, teacher: Any, data: SearchData, cfg: SearchConfig, estimate: Estimator,
                 executor: Executor | None, work: Path, cache_root: Path | None, search_key: str,
                 progress: Callable[[str], None] | None = None) -> None:
        self.teacher, self.data, self.cfg, self.estimate = teacher, data, cfg, estimate
        self.executor, self.work, self.cache_root, self.key = executor, work, cache_root, search_key
        self.progress = progress or (lambda _s: None)
        self.g = KGraph(teacher)
        self.groups = candidate.groups_by_key(self.g)
        self.trials: list[Trial] = []
        self.by_key: dict[str, Trial] = {}
        self.notes: list[str] = []
        kept = frozen_groups(self.g)
        if kept:
            self.notes.append("channel groups kept whole (the pruner cannot follow them): " + "; ".join(kept))
        self.stopped = ""
        self.scores: dict[str, dict[int, np.ndarray]] = {}
        n = min(len(data.xv), PROXY_SAMPLES)
        self.xv = data.xv[:n]
        from edgekit.compress.worker import score_fn

        self.teacher_v = distill.predict(teacher, data.xv)
        truth = data.yv if cfg.reference == "labels" else self.teacher_v
        assert truth is not None
        self.score_full = score_fn(cfg.metric, truth)
        self.score_proxy = score_fn(cfg.metric, truth[:n])
        self.baseline = float(self.score_full(self.teacher_v))
        self.baseline_proxy = float(self.score_proxy(self.teacher_v[:n]))
        self.proxy_cache = self._load_proxy_cache()
        self.proxy_deadline: float | None = None
        self.proxies_cut = False

    # ------------------------------------------------------------ helpers

    def out_of_time(self) -> bool:
        if self.cfg.deadline is not None and time.monotonic() >= self.cfg.deadline:
            self.stopped = "time budget"
            return True
        return False

    def _importance(self, criterion: str) -> dict[int, np.ndarray]:
        if criterion not in self.scores:
            x = self.data.x[: candidate.IMPORTANCE_SAMPLES]
            y = None if self.data.y is None else self.data.y[: candidate.IMPORTANCE_SAMPLES]
            self.scores[criterion] = prune.importance(self.g, criterion, x, y)
        return self.scores[criterion]

    def _proxy_path(self) -> Path | None:
        return None if self.cache_root is None else self.cache_root / f"proxies-{self.key}.json"

    def _load_proxy_cache(self) -> dict[str, Any]:
        path = self._proxy_path()
        if path is None or not path.is_file():
            return {}
        try:
            doc = json.loads(path.read_text())
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_proxy_cache(self) -> None:
        path = self._proxy_path()
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(self.proxy_cache))
            tmp.replace(path)
        except OSError:
            pass

    # ------------------------------------------------------------ proxies

    def repair(self, spec: Spec) -> Spec:
        """``spec`` with the groups alive at the activation peak pruned harder (+0.1 a step, at most 0.9) until
        the RAM estimate fits: counted from the graph with the kept channels, nothing built."""
        if not spec.ratios or spec.origin == PROBE:
            return spec
        ratios = dict(spec.ratios)
        changed = False
        for _ in range(24):  # a graph count each; from no pruning, 9 steps take a group to 0.9
            counts = prune.keep_counts(self.g, {self.groups[k].gid: r for k, r in ratios.items() if k in self.groups})
            peak, alive = cost.peak(self.g, counts)
            est, _goal = self.estimate(cost.Cost(0, 0, peak))
            if "ram" not in est or est["ram"]["estimate"] <= REPAIR_TARGET * est["ram"]["limit"]:
                break
            keys = [k for k, grp in self.groups.items() if grp.gid in alive and ratios.get(k, 0.0) < 0.9]
            if not keys:
                break
            for k in keys:
                ratios[k] = min(0.9, round(ratios.get(k, 0.0) + 0.1, 4))
            changed = True
        if not changed:
            return spec
        return Spec(tuple(sorted((k, r) for k, r in ratios.items() if r > 0)), spec.criterion, spec.energy,
                    spec.origin + " + RAM repair")

    def proxy(self, spec: Spec, score: bool = True) -> Trial:
        """Build ``spec``, count its cost, estimate its budgets and (when they fit) score it untrained."""
        spec = self.repair(spec)
        key = spec.key()
        if key in self.by_key:
            return self.by_key[key]
        t0 = time.monotonic()
        trial = Trial(f"c{len(self.trials) + 1:02d}", spec)
        hit = self.proxy_cache.get(key)
        if hit is not None and (hit.get("score") is not None or not score or
                                (not hit.get("fits") and spec.origin != PROBE)):
            c = cost.Cost(int(hit["params"]), int(hit["macs"]), int(hit["peak"]))
            proxy_score = hit.get("score")
            trial.kept = {str(k): int(v) for k, v in hit.get("kept", {}).items()}
            trial.cached = True
        else:
            try:
                built = candidate.build(self.teacher, spec, self.data.x, self.data.y, self.g,
                                        self._importance(spec.criterion) if spec.ratios else None)
                c = cost.estimate(built.model)
                est, _goal = self.estimate(c)
                fits = all(b["fits"] for b in est.values())
                wanted = score and (fits or spec.origin == PROBE)  # a probe is scored whatever its size
                proxy_score = float(self.score_proxy(distill.predict(built.model, self.xv))) if wanted else None
            except Exception as exc:  # one architecture Keras cannot build is one failed candidate, not the fit
                first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
                trial.status = f"failed: {type(exc).__name__}" + (f": {first}" if first else "")
                trial.seconds = time.monotonic() - t0
                if not any(n.startswith("some candidates failed") for n in self.notes):
                    self.notes.append("some candidates failed to build (see their status); the search went on "
                                      "without them")
                self.trials.append(trial)
                self.by_key[key] = trial
                return trial
            trial.kept = built.kept
            trial.factors = [f.__dict__ for f in built.factors]
            self.proxy_cache[key] = {"params": c.params, "macs": c.macs, "peak": c.peak_activations,
                                     "score": proxy_score, "fits": fits, "kept": trial.kept}
        trial.params, trial.macs, trial.peak_activations = c.params, c.macs, c.peak_activations
        trial.estimates, trial.goal_value = self.estimate(c)
        trial.fits_estimate = all(b["fits"] for b in trial.estimates.values())
        if proxy_score is not None:
            trial.proxy_score = float(proxy_score)
            trial.proxy_drop = self.baseline_proxy - trial.proxy_score
        if not trial.fits_estimate:
            trial.status = "over budget (estimate)"
        trial.seconds = time.monotonic() - t0
        self.trials.append(trial)
        self.by_key[key] = trial
        return trial

    def _ratios(self, weights: dict[str, float], r: float) -> tuple[tuple[str, float], ...]:
        return tuple(sorted((k, float(np.clip(r * w, 0.0, 0.95))) for k, w in weights.items()))

    def sensitivity(self) -> dict[str, float]:
        """Group key -> proxy drop when that group alone loses half its channels (largest groups first when
        there are more than MAX_SENSITIVITY_GROUPS)."""
        keys = sorted(self.groups, key=lambda k: -self.groups[k].size)[:MAX_SENSITIVITY_GROUPS]
        out: dict[str, float] = {}
        for k in keys:
            if self._proxy_time_up():
                break
            t = self.proxy(Spec(((k, 0.5),), self.cfg.criteria[0], 0.0, PROBE), score=True)
            if t.proxy_drop is not None:
                out[k] = max(t.proxy_drop, 0.0)
            t.status = "sensitivity probe" if t.fits_estimate else t.status
        return out

    def _proxy_time_up(self) -> bool:
        """The proxies' share of the search time is spent (or the deadline passed)."""
        if self.out_of_time():
            return True
        if self.proxy_deadline is not None and time.monotonic() >= self.proxy_deadline:
            if not self.proxies_cut:
                self.proxies_cut = True
                self.notes.append(f"proxies stopped after {len(self.trials)} candidates: their share "
                                  f"({PROXY_SHARE:.0%}) of the search time was spent")
            return True
        return False

    def _affordable(self, count: int) -> bool:
        """Whether ``count`` more proxies fit in the proxies' time, at the pace of those built so far."""
        if self.proxy_deadline is None or not self.trials:
            return True
        pace = sum(t.seconds for t in self.trials) / len(self.trials)
        return time.monotonic() + count * pace < self.proxy_deadline - len(self.cfg.uniform) * pace

    def proxies(self) -> None:
        keys = sorted(self.groups)
        uniform = dict.fromkeys(keys, 1.0)

        def sweep(crit: str, name: str, weights: dict[str, float], energy: float) -> bool:
            for r in self.cfg.uniform:
                if self._proxy_time_up():
                    return False
                self.proxy(Spec(self._ratios(weights, r) if keys else (), crit, energy, name))
                self.progress(f"proxy {len(self.trials)}")
                if not keys:
                    break
            return True

        # over RAM: the groups at the activation peak alone, pruned (by the repair) until the estimate fits -
        # the least change that can fit, where the activations and not the weights are what is too large
        est, _goal = self.estimate(cost.Cost(0, 0, cost.peak(self.g)[0]))
        if keys and "ram" in est and not est["ram"]["fits"]:
            self.proxy(Spec(tuple((k, 0.0) for k in keys), self.cfg.criteria[0], self.cfg.energies[0], "peak"))
            self.progress(f"proxy {len(self.trials)}")
        # uniform ratios: the cheapest informative sweep, and the pace of a proxy on this model
        if not sweep(self.cfg.criteria[0], "uniform", uniform, self.cfg.energies[0]):
            return self._save_proxy_cache()
        schemes: list[tuple[str, dict[str, float]]] = [("uniform", uniform)]
        if self.cfg.sensitivity and keys:
            if self._affordable(min(len(keys), MAX_SENSITIVITY_GROUPS)):
                sens = self.sensitivity()
                if sens:
                    # less sensitive groups lose more: weight ~ 1/sqrt(drop), normalized to a mean of 1
                    med = float(np.median(list(sens.values())))
                    raw = {k: 1.0 / math.sqrt(sens.get(k, med) + 0.5) for k in keys}
                    mean = float(np.mean(list(raw.values())))
                    schemes.append(("sensitivity", {k: v / mean for k, v in raw.items()}))
            else:
                self.notes.append(f"no per-group sensitivity probes: {len(keys)} groups would take more than the "
                                  "proxies' share of --time-budget at this model's pace")
        rng = np.random.default_rng(self.cfg.seed)
        for crit in self.cfg.criteria:
            for energy in self.cfg.energies:
                for name, weights in schemes:
                    if (crit, name, energy) == (self.cfg.criteria[0], "uniform", self.cfg.energies[0]):
                        continue  # swept above
                    if not sweep(crit, name, weights, energy):
                        return self._save_proxy_cache()
                    if not keys:
                        break
        if keys:  # seeded random perturbations around the schemes
            for i in range(self.cfg.random_candidates):
                if self._proxy_time_up():
                    break
                name, weights = schemes[i % len(schemes)]
                r = float(rng.choice(self.cfg.uniform))
                noisy = {k: w * float(np.exp(rng.normal(0, 0.35))) for k, w in weights.items()}
                energy = float(rng.choice(self.cfg.energies))
                self.proxy(Spec(self._ratios(noisy, r), self.cfg.criteria[0], energy, f"random ({name})"))
                self.progress(f"proxy {len(self.trials)}")
        return self._save_proxy_cache()

    # ------------------------------------------------------------ front and fine-tunes

    def front(self) -> list[Trial]:
        """Candidates whose estimates fit, not dominated in (goal value, proxy score); smallest goal first."""
        ok = [t for t in self.trials if t.fits_estimate and t.proxy_score is not None and t.spec.origin != PROBE]
        ok.sort(key=lambda t: (t.goal_value, -(t.proxy_score or 0)))
        out: list[Trial] = []
        best = -math.inf
        for t in ok:
            if t.proxy_score is not None and t.proxy_score > best + 1e-9:
                out.append(t)
                best = t.proxy_score
        for t in out:
            t.front = True
        return out

    def _task_dir(self, trial: Trial, cfg: distill.DistillConfig, init: str = "") -> Path:
        body = json.dumps({"search": self.key, "spec": trial.spec.key(), "init": init,
                           "distill": {k: v for k, v in cfg.__dict__.items() if k != "deadline"}}, sort_keys=True)
        digest = hashlib.sha256(body.encode()).hexdigest()
        root = self.cache_root if self.cache_root is not None else self.work / "tasks"
        return root / digest[:2] / digest

    def _write_task(self, folder: Path, trial: Trial, cfg: distill.DistillConfig, init: str = "") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in ("result.json", "model.keras"):
            (folder / stale).unlink(missing_ok=True)
        doc_cfg: dict[str, Any] = {k: v for k, v in cfg.__dict__.items() if k != "deadline"}
        if self.cfg.deadline is not None:
            doc_cfg["deadline_unix"] = time.time() + (self.cfg.deadline - time.monotonic())
        threads = getattr(self.executor, "threads", 0)
        task = {"teacher": str(self.work / "teacher.keras"), "data": str(self.work / "train.npz"),
                "kind": self.kind, "metric": self.cfg.metric, "reference": self.cfg.reference,
                "spec": trial.spec.to_dict(), "distill": doc_cfg, "threads": threads, "init": init}
        (folder / "task.json").write_text(json.dumps(task, indent=1))

    def prepare_workers(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.teacher.save(self.work / "teacher.keras")
        targets, self.kind = distill.teacher_targets(self.teacher, self.data.x)
        arrays = {"x": self.data.x, "t": targets, "xv": self.data.xv, "tv": self.teacher_v}
        if self.data.y is not None:
            arrays["y"] = self.data.y
        if self.data.yv is not None:
            arrays["yv"] = self.data.yv
        np.savez(self.work / "train.npz", **arrays)  # type: ignore[arg-type]

    @staticmethod
    def finished(folder: Path) -> dict[str, Any] | None:
        """A finished fine-tune's result (one the deadline did not cut short), or None."""
        try:
            doc = json.loads((folder / "result.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or not doc.get("ok"):
            return None
        if doc.get("distill", {}).get("stopped") == "deadline" or not (folder / "model.keras").is_file():
            return None
        return doc

    def finetune(self, trials: list[Trial], cfg: distill.DistillConfig | None = None, init: dict[str, str] | None
                 = None) -> None:
        """Fine-tune ``trials`` (cached ones come back at once), until done or the deadline."""
        cfg = cfg or self.cfg.distill
        init = init or {}
        pending: dict[Path, Trial] = {}
        for t in trials:
            folder = self._task_dir(t, cfg, init.get(t.name, ""))
            doc = self.finished(folder)
            if doc is not None:
                self._record(t, folder, doc, cached=True)
                try:
                    os.utime(folder / "task.json")  # recently used (the cache's size limit drops the oldest)
                except OSError:
                    pass
                continue
            if self.out_of_time():
                t.status = "not fine-tuned (time budget)"
                continue
            assert self.executor is not None
            self._write_task(folder, t, cfg, init.get(t.name, ""))
            t.status = "fine-tuning"
            pending[folder] = t
            self.executor.submit(folder)
        while pending:
            assert self.executor is not None
            limit = None if self.cfg.deadline is None else self.cfg.deadline + CANCEL_GRACE - time.monotonic()
            if limit is not None and limit <= 0:
                for folder in self.executor.cancel():
                    if folder in pending:
                        pending.pop(folder).status = "cancelled (time budget)"
                self.stopped = "time budget"
                for t in pending.values():
                    t.status = "cancelled (time budget)"
                break
            for folder in self.executor.wait(min(5.0, limit) if limit is not None else 5.0):
                if folder not in pending:
                    continue
                t = pending.pop(folder)
                try:
                    doc = json.loads((folder / "result.json").read_text())
                except (OSError, ValueError):
                    doc = {"ok": False, "error": "unreadable result"}
                self._record(t, folder, doc, cached=False)
                self.progress(f"fine-tuned {t.name}")

    def _record(self, t: Trial, folder: Path, doc: dict[str, Any], cached: bool) -> None:
        if not doc.get("ok"):
            t.status = f"failed: {doc.get('error', 'unknown error')}"
            return
        t.cached = t.cached or cached
        t.distill = doc.get("distill", {})
        t.tuned_score = float(t.distill.get("score", math.nan))
        t.tuned_drop = self.baseline - t.tuned_score
        t.model_path = str(folder / "model.keras")
        stopped = t.distill.get("stopped", "")
        t.status = "fine-tuned" + (" (cut by the time budget)" if stopped == "deadline" else "")
        if stopped == "deadline" and not cached:
            self.stopped = "time budget"
        if doc.get("cost"):
            t.params, t.macs = int(doc["cost"]["params"]), int(doc["cost"]["macs"])

    def recovers(self, t: Trial) -> bool:
        return t.tuned_drop is not None and t.tuned_drop <= self.cfg.max_drop + 1e-9

    def run(self) -> SearchResult:
        t0 = time.monotonic()
        if self.cfg.deadline is not None:  # leave most of the time to the fine-tunes
            self.proxy_deadline = t0 + PROXY_SHARE * max(0.0, self.cfg.deadline - t0)
        self.proxies()
        front = self.front()
        self.notes.append(f"{len(self.trials)} candidates built and scored without training; {len(front)} on the "
                          "proxy Pareto front (estimated budgets fit)")
        tuned: list[Trial] = []
        if front and not self.out_of_time():
            self.prepare_workers()
            jobs = max(1, getattr(self.executor, "jobs", 1))
            # round 1: the most aggressive, the middle and the most conservative of the front
            picks = _spread(front, max(3, jobs))
            while picks and len(tuned) < self.cfg.max_finetunes and not self.out_of_time():
                picks = picks[: self.cfg.max_finetunes - len(tuned)]
                self.finetune(picks)
                tuned += picks
                picks = self._next(front, tuned, jobs)
        self.out_of_time()  # a search that ran into its deadline says so
        finalists = sorted([t for t in tuned if self.recovers(t) and t.model_path], key=lambda t: t.goal_value)
        if self.stopped:
            self.notes.append("the search stopped at --time-budget; the best candidates so far are reported")
        return SearchResult(self.baseline, self.trials, finalists[:FINALISTS], self.stopped, self.notes,
                            time.monotonic() - t0)

    def _next(self, front: list[Trial], tuned: list[Trial], jobs: int) -> list[Trial]:
        """Bisection along the front: between the smallest candidate that recovers and the largest smaller
        one that does not; with no candidate recovering, the most conservative untried ones."""
        tried = {t.name for t in tuned}
        idx = {t.name: i for i, t in enumerate(front)}
        good = [idx[t.name] for t in tuned if self.recovers(t) and t.name in idx]
        bad = [idx[t.name] for t in tuned if not self.recovers(t) and t.name in idx]
        if good:
            hi = min(good)
            lo = max([b for b in bad if b < hi], default=-1)
            between = [front[i] for i in range(lo + 1, hi) if front[i].name not in tried]
            return _spread(between, jobs) if between else []
        untried = [t for t in front if t.name not in tried]
        return untried[-jobs:][::-1]


def _spread(items: list[Trial], n: int) -> list[Trial]:
    """Up to ``n`` items spread evenly from first to last (the middle one alone when n is 1)."""
    if len(items) <= n:
        return list(items)
    if n == 1:
        return [items[len(items) // 2]]
    picks = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})
    return [items[i] for i in picks]
