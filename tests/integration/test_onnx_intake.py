"""ONNX intake through onnx2tf, offline: graphs built with onnx.helper and the light
SqueezeNet that ships in the onnx package's backend test data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _conv_model(path: Path) -> Path:
    """A 4-D, 3-channel input: the case where onnx2tf would download its sample images."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_onnx_conv_analysed_offline(tmp_path: Path) -> None:
    model = _conv_model(tmp_path / "conv.onnx")
    proc = run_cli("analyze", str(model), "-t", "cortex-m4", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "CONV_2D" in out["ops"]
    assert out["params"] == 4 * 3 * 3 * 3 + 4
    assert out["macs"] == 16 * 16 * 4 * 27
    assert out["arena_bytes"] > 0
    assert any("onnx2tf" in n for n in out["notes"])
    # nothing was left behind in the caller's directory (onnx2tf ran in a scratch folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.onnx"]


def test_onnx_with_dynamic_height_and_width_needs_input_shape(tmp_path: Path) -> None:
    """ONNX inputs with symbolic H and W: one clear line naming them (in the converted NHWC layout),
    and with --input-shape the model is converted and measured at that size."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "H", "W"])], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    model = tmp_path / "dyn.onnx"
    onnx.save(m, str(model))
    proc = run_cli("analyze", str(model), "-t", "cortex-m4", cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "(1, ?, ?, 3) (NHWC" in proc.stderr and "--input-shape 1,<d1>,<d2>,3" in proc.stderr
    proc = run_cli("analyze", str(model), "-t", "cortex-m4", "--input-shape", "1,16,16,3", "--json", cwd=tmp_path,
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["layers"][0]["inputs"] == [[1, 16, 16, 3]] and out["macs"] == 16 * 16 * 4 * 27
    assert out["arena_bytes"] >= 16 * 16 * (3 + 4)  # int8 input and output live together
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dyn.onnx"]


def test_light_squeezenet_from_onnx_package(tmp_path: Path) -> None:
    """SqueezeNet 1.1's light test graph computes its weights with ConstantOfShape: folding makes
    it convert."""
    import onnx.backend.test

    sq = Path(os.path.dirname(onnx.backend.test.__file__)) / "data" / "light" / "light_squeezenet.onnx"
    if not sq.is_file():
        pytest.skip(f"this onnx package ships no {sq.name}")
    assert any(n.op_type == "ConstantOfShape" for n in onnx.load(str(sq)).graph.node)
    proc = run_cli("analyze", str(sq), "-t", "android-arm64-cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "CONV_2D" in out["ops"] and "CONCATENATION" in out["ops"]
    # every weight the folded ONNX graph holds is counted (about 0.9 M for this light variant)
    from edgekit.intake import fold_constants

    fold_constants(sq, tmp_path / "folded.onnx")
    folded = onnx.load(str(tmp_path / "folded.onnx"))
    expected = sum(int(np.prod(i.dims)) for i in folded.graph.initializer if len(i.dims) in (1, 4))
    assert out["params"] == pytest.approx(expected, rel=0.01)
    assert out["fits"] is True


def test_onnx_that_onnx2tf_cannot_convert_shows_its_reason(tmp_path: Path) -> None:
    g = helper.make_graph([helper.make_node("StringNormalizer", ["x"], ["y"], case_change_action="LOWER")],
                          "s", [helper.make_tensor_value_info("x", TensorProto.STRING, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.STRING, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    path = tmp_path / "strings.onnx"
    onnx.save(m, str(path))
    proc = run_cli("analyze", str(path), "-t", "android-arm64-cpu")
    assert proc.returncode == 2
    assert "onnx2tf cannot convert" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_not_an_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"definitely not protobuf \xff\xff")
    proc = run_cli("analyze", str(path), "-t", "cortex-m4")
    assert proc.returncode == 2 and "not a valid ONNX model" in proc.stderr
