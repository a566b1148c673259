#!/usr/bin/env python3
"""Analyse a Keras model for every Cortex-M target through the Python API.

    .venv/bin/python examples/analyze_a_model.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

import edgekit
from edgekit.demo import train_digits_cnn


def main() -> None:
    model, (xtr, _, _, _) = train_digits_cnn(epochs=5)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "digits.keras"
        model.save(path)
        calib = Path(tmp) / "calib.npz"
        np.savez(calib, x=xtr[:100])
        for target in ("cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55"):
            r = edgekit.analyze(path, target, calib=str(calib))
            print(f"{target:14s} flash {r.flash_bytes:7,d} B  arena {r.ram_bytes:6,d} B  "
                  f"{'fits' if r.fits else 'DOES NOT FIT'}")


if __name__ == "__main__":
    main()
