"""A short fine-tune of a clustered Keras model with its cluster assignments kept fixed.

Only the centroids of each clustered kernel move: a kernel is ``centroids[indices]``, so the gradient of a
centroid is the sum of the gradients of the weights assigned to it (``unsorted_segment_sum`` of the
kernel's gradient over its indices, the chain rule of that gather); the optimizer steps the centroids and
the kernel is written back from them. Every assignment stays what k-means chose, and a kernel never holds
more than k distinct values (centroids that meet stay two entries of one value). Everything the clustering
did not touch (biases, small kernels, normalization scales) trains as usual; batch normalization runs in
inference mode (its statistics stay), dropout is off.

Targets: the data's labels (cross-entropy for class labels, squared error for regression targets) or,
without usable labels, the float source model's own outputs (soft targets: cross-entropy against its
probabilities when it outputs a distribution, squared error otherwise).

Deterministic for a seed: the hold-out split and the batch order come from ``options.SEED``; a part of
the data (TUNE_HOLDOUT) is held out, and training stops when its loss has not improved for TUNE_PATIENCE
epochs. The best epoch's weights are kept, and the untuned model counts as epoch 0, so the fine-tune never
returns a model with a worse held-out loss than it was given. TensorFlow places the work on its own devices
(the CPU here; a GPU where TensorFlow is set up to use one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit import options
from edgekit.data import TRAIN_MIN_SAMPLES
from edgekit.errors import DataError, StageError
from edgekit.stages.cluster import Clustered

TUNE_EPOCHS = options.Option("tune_epochs", 10, "most epochs of the clustered model's fine-tune (--train)")
TUNE_PATIENCE = options.Option("tune_patience", 2, "epochs without a better held-out loss before the fine-tune "
                                                   "stops")
TUNE_LR = options.Option("tune_lr", 1e-3, "Adam learning rate of the clustered model's fine-tune")
TUNE_BATCH = options.Option("tune_batch", 32, "batch size of the clustered model's fine-tune")
TUNE_HOLDOUT = options.Option("tune_holdout", 0.1, "fraction of the --train samples held out for early stopping")
MIN_TRAIN_SAMPLES = TRAIN_MIN_SAMPLES
LOSSES = ("labels-ce", "labels-mse", "soft-ce", "soft-mse")


@dataclass
class TuneReport:
    loss: str  # one of LOSSES
    samples: int  # trained on
    held_out: int
    epochs: int  # run
    best_epoch: int  # 0 = the untuned model was best
    loss_before: float  # held-out loss
    loss_after: float
    seconds: float
    device: str

    def describe(self) -> str:
        what = {"labels-ce": "cross-entropy on the labels", "labels-mse": "squared error to the targets",
                "soft-ce": "cross-entropy against the float model's outputs (soft targets)",
                "soft-mse": "squared error to the float model's outputs (soft targets)"}[self.loss]
        kept = (f"best epoch {self.best_epoch}" if self.best_epoch else "no epoch beat the untuned model: kept it")
        return (f"fine-tuned centroids (assignments fixed) on {self.samples} samples, {what}; {self.epochs} "
                f"epoch(s), {kept}; held-out loss ({self.held_out} samples) {self.loss_before:.4g} -> "
                f"{self.loss_after:.4g}; {self.seconds:.1f} s on {self.device}")


def settings() -> dict[str, float]:
    """Every value that changes a fine-tune's result (part of the fit cache key)."""
    return {"epochs": TUNE_EPOCHS.value, "patience": TUNE_PATIENCE.value, "lr": TUNE_LR.value,
            "batch": TUNE_BATCH.value, "holdout": TUNE_HOLDOUT.value, "seed": options.SEED.value}


def is_distribution(outputs: np.ndarray) -> bool:
    """Rows of non-negative values summing to 1 (a softmax output), more than one class."""
    o = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    return o.shape[1] > 1 and bool(np.all(o >= -1e-6)) and bool(np.allclose(o.sum(axis=1), 1.0, atol=1e-3))


