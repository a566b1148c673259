"""bench --adb with Debian's real adb client and server, against the emulated device on 127.0.0.1
(device side of the adb transport: CNXN/AUTH/OPEN/OKAY/WRTE/CLSE, shell: and sync: push). A stand-in
benchmark_model prints output in the real format (a phone cannot exist here)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow
DATA = Path(__file__).resolve().parent.parent / "data" / "benchmark_model"


@pytest.fixture()
def adb_env() -> Iterator[dict[str, str]]:
    if shutil.which("adb") is None:
        pytest.skip("adb is not installed (Debian: adb)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"ANDROID_ADB_SERVER_PORT": str(port)}
    subprocess.run(["adb", "start-server"], env={**_os_env(), **env}, capture_output=True, timeout=30, check=True)
    try:
        yield env
    finally:
        subprocess.run(["adb", "kill-server"], env={**_os_env(), **env}, capture_output=True, timeout=30, check=False)


def _os_env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _connect(env: dict[str, str], serial: str) -> None:
    subprocess.run(["adb", "connect", serial], env={**_os_env(), **env}, capture_output=True, timeout=30, check=False)
    time.sleep(0.3)


def _stand_in(tmp_path: Path, output: str) -> Path:
    script = tmp_path / "benchmark_model"
    script.write_text("#!/bin/sh\n# stand-in for TFLite's benchmark_model: prints its real output format\n"
                      'echo "$@" >> "$(dirname "$0")/.invocations"\n'
                      f"cat <<'EOF'\n{(DATA / output).read_text()}EOF\n")
    return script


def _device(tmp_path: Path, **kw):  # type: ignore[no-untyped-def]
    from tests.doubles.adb_device import AdbDeviceEmulator

    sandbox = tmp_path / f"phone-{len(list(tmp_path.glob('phone-*')))}"
    sandbox.mkdir()
    return AdbDeviceEmulator(sandbox, **kw).start()


def _bench(models: dict[str, Path], env: dict[str, str], binary: Path, *extra: str, target: str = "android-arm64-cpu"):  # type: ignore[no-untyped-def]
    return run_cli("bench", str(models["float"]), "-t", target, "--adb", "--benchmark-binary", str(binary), *extra,
                   env=env, timeout=180)


def test_bench_over_adb(models: dict[str, Path], adb_env: dict[str, str], tmp_path: Path) -> None:
    dev = _device(tmp_path)
    _connect(adb_env, dev.serial)
    proc = _bench(models, adb_env, _stand_in(tmp_path, "older_xnnpack.txt"), "--json", "--big-cores")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["device"] == {"serial": dev.serial, "model": "EdgekitSim", "soc": "sim-soc", "android": "14"}
    assert "--use_xnnpack=true" in r["command"] and "--num_threads=4" in r["command"]
    assert r["command"].startswith("taskset ") or any("not pinned" in n for n in r["notes"])
    assert r["parsed"]["inference_avg_us"] == 105.2 and r["within_budget"] is True
    left = sorted(p.name for p in dev.sandbox.iterdir() if not p.name.startswith("."))
    assert left == []  # what was pushed is removed
    # the timed run has no op profiling inside it; the per-op table comes from a separate short run
    timed, profiled = (dev.sandbox / ".invocations").read_text().splitlines()
    assert "--enable_op_profiling" not in timed and "--num_runs=50" in timed
    assert "--enable_op_profiling=true" in profiled and "--num_runs=10" in profiled
    assert r["parsed"]["ops"] and any("separate profiling run" in n for n in r["notes"])
    dev.stop()


def test_gpu_silent_cpu_fallback_is_reported(models: dict[str, Path], adb_env: dict[str, str],
                                             tmp_path: Path) -> None:
    dev = _device(tmp_path)
    _connect(adb_env, dev.serial)
    proc = _bench(models, adb_env, _stand_in(tmp_path, "newer_gpu_fallback.txt"), target="android-gpu")
    assert proc.returncode == 0, proc.stderr
    assert "SILENT CPU FALLBACK" in proc.stdout and "TOPK_V2" in proc.stdout and "5 of 8" in proc.stdout
    dev.stop()


def test_no_device(models: dict[str, Path], adb_env: dict[str, str], tmp_path: Path) -> None:
    proc = _bench(models, adb_env, _stand_in(tmp_path, "older_xnnpack.txt"))
    assert proc.returncode == 2 and "no Android device attached" in proc.stderr


def test_unauthorized(models: dict[str, Path], adb_env: dict[str, str], tmp_path: Path) -> None:
    dev = _device(tmp_path, mode="unauthorized")
    _connect(adb_env, dev.serial)
    proc = _bench(models, adb_env, _stand_in(tmp_path, "older_xnnpack.txt"))
    assert proc.returncode == 2 and "unauthorized" in proc.stderr and "USB debugging" in proc.stderr
    dev.stop()


def test_offline(models: dict[str, Path], adb_env: dict[str, str], tmp_path: Path) -> None:
    dev = _device(tmp_path, mode="offline")
    _connect(adb_env, dev.serial)
    proc = _bench(models, adb_env, _stand_in(tmp_path, "older_xnnpack.txt"))
    assert proc.returncode == 2 and "offline" in proc.stderr
    dev.stop()


def test_several_devices_need_serial(models: dict[str, Path], adb_env: dict[str, str], tmp_path: Path) -> None:
    a, b = _device(tmp_path), _device(tmp_path)
    _connect(adb_env, a.serial)
    _connect(adb_env, b.serial)
    binary = _stand_in(tmp_path, "older_xnnpack.txt")
    proc = _bench(models, adb_env, binary)
    assert proc.returncode == 2 and "2 devices attached" in proc.stderr and "--serial" in proc.stderr
    proc = _bench(models, adb_env, binary, "--serial", b.serial)
    assert proc.returncode == 0, proc.stderr
    a.stop()
    b.stop()


def test_benchmark_model_not_executable(models: dict[str, Path], adb_env: dict[str, str], tmp_path: Path) -> None:
    dev = _device(tmp_path)
    _connect(adb_env, dev.serial)
    junk = tmp_path / "benchmark_model"
    junk.write_bytes(b"\x7fELF\x02\x01\x01garbage-not-a-program")
    proc = _bench(models, adb_env, junk)
    assert proc.returncode == 2 and "missing or not executable" in proc.stderr
    missing = _bench(models, adb_env, tmp_path / "nope")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    dev.stop()


def test_device_disconnecting_mid_run(models: dict[str, Path], adb_env: dict[str, str], tmp_path: Path) -> None:
    dev = _device(tmp_path, disconnect_after=5)  # getprop x3, chmod, then the benchmark run itself
    _connect(adb_env, dev.serial)
    proc = _bench(models, adb_env, _stand_in(tmp_path, "older_xnnpack.txt"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "disconnected" in proc.stderr or "closed" in proc.stderr
    dev.stop()
