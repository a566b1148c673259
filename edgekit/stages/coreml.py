"""Core ML: an mlprogram .mlpackage through a single concrete function, and its compression.

A Keras 3 ``model.export()`` SavedModel carries several functions and
coremltools rejects it, so Keras models are traced to one concrete function
with batch 1 and converted from that.

Compression uses ``coremltools.optimize.coreml`` (linear int8 weights,
k-means palettization, magnitude pruning). Core ML cannot run predictions off
macOS, so on Linux accuracy is measured by applying the same weight
compression to the source Keras model (:func:`emulate_on_keras`) and
evaluating that; the report says so.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit._quiet import quiet_native
from edgekit.errors import StageError
from edgekit.intake import Artifact
from edgekit.profiles import TargetProfile

WEIGHT_THRESHOLD = 2048  # weights with fewer elements stay uncompressed (coremltools' default)
COMPRESSIONS = ("none", "linear-int8", "palettize", "prune", "palettize-grouped", "linear-int4-block")
# the iOS 18 modes (coremltools.optimize.coreml): k-means palettization with one table per group of
# GROUP_SIZE output channels, and 4-bit linear weights with one scale per BLOCK_SIZE input elements
IOS18_KINDS = ("palettize-grouped", "linear-int4-block")
GROUP_SIZE = 16
BLOCK_SIZE = 32


def can_predict() -> bool:
    return platform.system() == "Darwin"


def _ct() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from edgekit._extras import require

    with quiet_native((1, 2)):
        return require("coremltools", "Core ML conversion")


def convert(art: Artifact, profile: TargetProfile, out: Path) -> Path:
    """Convert ``art`` to ``out`` (an .mlpackage directory) as ``profile`` asks."""
    if art.tflite is not None:
        raise StageError(
            f"target {profile.name} runs Core ML, which cannot take a .tflite file ({art.source})",
            "pass the source model (.keras, .h5, SavedModel or .onnx)",
        )
    ct = _ct()
    from edgekit._tf import tf
    from edgekit.stages.quantize import input_shape

    if art.keras_model is not None:
        model = art.keras_model
        fn = tf.function(lambda x: model(x, training=False))
        source: object = [fn.get_concrete_function(tf.TensorSpec(input_shape(art), model.inputs[0].dtype))]
    else:
        loaded = tf.saved_model.load(str(art.saved_model_dir))
        source = [loaded.signatures["serving_default"]]
    precision = ct.precision.FLOAT16 if profile.compute_precision != "fp32" else ct.precision.FLOAT32
    target_name = profile.min_deployment_target or "iOS16"
    target = getattr(ct.target, target_name, None)
    if target is None:
        raise StageError(f"unknown Core ML deployment target {target_name!r} (e.g. iOS16, iOS17)")
    try:
        with quiet_native((1, 2)):
            ml = ct.convert(source, source="tensorflow", convert_to="mlprogram",
                            minimum_deployment_target=target, compute_precision=precision)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise StageError(f"Core ML conversion of {art.source} failed: {text[0] if text else exc}"[:400]) from None
    ml.save(str(out))
    return out


def compress(src: Path, kind: str, value: float, out: Path) -> Path:
    """Apply one ``coremltools.optimize.coreml`` compression to the package at ``src``."""
    ct = _ct()
    import coremltools.optimize.coreml as cto

    op_config: Any
    if kind == "linear-int8":
        op_config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD)
        fn = cto.linear_quantize_weights
    elif kind == "palettize":
        op_config = cto.OpPalettizerConfig(mode="kmeans", nbits=int(value), weight_threshold=WEIGHT_THRESHOLD)
        fn = cto.palettize_weights
    elif kind == "palettize-grouped":
        op_config = cto.OpPalettizerConfig(mode="kmeans", nbits=int(value), granularity="per_grouped_channel",
                                           group_size=GROUP_SIZE, weight_threshold=WEIGHT_THRESHOLD)
        fn = cto.palettize_weights
    elif kind == "linear-int4-block":
        op_config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                                block_size=BLOCK_SIZE, weight_threshold=WEIGHT_THRESHOLD)
        fn = cto.linear_quantize_weights
    elif kind == "prune":
        op_config = cto.OpMagnitudePrunerConfig(target_sparsity=float(value), weight_threshold=WEIGHT_THRESHOLD)
        fn = cto.prune_weights
    else:
        raise StageError(f"unknown Core ML compression {kind!r} (must be one of {', '.join(COMPRESSIONS)})")
    try:
        with quiet_native((1, 2)):
            ml = ct.models.MLModel(str(src), skip_model_load=True)
            compressed = fn(ml, config=cto.OptimizationConfig(global_config=op_config))
            compressed.save(str(out))
    except (ValueError, NotImplementedError) as exc:  # e.g. an iOS 18 mode on an older deployment target
        text = str(exc).strip().splitlines()
        raise StageError(f"Core ML compression {kind} failed: {text[0][:200] if text else exc}") from None
    return out


def decompressed_weights(path: Path) -> list[np.ndarray]:
    """The weights of the compressed package at ``path`` as Core ML will use them: coremltools' own
    ``decompress_weights`` expands its palettes / blockwise scales (its k-means clusters, not ours)."""
    ct = _ct()
    import coremltools.optimize.coreml as cto

    with quiet_native((1, 2)):
        ml = ct.models.MLModel(str(path), skip_model_load=True)
        dense = cto.decompress_weights(ml)
    prog = dense._mil_program
    if prog is None:
        raise StageError(f"coremltools did not give the program of {path}")
    out = []
    for f in prog.functions.values():
        for op in f.operations:
            if op.op_type == "const":
                v = op.outputs[0].val
                if v is not None and np.ndim(v) >= 2:
                    out.append(np.asarray(v, dtype=np.float32))
    return out


_TO_COREML = {4: (3, 2, 0, 1), 2: (1, 0), 3: (2, 1, 0)}  # Keras kernel layout -> Core ML weight layout


@contextlib.contextmanager
def weights_from_package(model: Any, path: Path) -> Iterator[Any]:
    """Temporarily give ``model``'s kernels the values the compressed package holds (decompressed by
    coremltools); each kernel takes the package weight of its transposed shape nearest to its own values."""
    consts = decompressed_weights(path)
    saved: list[tuple[Any, np.ndarray]] = []
    try:
        for var in model.weights:
            w = np.asarray(var.numpy())
            perm = _TO_COREML.get(w.ndim)
            if perm is None or w.size < WEIGHT_THRESHOLD:
                continue
            target = w.transpose(perm)
            same = [c for c in consts if c.shape == target.shape]
            if not same:
                continue
            best = min(same, key=lambda c: float(np.mean(np.abs(c - target))))
            saved.append((var, w))
            var.assign(best.transpose(np.argsort(perm)).astype(w.dtype))
        if not saved:
            raise StageError(f"no weight of {path.name} matches a kernel of the Keras model")
        yield model
    finally:
        for var, w in saved:
            var.assign(w)


def package_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ------------------------------------------------------------------ emulation on Linux


def _kmeans_1d(w: np.ndarray, k: int, iters: int = 25) -> np.ndarray:
    flat = w.reshape(-1).astype(np.float64)
    centers = np.quantile(flat, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        idx = np.abs(flat[:, None] - centers[None, :]).argmin(axis=1)
        for c in range(k):
            sel = flat[idx == c]
            if sel.size:
                centers[c] = sel.mean()
    idx = np.abs(flat[:, None] - centers[None, :]).argmin(axis=1)
    return centers[idx].reshape(w.shape).astype(w.dtype)


def compress_weight(w: np.ndarray, kind: str, value: float) -> np.ndarray:
    """The weight as the compressed Core ML model holds it (quantize-dequantize in numpy)."""
    if w.size < WEIGHT_THRESHOLD or kind == "none":
        return w
    if kind == "linear-int8":
        axis = w.ndim - 1  # Keras kernels keep output channels last
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale = np.max(np.abs(w), axis=reduce, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        return (np.clip(np.round(w / scale), -127, 127) * scale).astype(w.dtype)
    if kind == "palettize":
        return _kmeans_1d(w, 2 ** int(value))
    if kind == "prune":
        k = int(np.floor(w.size * float(value)))
        if k == 0:
            return w
        threshold = np.partition(np.abs(w).reshape(-1), k - 1)[k - 1]
        return np.where(np.abs(w) <= threshold, 0, w).astype(w.dtype)
    raise StageError(f"unknown Core ML compression {kind!r}")


@contextlib.contextmanager
def emulate_on_keras(model: Any, kind: str, value: float) -> Iterator[Any]:
    """Temporarily replace ``model``'s kernels by their compressed values; restores them after."""
    saved = []
    try:
        for var in model.weights:
            w = np.asarray(var.numpy())
            if w.ndim < 2:  # biases and norms stay float (fp16) in Core ML's default configs
                continue
            saved.append((var, w))
            var.assign(compress_weight(w, kind, value))
        yield model
    finally:
        for var, w in saved:
            var.assign(w)
