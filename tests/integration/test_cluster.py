"""Weight clustering before quantization (fit --level 2, cluster* rungs) on the test's digits CNN: the clusters
survive conversion, the clustered artifacts run in the TFLM interpreter and in LiteRT, the fine-tune keeps the
assignments and recovers what clustering lost, and --train's bad inputs are one line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgekit.demo import digits_split

    out = tmp_path_factory.mktemp("digits-cluster")
    xtr, ytr, xte, yte = digits_split(0)
    np.savez(out / "eval.npz", x=xte, y=yte)
    np.savez(out / "train.npz", x=xtr, y=ytr)
    return {**models, "eval": out / "eval.npz", "train": out / "train.npz"}


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGEKIT_TUNE_EPOCHS", "2")


def _tensors(tfl: bytes) -> list[tuple[object, ...]]:
    """Every tensor's type, shape, constant data and quantization, in order (names left out)."""
    from edgekit.stages import flatbuf

    fb = flatbuf.load(tfl)
    out: list[tuple[object, ...]] = []
    for t in fb.subgraphs[0].tensors:
        a = flatbuf.tensor_array(fb, t)
        q = t.quantization
        out.append((t.type, tuple(t.shape), None if a is None else a.tobytes(),
                    None if q is None or q.scale is None else (tuple(q.scale), tuple(q.zeroPoint))))
    return out


def test_clustered_kernels_keep_at_most_k_values_through_int8_conversion(digits: dict[str, Path]) -> None:
    from edgekit import data, intake
    from edgekit.stages import cluster, flatbuf, quantize
    from edgekit.stages.calibrated import Calibration

    art = intake.load(digits["keras"])
    before = [w.copy() for w in art.keras_model.get_weights()]
    for k in (16, 64):
        model, records = cluster.cluster_model(art.keras_model, k)
        assert [r.layer for r in records] == ["conv2d_1", "dense", "dense_1"]  # conv2d (288 weights) is too small
        for r in records:
            held = np.unique(model.get_layer(r.layer).kernel.numpy())
            assert len(held) == k and np.array_equal(held, np.sort(r.centroids))
        assert np.array_equal(model.get_layer("conv2d").kernel.numpy(), before[0])
    assert all(np.array_equal(a, b) for a, b in zip(before, art.keras_model.get_weights(), strict=True))
    # per-tensor int8 of the k=64 model: every clustered filter still holds at most 64 values (one LUT table)
    clustered = intake.Artifact(source=art.source, fmt="keras", keras_model=model)
    calib = data.load(digits["calib"], (1, 8, 8, 1))
    full = Calibration(clustered, calib)
    int8 = full.int8("int8", per_channel=False)
    # the shortcut the search takes (kernels swapped into the source's calibrated graph, recalibrated) is the
    # converter's own graph for the clustered model, constant for constant and scale for scale
    swapped = cluster.swap_into_tflite(Calibration(art, calib).model, records)
    assert swapped is not None
    fast = Calibration.recalibrated(clustered, calib, swapped)
    for a, b in ((fast.int8("int8", per_channel=False), int8), (fast.int8("int8"), full.int8("int8")),
                 (cluster.swap_into_tflite(quantize.convert(art, "float32"), records),
                  quantize.convert(clustered, "float32"))):
        assert a is not None
        assert _tensors(a) == _tensors(b)
    fb = flatbuf.load(int8)
    counts = []
    for _, op, name in flatbuf.weighted_ops(fb):
        w = flatbuf.tensor_array(fb, fb.subgraphs[0].tensors[op.inputs[flatbuf.FILTER_INPUT[name]]])
        assert w is not None
        counts.append(len(np.unique(w)) if w.size >= cluster.MIN_ELEMENTS else None)
    assert [c for c in counts if c is not None] and all(c <= 64 for c in counts if c is not None), counts


