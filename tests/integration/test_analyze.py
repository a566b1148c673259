"""analyze end to end, on models built in the tests, with the real converter and TFLM."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATA, run_cli

pytestmark = pytest.mark.slow


def _tflm_reported_arena(model: Path) -> int:
    """What the TFLM interpreter itself reports, measured independently of edgekit."""
    code = (
        "import sys, numpy as np\n"
        "from tflite_micro.python.tflite_micro import runtime\n"
        "it = runtime.Interpreter.from_bytes(open(sys.argv[1], 'rb').read(), arena_size=1 << 20)\n"
        "d = it.get_input_details(0)\n"
        "it.set_input(np.zeros(d['shape'], d['dtype']), 0)\n"
        "it.invoke()\n"
        "it.print_allocations()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, check=True)
    m = re.search(r"Arena allocation total (\d+) bytes", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    return int(m.group(1))


def test_int8_arena_equals_tflm_interpreter(models: dict[str, Path]) -> None:
    proc = run_cli("analyze", str(models["int8"]), "--target", "cortex-m4", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["arena_bytes"] == _tflm_reported_arena(models["int8"])
    assert out["flash_bytes"] == models["int8"].stat().st_size
    for key in ("model", "target", "fits", "flash_bytes", "arena_bytes", "params", "macs", "ops",
                "unsupported_ops", "budgets"):
        assert key in out
    assert out["fits"] is True and out["unsupported_ops"] == []
    assert out["ops"] == sorted(set(out["ops"]))
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= set(out["ops"])
    # the RAM budget compares the arena the firmware reserves (codegen's kTensorArenaSize), not the raw figure
    from edgekit.codegen.generate import arena_constant

    reserved = out["arena_reserved_bytes"]
    assert reserved == arena_constant(out["arena_bytes"]) > out["arena_bytes"] and reserved % 16 == 0
    assert out["budgets"]["ram"] == {"limit": 196_608, "used": reserved, "fits": True,
                                     "margin": 196_608 - reserved, "unit": "bytes",
                                     "note": f"tflm-arena reserved: measured {out['arena_bytes']:,} B + 10% margin"}


def test_params_and_macs_are_exact(models: dict[str, Path]) -> None:
    from edgekit.analysis.graph import read_graph

    g = read_graph(models["int8"].read_bytes())
    by_op = [(la.op, la.params, la.macs) for la in g.layers if la.op in ("CONV_2D", "FULLY_CONNECTED")]
    # conv 3x3x1->32 on 8x8: 32*9+32 params, 8*8*32*9 MACs; conv 3x3x32->64 on 4x4; dense 256->128, 128->10
    assert by_op == [("CONV_2D", 320, 8 * 8 * 32 * 9), ("CONV_2D", 18_496, 4 * 4 * 64 * 288),
                     ("FULLY_CONNECTED", 32_896, 32_768), ("FULLY_CONNECTED", 1_290, 1_280)]


@pytest.mark.parametrize("fmt", ["keras", "h5", "savedmodel"])
def test_float_sources_convert_to_int8_for_cortex_m(models: dict[str, Path], fmt: str) -> None:
    proc = run_cli("analyze", str(models[fmt]), "-t", "cortex-m7", "--calib", str(models["calib"]), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["artifact"] == "tflite-int8"
    assert "int8" in out["dtypes"] and "float32" not in out["dtypes"]
    assert out["arena_bytes"] > 0
    assert "calib.npz" in out["calibration"]
    # int8 weights: a quarter of the float bytes (plus int32 biases and overhead)
    assert out["flash_bytes"] < models["float"].stat().st_size / 2.5


def test_synthetic_calibration_is_labelled(models: dict[str, Path]) -> None:
    proc = run_cli("analyze", str(models["keras"]), "-t", "cortex-m4")
    assert proc.returncode == 0, proc.stderr
    assert "SYNTHETIC" in proc.stdout and "--calib" in proc.stdout
    assert "verdict: FITS" in proc.stdout
    assert "CONV_2D" in proc.stdout and "TOTAL" in proc.stdout


def test_over_budget_exits_1_with_margins(models: dict[str, Path]) -> None:
    proc = run_cli("analyze", str(models["int8"]), "-t", str(DATA / "targets" / "valid_tiny_board.toml"),
                   "--json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["fits"] is False
    assert out["budgets"]["flash"]["fits"] is False
    # flash counts the model and TFLM's code for its operators (measured per core), shown as two parts
    parts = out["budgets"]["flash"]["parts"]
    assert parts == {"model": out["flash_bytes"], "runtime code": out["runtime_code"]["bytes"]}
    assert out["budgets"]["flash"]["margin"] == 4096 - out["flash_bytes"] - out["runtime_code"]["bytes"] < 0
    assert out["budgets"]["ram"]["fits"] is False


def test_unsupported_op_listed_exactly(models: dict[str, Path]) -> None:
    proc = run_cli("analyze", str(models["topk"]), "-t", "cortex-m4", "--json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["unsupported_ops"] == ["TOPK_V2"]
    assert out["budgets"]["ops"]["fits"] is False
    # the phone CPU runs every builtin
    phone = json.loads(run_cli("analyze", str(models["topk"]), "-t", "android-arm64-cpu", "--json").stdout)
    assert phone["unsupported_ops"] == [] and phone["fits"] is True
    # ... the GPU delegate does not take TOPK_V2: on a phone it runs on the CPU, a warning and not a verdict
    proc = run_cli("analyze", str(models["topk"]), "-t", "android-gpu", "--json")
    gpu = json.loads(proc.stdout)
    assert proc.returncode == 0 and gpu["fits"] is True and gpu["unsupported_ops"] == []
    assert gpu["delegation"] == {"delegate": "gpu", "operators": 1, "delegated": 0, "partitions": 0,
                                 "on_cpu": [{"index": 0, "op": "TOPK_V2",
                                             "reason": "operator not supported by the gpu delegate"}]}
    assert any(n.startswith("WARNING: gpu delegate: 0 of 1 operators delegated") for n in gpu["notes"])


def test_full_delegation_can_be_required(models: dict[str, Path], tmp_path: Path) -> None:
    strict = tmp_path / "gpu-strict.toml"
    strict.write_text('schema_version = 1\ninherit = "android-gpu"\ndescription = "GPU only"\n'
                      "[ops]\nrequire_full_delegation = true\n")
    proc = run_cli("analyze", str(models["topk"]), "-t", str(strict), "--json")
    out = json.loads(proc.stdout)
    assert proc.returncode == 1 and out["budgets"]["delegation"]["fits"] is False
    assert out["unsupported_ops"] == ["TOPK_V2"]
    ok = run_cli("analyze", str(models["float"]), "-t", str(strict), "--json")  # the CNN: all delegated
    doc = json.loads(ok.stdout)
    assert ok.returncode == 0 and doc["delegation"]["on_cpu"] == [] and doc["delegation"]["partitions"] == 1


def test_gpu_ram_counts_dequantized_weights_apart(models: dict[str, Path], tmp_path: Path) -> None:
    from edgekit import intake
    from edgekit.analysis.graph import read_graph
    from edgekit.stages import quantize

    fp16 = tmp_path / "fp16.tflite"
    fp16.write_bytes(quantize.convert(intake.load(models["keras"]), "float16"))
    g = read_graph(fp16.read_bytes())
    assert g.dequantized_weight_bytes >= 52_000 * 4  # the CNN's weights, as float32 once dequantized
    out = json.loads(run_cli("analyze", str(fp16), "-t", "android-gpu", "--json").stdout)
    float_out = json.loads(run_cli("analyze", str(models["float"]), "-t", "android-gpu", "--json").stdout)
    assert out["ram_bytes"] == float_out["ram_bytes"]  # the same activations as the float32 model
    assert any(n.startswith(f"weights apart: {g.dequantized_weight_bytes:,} B") for n in out["notes"])


def test_mobile_ram_is_peak_activation(models: dict[str, Path]) -> None:
    from edgekit.analysis.graph import read_graph

    proc = run_cli("analyze", str(models["float"]), "-t", "android-arm64-cpu", "--json")
    out = json.loads(proc.stdout)
    assert out["ram_kind"] == "peak-activation"
    g = read_graph(models["float"].read_bytes())
    # conv1 output (8x8x32 float) and the input are live together at step 0
    assert out["ram_bytes"] == g.peak_activation_bytes() >= (8 * 8 * 32 + 8 * 8) * 4


def test_calibration_data_wrong_shape_and_nan(models: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((10, 9, 9, 1), np.float32))
    proc = run_cli("analyze", str(models["keras"]), "-t", "cortex-m4", "--calib", str(bad))
    assert proc.returncode == 2 and "shape (10, 9, 9, 1)" in proc.stderr and "Traceback" not in proc.stderr
    nan = tmp_path / "nan.npy"
    x = np.zeros((10, 8, 8, 1), np.float32)
    x[3, 2, 2, 0] = np.nan
    np.save(nan, x)
    proc = run_cli("analyze", str(models["keras"]), "-t", "cortex-m4", "--calib", str(nan))
    assert proc.returncode == 2 and "NaN or Inf" in proc.stderr


def test_collapsed_softmax_gets_a_clear_error(tmp_path: Path) -> None:
    """TFLM aborts in softmax set-up when calibration collapses its input scale: the CLI survives."""
    from edgekit._tf import keras

    m = keras.Sequential([keras.Input((16,)),
                          keras.layers.Dense(10, kernel_initializer="zeros", bias_initializer="zeros"),
                          keras.layers.Softmax()])
    path = tmp_path / "untrained.keras"
    m.save(path)
    proc = run_cli("analyze", str(path), "-t", "cortex-m4")
    assert proc.returncode == 2
    assert "SOFTMAX" in proc.stderr and "scale collapsed" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_big_activation_model_gets_a_large_enough_arena(tmp_path: Path) -> None:
    """Tiny weights, big activations: TFLM's default arena (10x model size) would not allocate."""
    from edgekit._tf import keras

    m = keras.Sequential([keras.Input((96, 96, 3)), keras.layers.Conv2D(8, 3, padding="same"),
                          keras.layers.ReLU()])
    path = tmp_path / "wide.keras"
    m.save(path)
    proc = run_cli("analyze", str(path), "-t", "cortex-m7", "--json")
    out = json.loads(proc.stdout)
    assert out["arena_bytes"] > 10 * out["flash_bytes"]
    assert out["arena_bytes"] >= 96 * 96 * (3 + 8)  # int8 input + output live together


