"""Parse TFLite `benchmark_model` output, in both its older (plain) and newer (``INFO:``-prefixed)
wordings: timing summary, count/first/min/max/avg/std statistics, memory footprint, per-op profile
tables, and delegate coverage (silent CPU fallback)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_PREFIX = re.compile(r"^(?:INFO|WARNING|ERROR|VERBOSE):\s?")
_TIMINGS = re.compile(r"Inference timings in us: Init: ([\d.]+), First inference: ([\d.]+), "
                      r"Warmup \(avg\): ([\d.e+]+), Inference \(avg\): ([\d.e+]+)")
_STATS = re.compile(r"count=(\d+)(.*)")
_KV = re.compile(r"(\w+)=([-\d.e+]+)")
_MEM_OLD = re.compile(r"Peak memory footprint \(MB\): init=([\d.]+) overall=([\d.]+)")
_MEM_NEW = re.compile(r"Memory footprint delta from the start of the tool \(MB\): init=([\d.]+) overall=([\d.]+)")
_REPLACING = re.compile(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \(([^)]+)\)")
_GPU_UNSUPPORTED = re.compile(r"^([A-Z0-9_]+): (.*)$")


@dataclass
class BenchmarkModelResult:
    init_us: float | None = None
    first_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None
    warmup_stats: dict[str, float] = field(default_factory=dict)
    inference_stats: dict[str, float] = field(default_factory=dict)
    memory_mb: dict[str, float] = field(default_factory=dict)
    memory_kind: str = ""
    delegated_nodes: int | None = None
    total_nodes: int | None = None
    delegate: str = ""
    unsupported_by_delegate: list[str] = field(default_factory=list)
    ops: list[dict[str, Any]] = field(default_factory=list)
    format: str = ""

    @property
    def cpu_fallback(self) -> bool:
        if self.unsupported_by_delegate:
            return True
        return self.delegated_nodes is not None and self.total_nodes is not None and \
            self.delegated_nodes < self.total_nodes


def parse(text: str) -> BenchmarkModelResult:
    r = BenchmarkModelResult()
    lines = text.splitlines()
    newer = any(ln.startswith(("INFO: STARTING!", "INFO: Inference timings")) for ln in lines)
    r.format = "newer (INFO: prefixed)" if newer else "older (plain)"
    has_regular = any("Regular Benchmark Runs" in ln for ln in lines)
    regular = not has_regular
    stats_seen = 0
    in_unsupported = False
    section = ""
    for raw in lines:
        line = _PREFIX.sub("", raw.rstrip())
        if m := _TIMINGS.search(line):
            r.init_us, r.first_us, r.warmup_avg_us, r.inference_avg_us = (float(g) for g in m.groups())
            continue
        if line.startswith("count=") and (m := _STATS.match(line)):
            values = {k: float(v) for k, v in _KV.findall(line)}
            if stats_seen == 0:
                r.warmup_stats = values
            else:
                r.inference_stats = values
            stats_seen += 1
            continue
        if m := _MEM_OLD.search(line):
            r.memory_mb, r.memory_kind = {"init": float(m.group(1)), "overall": float(m.group(2))}, "peak"
            continue
        if m := _MEM_NEW.search(line):
            r.memory_mb, r.memory_kind = {"init": float(m.group(1)), "overall": float(m.group(2))}, "delta"
            continue
        if m := _REPLACING.search(line):
            r.delegated_nodes, r.total_nodes, r.delegate = int(m.group(1)), int(m.group(2)), m.group(3)
            continue
        if "not supported by GPU delegate" in line or "operations are not supported by" in line:
            in_unsupported = True
            continue
        if in_unsupported:
            m = _GPU_UNSUPPORTED.match(line.strip())
            if m:
                r.unsupported_by_delegate.append(m.group(1))
                continue
            in_unsupported = False
        if "Regular Benchmark Runs" in line:
            regular = True
            continue
        if line.startswith("=====") and "Summary by node type" in line and regular:
            section = "summary"
            continue
        if line.startswith("====="):
            section = ""
            continue
        if section == "summary":
            cols = line.split()
            if len(cols) >= 7 and not cols[0].startswith("["):
                try:
                    r.ops.append({"op": cols[0], "count": int(cols[1]), "avg_ms": float(cols[2]),
                                  "avg_pct": float(cols[3].rstrip("%")), "times_called": int(cols[-1])})
                except ValueError:
                    pass
    return r
