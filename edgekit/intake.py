"""Load a model file into an Artifact: .keras, legacy .h5, SavedModel dir, .tflite, .onnx.

TensorFlow is imported only when a format needs it, so `.tflite` intake stays fast.
ONNX goes through onnx2tf in a child process, offline: constant subgraphs are
folded first (onnxruntime's basic graph optimizations), and the sample-image
file onnx2tf would otherwise download for 4-D 3-channel inputs is generated
in the scratch directory it runs in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit import options
from edgekit._extras import require
from edgekit._files import check_regular, read_regular
from edgekit.errors import ModelError

FORMATS = {".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".tflite": "tflite", ".onnx": "onnx"}
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


@dataclass
class Artifact:
    """A model in hand: where it came from, and the forms edgekit can work with."""

    source: Path
    fmt: str  # keras | h5 | savedmodel | tflite | onnx
    keras_model: Any = None
    saved_model_dir: Path | None = None
    tflite: bytes | None = None  # the file's own bytes for .tflite sources
    float_tflite_cache: bytes | None = None
    input_shape: tuple[int, ...] | None = None  # the user's --input-shape (batch first), if given
    declared_shape: tuple[int | None, ...] | None = None  # the source's own input shape (None = dynamic)
    _scratch: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def is_tflite(self) -> bool:
        return self.fmt == "tflite"

    @property
    def name(self) -> str:
        return self.source.stem if self.source.is_file() else self.source.name

    def cleanup(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "savedmodel"
        raise ModelError(
            f"{path} is a directory but not a SavedModel (no saved_model.pb inside)",
            "pass the SavedModel folder itself, or a .keras/.h5/.tflite/.onnx file",
        )
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ModelError(
            f"{path}: unknown model format {path.suffix or '(no extension)'}",
            "supported: .keras, .h5, SavedModel directory, .tflite, .onnx",
        )
    return fmt


def parse_input_shape(value: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``--input-shape``: "1,96,96,3" or "96,96,3" (batch added later), or a sequence of ints."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace("x", ",").split(",")]
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise ModelError(f"--input-shape {value!r} is not a list of integers",
                             "write it like 1,96,96,3 (batch first) or 96,96,3") from None
    else:
        dims = tuple(int(d) for d in value)
    if not dims or any(d <= 0 for d in dims):
        raise ModelError(f"--input-shape {value!r} is invalid (every dimension must be a positive integer)",
                         "write it like 1,96,96,3 (batch first) or 96,96,3")
    return dims


def load(path: str | os.PathLike[str], input_shape: str | Sequence[int] | None = None) -> Artifact:
    """Load a model file; ``input_shape`` fixes dynamic input dimensions (see parse_input_shape)."""
    p = Path(path)
    shape = parse_input_shape(input_shape)
    if not p.exists():
        raise ModelError(f"model file {p} does not exist", "check the path")
    fmt = detect_format(p)
    if fmt == "tflite":
        art = _load_tflite(p)
    elif fmt in ("keras", "h5"):
        art = _load_keras(p, fmt)
    elif fmt == "savedmodel":
        art = Artifact(source=p, fmt=fmt, saved_model_dir=p)
    else:
        art = _load_onnx(p, shape is not None)
    art.input_shape = shape
    return art


def _load_tflite(p: Path) -> Artifact:
    from edgekit.analysis.graph import read_graph

    data = read_regular(p, options.MODEL_MAX_BYTES, "model file", ModelError)
    read_graph(data, where=str(p))  # validates, raises ModelError on corrupt data
    return Artifact(source=p, fmt="tflite", tflite=data)


def _load_keras(p: Path, fmt: str) -> Artifact:
    size = check_regular(p, options.MODEL_MAX_BYTES, "model file", ModelError)
    if size == 0:
        raise ModelError(f"model file {p} is empty (0 bytes)", "re-save the model")
    with open(p, "rb") as fh:
        head = fh.read(8)
    if fmt == "keras" and not head.startswith(b"PK"):
        raise ModelError(f"{p} is not a Keras v3 archive (a .keras file is a zip; this one starts with "
                         f"{head[:4].hex(' ')})", "save it with model.save('model.keras') from Keras 3")
    if fmt == "h5":
        h5py = require("h5py", "loading Keras models")
        if not h5py.is_hdf5(str(p)):
            raise ModelError(f"{p} is not an HDF5 file (legacy Keras .h5 models are HDF5)",
                             "pass the .h5 written by model.save('model.h5'), or a .keras file")
    from edgekit._tf import keras

    try:
        model = keras.models.load_model(p, compile=False)
    except Exception as exc:
        if fmt == "h5":  # written by TF 2.x Keras (tf_keras), which Keras 3 cannot always read back
            return _load_legacy_h5(p, exc)
        raise ModelError(
            f"cannot load Keras model {p}: {_first_line(exc)}",
            "save it with model.save('model.keras') from Keras 3, or pass a SavedModel/.tflite",
        ) from None
    return Artifact(source=p, fmt=fmt, keras_model=model)


def _load_legacy_h5(p: Path, keras3_error: BaseException) -> Artifact:
    """A legacy .h5 that Keras 3 cannot deserialize (MLPerf Tiny's VWW and wake-word references among
    them): loaded with tf_keras, the TF 2.x Keras, and exported to a SavedModel in a scratch folder, which
    every later step takes like a SavedModel the user gave."""
    tf_keras = require("tf_keras", "loading legacy TF 2.x .h5 models")
    from edgekit._tf import quiet_native, tf

    try:
        with quiet_native((1, 2)):
            model = tf_keras.models.load_model(str(p), compile=False)
    except Exception as exc:
        raise ModelError(f"cannot load Keras model {p}: Keras 3 says {_first_line(keras3_error)}; tf_keras says "
                         f"{_first_line(exc)}", "re-save it as .keras, or pass a SavedModel/.tflite") from None
    scratch = tempfile.TemporaryDirectory(prefix="edgekit-h5-")
    out = Path(scratch.name) / "saved_model"
    try:
        with quiet_native((1, 2)):
            tf.saved_model.save(model, str(out))
    except Exception as exc:
        scratch.cleanup()
        raise ModelError(f"cannot export legacy Keras model {p} for conversion: {_first_line(exc)}") from None
    art = Artifact(source=p, fmt="h5", saved_model_dir=out, _scratch=scratch)
    art.notes.append("legacy TF 2.x .h5: Keras 3 cannot read it, so it was loaded with tf_keras and converted "
                     "from its SavedModel export")
    return art


def stored_weight_count(path: Path) -> int | None:
    """The number of weights a .keras archive or legacy .h5 file stores, read with h5py from the file's
    weight datasets (model weights only, not optimizer state) without TensorFlow or loading them;
    None when the file is not laid out that way (intake.load then gives the precise error)."""
    import zipfile

    h5py = require("h5py", "loading Keras models")
    if check_regular(path, options.MODEL_MAX_BYTES, "model file", ModelError) == 0:
        return None
    total = 0

    def count(name: str, obj: object) -> None:
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            total += int(obj.size)

    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as z, z.open("model.weights.h5") as fh, h5py.File(fh, "r") as f:
                group = f.get("layers")
                if not isinstance(group, h5py.Group):
                    return None
                group.visititems(count)
        else:
            with h5py.File(path, "r") as f:
                group = f.get("model_weights")
                if not isinstance(group, h5py.Group):
                    return None
                group.visititems(count)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return total


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# ------------------------------------------------------------------- ONNX


def fold_constants(src: Path, dst: Path) -> None:
    """Fold constant subgraphs (e.g. ConstantOfShape weight generators) with onnxruntime."""
    ort = require("onnxruntime", "converting .onnx models")

    ort.set_default_logger_severity(4)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 4
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    drop_unused_inputs(dst)


def drop_unused_inputs(path: Path) -> None:
    """Drop graph inputs that are weights (old exporters list every initializer as an input too)
    or that no node reads any more (inputs of folded constant subgraphs): onnx2tf would take them
    as model inputs."""
    onnx = require("onnx", "converting .onnx models")

    model = onnx.load(str(path))
    weights = {init.name for init in model.graph.initializer}
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [i for i in model.graph.input if i.name not in weights and i.name in used]
    if len(keep) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(keep)
        onnx.save(model, str(path))


def _load_onnx(p: Path, fixed_shape: bool = False) -> Artifact:
    onnx = require("onnx", "converting .onnx models")

    if check_regular(p, options.MODEL_MAX_BYTES, "model file", ModelError) == 0:
        raise ModelError(f"model file {p} is empty (0 bytes)", "re-export the model")
    try:
        model = onnx.load(str(p))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"{p} is not a valid ONNX model: {_first_line(exc)}") from None
    scratch = tempfile.TemporaryDirectory(prefix="edgekit-onnx-")
    work = Path(scratch.name)
    folded = work / "folded.onnx"
    try:
        fold_constants(p, folded)
    except Exception:
        # onnxruntime cannot run it either; let onnx2tf try the graph as it is and give its reason
        shutil.copyfile(p, folded)
        drop_unused_inputs(folded)
    # onnx2tf downloads this file for 4-D 3-channel inputs unless it is in its working
    # directory: generate it (deterministic) so intake never touches the network.
    import numpy as np

    rng = np.random.default_rng(int(options.SEED.value))
    np.save(work / ONNX2TF_SAMPLE, rng.random((20, 128, 128, 3), dtype=np.float32))
    out = work / "saved_model"
    cmd = [
        sys.executable, "-c",
        "import sys, onnx2tf; onnx2tf.convert(input_onnx_file_path=sys.argv[1], "
        "output_folder_path=sys.argv[2], non_verbose=True, not_use_onnxsim=True)",
        str(folded), str(out),
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", NO_PROXY="*")
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False, env=env,
                              timeout=options.CONVERT_TIMEOUT.value)
    except subprocess.TimeoutExpired:
        scratch.cleanup()
        raise ModelError(f"onnx2tf did not finish converting {p} in {options.CONVERT_TIMEOUT.value:.0f} s") from None
    tflites = sorted(out.glob("*_float32.tflite"))
    if proc.returncode != 0 or not tflites:
        reason = _onnx2tf_reason(proc.stdout + "\n" + proc.stderr)
        scratch.cleanup()
        raise ModelError(
            f"onnx2tf cannot convert {p}: {reason}",
            "simplify or re-export the ONNX graph (opset >= 13), or convert it to .tflite yourself",
        )
    from edgekit.analysis.graph import read_graph

    art = Artifact(source=p, fmt="onnx", saved_model_dir=out, _scratch=scratch)
    art.float_tflite_cache = tflites[0].read_bytes()
    converted = read_graph(art.float_tflite_cache, where=f"onnx2tf's conversion of {p}")
    if fixed_shape and len(converted.inputs) == 1 and converted.dynamic_inputs():
        tensor = converted.input_tensors()[0]
        art.declared_shape = tuple(None if d < 0 else d for d in tensor.signature)
        art.float_tflite_cache = None  # dynamic: convert from the SavedModel with the fixed shape instead
    art.notes.append("converted from ONNX with onnx2tf (NCHW inputs become NHWC)")
    return art


def _onnx2tf_reason(text: str) -> str:
    import re

    clean = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = [ln.strip() for ln in clean.splitlines() if ln.strip()]
    for marker in ("Error:", "ERROR:", "Exception", "error"):
        hits = [ln for ln in lines if marker in ln and not ln.startswith("File ")]
        if hits:
            return hits[-1][:300]
    return (lines[-1] if lines else "no output")[:300]
