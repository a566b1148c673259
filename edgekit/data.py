"""Calibration and evaluation data: .npy, .npz (keys ``x`` and ``y``), or a folder of images.

Shapes, dtypes and values are checked against the model before any work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import options
from edgekit.errors import DataError

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm"}


@dataclass
class Dataset:
    x: np.ndarray
    y: np.ndarray | None
    source: str
    synthetic: bool = False

    def __len__(self) -> int:
        return int(self.x.shape[0])


def load(path: str | os.PathLike[str], input_shape: tuple[int, ...]) -> Dataset:
    """Load and check data for a model whose single input has ``input_shape`` (batch first)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file {p} does not exist", "pass a .npy, .npz (keys x, y) or an image folder")
    if p.is_dir():
        x, y = _load_images(p, input_shape), None
    elif p.suffix == ".npy":
        x, y = _np_load(p), None
    elif p.suffix == ".npz":
        with _np_open(p) as z:
            if "x" not in z.files:
                raise DataError(f"{p} has no array named 'x' (found: {', '.join(z.files) or 'none'})",
                                "save with np.savez(path, x=inputs, y=labels)")
            x = z["x"]
            y = z["y"] if "y" in z.files else None
    else:
        raise DataError(f"{p}: unsupported data format {p.suffix!r}", "use .npy, .npz or a folder of images")
    x = check_inputs(x, input_shape, str(p))
    if y is not None:
        y = np.asarray(y)
        if y.shape[0] != x.shape[0]:
            raise DataError(f"{p}: y has {y.shape[0]} rows but x has {x.shape[0]}", "one label per sample")
    return Dataset(x=x, y=y, source=str(p))


def _np_open(p: Path) -> np.lib.npyio.NpzFile:
    try:
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {p}: {exc}") from None


def _np_load(p: Path) -> np.ndarray:
    try:
        return np.asarray(np.load(p, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {p}: {exc}") from None


def check_inputs(x: np.ndarray, input_shape: tuple[int, ...], where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise DataError(f"{where}: inputs have dtype {x.dtype} (must be numeric)")
    want = tuple(input_shape[1:])
    if x.ndim == len(want) and x.shape == want:
        x = x[None, ...]  # a single sample
    if tuple(x.shape[1:]) != want:
        raise DataError(
            f"{where}: inputs have shape {tuple(x.shape)} but the model takes (N, {', '.join(map(str, want))})",
            "reshape the samples to the model's input (channels last)",
        )
    if x.shape[0] == 0:
        raise DataError(f"{where}: no samples")
    xf = x.astype(np.float32)
    if not np.all(np.isfinite(xf)):
        bad = int(np.size(xf) - np.count_nonzero(np.isfinite(xf)))
        raise DataError(f"{where}: {bad} input values are NaN or Inf", "clean the data before calibrating")
    return xf


def _load_images(folder: Path, input_shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image

    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXT)
    if not files:
        raise DataError(f"{folder} holds no images ({', '.join(sorted(IMAGE_EXT))})")
    if len(input_shape) != 4:
        raise DataError(f"{folder}: images need a 4-D model input, the model takes {input_shape}")
    _, h, w, c = input_shape
    out = []
    for f in files:
        try:
            img = Image.open(f).convert("L" if c == 1 else "RGB").resize((w, h))
        except OSError as exc:
            raise DataError(f"cannot read image {f}: {exc}") from None
        arr = np.asarray(img, dtype=np.float32) / 255.0
        out.append(arr.reshape(h, w, c))
    return np.stack(out)


def synthetic(input_shape: tuple[int, ...], n: int | None = None) -> Dataset:
    """Uniform [0, 1) samples, seeded: a stand-in when no calibration data is given."""
    count = int(n or options.SYNTHETIC_CALIB_SAMPLES.value)
    rng = np.random.default_rng(int(options.SEED.value))
    x = rng.random((count, *input_shape[1:]), dtype=np.float32)
    return Dataset(x=x, y=None, source="synthetic uniform [0, 1) samples", synthetic=True)
