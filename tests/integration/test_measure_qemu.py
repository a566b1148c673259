"""Measure, don't estimate - against a real TFLM build, arm-none-eabi-gcc and qemu-system-arm.

- `analyze --measure qemu` reports an arena with which the firmware starts, and with 16 bytes less it does
  not (both rebuilt and booted here), and per-operator times that sum to the whole inference within 2%.
- Each core runs on QEMU's machine for it (the ELF's own CPU attribute, read with arm-none-eabi-readelf).
- The runtime-code estimate is within 10% of the .text+.data of the same firmware built for the same core.
- tools/gen_tflm_code_size.py reproduces the built-in table from the same library.

Needs TFLM_ROOT (a tflite-micro checkout with Cortex-M libraries built by TFLM's Makefile), cmake,
arm-none-eabi-gcc and qemu-system-arm; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli
from tests.integration import qemu_uart

pytestmark = [pytest.mark.slow, pytest.mark.tflm_tree]

TFLM_ROOT = os.environ.get("TFLM_ROOT", "")
LIB = "gen/cortex_m_generic_{arch}_default_cmsis_nn_gcc/lib/libtensorflow-microlite.a"
ARCH = {"cortex-m0plus": "cortex-m0plus", "cortex-m4": "cortex-m4+fp", "cortex-m7": "cortex-m7+fp",
        "cortex-m33": "cortex-m33", "cortex-m55": "cortex-m55"}
MACHINE = {"cortex-m0plus": "mps2-an385", "cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500"}


def _missing(core: str = "cortex-m4") -> str | None:
    if not TFLM_ROOT:
        return "TFLM_ROOT is not set (a tflite-micro checkout with its Cortex-M libraries built)"
    lib = Path(TFLM_ROOT) / LIB.format(arch=ARCH[core])
    if not lib.is_file():
        return f"no TFLM library for {core} at {lib}: build it with the make command in a scaffold's CMakeLists.txt"
    for tool in ("cmake", "arm-none-eabi-gcc", "qemu-system-arm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _need(core: str = "cortex-m4") -> None:
    reason = _missing(core)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("measure-cache")


def _measure(model: Path, target: str, cache: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    proc = run_cli("analyze", str(model), "-t", target, "--measure", "qemu", "--json", *extra,
                   env={"EDGEKIT_MEASURE_CACHE_DIR": str(cache)}, timeout=1800)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _boot(project: Path, build: Path, arena: int, machine: str) -> str:
    """Build the measured project with a kTensorArenaSize of ``arena`` and return what it prints at boot."""
    flags = f"-DEDGEKIT_TENSOR_ARENA_SIZE={arena} -DEDGEKIT_QEMU_MACHINE={machine}"
    for cmd in (["cmake", "-S", str(project), "-B", str(build), f"-DTFLM_ROOT={TFLM_ROOT}", "-DBOARD=qemu",
                 "-DQEMU_CORE=target", f"-DCMAKE_CXX_FLAGS={flags}"], ["cmake", "--build", str(build), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    qemu = ["qemu-system-arm", "-M", machine, "-display", "none", "-monitor", "none", "-serial", "stdio",
            "-icount", "shift=0", "-semihosting-config", "enable=on,target=native", "-kernel"]
    with qemu_uart.qemu(qemu, build / "firmware.elf") as serial:
        boot = serial.until(b"m-ready", timeout=120)
        serial.send("edgekit-exit%")
        assert serial.proc.wait(timeout=60) == 0
    return boot


def test_measured_arena_is_exact_and_operator_times_sum_to_the_inference(models: dict[str, Path], cache: Path,
                                                                         tmp_path: Path) -> None:
    _need()
    out = _measure(models["int8"], "cortex-m4", cache)
    m = out["measurement"]
    arena = m["arena_min"]
    assert m["machine"] == "mps2-an386" and m["kernels"] == "cmsis_nn" and m["cached"] is False
    assert out["budgets"]["ram"]["used"] == arena and "measured on QEMU mps2-an386" in out["budgets"]["ram"]["note"]
    assert m["arena_used"] <= arena < m["arena_reserved"] and arena % 16 == 0
    assert m["output_check"] == "exact match with the TFLM host interpreter"
    # operators: the model's, per inference, summing to the whole inference within 2%
    assert {o["op"] for o in m["ops"]} == set(out["ops"])
    assert {o["op"]: o["calls"] for o in m["ops"]}["CONV_2D"] == 2.0
    assert abs(sum(o["us"] for o in m["ops"]) - m["inference_us"]) <= 0.02 * m["inference_us"]
    assert m["instructions_per_inference"] == round(m["inference_us"] * 1000) > 100_000
    # the firmware's exact sizes are the flash line, in parts
    fw = m["firmware"]
    assert out["budgets"]["flash"]["used"] == fw["flash"] == fw["text"] + fw["data"] == sum(m["flash_parts"].values())
    assert m["flash_parts"]["model"] == models["int8"].stat().st_size
    # the firmware starts with exactly that arena, and not with 16 bytes less
    project = cache / m["key"] / "project"
    booted = _boot(project, tmp_path / "at", arena, "mps2-an386")
    assert "m-init-done" in booted and "e-[" not in booted, booted
    refused = _boot(project, tmp_path / "below", arena - 16, "mps2-an386")
    assert f"e-[AllocateTensors failed with the {arena - 16}-byte tensor arena" in refused, refused
    assert re.search(r"e-\[TFLM: [^\]]*(Failed|failed)", refused), refused
    print(f"\ndigits CNN on QEMU cortex-m4: arena {arena:,} B (host {out['arena_bytes']:,} B), "
          f"{m['inference_us']:.1f} us virtual, operators {m['ops_vs_inference'] * 100:+.2f}%, "
          f"firmware {fw['flash']:,} B")
    # a second run is the cache's: the same figures without building or running
    again = _measure(models["int8"], "cortex-m4", cache)
    assert again["measurement"]["cached"] is True and again["measurement"]["arena_min"] == arena
    assert again["measurement"]["inference_us"] == m["inference_us"]


def test_a_model_the_targets_kernels_refuse_does_not_fit(models: dict[str, Path], cache: Path,
                                                         tmp_path: Path) -> None:
    """int16x8 with per-channel weights: the host TFLM (reference kernels) runs it, CMSIS-NN's FULLY_CONNECTED
    does not; measured on the target, check says it does not fit (exit 1) and why, in TFLM's words."""
    _need()
    from edgekit import data, intake
    from edgekit.stages import quantize

    model = tmp_path / "cnn_16x8.tflite"
    calib = data.load(models["calib"], (1, 8, 8, 1))
    model.write_bytes(quantize.convert(intake.load(models["keras"]), "int16x8", calib, "int8"))
    assert run_cli("check", str(model), "-t", "cortex-m4").returncode == 0  # by the host's figures it fits
    proc = run_cli("check", str(model), "-t", "cortex-m4", "--measure", "qemu", "--json",
                   env={"EDGEKIT_MEASURE_CACHE_DIR": str(cache)}, timeout=1800)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["budgets"]["runtime"]["fits"] is False and out["measurement"] is None
    assert "cmsis_nn/fully_connected.cc" in out["budgets"]["runtime"]["note"], out["budgets"]["runtime"]


