"""A deterministic latency estimate per runtime, delegate and arithmetic: what `fit` ranks by.

The same inputs give the same figure on every machine, so a build step gets the same artifact every
run (host timings did not: one demo picked float16 and the next dynamic range). It is an estimate for
*ranking* candidates of one model against each other, labelled as such everywhere it is shown; `edgekit
bench` measures devices, and `fit --latency host` times LiteRT on this host instead (CPU targets only).

The model, per operator: MACs / (MACs per cycle of the arithmetic x clock x parallel efficiency of the
threads) + a fixed dispatch cost, plus the weight bytes read once per inference at the memory bandwidth.
The figures are round numbers from the kernels' published designs, not measurements:

- Cortex-M (TFLM): CMSIS-NN int8 ~1 MAC/cycle on a DSP core (SMLAD: 2 MACs, minus loads), reference
  int16x8 ~3 cycles/MAC, FPU float32 ~4 cycles/MAC, soft float ~40 cycles/MAC.
- Arm64 CPU (LiteRT + XNNPACK): float32 NEON FMA 8 MACs/cycle/core; float16-weight models run in
  float32 after XNNPACK unpacks the weights at load (same rate); dynamic range (int8 weights, float
  activations quantized per inference) 12; int8 with dot-product instructions 32.
- Phone GPU (LiteRT GPU delegate): computes in fp16 whatever the file's weights (int8 models are
  dequantized at load): one rate for every candidate, a larger dispatch cost per operator.
- Apple Neural Engine (Core ML): fp16 compute; palettized, linear-int8 and pruned weights are expanded
  to fp16 before they reach the engine, so compression changes size, not this figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.analysis.graph import Graph
from edgekit.profiles import TargetProfile

# cycles per MAC on Cortex-M, by arithmetic
CORTEX_M_CYCLES_PER_MAC = {"int8": 1.0, "int16x8": 3.0, "float32": 4.0, "float32-soft": 40.0}
# MACs per cycle per core on an arm64 CPU with XNNPACK, by the candidate's quantization mode
ARM64_MACS_PER_CYCLE = {"float32": 8.0, "float16": 8.0, "dynamic": 12.0, "int8": 32.0, "int16x8": 4.0}
CPU_OP_OVERHEAD_S = 2e-6
CPU_BANDWIDTH_BPS = 10e9
THREAD_EFFICIENCY = 0.7
GPU_MACS_PER_S = 2e11
GPU_OP_OVERHEAD_S = 20e-6
ANE_MACS_PER_S = 5e12
ANE_OP_OVERHEAD_S = 10e-6


@dataclass(frozen=True)
class LatencyEstimate:
    ms: float
    kind: str  # how it was obtained, shown beside the figure


def _ops(graph: Graph) -> int:
    return len(graph.layers)


def estimate(graph: Graph, profile: TargetProfile, mode: str) -> LatencyEstimate | None:
    """The estimate for a candidate of ``mode`` (float32, float16, dynamic, int8, int16x8 or a Core ML
    compression kind) as ``profile`` runs it; None when the profile has no clock to count with."""
    macs = graph.macs
    if profile.is_tflm:
        if not profile.clock_hz:
            return None
        arith = mode if mode != "float32" else ("float32" if profile.fpu else "float32-soft")
        cpm = CORTEX_M_CYCLES_PER_MAC.get(arith, 4.0)
        return LatencyEstimate(macs * cpm / profile.clock_hz * 1000,
                               f"estimate: MACs x {cpm:g} cycles / {profile.clock_hz:,} Hz")
    if profile.runtime == "coreml":
        seconds = macs / ANE_MACS_PER_S + _ops(graph) * ANE_OP_OVERHEAD_S
        return LatencyEstimate(seconds * 1000, "estimate: Neural Engine fp16 cost model (compressed weights "
                                               "are expanded to fp16, so compression changes size, not latency)")
    if profile.delegate == "gpu":
        seconds = macs / GPU_MACS_PER_S + _ops(graph) * GPU_OP_OVERHEAD_S
        return LatencyEstimate(seconds * 1000, "estimate: GPU delegate fp16 cost model (the same rate for every "
                                               "candidate; size decides between them)")
    if not profile.clock_hz:
        return None
    rate = ARM64_MACS_PER_CYCLE.get(mode, 8.0)
    cores = 1 + THREAD_EFFICIENCY * (max(profile.threads, 1) - 1)
    seconds = (macs / (rate * profile.clock_hz * cores) + _ops(graph) * CPU_OP_OVERHEAD_S
               + graph.weight_bytes / CPU_BANDWIDTH_BPS)
    return LatencyEstimate(seconds * 1000, f"estimate: {profile.cpu or profile.arch} cost model, {rate:g} MACs/cycle "
                                           f"({mode}), {profile.threads} threads at {profile.clock_hz:,} Hz")
