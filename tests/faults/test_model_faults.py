"""Fault injection: hostile, corrupt and awkward models through the real CLI (issue 8).

Every case asserts the exit code; for errors (2) exactly one stderr line `edgekit: error: ...`;
for verdicts (1) the verdict on stdout; never a traceback; nothing written where the run happened
or in an output directory; a bounded time (run_cli's timeout). Models are built here, small.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATA, run_cli

TFLITE_ONLY = 60  # seconds: no TensorFlow import on these paths (the TFLM child included)
WITH_TF = 240  # seconds: the run imports TensorFlow and converts a tiny model


# ------------------------------------------------------------------ helpers


def _run(cwd: Path, *args: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in an empty working directory, and check nothing was written there."""
    cwd.mkdir(parents=True, exist_ok=True)
    before = sorted(os.listdir(cwd))
    proc = run_cli(*args, cwd=cwd, env=env, timeout=timeout)
    assert sorted(os.listdir(cwd)) == before, f"the run wrote into its working directory: {os.listdir(cwd)}"
    return proc


def _one_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _verdict(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """An exit-1 `--json` verdict: the report on stdout, nothing on stderr."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout)
    assert out["fits"] is False
    return out


def _sine() -> Path:
    from edgekit.analysis.tflm_ops import runtime_library

    return runtime_library().parent / "sine_float.tflite"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small models with the properties under test, made with the real converter."""
    from edgekit._tf import keras, tf

    out = tmp_path_factory.mktemp("faulty")
    dense = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.Flatten(),
                              keras.layers.Dense(16)])  # 2,304 FC weights: dynamic range quantizes them

    def convert(model: object, how: str) -> bytes:
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if how in ("float16", "dynamic"):
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if how == "float16":
            conv.target_spec.supported_types = [tf.float16]
        return bytes(conv.convert())

    paths = {}
    for how in ("float16", "dynamic"):
        paths[how] = out / f"{how}.tflite"
        paths[how].write_bytes(convert(dense, how))
    dyn = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3),
                            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    paths["dynamic_keras"] = out / "dynamic_hw.keras"
    dyn.save(paths["dynamic_keras"])
    paths["dynamic_tflite"] = out / "dynamic_hw.tflite"
    paths["dynamic_tflite"].write_bytes(convert(dyn, "float32"))
    # EXP: the converter emits an int8 EXP kernel; TFLM's EXP takes float32 only and refuses it in Prepare
    exp = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Activation("exponential")])
    paths["exp_keras"] = out / "exp.keras"
    exp.save(paths["exp_keras"])
    from edgekit import data, intake
    from edgekit.stages import quantize

    art = intake.load(paths["exp_keras"])
    paths["exp_int8"] = out / "exp_int8.tflite"
    paths["exp_int8"].write_bytes(quantize.convert(art, "int8", data.synthetic((1, 8)), "int8"))
    return paths


# ------------------------------------------------------------- files that are not model files


def test_fifo_named_tflite_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "m.tflite"
    os.mkfifo(fifo)
    for cmd in (["analyze", str(fifo), "-t", "cortex-m4"], ["check", str(fifo), "-t", "cortex-m4"],
                ["codegen", str(fifo), "-t", "cortex-m4", "-o", str(tmp_path / "out")]):
        _one_error(_run(tmp_path / "cwd", *cmd, timeout=TFLITE_ONLY), "FIFO", "not a regular file")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".tflite", ".keras", ".onnx"])
def test_symlink_to_dev_zero_is_not_read(tmp_path: Path, suffix: str) -> None:
    link = tmp_path / f"m{suffix}"
    link.symlink_to("/dev/zero")
    _one_error(_run(tmp_path / "cwd", "analyze", str(link), "-t", "cortex-m4", timeout=TFLITE_ONLY),
               "character device", "symbolic link")


def test_model_over_the_size_limit_names_the_limit(tmp_path: Path) -> None:
    line = _one_error(_run(tmp_path / "cwd", "analyze", str(_sine()), "-t", "cortex-m4", timeout=TFLITE_ONLY,
                           env={"EDGEKIT_MODEL_MAX_BYTES": "1000"}), "over the 1,000-byte limit")
    assert "EDGEKIT_MODEL_MAX_BYTES" in line


@pytest.mark.parametrize("name, needle", [
    ("m.tflite", "is empty (0 bytes)"), ("m.keras", "is empty (0 bytes)"), ("m.h5", "is empty (0 bytes)"),
    ("m.onnx", "is empty (0 bytes)"),
])
def test_empty_model_files(tmp_path: Path, name: str, needle: str) -> None:
    (tmp_path / name).write_bytes(b"")
    _one_error(_run(tmp_path / "cwd", "analyze", str(tmp_path / name), "-t", "cortex-m4", timeout=TFLITE_ONLY),
               needle)


