"""Level-3 training and search on the digits CNN (small, fixed seeds): distillation recovers a pruned model,
the search resumes from its cached fine-tunes, stops at its deadline, and fit refuses level 3 without
training data."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits() -> tuple[Any, tuple[np.ndarray, ...]]:
    from edgekit.demo import train_digits_cnn

    return train_digits_cnn(epochs=6)


def _acc(out: np.ndarray, y: np.ndarray) -> float:
    return 100 * float(np.mean(np.argmax(out, axis=1) == y))


def test_distillation_beats_no_finetune(digits: tuple[Any, tuple[np.ndarray, ...]]) -> None:
    from edgekit.compress import distill, prune

    model, (xtr, ytr, xte, yte) = digits
    cut = int(0.85 * len(xtr))
    x, y, xv, yv = xtr[:cut], ytr[:cut], xtr[cut:], ytr[cut:]
    small, counts = prune.prune(model, 0.75, "l1")
    assert counts and small.count_params() < model.count_params() / 4
    before = _acc(distill.predict(small, xte), yte)
    targets, kind = distill.teacher_targets(model, x)
    assert kind == "logits"  # the Softmax layer's input
    result = distill.distill(small, x, targets, kind, y, xv, lambda out: _acc(out, yv),
                             distill.DistillConfig(epochs=6, seed=0))
    after = _acc(distill.predict(small, xte), yte)
    assert result.best_epoch >= 1 and result.score > result.score_before
    assert after > before + 10, (before, after)
    assert after > _acc(distill.predict(model, xte), yte) - 10
    # quantization-aware: trained through per-channel int8 kernels, it keeps (or improves) its held-out score
    qat = distill.distill(small, x, targets, kind, y, xv, lambda out: _acc(out, yv),
                          distill.DistillConfig(epochs=2, seed=0, qat=True))
    assert qat.score >= qat.score_before and qat.epochs >= 1


@pytest.mark.parametrize("recalibrate", [True, False])
def test_distillation_keeps_batchnorm_statistics_of_its_own_weights(digits: tuple[Any, tuple[np.ndarray, ...]],
                                                                     recalibrate: bool) -> None:
    """keras.applications' BatchNorms average with momentum 0.999: over a fine-tune's few hundred steps the
    moving statistics trail the weights, so scoring (and keeping) them gave a 70%-pruned MobileNetV2 87.8%
    after 8 epochs where re-estimated ones gave 93.9% after 5. The kept model's statistics are those of its
    weights: re-estimating them again changes nothing."""
    from edgekit._tf import keras
    from edgekit.compress import distill

    _, (xtr, ytr, _, _) = digits
    keras.utils.set_random_seed(0)
    inp = keras.Input(xtr.shape[1:])
    h = keras.layers.Conv2D(8, 3, use_bias=False)(inp)
    h = keras.layers.BatchNormalization(momentum=0.999)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h))
    cut = int(0.85 * len(xtr))
    targets = np.eye(10, dtype=np.float32)[ytr[:cut]] * 5
    distill.distill(model, xtr[:cut], targets, "logits", ytr[:cut], xtr[cut:],
                    lambda out: _acc(out, ytr[cut:]), distill.DistillConfig(epochs=3, seed=0,
                                                                            recalibrate=recalibrate))
    bn = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    kept = np.array(bn.moving_variance)
    distill.recalibrate_batchnorm(model, xtr[: distill.BN_SAMPLES])
    again = np.array(bn.moving_variance)
    assert np.allclose(kept, again, rtol=1e-3) == recalibrate, (kept, again)


def _search(model: Any, split: tuple[np.ndarray, ...], tmp: Path, executor: Any, **cfg: Any) -> Any:
    from edgekit.compress import search

    xtr, ytr = split[0], split[1]
    cut = int(0.85 * len(xtr))
    data = search.SearchData(xtr[:cut], ytr[:cut], xtr[cut:], ytr[cut:])

    def estimate(c: Any) -> tuple[dict[str, dict[str, Any]], float]:
        flash = c.params + 4000
        return {"flash": {"limit": 30000, "estimate": flash, "fits": flash <= 30000}}, float(flash)

    conf = search.SearchConfig(metric="top1", reference="labels", max_drop=2.0, uniform=(0.5, 0.7), energies=(0.0,),
                               random_candidates=0, sensitivity=False, **cfg)
    conf.distill.epochs = 4
    return search.Search(model, data, conf, estimate, executor, tmp / "work", tmp / "cache" / "level3", "0" * 64)


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from edgekit.compress.executor import LocalExecutor

    with LocalExecutor(1, tmp_path_factory.mktemp("logs")) as ex:
        yield ex


def test_search_resumes_from_finished_finetunes(digits: tuple[Any, tuple[np.ndarray, ...]], tmp_path: Path,
                                                executor: Any) -> None:
    """A first search fine-tunes in a worker process; a second one with the same inputs (as after an
    interruption) takes every finished candidate from the cache and submits nothing."""
    model, split = digits
    first = _search(model, split, tmp_path, executor, max_finetunes=1).run()
    tuned = [t for t in first.trials if t.tuned_drop is not None]
    assert len(tuned) == 1 and not tuned[0].cached and Path(tuned[0].model_path).is_file()
    assert tuned[0].distill["epochs"] >= 1
    again = _search(model, split, tmp_path, None, max_finetunes=1).run()  # no executor: nothing may run
    twin = [t for t in again.trials if t.tuned_drop is not None]
    assert [t.name for t in twin] == [tuned[0].name] and twin[0].cached
    assert twin[0].tuned_score == tuned[0].tuned_score
    assert all(t.cached for t in again.trials)  # the proxies too
    assert [t.name for t in again.finalists] == [t.name for t in first.finalists]
    from edgekit.fitting import cache  # `edgekit cache clear` and the size limit see the search's files

    found = {e.path for e in cache.entries(tmp_path / "cache")}
    assert Path(tuned[0].model_path).parent in found
    assert tmp_path / "cache" / "level3" / f"proxies-{'0' * 64}.json" in found
    assert cache.clear(tmp_path / "cache")[0] == len(found) and not Path(tuned[0].model_path).exists()


def test_search_stops_at_its_deadline(digits: tuple[Any, tuple[np.ndarray, ...]], tmp_path: Path,
                                      executor: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fine-tune that would run for long stops at the deadline (its best weights so far reported, marked as
    cut short and never reused from the cache); no work starts after it."""
    from edgekit.compress import search

    monkeypatch.setattr(search, "CANCEL_GRACE", 5.0)
    model, split = digits
    budget = 12.0
    s = _search(model, split, tmp_path, executor, max_finetunes=2, deadline=time.monotonic() + budget)
    s.cfg.distill.epochs, s.cfg.distill.patience = 10_000, 10_000
    t0 = time.monotonic()
    result = s.run()
    took = time.monotonic() - t0
    assert result.stopped == "time budget" and took < budget + 5.0 + 10.0, took
    statuses = [t.status for t in result.trials]
    assert any("time budget" in st for st in statuses), statuses
    cut = [t for t in result.trials if t.model_path]
    for t in cut:
        assert t.distill["stopped"] == "deadline"
        assert search.Search.finished(Path(t.model_path).parent) is None  # not a finished candidate


