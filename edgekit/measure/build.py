"""The cmake scaffold built for the profile's own core on the QEMU board, cached by what determines it.

The cache key is the model's sha256, the resolved profile, the TFLM library (path, size, modification
time), the compiler, edgekit's version and templates, the machine and the arena the build reserves: a
re-run with the same inputs reuses the firmware (and its measurement), anything else builds afresh. Each
entry keeps the generated project, ``firmware.elf``, ``firmware.map`` and ``measurement.json`` (the
object files are removed); the oldest entries beyond ``EDGEKIT_MEASURE_CACHE_ENTRIES`` are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit import _paths
from edgekit.analysis.runtime_size import TFLM_ARCH
from edgekit.errors import MeasurementError
from edgekit.options import PATH_SETTINGS, Option
from edgekit.profiles import TargetProfile

BUILD_TIMEOUT = Option("measure_build_timeout", 1200.0, "seconds `analyze --measure qemu` may take to configure and "
                                                       "build the firmware")
CACHE_ENTRIES = Option("measure_cache_entries", 32, "firmware builds kept in EDGEKIT_MEASURE_CACHE_DIR (the oldest "
                                                    "beyond this are removed)")
CACHE_DIR = next(p for p in PATH_SETTINGS if p.env == "EDGEKIT_MEASURE_CACHE_DIR")
QEMU_RAM_BYTES = 4 << 20  # the mps2 boards' data SRAM at 0x20000000 (boards/qemu/linker.ld)
QEMU_RAM_KEPT = 64 << 10  # stack, .data and .bss of the firmware itself

# QEMU machines with the qemu board's memory map (code SRAM at 0, data SRAM at 0x20000000), CMSDK UART0 at
# 0x40004000 with its RX interrupt on IRQ 0, and SysTick: core -> (machine, what the figures are)
MACHINES = {
    "cortex-m0plus": ("mps2-an385", "the Cortex-M0+ build (ARMv6-M code) on QEMU's Cortex-M3: the M0+ binary's "
                                    "instructions, counted one by one"),
    "cortex-m3": ("mps2-an385", "QEMU's Cortex-M3"),
    "cortex-m4": ("mps2-an386", "QEMU's Cortex-M4F"),
    "cortex-m7": ("mps2-an500", "QEMU's Cortex-M7"),
}
LIB = "gen/cortex_m_generic_{arch}_default{flavour}_gcc/lib/libtensorflow-microlite.a"


@dataclass(frozen=True)
class Build:
    key: str
    directory: Path  # the cache entry
    elf: Path
    map: Path
    machine: str
    machine_note: str
    arch: str
    kernels: str
    library: Path
    arena_bytes: int  # the arena this firmware reserves (the search for the smallest starts there)
    seconds: float  # configure + build time (0 when it came from the cache)
    cached: bool

    @property
    def measurement(self) -> Path:
        return self.directory / "measurement.json"


def tflm_root() -> Path:
    root = os.environ.get("TFLM_ROOT", "")
    if not root:
        raise MeasurementError("--measure qemu builds the firmware against TFLM: TFLM_ROOT is not set",
                               "set TFLM_ROOT to a tflite-micro checkout whose Cortex-M library is built (the make "
                               "command is at the top of a scaffolded CMakeLists.txt)")
    path = Path(root).expanduser()
    if not (path / "tensorflow" / "lite" / "micro" / "micro_interpreter.h").is_file():
        raise MeasurementError(f"TFLM_ROOT={root} is not a tflite-micro checkout (no "
                               "tensorflow/lite/micro/micro_interpreter.h)", "point it at your tflite-micro clone")
    return path.resolve()


def machine_for(profile: TargetProfile) -> tuple[str, str]:
    found = MACHINES.get(profile.cpu)
    if found is None:
        known = ", ".join(MACHINES)
        raise MeasurementError(f"--measure qemu has no QEMU board for {profile.name}'s core "
                               f"{profile.cpu or '(none)'!r}",
                               f"it measures on {known}; for other cores use `edgekit bench --port` on the board")
    return found


def library(root: Path, profile: TargetProfile) -> tuple[str, Path]:
    arch = TFLM_ARCH[profile.cpu]
    flavour = "_cmsis_nn" if profile.kernels == "cmsis_nn" else ""
    lib = root / LIB.format(arch=arch, flavour=flavour)
    if not lib.is_file():
        kernel_dir = " OPTIMIZED_KERNEL_DIR=cmsis_nn" if profile.kernels == "cmsis_nn" else ""
        raise MeasurementError(f"no TFLM library for {arch} ({profile.kernels}) at {lib}",
                               f"build it once: cd {root} && make -f tensorflow/lite/micro/tools/make/Makefile "
                               f"TARGET=cortex_m_generic TARGET_ARCH={arch}{kernel_dir} "
                               "TARGET_TOOLCHAIN_ROOT=$(dirname $(command -v arm-none-eabi-gcc))/ microlite -j2")
    return arch, lib


def measurement_arena(host_reserved: int) -> int:
    """The arena the measurement firmware reserves: room above the host's figure (the optimized kernels
    may need more scratch than the reference ones), within QEMU's RAM; the device finds the smallest."""
    arena = max(2 * host_reserved, host_reserved + (32 << 10))
    arena = min(arena, QEMU_RAM_BYTES - QEMU_RAM_KEPT)
    if arena < host_reserved:
        raise MeasurementError(f"the model's arena ({host_reserved:,} B on the host) does not fit the QEMU board's "
                               f"{QEMU_RAM_BYTES >> 20} MB of RAM", "measure it on the board: edgekit bench --port")
    return (arena + 15) // 16 * 16