def test_random_bytes_as_keras_and_h5(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "m.keras").write_bytes(b"\x13\x37" + rng.bytes(4000))
    (tmp_path / "m.h5").write_bytes(rng.bytes(4000))
    _one_error(_run(tmp_path / "cwd", "analyze", str(tmp_path / "m.keras"), "-t", "cortex-m4", timeout=TFLITE_ONLY),
               "not a Keras v3 archive", "zip")
    _one_error(_run(tmp_path / "cwd", "analyze", str(tmp_path / "m.h5"), "-t", "cortex-m4", timeout=TFLITE_ONLY),
               "not an HDF5 file")


# ---------------------------------------------------------------- corrupt flatbuffers


def _buffer_past_the_end(data: bytes) -> bytes:
    """The first weight buffer's length field rewritten to run past the end of the file."""
    from edgekit.analysis.schema import schema_fb

    b = bytearray(data)
    m = schema_fb.Model.GetRootAsModel(b, 0)
    for i in range(m.BuffersLength()):
        buf = m.Buffers(i)
        if buf.DataLength() > 16:
            start = buf._tab.Vector(buf._tab.Offset(4))
            struct.pack_into("<I", b, start - 4, len(b))
            return bytes(b)
    raise AssertionError("no weight buffer")


@pytest.mark.parametrize("target", ["cortex-m4", "android-arm64-cpu"])
def test_buffer_running_past_the_file_is_one_line(tmp_path: Path, target: str) -> None:
    """Was: accepted by the reader, then numpy's multi-line 'buffer is smaller than requested size'
    from the TFLM child (and FITS on a phone target)."""
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(_buffer_past_the_end(_sine().read_bytes()))
    line = _one_error(_run(tmp_path / "cwd", "analyze", str(bad), "-t", target, timeout=TFLITE_ONLY),
                      "truncated or corrupt", "outside")
    assert "^" not in line and "numpy" not in line
    _one_error(_run(tmp_path / "cwd", "codegen", str(bad), "-t", "cortex-m4", "-o", str(tmp_path / "out"),
                    timeout=TFLITE_ONLY), "truncated or corrupt")
    assert not (tmp_path / "out").exists()


def test_external_buffer_outside_the_file(tmp_path: Path) -> None:
    from tests.unit.test_graph_fuzz import _fc_model

    bad = tmp_path / "big.tflite"
    bad.write_bytes(_fc_model(external=True)[:-8])  # the weights after the flatbuffer are cut short
    _one_error(_run(tmp_path / "cwd", "analyze", str(bad), "-t", "cortex-m4", timeout=TFLITE_ONLY),
               "buffer 1", "lies outside")


# ----------------------------------------------------------------- dynamic dimensions


@pytest.mark.slow
def test_dynamic_tflite_is_not_measured_as_1x1(tmp_path: Path, built: dict[str, Path]) -> None:
    """Was: measured as 1x1x1x1 and reported FITS."""
    model = str(built["dynamic_tflite"])
    for cmd in ("analyze", "check"):
        _one_error(_run(tmp_path / "cwd", cmd, model, "-t", "cortex-m4", timeout=TFLITE_ONLY),
                   "(?, ?, ?, 3)", "dynamic", "fixed shape", "--input-shape")
    # a .tflite cannot be resized for TFLM: the option does not pretend otherwise
    _one_error(_run(tmp_path / "cwd", "analyze", model, "-t", "cortex-m4", "--input-shape", "1,16,16,3",
                    timeout=TFLITE_ONLY), "cannot be resized")
    _one_error(_run(tmp_path / "cwd", "codegen", model, "-t", "cortex-m4", "-o", str(tmp_path / "out"),
                    timeout=TFLITE_ONLY), "dynamic dimensions")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_dynamic_keras_needs_input_shape(tmp_path: Path, built: dict[str, Path]) -> None:
    """Was: five lines of ValueError."""
    model = str(built["dynamic_keras"])
    _one_error(_run(tmp_path / "cwd", "analyze", model, "-t", "cortex-m4", timeout=WITH_TF),
               "(?, ?, ?, 3)", "dynamic", "--input-shape 1,<d1>,<d2>,3")
    for shape in ("1,16,16,3", "16,16,3"):
        proc = _run(tmp_path / "cwd", "analyze", model, "-t", "cortex-m4", "--input-shape", shape, "--json",
                    timeout=WITH_TF)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["layers"][0]["inputs"] == [[1, 16, 16, 3]] and out["arena_bytes"] >= 16 * 16 * 3
    proc = _run(tmp_path / "cwd", "check", model, "-t", "cortex-m4", "--input-shape", "1,16,16,3", timeout=WITH_TF)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


