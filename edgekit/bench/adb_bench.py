"""`bench --adb`: push the model and TFLite's benchmark_model to the phone, run them with the
profile's threads and delegate, parse the output, collect device facts, and clean up."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.bench.benchmark_model import BenchmarkModelResult, parse
from edgekit.errors import DataError, EdgekitError, TransportError
from edgekit.profiles import TargetProfile, load_profile
from edgekit.transports.adb import BENCH_TIMEOUT, Adb

REMOTE_DIR = "/data/local/tmp"
DELEGATE_FLAGS = {"xnnpack": ["--use_xnnpack=true"], "gpu": ["--use_gpu=true"], "nnapi": ["--use_nnapi=true"],
                  "none": ["--use_xnnpack=false"]}


@dataclass
class AdbBenchResult:
    model: str
    target: str
    device: dict[str, str]
    command: str
    parsed: dict[str, Any]
    budget_ms: float | None
    within_budget: bool | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILE_RUNS = 10  # inferences of the separate op-profiling run


def bench_adb(model: str | os.PathLike[str], target: str | TargetProfile, benchmark_binary: str,
              serial: str | None = None, runs: int = 50, warmup: int = 5, big_cores: bool = False,
              op_profiling: bool = True, adb: Adb | None = None) -> AdbBenchResult:
    profile = target if isinstance(target, TargetProfile) else load_profile(target)
    if profile.runtime != "litert":
        raise DataError(f"--adb benchmarks LiteRT models; target {profile.name} runs {profile.runtime}")
    p, binary = Path(model), Path(benchmark_binary)
    if p.suffix.lower() != ".tflite" or not p.is_file():
        raise DataError(f"bench --adb takes a .tflite file, not {p}")
    if not binary.is_file():
        raise DataError(f"benchmark_model binary {binary} does not exist",
                        "download TFLite's prebuilt android_aarch64 benchmark_model and pass its path")
    adb = adb or Adb(serial)
    adb.select()
    facts = {
        "serial": adb.serial or "",
        "model": adb.shell("getprop ro.product.model")[0].strip(),
        "soc": (adb.shell("getprop ro.soc.model")[0].strip() or adb.shell("getprop ro.board.platform")[0].strip()),
        "android": adb.shell("getprop ro.build.version.release")[0].strip(),
    }
    tag = hashlib.sha256(p.read_bytes()).hexdigest()[:10]
    remote_model = f"{REMOTE_DIR}/edgekit-{tag}.tflite"
    remote_bin = f"{REMOTE_DIR}/edgekit-benchmark_model"
    notes: list[str] = []
    try:
        adb.push(str(p), remote_model)
        adb.push(str(binary), remote_bin)
        adb.shell(f"chmod 755 {remote_bin}")
        flags = [f"--graph={remote_model}", f"--num_threads={profile.threads}", f"--num_runs={runs}",
                 f"--warmup_runs={warmup}", *DELEGATE_FLAGS.get(profile.delegate, [])]
        pin = ""
        if big_cores:
            mask = big_core_mask(adb)
            if mask:
                pin = f"taskset {mask} "
            else:
                notes.append("--big-cores: the device reports no distinct big cores (cpufreq); not pinned")
        # the timed run without op profiling (its per-op timers would be inside the timed inferences)
        command = pin + " ".join([remote_bin, *flags])
        parsed = _run(adb, command)
        if op_profiling:  # then a short separate run for the per-operator table only
            prof_flags = [f"--graph={remote_model}", f"--num_threads={profile.threads}",
                          f"--num_runs={min(runs, PROFILE_RUNS)}", "--warmup_runs=1",
                          *DELEGATE_FLAGS.get(profile.delegate, []), "--enable_op_profiling=true"]
            profiled = _run(adb, pin + " ".join([remote_bin, *prof_flags]))
            parsed.ops = profiled.ops
            notes.append(f"per-operator times from a separate profiling run of {min(runs, PROFILE_RUNS)} inferences; "
                         "the latency figures come from the run without profiling")
    finally:
        try:
            adb.shell(f"rm -f {remote_model} {remote_bin}", timeout=30)
        except EdgekitError:
            notes.append(f"could not remove {remote_model} and {remote_bin} (device gone)")
    if parsed.cpu_fallback:
        notes.append("SILENT CPU FALLBACK: " + (
            f"only {parsed.delegated_nodes} of {parsed.total_nodes} nodes ran on {parsed.delegate}"
            if parsed.delegated_nodes is not None else "") +
            (f"; unsupported by the delegate: {', '.join(parsed.unsupported_by_delegate)}"
             if parsed.unsupported_by_delegate else ""))
    budget = profile.latency_ms
    assert parsed.inference_avg_us is not None  # _run refuses an output without it
    avg_ms = parsed.inference_avg_us / 1000
    return AdbBenchResult(model=str(p), target=profile.name, device=facts, command=command,
                          parsed=asdict(parsed) | {"cpu_fallback": parsed.cpu_fallback},
                          budget_ms=budget, within_budget=None if budget is None else avg_ms <= budget, notes=notes)


def _run(adb: Adb, command: str) -> BenchmarkModelResult:
    out, rc = adb.shell(command, timeout=BENCH_TIMEOUT.value)
    if rc in (126, 127):
        raise TransportError(f"benchmark_model is missing or not executable on {adb.serial} (exit {rc})",
                             "pass an android_aarch64 build of TFLite's benchmark_model with --benchmark-binary")
    if rc != 0:
        tail = " / ".join(ln.strip() for ln in out.strip().splitlines()[-2:])
        raise TransportError(f"benchmark_model failed on {adb.serial} (exit {rc}): {tail[:300]}")
    parsed: BenchmarkModelResult = parse(out)
    if parsed.inference_avg_us is None:
        raise TransportError("benchmark_model printed no 'Inference timings' line",
                             "check the binary's version and the model")
    return parsed


def big_core_mask(adb: Adb) -> str:
    """Hex CPU mask of the cores with the highest cpuinfo_max_freq, or '' if they are not distinct."""
    out, _ = adb.shell("for c in /sys/devices/system/cpu/cpu[0-9]*; do "
                       "echo ${c##*cpu} $(cat $c/cpufreq/cpuinfo_max_freq 2>/dev/null || echo 0); done")
    freqs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            freqs[int(parts[0])] = int(parts[1])
    top = max(freqs.values(), default=0)
    big = [c for c, f in freqs.items() if f == top]
    if top == 0 or len(big) == len(freqs):
        return ""
    return format(sum(1 << c for c in big), "x")


def render_text(r: AdbBenchResult) -> str:
    p = r.parsed
    st = p["inference_stats"]
    lines = [f"bench {Path(r.model).name} on {r.device['model']} ({r.device['soc']}, Android {r.device['android']}, "
             f"{r.device['serial']}); target {r.target}",
             f"benchmark_model ({p['format']} output): init {p['init_us']:.0f} us, first {p['first_us']:.0f} us, "
             f"warmup avg {p['warmup_avg_us']:.1f} us, inference avg {p['inference_avg_us']:.1f} us",
             "inference: " + ", ".join(f"{k} {v:g}" for k, v in st.items())]
    if p["memory_mb"]:
        lines.append(f"memory ({p['memory_kind']}, MB): init {p['memory_mb']['init']}, overall "
                     f"{p['memory_mb']['overall']}")
    for op in p["ops"]:
        lines.append(f"  {op['op']:<24} x{op['count']:<3} {op['avg_ms']:.3f} ms  {op['avg_pct']:.1f}%")
    if r.budget_ms is not None:
        lines.append(f"latency budget {r.budget_ms} ms: {'within' if r.within_budget else 'OVER'}")
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)
