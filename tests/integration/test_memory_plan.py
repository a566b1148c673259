"""Planned models on the real TFLM host interpreter: outputs bit-exact with the converter's model, the
non-persistent arena TFLM reports equal to the plan's and at the liveness bound, TFLM's own greedy
figure reproduced; MLPerf Tiny's four reference int8 models when MLPERF_TINY_ROOT is set."""

from __future__ import annotations

import dataclasses
import os
import re
import selectors
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgekit.analysis import liveness, planner
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

    wt = w(3, 3, 16, 8)

    @tf.function(input_signature=[tf.TensorSpec((1, 8, 8, 8), tf.float32)])
    def upsample(x: object) -> object:
        # TRANSPOSE_CONV's reference kernel requests an int32 accumulator per output element (16 KB here)
        return tf.nn.relu(tf.nn.conv2d_transpose(x, wt, (1, 16, 16, 16), 2, "SAME"))

    return {"digits": models["int8"].read_bytes(), "branches": convert_int8(branches, (1, 16, 16, 4)),
            "flatten": convert_int8(flatten, (1, 16, 16, 4)), "mean": convert_int8(mean, (1, 16, 16, 4)),
            "upsample": convert_int8(upsample, (1, 8, 8, 8))}


@pytest.fixture(scope="module")
def worker() -> Iterator[TflmWorker]:
    with TflmWorker() as w:
        yield w


def check_plan(model: bytes, worker: TflmWorker) -> tuple[planner.MemoryPlan, memplan.Verification]:
    """Plan, embed and run on TFLM; every acceptance condition of a planned model."""
    plan = planner.plan(model)
    assert plan.seconds <= 1.0 and not plan.time_limited  # within the fixed work budget: the same on any machine
    planned = memplan.apply(model, plan)
    assert memplan.apply(model, planner.plan(model)) == planned
    assert memplan.read_offsets(planned) == plan.offline_offsets()
    v = memplan.verify(model, planned, worker=worker)
    assert v.bit_exact
    assert plan.greedy_bytes == v.head_before  # TFLM's own greedy planner, reproduced to the byte
    assert v.head_after == plan.arena_bytes  # TFLM uses the plan as given and fits its scratch into it
    assert plan.bound_bytes <= v.head_after <= plan.bound_bytes * 1.02
    assert v.head_after <= v.head_before
    assert v.tail_after <= v.tail_before
    return plan, v


@pytest.mark.parametrize("name", ["digits", "branches", "flatten", "mean", "upsample"])
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
    assert liveness.reference_scratch(g)[op][0] == 4 * 16 * 64
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


def test_optimize_applies_only_what_tflm_confirms(built: dict[str, bytes], worker: TflmWorker) -> None:
    done = memplan.optimize(built["branches"], worker=worker)
    assert done.applied and done.verification is not None and done.verification.bit_exact
    assert memplan.read_offsets(done.data) is not None and "25,600 -> 17,664 B" in done.note
    same = memplan.optimize(built["digits"], worker=worker)  # TFLM's greedy plan is at the bound already
    assert not same.applied and same.data == built["digits"] and "as small as" in same.note


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


# ------------------------------------------------------------------ on the target: QEMU firmware

TFLM_ROOT = os.environ.get("TFLM_ROOT", "")
TFLM_LIB = "gen/cortex_m_generic_cortex-m4+fp_default_cmsis_nn_gcc/lib/libtensorflow-microlite.a"


