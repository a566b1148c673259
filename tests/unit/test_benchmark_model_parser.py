from __future__ import annotations

from pathlib import Path

from edgekit.bench.benchmark_model import parse

DATA = Path(__file__).resolve().parent.parent / "data" / "benchmark_model"


def test_older_plain_format() -> None:
    r = parse((DATA / "older_xnnpack.txt").read_text())
    assert r.format.startswith("older")
    assert (r.init_us, r.first_us, r.warmup_avg_us, r.inference_avg_us) == (12300, 320, 110.5, 105.2)
    assert r.warmup_stats["count"] == 4215 and r.inference_stats == {
        "count": 9121, "first": 104, "curr": 103, "min": 91, "max": 842, "avg": 105.2, "std": 21}
    assert r.memory_kind == "peak" and r.memory_mb == {"init": 2.51953, "overall": 2.65234}
    assert [o["op"] for o in r.ops][-2:] == ["TfLiteXNNPackDelegate", "SOFTMAX"]
    assert not r.cpu_fallback


def test_newer_prefixed_format_with_gpu_fallback() -> None:
    r = parse((DATA / "newer_gpu_fallback.txt").read_text())
    assert r.format.startswith("newer")
    assert r.inference_avg_us == 236.7 and r.inference_stats["median"] == 232 and r.inference_stats["p95"] == 268
    assert r.memory_kind == "delta" and r.memory_mb["overall"] == 41.2
    assert (r.delegated_nodes, r.total_nodes, r.delegate) == (5, 8, "TfLiteGpuDelegateV2")
    assert r.unsupported_by_delegate == ["TOPK_V2"] and r.cpu_fallback