def split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): a seeded permutation, at least one sample on each side."""
    if n < MIN_TRAIN_SAMPLES:
        raise DataError(f"{n} training samples are too few to fine-tune (need at least {MIN_TRAIN_SAMPLES}: a "
                        "part is held out for early stopping)", "pass more samples with --train")
    order = np.random.default_rng(seed).permutation(n)
    h = min(n - 1, max(1, round(holdout * n)))
    return order[h:], order[:h]


def fine_tune(model: Any, clusters: list[Clustered], x: np.ndarray, targets: np.ndarray, loss: str,
              probabilities: bool = False) -> TuneReport:
    """Fine-tune ``model`` (its kernels clustered as ``clusters`` says) in place on ``x``/``targets``.

    ``loss``: one of LOSSES; ``probabilities``: the model outputs a distribution (cross-entropy then takes
    its outputs as probabilities, otherwise as logits). On return every clustered kernel equals its
    (updated) centroids gathered by its unchanged indices; ``clusters[i].centroids`` holds the new values."""
    from edgekit._tf import keras, tf

    if loss not in LOSSES:
        raise StageError(f"unknown fine-tune loss {loss!r} (must be one of {', '.join(LOSSES)})")
    t0 = time.perf_counter()
    seed = int(options.SEED.value)
    tr, ho = split(len(x), float(TUNE_HOLDOUT.value), seed)
    x = np.asarray(x, dtype=np.float32)
    if loss == "labels-ce":
        y = np.asarray(targets)
        y = y.reshape(-1).astype(np.int64) if (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)) else \
            np.asarray(y.argmax(axis=1), dtype=np.int64)
    else:
        y = np.asarray(targets, dtype=np.float32)

    kernel_ids = {id(c.variable) for c in clusters}
    free = [v for v in model.trainable_weights if id(v) not in kernel_ids]
    cents = [tf.Variable(c.centroids.astype(np.float32), name=f"centroids_{i}") for i, c in enumerate(clusters)]
    flat_idx = [tf.constant(c.indices.reshape(-1), dtype=tf.int32) for c in clusters]
    kvars = [c.variable for c in clusters]
    opt = keras.optimizers.Adam(float(TUNE_LR.value))
    opt.build(cents + free)

    def loss_fn(out: Any, t: Any) -> Any:
        out = tf.reshape(out, (tf.shape(out)[0], -1))
        if loss == "labels-ce":
            return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(t, out, from_logits=not probabilities))
        t = tf.reshape(t, tf.shape(out))
        if loss == "soft-ce":
            if probabilities:
                return -tf.reduce_mean(tf.reduce_sum(t * tf.math.log(tf.clip_by_value(out, 1e-7, 1.0)), axis=1))
            return tf.reduce_mean(keras.losses.categorical_crossentropy(t, out, from_logits=True))
        return tf.reduce_mean(tf.square(out - t))

    def write_kernels() -> None:
        for v, c, i in zip(kvars, cents, flat_idx, strict=True):
            v.assign(tf.reshape(tf.gather(c, i), v.shape))

    # one trace for every batch size (the last batch, the held-out part): a retrace costs seconds
    spec = [tf.TensorSpec((None, *x.shape[1:]), tf.float32), tf.TensorSpec((None, *y.shape[1:]), tf.as_dtype(y.dtype))]

    @tf.function(input_signature=spec)
    def step(xb: Any, yb: Any) -> Any:
        with tf.GradientTape() as tape:
            value = loss_fn(model(xb, training=False), yb)
        grads = tape.gradient(value, kvars + free)
        cgrads = [tf.math.unsorted_segment_sum(tf.reshape(g, (-1,)), i, tf.shape(c)[0])
                  for g, i, c in zip(grads[: len(kvars)], flat_idx, cents, strict=True)]
        opt.apply_gradients(zip(cgrads + list(grads[len(kvars):]), cents + free, strict=True))
        write_kernels()
        return value

    @tf.function(input_signature=spec)
    def batch_loss(xb: Any, yb: Any) -> Any:
        return loss_fn(model(xb, training=False), yb)

    batch = max(1, int(TUNE_BATCH.value))

    def held_out_loss() -> float:
        total = 0.0
        for i in range(0, len(ho), 256):
            sel = ho[i : i + 256]
            total += float(batch_loss(x[sel], y[sel])) * len(sel)
        return total / len(ho)

    def snapshot() -> list[np.ndarray]:
        return [c.numpy() for c in cents] + [v.numpy() for v in free]

    write_kernels()
    best = before = held_out_loss()
    if not np.isfinite(before):
        raise StageError(f"the clustered model's held-out loss is {before} before the fine-tune",
                         "check the --train data and the model's outputs")
    best_state, best_epoch, since, epochs = snapshot(), 0, 0, 0
    rng = np.random.default_rng(seed + 1)
    for epoch in range(1, int(TUNE_EPOCHS.value) + 1):
        epochs = epoch
        order = rng.permutation(tr)
        for i in range(0, len(order), batch):
            sel = order[i : i + batch]
            step(x[sel], y[sel])
        current = held_out_loss()
        if np.isfinite(current) and current < best - 1e-7:
            best, best_state, best_epoch, since = current, snapshot(), epoch, 0
        else:
            since += 1
            if since >= int(TUNE_PATIENCE.value):
                break
    for var, value in zip(cents + free, best_state, strict=True):
        var.assign(value)
    write_kernels()
    for c, var in zip(clusters, cents, strict=True):
        c.centroids = var.numpy().astype(np.float32)
    device = ", ".join(sorted({d.device_type for d in tf.config.list_logical_devices()})) or "CPU"
    return TuneReport(loss, len(tr), len(ho), epochs, best_epoch, before, best, time.perf_counter() - t0,
                      f"TensorFlow ({device})")
