"""Level 3 on an ONNX model from the intake (onnx2tf, offline): the Keras model rebuilt from the converted
float graph computes what the graph computes, its dependency groups are found (residual Add over a
convolution and a BatchNorm-folded one, grouped-conv depthwise, Concat, Gemm after global pooling), and a
pruned copy is physically smaller and converts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _save(nodes: list, inits: list, x_shape: list[int], y_shape: list[int], path: Path) -> Path:
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _onnx_net(path: Path) -> Path:
    rng = np.random.default_rng(0)

    def t(name: str, a: np.ndarray) -> object:
        return numpy_helper.from_array(a.astype(np.float32), name)

    inits = [t("w1", rng.standard_normal((8, 3, 3, 3)) * 0.3), t("b1", rng.standard_normal(8) * 0.1),
             t("w2", rng.standard_normal((8, 8, 3, 3)) * 0.2), t("b2", rng.standard_normal(8) * 0.1),
             t("w3", rng.standard_normal((8, 1, 3, 3)) * 0.3), t("b3", np.zeros(8)),
             t("g", rng.random(8) + 0.5), t("be", rng.standard_normal(8) * 0.1), t("m", rng.standard_normal(8) * 0.1),
             t("v", rng.random(8) + 0.5), t("fw", rng.standard_normal((5, 16)) * 0.3), t("fb", np.zeros(5))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g", "be", "m", "v"], ["n1"]),
             helper.make_node("Relu", ["n1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["s"]),
             helper.make_node("Conv", ["s", "w3", "b3"], ["d"], pads=[1, 1, 1, 1], group=8),
             helper.make_node("Concat", ["d", "s"], ["cat"], axis=1),
             helper.make_node("GlobalAveragePool", ["cat"], ["gp"]),
             helper.make_node("Flatten", ["gp"], ["fl"]),
             helper.make_node("Gemm", ["fl", "fw", "fb"], ["y0"], transB=1),
             helper.make_node("Softmax", ["y0"], ["y"], axis=1)]
    return _save(nodes, inits, [1, 3, 16, 16], [1, 5], path)


def test_onnx_model_is_lifted_grouped_and_pruned(tmp_path: Path) -> None:
    from edgekit import intake
    from edgekit.compress import lift, prune
    from edgekit.compress.kgraph import KGraph
    from edgekit.evaluate import run_litert
    from edgekit.stages import quantize

    art = intake.load(_onnx_net(tmp_path / "net.onnx"))
    try:
        km = lift.from_artifact(art)  # verified against the float .tflite inside
        tfl = art.float_tflite_cache or quantize.convert(art, "float32")
    finally:
        art.cleanup()
    x = np.random.default_rng(1).random((3, 16, 16, 3), dtype=np.float32)
    assert np.allclose(np.asarray(km(x)), run_litert(tfl, x), atol=1e-5)
    g = KGraph(km)
    (res,) = g.prunable()  # the two convolutions tied by the residual Add, the depthwise after them
    assert len(res.producers) == 2 and res.size == 8
    assert [class_of(g, n) for n in res.per_channel] == ["DepthwiseConv2D"]
    assert sorted(class_of(g, n) for n in res.consumers) == ["Conv2D", "Dense"]  # Gemm reads both concat halves
    small, counts = prune.prune(km, 0.5)
    assert counts == {res.gid: 4}
    assert small.count_params() < km.count_params() / 2
    small.save(tmp_path / "small.keras")
    converted = quantize.convert(intake.load(tmp_path / "small.keras"), "float32")
    assert len(converted) < len(tfl)
    assert run_litert(converted, x).shape == (3, 5)


def class_of(g: object, name: str) -> str:
    return type(g.node_of(name).layer).__name__  # type: ignore[attr-defined]


def test_a_graph_level3_cannot_rebuild_is_refused_before_the_ladder(tmp_path: Path) -> None:
    """An ONNX graph with an operator the Keras rebuild does not know (Sin): fit --level 3 says so in one line,
    exit 2, before any level-1/2 rung is built (nothing in the cache) and without an output folder."""
    from tests.conftest import run_cli

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Sin", ["c"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
    _save(nodes, [w], [1, 3, 8, 8], [1, 4], tmp_path / "sin.onnx")
    x = rng.random((40, 8, 8, 3), dtype=np.float32)
    np.savez(tmp_path / "data.npz", x=x)
    proc = run_cli("fit", str(tmp_path / "sin.onnx"), "-t", "cortex-m4", "--eval", str(tmp_path / "data.npz"),
                   "--metric", "mse-to-float", "--train", str(tmp_path / "data.npz"), "--level", "3", "-o",
                   str(tmp_path / "out"), env={"EDGEKIT_CACHE_DIR": str(tmp_path / "cache")}, timeout=600)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "level 3 cannot rebuild" in lines[0] and "SIN" in lines[0], lines
    assert not (tmp_path / "out").exists()
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] if (tmp_path / "cache").exists() else []
    assert not cached, cached


def test_an_nchw_flatten_is_rebuilt_and_the_convolution_before_it_keeps_its_channels(tmp_path: Path) -> None:
    """ONNX's Flatten of an NCHW tensor becomes a TRANSPOSE to NCHW and a RESHAPE in onnx2tf's graph (the
    demo CNN exported to ONNX is such a graph): rebuilt as a Permute, it computes what the graph computes;
    the grouping does not follow a Permute, so the convolution feeding it keeps its channels while the one
    before stays prunable."""
    from edgekit import intake
    from edgekit.compress import lift, prune
    from edgekit.compress.kgraph import KGraph
    from edgekit.evaluate import run_litert
    from edgekit.stages import quantize

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n) for n, s in
             (("w1", (8, 1, 3, 3)), ("b1", (8,)), ("w2", (6, 8, 3, 3)), ("b2", (6,)), ("fw", (4, 6 * 4 * 4)),
              ("fb", (4,)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Flatten", ["r2"], ["fl"]),
             helper.make_node("Gemm", ["fl", "fw", "fb"], ["y0"], transB=1),
             helper.make_node("Softmax", ["y0"], ["y"], axis=1)]
    art = intake.load(_save(nodes, inits, [1, 1, 8, 8], [1, 4], tmp_path / "nchw.onnx"))
    try:
        km = lift.from_artifact(art)
        tfl = art.float_tflite_cache or quantize.convert(art, "float32")
    finally:
        art.cleanup()
    assert any(type(layer).__name__ == "Permute" for layer in km.layers), [type(v).__name__ for v in km.layers]
    x = np.random.default_rng(1).random((3, 8, 8, 1), dtype=np.float32)
    assert np.allclose(np.asarray(km(x)), run_litert(tfl, x), atol=1e-5)
    g = KGraph(km)
    (first,) = g.prunable()
    assert first.size == 8 and [class_of(g, n) for n in first.producers] == ["Conv2D"]
    small, counts = prune.prune(km, 0.5)
    assert counts == {first.gid: 4} and small.count_params() < km.count_params()
