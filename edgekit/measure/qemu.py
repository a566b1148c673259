"""Measure a model on QEMU's board for the profile's core: arena, time per operator, firmware sizes.

The firmware (:mod:`edgekit.measure.build`) reserves a generous arena and, at boot, finds the smallest
one with which ``AllocateTensors`` succeeds, in 16-byte steps (``edgekit-info``'s ``arena_min``): with
the optimized kernels' own scratch buffers, on the 32-bit core. TFLM's ``arena_used_bytes()`` is lower
than that (allocation needs temporary room), so it is shown, never used as the figure.

Times: with ``-icount shift=0`` every guest instruction advances virtual time by 1 ns, so one virtual
microsecond is 1,000 instructions. ``infer N 1`` runs the model N times (N chosen for about
``EDGEKIT_MEASURE_VIRTUAL_MS`` of virtual time) and ``edgekit-ops`` gives each operator's total over
those runs; their sum is compared with the whole inference (the rest is the interpreter's own work
between operators and copying the input in).

Sizes: the ELF's ``.text + .data`` (flash) and ``.bss``, and from the link map what of the flash is the
model, TFLM (interpreter, kernels, CMSIS-NN), the C library and the application (protocol runner, board,
start-up, vector table).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from edgekit.analysis.elf_size import ElfSizes, read_elf
from edgekit.analysis.linkmap import flash_sections, parse_map
from edgekit.errors import MeasurementError, TargetRefused, TransportTimeout
from edgekit.measure.build import Build, build, read_cached
from edgekit.options import Option
from edgekit.profiles import TargetProfile

MEASURE_TIMEOUT = Option("measure_timeout", 300.0, "seconds QEMU may take to boot the firmware or run one `infer` "
                                                   "while measuring")
VIRTUAL_MS = Option("measure_virtual_ms", 200.0, "virtual milliseconds (millions of instructions) of timed "
                                                 "inferences per measurement: more runs for a small model")
MAX_RUNS = Option("measure_max_runs", 50, "most inferences timed per measurement")
TOOLCHAIN_LIBS = ("libc.a", "libc_nano.a", "libm.a", "libg.a", "libg_nano.a", "libgcc.a", "libstdc++.a",
                  "libstdc++_nano.a", "libsupc++.a", "libsupc++_nano.a", "libnosys.a")


@dataclass
class OpTime:
    op: str
    calls: float  # per inference
    us: float  # virtual microseconds per inference (thousands of instructions)
    share: float  # of the whole inference


@dataclass
class QemuMeasurement:
    key: str
    target: str
    core: str
    machine: str
    machine_note: str
    kernels: str
    tflm_library: str
    arena_min: int  # the smallest arena that allocates on this core (16-byte steps)
    arena_used: int  # TFLM's arena_used_bytes(): below arena_min, not a size to reserve
    arena_reserved: int  # what the measurement firmware reserved
    runs: int
    inference_us: float  # virtual microseconds per inference (thousands of instructions)
    ops: list[OpTime]
    ops_us: float  # the per-operator times summed
    firmware: dict[str, int]  # text, data, bss, flash
    flash_parts: dict[str, int]  # model, tflm, c_library, application
    model_bytes: int
    output_check: str
    build_seconds: float = 0.0
    run_seconds: float = 0.0
    cached: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ops_vs_inference(self) -> float:
        """(sum of the operators' times - whole inference) / whole inference."""
        return (self.ops_us - self.inference_us) / self.inference_us if self.inference_us else 0.0

    @property
    def instructions(self) -> int:
        """Instructions per inference (1 ns of virtual time each)."""
        return round(self.inference_us * 1000)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops_vs_inference"] = round(self.ops_vs_inference, 5)
        d["instructions_per_inference"] = self.instructions
        d["time_unit"] = "virtual microseconds under qemu-system-arm -icount shift=0: 1,000 instructions each"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QemuMeasurement:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d["ops"] = [OpTime(**o) for o in d.get("ops", [])]
        return cls(**d)


def flash_breakdown(b: Build, sizes: ElfSizes, model_len: int) -> dict[str, int]:
    """The firmware's flash by owner, from its link map."""
    sections = flash_sections(parse_map(b.map.read_text(errors="replace"), str(b.map)), sizes.sections)
    parts = {"model": 0, "tflm": 0, "c_library": 0, "application": 0}
    for (obj, name), size in sections.items():
        archive = obj.split("(", 1)[0] if "(" in obj else ""
        if name.endswith("_model_data") and size >= model_len:
            parts["model"] += size
        elif archive == b.library.name:
            parts["tflm"] += size
        elif archive in TOOLCHAIN_LIBS or obj.startswith(("crt", "lib_a-")):
            parts["c_library"] += size
        else:
            parts["application"] += size
    # what the link map does not list (alignment padding, merged strings) goes to the application
    parts["application"] += sizes.flash - sum(parts.values())
    return parts


def measure_qemu(model: bytes, profile: TargetProfile, host_reserved: int, use_cache: bool = True) -> QemuMeasurement:
    """Build ``model``'s firmware for ``profile``'s core (cached) and measure it under QEMU."""
    b = build(model, profile, host_reserved, use_cache)
    cached = read_cached(b) if use_cache else None
    if cached is not None:
        m = QemuMeasurement.from_dict(cached)
        m.cached, m.build_seconds, m.run_seconds = True, 0.0, 0.0
        return m
    m = _run(model, profile, b)
    b.measurement.write_text(json.dumps(m.to_dict(), indent=1) + "\n")
    return m


def _boot(transport: Any, timeout: float) -> list[str]:
    from edgekit.bench.protocol import LineReader

    reader = LineReader()
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while not any(ln.endswith("m-ready") for ln in lines):
        left = deadline - time.monotonic()
        if left <= 0:
            raise MeasurementError(f"the firmware did not boot on QEMU within {timeout:g} s (no m-ready); it printed: "
                                   f"{' | '.join(lines)[-300:] or 'nothing'}", "raise EDGEKIT_MEASURE_TIMEOUT")
        try:
            lines += reader.feed(transport.read(4096, min(left, 1.0)))
        except TransportTimeout:
            continue
    return lines


def _run(model: bytes, profile: TargetProfile, b: Build) -> QemuMeasurement:
    from edgekit.bench.protocol import Client, parse_fields, upload_chunk
    from edgekit.bench.runner import _check_output, _load_input, _payload, _read_ops, _Session
    from edgekit.transports.qemu import QemuTransport

    timeout = MEASURE_TIMEOUT.value
    started = time.monotonic()
    _, sizes = read_elf(b.elf)
    notes: list[str] = []
    transport = QemuTransport(b.elf, machine=b.machine, start_timeout=min(timeout, 60.0))
    with transport:
        boot = _boot(transport, timeout)
        errors = [ln for ln in boot if ln.startswith("e-")]
        if errors:
            raise TargetRefused(f"the firmware did not start on QEMU ({b.machine}): {' '.join(errors)[:400]}",
                                   f"the build is in {b.directory}")
        client = Client(transport, timeout=timeout)
        body = client.command("edgekit-info").bracket("m-edgekit-info-")
        info = parse_fields(body or "")
        if info.get("sha256") != hashlib.sha256(model).hexdigest():
            raise MeasurementError(f"the QEMU firmware reports model sha256 {info.get('sha256', '?')[:12]}..., not "
                                   "this model's", f"remove the cache entry {b.directory}")
        arena_min, arena_used = int(info.get("arena_min", 0)), int(info.get("arena_used", 0))
        if not 0 < arena_min <= b.arena_bytes:
            raise MeasurementError(f"the firmware reports no usable arena (arena_min={info.get('arena_min')})")
        sess = _Session(client)
        cmd_buffer = info.get("cmd_buffer", "")
        sess.chunk = upload_chunk(int(cmd_buffer) if cmd_buffer.isdigit() else None)
        inp = _load_input(model, None, "model")
        sess.payload, host_x = _payload(inp, None)
        sess.upload()
        one_us, _ = sess.infer(1, 0, timeout)
        check, _ = _check_output(client, model, host_x)
        runs = max(1, min(int(MAX_RUNS.value), round(VIRTUAL_MS.value * 1000 / max(one_us, 1))))
        total_us, _ = sess.infer(runs, 1, timeout)
        raw_ops = _read_ops(client)
        client.send("edgekit-exit")
    inference = total_us / runs
    ops = [OpTime(o["op"], o["calls"] / runs, o["total_us"] / runs,
                  (o["total_us"] / runs) / inference if inference else 0.0) for o in raw_ops]
    ops.sort(key=lambda o: -o.us)
    ops_us = sum(o.us for o in ops)
    if check.startswith("MISMATCH"):
        notes.append(f"output check: {check}")
    if profile.cpu == "cortex-m0plus":
        notes.append(f"{b.machine_note}")
    return QemuMeasurement(
        key=b.key, target=profile.name, core=profile.cpu, machine=b.machine, machine_note=b.machine_note,
        kernels=b.kernels, tflm_library=str(b.library), arena_min=arena_min, arena_used=arena_used,
        arena_reserved=b.arena_bytes, runs=runs, inference_us=inference, ops=ops, ops_us=ops_us,
        firmware=sizes.to_dict(), flash_parts=flash_breakdown(b, sizes, len(model)),  # type: ignore[arg-type]
        model_bytes=len(model), output_check=check, build_seconds=b.seconds,
        run_seconds=time.monotonic() - started, notes=notes)