def firmware_requirements() -> str | None:
    if not TFLM_ROOT:
        return "TFLM_ROOT is not set (a tflite-micro checkout with its Cortex-M4F library built)"
    if not (Path(TFLM_ROOT) / TFLM_LIB).is_file():
        return f"no TFLM library at $TFLM_ROOT/{TFLM_LIB}: build it with the command in the scaffold's CMakeLists.txt"
    for tool in ("arm-none-eabi-gcc", "cmake", "qemu-system-arm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


class Serial:
    """The firmware's UART over QEMU's stdio, with a deadline on every read."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None and proc.stdin is not None
        self.proc, self.buf = proc, b""
        self.sel = selectors.DefaultSelector()
        self.sel.register(proc.stdout, selectors.EVENT_READ)

    def until(self, marker: bytes, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {marker!r} within {timeout} s; got {self.buf[-300:]!r}")
            if self.sel.select(timeout=left):
                chunk = os.read(self.proc.stdout.fileno(), 4096)  # type: ignore[union-attr]
                if not chunk:
                    raise EOFError(f"QEMU exited; got {self.buf[-300:]!r}")
                self.buf += chunk
        head, _, self.buf = self.buf.partition(marker)
        return (head + marker).decode(errors="replace")

    def command(self, text: str, timeout: float = 60.0) -> str:
        self.proc.stdin.write(text.encode())  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.until(b"m-ready", timeout)


@dataclasses.dataclass
class FirmwareRun:
    allocated: bool
    arena_reserved: int
    arena_used: int  # head + tail on the 32-bit target, with the CMSIS-NN kernels' own scratch buffers
    raw: bytes


def build_firmware(project: Path, build: Path, arena: int | None = None) -> Path:
    """Configure and build (incrementally when ``build`` exists); ``arena`` overrides kTensorArenaSize."""
    if arena is not None:
        settings = project / "src" / "model_settings.h"
        text = settings.read_text()
        settings.write_text(re.sub(r"kTensorArenaSize = \d+;", f"kTensorArenaSize = {arena};", text))
    for cmd in (["cmake", "-S", str(project), "-B", str(build), "-DBOARD=qemu", f"-DTFLM_ROOT={TFLM_ROOT}"],
                ["cmake", "--build", str(build), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return build / "firmware.elf"


def run_firmware(elf: Path, q: bytes) -> FirmwareRun:
    from edgekit.bench.protocol import UPLOAD_CHUNK

    qemu = subprocess.Popen(
        ["qemu-system-arm", "-M", "mps2-an386", "-display", "none", "-monitor", "none", "-serial", "stdio",
         "-icount", "shift=0", "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        serial = Serial(qemu)
        boot = serial.until(b"m-ready", timeout=120)
        info = serial.command("edgekit-info%")
        reserved = int(re.search(r"arena_bytes=(\d+)", info).group(1))  # type: ignore[union-attr]
        if "AllocateTensors failed" in boot:
            return FirmwareRun(False, reserved, 0, b"")
        assert "m-init-done" in boot and "e-[" not in boot, boot
        used = int(re.search(r"arena_used=(\d+)", info).group(1))  # type: ignore[union-attr]
        assert "m-[Expecting" in serial.command(f"db load {len(q)}%")
        for i in range(0, len(q), UPLOAD_CHUNK):
            last = serial.command(f"db {q[i:i + UPLOAD_CHUNK].hex()}%")
        assert "m-load-done" in last
        assert "m-infer-done" in serial.command("infer 1 0%", timeout=600)
        raw = re.search(r"m-edgekit-output-\[([0-9a-f]+)\]", serial.command("edgekit-output%")).group(1)  # type: ignore[union-attr]
        return FirmwareRun(True, reserved, used, bytes.fromhex(raw))
    finally:
        qemu.kill()
        qemu.wait(timeout=30)


@pytest.mark.tflm_tree
@pytest.mark.parametrize("name", ["branches", "vww"])
def test_planned_model_runs_on_the_target_in_the_smaller_arena(name: str, built: dict[str, bytes],
                                                               tmp_path: Path) -> None:
    """QEMU (mps2-an386, Cortex-M4, CMSIS-NN): the planned model runs bit-exact in an arena in which the
    converter's model does not even allocate."""
    reason = firmware_requirements()
    if reason:
        pytest.skip(reason)
    from edgekit.codegen.scaffold import scaffold
    from edgekit.evaluate import tflm_session

    if name == "vww":
        if not MLPERF_TINY_ROOT or not (Path(MLPERF_TINY_ROOT) / MLPERF_MODELS["vww"]).is_file():
            pytest.skip("MLPERF_TINY_ROOT is not set (a mlcommons/tiny checkout)")
        model = (Path(MLPERF_TINY_ROOT) / MLPERF_MODELS["vww"]).read_bytes()
    else:
        model = built[name]
    planned = memplan.apply(model, planner.plan(model))
    x = memplan.sample_inputs(model, 1)
    host = tflm_session([model], x)[0].raw.tobytes()
    inp = read_graph(model).input_tensors()[0]
    q = np.clip(np.round(x / inp.scale[0] + inp.zero_point[0]), -128, 127).astype(np.int8).tobytes()

    runs: dict[str, FirmwareRun] = {}
    for label, data in (("planned", planned), ("original", model)):
        (tmp_path / f"{label}.tflite").write_bytes(data)
        # the original keeps its bytes (scaffold would otherwise embed the same plan itself)
        scaffold(tmp_path / f"{label}.tflite", "cortex-m4", "cmake", tmp_path / label, name=name,
                 plan=label == "planned")
        runs[label] = run_firmware(build_firmware(tmp_path / label, tmp_path / f"build-{label}"), q)
        assert runs[label].allocated and runs[label].raw == host  # int8 CMSIS-NN kernels: equal bit for bit
    small = runs["planned"].arena_used
    print(f"\n{name} on QEMU: arena used {small} B planned, {runs['original'].arena_used} B as converted")
    assert small < runs["original"].arena_used

    tight = (runs["planned"].arena_used + 15) & ~15  # the firmware's arena is 16-byte aligned
    run = run_firmware(build_firmware(tmp_path / "planned", tmp_path / "build-planned", arena=tight), q)
    assert run.allocated and run.arena_reserved == tight and run.raw == host
    run = run_firmware(build_firmware(tmp_path / "original", tmp_path / "build-original", arena=tight), q)
    assert not run.allocated


# ----------------------------------------------------------------- analyze, codegen and fit use the plan


def _arena_constant(settings: Path) -> int:
    m = re.search(r"kTensorArenaSize\s*=\s*(\d+)", settings.read_text())
    assert m, settings.read_text()[:500]
    return int(m.group(1))


def test_analyze_and_codegen_use_the_plan(built: dict[str, bytes], tmp_path: Path) -> None:
    from edgekit.analyzer import analyze
    from edgekit.codegen.generate import codegen

    model = tmp_path / "branches.tflite"
    model.write_bytes(built["branches"])
    report = analyze(model, "cortex-m4")
    assert report.arena is not None
    mp = report.arena["memory_plan"]
    assert mp["embedded"] is False and mp["arena_bytes"] < mp["measured_head_bytes"] and mp["reordered"] is True
    assert any(n.startswith("memory plan: non-persistent arena") for n in report.notes)
    planned = codegen(model, "cortex-m4", tmp_path / "gen")
    plain = codegen(model, "cortex-m4", tmp_path / "gen-plain", plan=False)
    assert any(n.startswith("memory plan embedded:") for n in planned.notes), planned.notes
    assert memplan.read_offsets((tmp_path / "gen" / "model.tflite").read_bytes()) is not None
    assert (tmp_path / "gen-plain" / "model.tflite").read_bytes() == built["branches"]
    assert planned.arena_bytes < plain.arena_bytes
    assert _arena_constant(tmp_path / "gen" / "model_settings.h") == planned.arena_bytes
    again = codegen(tmp_path / "gen" / "model.tflite", "cortex-m4", tmp_path / "gen-again")
    assert again.notes == ["memory plan: the model carries one already (used as is)"]
    assert (tmp_path / "gen-again" / "model.tflite").read_bytes() == (tmp_path / "gen" / "model.tflite").read_bytes()


def test_fit_embeds_a_verified_plan_in_cortex_m_candidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit._tf import keras
    from edgekit.fitting import fit

    keras.utils.set_random_seed(0)  # two branches of different width: the converter's order is not the best
    inp = keras.Input((16, 16, 4))
    a = keras.layers.Conv2D(32, 1, activation="relu")(keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp))
    b = keras.layers.Conv2D(32, 1, activation="relu")(keras.layers.Conv2D(64, 3, padding="same",
                                                                            activation="relu")(inp))
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D(2)(keras.layers.Add()([a, b])))
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(x))
    model.save(tmp_path / "br.keras")
    xs = np.random.default_rng(0).random((48, 16, 16, 4)).astype(np.float32)
    np.savez(tmp_path / "ev.npz", x=xs, y=np.argmax(model.predict(xs, verbose=0), axis=1))
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "cache"))
    r = fit(tmp_path / "br.keras", "cortex-m4", eval_data=str(tmp_path / "ev.npz"), only=["int8"], max_drop=100,
            out_dir=tmp_path / "out", quiet=True)
    assert r.winner is not None and r.winner.memory_plan.startswith("non-persistent arena"), r.winner.memory_plan
    data = (tmp_path / "out" / "model.tflite").read_bytes()
    assert memplan.read_offsets(data) is not None and len(data) == r.winner.flash_bytes
    from edgekit.evaluate import tflm_session

    run = tflm_session([data], xs[:1])[0]
    assert run.arena_bytes == r.winner.ram_bytes  # the figure fit reports is what TFLM allocates for the file
