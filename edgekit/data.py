"""Calibration and evaluation data: .npy, .npz (keys ``x`` and ``y``), or a folder of images.

Shapes, dtypes and values are checked against the model before any work starts.
"""

from __future__ import annotations

import os
import zipfile
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


DATA_MAX_BYTES = options.Option("data_max_bytes", float(8 << 30),
                                "largest calibration/evaluation data file edgekit reads")


def _check_file(p: Path) -> None:
    """Only regular files of a sane size: a FIFO would block, /dev/zero would never end."""
    from edgekit._files import check_regular

    if check_regular(p, DATA_MAX_BYTES, "data file", DataError) == 0:
        raise DataError(f"data file {p} is empty (0 bytes)", "re-save it with np.save / np.savez")


def _check_magic(p: Path) -> None:
    """A .npy starts with \x93NUMPY and a .npz is a zip archive; anything else numpy would try to unpickle."""
    try:
        with p.open("rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise DataError(f"cannot read data file {p}: {exc.strerror}") from None
    if head.startswith(b"\x93NUMPY") or head.startswith(b"PK"):
        return
    raise DataError(f"{p} is not a NumPy file (neither .npy nor .npz content)",
                    "save it with np.save (.npy) or np.savez (.npz)")


def load(path: str | os.PathLike[str], input_shape: tuple[int, ...]) -> Dataset:
    """Load and check data for a model whose single input has ``input_shape`` (batch first)."""
    p = Path(path)
    if str(path) == "":
        raise DataError("the data path is empty", "pass a .npy, .npz (keys x, y) or an image folder")
    if not p.exists():
        raise DataError(f"data file {p} does not exist", "pass a .npy, .npz (keys x, y) or an image folder")
    if p.is_dir():
        x, y = _load_images(p, input_shape), None
    elif p.suffix.lower() == ".npy":
        _check_file(p)
        _check_magic(p)
        x, y = _np_load(p), None
    elif p.suffix.lower() == ".npz":
        _check_file(p)
        _check_magic(p)
        with _np_open(p) as z:
            if "x" not in z.files:
                raise DataError(f"{p} has no array named 'x' (found: {', '.join(z.files) or 'none'})",
                                "save with np.savez(path, x=inputs, y=labels)")
            x = _member(z, "x", p)
            y = _member(z, "y", p) if "y" in z.files else None
    else:
        raise DataError(f"{p}: unsupported data format {p.suffix!r}", "use .npy, .npz or a folder of images")
    x = check_inputs(x, input_shape, str(p))
    if y is not None:
        y = np.asarray(y)
        if y.ndim == 0:
            raise DataError(f"{p}: y is a single value, not one label per sample", "save y as an array of labels")
        if y.shape[0] != x.shape[0]:
            raise DataError(f"{p}: y has {y.shape[0]} rows but x has {x.shape[0]}", "one label per sample")
    return Dataset(x=x, y=y, source=str(p))


TRAIN_MIN_SAMPLES = 10  # a part is held out for early stopping


def load_training(path: str | os.PathLike[str], input_shape: tuple[int, ...],
                  min_samples: int = TRAIN_MIN_SAMPLES) -> Dataset:
    """Training data (``--train``) for a model whose single input has ``input_shape`` (batch first).

    The formats and every check of :func:`load` (regular files of sane size, NumPy magic, no pickles,
    shapes, dtypes, NaN/Inf); labels (``y``) are optional, and when present must be numeric and finite,
    one row per sample. At least ``min_samples`` samples. Every problem is one DataError naming ``--train``
    and the file, raised before any training starts."""
    try:
        ds = load(path, input_shape)
    except DataError as exc:
        raise DataError(f"--train: {exc.message}", exc.hint) from None
    if ds.y is not None:
        if ds.y.dtype.kind not in "fiub":
            raise DataError(f"--train: {ds.source}: labels have dtype {ds.y.dtype} (must be numeric)",
                            "save y as integer class indices or float targets")
        yf = ds.y.astype(np.float64)
        if not np.all(np.isfinite(yf)):
            bad = int(yf.size - np.count_nonzero(np.isfinite(yf)))
            raise DataError(f"--train: {ds.source}: {bad} label values are NaN or Inf", "clean the labels")
    if len(ds) < min_samples:
        raise DataError(f"--train: {ds.source} has {len(ds)} samples, too few to fine-tune (need at least "
                        f"{min_samples}: a part is held out for early stopping)", "pass more training samples")
    return ds


def _np_problem(p: Path, exc: BaseException) -> DataError:
    text = str(exc)
    if "pickle" in text.lower() or "object" in text.lower():
        return DataError(f"{p} holds Python objects (pickled data), which edgekit does not load",
                         "save plain numeric arrays: np.savez(path, x=np.asarray(x, np.float32), y=labels)")
    first = " ".join(text.split())[:120]
    return DataError(f"{p} is not a valid NumPy file ({first or type(exc).__name__})",
                     "save it with np.save (.npy) or np.savez (.npz)")


def _np_open(p: Path) -> np.lib.npyio.NpzFile:
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise _np_problem(p, exc) from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{p} is a .npy array saved under a .npz name", "rename it to .npy, or save with np.savez")
    return z


def _member(z: np.lib.npyio.NpzFile, key: str, p: Path) -> np.ndarray:
    try:
        return np.asarray(z[key])
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise _np_problem(p, exc) from None


def _np_load(p: Path) -> np.ndarray:
    try:
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise _np_problem(p, exc) from None
    if isinstance(data, np.lib.npyio.NpzFile):
        data.close()
        raise DataError(f"{p} is a .npz archive saved under a .npy name", "rename it to .npz")
    return np.asarray(data)


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
    from edgekit._extras import require

    Image = require("PIL.Image", "reading image folders")

    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXT and f.is_file())
    if not files:
        raise DataError(f"{folder} holds no images ({', '.join(sorted(IMAGE_EXT))})")
    if len(input_shape) != 4:
        raise DataError(f"{folder}: images need a 4-D model input, the model takes {input_shape}")
    _, h, w, c = input_shape
    out = []
    for f in files:
        _check_file(f)
        try:
            with Image.open(f) as opened:
                img = opened.convert("L" if c == 1 else "RGB").resize((w, h))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {f}: {' '.join(str(exc).split())[:150]}") from None
        arr = np.asarray(img, dtype=np.float32) / 255.0
        out.append(arr.reshape(h, w, c))
    return np.stack(out)


def synthetic(input_shape: tuple[int, ...], n: int | None = None) -> Dataset:
    """Uniform [0, 1) samples, seeded: a stand-in when no calibration data is given."""
    count = int(n or options.SYNTHETIC_CALIB_SAMPLES.value)
    rng = np.random.default_rng(int(options.SEED.value))
    x = rng.random((count, *input_shape[1:]), dtype=np.float32)
    return Dataset(x=x, y=None, source="synthetic uniform [0, 1) samples", synthetic=True)
