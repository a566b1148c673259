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
    from edgekit._extras import require

    load_digits = require("sklearn.datasets", "the demo's digits data set").load_digits

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
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
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


DEMO_TARGETS = ("cortex-m4", "android-arm64-cpu", "ios-ane")


def run_demo(targets: tuple[str, ...] = DEMO_TARGETS, out_dir: str | None = None, force: bool = False,
             as_json: bool = False) -> int:
    """Train the digits CNN, fit it to each target, print one table. Exit 0 when all fit."""
    from edgekit import output
    from edgekit.fitting import fit
    from edgekit.profiles import load_profile
    from edgekit.report.text import human_bytes, table

    for target in targets:  # every target and output path is checked before the training starts
        load_profile(target)
        if out_dir is not None:
            output.check_path(Path(out_dir) / Path(target).stem, force)
    if out_dir is not None:
        output.check_path(Path(out_dir) / "source", force)
    t0 = time.perf_counter()
    model, (xtr, ytr, xte, yte) = train_digits_cnn()
    float_acc = 100 * float(np.mean(np.argmax(model.predict(xte, verbose=0), axis=1) == yte))
    t_train = time.perf_counter() - t0
    if not as_json:
        print(f"trained a digits CNN on scikit-learn's digits in {t_train:.1f} s "
              f"(float test accuracy {float_acc:.1f}% on {len(xte)} held-out samples)", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgekit-demo-") as tmp:
        src = Path(tmp) / "digits_cnn.keras"
        model.save(src)
        np.savez(Path(tmp) / "calib.npz", x=xtr[:200], y=ytr[:200])
        np.savez(Path(tmp) / "eval.npz", x=xte, y=yte)
        root = Path(out_dir) if out_dir else Path(tmp) / "out"
        if out_dir is not None:  # what the README's Quick start runs on
            with output.Output(root / "source", force, command="demo") as kept:
                for name in ("digits_cnn.keras", "calib.npz", "eval.npz"):
                    kept.write(name, Path(tmp) / name)
                kept.publish()
        for target in targets:
            r = fit(src, target, eval_data=str(Path(tmp) / "eval.npz"), calib=str(Path(tmp) / "calib.npz"),
                    max_drop=1.0, out_dir=root / Path(target).stem, force=force, quiet=as_json)
            results.append(r)
    t_total = time.perf_counter() - t0
    if as_json:
        print(json.dumps({"float_accuracy": float_acc, "seconds": t_total,
                          "targets": [r.to_dict() for r in results]}, indent=2))
        return 0 if all(r.fits for r in results) else 1
    rows = []
    for r in results:
        c = r.winner or r.closest
        rows.append((r.target, c.name if c else "-", human_bytes(c.flash_bytes) if c else "-",
                     human_bytes(c.ram_bytes) if c else "-", f"{r.baseline:.1f}%",
                     f"{c.metric:.1f}%" if c and c.metric is not None else "-",
                     "yes" if r.fits else "NO"))
    print()
    print(table(["target", "artifact", "flash", "RAM", "accuracy before", "accuracy after", "fits"], rows,
                "llrrrrl"))
    print()
    for r in results:
        c = r.winner or r.closest
        if c is not None:
            print(f"{r.target}: {c.evaluated_on}; RAM is {c.ram_kind}")
    where = f"artifacts and reports in {out_dir}/" if out_dir else "pass -o DIR to keep the artifacts and reports"
    print(f"\ndemo finished in {t_total:.1f} s; {where}")
    return 0 if all(r.fits for r in results) else 1
