"""Sub-8-bit weights for LiteRT phones with Google's ``ai-edge-quantizer``: int4 channel-wise weights with
float activations quantized per inference (dynamic range), which LiteRT's CPU path (XNNPACK's qc4w
kernels) executes. The recipe is applied to the float32 .tflite the converter wrote."""

from __future__ import annotations

import contextlib
import io

from edgekit.errors import StageError

RECIPES = ("dynamic_wi4c_afp32", "dynamic_wi4_afp32", "weight_only_wi4_afp32")


def quantize(float_tflite: bytes, recipe_name: str) -> bytes:
    if recipe_name not in RECIPES:
        raise StageError(f"unknown ai-edge-quantizer recipe {recipe_name!r} (must be one of {', '.join(RECIPES)})")
    from edgekit._extras import require

    aeq = require("ai_edge_quantizer", "int4 weights for LiteRT")
    from ai_edge_quantizer import quantizer, recipe

    from edgekit._quiet import quiet_native

    try:
        with quiet_native((1, 2)), contextlib.redirect_stdout(io.StringIO()):
            q = quantizer.Quantizer(float_tflite, getattr(recipe, recipe_name)())
            out = q.quantize().quantized_model
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise StageError(f"ai-edge-quantizer ({recipe_name}) failed: {text[0][:200] if text else exc}") from None
    del aeq
    return bytes(out)
