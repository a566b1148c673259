"""Planned models on the real TFLM host interpreter: outputs bit-exact with the converter's model, the
non-persistent arena TFLM reports equal to the plan's and at the liveness bound, TFLM's own greedy
figure reproduced; MLPerf Tiny's four reference int8 models when MLPERF_TINY_ROOT is set."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgekit.analysis import planner
from edgekit.analysis.graph import read_graph
from edgekit.errors import StageError
from edgekit.evaluate import TflmWorker
from edgekit.stages import memplan

pytestmark = pytest.mark.slow

MLPERF_TINY_ROOT = os.environ.get("MLPERF_TINY_ROOT", "")
MLPERF_MODELS = {  # the reference int8 models, as the benchmark's training folders ship them
    "vww": "benchmark/training/visual_wake_words/trained_models/vww_96_int8.tflite",
    "kws": "benchmark/training/keyword_spotting/trained_models/kws_ref_model.tflite",
    "ic": "benchmark/training/image_classification/trained_models/pretrainedResnet_quant.tflite",
    "ad": "benchmark/training/anomaly_detection/trained_models/ad01_int8.tflite",
}


def convert_int8(fn: object, shape: tuple[int, ...]) -> bytes:
    from edgekit._tf import quiet_native, tf

    rng = np.random.default_rng(0)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)  # type: ignore[attr-defined]
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([rng.standard_normal(shape).astype(np.float32)] for _ in range(16))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    with quiet_native((1, 2)):
        return bytes(conv.convert())


@pytest.fixture(scope="module")
def built(models: dict[str, Path]) -> dict[str, bytes]:
    """Small int8 models, each with what the planner must handle."""
    from edgekit._tf import tf

    rng = np.random.default_rng(1)

    def w(*s: int) -> object:
        return tf.constant((rng.standard_normal(s) * 0.3).astype(np.float32))

    wa1, wa2, wb1, wb2, wd = w(3, 3, 4, 4), w(1, 1, 4, 32), w(3, 3, 4, 64), w(1, 1, 64, 1), w(8 * 8 * 32, 10)
    spec = [tf.TensorSpec((1, 16, 16, 4), tf.float32)]

    @tf.function(input_signature=spec)
    def branches(x: object) -> object:
        # branch A (narrow, then wide: its result is held until the ADD) is written first, so the converter
        # runs it first and holds A's wide result while branch B's wider intermediate is computed
        a = tf.nn.relu(tf.nn.conv2d(tf.nn.relu(tf.nn.conv2d(x, wa1, 1, "SAME")), wa2, 1, "SAME"))
        b = tf.nn.relu(tf.nn.conv2d(tf.nn.relu(tf.nn.conv2d(x, wb1, 1, "SAME")), wb2, 1, "SAME"))
        p = tf.nn.max_pool2d(a + b, 2, 2, "VALID")
        return tf.nn.softmax(tf.matmul(tf.reshape(p, (1, -1)), wd))

    wc, wf = w(3, 3, 4, 32), w(16 * 16 * 32, 10)

    @tf.function(input_signature=spec)
    def flatten(x: object) -> object:
        # the largest step is the RESHAPE, whose input and output TFLM lets share memory
        return tf.matmul(tf.reshape(tf.nn.relu(tf.nn.conv2d(x, wc, 1, "SAME")), (1, -1)), wf)

    wm, wg = w(3, 3, 4, 64), w(16 * 64, 10)

    @tf.function(input_signature=spec)
    def mean(x: object) -> object:
        # MEAN's reference kernel requests scratch buffers (an int32 accumulator per output element: 4 KB
        # here), which makes its step the largest; TFLM places them around the offline plan
        m = tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(x, wm, 1, "SAME")), axis=[1])
        return tf.matmul(tf.reshape(m, (1, -1)), wg)

    return {"digits": models["int8"].read_bytes(), "branches": convert_int8(branches, (1, 16, 16, 4)),
            "flatten": convert_int8(flatten, (1, 16, 16, 4)), "mean": convert_int8(mean, (1, 16, 16, 4))}


@pytest.fixture(scope="module")
def worker() -> Iterator[TflmWorker]:
    with TflmWorker() as w:
        yield w


def check_plan(model: bytes, worker: TflmWorker) -> tuple[planner.MemoryPlan, memplan.Verification]:
    """Plan, embed and run on TFLM; every acceptance condition of a planned model."""
    plan = planner.plan(model)
    assert plan.seconds <= 1.0
    planned = memplan.apply(model, plan)
    assert memplan.read_offsets(planned) == plan.offline_offsets()
    v = memplan.verify(model, planned, worker=worker)
    assert v.bit_exact
    assert plan.greedy_bytes == v.head_before  # TFLM's own greedy planner, reproduced to the byte
    assert v.head_after == plan.arena_bytes  # TFLM uses the plan as given and fits its scratch into it
    assert plan.bound_bytes <= v.head_after <= plan.bound_bytes * 1.02
    assert v.head_after <= v.head_before
    assert v.tail_after <= v.tail_before
    return plan, v


@pytest.mark.parametrize("name", ["digits", "branches", "flatten", "mean"])
def test_planned_model_runs_bit_exact_at_the_bound(name: str, built: dict[str, bytes], worker: TflmWorker) -> None:
    plan, v = check_plan(built[name], worker)
    print(f"\n{name}: TFLM greedy {v.head_before} B, bound {plan.bound_bytes} B, planned {v.head_after} B "
          f"({plan.method}{', reordered' if plan.reordered else ''}, {plan.seconds * 1000:.0f} ms)")


def test_reordering_lowers_the_bound_of_a_branching_graph(built: dict[str, bytes], worker: TflmWorker) -> None:
    model = built["branches"]
    plan, v = check_plan(model, worker)
    assert plan.reordered and plan.bound_bytes < plan.original_bound_bytes
    kept = planner.plan(model, reorder=False)
    assert plan.arena_bytes < kept.arena_bytes == kept.bound_bytes == plan.original_bound_bytes
    assert v.head_after < v.head_before
    g, planned = read_graph(model), read_graph(memplan.apply(model, plan))
    assert [layer.op for layer in planned.layers] == [g.layers[i].op for i in plan.order]


def test_reshape_input_and_output_share_memory(built: dict[str, bytes]) -> None:
    model = built["flatten"]
    g = read_graph(model)
    reshape = next(layer for layer in g.layers if layer.op == "RESHAPE")
    plan = planner.plan(model)
    assert plan.offsets[reshape.inputs[0]] == plan.offsets[reshape.outputs[0]]
    assert plan.bound_bytes < planner.plan(model, alias=False).bound_bytes


def test_kernel_scratch_is_part_of_the_plan(built: dict[str, bytes], worker: TflmWorker) -> None:
    model = built["mean"]
    g = read_graph(model)
    op = next(layer.index for layer in g.layers if layer.op == "MEAN")
    assert planner.reference_scratch(g)[op][0] == 4 * 16 * 64
    plan, v = check_plan(model, worker)
    without = planner.plan(model, scratch={})
    # the scratch is what makes MEAN's step the largest: TFLM's figures match only with it counted
    assert plan.bound_bytes == v.head_after > without.bound_bytes


def test_a_wrong_plan_is_caught_by_verification(built: dict[str, bytes], worker: TflmWorker) -> None:
    model = built["branches"]
    plan = planner.plan(model)
    clash = dataclasses.replace(plan, offsets=dict.fromkeys(plan.offsets, 0))  # every tensor at offset 0
    assert not memplan.verify(model, memplan.apply(model, clash), worker=worker).bit_exact


def test_apply_replaces_an_existing_plan_and_refuses_another_models_plan(built: dict[str, bytes]) -> None:
    model = built["branches"]
    plan = planner.plan(model)
    once = memplan.apply(model, plan)
    twice = memplan.apply(once, dataclasses.replace(plan, order=tuple(range(len(plan.order)))))
    assert read_graph(twice).metadata_names.count(memplan.METADATA_NAME) == 1
    assert memplan.read_offsets(twice) == plan.offline_offsets()
    with pytest.raises(StageError, match="different model"):
        memplan.apply(built["digits"], plan)


@pytest.mark.skipif(not MLPERF_TINY_ROOT, reason="MLPERF_TINY_ROOT is not set (a mlcommons/tiny checkout)")
@pytest.mark.parametrize("name", sorted(MLPERF_MODELS))
def test_mlperf_tiny_reference_models(name: str, worker: TflmWorker) -> None:
    path = Path(MLPERF_TINY_ROOT) / MLPERF_MODELS[name]
    if not path.is_file():
        pytest.skip(f"{path} is missing from the checkout")
    plan, v = check_plan(path.read_bytes(), worker)
    print(f"\n{name}: TFLM greedy {v.head_before} B, bound {plan.bound_bytes} B, planned {v.head_after} B "
          f"({plan.method}, {plan.seconds * 1000:.0f} ms)")
    if name == "vww":
        assert v.head_before == 73728 and v.head_after <= 56400
