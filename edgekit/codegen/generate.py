"""`codegen`: model_data.h/.cc, model_settings.h and op_resolver.h for a TFLM target."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgekit import options, output
from edgekit._files import read_regular
from edgekit.analysis import compat
from edgekit.analysis.arena import reserved_arena_bytes
from edgekit.analysis.graph import Graph, Tensor, read_graph
from edgekit.analysis.verdict import Budget, assess_tflm
from edgekit.analysis.verdict import budgets as verdict_budgets
from edgekit.codegen import render
from edgekit.codegen.c_array import c_identifier, c_string, format_bytes
from edgekit.errors import DoesNotFit, GenerationError, ModelError
from edgekit.profiles import TargetProfile, load_profile

_TFLITE_TYPES = {"int8": "int8", "uint8": "uint8", "int16": "int16", "int32": "int32", "float32": "float32",
                 "float16": "float16", "bool": "bool", "int64": "int64"}
_SECTION = re.compile(r"^[A-Za-z0-9_.$]{1,64}$")


@lru_cache(maxsize=1)
def resolver_methods() -> dict[str, str]:
    path = Path(__file__).with_name("tflm_resolver_methods.json")
    return dict(json.loads(path.read_text())["methods"])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgekit")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class CodegenResult:
    out_dir: Path
    files: list[str]
    name: str
    arena_bytes: int
    arena_measured: int
    ops: list[str]
    size: int
    notes: list[str] = field(default_factory=list)


def arena_constant(measured: int) -> int:
    """The arena size the firmware reserves (kTensorArenaSize): the one rule analyze, check and fit use
    too, :func:`edgekit.analysis.arena.reserved_arena_bytes`."""
    return reserved_arena_bytes(measured)


def _tensor_info(t: Tensor) -> dict[str, Any]:
    return {"dims": list(t.shape) or [1], "dtype": _TFLITE_TYPES.get(t.dtype, t.dtype), "bytes": t.nbytes,
            "scale": repr(float(t.scale[0])) + "f" if t.scale else "0.0f",
            "zero_point": int(t.zero_point[0]) if t.zero_point else 0}


def read_labels(path: str | None, graph: Graph) -> list[str]:
    if not path:
        return []
    p = Path(path)
    try:
        lines = [ln.rstrip("\r\n") for ln in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise GenerationError(f"cannot read labels file {p}: {exc}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    classes = graph.output_tensors()[0].elements
    if len(lines) != classes:
        raise GenerationError(f"labels file {p} has {len(lines)} lines but the model has {classes} outputs",
                              "one label per line, in class order")
    return lines


def codegen_context(model: bytes, graph: Graph, profile: TargetProfile, name: str, source_name: str,
                    section: str | None, labels: list[str], arena_measured: int) -> dict[str, Any]:
    methods = resolver_methods()
    missing = [op for op in graph.ops if op not in methods]
    if missing:
        raise GenerationError(f"TFLM has no resolver method for {', '.join(missing)}",
                              "these operators cannot run on a TFLM target")
    ident = c_identifier(name)
    return {
        "edgekit_version": _version(),
        "source_name": c_comment(source_name),
        "target": profile.name,
        "name": ident,
        "guard": ident.upper(),
        "array": f"g_{ident}_model_data",
        "array_body": format_bytes(model),
        "size": len(model),
        "sha256": hashlib.sha256(model).hexdigest(),
        "section": section,
        "inputs": [_tensor_info(t) for t in graph.input_tensors()],
        "outputs": [_tensor_info(t) for t in graph.output_tensors()],
        "labels": [c_string(label) for label in labels],
        "arena_measured": arena_measured,
        "arena_bytes": arena_constant(arena_measured),
        "arena_margin_pct": round(options.ARENA_MARGIN.value * 100),
        "ops": [{"name": op, "method": methods[op]} for op in graph.ops],
    }


def c_comment(text: str) -> str:
    """Text safe inside a // comment (no newlines, no trigraphs, no line splices)."""
    return re.sub(r"[^0-9A-Za-z_.\-+ ()]", "_", text)[:120]


def check_section(section: str | None) -> None:
    if section is not None and not _SECTION.match(section):
        raise GenerationError(f"--section {section!r} is not a valid section name",
                              "letters, digits, '_', '.' and '$' only, e.g. .model_data")


