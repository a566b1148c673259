"""fit --level 2 end to end: INT4 filters bit-exact on TFLM (and on the QEMU firmware with TFLM_ROOT),
int4 weights on LiteRT, a float region around an outlier layer that int8 ruins, per-layer error in
the reports, agreement metrics without labels, several metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgekit.demo import digits_split

    out = tmp_path_factory.mktemp("digits2")
    _, _, xte, yte = digits_split(0)
    np.savez(out / "eval.npz", x=xte, y=yte)
    np.savez(out / "eval_unlabelled.npz", x=xte)
    return {**models, "eval": out / "eval.npz", "unlabelled": out / "eval_unlabelled.npz", "dir": out}


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    return {"EDGEKIT_CACHE_DIR": str(tmp_path / "cache")}


def _fit(d: dict[str, Path], model: Path, target: str, out: Path, env: dict[str, str], *extra: str,
         eval_key: str = "eval"):  # type: ignore[no-untyped-def]
    return run_cli("fit", str(model), "-t", target, "--calib", str(d["calib"]), "--eval", str(d[eval_key]),
                   "-o", str(out), *extra, env=env)


def test_cortex_m4_level2_int4_winner_is_bit_exact_and_well_under_int8(digits: dict[str, Path], tmp_path: Path,
                                                                        env: dict[str, str]) -> None:
    out = tmp_path / "m4"
    proc = _fit(digits, digits["keras"], "cortex-m4", out, env, "--level", "2")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    by = {c["name"]: c for c in report["candidates"]}
    assert report["level"] == 2
    assert {"float32", "int16x8", "int8", "int8-per-tensor", "mixed-16x8", "mixed-float", "int4", "lut-4bit"} <= set(by)
    winner = by[report["winner"]]
    assert winner["stage"] == "int4" and winner["drop"] <= 1.0
    assert winner["flash_bytes"] <= 0.6 * by["int8"]["flash_bytes"]
    assert any("bit-exact with its int8 twin" in v for v in winner["verified"]), winner["verified"]
    assert any(k.startswith("INT4 packing") and v > 0 for k, v in winner["saved"].items())
    assert "INT4 filters" in winner["detail"]
    # TFLM's LUT compression: per-channel tables, lossless against the clustered model, but a custom
    # DECODE operator and uint8 index tensors the profile does not list
    lut = by["lut-4bit"]
    assert lut["error"] == "" and any("bit-exact with the uncompressed clustered model" in v for v in lut["verified"])
    assert not lut["fits"] and "CUSTOM:TFLM_DECODE" in lut["budgets"]["ops"]["note"]
    # the artifact is what was measured: its accuracy again, here, on TFLM
    from edgekit.analysis.graph import read_graph
    from edgekit.evaluate import get_metric, run_tflm

    model = (out / "model.tflite").read_bytes()
    assert "int4" in read_graph(model).dtypes and len(model) == winner["flash_bytes"]
    z = np.load(digits["eval"])
    assert get_metric("top1")(z["y"], run_tflm(model, z["x"])) == pytest.approx(winner["metric"])
    # per-layer error of the int8 model: every weighted layer, worst (added) first, in json, md and a plot
    layers = report["layer_errors"]["layers"]
    assert report["layer_errors"]["method"].startswith("own side-by-side run")
    assert {"conv2d", "conv2d_1", "dense", "dense_1"} <= {e["layer"] for e in layers}
    assert [e["added"] for e in layers] == sorted((e["added"] for e in layers), reverse=True)
    md = (out / "report.md").read_text()
    assert "## Per-layer quantization error of the int8 model (worst first)" in md
    assert "## Bytes saved per method, and where each candidate was verified" in md
    assert (out / "layer_error.svg").read_text().count("<rect") >= 2 * len(layers)


def test_an_outlier_layer_is_named_and_a_float_region_meets_the_drop(digits: dict[str, Path], tmp_path: Path,
                                                                      env: dict[str, str]) -> None:
    from edgekit._tf import keras

    # the same float function, but conv2d's channel 0 carries activations 300x larger (the next conv
    # divides them back): its per-tensor int8 activation scale rounds every other channel to zero
    m = keras.models.load_model(digits["keras"], compile=False)
    k, b = m.layers[0].get_weights()
    k2, b2 = m.layers[2].get_weights()
    k[..., 0] *= 300.0
    b[0] *= 300.0
    k2[:, :, 0, :] /= 300.0
    m.layers[0].set_weights([k, b])
    m.layers[2].set_weights([k2, b2])
    src = tmp_path / "outlier.keras"
    m.save(src)
    out = tmp_path / "o"
    # (the 3-epoch test model's own int8 loses about a point without the outlier: hence 1.5)
    proc = _fit(digits, src, "cortex-m4", out, env, "--level", "2", "--candidates", "int8,mixed-16x8,mixed-float",
                "--optimize", "ram", "--max-drop", "1.5")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    by = {c["name"]: c for c in report["candidates"]}
    assert by["int8"]["drop"] > 10.0 and not by["int8"]["within_drop"]
    assert report["layer_errors"]["layers"][0]["layer"] == "conv2d"
    assert any(n.startswith("int8 loses") and "worst layers by quantization error: conv2d" in n
               for n in report["notes"]), report["notes"]
    assert "int8 loses" in proc.stdout and "conv2d" in proc.stdout
    # TFLM takes the stitched graph: int16 activations around conv2d, QUANTIZE in and out, int8 elsewhere
    m16 = by["mixed-16x8"]
    assert m16["error"] == "" and m16["drop"] <= 1.5 and m16["detail"].startswith("int16 activations (16x8): conv2d")
    assert by["mixed-float"]["drop"] <= 1.5 and by["mixed-float"]["detail"].startswith("float: conv2d")
    assert report["winner"] == "mixed-16x8"  # the smaller arena of the two
    from edgekit.analysis.graph import read_graph

    g = read_graph((out / "model.tflite").read_bytes())
    assert {"int16", "int8"} <= set(g.dtypes) and [la.op for la in g.layers].count("QUANTIZE") == 2


def test_android_int4_weights_smaller_than_int8_and_run_in_litert(digits: dict[str, Path], tmp_path: Path,
                                                                  env: dict[str, str]) -> None:
    out = tmp_path / "a"
    proc = _fit(digits, digits["keras"], "android-arm64-cpu", out, env, "--level", "2", "--optimize", "size",
                "--candidates", "int8,int4-weights")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    by = {c["name"]: c for c in report["candidates"]}
    q4 = by["int4-weights"]
    assert q4["flash_bytes"] < by["int8"]["flash_bytes"] and q4["drop"] <= 1.0
    assert q4["evaluated_on"].startswith("LiteRT") and report["winner"] == "int4-weights"
    from edgekit.analysis.graph import read_graph
    from edgekit.evaluate import run_litert

    model = (out / "model.tflite").read_bytes()
    assert "int4" in read_graph(model).dtypes
    z = np.load(digits["eval"])
    assert 100 * float(np.mean(run_litert(model, z["x"]).argmax(1) == z["y"])) == pytest.approx(q4["metric"])


def test_agreement_metrics_need_no_labels_and_several_metrics_are_reported(digits: dict[str, Path],
                                                                           tmp_path: Path, env: dict[str, str]) -> None:
    proc = _fit(digits, digits["keras"], "cortex-m4", tmp_path / "g", env, "--candidates", "int8",
                "--metric", "agreement,mse-to-float", "--json", eval_key="unlabelled")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["metrics"] == ["agreement", "mse-to-float"] and report["baselines"]["agreement"] == 100.0
    c = report["candidates"][0]
    assert 97.0 <= c["metrics"]["agreement"] <= 100.0 and 0 <= c["metrics"]["mse-to-float"] < 1e-3
    proc = _fit(digits, digits["keras"], "cortex-m4", tmp_path / "u", env, "--candidates", "int8",
                eval_key="unlabelled")
    assert proc.returncode == 2 and "no labels" in proc.stderr and "agreement" in proc.stderr
    proc = _fit(digits, digits["keras"], "cortex-m4", tmp_path / "m", env, "--candidates", "int8",
                "--metric", "top1,f1,top5", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    c = report["candidates"][0]
    assert set(c["metrics"]) == {"top1", "f1", "top5"} and c["metric"] == c["metrics"]["top1"]
    assert c["metrics"]["top5"] >= c["metrics"]["top1"]
    assert "## Every metric" in (tmp_path / "m" / "report.md").read_text()
    proc = _fit(digits, digits["keras"], "cortex-m4", tmp_path / "l3", env, "--level", "3")
    assert proc.returncode == 2 and "--level 3 needs training data" in proc.stderr


TFLM_ROOT = os.environ.get("TFLM_ROOT", "")


@pytest.mark.tflm_tree
def test_int4_model_runs_bit_exact_on_the_qemu_firmware(digits: dict[str, Path], tmp_path: Path) -> None:
    """The INT4 artifact on TFLM + CMSIS-NN (its s4 kernels) under QEMU equals the host interpreter's output."""
    from tests.integration.test_qemu_firmware import Serial, _requirements

    reason = _requirements()
    if reason:
        pytest.skip(reason)
    from edgekit import data, intake
    from edgekit.analysis.graph import read_graph
    from edgekit.bench.protocol import UPLOAD_CHUNK
    from edgekit.codegen.scaffold import scaffold
    from edgekit.evaluate import tflm_session
    from edgekit.stages import int4, strip
    from edgekit.stages.calibrated import Calibration

    art = intake.load(digits["keras"])
    calib = data.load(digits["calib"], (1, 8, 8, 1))
    packed, _, _ = int4.rewrite(Calibration(art, calib).int8("int8"))
    model = strip.strip_for_micro(packed, bias_quantization=False)
    path = tmp_path / "int4.tflite"
    path.write_bytes(model)
    assert "int4" in read_graph(model).dtypes
    project, build = tmp_path / "fw", tmp_path / "build"
    scaffold(path, "cortex-m4", "cmake", project, name="digits4")
    for cmd in (["cmake", "-S", str(project), "-B", str(build), "-DBOARD=qemu", f"-DTFLM_ROOT={TFLM_ROOT}"],
                ["cmake", "--build", str(build), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    z = np.load(digits["eval"])
    xs = z["x"][:4].astype(np.float32)
    host = tflm_session([model], xs)[0]
    inp = read_graph(model).input_tensors()[0]
    qemu = subprocess.Popen(
        [shutil.which("qemu-system-arm") or "qemu-system-arm", "-M", "mps2-an386", "-display", "none", "-monitor",
         "none", "-serial", "stdio", "-icount", "shift=0", "-semihosting-config", "enable=on,target=native",
         "-kernel", str(build / "firmware.elf")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        serial = Serial(qemu)
        boot = serial.until(b"m-ready", timeout=120)
        assert "m-init-done" in boot and "e-[" not in boot, boot
        for i in range(len(xs)):
            q = np.clip(np.round(xs[i : i + 1] / inp.scale[0] + inp.zero_point[0]), -128, 127).astype(np.int8)
            raw = q.tobytes()
            assert "m-[Expecting" in serial.command(f"db load {len(raw)}%")
            for j in range(0, len(raw), UPLOAD_CHUNK):
                last = serial.command(f"db {raw[j:j + UPLOAD_CHUNK].hex()}%")
            assert "m-load-done" in last
            assert "m-infer-done" in serial.command("infer 1 0%", timeout=300)
            out = re.search(r"m-edgekit-output-\[([0-9a-f]+)\]", serial.command("edgekit-output%"))
            assert out is not None
            assert bytes.fromhex(out.group(1)) == host.raw[i].tobytes(), f"sample {i} differs from the host"
        qemu.stdin.write(b"edgekit-exit%")  # type: ignore[union-attr]
        qemu.stdin.flush()  # type: ignore[union-attr]
        assert qemu.wait(timeout=60) == 0
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()


def test_core_ml_ios18_modes_estimate_with_coremltools_own_clusters(digits: dict[str, Path], tmp_path: Path) -> None:
    """The Linux estimate of an iOS 18 mode uses the weights coremltools wrote (its k-means), mapped back into
    the Keras model: per group of 16 output channels at most 16 distinct values, restored afterwards."""
    from edgekit import intake
    from edgekit.fitting.ladder import ladder
    from edgekit.profiles import load_profile
    from edgekit.stages import coreml

    assert not [r for r in ladder(load_profile("ios-ane"), 2) if r.level == 2]  # iOS 16: no iOS 18 mode
    prof = load_profile("ios18-ane")
    assert {"palettize-4bit-grouped", "linear-int4-block"} <= {r.name for r in ladder(prof, 2)}
    art = intake.load(digits["keras"])
    base = coreml.convert(art, prof, tmp_path / "base.mlpackage")
    pal = coreml.compress(base, "palettize-grouped", 4, tmp_path / "pal.mlpackage")
    assert coreml.package_bytes(pal) < 0.45 * coreml.package_bytes(base)
    model = art.keras_model
    dense = next(v for v in model.weights if v.path == "dense/kernel")
    before = np.asarray(dense.numpy()).copy()
    with coreml.weights_from_package(model, pal):
        w = np.asarray(dense.numpy())  # (256 in, 128 out): groups of 16 output channels share a palette
        assert not np.array_equal(w, before)
        for g in range(0, 128, coreml.GROUP_SIZE):
            assert len(np.unique(w[:, g : g + coreml.GROUP_SIZE])) <= 16
        assert np.abs(w - before).max() < 0.5 * np.abs(before).max()
    assert np.array_equal(np.asarray(dense.numpy()), before)


MLPERF_TINY_ROOT = os.environ.get("MLPERF_TINY_ROOT", "")
AD_MODEL = "benchmark/training/anomaly_detection/trained_models/ad01.h5"


@pytest.mark.skipif(not MLPERF_TINY_ROOT, reason="MLPERF_TINY_ROOT is not set (a mlcommons/tiny checkout)")
def test_per_tensor_rung_matches_mlperf_tiny_anomaly_detection_original(tmp_path: Path, env: dict[str, str]) -> None:
    """MLPerf Tiny's AD autoencoder (fully connected): per-channel int8 needs a 17,360 B arena, the per-tensor
    rung the 3,984 B of MLPerf Tiny's own per-tensor ad01_int8.tflite, and less flash."""
    src = Path(MLPERF_TINY_ROOT) / AD_MODEL
    if not src.is_file():
        pytest.skip(f"{src} is missing from the checkout")
    x = np.random.default_rng(0).normal(size=(64, 640)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_cli("fit", str(src), "-t", "cortex-m4", "--eval", str(tmp_path / "x.npy"), "--metric", "mse-to-float",
                   "--candidates", "int8,int8-per-tensor", "-o", str(tmp_path / "ad"), "--json", env=env)
    assert proc.returncode in (0, 1), proc.stderr
    by = {c["name"]: c for c in json.loads(proc.stdout)["candidates"]}
    from edgekit.evaluate import tflm_session

    original = (src.parent / "ad01_int8.tflite").read_bytes()
    ref_arena = tflm_session([original], x[:2])[0].arena_bytes
    assert by["int8-per-tensor"]["ram_bytes"] == ref_arena  # 3,984 B on the 64-bit host
    assert by["int8"]["ram_bytes"] > 4 * ref_arena  # 17,360 B: per-channel multipliers and shifts
    assert by["int8"]["flash_bytes"] - by["int8-per-tensor"]["flash_bytes"] > 15_000