def test_fine_tune_keeps_the_assignments_and_recovers_the_clustered_model(digits: dict[str, Path],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """k=4 (a deliberately coarse clustering, so the effect is far above the noise of 360 samples), soft
    targets only (no labels: what improves is the recovery of the float model, not extra training)."""
    from edgekit import intake
    from edgekit.fitting.build import keras_outputs
    from edgekit.stages import cluster, cluster_tune

    monkeypatch.setenv("EDGEKIT_TUNE_EPOCHS", "2")
    art = intake.load(digits["keras"])
    ev = np.load(digits["eval"])
    tr = {"x": np.load(digits["train"])["x"][:600]}
    float_ev = keras_outputs(art.keras_model, ev["x"])
    model, records = cluster.cluster_model(art.keras_model, 4)
    untuned = keras_outputs(model, ev["x"])
    indices = [r.indices.copy() for r in records]
    report = cluster_tune.fine_tune(model, records, tr["x"], keras_outputs(art.keras_model, tr["x"]), "soft-ce",
                                    probabilities=True)
    tuned = keras_outputs(model, ev["x"])
    for r, idx in zip(records, indices, strict=True):
        kernel = model.get_layer(r.layer).kernel.numpy()
        assert np.array_equal(r.indices, idx) and np.array_equal(kernel, r.centroids[idx])  # assignments kept
        assert len(np.unique(kernel)) <= 4
    assert report.loss_after < report.loss_before and report.best_epoch >= 1

    def top1(o: np.ndarray) -> float:
        return 100 * float(np.mean(o.argmax(1) == ev["y"]))

    def agreement(o: np.ndarray) -> float:
        return 100 * float(np.mean(o.argmax(1) == float_ev.argmax(1)))

    assert top1(tuned) >= top1(untuned) + 3.0, (top1(untuned), top1(tuned))
    assert agreement(tuned) >= agreement(untuned) + 3.0, (agreement(untuned), agreement(tuned))
    # the same seed gives the same fine-tune
    again, records2 = cluster.cluster_model(art.keras_model, 4)
    cluster_tune.fine_tune(again, records2, tr["x"], keras_outputs(art.keras_model, tr["x"]), "soft-ce",
                           probabilities=True)
    assert all(np.array_equal(a.centroids, b.centroids) for a, b in zip(records, records2, strict=True))


def test_clustered_rungs_run_bit_exact_on_tflm_and_in_litert_and_are_cached_with_train(
        digits: dict[str, Path], tmp_path: Path, env: None) -> None:
    from edgekit.evaluate import get_metric, run_litert, run_tflm
    from edgekit.fitting import fit

    def run(out: str, target: str, only: list[str], train: bool = True):  # type: ignore[no-untyped-def]
        return fit(digits["keras"], target, str(digits["eval"]), calib=str(digits["calib"]), level=2, only=only,
                   out_dir=tmp_path / out, quiet=True, train=str(digits["train"]) if train else None,
                   goal="size")

    first = run("m4", "cortex-m4", ["int4", "cluster16-int4", "cluster16-lut-4bit"])
    by = {c.name: c for c in first.candidates}
    c4, lut = by["cluster16-int4"], by["cluster16-lut-4bit"]
    assert c4.error == "" and lut.error == "", (c4.error, lut.error)
    assert any("bit-exact with its int8 twin" in v for v in c4.verified), c4.verified
    assert c4.flash_bytes == by["int4"].flash_bytes  # the same layers packed: equal bytes
    assert "clustered per layer (k-means, k=16)" in c4.detail
    assert "fine-tuned centroids (assignments fixed)" in c4.detail
    assert any("bit-exact with the uncompressed clustered model" in v for v in lut.verified), lut.verified
    assert "one table per tensor" in lut.detail and "CUSTOM:TFLM_DECODE" in lut.budgets["ops"]["note"]
    assert any("fine-tuned on" in n and "its labels" in n for n in first.notes), first.notes
    assert first.winner is not None and first.artifact_path is not None
    model = first.artifact_path.read_bytes()  # the written winner, run again here on TFLM
    z = np.load(digits["eval"])
    assert get_metric("top1")(z["y"], run_tflm(model, z["x"])) == pytest.approx(first.winner.metric)
    # same inputs and --train: every candidate from the cache
    again = run("m4-again", "cortex-m4", ["int4", "cluster16-int4", "cluster16-lut-4bit"])
    assert all(c.cached for c in again.candidates)
    # LiteRT: clustered weights, then ai-edge-quantizer's int4 (no --train: not fine-tuned)
    phone = run("a", "android-arm64-cpu", ["cluster16-int4-weights"], train=False)
    q = phone.candidates[0]
    assert q.error == "" and q.evaluated_on.startswith("LiteRT") and "not fine-tuned" in q.detail
    assert phone.artifact_path is not None
    out = run_litert(phone.artifact_path.read_bytes(), z["x"])
    assert get_metric("top1")(z["y"], out) == pytest.approx(q.metric)


def test_clustered_rungs_are_not_fine_tuned_when_the_int8_arena_is_over_ram(digits: dict[str, Path],
                                                                            tmp_path: Path, env: None) -> None:
    """Clustering changes weights, not activations: on a board whose RAM the int8 arena already exceeds, the
    clustered rungs (a fine-tune each) are rows saying why they were not built, not minutes of training."""
    from edgekit.fitting import fit

    board = tmp_path / "small-ram.toml"  # the digits CNN's int8 arena is 6,816 B; this board leaves 4 KiB
    board.write_text('schema_version = 1\ninherit = "cortex-m4"\n[memory]\nram_size = 69_632\n')
    res = fit(digits["keras"], str(board), str(digits["eval"]), calib=str(digits["calib"]), level=2,
              only=["int8", "cluster16-int4", "cluster16-lut-4bit"], out_dir=tmp_path / "o", quiet=True,
              train=str(digits["train"]), use_cache=False)
    by = {c.name: c for c in res.candidates}
    assert not by["int8"].error and not by["int8"].budgets["ram"]["fits"]
    for name in ("cluster16-int4", "cluster16-lut-4bit"):
        assert by[name].error.startswith("not built: clustering changes weights, not activations"), by[name].error
        assert f"({by['int8'].budgets['ram']['used']:,} B, int8) is over the 4,096 B RAM budget" in by[name].error
    assert any(n.startswith("2 clustered candidates not built") for n in res.notes), res.notes
    assert not any("fine-tuned on" in n for n in res.notes), res.notes


@pytest.mark.parametrize("case", ["shape", "nan", "labels"])
def test_bad_train_data_is_a_data_error_before_any_work(digits: dict[str, Path], tmp_path: Path, env: None,
                                                        case: str) -> None:
    from edgekit.errors import DataError
    from edgekit.fitting import fit

    x, y = np.load(digits["train"])["x"][:50], np.load(digits["train"])["y"][:50]
    bad = tmp_path / "train.npz"
    if case == "shape":
        np.savez(bad, x=x[:, :, :4], y=y)
    elif case == "nan":
        x[7, 2, 2, 0] = np.inf
        np.savez(bad, x=x, y=y)
    else:
        np.savez(bad, x=x, y=y + 10)  # class 10..19 for a 10-class model
    with pytest.raises(DataError) as err:
        fit(digits["keras"], "cortex-m4", str(digits["eval"]), calib=str(digits["calib"]), level=2, quiet=True,
            train=str(bad), out_dir=tmp_path / "out")
    text = str(err.value)
    assert "--train" in text and "\n" not in text
    assert {"shape": "inputs have shape (50, 8, 4, 1)", "nan": "NaN or Inf",
            "labels": "class labels must be integers in [0, 10)"}[case] in text
    assert not (tmp_path / "out").exists()


def test_train_cli_errors_are_one_line_exit_2(digits: dict[str, Path], tmp_path: Path) -> None:
    for extra, needle in ((["--level", "2", "--train", str(tmp_path / "missing.npz")], "--train: data file"),
                          (["--train", str(digits["train"])], "--train is used by level 2")):
        proc = run_cli("fit", str(digits["keras"]), "-t", "cortex-m4", "--eval", str(digits["eval"]), "-o",
                       str(tmp_path / "o"), *extra, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgekit: error: ") and needle in lines[0], proc.stderr
        assert not (tmp_path / "o").exists()
