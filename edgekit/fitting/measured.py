"""Fit's finalists measured on a device, so that the ranking rests on measurements, not on the estimate.

After every candidate is built and checked, the **finalists** - the best ``EDGEKIT_FIT_FINALISTS`` by the
estimate among the candidates that meet every budget but latency within ``--max-drop`` - are measured:

- ``qemu`` (Cortex-M, needs ``TFLM_ROOT``): each one's firmware built for the profile's core and run under
  ``qemu-system-arm -icount shift=0`` (:mod:`edgekit.measure`, cached by model hash and target): the
  instruction count per inference (deterministic) ranks them, and the arena measured on the core replaces
  the host's in the RAM budget. Without ``--device`` this happens by itself when the ranking needs a
  latency (``--optimize latency`` or a latency budget) and TFLM_ROOT has the core's library
  (``EDGEKIT_FIT_QEMU_RANK=0`` turns it off); otherwise the estimate ranks, and the report says so.
- ``adb`` (LiteRT targets): TFLite's ``benchmark_model`` on the phone (:mod:`edgekit.bench.adb_bench`).
- a serial port or URL (a board running edgekit firmware): ``--flash-cmd`` puts each finalist on the board
  (its ``{model}`` is the finalist's ``.tflite``), then ``edgekit bench`` times it; the firmware's model hash
  must be the finalist's, or the measurement is refused.

Each measured candidate keeps its estimate beside the measurement (``Candidate.measured``) for the report;
when the goal is latency the winner is chosen among the measured finalists.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.analysis.verdict import Budget
from edgekit.errors import DataError, EdgekitError, MeasurementError, TargetRefused
from edgekit.fitting.select import rank_key
from edgekit.fitting.types import Candidate
from edgekit.options import Option
from edgekit.profiles import TargetProfile

FINALISTS = Option("fit_finalists", 3, "candidates fit measures on a device (--device, or QEMU when it ranks Cortex-M "
                                       "candidates): the best by the estimate among those that meet every other "
                                       "budget within --max-drop")
QEMU_RANK = Option("fit_qemu_rank", 1, "1: without --device, fit ranks Cortex-M candidates by their QEMU instruction "
                                       "count when TFLM_ROOT has the core's library and the ranking needs a latency "
                                       "(--optimize latency or a latency budget); 0: by the estimate")
DEVICE_RUNS = Option("fit_device_runs", 20, "timed inferences per finalist on a board or phone (fit --device)")
FLASH_TIMEOUT = Option("fit_flash_timeout", 600.0, "seconds fit --flash-cmd may take to put one finalist on the board")


@dataclass(frozen=True)
class Device:
    """Where fit measures its finalists: ``qemu``, ``adb`` or a serial port / pyserial URL."""

    spec: str
    benchmark_binary: str | None = None  # adb: TFLite's benchmark_model for the phone
    adb_serial: str | None = None  # adb: which phone
    flash_cmd: str | None = None  # serial: puts a finalist on the board; {model} is its .tflite
    baud: int | None = None

    @property
    def kind(self) -> str:
        return self.spec if self.spec in ("qemu", "adb") else "serial"


def check_device(device: Device, profile: TargetProfile) -> None:
    """Everything a device measurement needs, checked before any candidate is built."""
    if device.kind == "qemu":
        if not profile.is_tflm:
            raise DataError(f"--device qemu runs TFLM firmware; target {profile.name} runs {profile.runtime}",
                            "for phones: --device adb")
        from edgekit.measure.build import preflight

        preflight(profile)
    elif device.kind == "adb":
        if profile.runtime != "litert":
            raise DataError(f"--device adb benchmarks LiteRT models; target {profile.name} runs {profile.runtime}")
        if not device.benchmark_binary:
            raise DataError("--device adb needs --benchmark-binary PATH (TFLite's benchmark_model for the phone)")
        if not Path(device.benchmark_binary).is_file():
            raise DataError(f"benchmark_model binary {device.benchmark_binary} does not exist",
                            "download TFLite's prebuilt android_aarch64 benchmark_model and pass its path")
        if shutil.which("adb") is None:
            raise DataError("--device adb needs the adb client, which is not installed", "Debian: apt-get install adb")
    else:
        if not profile.is_tflm:
            raise DataError(f"--device {device.spec}: a board over serial runs TFLM firmware; target {profile.name} "
                            f"runs {profile.runtime}", "for phones: --device adb")
        if not device.flash_cmd or "{model}" not in device.flash_cmd:
            raise DataError(f"--device {device.spec} measures each finalist on the board: --flash-cmd must put it "
                            "there, with {model} where its .tflite goes",
                            "e.g. --flash-cmd 'make -C fw MODEL={model} flash' (a build that embeds the model and "
                            "flashes the board)")
        try:
            shlex.split(device.flash_cmd)
        except ValueError as exc:
            raise DataError(f"--flash-cmd {device.flash_cmd!r} cannot be split into words ({exc})") from None


def _needs_latency(profile: TargetProfile, goal: str) -> bool:
    return goal == "latency" or profile.latency_ms is not None


def auto_device(profile: TargetProfile, goal: str, notes: list[str]) -> Device | None:
    """QEMU, when nothing was asked for and it can rank Cortex-M candidates; else None (with a note)."""
    if not profile.is_tflm or not _needs_latency(profile, goal):
        return None
    if not QEMU_RANK.value:
        notes.append("Cortex-M latency is the estimate (EDGEKIT_FIT_QEMU_RANK=0)")
        return None
    from edgekit.measure.build import preflight

    try:
        preflight(profile)
    except MeasurementError as exc:
        notes.append(f"Cortex-M candidates ranked by the latency ESTIMATE (MACs x cycles/MAC), not by QEMU's "
                     f"instruction count: {exc.message}")
        return None
    return Device("qemu")


def finalists(cands: list[Candidate], goal: str) -> list[Candidate]:
    """The best FINALISTS by the estimate among the candidates that meet every budget but latency within
    --max-drop (a measurement can change the latency verdict, nothing else)."""
    ok = [c for c in cands if not c.error and c.within_drop and all(b["fits"] for k, b in c.budgets.items()
                                                                     if k != "latency")]
    return sorted(ok, key=rank_key(goal))[: max(1, int(FINALISTS.value))]


def rank(cands: list[Candidate], artifacts: dict[str, Path], profile: TargetProfile, goal: str,
         device: Device | None, notes: list[str], use_cache: bool = True,
         say: Callable[[str], None] | None = None) -> list[Candidate]:
    """Measure the finalists on ``device`` (or QEMU when it can rank, see :func:`auto_device`); returns the
    candidates to choose the winner from: with a latency goal the measured ones that are eligible, when there
    are any (on QEMU only the one with the fewest instructions: its figures have no noise)."""
    chosen = device or auto_device(profile, goal, notes)
    if chosen is None:
        return cands
    measured: list[Candidate] = []
    for c in finalists(cands, goal):
        path = artifacts.get(c.name)
        if path is None:
            continue
        if say is not None:
            say(f"measuring finalist {c.name} on {chosen.spec} ...")
        try:
            m = _measure(c, path, profile, chosen, use_cache)
        except TargetRefused as exc:
            # the target's own TFLM (its optimized kernels) will not run it, whatever the host interpreter did
            c.measured = {"device": chosen.spec, "error": exc.message}
            c.budgets["runtime"] = Budget("runtime", 0, 1, "reasons TFLM cannot run it",
                                          f"on {chosen.spec}: {exc.message}").to_dict()
            c.fits = False
            notes.append(f"{c.name} does NOT RUN on {chosen.spec}: {exc.message}")
            continue
        except EdgekitError as exc:
            c.measured = {"device": chosen.spec, "error": exc.message}
            notes.append(f"{c.name} not measured on {chosen.spec}: {exc.message}")
            continue
        _apply(c, m, profile)
        measured.append(c)
    if measured:
        where = measured[0].measured["device"]
        notes.append(f"finalists measured on {where}: {', '.join(c.name for c in measured)}"
                     + ("; the winner is the fastest of them" if goal == "latency" else ""))
    eligible = [c for c in measured if c.eligible]
    if goal != "latency" or not eligible:
        return cands
    if chosen.kind == "qemu":  # instruction counts repeat exactly: no tie band, the fewest wins
        return [min(eligible, key=lambda c: (c.latency_ms or 0.0, c.flash_bytes))]
    return eligible  # a board's or phone's timings are noisy: select()'s tie band applies


def _measure(c: Candidate, path: Path, profile: TargetProfile, device: Device, use_cache: bool) -> dict[str, Any]:
    if device.kind == "qemu":
        return _qemu(c, path, profile, use_cache)
    if device.kind == "adb":
        return _adb(path, profile, device)
    return _serial(path, profile, device)


def _qemu(c: Candidate, path: Path, profile: TargetProfile, use_cache: bool) -> dict[str, Any]:
    from edgekit.analysis.arena import reserved_arena_bytes
    from edgekit.measure.qemu import measure_qemu

    host = reserved_arena_bytes(c.ram_bytes) if c.ram_kind == "tflm-arena" else c.ram_bytes
    m = measure_qemu(path.read_bytes(), profile, host, use_cache)
    clock = profile.clock_hz or 0
    ms = m.instructions / clock * 1000 if clock else m.inference_us / 1000
    how = (f"{m.instructions:,} instructions per inference (-icount shift=0), shown as ms at {clock / 1e6:g} MHz "
           "and one instruction per cycle: deterministic, for ranking, not board time" if clock else
           f"{m.instructions:,} instructions per inference (-icount shift=0: 1 ns each)")
    return {"device": f"QEMU {m.machine} ({m.core}, TFLM {m.kernels})", "latency_ms": ms,
            "latency_kind": f"measured on QEMU {m.machine}: {how}", "instructions": m.instructions,
            "arena_bytes": m.arena_min, "firmware_flash": m.firmware["flash"], "output_check": m.output_check,
            "cached": m.cached}


def _adb(path: Path, profile: TargetProfile, device: Device) -> dict[str, Any]:
    from edgekit.bench.adb_bench import bench_adb

    assert device.benchmark_binary is not None
    r = bench_adb(path, profile, device.benchmark_binary, serial=device.adb_serial, runs=int(DEVICE_RUNS.value),
                  warmup=2, op_profiling=False)
    avg = r.parsed["inference_avg_us"] / 1000
    phone = r.device.get("model") or r.device.get("serial") or "phone"
    return {"device": f"adb {phone} ({r.device.get('serial', '')})", "latency_ms": avg,
            "latency_kind": f"measured on {phone} over adb: benchmark_model average of {int(DEVICE_RUNS.value)} "
                            f"inferences ({profile.threads} threads, {profile.delegate})",
            "cpu_fallback": bool(r.parsed.get("cpu_fallback"))}


def _serial(path: Path, profile: TargetProfile, device: Device) -> dict[str, Any]:
    from edgekit.bench.runner import bench
    from edgekit.transports.serial_port import SerialTransport

    assert device.flash_cmd is not None
    argv = [w.replace("{model}", str(path)) for w in shlex.split(device.flash_cmd)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=FLASH_TIMEOUT.value, check=False,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise MeasurementError(f"--flash-cmd: {argv[0]} is not installed or not on PATH") from None
    except subprocess.TimeoutExpired:
        raise MeasurementError(f"--flash-cmd took more than {FLASH_TIMEOUT.value:g} s",
                               "raise EDGEKIT_FIT_FLASH_TIMEOUT") from None
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise MeasurementError(f"--flash-cmd exited with {proc.returncode}: {said[0][:200]}")
    r = bench(path, profile, SerialTransport(device.spec, device.baud or profile.baud), runs=int(DEVICE_RUNS.value),
              warmup=2)
    if r.checks.get("model_hash") != "match":
        raise MeasurementError(f"the device on {device.spec} cannot say which model it runs (no edgekit-info): "
                               "its time could belong to another model", "flash edgekit firmware (scaffold)")
    if r.checks.get("output", "").startswith("MISMATCH"):
        raise MeasurementError(f"the device's output differs from the TFLM host interpreter: {r.checks['output']}")
    median = r.stats["median_us"] / 1000
    return {"device": f"serial {device.spec}", "latency_ms": median,
            "latency_kind": f"measured on the board at {device.spec}: median of {r.runs} inferences ({r.time_kind})",
            "arena_bytes": r.arena_min}


def _apply(c: Candidate, m: dict[str, Any], profile: TargetProfile) -> None:
    """The measurement replaces the estimate in the candidate's latency (and, on QEMU, the arena in its RAM
    budget); the estimate stays beside it in ``measured``."""
    c.measured = {**m, "estimate_ms": c.latency_ms, "estimate_kind": c.latency_kind}
    c.latency_ms, c.latency_kind = m["latency_ms"], m["latency_kind"]
    if profile.latency_ms is not None:
        c.budgets["latency"] = Budget("latency", profile.latency_ms, round(c.latency_ms, 4), "ms",
                                      c.latency_kind).to_dict()
    if m.get("arena_bytes") and m["device"].startswith("QEMU"):
        c.measured["arena_host"] = c.ram_bytes
        c.budgets["ram"] = Budget("ram", profile.ram_bytes, m["arena_bytes"], "bytes",
                                  f"tflm-arena measured on {m['device']}: the smallest that allocates").to_dict()
    c.fits = all(b["fits"] for b in c.budgets.values())
