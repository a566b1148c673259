"""`bench` over the serial protocol: upload an input, time inferences, check hash and output.

Works against any MLPerf Tiny device. Where the edgekit extensions answer, it also checks the
device's model hash against the local model, compares the device's raw output with the TFLM host
interpreter's for the same input (int8 reference kernels must match exactly), and reads the per-op
table and the arena use.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import options
from edgekit.analysis.graph import read_graph
from edgekit.bench.protocol import UPLOAD_CHUNK, Client, DeviceReset
from edgekit.errors import DataError, EdgekitError, TransportError
from edgekit.profiles import TargetProfile, load_profile
from edgekit.transports.base import Transport

INFER_TIMEOUT = options.Option("infer_timeout", 120.0, "seconds one `infer` command may take on the device")


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
    ops: list[dict[str, Any]] = field(default_factory=list)
    arena_used: int | None = None
    budget_ms: float | None = None
    within_budget: bool | None = None
    wire_bytes_per_input_byte: float = 0.0
    host_overhead_ms_per_command: float = 0.0
    notes: list[str] = field(default_factory=list)
    resyncs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stats(lat: list[float]) -> dict[str, float]:
    a = np.asarray(lat, dtype=np.float64)
    return {"min_us": float(a.min()), "median_us": float(np.median(a)), "p90_us": float(np.percentile(a, 90)),
            "max_us": float(a.max()), "mean_us": float(a.mean()), "std_us": float(a.std())}


def _input_bytes(model: bytes, input_path: str | None) -> tuple[bytes, np.ndarray]:
    g = read_graph(model)
    t = g.input_tensors()[0]
    shape = tuple(max(d, 1) for d in t.shape)
    if input_path:
        p = Path(input_path)
        try:
            x = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read input {p}: {exc}") from None
        if isinstance(x, np.lib.npyio.NpzFile):
            x = x["x"]
        x = np.asarray(x)
        if x.size != int(np.prod(shape)):
            raise DataError(f"{p}: input has {x.size} values, the model takes {int(np.prod(shape))} ({shape})")
        x = x.reshape(shape).astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise DataError(f"{p}: input has NaN or Inf")
    else:
        x = np.random.default_rng(int(options.SEED.value)).random(shape, dtype=np.float32)
    from edgekit.evaluate import _quantize

    dtype = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "float32": np.float32}.get(t.dtype, np.float32)
    q = _quantize(x, dtype, t.scale[0] if t.scale else 0.0, t.zero_point[0] if t.zero_point else 0)
    return q.tobytes(), x


class _Session:
    def __init__(self, client: Client, payload: bytes) -> None:
        self.client, self.payload = client, payload

    def sync(self) -> None:
        self.client.drain()
        self.client.command("name")

    def upload(self) -> None:
        ans = self.client.command(f"db load {len(self.payload)}")
        if ans.errors:
            raise TransportError(f"the device refused the input: {ans.errors[0]}",
                                 "is the device running this model? (input size differs)")
        last = None
        for i in range(0, len(self.payload), UPLOAD_CHUNK):
            last = self.client.command("db " + self.payload[i : i + UPLOAD_CHUNK].hex())
            if last.errors:
                raise TransportError(f"input upload failed: {last.errors[0]}")
        if last is None or last.value("m-load-done") is None:
            raise TransportError("the device did not confirm the input upload (no m-load-done)")

    def infer(self, count: int, warmup: int) -> tuple[float, float]:
        """(device microseconds per inference, host seconds the whole command took)."""
        ans = self.client.command(f"infer {count} {warmup}", timeout=INFER_TIMEOUT.value)
        laps = [int(v) for v in ans.values("m-lap-us-")]
        if ans.errors or len(laps) < 2:
            raise TransportError(f"infer failed on the device: {ans.errors[0] if ans.errors else 'no m-lap-us lines'}")
        return (laps[-1] - laps[-2]) / count, ans.seconds


def bench(model: str | os.PathLike[str], target: str | TargetProfile, transport: Transport, runs: int = 50,
          warmup: int = 5, input_path: str | None = None, time_kind: str = "device") -> BenchResult:
    if runs < 1 or warmup < 0:
        raise DataError(f"--runs {runs} / --warmup {warmup} are invalid (runs >= 1, warmup >= 0)")
    profile = target if isinstance(target, TargetProfile) else load_profile(target)
    p = Path(model)
    if p.suffix.lower() != ".tflite" or not p.is_file():
        raise DataError(f"bench takes the deployed .tflite file, not {p}",
                        "pass the model.tflite that the firmware was generated from")
    data = p.read_bytes()
    payload, x = _input_bytes(data, input_path)
    checks: dict[str, str] = {}
    notes: list[str] = []
    with transport:
        client = Client(transport)
        sess = _Session(client, payload)
        sess.sync()
        info = client.command("edgekit-info")
        extensions = not info.unknown and info.value("m-edgekit-info-[") is not None
        device_fields: dict[str, str] = {}
        if extensions:
            body = (info.value("m-edgekit-info-[") or "").rstrip("]")
            device_fields = dict(kv.split("=", 1) for kv in body.split(",") if "=" in kv)
            local = hashlib.sha256(data).hexdigest()
            if device_fields.get("sha256") != local:
                raise BenchMismatch(f"the device runs a different model (sha256 {device_fields.get('sha256', '?')[:12]}"
                                    f"..., local {local[:12]}...)", "flash the firmware generated from this model")
            checks["model_hash"] = "match"
            if device_fields.get("board") == "host-sim":
                time_kind = "host (device emulator on the TFLM host interpreter)"
        else:
            for name in ("model_hash", "output", "per_op", "arena"):
                checks[name] = "not possible: the device knows no edgekit extensions (plain MLPerf Tiny)"
        resyncs = 0
        lat: list[float] = []
        overhead: list[float] = []  # host wall time of a timed `infer 1 0` minus the device's own time
        while True:
            try:
                if not lat:
                    sess.upload()
                    if warmup:
                        sess.infer(1, warmup)
                while len(lat) < runs:
                    device_us, host_s = sess.infer(1, 0)
                    lat.append(device_us)
                    overhead.append(host_s * 1000 - device_us / 1000)
                break
            except DeviceReset:
                resyncs += 1
                if resyncs > 1:
                    raise TransportError("the device reset twice during the benchmark",
                                         "check its power supply and watchdog") from None
                notes.append("the device reset once mid-run: resynced, re-uploaded the input and went on")
                sess.sync()
                sess.upload()
        ops: list[dict[str, Any]] = []
        arena_used = None
        if extensions:
            out = client.command("edgekit-output").value("m-edgekit-output-[")
            device_raw = bytes.fromhex((out or "").rstrip("]"))
            from edgekit.evaluate import tflm_session

            host_raw = tflm_session([data], x[None, ...] if x.ndim == 0 else x.reshape(1, *x.shape[1:]))[0].raw
            if device_raw == host_raw.tobytes():
                checks["output"] = "exact match with the TFLM host interpreter"
            else:
                diff = int(np.count_nonzero(np.frombuffer(device_raw, dtype=np.uint8)
                                            != np.frombuffer(host_raw.tobytes(), dtype=np.uint8)))
                if len(device_raw) != host_raw.nbytes:
                    checks["output"] = f"MISMATCH: {len(device_raw)} output bytes vs {host_raw.nbytes} on the host"
                else:
                    checks["output"] = f"MISMATCH: {diff} of {len(device_raw)} output bytes differ from the host TFLM"
            ans = client.command("edgekit-ops")
            if ans.unknown:
                checks["per_op"] = "not available on this device"
            for v in ans.values("m-edgekit-op-["):
                op, calls, total = v.rstrip("]").split(",")
                ops.append({"op": op, "calls": int(calls), "total_us": int(total)})
            if ops:
                checks["per_op"] = f"{len(ops)} operators"
            arena_used = int(device_fields["arena_used"]) if device_fields.get("arena_used", "").isdigit() else None
            checks["arena"] = f"{arena_used} bytes used" if arena_used is not None else "not reported"
        if client.noise_lines:
            notes.append(f"ignored {client.noise_lines} garbage or partial lines from the device")
    st = stats(lat)
    budget = profile.latency_ms
    within = None if budget is None or not time_kind.startswith("device") else st["median_us"] / 1000 <= budget
    if budget is not None and within is None:
        notes.append(f"latency budget {budget} ms not judged: these are {time_kind.split(' (')[0]} times")
    line_bytes = len(payload) * 2 + (len(payload) + UPLOAD_CHUNK - 1) // UPLOAD_CHUNK * 4
    return BenchResult(
        model=str(p), target=profile.name, device=transport.name, time_kind=time_kind, runs=runs, warmup=warmup,
        latencies_us=lat, stats=st, extensions=extensions, checks=checks, ops=ops, arena_used=arena_used,
        budget_ms=budget, within_budget=within,
        wire_bytes_per_input_byte=round(line_bytes / max(len(payload), 1), 3),
        host_overhead_ms_per_command=round(float(np.median(overhead)), 4),
        notes=notes, resyncs=resyncs,
    )


def mismatch(result: BenchResult) -> bool:
    return result.checks.get("output", "").startswith("MISMATCH")


def render_text(r: BenchResult) -> str:
    from edgekit.report.text import table

    s = r.stats
    lines = [f"bench {Path(r.model).name} on {r.device} ({r.target}); times: {r.time_kind}",
             f"{r.runs} runs after {r.warmup} warm-up: min {s['min_us']:.1f} / median {s['median_us']:.1f} / "
             f"p90 {s['p90_us']:.1f} / max {s['max_us']:.1f} us, std {s['std_us']:.1f} us"]
    if r.budget_ms is not None:
        verdict = "not judged" if r.within_budget is None else ("within" if r.within_budget else "OVER")
        lines.append(f"latency budget {r.budget_ms} ms: {verdict}")
    for k, v in r.checks.items():
        lines.append(f"check {k}: {v}")
    if r.ops:
        lines.append(table(["op", "calls", "total us"], [(o["op"], o["calls"], o["total_us"]) for o in r.ops], "lrr"))
    lines.append(f"wire: {r.wire_bytes_per_input_byte} bytes per input byte (hex); host overhead "
                 f"{r.host_overhead_ms_per_command:.3f} ms per command")
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def write_report(r: BenchResult, out: Path, force: bool) -> None:
    from edgekit.codegen import render

    files = {"bench.json": json.dumps(r.to_dict(), indent=2) + "\n", "latency.svg": histogram_svg(r)}
    render.write_tree(out, files, force)


def histogram_svg(r: BenchResult, bins: int = 20) -> str:
    from edgekit.report.svg import render_template

    a = np.asarray(r.latencies_us)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(a, bins=bins, range=(lo, hi))
    width, height, left, bottom, top = 640, 360, 60, 310, 30
    bw = (width - left - 20) / bins
    peak = max(int(counts.max()), 1)
    bars = [{"x": round(left + i * bw, 1), "w": round(bw - 1, 1), "h": round((bottom - top) * c / peak, 1),
             "y": round(bottom - (bottom - top) * c / peak, 1), "count": int(c),
             "lo": f"{edges[i]:.1f}", "hi": f"{edges[i + 1]:.1f}"} for i, c in enumerate(counts)]
    return render_template("latency.svg.j2", {
        "width": width, "height": height, "left": left, "bottom": bottom, "top": top, "bars": bars,
        "title": f"{Path(r.model).name} on {r.device}", "xlabel": f"latency (us, {r.time_kind.split(' (')[0]})",
        "lo": f"{lo:.1f}", "hi": f"{hi:.1f}", "peak": peak})