def prepare(model_path: str | os.PathLike[str], target: str | TargetProfile, allow_over_budget: bool,
            plan: bool = True, notes: list[str] | None = None) -> tuple[bytes, Graph, TargetProfile, int]:
    """Read, check against the target, and measure: (model bytes, graph, profile, measured arena).

    The verdict is check's (:mod:`edgekit.analysis.verdict`): the same budgets, the same reserved
    arena, the same reasons TFLM cannot run a model. With ``plan`` (the default), a model that carries
    no memory plan gets one embedded when TFLM confirms it lowers the arena with bit-exact outputs
    (:func:`edgekit.stages.memplan.optimize`): the bytes returned are then the planned model's, and a
    line saying so is appended to ``notes``.
    """
    p = Path(model_path)
    if p.suffix.lower() != ".tflite":
        raise ModelError(f"codegen takes a .tflite file, not {p.name}",
                         "convert it first: edgekit fit MODEL --target TARGET -o out/")
    profile = target if isinstance(target, TargetProfile) else load_profile(target)
    if not profile.is_tflm:
        raise GenerationError(f"codegen writes TFLM sources; target {profile.name} runs {profile.runtime}",
                              "use `edgekit scaffold --build android|ios` for phones")
    data = read_regular(p, options.MODEL_MAX_BYTES, "model file", ModelError)
    graph = read_graph(data, where=str(p))
    dynamic = graph.dynamic_inputs()
    if dynamic:
        raise ModelError(f"{p}: input {dynamic[0].shape_text()} has dynamic dimensions; firmware needs a fixed shape",
                         "re-convert it from the source model with --input-shape")
    unsupported = compat.unsupported_ops(graph, profile)
    if unsupported:
        raise DoesNotFit(f"{p.name} uses operators TFLM does not have: {', '.join(unsupported)}",
                              "replace them in the model, or pick a runtime that has them")
    if plan:
        data, graph = _planned(data, graph, notes if notes is not None else [])
    tflm = assess_tflm(data, graph, profile, skip_hopeless=not allow_over_budget)
    if tflm.blockers:
        raise DoesNotFit(f"{p.name}: {'; '.join(tflm.blockers)}",
                         "convert it to full int8 (edgekit fit); --allow-over-budget cannot help")
    lines = verdict_budgets(profile, graph, len(data), f"tflite-{graph.quantization}", tflm.ram_budget(profile))
    over = [_over_text(b) for b in lines if not b.fits]
    if over and not allow_over_budget:
        raise DoesNotFit(f"{p.name} does not fit {profile.name}: " + "; ".join(over),
                              "pass --allow-over-budget to generate anyway")
    if tflm.measured is None:  # only skipped for hopeless models, which are refused above
        raise DoesNotFit(f"{p.name}: the TFLM arena could not be measured ({'; '.join(tflm.notes)})")
    return data, graph, profile, tflm.measured


def _planned(data: bytes, graph: Graph, notes: list[str]) -> tuple[bytes, Graph]:
    """The model with a verified memory plan embedded, when it has none and one helps."""
    from edgekit.errors import EdgekitError
    from edgekit.stages import memplan

    if memplan.read_offsets(data) is not None:
        notes.append("memory plan: the model carries one already (used as is)")
        return data, graph
    try:
        result = memplan.optimize(data)
    except EdgekitError as exc:  # TFLM could not run it: the verdict below says why
        notes.append(f"memory plan not applied: {exc.message}")
        return data, graph
    notes.append(("memory plan embedded: " if result.applied else "") + result.note)
    if not result.applied:
        return data, graph
    return result.data, read_graph(result.data)


def _over_text(b: Budget) -> str:
    if b.name == "ram" and b.note.startswith("tflm-arena"):
        return f"arena {b.used:,} B ({b.note}) > {b.limit:,} B by {-b.margin:,} B"
    if b.unit == "bytes":
        return f"{b.name} {b.used:,} B > {b.limit:,} B by {-b.margin:,} B"
    return f"{b.unit} {b.note}" if b.note else f"{b.name} over"


def codegen(model: str | os.PathLike[str], target: str | TargetProfile, out_dir: str | os.PathLike[str],
            name: str | None = None, section: str | None = None, labels: str | None = None,
            allow_over_budget: bool = False, force: bool = False, plan: bool = True) -> CodegenResult:
    check_section(section)
    notes: list[str] = []
    with output.Output(out_dir, force, inputs=[model, labels], command="codegen") as out:
        data, graph, profile, arena = prepare(model, target, allow_over_budget, plan=plan, notes=notes)
        label_list = read_labels(labels, graph)
        ctx = codegen_context(data, graph, profile, name or Path(model).stem, Path(model).name, section,
                              label_list, arena)
        files: dict[str, str | bytes] = dict(render.render_kind("codegen", ctx))
        files["model.tflite"] = data  # the exact bytes of the C array: what `edgekit bench` compares against
        for rel, content in files.items():
            out.write(rel, content)
        out.publish()
    return CodegenResult(out_dir=Path(out_dir), files=sorted(files), name=ctx["name"], arena_bytes=ctx["arena_bytes"],
                         arena_measured=arena, ops=graph.ops, size=len(data), notes=notes)
