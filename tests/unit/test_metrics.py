"""The built-in metrics against hand-computed values and scikit-learn's own implementations."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import DataError
from edgekit.evaluate import BUILTIN_METRICS, get_metric, get_metrics


def _probs(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    z = rng.normal(size=(n, k))
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def test_f1_top5_auc_match_scikit_learn() -> None:
    from sklearn.metrics import f1_score, roc_auc_score, top_k_accuracy_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 300)
    p = _probs(rng, 300, 10)
    assert get_metric("f1")(y, p) == pytest.approx(100 * f1_score(y, p.argmax(1), average="macro"))
    assert get_metric("top5")(y, p) == pytest.approx(100 * top_k_accuracy_score(y, p, k=5, labels=range(10)))
    yb = rng.integers(0, 2, 200)
    scores = rng.normal(size=200) + yb  # informative, with ties below
    scores[:20] = 0.5
    assert get_metric("auc")(yb, scores[:, None]) == pytest.approx(100 * roc_auc_score(yb, scores))
    two = np.stack([1 - scores, scores], axis=1)  # a two-class softmax: column 1 is the positive score
    assert get_metric("auc")(yb, two) == pytest.approx(100 * roc_auc_score(yb, scores))


def test_auc_scores_an_autoencoder_by_reconstruction_error_as_mlperf_tiny() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 640)).astype(np.float32)
    y = (np.arange(100) % 4 == 0).astype(np.int64)
    recon = x + rng.normal(scale=np.where(y[:, None] == 1, 1.0, 0.3), size=x.shape)  # anomalies reconstruct worse
    expected = roc_auc_score(y, np.mean((x - recon) ** 2, axis=1))
    assert get_metric("auc")(y, recon, x) == pytest.approx(100 * expected)
    assert expected > 0.9


def test_agreement_and_mse_to_float_compare_with_the_float_outputs() -> None:
    rng = np.random.default_rng(2)
    ref = _probs(rng, 50, 4)
    cand = ref.copy()
    cand[:5] = cand[:5, ::-1]  # 5 rows flipped: argmax changes where the top class moves
    changed = int(np.sum(ref.argmax(1) != cand.argmax(1)))
    assert get_metric("agreement")(ref, cand) == pytest.approx(100 * (50 - changed) / 50)
    assert get_metric("agreement").reference == "float" and get_metric("mse-to-float").reference == "float"
    assert get_metric("mse-to-float")(ref, cand) == pytest.approx(float(np.mean((ref - cand) ** 2)))
    assert get_metric("mse-to-float").drop(0.0, 0.01) == pytest.approx(0.01)  # lower is better


def test_several_metrics_in_order_and_bad_lists() -> None:
    assert [m.name for m in get_metrics("top1,f1,auc")] == ["top1", "f1", "auc"]
    for bad, needle in [("top1,,f1", "empty"), ("top1,top1", "twice"), ("nope", "unknown metric")]:
        with pytest.raises(DataError, match=needle):
            get_metrics(bad)
    assert set(BUILTIN_METRICS) >= {"top1", "top5", "f1", "auc", "mse", "mae", "agreement", "mse-to-float"}
