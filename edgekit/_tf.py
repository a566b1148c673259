"""TensorFlow and Keras, imported on first use only (keeps `edgekit --help` fast).

TensorFlow's C++ start-up chatter (absl "InitializeLog", CUDA stubs) is written
to file descriptor 2 before any Python logging applies; it is silenced for the
duration of the import only.
"""

from __future__ import annotations

import os

from edgekit._quiet import quiet_native

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")


try:
    with quiet_native():
        import keras
        import tensorflow as tf
except ImportError as exc:
    from edgekit._extras import missing

    raise missing(exc.name or "tensorflow", "converting .keras, .h5, SavedModel and .onnx models") from None

tf.get_logger().setLevel("ERROR")

__all__ = ["keras", "quiet_native", "tf"]
