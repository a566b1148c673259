"""Calibration/evaluation data loading and checks (no TensorFlow needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit import data
from edgekit.errors import DataError


def test_image_folder_is_resized_scaled_and_channel_matched(tmp_path: Path) -> None:
    from PIL import Image

    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (10, 20, 30)]):
        Image.new("RGB", (20, 12), color).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    rgb = data.load(tmp_path, (1, 8, 8, 3))
    assert rgb.x.shape == (3, 8, 8, 3) and rgb.x.dtype == np.float32
    assert rgb.x[0, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.0])
    gray = data.load(tmp_path, (1, 8, 8, 1))
    assert gray.x.shape == (3, 8, 8, 1) and gray.x.min() >= 0.0 and gray.x.max() <= 1.0


def test_npz_and_npy(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((5, 4, 4, 1), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(5))
    d = data.load(tmp_path / "d.npz", (1, 4, 4, 1))
    assert d.x.shape == (5, 4, 4, 1) and d.y is not None and d.y.tolist() == [0, 1, 2, 3, 4]
    np.save(tmp_path / "d.npy", x[0])  # a single sample without the batch axis
    assert data.load(tmp_path / "d.npy", (1, 4, 4, 1)).x.shape == (1, 4, 4, 1)


@pytest.mark.parametrize("make, needle", [
    (lambda p: np.savez(p / "d.npz", z=np.zeros((2, 4))), "no array named 'x'"),
    (lambda p: np.save(p / "d.npy", np.zeros((2, 5, 4, 1))), "shape (2, 5, 4, 1)"),
    (lambda p: np.save(p / "d.npy", np.full((2, 4, 4, 1), np.inf)), "NaN or Inf"),
    (lambda p: np.save(p / "d.npy", np.array([["a"] * 4] * 4)), "must be numeric"),
    (lambda p: (p / "d.npy").write_bytes(b"garbage"), "is not a NumPy file"),
    (lambda p: (p / "d.csv").write_text("1,2"), "unsupported data format"),
])
def test_bad_data_is_one_clear_error(tmp_path: Path, make, needle: str) -> None:  # type: ignore[no-untyped-def]
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(DataError) as exc:
        data.load(path, (1, 4, 4, 1))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_synthetic_is_seeded() -> None:
    a, b = data.synthetic((1, 3, 3, 1)), data.synthetic((1, 3, 3, 1))
    assert a.synthetic and np.array_equal(a.x, b.x)
