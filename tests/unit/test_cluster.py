"""Weight clustering pieces without TensorFlow: the 1-D k-means, --train loading and its bad inputs, the
cache key of the clustered rungs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit import data
from edgekit.errors import DataError
from edgekit.stages import cluster


@pytest.mark.parametrize("k", [16, 32, 64])
def test_kmeans_leaves_at_most_k_values_each_the_nearest_and_is_deterministic(k: int) -> None:
    rng = np.random.default_rng(3)
    w = np.concatenate([rng.normal(scale=0.05, size=5000), rng.normal(scale=0.4, size=50)]).astype(np.float32)
    centers, idx = cluster.kmeans_1d(w, k)
    assert 2 <= len(centers) <= k and np.all(np.diff(centers) > 0)
    assert idx.shape == w.shape and set(np.unique(idx)) == set(range(len(centers)))  # every centroid used
    # every weight sits at its nearest centroid, and each centroid is the mean of its weights (a Lloyd fixpoint)
    nearest = np.abs(w[:, None].astype(np.float64) - centers[None, :]).argmin(axis=1)
    assert np.array_equal(idx, nearest)
    for j in range(len(centers)):
        assert centers[j] == pytest.approx(float(w[idx == j].astype(np.float64).mean()), rel=1e-4, abs=1e-6)
    again = cluster.kmeans_1d(w.copy(), k)
    assert np.array_equal(again[0], centers) and np.array_equal(again[1], idx)
    err = np.sqrt(np.mean((centers[idx] - w) ** 2)) / np.sqrt(np.mean(w**2))
    assert err < {16: 0.2, 32: 0.1, 64: 0.05}[k]
    # the outliers keep their own clusters (linear initialization spans the whole range)
    assert centers[-1] > 0.5 * w.max() and centers[0] < 0.5 * w.min()


def test_kmeans_keeps_a_tensor_that_already_has_few_values() -> None:
    w = np.array([[0.5, -0.25], [0.5, 0.0]], dtype=np.float32)
    centers, idx = cluster.kmeans_1d(w, 16)
    assert np.array_equal(centers[idx], w) and idx.shape == w.shape


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize("case, needle", [
    ("missing", "--train: data file"),
    ("shape", "inputs have shape (20, 4, 4) but the model takes (N, 8, 8, 1)"),
    ("nan-x", "input values are NaN or Inf"),
    ("nan-y", "label values are NaN or Inf"),
    ("rows", "y has 19 rows but x has 20"),
    ("few", "has 5 samples, too few to fine-tune"),
    ("pickle", "holds Python objects"),
    ("text", "is not a NumPy file"),
])
def test_bad_training_data_is_one_data_error_naming_train(tmp_path: Path, case: str, needle: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((20, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 10, 20)
    p = tmp_path / "train.npz"
    if case == "missing":
        p = tmp_path / "nope.npz"
    elif case == "shape":
        _npz(p, x=x[:, :4, :4, 0], y=y)
    elif case == "nan-x":
        x[3, 1, 1, 0] = np.nan
        _npz(p, x=x, y=y)
    elif case == "nan-y":
        _npz(p, x=x, y=np.where(np.arange(20) == 4, np.nan, y.astype(float)))
    elif case == "rows":
        _npz(p, x=x, y=y[:19])
    elif case == "few":
        _npz(p, x=x[:5], y=y[:5])
    elif case == "pickle":
        np.save(tmp_path / "train.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
        p = tmp_path / "train.npy"
    else:
        p.write_text("x,y\n1,2\n")
    with pytest.raises(DataError) as err:
        data.load_training(p, (1, 8, 8, 1))
    text = str(err.value)
    assert text.startswith("--train: ") and needle in text and "\n" not in text


def test_training_data_without_labels_and_with_labels_loads(tmp_path: Path) -> None:
    x = np.random.default_rng(1).random((12, 8, 8, 1), dtype=np.float32)
    unlabelled = data.load_training(_npz(tmp_path / "u.npz", x=x), (1, 8, 8, 1))
    assert unlabelled.y is None and len(unlabelled) == 12
    np.save(tmp_path / "u.npy", x)
    assert data.load_training(tmp_path / "u.npy", (1, 8, 8, 1)).y is None
    labelled = data.load_training(_npz(tmp_path / "l.npz", x=x, y=np.arange(12) % 10), (1, 8, 8, 1))
    assert labelled.y is not None and labelled.y.tolist() == (np.arange(12) % 10).tolist()


def test_cluster_rungs_cache_key_changes_with_the_training_data_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.fitting.search import _cluster_key

    x = np.random.default_rng(2).random((12, 8, 8, 1), dtype=np.float32)
    a = _cluster_key(data.Dataset(x, np.arange(12), "a"))
    assert a == _cluster_key(data.Dataset(x.copy(), np.arange(12), "elsewhere"))  # content, not the path
    assert a != _cluster_key(None)
    assert a != _cluster_key(data.Dataset(x, None, "a"))  # labels (or none) change the fine-tune
    changed = x.copy()
    changed[0, 0, 0, 0] += 1e-3
    assert a != _cluster_key(data.Dataset(changed, np.arange(12), "a"))
    monkeypatch.setenv("EDGEKIT_TUNE_EPOCHS", "3")
    assert a != _cluster_key(data.Dataset(x, np.arange(12), "a"))
