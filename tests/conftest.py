"""Shared fixtures. Models are built inside the tests; nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"

# Tests never depend on the network: point proxies at a dead port so any attempt fails fast.
for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    os.environ[var] = "http://127.0.0.1:9"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process, as a user would."""
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout, check=False)


def as_other_user(cmd: list[str]) -> list[str]:
    """``cmd`` run as uid/gid 65534: root reads every file, so a permission test run by root needs another
    user. Skips with the reason when setpriv is missing, or when that user cannot reach this checkout or its
    Python environment (a parent directory others cannot enter, such as a clone in ``mktemp -d``'s 0700
    directory): the CLI could not even import there."""
    import shutil

    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux): file permissions do not stop root")
    for top in {ROOT, Path(sys.prefix).resolve()}:
        for p in (top, *top.parents):
            mode = p.stat().st_mode
            if not mode & 0o001:
                pytest.skip(f"uid 65534 cannot enter {p} (mode {mode & 0o777:o}), so it cannot run edgekit from "
                            f"{ROOT}: clone into a directory others can traverse to run this test")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small CNN in every format edgekit takes, plus int8/float .tflite forms."""
    from edgekit._tf import keras, tf
    from edgekit.demo import train_digits_cnn

    out = tmp_path_factory.mktemp("models")
    model, (xtr, ytr, _, _) = train_digits_cnn(epochs=3)
    paths = {"keras": out / "cnn.keras", "h5": out / "cnn.h5", "savedmodel": out / "cnn_saved"}
    model.save(paths["keras"])
    model.save(paths["h5"])
    model.export(paths["savedmodel"], verbose=False)
    np.savez(out / "calib.npz", x=xtr[:100], y=ytr[:100])
    paths["calib"] = out / "calib.npz"
    from edgekit import data, intake
    from edgekit.stages import quantize

    art = intake.load(paths["keras"])
    calib = data.load(paths["calib"], (1, 8, 8, 1))
    paths["int8"] = out / "cnn_int8.tflite"
    paths["int8"].write_bytes(quantize.convert(art, "int8", calib, "int8"))
    paths["float"] = out / "cnn_float.tflite"
    paths["float"].write_bytes(quantize.convert(art, "float32"))

    # a float model with an operator TFLM does not register (TOPK_V2)
    @tf.function(input_signature=[tf.TensorSpec((1, 16), tf.float32)])
    def topk(x: tf.Tensor) -> tf.Tensor:
        return tf.math.top_k(x, k=3).values

    conv = tf.lite.TFLiteConverter.from_concrete_functions([topk.get_concrete_function()])
    paths["topk"] = out / "topk.tflite"
    paths["topk"].write_bytes(conv.convert())
    del keras
    return paths
