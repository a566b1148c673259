"""The ladder: which candidates a fit tries for a runtime and level, least to most aggressive.

Level 1 is post-training quantization; level 2 adds the weight-level methods (mixed precision driven by
the per-layer error, weights below 8 bits, LUT/palettization, weight clustering before quantization) and
includes level 1's rungs. Level 3 changes the architecture (fitting.level3) and runs level 2's ladder on
every architecture it keeps, so its ladder is level 2's.
"""

from __future__ import annotations

from edgekit.errors import StageError
from edgekit.fitting.types import Rung
from edgekit.profiles import TargetProfile

LEVELS = (1, 2, 3)
IOS18_MODES_FROM = 18  # per-grouped-channel palettization and 4-bit blockwise linear need iOS 18


def ios_version(profile: TargetProfile) -> int:
    name = (profile.min_deployment_target or "iOS16").lower().removeprefix("ios")
    return int(name) if name.isdigit() else 16


def ladder(profile: TargetProfile, level: int = 1) -> list[Rung]:
    if level not in LEVELS:
        raise StageError(f"--level {level} is invalid (must be 1, 2 or 3)",
                         "1: post-training quantization; 2: mixed precision, sub-8-bit weights; 3: structured "
                         "pruning, low-rank factorization and distillation with --train")
    rungs = _level1(profile)
    if level >= 2:
        rungs += _level2(profile)
    return rungs


def _level1(profile: TargetProfile) -> list[Rung]:
    if profile.runtime == "coreml":
        return [Rung("fp16", "coreml", "none"), Rung("linear-int8", "coreml", "linear-int8"),
                Rung("palettize-8bit", "coreml", "palettize", 8), Rung("palettize-6bit", "coreml", "palettize", 6),
                Rung("palettize-4bit", "coreml", "palettize", 4), Rung("palettize-2bit", "coreml", "palettize", 2),
                Rung("prune-50", "coreml", "prune", 0.5)]
    rungs = []
    if profile.is_tflm:
        if "float32" in profile.dtypes:
            rungs.append(Rung("float32", "quantize", "float32"))
        if "int16" in profile.dtypes:
            rungs.append(Rung("int16x8", "quantize", "int16x8"))
        rungs.append(Rung("int8", "quantize", "int8"))
        # TFLM keeps a multiplier and shift per output channel in the arena: for fully-connected models
        # one scale per tensor can need far less RAM and flash (MLPerf Tiny's anomaly-detection model)
        rungs.append(Rung("int8-per-tensor", "quantize", "int8-per-tensor"))
        return rungs
    for mode in ("float32", "float16", "dynamic", "int8"):
        if mode == "float16" and "float16" not in profile.dtypes:
            continue
        if mode == "dynamic" and profile.delegate == "gpu":
            continue  # hybrid (dynamic-range) kernels are not taken by the GPU delegate: CPU fallback
        rungs.append(Rung(mode, "quantize", mode))
    return rungs


def _level2(profile: TargetProfile) -> list[Rung]:
    if profile.runtime == "coreml":
        if ios_version(profile) < IOS18_MODES_FROM:
            return []  # the search notes why (the profile's deployment target)
        return [Rung("palettize-4bit-grouped", "coreml", "palettize-grouped", 4, level=2),
                Rung("palettize-3bit-grouped", "coreml", "palettize-grouped", 3, level=2),
                Rung("linear-int4-block", "coreml", "linear-int4-block", 4, level=2)]
    rungs = []
    if profile.is_tflm:
        if "int16" in profile.dtypes:  # TFLM's kernels take int16 activations beside int8 ones (QUANTIZE between)
            rungs.append(Rung("mixed-16x8", "mixed", "int16x8", 1, level=2))
        if "float32" in profile.dtypes:
            rungs.append(Rung("mixed-float", "mixed", "float", 1, level=2))
        rungs.append(Rung("int4-keep-worst", "int4", "keep", 1, level=2))
        rungs.append(Rung("int4", "int4", "all", 0, level=2))
        rungs.append(Rung("lut-4bit", "lut", "per-channel", 4, level=2))
        # the float kernels clustered per layer (k-means) before quantization, fine-tuned with --train:
        # INT4 filters from 16 clusters, and LUT compression, lossless at log2(k) bits
        rungs.append(Rung("cluster16-int4", "cluster", "int4", 16, level=2))
        rungs += [Rung(f"cluster{k}-lut-{b}bit", "cluster", "lut", k, level=2) for k, b in ((16, 4), (32, 5), (64, 6))]
        return rungs
    if profile.delegate == "gpu":
        rungs.append(Rung("mixed-float", "mixed", "float", 1, level=2))
        return rungs  # int4 weights are hybrid kernels the GPU delegate does not take
    rungs.append(Rung("mixed-float", "mixed", "float", 1, level=2))
    rungs.append(Rung("int4-weights", "aeq", "dynamic_wi4c_afp32", 4, level=2))
    rungs.append(Rung("cluster16-int4-weights", "cluster", "aeq", 16, level=2))
    return rungs