@pytest.mark.parametrize("core", ["cortex-m7", "cortex-m0plus"])
def test_each_core_is_built_for_itself_and_run_on_its_machine(models: dict[str, Path], cache: Path,
                                                              core: str) -> None:
    _need(core)
    out = _measure(models["int8"], core, cache)
    m = out["measurement"]
    assert m["machine"] == MACHINE[core] and m["core"] == core
    assert m["output_check"] == "exact match with the TFLM host interpreter"
    assert abs(m["ops_us"] - m["inference_us"]) <= 0.02 * m["inference_us"]
    elf = cache / m["key"] / "firmware.elf"
    attrs = subprocess.run(["arm-none-eabi-readelf", "-A", str(elf)], capture_output=True, text=True, timeout=60,
                           check=True).stdout
    # gcc records the architecture, not the core's name: ARMv7E-M with the M7's FPv5 double-precision FPU
    # (the M4F's is FPv4-SP), ARMv6-M (v6S-M) with Thumb-1 only for the M0+
    expected = {"cortex-m7": ("v7E-M", "FPv5"), "cortex-m0plus": ("v6S-M", "Thumb-1")}[core]
    assert f"Tag_CPU_arch: {expected[0]}\n" in attrs and expected[1] in attrs, attrs
    print(f"\n{core} on {m['machine']}: arena {m['arena_min']:,} B, {m['instructions_per_inference']:,} instructions")