def test_coreml_target_refuses_tflite(models: dict[str, Path]) -> None:
    proc = run_cli("analyze", str(models["int8"]), "-t", "ios-ane")
    assert proc.returncode == 2 and "Core ML" in proc.stderr and ".tflite" in proc.stderr


def test_coreml_target_measures_mlpackage(models: dict[str, Path]) -> None:
    proc = run_cli("analyze", str(models["keras"]), "-t", "ios-ane", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["artifact"] == "mlpackage-fp16"
    # fp16 weights: about half the float32 weight bytes, plus the package's own files
    float_weights = (320 + 18_496 + 32_896 + 1_290) * 4
    assert float_weights / 2 <= out["flash_bytes"] < float_weights


def test_check_an_mlpackage_says_what_it_checked(models: dict[str, Path], tmp_path: Path) -> None:
    from edgekit import intake
    from edgekit.profiles import load_profile
    from edgekit.stages import coreml

    art = intake.load(models["keras"])
    pkg = coreml.convert(art, load_profile("ios-ane"), tmp_path / "m.mlpackage")
    proc = run_cli("check", str(pkg), "-t", "ios-ane", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # RAM from the Core ML program: at least the largest fp16 activation (8x8x32 after the first conv)
    assert out["ram_kind"].startswith("estimate") and out["ram_bytes"] >= 8 * 8 * 32 * 2
    assert "ram" in out["budgets"] and any(n.startswith("checked: the package's size") for n in out["notes"])
    from tests.unit.test_core_install import CORE

    core = run_cli("check", str(pkg), "-t", "ios-ane", env=CORE)  # no coremltools: said, not guessed as 0
    assert core.returncode == 0 and "ram not checked" in core.stdout, core.stdout + core.stderr