@pytest.mark.parametrize("shape, needle", [
    ("1,16,16,1", "contradicts the model's input (?, ?, ?, 3) in dimension 3"),
    ("4,16,16,3", "batch 4 is not supported"),
    ("16,16", "has 2 dimensions"),
    ("1,a,16,3", "not a list of integers"),
    ("1,0,16,3", "must be a positive integer"),
])
@pytest.mark.slow
def test_bad_input_shape_values(tmp_path: Path, built: dict[str, Path], shape: str, needle: str) -> None:
    _one_error(_run(tmp_path / "cwd", "analyze", str(built["dynamic_keras"]), "-t", "cortex-m4", "--input-shape",
                    shape, timeout=WITH_TF), needle)


# ------------------------------------------------------------ verdicts instead of errors


@pytest.mark.slow
def test_float16_tflite_is_a_verdict(tmp_path: Path, built: dict[str, Path]) -> None:
    """Was: exit 2 with a TFLM assertion text. The TFLM child is not started for it."""
    out = _verdict(_run(tmp_path / "cwd", "analyze", str(built["float16"]), "-t", "cortex-m4", "--json",
                        timeout=TFLITE_ONLY))
    assert out["flash_bytes"] == built["float16"].stat().st_size and out["ops"]
    assert out["artifact"] == "tflite-float16 (as given)" and "float16" in out["dtypes"]
    assert out["budgets"]["runtime"]["fits"] is False  # type: ignore[index]
    assert "float16 is not a TFLM data type" in out["budgets"]["runtime"]["note"]  # type: ignore[index]
    assert out["arena_bytes"] is None and any("arena not measured" in n for n in out["notes"])  # type: ignore[union-attr]
    text = _run(tmp_path / "cwd", "analyze", str(built["float16"]), "-t", "cortex-m4", timeout=TFLITE_ONLY)
    assert text.returncode == 1 and "float16 is not a TFLM data type" in text.stdout
    assert "verdict: DOES NOT FIT" in text.stdout and "Traceback" not in text.stderr


