#!/usr/bin/env python3
"""Does weight clustering before quantization help the sub-8-bit rungs? The demo's digits CNN (15 epochs, seed 0;
200 calibration, 360 held-out eval and 1,437 training samples), `fit --level 2` with and without clustering, at
equal bytes, without and with a fine-tune (--train with labels; --train without labels: soft targets).

Accuracy is top-1 on the 360 held-out samples (one sample = 0.28 points) and the output error against the float
model (mse-to-float, more sensitive than top-1 on so small a set). A control separates what the labelled
fine-tune adds by training alone: the float model fine-tuned the same way (same epochs, seed, held-out split;
no clustering), then INT4 / ai-edge-quantizer int4 like the plain rungs.

    .venv/bin/python benchmarks/cluster_effect.py
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TFLM = ["int8", "int8-per-tensor", "int4", "lut-4bit", "cluster16-int4", "cluster16-lut-4bit", "cluster32-lut-5bit",
        "cluster64-lut-6bit"]
PHONE = ["int8", "int4-weights", "cluster16-int4-weights"]


def control(src: Path, calib: Path, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray,
            float_te: np.ndarray) -> dict[str, tuple[int, float, float]]:
    """The float model fine-tuned on the labels without clustering (the same fine-tune), then INT4 (TFLM,
    stripped like the rung) and ai-edge-quantizer int4 (LiteRT): (bytes, top-1, mse-to-float)."""
    from edgekit import data, intake
    from edgekit.evaluate import run_litert, run_tflm
    from edgekit.stages import cluster, cluster_tune, int4, litert_int4, quantize, strip
    from edgekit.stages.calibrated import Calibration

    art = intake.load(src)
    model = cluster.copy_model(art.keras_model)
    rep = cluster_tune.fine_tune(model, [], xtr, ytr, "labels-ce", probabilities=True)
    tuned = intake.Artifact(source=src, fmt="keras", keras_model=model)
    packed, _, _ = int4.rewrite(Calibration(tuned, data.load(calib, (1, 8, 8, 1))).int8("int8"))
    packed = strip.strip_for_micro(packed, bias_quantization=False)
    a4 = litert_int4.quantize(quantize.convert(tuned, "float32"), "dynamic_wi4c_afp32")
    out = {}
    for name, tfl, runner in (("int4 of the fine-tuned float model", packed, run_tflm),
                              ("ai-edge-quantizer int4 of the fine-tuned float model", a4, run_litert)):
        o = runner(tfl, xte)
        out[name] = (len(tfl), 100 * float(np.mean(o.argmax(1) == yte)), float(np.mean((o - float_te) ** 2)))
    print(f"control fine-tune: {rep.describe()}")
    return out


def main() -> None:
    from edgekit.demo import train_digits_cnn
    from edgekit.fitting import fit
    from edgekit.fitting.build import keras_outputs

    model, (xtr, ytr, xte, yte) = train_digits_cnn()
    float_te = keras_outputs(model, xte)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        model.save(t / "digits.keras")
        np.savez(t / "calib.npz", x=xtr[:200], y=ytr[:200])
        np.savez(t / "eval.npz", x=xte, y=yte)
        np.savez(t / "train.npz", x=xtr, y=ytr)
        np.savez(t / "train_unlabelled.npz", x=xtr)
        os.environ["EDGEKIT_CACHE_DIR"] = str(t / "cache")
        for variant, train in (("no fine-tune", None), ("--train labels", "train.npz"),
                               ("--train no labels", "train_unlabelled.npz")):
            for target, only in (("cortex-m4", TFLM), ("android-arm64-cpu", PHONE)):
                t0 = time.perf_counter()
                r = fit(t / "digits.keras", target, str(t / "eval.npz"), calib=str(t / "calib.npz"), level=2,
                        only=only, metric="top1,mse-to-float", quiet=True, use_cache=False, goal="size",
                        train=str(t / train) if train else None)
                winner = r.winner.name if r.winner else None
                print(f"{target} {variant}: {time.perf_counter() - t0:.1f} s, winner {winner}")
                for c in r.candidates:
                    if c.error:
                        print(f"   {c.name}: {c.error}")
                        continue
                    if "fine-tuned centroids" in c.detail:
                        tune = [p for p in c.detail.split("; ") if any(w in p for w in ("epoch", "held-out", " s on "))]
                        print(f"   {c.name}: {'; '.join(tune)}")
                    row = rows.setdefault(f"{target} {c.name}", {"bytes": c.flash_bytes, "fits": c.fits})
                    row[variant] = (c.metrics["top1"], c.metrics["mse-to-float"])
        ctl = control(t / "digits.keras", t / "calib.npz", xtr, ytr, xte, yte, float_te)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}; float model top-1 {100 * np.mean(float_te.argmax(1) == yte):.2f}%")
    print("| candidate | bytes | no fine-tune: top-1 / mse-to-float | --train labels | --train no labels |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        cells = [f"{row[v][0]:.2f}% / {row[v][1]:.2e}" if v in row else "-"
                 for v in ("no fine-tune", "--train labels", "--train no labels")]
        print(f"| {name}{'' if row['fits'] else ' (does not fit)'} | {row['bytes']:,} B | " + " | ".join(cells) + " |")
    for name, (size, top1, mse) in ctl.items():
        print(f"| control: {name} | {size:,} B | - | {top1:.2f}% / {mse:.2e} | - |")


if __name__ == "__main__":
    main()
