"""Distillation fine-tune of a changed architecture, with the original model as the teacher.

Classifiers (a softmax at the end): the loss is ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T))`` on the
teacher's and student's logits (the log of the probabilities where the softmax sits inside the last layer,
which differs from the logits by a constant per sample that the softmax removes), plus ``(1 - alpha)`` times
the cross-entropy with the hard labels when they are given. Other outputs: mean squared error to the
teacher's outputs (and to the labels). Early stopping on a held-out part of the training data restores the
best epoch's weights.

``qat=True`` is quantization-aware fine-tuning of the weights: every step runs the model with its Conv/Dense
kernels rounded to per-channel int8 (symmetric, as the converter quantizes them) and applies the gradient to
the float weights (straight-through), so the float weights settle where their int8 rounding loses little.
Activations are not simulated; the int8 conversion calibrates them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit.compress.prune import logits_of

BN_SAMPLES = 256  # training samples the BatchNorm statistics are re-estimated on before each held-out score


@dataclass
class DistillConfig:
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the teacher's soft targets; 1 - alpha on the hard labels when given
    epochs: int = 30
    batch: int = 64
    learning_rate: float = 3e-3
    patience: int = 4  # epochs without a better held-out score before stopping
    seed: int = 0
    qat: bool = False
    deadline: float | None = None  # time.monotonic() after which no further epoch starts
    recalibrate: bool = True  # re-estimate BatchNorm statistics before each held-out score


@dataclass
class DistillResult:
    epochs: int
    best_epoch: int
    score_before: float
    score: float  # the held-out score of the weights kept
    history: list[float] = field(default_factory=list)
    stopped: str = ""  # early stop | epochs | deadline
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch, "score_before": self.score_before,
                "score": self.score, "history": self.history, "stopped": self.stopped,
                "seconds": round(self.seconds, 2)}


def teacher_targets(teacher: Any, x: np.ndarray, batch: int = 256) -> tuple[np.ndarray, str]:
    """(the teacher's logits or raw outputs on ``x``, their kind: logits | probs | raw)."""
    model, kind = logits_of(teacher)
    out = np.concatenate([np.asarray(model(x[i : i + batch], training=False)) for i in range(0, len(x), batch)])
    if kind == "probs":
        out = np.log(np.clip(out, 1e-12, 1.0))
    return out.astype(np.float32), kind


def class_labels(y: np.ndarray | None, n: int) -> np.ndarray | None:
    """Class indices from indices or one-hot rows; None when ``y`` is not class labels."""
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim > 1 and int(np.prod(y.shape[1:])) > 1:
        return np.argmax(y.reshape(n, -1), axis=-1).astype(np.int64)
    return y.reshape(-1).astype(np.int64)


def predict(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([np.asarray(model(x[i : i + batch], training=False)) for i in range(0, len(x), batch)])


def distill(student: Any, x: np.ndarray, targets: np.ndarray, kind: str, y: np.ndarray | None,
            x_val: np.ndarray, score: Callable[[np.ndarray], float], cfg: DistillConfig | None = None
            ) -> DistillResult:
    """Fine-tune ``student`` in place on ``x`` against the teacher's ``targets`` (from
    :func:`teacher_targets`) and the labels ``y`` (optional); ``score`` rates the student's outputs on
    ``x_val`` (higher is better) for early stopping."""
    from edgekit._tf import keras, tf

    cfg = cfg or DistillConfig()
    t0 = time.monotonic()
    keras.utils.set_random_seed(cfg.seed)
    logits_model, s_kind = logits_of(student)
    classify = kind in ("logits", "probs") and s_kind in ("logits", "probs")
    labels = class_labels(y, len(x)) if classify else (None if y is None else np.asarray(y, np.float32))
    hard = labels is not None and cfg.alpha < 1
    alpha = cfg.alpha if hard else 1.0
    temp = float(cfg.temperature)
    opt = keras.optimizers.Adam(cfg.learning_rate)
    trainable = list(student.trainable_variables)
    quantized, depthwise = _quantized_kernels(student) if cfg.qat else ([], set())
    masters = {id(v): tf.Variable(v.value if hasattr(v, "value") else v, trainable=False) for v in quantized}
    opt.build([masters.get(id(v), v) for v in trainable])

    def loss_fn(xb: Any, tb: Any, yb: Any) -> Any:
        s = logits_model(xb, training=True)
        if s_kind == "probs":
            s = tf.math.log(tf.clip_by_value(s, 1e-12, 1.0))
        if classify:
            soft_t = tf.nn.softmax(tb / temp)
            loss = alpha * temp * temp * tf.reduce_mean(
                tf.reduce_sum(soft_t * (tf.math.log(soft_t + 1e-12) - tf.nn.log_softmax(s / temp)), axis=-1))
            if hard:
                loss += (1 - alpha) * tf.reduce_mean(
                    tf.keras.losses.sparse_categorical_crossentropy(yb, s, from_logits=True))
            return loss
        s = tf.reshape(s, tf.shape(tb))
        loss = alpha * tf.reduce_mean(tf.square(s - tb))
        if hard:
            loss += (1 - alpha) * tf.reduce_mean(tf.square(s - tf.reshape(tf.cast(yb, s.dtype), tf.shape(s))))
        return loss

    @tf.function(reduce_retracing=True)
    def step(xb: Any, tb: Any, yb: Any) -> Any:
        for v in quantized:
            v.assign(_fake_quant(masters[id(v)], id(v) in depthwise))
        with tf.GradientTape() as tape:
            loss = loss_fn(xb, tb, yb)
        grads = tape.gradient(loss, trainable)
        pairs = [(gr, masters.get(id(v), v)) for gr, v in zip(grads, trainable, strict=True) if gr is not None]
        opt.apply_gradients(pairs)
        return loss

    # the moving averages trail the weights by ~1/(1 - momentum) steps (1,000 for keras.applications'
    # 0.999, far more than a fine-tune's epoch of steps): scored with them, a good epoch looks bad, early
    # stopping keeps the wrong one and the kept weights carry stale statistics into the int8 conversion
    bn_sample = x[: min(len(x), BN_SAMPLES)] if cfg.recalibrate else None

    def held_out() -> float:
        for v in quantized:
            v.assign(_fake_quant(masters[id(v)], id(v) in depthwise))
        if bn_sample is not None:
            recalibrate_batchnorm(student, bn_sample)
        return float(score(predict(student, x_val)))

    before = held_out()
    best, best_epoch, best_weights = before, 0, student.get_weights()
    masters_best = [m.numpy() for m in masters.values()]
    history: list[float] = []
    rng = np.random.default_rng(cfg.seed)
    y_arr = labels if labels is not None else np.zeros(len(x), np.int64)
    steps = max(1, math.ceil(len(x) / cfg.batch))
    stopped, epoch = "epochs", 0
    for epoch in range(1, cfg.epochs + 1):
        if cfg.deadline is not None and time.monotonic() > cfg.deadline:
            stopped, epoch = "deadline", epoch - 1
            break
        order = rng.permutation(len(x))
        cut = False
        for i in range(steps):
            if cfg.deadline is not None and i and time.monotonic() > cfg.deadline:
                cut = True  # score what this part of an epoch did, then stop (a large model's epoch is long)
                break
            idx = order[i * cfg.batch : (i + 1) * cfg.batch]
            if len(idx) < 2:
                continue  # BatchNorm needs more than one sample per batch
            step(tf.constant(x[idx]), tf.constant(targets[idx]), tf.constant(y_arr[idx]))
        value = held_out()
        history.append(value)
        if value > best + 1e-9:
            best, best_epoch, best_weights = value, epoch, student.get_weights()
            masters_best = [m.numpy() for m in masters.values()]
        if cut:
            stopped = "deadline"
            break
        if epoch - best_epoch >= cfg.patience:
            stopped = "early stop"
            break
    student.set_weights(best_weights)
    for m, value in zip(masters.values(), masters_best, strict=True):
        m.assign(value)
    if quantized:  # keep the float weights nearest the int8 grid the training settled on
        for v in quantized:
            v.assign(masters[id(v)])
    return DistillResult(epoch, best_epoch, before, best, history, stopped, time.monotonic() - t0)


def _quantized_kernels(model: Any) -> tuple[list[Any], set[int]]:
    """(the kernels int8 quantizes, the ids of the depthwise ones among them)."""
    from edgekit.compress.kgraph import class_name

    out, depthwise = [], set()
    for layer in model.layers:
        kind = class_name(layer)
        if kind in ("Conv1D", "Conv2D", "Dense", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D",
                    "SeparableConv2D"):
            for w in layer.trainable_weights:
                name = w.path.split("/")[-1]
                if name.endswith("kernel"):
                    out.append(w)
                    if kind.startswith("Depthwise") or name == "depthwise_kernel":
                        depthwise.add(id(w))
    return out, depthwise


def _fake_quant(w: Any, depthwise: bool = False) -> Any:
    """Symmetric per-output-channel int8 rounding, as the converter quantizes: the last axis, or for a
    depthwise kernel ([..., channels, multiplier]) its channel axis -2. Decided by the layer, not the shape:
    a Dense(1) or Conv2D(filters=1) kernel also ends in 1 but has one output channel."""
    from edgekit._tf import tf

    axes = [*range(len(w.shape) - 2), len(w.shape) - 1] if depthwise else list(range(len(w.shape) - 1))
    scale = tf.reduce_max(tf.abs(w), axis=axes, keepdims=True) / 127.0
    scale = tf.where(scale > 0, scale, tf.ones_like(scale))
    return tf.clip_by_value(tf.round(w / scale), -127, 127) * scale


def recalibrate_batchnorm(model: Any, x: np.ndarray, batch: int = 64) -> bool:
    """Set every BatchNorm's moving statistics to the average of its batch statistics over ``x`` run in
    training mode, batch by batch (after pruning, the remaining channels' statistics shift; a briefly trained
    model's moving averages lag behind); True when the model has BatchNorms."""
    from edgekit._tf import keras

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns:
        return False
    saved = [b.momentum for b in bns]
    try:
        for k, start in enumerate(range(0, len(x), batch), 1):
            if len(x) - start < 2 and k > 1:
                break
            for b in bns:
                b.momentum = (k - 1) / k  # moving = running mean of the batch statistics so far
            model(x[start : start + batch], training=True)
    finally:
        for b, m in zip(bns, saved, strict=True):
            b.momentum = m
    return True