def _run(cmd: list[str], cwd: Path | None, what: str, deadline: float) -> str:
    left = deadline - time.monotonic()
    if left <= 0:
        raise MeasurementError(f"{what}: out of time (EDGEKIT_MEASURE_BUILD_TIMEOUT)")
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=left, check=False)
    except FileNotFoundError:
        raise MeasurementError(f"{what}: {cmd[0]} is not installed",
                               "Debian: apt-get install cmake gcc-arm-none-eabi") from None
    except subprocess.TimeoutExpired:
        raise MeasurementError(f"{what} took more than {BUILD_TIMEOUT.value:g} s",
                               "raise EDGEKIT_MEASURE_BUILD_TIMEOUT (the first build compiles the runner)") from None
    if proc.returncode != 0:
        said = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "error" in ln.lower()][:3]
        raise MeasurementError(f"{what} failed: {' | '.join(said) or (proc.stderr or proc.stdout).strip()[-300:]}")
    return proc.stdout


def _templates_digest() -> str:
    h = hashlib.sha256()
    root = _paths.templates_dir()
    for kind in ("cmake", "common", "codegen"):
        for f in sorted((root / kind).rglob("*")):
            if f.is_file():
                h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _version() -> str:
    from edgekit.codegen.generate import _version as version

    return version()


def cache_root() -> Path:
    return Path(CACHE_DIR.value).expanduser()


def key_for(model: bytes, profile: TargetProfile, lib: Path, machine: str, arena: int) -> str:
    st = lib.stat()
    gcc = shutil.which("arm-none-eabi-gcc") or ""
    values = {k: v for k, v in profile.values.items() if not k.startswith(("ops.", "budgets.", "reserve."))}
    ident = {"model": hashlib.sha256(model).hexdigest(), "profile": values, "machine": machine, "arena": arena,
             "library": [str(lib), st.st_size, st.st_mtime_ns], "gcc": gcc,
             "gcc_mtime": os.stat(gcc).st_mtime_ns if gcc else 0, "edgekit": _version(),
             "templates": _templates_digest()}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:32]


def preflight(profile: TargetProfile) -> tuple[str, str, Path, str, Path]:
    """Everything a measurement needs, checked before any work: (machine, its note, TFLM_ROOT, TARGET_ARCH,
    library); MeasurementError naming what is missing."""
    machine, note = machine_for(profile)
    root = tflm_root()
    arch, lib = library(root, profile)
    for tool in ("cmake", "arm-none-eabi-gcc", "qemu-system-arm"):
        if shutil.which(tool) is None:
            raise MeasurementError(f"--measure qemu needs {tool}, which is not installed",
                                   "Debian: apt-get install cmake gcc-arm-none-eabi qemu-system-arm")
    return machine, note, root, arch, lib


def build(model: bytes, profile: TargetProfile, host_reserved: int, use_cache: bool = True) -> Build:
    """The scaffold of ``model`` for ``profile``'s core, built for QEMU's board (cached)."""
    machine, note, root, arch, lib = preflight(profile)
    arena = measurement_arena(host_reserved)
    key = key_for(model, profile, lib, machine, arena)
    cache = cache_root()
    entry = cache / key
    common = dict(key=key, directory=entry, elf=entry / "firmware.elf", map=entry / "firmware.map", machine=machine,
                  machine_note=note, arch=arch, kernels=profile.kernels, library=lib, arena_bytes=arena)
    if use_cache and (entry / "firmware.elf").is_file() and (entry / "firmware.map").is_file():
        with contextlib.suppress(OSError):
            os.utime(entry)
        return Build(**common, seconds=0.0, cached=True)  # type: ignore[arg-type]
    cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = started + BUILD_TIMEOUT.value
    work = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=cache))
    try:
        from edgekit.codegen.scaffold import scaffold

        (work / "model.tflite").write_bytes(model)
        scaffold(work / "model.tflite", profile, "cmake", work / "project", name="model", allow_over_budget=True,
                 plan=False)
        var = "TFLM_LIB_" + "".join(c if c.isalnum() or c == "_" else "_" for c in arch)
        flags = f"-DEDGEKIT_TENSOR_ARENA_SIZE={arena} -DEDGEKIT_QEMU_MACHINE={machine}"
        _run(["cmake", "-S", str(work / "project"), "-B", str(work / "build"), f"-DTFLM_ROOT={root}",
              "-DBOARD=qemu", "-DQEMU_CORE=target", f"-D{var}={lib}", f"-DCMAKE_CXX_FLAGS={flags}"],
             None, f"configuring the {arch} firmware", deadline)
        _run(["cmake", "--build", str(work / "build"), "-j2"], None, f"building the {arch} firmware", deadline)
        for name in ("firmware.elf", "firmware.map"):
            shutil.move(str(work / "build" / name), str(work / name))
        shutil.rmtree(work / "build")
        if use_cache and entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        if entry.exists():  # not cached: keep the fresh build beside it
            entry = work
        else:
            work.rename(entry)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _trim(cache, keep=entry)
    common.update(directory=entry, elf=entry / "firmware.elf", map=entry / "firmware.map")
    return Build(**common, seconds=time.monotonic() - started, cached=False)  # type: ignore[arg-type]


def _trim(cache: Path, keep: Path) -> None:
    """Remove the oldest entries beyond CACHE_ENTRIES (only edgekit's own: a 32-hex-digit name with a firmware)."""
    entries = [p for p in cache.iterdir() if p.is_dir() and len(p.name) == 32 and (p / "firmware.elf").is_file()]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[int(CACHE_ENTRIES.value):]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def read_cached(b: Build) -> dict[str, Any] | None:
    try:
        data = json.loads(b.measurement.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("key") == b.key else None
