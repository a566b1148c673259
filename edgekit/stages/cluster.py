"""Weight clustering of the float Keras model, before quantization.

Every Conv/Dense kernel of at least MIN_ELEMENTS values is clustered per layer with 1-D k-means (k = 16,
32 or 64): each weight is replaced by the nearest of the layer's k centroids. The result is a float Keras
model, which the later stages convert and quantize as they would the source model: per-channel int8 then
keeps at most k values per channel (what TFLM's LUT compression needs to be lossless at log2(k) bits), and
INT4/int4 weights start from a model that has already been fitted to few values.

The k-means is exact and deterministic: the values are sorted once, the centroids start at the
``linear`` spacing between the layer's smallest and largest weight (Han et al., *Deep Compression*: linear
initialization keeps the rare large weights, which matter most), and every Lloyd step assigns by the
midpoints between neighbouring centroids (``searchsorted`` on the sorted values) and moves each centroid
to the mean of its segment (prefix sums). Centroids that linear spacing leaves empty are re-seeded by
splitting the cluster with the largest squared error. No random numbers are drawn at all, so the same
model gives the same clusters on every machine (there is no seed to fix).

:func:`cluster_model` returns the clustered copy with each layer's assignments, which the fine-tune
(:mod:`edgekit.stages.cluster_tune`) keeps fixed while it moves the centroids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import StageError

KS = (16, 32, 64)
MIN_ELEMENTS = 1024  # smaller kernels stay as they are (the same floor as INT4 packing and LUT compression)
MAX_ITERS = 1000  # Lloyd steps per round (1-D steps cost O(k log n); convergence usually takes < 300)
KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")


@dataclass
class Clustered:
    """One clustered kernel: the variable, its centroids and each weight's centroid index."""

    layer: str
    variable: Any  # the Keras variable in the clustered copy
    centroids: np.ndarray  # (k',) float32, k' <= k
    indices: np.ndarray  # kernel-shaped int32 indices into centroids
    rel_error: float  # RMS error of the clustered weights relative to the RMS of the originals

    def weights(self) -> np.ndarray:
        return self.centroids[self.indices].astype(np.float32)


def kmeans_1d(values: np.ndarray, k: int, iters: int = MAX_ITERS) -> tuple[np.ndarray, np.ndarray]:
    """(centroids ascending, index of each value's centroid) of 1-D k-means on ``values``.

    Linear initialization, Lloyd steps on the sorted values until no centroid moves. A centroid left
    without values (linear spacing puts some in the empty tails of a peaked distribution) is not wasted:
    the cluster with the largest squared error is split in two at its mean and Lloyd runs again, until all
    k are used (or no cluster has two distinct values left). At most ``k`` centroids, every one used."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise StageError("cannot cluster an empty tensor")
    uniq = np.unique(v)
    if len(uniq) <= k:
        return uniq.astype(np.float32), np.searchsorted(uniq, v).astype(np.int32).reshape(np.shape(values))
    s = np.sort(v, kind="stable")
    csum = np.concatenate([[0.0], np.cumsum(s)])
    csq = np.concatenate([[0.0], np.cumsum(s * s)])

    def segments(c: np.ndarray) -> np.ndarray:
        return np.concatenate([[0], np.searchsorted(s, (c[1:] + c[:-1]) / 2), [len(s)]])

    centers = np.linspace(s[0], s[-1], k)
    for _ in range(k):  # each round uses at least one more centroid, or stops
        for _ in range(iters):
            cuts = segments(centers)
            counts = np.diff(cuts)
            sums = csum[cuts[1:]] - csum[cuts[:-1]]
            moved = np.where(counts > 0, sums / np.maximum(counts, 1), centers)
            if np.array_equal(moved, centers):
                break
            centers = moved
        cuts = segments(centers)
        counts = np.diff(cuts)
        centers = centers[counts > 0]
        if len(centers) >= k:
            break
        cuts = segments(centers)
        lo, hi = cuts[:-1], cuts[1:]
        n = hi - lo
        sse = (csq[hi] - csq[lo]) - (csum[hi] - csum[lo]) ** 2 / n
        spread = s[hi - 1] - s[lo]
        sse[spread <= 0] = -1.0
        worst = np.argsort(-sse, kind="stable")[: k - len(centers)]
        worst = worst[sse[worst] > 0]
        if len(worst) == 0:
            break
        extra = []
        for j in worst:  # split at its mean: the means of its lower and upper part
            seg = s[lo[j] : hi[j]]
            mid = centers[j]
            low, high = seg[seg <= mid], seg[seg > mid]
            if len(low) and len(high):
                centers[j] = low.mean()
                extra.append(high.mean())
        if not extra:
            break
        centers = np.sort(np.concatenate([centers, extra]))
    centers = centers.astype(np.float32)
    # assignment by nearest float32 centroid (the value the model will hold)
    mids = (centers[1:].astype(np.float64) + centers[:-1]) / 2
    idx = np.searchsorted(mids, v).astype(np.int32)
    used = np.unique(idx)
    if len(used) < len(centers):  # a float32 rounding left one empty: drop it
        centers = centers[used]
        idx = np.searchsorted(used, idx).astype(np.int32)
    return centers, idx.reshape(np.shape(values))


def kernels(model: Any, min_elements: int = MIN_ELEMENTS) -> list[tuple[str, Any]]:
    """(layer name, kernel variable) of every Conv/Dense-like layer with at least ``min_elements`` weights,
    in the model's order (nested models walked)."""
    found: list[tuple[str, Any]] = []

    def walk(layer: Any) -> None:
        subs = getattr(layer, "layers", None)
        if subs:
            for sub in subs:
                walk(sub)
            return
        for w in getattr(layer, "trainable_weights", []):
            if w.path.split("/")[-1] in KERNEL_NAMES and int(np.prod(w.shape)) >= min_elements:
                found.append((layer.name, w))

    walk(model)
    return found


def copy_model(model: Any) -> Any:
    """A separate Keras model with the same architecture and weights (the source stays untouched)."""
    from edgekit._tf import keras

    try:
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise StageError(f"cannot copy the Keras model for clustering: {first}",
                         "clustering needs a model Keras can clone (custom layers must implement get_config)") from None
    return clone


def cluster_model(model: Any, k: int, min_elements: int = MIN_ELEMENTS) -> tuple[Any, list[Clustered]]:
    """A clustered copy of the float Keras ``model``: every kernel of at least ``min_elements`` weights holds
    at most ``k`` distinct values (per layer); (the copy, one record per clustered kernel)."""
    if k < 2:
        raise StageError(f"cannot cluster to k={k} values (must be >= 2)")
    clone = copy_model(model)
    done: list[Clustered] = []
    for name, var in kernels(clone, min_elements):
        w = np.asarray(var.numpy(), dtype=np.float32)
        centers, idx = kmeans_1d(w, k)
        c = Clustered(name, var, centers, idx, 0.0)
        new = c.weights()
        c.rel_error = float(np.sqrt(np.mean((new - w) ** 2)) / max(float(np.sqrt(np.mean(w.astype(np.float64) ** 2))),
                                                                    1e-30))
        var.assign(new)
        done.append(c)
    if not done:
        raise StageError(f"no Conv or Dense kernel with at least {min_elements} weights to cluster")
    return clone, done
