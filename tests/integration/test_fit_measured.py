"""fit counts TFLM's code in flash, and ranks its finalists by measurements: QEMU instruction counts (with
TFLM_ROOT), a phone over adb (Debian's adb against the emulated device, a stand-in benchmark_model whose
timing grows with the model it is given), a board over serial (the emulated device on a pty, put in place
by --flash-cmd as a flashing script would)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow
TFLM_ROOT = os.environ.get("TFLM_ROOT", "")
M4_LIB = "gen/cortex_m_generic_cortex-m4+fp_default_cmsis_nn_gcc/lib/libtensorflow-microlite.a"


@pytest.fixture(scope="module")
def digits(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgekit.demo import digits_split

    out = tmp_path_factory.mktemp("digits-measured")
    _, _, xte, yte = digits_split(0)
    np.savez(out / "eval.npz", x=xte, y=yte)
    return {**models, "eval": out / "eval.npz", "cache": out / "fit-cache", "measure": out / "measure-cache"}


def _fit(d: dict[str, Path], target: str, out: Path, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return run_cli("fit", str(d["keras"]), "-t", target, "--calib", str(d["calib"]), "--eval", str(d["eval"]),
                   "-o", str(out), *extra, env={"EDGEKIT_CACHE_DIR": str(d["cache"]),
                                                "EDGEKIT_MEASURE_CACHE_DIR": str(d["measure"]), **(env or {})},
                   timeout=1800)


def test_fit_counts_runtime_code_in_flash(digits: dict[str, Path], tmp_path: Path) -> None:
    proc = _fit(digits, "cortex-m4", tmp_path / "roomy", "--candidates", "int8-per-tensor")
    assert proc.returncode == 0, proc.stderr
    cand = json.loads((tmp_path / "roomy" / "report.json").read_text())["candidates"][0]
    flash = cand["budgets"]["flash"]
    code = flash["parts"]["runtime code"]
    assert flash["parts"]["model"] == cand["flash_bytes"] and flash["used"] == cand["flash_bytes"] + code
    assert code > 40_000  # the interpreter and the CNN's five kernels
    # a board that holds the model with room to spare, but not the model and TFLM's code: nothing fits
    board = tmp_path / "board.toml"
    board.write_text(f'schema_version = 1\ninherit = "cortex-m4"\n[budgets]\nflash_bytes = '
                     f'{cand["flash_bytes"] + code // 2}\n')
    proc = _fit(digits, str(board), tmp_path / "tight", "--candidates", "int8-per-tensor")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"closest: int8-per-tensor: flash over by {code - code // 2:,} bytes" in proc.stdout, proc.stdout
    assert "flash (model + TFLM code)" in proc.stdout


def test_fit_without_qemu_ranks_by_the_labelled_estimate(digits: dict[str, Path], tmp_path: Path) -> None:
    proc = _fit(digits, "cortex-m4", tmp_path / "o", "--candidates", "int8,int8-per-tensor", "--optimize", "latency",
                "--json", env={"TFLM_ROOT": ""})
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert any(n.startswith("Cortex-M candidates ranked by the latency ESTIMATE") and "TFLM_ROOT is not set" in n
               for n in r["notes"]), r["notes"]
    assert all(c["measured"] == {} and c["latency_kind"].startswith("estimate") for c in r["candidates"])


def test_device_options_are_checked_before_any_work(digits: dict[str, Path], tmp_path: Path) -> None:
    cases = [(("-t", "cortex-m4", "--device", "/dev/ttyACM9"), "--flash-cmd must put it there"),
             (("-t", "android-arm64-cpu", "--device", "adb"), "--device adb needs --benchmark-binary"),
             (("-t", "android-arm64-cpu", "--device", "qemu"), "target android-arm64-cpu runs litert"),
             (("-t", "cortex-m4", "--device", "adb", "--benchmark-binary", "x"), "runs tflm")]
    for args, said in cases:
        proc = run_cli("fit", str(digits["keras"]), *args, "--eval", str(digits["eval"]), "-o", str(tmp_path / "o"),
                       timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith("edgekit: error: ") and said in proc.stderr, args
        assert proc.stderr.count("\n") == 1 and not (tmp_path / "o").exists()


def _need_qemu() -> None:
    if not TFLM_ROOT:
        pytest.skip("TFLM_ROOT is not set (a tflite-micro checkout with its Cortex-M libraries built)")
    if not (Path(TFLM_ROOT) / M4_LIB).is_file():
        pytest.skip(f"no TFLM library for cortex-m4 at {Path(TFLM_ROOT) / M4_LIB}")
    for tool in ("cmake", "arm-none-eabi-gcc", "qemu-system-arm"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def test_fit_ranks_cortex_m_finalists_by_qemu_instructions(digits: dict[str, Path], tmp_path: Path) -> None:
    _need_qemu()
    proc = _fit(digits, "cortex-m4", tmp_path / "q", "--candidates", "int16x8,int8,int8-per-tensor", "--optimize",
                "latency", "--device", "qemu")
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "q" / "report.json").read_text())
    # int16x8 runs on the host's reference kernels, but CMSIS-NN's FULLY_CONNECTED refuses per-channel 16x8:
    # measured, it does not run on the target, and says why in TFLM's own words
    by = {c["name"]: c for c in r["candidates"]}
    assert by["int16x8"]["evaluated_on"].startswith("TFLM host interpreter")
    assert by["int16x8"]["fits"] is False and by["int16x8"]["budgets"]["runtime"]["fits"] is False
    assert "cmsis_nn/fully_connected.cc" in by["int16x8"]["measured"]["error"]
    assert "estimate vs measurement: int16x8: does NOT RUN on qemu" in proc.stdout
    measured = {c["name"]: c for c in r["candidates"] if c["measured"] and "error" not in c["measured"]}
    assert set(measured) == {"int8", "int8-per-tensor"}
    for c in measured.values():
        m = c["measured"]
        assert m["device"] == "QEMU mps2-an386 (cortex-m4, TFLM cmsis_nn)"
        assert m["output_check"] == "exact match with the TFLM host interpreter"
        assert m["instructions"] > 100_000 and m["latency_ms"] == pytest.approx(m["instructions"] / 64e6 * 1000)
        assert m["estimate_kind"].startswith("estimate") and m["estimate_ms"] > 0
        assert c["latency_kind"].startswith("measured on QEMU mps2-an386")
        # the arena measured on the core is what the RAM budget holds
        assert c["budgets"]["ram"]["used"] == m["arena_bytes"] <= m["arena_host"] + 1024
    fewest = min(measured.values(), key=lambda c: c["measured"]["instructions"])
    assert r["winner"] == fewest["name"]
    md = (tmp_path / "q" / "report.md").read_text()
    assert "## Estimate vs measurement" in md and "meas" in md
    assert "estimate vs measurement: int8:" in proc.stdout
    # without --device it ranks on QEMU by itself (the builds come from the measurement cache) ...
    again = _fit(digits, "cortex-m4", tmp_path / "auto", "--candidates", "int8,int8-per-tensor", "--optimize",
                 "latency", "--json")
    auto = json.loads(again.stdout)
    assert auto["winner"] == fewest["name"] and all(c["measured"]["cached"] for c in auto["candidates"])
    # ... unless told not to
    off = _fit(digits, "cortex-m4", tmp_path / "off", "--candidates", "int8,int8-per-tensor", "--optimize",
               "latency", "--json", env={"EDGEKIT_FIT_QEMU_RANK": "0"})
    assert all(c["measured"] == {} for c in json.loads(off.stdout)["candidates"])


def _stand_in_benchmark_model(tmp_path: Path) -> Path:
    """benchmark_model's real output (tests/data), with the average made proportional to the model's size, so
    that the measured ranking is known: the smaller model is the faster. It is pushed to the phone alone, so
    the output travels inside it."""
    data = Path(__file__).resolve().parent.parent / "data" / "benchmark_model" / "older_xnnpack.txt"
    script = tmp_path / "benchmark_model"
    script.write_text("#!/bin/sh\n"
                      "# stand-in for TFLite's benchmark_model (a phone cannot exist here): its real output, timing "
                      "~ model size\n"
                      'for a in "$@"; do case "$a" in --graph=*) graph="${a#--graph=}";; esac; done\n'
                      'avg=$(( $(wc -c < "$graph") / 100 ))\n'
                      'sed -e "s/Inference (avg): 105.2/Inference (avg): $avg/" '
                      '-e "s/min=91 max=842 avg=105.2/min=91 max=842 avg=$avg/" <<\'EOF\'\n'
                      f"{data.read_text()}EOF\n")
    script.chmod(0o755)
    return script


def test_fit_device_adb_measures_the_finalists_on_the_phone(digits: dict[str, Path], tmp_path: Path) -> None:
    if shutil.which("adb") is None:
        pytest.skip("adb is not installed (Debian: adb)")
    import socket
    import subprocess

    from tests.integration.test_bench_adb import _connect, _device

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        env = {"ANDROID_ADB_SERVER_PORT": str(s.getsockname()[1])}
    subprocess.run(["adb", "start-server"], env={**os.environ, **env}, capture_output=True, timeout=30, check=True)
    try:
        dev = _device(tmp_path)
        _connect(env, dev.serial)
        binary = _stand_in_benchmark_model(tmp_path)
        proc = _fit(digits, "android-arm64-cpu", tmp_path / "a", "--candidates", "float32,int8", "--device", "adb",
                    "--benchmark-binary", str(binary), env=env)
        assert proc.returncode == 0, proc.stderr
        r = json.loads((tmp_path / "a" / "report.json").read_text())
        by = {c["name"]: c for c in r["candidates"]}
        for name in ("float32", "int8"):
            m = by[name]["measured"]
            assert m["device"] == f"adb EdgekitSim ({dev.serial})", m
            # the stand-in's figure: the pushed model's bytes / 100 microseconds
            assert m["latency_ms"] == pytest.approx(by[name]["flash_bytes"] // 100 / 1000, abs=1e-6)
            assert m["estimate_ms"] is not None and by[name]["latency_kind"].startswith("measured on EdgekitSim")
        assert r["winner"] == "int8"  # four times smaller, so four times faster on the stand-in
        assert "estimate vs measurement: float32: estimate" in proc.stdout
    finally:
        subprocess.run(["adb", "kill-server"], env={**os.environ, **env}, capture_output=True, timeout=30,
                       check=False)


FLASH_SCRIPT = r'''
"""Puts a model "on the board": the emulated device on a pty, reached through a fixed link (a port name)."""
import os, signal, subprocess, sys, time
model, link, state = sys.argv[1], sys.argv[2], sys.argv[3]
if os.path.exists(state + ".pid"):
    try:
        os.kill(int(open(state + ".pid").read()), signal.SIGTERM)
    except (OSError, ValueError):
        pass
    time.sleep(0.5)
if os.environ.get("STUCK_MODEL") and os.path.exists(state + ".first"):
    model = open(state + ".first").read()  # a flashing step that silently keeps the old firmware
open(state + ".first", "w").write(model)
out = open(state + ".out", "w")
proc = subprocess.Popen([sys.executable, "-m", "edgekit", "device-sim", model, "--stop-after", "300"], stdout=out,
                        stderr=subprocess.DEVNULL, start_new_session=True)
open(state + ".pid", "w").write(str(proc.pid))
for _ in range(600):
    text = open(state + ".out").read().strip()
    if text.startswith("/dev/"):
        break
    time.sleep(0.1)
else:
    sys.exit("the emulated device did not start")
if os.path.lexists(link):
    os.unlink(link)
os.symlink(text, link)
'''


def test_fit_device_port_flashes_and_benches_each_finalist(digits: dict[str, Path], tmp_path: Path) -> None:
    script = tmp_path / "flash.py"
    script.write_text(FLASH_SCRIPT)
    link, states = tmp_path / "board", [tmp_path / "sim", tmp_path / "stuck-sim"]
    cmd = f"{sys.executable} {script} {{model}} {link} {states[0]}"
    try:
        proc = _fit(digits, "cortex-m4", tmp_path / "s", "--candidates", "int8,int8-per-tensor", "--optimize",
                    "latency", "--device", str(link), "--flash-cmd", cmd)
        assert proc.returncode == 0, proc.stderr
        r = json.loads((tmp_path / "s" / "report.json").read_text())
        for c in r["candidates"]:
            m = c["measured"]
            assert m["device"] == f"serial {link}" and m["latency_ms"] > 0, m
            assert c["latency_kind"].startswith(f"measured on the board at {link}: median of 20 inferences")
        assert r["winner"] in ("int8", "int8-per-tensor")
        # a flashing step that leaves the old model on the board: the hash check refuses its timing
        stuck = _fit(digits, "cortex-m4", tmp_path / "stuck", "--candidates", "int8,int8-per-tensor", "--optimize",
                     "latency", "--device", str(link), "--flash-cmd", cmd.replace(str(states[0]), str(states[1])),
                     "--json", env={"STUCK_MODEL": "1"})
        out = json.loads(stuck.stdout)
        errors = [c["measured"].get("error", "") for c in out["candidates"]]
        assert sum("the device runs a different model" in e for e in errors) == 1, errors
    finally:
        import signal

        for state in states:  # the emulated devices this test started
            pid = state.with_name(state.name + ".pid")
            if pid.exists():
                try:
                    os.kill(int(pid.read_text()), signal.SIGTERM)
                except (OSError, ValueError):
                    pass
