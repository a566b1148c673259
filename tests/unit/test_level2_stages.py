"""Level-2 stage pieces on their own: INT4 nibble packing as TFLM unpacks it, per-channel requantization,
k-means clustering for TFLM's LUT compression."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.stages import int4, lut


def test_int4_packing_is_tflm_order_low_nibble_first() -> None:
    vals = np.array([1, -2, 7, -8, 0], dtype=np.int8)
    raw = int4.pack_nibbles(vals)
    # TFLM's UnpackDenseInt4IntoInt8: element 2i = sign-extended low nibble, 2i+1 = high nibble
    assert raw == bytes([0xE1, 0x87, 0x00])
    assert np.array_equal(int4.unpack_nibbles(raw, 5), vals)
    rng = np.random.default_rng(0)
    many = rng.integers(-8, 8, 1001).astype(np.int8)
    assert np.array_equal(int4.unpack_nibbles(int4.pack_nibbles(many), 1001), many)


def test_requantize_per_channel_uses_16_levels_and_clips_outliers() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 3, 3, 8))
    w[2, 0, 0, 0] = 40.0  # a lone outlier in channel 2
    k, scales = int4.requantize(w, 0, per_channel=True)
    assert k.dtype == np.int8 and k.min() >= -8 and k.max() <= 7 and scales.shape == (4,)
    err = np.sqrt(np.mean((k * scales[:, None, None, None] - w) ** 2, axis=(1, 2, 3)))
    plain = np.abs(w).reshape(4, -1).max(axis=1) / 7
    naive = np.sqrt(np.mean((np.clip(np.round(w / plain[:, None, None, None]), -8, 7) * plain[:, None, None, None]
                             - w) ** 2, axis=(1, 2, 3)))
    assert np.all(err <= naive + 1e-12)  # the clipping search never does worse than max-abs scaling
    k1, s1 = int4.requantize(w, 0, per_channel=False)
    assert s1.shape == (1,) and k1.shape == w.shape


def test_kmeans_int_keeps_at_most_k_integer_values_and_is_deterministic() -> None:
    rng = np.random.default_rng(2)
    v = np.clip(np.round(rng.normal(scale=40, size=500)), -127, 127).astype(np.int8)
    out = lut.kmeans_int(v, 16)
    assert len(np.unique(out)) <= 16 and out.dtype == np.int8
    assert np.array_equal(out, lut.kmeans_int(v, 16))
    assert np.sqrt(np.mean((out.astype(float) - v) ** 2)) < 6.0  # 16 levels over ~240 values (uniform: ~4.3)
    few = np.array([3, 3, -1, 5], dtype=np.int8)
    assert np.array_equal(lut.kmeans_int(few, 16), few)  # already at most k values: unchanged


def test_layer_error_records_are_cache_entries_that_clear_removes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgekit.fitting import cache

    side = tmp_path / cache.LAYER_ERRORS_DIR
    side.mkdir()
    record = side / ("ab" * 32 + ".json")
    record.write_text('{"layers": [], "names": {}}')
    (side / "notes.txt").write_text("not edgekit's")
    found = cache.entries(tmp_path)
    assert [e.path for e in found] == [record]
    assert cache.clear(tmp_path) == (1, found[0].bytes)
    assert not record.exists() and (side / "notes.txt").read_text() == "not edgekit's"


def test_lut_per_tensor_filter_with_a_folded_batchnorm_gets_one_table() -> None:
    """Per-tensor int8 of a clustered Conv2D followed by a BatchNorm: the converter folds the BatchNorm's
    per-channel scales into the filter, so every channel holds its own k values. TFLM's compressor wants at
    most 2**bits values in the whole tensor for one table; clustering each channel apart left 8-bit indices
    and it refused (found on MobileNetV2 at level 2: 'index_bitwidth too small: 8 bits needed')."""
    from edgekit import intake
    from edgekit._tf import keras
    from edgekit.data import Dataset
    from edgekit.stages import cluster, flatbuf
    from edgekit.stages.calibrated import Calibration

    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 16))
    h = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(inp)
    h = keras.layers.BatchNormalization(gamma_initializer=keras.initializers.RandomUniform(0.2, 3.0))(h)
    model = keras.Model(inp, keras.layers.ReLU()(h))
    clustered, records = cluster.cluster_model(model, 16)
    assert [r.layer for r in records] == [model.layers[1].name]
    x = np.random.default_rng(3).random((16, 8, 8, 16), dtype=np.float32)
    art = intake.Artifact(source=Path("bn.keras"), fmt="keras", keras_model=clustered)
    base = Calibration(art, Dataset(x, None, "test")).int8("int8", per_channel=False)
    fb = flatbuf.load(base)
    (_, op, name), = list(flatbuf.weighted_ops(fb))
    ti = op.inputs[flatbuf.FILTER_INPUT[name]]
    w = flatbuf.tensor_array(fb, fb.subgraphs[0].tensors[ti])
    assert w is not None and len(np.unique(w)) > 16  # the folded scales spread the 16 centroids apart
    out, tensors = lut.cluster(base, 4)
    assert tensors == [ti]
    w4 = flatbuf.tensor_array(flatbuf.load(out), flatbuf.load(out).subgraphs[0].tensors[ti])
    assert w4 is not None and len(np.unique(w4)) <= 16
    assert len(lut.compress(out, tensors, 4)) < len(out)
