"""Core ML conversion: an mlprogram .mlpackage through a single concrete function.

A Keras 3 ``model.export()`` SavedModel carries several functions and
coremltools rejects it, so Keras models are traced to one concrete function
with batch 1 and converted from that.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgekit.errors import StageError
from edgekit.intake import Artifact
from edgekit.profiles import TargetProfile


def _target(ct: object, name: str) -> object:
    try:
        return getattr(ct.target, name)  # type: ignore[attr-defined]
    except AttributeError:
        raise StageError(f"unknown Core ML deployment target {name!r} (e.g. iOS16, iOS17)") from None


def convert(art: Artifact, profile: TargetProfile, out: Path) -> Path:
    """Convert ``art`` to ``out`` (an .mlpackage directory) as ``profile`` asks."""
    if art.tflite is not None:
        raise StageError(
            f"target {profile.name} runs Core ML, which cannot take a .tflite file ({art.source})",
            "pass the source model (.keras, .h5, SavedModel or .onnx)",
        )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import coremltools as ct

    from edgekit._tf import quiet_native, tf
    from edgekit.stages.quantize import input_shape

    if art.keras_model is not None:
        model = art.keras_model
        fn = tf.function(lambda x: model(x, training=False))
        source: object = [fn.get_concrete_function(tf.TensorSpec(input_shape(art), model.inputs[0].dtype))]
    else:
        loaded = tf.saved_model.load(str(art.saved_model_dir))
        source = [loaded.signatures["serving_default"]]
    precision = ct.precision.FLOAT16 if profile.compute_precision != "fp32" else ct.precision.FLOAT32
    try:
        with quiet_native((1, 2)):
            ml = ct.convert(
                source,
                source="tensorflow",
                convert_to="mlprogram",
                minimum_deployment_target=_target(ct, profile.min_deployment_target or "iOS16"),
                compute_precision=precision,
            )
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise StageError(f"Core ML conversion of {art.source} failed: {text[0] if text else exc}"[:400]) from None
    ml.save(str(out))
    return out


def package_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