def test_level3_needs_train_data(tmp_path: Path) -> None:
    (tmp_path / "m.keras").write_bytes(b"PK")
    np.savez(tmp_path / "eval.npz", x=np.zeros((4, 8, 8, 1), np.float32), y=np.zeros(4))
    proc = run_cli("fit", str(tmp_path / "m.keras"), "-t", "cortex-m4", "--eval", str(tmp_path / "eval.npz"),
                   "--level", "3", "-o", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error: --level 3 needs training data: pass --train")
    assert not (tmp_path / "out").exists()
    proc = run_cli("fit", str(tmp_path / "m.keras"), "-t", "cortex-m4", "--eval", str(tmp_path / "eval.npz"),
                   "--time-budget", "5", "-o", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2 and "--time-budget and --jobs steer level 3" in proc.stderr, proc.stderr


def test_search_record_is_json(digits: tuple[Any, tuple[np.ndarray, ...]], tmp_path: Path) -> None:
    """Proxies alone (no executor, no fine-tune budget): every candidate is recorded with its cost and
    estimate, and the record serializes."""
    model, split = digits
    s = _search(model, split, tmp_path, None, max_finetunes=0)
    s.proxies()
    assert len(s.trials) == 2
    doc = json.loads(json.dumps([t.to_dict() for t in s.trials]))
    assert doc[0]["params"] > doc[1]["params"] and all(d["proxy_drop"] is not None for d in doc)


def test_ram_repair_prunes_the_groups_alive_at_the_peak(digits: tuple[Any, tuple[np.ndarray, ...]],
                                                        tmp_path: Path) -> None:
    from edgekit.compress import cost
    from edgekit.compress.candidate import Spec

    model, split = digits
    s = _search(model, split, tmp_path, None)
    limit = 0.6 * cost.estimate(model).peak_activations

    def estimate(c: Any) -> tuple[dict[str, dict[str, Any]], float]:
        return {"ram": {"limit": limit, "estimate": c.peak_activations, "fits": c.peak_activations <= limit}}, 0.0

    s.estimate = estimate
    t = s.proxy(Spec(tuple((k, 0.1) for k in sorted(s.groups)), "l1", 0.0, "uniform"))
    assert t.spec.origin == "uniform + RAM repair" and t.fits_estimate and t.peak_activations <= limit
    assert max(r for _, r in t.spec.ratios) > 0.1 and min(r for _, r in t.spec.ratios) == 0.1  # only some groups


def test_over_ram_the_peak_groups_alone_are_tried_and_every_scheme_is_repaired(
        digits: tuple[Any, tuple[np.ndarray, ...]], tmp_path: Path) -> None:
    """The least change that can fit (the groups at the activation peak alone) is a candidate; the
    sensitivity-weighted scheme is RAM-repaired and can reach the front like the others (it shared its
    origin with the probes, so it was neither), and the probes never reach it."""
    from edgekit.compress import cost, search

    model, split = digits
    s = _search(model, split, tmp_path, None, max_finetunes=0)
    s.cfg.sensitivity = True
    limit = 0.3 * cost.estimate(model).peak_activations

    def estimate(c: Any) -> tuple[dict[str, dict[str, Any]], float]:
        ram = {"limit": limit, "estimate": c.peak_activations, "fits": c.peak_activations <= limit}
        return {"ram": ram}, float(c.params)

    s.estimate = estimate
    s.proxies()
    peak = [t for t in s.trials if t.spec.origin.startswith("peak")]
    assert len(peak) == 1 and peak[0].spec.origin == "peak + RAM repair", [t.spec.origin for t in s.trials]
    assert peak[0].peak_activations <= search.REPAIR_TARGET * limit
    assert 0 < len(peak[0].spec.ratios) < len(s.groups)  # only the groups at the peak
    probes = [t for t in s.trials if t.spec.origin == search.PROBE]
    weighted = [t for t in s.trials if t.spec.origin.startswith("sensitivity")]
    assert probes and weighted
    assert all(t.fits_estimate and t.proxy_score is not None for t in weighted), [
        (t.spec.origin, t.peak_activations) for t in weighted]
    front = s.front()
    assert front and not any(t.spec.origin == search.PROBE for t in front)


def test_a_candidate_keras_cannot_build_is_one_failed_trial(digits: tuple[Any, tuple[np.ndarray, ...]],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An architecture whose rebuild raises (as Keras did on a BatchNorm shared by two branches before the
    grouping froze it) is recorded as a failed candidate; the other candidates are still built and scored."""
    from edgekit.compress import candidate

    model, split = digits
    s = _search(model, split, tmp_path, None, max_finetunes=0)
    real = candidate.build
    calls = {"n": 0}

    def first_fails(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("Input 0 of layer 'bn' is incompatible with the layer: expected axis -1 of input "
                             "shape to have value 8, but received input with shape (None, 6, 6, 16)")
        return real(*args, **kwargs)

    monkeypatch.setattr(candidate, "build", first_fails)
    s.proxies()
    assert len(s.trials) == 2
    assert s.trials[0].status.startswith("failed: ValueError: Input 0 of layer 'bn'")
    assert not s.trials[0].fits_estimate and s.trials[0].proxy_score is None
    assert s.trials[1].proxy_score is not None and s.trials[1].params > 0
    assert any("failed to build" in n for n in s.notes)
    json.dumps([t.to_dict() for t in s.trials])


def test_qat_rounding_follows_the_converters_channel_axis() -> None:
    """int8 fake quantization during QAT: one scale per output channel (the last axis) for a Dense(1) kernel,
    one per channel on axis -2 for a depthwise kernel - decided by the layer kind, not by a trailing 1."""
    from edgekit._tf import keras
    from edgekit.compress.distill import _fake_quant, _quantized_kernels

    rng = np.random.default_rng(0)
    dense = rng.standard_normal((8, 1)).astype(np.float32)
    q = np.asarray(_fake_quant(dense, False))
    steps = q / (np.abs(dense).max() / 127.0)  # one scale for the whole single-channel kernel
    assert np.allclose(steps, np.round(steps), atol=1e-3) and not np.allclose(q, dense)
    dw = rng.standard_normal((3, 3, 4, 1)).astype(np.float32)
    dw[..., 2, :] *= 50  # one loud channel must not coarsen the others
    qd = np.asarray(_fake_quant(dw, True))
    for c in range(4):
        scale = np.abs(dw[..., c, :]).max() / 127.0
        assert np.allclose(qd[..., c, :] / scale, np.round(qd[..., c, :] / scale), atol=1e-3)
    x = keras.Input((6, 6, 3))
    h = keras.layers.DepthwiseConv2D(3)(keras.layers.Conv2D(4, 1)(x))
    model = keras.Model(x, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
    kernels, depthwise = _quantized_kernels(model)
    assert len(kernels) == 3 and [id(k) in depthwise for k in kernels] == [False, True, False]