def _autoencoder(tmp: Path) -> Path:
    from edgekit import data, intake
    from edgekit._tf import keras, tf
    from edgekit.stages import quantize

    tf.random.set_seed(0)
    x = np.random.default_rng(0).normal(size=(128, 64)).astype(np.float32)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(64)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, x, epochs=1, verbose=0)
    model.save(tmp / "ad.keras")
    np.save(tmp / "calib.npy", x[:32])
    tfl = quantize.convert(intake.load(tmp / "ad.keras"), "int8", data.load(tmp / "calib.npy", (1, 64)), "int8")
    (tmp / "ad.tflite").write_bytes(tfl)
    return tmp / "ad.tflite"


def _firmware_flash(model: Path, core: str, tmp: Path) -> int:
    """.text + .data of the cmake scaffold of ``model`` built for ``core`` (its generic board)."""
    from edgekit.analysis.elf_size import read_elf
    from edgekit.codegen.scaffold import scaffold

    # the chip's boot block (RP2040's boot2) is not part of this comparison; the file is not named like the
    # profile it inherits (a path-given cortex-m0plus.toml inheriting "cortex-m0plus" is an inheritance cycle)
    board = tmp / f"board-{core}.toml"
    board.write_text(f'schema_version = 1\ninherit = "{core}"\n[memory]\nboot_header_size = 0\n')
    scaffold(model, str(board), "cmake", tmp / "fw", name="m", allow_over_budget=True, plan=False)
    for cmd in (["cmake", "-S", str(tmp / "fw"), "-B", str(tmp / "b"), f"-DTFLM_ROOT={TFLM_ROOT}"],
                ["cmake", "--build", str(tmp / "b"), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return read_elf(tmp / "b" / "firmware.elf")[1].flash


def test_runtime_code_estimate_is_within_10_percent_of_the_firmware(models: dict[str, Path], tmp_path: Path) -> None:
    """model + runtime code (estimate) + the scaffold's application, against the built firmware's flash; the
    error is taken on what is not the model (the runtime and the application), not diluted by it."""
    _need()
    from edgekit.analysis import runtime_size
    from edgekit.analysis.graph import read_graph
    from edgekit.profiles import load_profile

    cases = [("digits int8", models["int8"]), ("digits float32", models["float"]),
             ("autoencoder int8", _autoencoder(tmp_path))]
    rows = []
    for core in ARCH:
        if _missing(core):
            continue
        profile = load_profile(core)
        table, _ = runtime_size.find_table(profile)
        assert table is not None and table.app_bytes is not None
        for name, model in cases:
            work = tmp_path / f"{core}-{name.replace(' ', '-')}"
            work.mkdir()
            size = model.stat().st_size
            code = runtime_size.estimate(read_graph(model.read_bytes()).ops, profile)
            assert code is not None and not code.missing
            measured = _firmware_flash(model, core, work) - size
            estimated = code.bytes + table.app_bytes
            rows.append((core, name, estimated, measured, (estimated - measured) / measured))
    for core, name, est, meas, err in rows:
        print(f"{core:14} {name:17} estimate {est:>8,} B  firmware {meas:>8,} B  {err * 100:+.2f}%")
    assert rows
    assert all(abs(err) <= 0.10 for *_, err in rows), rows


def test_generator_reproduces_the_builtin_table() -> None:
    """The built-in figures come from this tool: run it again on the same library, compare a few operators."""
    _need()
    from edgekit.analysis import runtime_size

    lib = Path(TFLM_ROOT) / LIB.format(arch="cortex-m4+fp")
    import hashlib

    builtin = {(t.arch, t.kernels): t for t in runtime_size.read_tables(runtime_size.BUILTIN_TABLE)}
    if builtin[("cortex-m4+fp", "cmsis_nn")].meta["library_sha256"] != hashlib.sha256(lib.read_bytes()).hexdigest():
        pytest.skip("TFLM_ROOT's cortex-m4+fp library is another build than the built-in table's: its figures differ")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_tflm_code_size.py"), "--tflm-root", TFLM_ROOT,
                           "--arch", "cortex-m4+fp", "--kernels", "cmsis_nn", "--ops", "CONV_2D,SOFTMAX,RESHAPE",
                           "--check"], capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "built-in table is current" in proc.stderr
