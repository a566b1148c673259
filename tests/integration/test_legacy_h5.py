"""Legacy TF 2.x .h5 models that Keras 3 cannot deserialize (a DepthwiseConv2D config from tf_keras, as in
MLPerf Tiny's VWW and wake-word references) are loaded through tf_keras, then analyzed and fitted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow
MLPERF_TINY_ROOT = os.environ.get("MLPERF_TINY_ROOT", "")


@pytest.fixture(scope="module")
def legacy_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tf_keras

    from edgekit._tf import quiet_native

    out = tmp_path_factory.mktemp("legacy")
    tf_keras.utils.set_random_seed(0)
    m = tf_keras.Sequential([tf_keras.layers.Input((8, 8, 3)), tf_keras.layers.DepthwiseConv2D(3, activation="relu"),
                             tf_keras.layers.Flatten(), tf_keras.layers.Dense(4)])
    with quiet_native((1, 2)):
        m.save(out / "legacy.h5")
    x = np.random.default_rng(0).random((40, 8, 8, 3)).astype(np.float32)
    np.savez(out / "eval.npz", x=x, y=np.argmax(m.predict(x, verbose=0), axis=1))
    import keras

    with pytest.raises(Exception, match="DepthwiseConv2D"):  # the premise: Keras 3 cannot read it back
        keras.models.load_model(out / "legacy.h5", compile=False)
    return out / "legacy.h5"


def test_legacy_h5_is_analyzed_and_fitted(legacy_h5: Path, tmp_path: Path) -> None:
    proc = run_cli("analyze", str(legacy_h5), "-t", "cortex-m4", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert "DEPTHWISE_CONV_2D" in report["ops"]
    assert any("loaded with tf_keras" in n for n in report["notes"])
    proc = run_cli("fit", str(legacy_h5), "-t", "cortex-m4", "--eval", str(legacy_h5.with_name("eval.npz")),
                   "--candidates", "int8", "--max-drop", "20", "-o", str(tmp_path / "out"),
                   env={"EDGEKIT_CACHE_DIR": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "model.tflite").is_file()


@pytest.mark.skipif(not MLPERF_TINY_ROOT, reason="MLPERF_TINY_ROOT is not set (a mlcommons/tiny checkout)")
@pytest.mark.parametrize("rel", ["benchmark/training/visual_wake_words/trained_models/vww_96.h5",
                                 "benchmark/training/streaming_wakeword/trained_models/str_ww_ref_model.h5"])
def test_mlperf_tiny_legacy_references_load(rel: str) -> None:
    proc = run_cli("analyze", str(Path(MLPERF_TINY_ROOT) / rel), "-t", "cortex-m7", "--json", timeout=900)
    assert proc.returncode in (0, 1), proc.stderr  # a verdict, not an error
    assert any("loaded with tf_keras" in n for n in json.loads(proc.stdout)["notes"])