@pytest.mark.slow
def test_hybrid_tflite_is_a_verdict(tmp_path: Path, built: dict[str, Path]) -> None:
    out = _verdict(_run(tmp_path / "cwd", "analyze", str(built["dynamic"]), "-t", "cortex-m4", "--json",
                        timeout=TFLITE_ONLY))
    assert out["artifact"] == "tflite-dynamic (as given)" and out["flash_bytes"] > 0
    note = out["budgets"]["runtime"]["note"]  # type: ignore[index]
    assert "hybrid models do not run on TFLM" in note and "FULLY_CONNECTED" in note
    proc = _run(tmp_path / "cwd", "check", str(built["dynamic"]), "-t", "cortex-m4", timeout=TFLITE_ONLY)
    assert proc.returncode == 1 and "hybrid models do not run on TFLM" in proc.stdout and not proc.stderr
    cg = _run(tmp_path / "cwd", "codegen", str(built["dynamic"]), "-t", "cortex-m4", "-o", str(tmp_path / "out"),
              "--allow-over-budget", timeout=TFLITE_ONLY)
    assert cg.returncode == 1 and "hybrid models do not run on TFLM" in cg.stderr
    assert len(cg.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tflm_refusal_is_a_finding_with_tflms_reason(tmp_path: Path, built: dict[str, Path]) -> None:
    """TFLM's EXP kernel refuses int8 in Prepare: the report keeps flash, ops and dtypes and quotes TFLM."""
    out = _verdict(_run(tmp_path / "cwd", "analyze", str(built["exp_int8"]), "-t", "cortex-m4", "--json",
                        timeout=TFLITE_ONLY))
    assert out["ops"] == ["EXP", "FULLY_CONNECTED"] and out["flash_bytes"] > 0 and "int8" in out["dtypes"]  # type: ignore[operator]
    (reason,) = out["blockers"]  # type: ignore[misc]
    assert reason.startswith("TFLM: Node EXP (number 1) failed to prepare: ")
    assert "kTfLiteFloat32" in reason and "(exp.cc:" in reason and "kernels/" not in reason
    cg = _run(tmp_path / "cwd", "codegen", str(built["exp_int8"]), "-t", "cortex-m4", "-o", str(tmp_path / "out"),
              timeout=TFLITE_ONLY)
    assert cg.returncode == 1 and "Node EXP (number 1) failed to prepare" in cg.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tflm_refusal_reported_for_a_keras_source(tmp_path: Path, built: dict[str, Path]) -> None:
    out = _verdict(_run(tmp_path / "cwd", "analyze", str(built["exp_keras"]), "-t", "cortex-m4", "--json",
                        timeout=WITH_TF))
    assert "EXP" in out["ops"] and any("Node EXP" in b for b in out["blockers"])  # type: ignore[operator,union-attr]


@pytest.mark.slow
def test_tflm_refusal_reported_for_an_onnx_source(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Exp", ["h"], ["y"])],
                          "exp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "exp.onnx"))
    out = _verdict(_run(tmp_path / "cwd", "analyze", str(tmp_path / "exp.onnx"), "-t", "cortex-m4", "--json",
                        timeout=WITH_TF))
    assert "EXP" in out["ops"] and out["flash_bytes"] > 0  # type: ignore[operator,operator]
    assert any(b.startswith("TFLM: Node EXP (number") for b in out["blockers"])  # type: ignore[union-attr]


@pytest.mark.slow
def test_hopeless_model_is_refused_before_conversion(tmp_path: Path, models: dict[str, Path]) -> None:
    """53,002 parameters for a 4 KiB-flash board: more than 10x over, said without converting or TFLM."""
    board = str(DATA / "targets" / "valid_tiny_board.toml")
    out = _verdict(_run(tmp_path / "cwd", "analyze", str(models["keras"]), "-t", board, "--json", timeout=WITH_TF))
    params = 320 + 18_496 + 32_896 + 1_290  # the digits CNN's conv and dense layers, 1 byte each as int8
    assert out["params"] == params and out["flash_bytes"] == params and out["layers"] == []
    assert out["artifact"] == "tflite-int8 (not converted)" and list(out["budgets"]) == ["flash"]  # type: ignore[call-overload]
    assert any("not converted" in n for n in out["notes"])  # type: ignore[union-attr]
    proc = _run(tmp_path / "cwd", "check", str(models["keras"]), "-t", board, timeout=WITH_TF)
    assert proc.returncode == 1 and f"OVER BUDGET: flash {params:,} > 4,096" in proc.stdout
    # the factor is an option: at 100x the same model is converted and measured
    proc = _run(tmp_path / "cwd", "analyze", str(models["keras"]), "-t", board, "--json", timeout=WITH_TF,
                env={"EDGEKIT_FLASH_HOPELESS_FACTOR": "100"})
    assert proc.returncode == 1 and json.loads(proc.stdout)["layers"]


def test_float_tflite_is_labelled_as_float_with_a_fit_hint(tmp_path: Path) -> None:
    proc = _run(tmp_path / "cwd", "analyze", str(_sine()), "-t", "cortex-m4", "--json", timeout=TFLITE_ONLY)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["artifact"] == "tflite-float32 (as given)" and out["budgets"]["flash"]["note"] == "tflite-float32"
    assert any("edgekit fit" in n and "tflite-int8" in n for n in out["notes"])
    assert "tflite-int8" not in out["budgets"]["flash"]["note"]


# ------------------------------------------------------ one RAM rule for check and codegen


def test_check_and_codegen_compare_the_same_arena(tmp_path: Path) -> None:
    """A RAM budget between the measured arena and the arena the firmware reserves: was check ok,
    codegen refused. Now both refuse, and both accept once the reserved arena fits."""
    from edgekit.codegen.generate import arena_constant

    sine = str(_sine())
    proc = _run(tmp_path / "cwd", "analyze", sine, "-t", "cortex-m4", "--json", timeout=TFLITE_ONLY)
    measured = json.loads(proc.stdout)["arena_bytes"]
    reserved = arena_constant(measured)
    assert reserved > measured
    for ram, code in ((measured + (reserved - measured) // 2, 1), (reserved, 0)):
        board = tmp_path / f"board{ram}.toml"
        board.write_text(f'schema_version = 1\ninherit = "cortex-m4"\n[budgets]\nram_bytes = {ram}\n')
        check = _run(tmp_path / "cwd", "check", sine, "-t", str(board), timeout=TFLITE_ONLY)
        out_dir = tmp_path / f"gen{ram}"
        gen = _run(tmp_path / "cwd", "codegen", sine, "-t", str(board), "-o", str(out_dir), timeout=TFLITE_ONLY)
        assert (check.returncode, gen.returncode) == (code, code), (check.stdout, gen.stderr)
        assert f"reserved arena (measured {measured:,} B + margin)" in check.stdout
        if code:
            assert f"arena {reserved:,} B" in gen.stderr and not out_dir.exists()
        else:
            assert f"kTensorArenaSize = {reserved};" in (out_dir / "model_settings.h").read_text()


# ------------------------------------------------------------------ --calib and metrics


def test_calib_with_a_tflite_is_refused(tmp_path: Path) -> None:
    """Was: silently ignored, even with NaN data."""
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((4, 1), np.nan, np.float32))
    for cmd in ("analyze", "check"):
        _one_error(_run(tmp_path / "cwd", cmd, str(_sine()), "-t", "cortex-m4", "--calib", str(nan),
                        timeout=TFLITE_ONLY), "--calib", "already a .tflite")


def test_metric_that_raises_or_returns_nan_is_a_data_error() -> None:
    from edgekit.errors import DataError
    from edgekit.evaluate import Metric

    def boom(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        raise ZeroDivisionError("division by zero\nsecond line")

    y = np.zeros(3)
    with pytest.raises(DataError, match=r"^metric m:boom raised ZeroDivisionError: division by zero \(hint"):
        Metric("m:boom", boom, True)(y, y)
    with pytest.raises(DataError, match="returned nan"):
        Metric("m:nan", lambda a, b: float("nan"), True)(y, y)
    with pytest.raises(DataError, match="returned str 'high', not a number"):
        Metric("m:str", lambda a, b: "high", True)(y, y)  # type: ignore[arg-type,return-value]
    assert Metric("m:ok", lambda a, b: 0.5, True, 100.0)(y, y) == 50.0


@pytest.mark.slow
def test_fit_with_a_raising_metric_is_one_line(tmp_path: Path, models: dict[str, Path]) -> None:
    (tmp_path / "mymetric.py").write_text("def score(y_true, y_pred):\n    raise ValueError('labels look wrong')\n")
    out = tmp_path / "out"
    proc = _run(tmp_path / "cwd", "fit", str(models["keras"]), "-t", "cortex-m4", "--eval", str(models["calib"]),
                "--metric", "mymetric:score", "-o", str(out), "--no-cache", timeout=WITH_TF,
                env={"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    _one_error(proc, "metric mymetric:score raised ValueError: labels look wrong")
    assert not out.exists()


# ------------------------------------------------------------- TFLM crashes are not blamed blindly


def test_crash_blames_calibration_only_for_degenerate_scales() -> None:
    from edgekit.analysis.arena import TflmRefusal, _crash_error
    from edgekit.errors import MeasurementError

    segv = _crash_error(-11, "@@edgekit start 0\n", None)
    assert isinstance(segv, TflmRefusal) and "SIGSEGV" in segv.message
    assert "degenerate" not in str(segv) and "calib" not in str(segv)
    degenerate = _crash_error(-6, "", "SOFTMAX (operator #1, input scale 7.8e-09)")
    assert isinstance(degenerate, MeasurementError) and not isinstance(degenerate, TflmRefusal)
    assert "scale collapsed" in degenerate.message and "--calib" in str(degenerate)


def test_tflm_reason_is_kept_whole() -> None:
    from edgekit.analysis.arena import tflm_reason

    said = ("tensorflow/lite/micro/kernels/depthwise_conv_common.cc:187 multiplier overflow\n"
            "Node DEPTHWISE_CONV_2D (number 14) failed to prepare with status 1\n"
            "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n    f()\n    ^^^\n"
            "RuntimeError: TFLM failed to allocate tensors\n")
    assert tflm_reason(said) == ("Node DEPTHWISE_CONV_2D (number 14) failed to prepare: multiplier overflow "
                                 "(depthwise_conv_common.cc:187)")


@pytest.mark.slow
def test_tflm_child_failure_leaves_no_temporary_folder(tmp_path: Path, built: dict[str, Path]) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = _run(tmp_path / "cwd", "analyze", str(built["exp_int8"]), "-t", "cortex-m4", timeout=TFLITE_ONLY,
                env={"TMPDIR": str(tmp)})
    assert proc.returncode == 1 and "Node EXP" in proc.stdout
    assert os.listdir(tmp) == []


def test_reader_error_messages_are_one_line_for_the_python_api() -> None:
    """The library raises ModelError (not numpy's errors) for the same corrupt bytes."""
    from edgekit.analysis.graph import read_graph
    from edgekit.errors import ModelError

    with pytest.raises(ModelError) as info:
        read_graph(_buffer_past_the_end(_sine().read_bytes()), where="x.tflite")
    assert "\n" not in str(info.value) and "outside" in str(info.value)
