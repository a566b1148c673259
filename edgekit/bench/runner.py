"""`bench` over the serial protocol: upload an input, time inferences, check hash and output.

Works against any MLPerf Tiny device. Where the edgekit extensions answer, it also checks the
device's model hash against the local model, compares the device's raw output with the TFLM host
interpreter's for the same input (integer outputs exactly, float outputs within a tolerance), and reads
the per-op table and the arena use. A device that names an MLPerf Tiny model (``m-model-[ic01]`` ...)
gets its input in that model's convention (edgekit/bench/mlperf.py).

Two timing methods:
- ``per-inference``: ``infer 1 0`` per run; edgekit firmware takes both stamps around the loop and
  prints them afterwards, so each sample is one inference and nothing else.
- ``window``: MLPerf Tiny's runner's own method: ``infer N W`` with N chosen so that one window lasts at
  least ``window_seconds`` (10 s, as the runner requires), 5 windows, time per inference and throughput
  from each. The reference firmware prints its start stamp inside the timed window (a UART line), which
  this amortizes; it is the default against plain MLPerf Tiny devices.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import options
from edgekit.analysis.graph import Tensor, read_graph
from edgekit.bench import mlperf
from edgekit.bench.protocol import TIMER_BITS, Answer, Client, DeviceReset, lap_us, parse_fields, upload_chunk
from edgekit.errors import DataError, EdgekitError, ModelError, TransportError
from edgekit.profiles import TargetProfile, load_profile
from edgekit.transports.base import Transport

INFER_TIMEOUT = options.Option("infer_timeout", 120.0, "seconds one `infer` command may take on the device")
MAX_RUNS = options.Option("bench_max_runs", 100_000, "most timed runs (or windows) one bench takes")
FLOAT_RTOL = options.Option("bench_float_rtol", 1e-4,
                            "relative tolerance of a device's float32 output against the TFLM host interpreter")
FLOAT_ATOL = options.Option("bench_float_atol", 1e-5,
                            "absolute tolerance of a device's float32 output against the TFLM host interpreter")
METHODS = ("auto", "per-inference", "window")
MAX_WINDOW_INFERENCES = 2**31 - 1  # the reference parses the count with atoi
ARENA_NOTE = ("TFLM's arena_used_bytes(): what the interpreter had allocated, not a safe arena size; "
              "do not shrink the arena to it")

Progress = Callable[[int, int, str], None]


class BenchMismatch(EdgekitError):
    """The device runs a different model, or computes a different output."""


@dataclass
class BenchResult:
    model: str
    target: str
    device: str
    time_kind: str
    runs: int
    warmup: int
    latencies_us: list[float]
    stats: dict[str, float]
    extensions: bool
    checks: dict[str, str]
    method: str = "per-inference"
    ops: list[dict[str, Any]] = field(default_factory=list)
    arena_used: int | None = None
    arena_used_note: str = ARENA_NOTE
    arena_min: int | None = None  # the smallest arena that allocates on the device (edgekit firmware reports it)
    budget_ms: float | None = None
    within_budget: bool | None = None
    wire_bytes_per_input_byte: float = 0.0
    upload_bytes_per_line: int = 0
    host_overhead_ms_per_command: float | None = None
    mlperf_model: str | None = None
    input_convention: str = "the input tensor's raw bytes"
    window_inferences: int | None = None
    throughput_inf_per_s: float | None = None
    output_error: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)
    resyncs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stats(lat: list[float]) -> dict[str, float]:
    a = np.asarray(lat, dtype=np.float64)
    return {"min_us": float(a.min()), "median_us": float(np.median(a)), "p90_us": float(np.percentile(a, 90)),
            "max_us": float(a.max()), "mean_us": float(a.mean()), "std_us": float(a.std())}


def load_project(project: Path) -> tuple[str, Path]:
    """(target name, model path) of a scaffolded project directory, from its edgekit-project.json."""
    import json

    manifest = project / "edgekit-project.json"
    if not manifest.is_file():
        raise DataError(f"{project} is a directory without edgekit-project.json",
                        "pass the deployed .tflite, or a project directory that `edgekit scaffold` wrote")
    try:
        content = json.loads(manifest.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{manifest} is not valid JSON ({str(exc).splitlines()[0][:80]})",
                        "re-run `edgekit scaffold`, or pass the .tflite and --target") from None
    target = content.get("target") if isinstance(content, dict) else None
    if not isinstance(target, str) or not target.strip():
        raise DataError(f"{manifest} names no target (a string under \"target\")",
                        "re-run `edgekit scaffold`, or pass --target")
    model = project / "edgekit" / "model.tflite"
    if not model.is_file():
        raise DataError(f"{project} has no edgekit/model.tflite", "re-run `edgekit scaffold`, or pass the .tflite")
    return target, model


# ----------------------------------------------------------------- input


@dataclass
class _Input:
    tensor: Tensor
    x: np.ndarray  # float values, the model's input shape


def _load_input(model: bytes, input_path: str | None, where: str) -> _Input:
    g = read_graph(model, where=where)
    if not g.input_tensors():
        raise ModelError(f"{where} has no input tensor")
    t = g.input_tensors()[0]
    shape = tuple(max(d, 1) for d in t.shape)
    if not input_path:
        x = np.random.default_rng(int(options.SEED.value)).random(shape, dtype=np.float32)
        return _Input(t, x)
    p = Path(input_path)
    if not p.is_file():
        raise DataError(f"input file {p} does not exist" if not p.exists() else f"input {p} is not a regular file",
                        "pass a .npy array or an .npz with key 'x'")
    try:
        loaded = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        said = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "pickle" in said:  # numpy's words for "not an array file" suggest loading it unsafely: don't
            said = "it is not a NumPy array file (or holds pickled Python objects, which bench does not load)"
        raise DataError(f"cannot read input {p}: {said}",
                        "pass a .npy array or an .npz with key 'x' (saved without pickle)") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if "x" not in loaded.files:
                raise DataError(f"{p} has no array 'x' (it has: {', '.join(loaded.files) or 'nothing'})",
                                "save the input as np.savez(path, x=sample)")
            try:
                arr = np.asarray(loaded["x"])
            except (OSError, ValueError, EOFError):
                raise DataError(f"cannot read 'x' from {p}: it holds pickled Python objects or is damaged",
                                "save a numeric array: np.savez(path, x=sample)") from None
    else:
        arr = np.asarray(loaded)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{p}: input has dtype {arr.dtype}, expected numbers")
    want = int(np.prod(shape))
    if arr.size != want:
        if arr.ndim >= 1 and arr.shape[0] > 1 and arr[0].size == want:
            arr = arr[0]  # a batch: bench its first sample
        else:
            raise DataError(f"{p}: input has {arr.size} values, the model takes {want} ({shape})")
    x = arr.reshape(shape).astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{p}: input has NaN or Inf")
    return _Input(t, x)


def _quant(t: Tensor) -> tuple[float, int]:
    return (t.scale[0] if t.scale else 0.0), (t.zero_point[0] if t.zero_point else 0)


def _payload(inp: _Input, conv: mlperf.Convention | None) -> tuple[bytes, np.ndarray]:
    """(bytes to upload, the float input the host interpreter must see to compute what the device does)."""
    from edgekit.evaluate import _dequantize, _quantize

    t = inp.tensor
    scale, zp = _quant(t)
    if conv is not None:
        q = mlperf.host_input(conv, inp.x, t.dtype, scale, zp)
        return mlperf.encode(conv, q, inp.x), _dequantize(q, scale, zp).reshape(inp.x.shape)
    dtype = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "float32": np.float32}.get(t.dtype, np.float32)
    q = np.asarray(_quantize(inp.x, dtype, scale, zp))
    host = inp.x if q.dtype.kind == "f" else _dequantize(q, scale, zp).reshape(inp.x.shape)
    return q.tobytes(), host


# ----------------------------------------------------------------- the device session


_LAP = re.compile(r"m-lap-us-(\d{1,20})")


class _Session:
    def __init__(self, client: Client, timer_bits: int = TIMER_BITS) -> None:
        self.client = client
        self.payload = b""
        self.chunk = upload_chunk(None)
        self.timer_bits = timer_bits

    def sync(self) -> None:
        """Discard boot output, then agree on where answers start (a `name` answered with m-name-)."""
        self.client.drain()
        for _ in range(3):
            try:
                ans = self.client.command("name")
            except DeviceReset:
                continue  # the device was still booting: its banner ended in our answer
            if ans.value("m-name-") is not None:
                return
        raise TransportError(f"{self.client.transport.name} does not answer `name%` with m-name-dut-[...]",
                             "is it running edgekit or MLPerf Tiny firmware?")

    def upload(self) -> None:
        n = len(self.payload)
        ans = self.client.command(f"db load {n}")
        if ans.errors or ans.value("m-[Expecting") is None:
            said = (ans.errors + ans.noise)[:1]
            raise TransportError(f"the device refused an input of {n} bytes: {said[0] if said else 'no m-[Expecting'}",
                                 "is the device running this model? (the input size differs)")
        last: Answer | None = None
        for i in range(0, n, self.chunk):
            last = self.client.command("db " + self.payload[i : i + self.chunk].hex())
            if last.errors:
                raise TransportError(f"input upload failed at byte {i} of {n}: {last.errors[0]}",
                                     f"{self.chunk} bytes per line; does the device buffer "
                                     f"{len('db ') + 2 * self.chunk} characters per command?")
        if last is None or last.value("m-load-done") is None:
            raise TransportError("the device did not confirm the input upload (no m-load-done)")

    def infer(self, count: int, warmup: int, timeout: float) -> tuple[int, float]:
        """(device microseconds for ``count`` inferences, host seconds the whole command took)."""
        what = f"infer {count} {warmup}"
        ans = self.client.command(what, timeout=timeout)
        complaints = [n for n in ans.noise if "Input db has" in n or "exceeds maximum" in n]
        if ans.errors or complaints:
            raise TransportError(f"`{what}` failed on the device: {(ans.errors + complaints)[0]}")
        laps = [int(m.group(1)) for v in ans.lines if (m := _LAP.fullmatch(v))]
        if len(laps) < 2:
            raise TransportError(f"`{what}` failed on the device: fewer than two m-lap-us lines in its answer",
                                 "is the device running MLPerf Tiny performance-mode firmware?")
        return lap_us(laps[-2], laps[-1], f"`{what}`", self.timer_bits), ans.seconds


# ----------------------------------------------------------------- bench


def _check_args(runs: int, warmup: int, method: str, windows: int, window_seconds: float) -> None:
    limit = int(MAX_RUNS.value)
    if runs < 1 or warmup < 0:
        raise DataError(f"--runs {runs} / --warmup {warmup} are invalid (runs >= 1, warmup >= 0)")
    if runs > limit:
        raise DataError(f"--runs {runs} is more than bench takes ({limit:,})",
                        f"use fewer runs, or --method window for long measurements (EDGEKIT_BENCH_MAX_RUNS={limit})")
    if method not in METHODS:
        raise DataError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if not 1 <= windows <= limit:
        raise DataError(f"--windows {windows} is invalid (1 to {limit:,})")
    if not (0 < window_seconds < 86400):
        raise DataError(f"--window-seconds {window_seconds} is invalid (more than 0, less than a day)")


def bench(model: str | os.PathLike[str], target: str | TargetProfile, transport: Transport, runs: int = 50,
          warmup: int = 5, input_path: str | None = None, time_kind: str = "device", method: str = "auto",
          windows: int = 5, window_seconds: float = 10.0, progress: Progress | None = None) -> BenchResult:
    _check_args(runs, warmup, method, windows, window_seconds)
    profile = target if isinstance(target, TargetProfile) else load_profile(target)
    p = Path(model)
    if not p.exists():
        raise ModelError(f"model file {p} does not exist", "pass the .tflite the firmware was generated from")
    if p.suffix.lower() != ".tflite" or not p.is_file():
        raise DataError(f"bench takes the deployed .tflite file, not {p}",
                        "pass the model.tflite that the firmware was generated from")
    data = p.read_bytes()
    inp = _load_input(data, input_path, str(p))
    checks: dict[str, str] = {}
    notes: list[str] = []
    report = progress or (lambda i, n, text: None)
    with transport:
        client = Client(transport)
        sess = _Session(client)
        sess.sync()
        model_id = client.command("profile").bracket("m-model-")
        info = client.command("edgekit-info")
        body = info.bracket("m-edgekit-info-")
        extensions = not info.unknown and body is not None
        fields = parse_fields(body or "")
        if extensions:
            local = hashlib.sha256(data).hexdigest()
            if fields.get("sha256") != local:
                raise BenchMismatch(f"the device runs a different model (sha256 {fields.get('sha256', '?')[:12]}"
                                    f"..., local {local[:12]}...)", "flash the firmware generated from this model")
            checks["model_hash"] = "match"
            if fields.get("board") == "host-sim":
                time_kind = "host (device emulator on the TFLM host interpreter)"
            bits = fields.get("timer_bits", "")
            if bits.isdigit() and 8 <= int(bits) <= 64:
                sess.timer_bits = int(bits)
        else:
            for name in ("model_hash", "output", "per_op", "arena"):
                checks[name] = "not possible: the device knows no edgekit extensions (plain MLPerf Tiny)"
        mlperf_id = fields.get("mlperf_model") if extensions and "mlperf_model" in fields else model_id
        conv = mlperf.convention(mlperf_id)
        cmd_buffer = fields.get("cmd_buffer", "")
        sess.chunk = upload_chunk(int(cmd_buffer) if extensions and cmd_buffer.isdigit() and len(cmd_buffer) < 9
                                  else None)
        sess.payload, host_x = _payload(inp, conv)
        chosen = method if method != "auto" else ("per-inference" if extensions else "window")
        if chosen == "per-inference" and not extensions:
            notes.append("per-inference timing of a plain MLPerf Tiny device: its start stamp is printed inside "
                         "the timed window, so each sample includes one UART line (--method window amortizes it)")
        infer_timeout = max(INFER_TIMEOUT.value, 3 * window_seconds + 10) if chosen == "window" else INFER_TIMEOUT.value
        resyncs = 0
        lat: list[float] = []
        overhead: list[float] = []  # host wall time of a timed `infer 1 0` minus the device's own time
        throughput: list[float] = []
        n_window: int | None = None
        total = runs if chosen == "per-inference" else windows
        need_upload = True
        while True:
            try:
                if need_upload:
                    if resyncs:
                        sess.sync()
                    sess.upload()
                    need_upload = False
                if chosen == "per-inference":
                    if not lat and warmup:
                        sess.infer(1, warmup, infer_timeout)
                    while len(lat) < runs:
                        device_us, host_s = sess.infer(1, 0, infer_timeout)
                        lat.append(float(device_us))
                        overhead.append(host_s * 1000 - device_us / 1000)
                        report(len(lat), total, f"{device_us} us")
                else:
                    if n_window is None:
                        n_window = _calibrate(sess, window_seconds, infer_timeout, report)
                    while len(lat) < windows:
                        elapsed_us, _ = sess.infer(n_window, warmup, infer_timeout)
                        lat.append(elapsed_us / n_window)
                        throughput.append(n_window / (elapsed_us / 1e6))
                        report(len(lat), total, f"window of {n_window} inferences: {elapsed_us / 1e6:.3f} s")
                break
            except DeviceReset:
                resyncs += 1
                if resyncs > 1:
                    raise TransportError("the device reset twice during the benchmark",
                                         "check its power supply and watchdog") from None
                notes.append("the device reset once mid-run: resynced, re-uploaded the input and went on")
                need_upload = True
        ops: list[dict[str, Any]] = []
        arena_used = arena_min = None
        output_error = None
        if extensions:
            checks["output"], output_error = _check_output(client, data, host_x)
            ops = _read_ops(client)
            checks["per_op"] = f"{len(ops)} operators" if ops else "not available on this device"
            arena_used = _number(fields.get("arena_used"))
            arena_min = _number(fields.get("arena_min")) or None
            arena_total = fields.get("arena_bytes", "?")
            parts = []
            if arena_min is not None:
                parts.append(f"arena_min {arena_min} bytes (the smallest arena that allocates on the device: size "
                             f"the arena against this)")
            if arena_used is not None:
                parts.append(f"arena_used {arena_used} of {arena_total} bytes ({ARENA_NOTE})")
            checks["arena"] = "; ".join(parts) or "not reported"
        if client.noise_lines:
            notes.append(f"ignored {client.noise_lines} garbage or partial lines from the device")
        spans = [v * n_window / 1e6 for v in lat] if chosen == "window" and n_window else []
        short = [s for s in spans if s < window_seconds]
        if short:
            notes.append(f"{len(short)} of {len(lat)} windows were shorter than the {window_seconds:g} s asked for "
                         f"(shortest {min(short):.3f} s): the device sped up after calibration")
    st = stats(lat)
    budget = profile.latency_ms
    within = None if budget is None or not time_kind.startswith("device") else st["median_us"] / 1000 <= budget
    if budget is not None and within is None:
        notes.append(f"latency budget {budget} ms not judged: these are {time_kind.split(' (')[0]} times")
    host_overhead = _host_overhead(overhead, time_kind, notes) if chosen == "per-inference" else None
    lines = -(-len(sess.payload) // sess.chunk)
    wire = (len(sess.payload) * 2 + lines * len("db %")) / max(len(sess.payload), 1)
    return BenchResult(
        model=str(p), target=profile.name, device=transport.name, time_kind=time_kind, method=chosen,
        runs=len(lat), warmup=warmup, latencies_us=lat, stats=st, extensions=extensions, checks=checks, ops=ops,
        arena_used=arena_used, arena_min=arena_min, budget_ms=budget, within_budget=within,
        wire_bytes_per_input_byte=round(wire, 3), upload_bytes_per_line=sess.chunk,
        host_overhead_ms_per_command=host_overhead, mlperf_model=conv.model_id if conv else None,
        input_convention=f"MLPerf Tiny {conv.model_id}: {conv.description}" if conv else "the input tensor's raw bytes",
        window_inferences=n_window, throughput_inf_per_s=float(np.median(throughput)) if throughput else None,
        output_error=output_error, notes=notes, resyncs=resyncs,
    )


def _number(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() and len(text) < 16 else None


def _calibrate(sess: _Session, window_seconds: float, timeout: float, report: Progress) -> int:
    """The inference count whose `infer N 0` lasts at least ``window_seconds`` on the device."""
    target = window_seconds * 1e6
    n = 1
    for _ in range(64):
        elapsed, _ = sess.infer(n, 0, timeout)
        report(0, 0, f"calibrating: {n} inferences take {elapsed / 1e6:.3f} s")
        if elapsed >= target or n >= MAX_WINDOW_INFERENCES:  # 10% more, so that no window falls short
            return int(min(max(n, math.ceil(n * 1.1 * target / elapsed)), MAX_WINDOW_INFERENCES))
        guess = math.ceil(n * target / elapsed * 1.05)
        n = int(min(max(guess, n * 2), n * 1000, MAX_WINDOW_INFERENCES))
    return n


def _host_overhead(overhead: list[float], time_kind: str, notes: list[str]) -> float | None:
    if not time_kind.startswith(("device", "host")):
        notes.append(f"host overhead per command not computed: {time_kind.split(' (')[0]} does not run at the "
                     "host clock's rate")
        return None
    median = float(np.median(overhead))
    if median < 0:
        notes.append("host overhead per command not computed: the device's clock ran faster than the host's "
                     "(a virtual or mis-set timer?)")
        return None
    return round(median, 4)


def _check_output(client: Client, model: bytes, host_x: np.ndarray) -> tuple[str, dict[str, float] | None]:
    out = client.command("edgekit-output").bracket("m-edgekit-output-")
    try:
        device_raw = bytes.fromhex(out or "")
    except ValueError:
        return f"MISMATCH: the device's edgekit-output is not hex ({(out or '')[:40]!r})", None
    from edgekit.evaluate import tflm_session

    batch = host_x.reshape(1, *host_x.shape[1:]) if host_x.ndim else host_x[None, ...]
    host_raw = tflm_session([model], batch)[0].raw
    h_bytes = np.ascontiguousarray(host_raw).tobytes()
    if device_raw == h_bytes:
        return "exact match with the TFLM host interpreter", ({"max_abs": 0.0, "max_rel": 0.0}
                                                               if host_raw.dtype.kind == "f" else None)
    if len(device_raw) != len(h_bytes):
        return f"MISMATCH: {len(device_raw)} output bytes vs {len(h_bytes)} on the host", None
    if host_raw.dtype == np.float32:
        d = np.frombuffer(device_raw, dtype="<f4").astype(np.float64)
        h = host_raw.astype(np.float64).reshape(-1)
        rtol, atol = FLOAT_RTOL.value, FLOAT_ATOL.value
        if not np.array_equal(np.isfinite(d), np.isfinite(h)):
            return "MISMATCH: the device's float32 output has NaN/Inf where the host's does not (or back)", None
        fin = np.isfinite(h)
        err = np.abs(d[fin] - h[fin])
        max_abs = float(err.max()) if err.size else 0.0
        nz = np.abs(h[fin]) > 0
        max_rel = float((err[nz] / np.abs(h[fin][nz])).max()) if np.any(nz) else 0.0
        summary = (f"max abs error {max_abs:.3g}, max rel error {max_rel:.3g}; "
                   f"tolerance {atol:g} + {rtol:g} x |host|")
        errors = {"max_abs": max_abs, "max_rel": max_rel}
        if np.all(err <= atol + rtol * np.abs(h[fin])):
            return f"float32 within tolerance of the TFLM host interpreter ({summary})", errors
        return f"MISMATCH: float32 output differs from the TFLM host interpreter beyond tolerance ({summary})", errors
    diff = int(np.count_nonzero(np.frombuffer(device_raw, dtype=np.uint8) != np.frombuffer(h_bytes, dtype=np.uint8)))
    return f"MISMATCH: {diff} of {len(device_raw)} output bytes differ from the host TFLM", None


def _read_ops(client: Client) -> list[dict[str, Any]]:
    ans = client.command("edgekit-ops")
    ops: list[dict[str, Any]] = []
    for v in ans.values("m-edgekit-op-["):
        parts = v.rstrip("]").split(",")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() and len(parts[2]) < 20:
            ops.append({"op": parts[0], "calls": int(parts[1]), "total_us": int(parts[2])})
    return ops


def mismatch(result: BenchResult) -> bool:
    return result.checks.get("output", "").startswith("MISMATCH")
