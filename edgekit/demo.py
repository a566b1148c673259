"""The embedded default: train a small CNN on scikit-learn's digits (ships inside the
package, no download), then analyse it for a Cortex-M target with real calibration data."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import options


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as (N, 8, 8, 1) float32 in [0, 1]; a fixed 80/20 train/test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def build_digits_cnn() -> Any:
    from edgekit._tf import keras

    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10),
        keras.layers.Softmax(),
    ])


def train_digits_cnn(epochs: int = 15) -> tuple[Any, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    from edgekit._tf import keras

    seed = int(options.SEED.value)
    keras.utils.set_random_seed(seed)
    split = digits_split(seed)
    xtr, ytr, _, _ = split
    model = build_digits_cnn()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(xtr, ytr, epochs=epochs, batch_size=64, verbose=0)
    return model, split


def run_demo(target: str = "cortex-m4", as_json: bool = False) -> int:
    from edgekit.analyze import analyze

    t0 = time.perf_counter()
    model, (xtr, _, xte, yte) = train_digits_cnn()
    float_acc = float(np.mean(np.argmax(model.predict(xte, verbose=0), axis=1) == yte))
    t_train = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="edgekit-demo-") as tmp:
        path = Path(tmp) / "digits_cnn.keras"
        model.save(path)
        calib = Path(tmp) / "calib.npz"
        np.savez(calib, x=xtr[:200])
        report = analyze(path, target, calib=str(calib))
    t_total = time.perf_counter() - t0
    if as_json:
        out = report.to_dict()
        out["demo"] = {"float_accuracy": float_acc, "train_seconds": t_train, "total_seconds": t_total}
        print(json.dumps(out, indent=2))
    else:
        from edgekit.report.text import render_analysis

        print(f"trained a digits CNN on scikit-learn's digits in {t_train:.1f} s "
              f"(float test accuracy {100 * float_acc:.1f}%)\n")
        print(render_analysis(report))
        print(f"\ndemo finished in {t_total:.1f} s")
    return 0 if report.fits else 1
