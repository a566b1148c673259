"""The ladder: which candidates a fit tries for a runtime and level, least to most aggressive."""

from __future__ import annotations

from edgekit.errors import StageError
from edgekit.fitting.types import Rung
from edgekit.profiles import TargetProfile


def ladder(profile: TargetProfile, level: int = 1) -> list[Rung]:
    if level != 1:
        raise StageError(
            f"--level {level} is not available yet: levels 2 and 3 (pruning that shrinks, clustering, "
            "low-rank factorization, distillation) come with a later edgekit release",
            "use --level 1 (post-training quantization)",
        )
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
        return rungs
    for mode in ("float32", "float16", "dynamic", "int8"):
        if mode == "float16" and "float16" not in profile.dtypes:
            continue
        if mode == "dynamic" and profile.delegate == "gpu":
            continue  # hybrid (dynamic-range) kernels are not taken by the GPU delegate: CPU fallback
        rungs.append(Rung(mode, "quantize", mode))
    return rungs
