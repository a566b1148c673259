"""`scaffold`: a complete firmware or app project from ``firmware_templates/<build>/``.

Every project carries the codegen output and an ``edgekit-project.json``
manifest saying what was generated from what (microTVM's generate_project
copied its own description in the same way).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.bench.protocol import COMMAND_BUFFER
from edgekit.codegen import render
from edgekit.codegen.c_array import c_identifier
from edgekit.codegen.generate import _version, check_section, codegen_context, prepare, read_labels
from edgekit.errors import GenerationError
from edgekit.profiles import TargetProfile, load_profile

MCU_BUILDS = ("cmake", "arduino", "zephyr")
PHONE_BUILDS = ("android", "ios")
BUILDS = MCU_BUILDS + PHONE_BUILDS

# arm-none-eabi-gcc flags and TFLM Makefile TARGET_ARCH per core
CPU_FLAGS = {
    "cortex-m0plus": ("-mcpu=cortex-m0plus -mthumb -mfloat-abi=soft", "cortex-m0plus"),
    "cortex-m4": ("-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16", "cortex-m4+fp"),
    "cortex-m7": ("-mcpu=cortex-m7 -mthumb -mfloat-abi=hard -mfpu=fpv5-d16", "cortex-m7+fp"),
    "cortex-m33": ("-mcpu=cortex-m33 -mthumb -mfloat-abi=hard -mfpu=fpv5-sp-d16", "cortex-m33"),
    "cortex-m55": ("-mcpu=cortex-m55 -mthumb -mfloat-abi=hard", "cortex-m55"),
}
ZEPHYR_BOARDS = {"cortex-m0plus": "rpi_pico", "cortex-m4": "nrf52840dk/nrf52840", "cortex-m7": "nucleo_h743zi",
                 "cortex-m33": "nrf5340dk/nrf5340/cpuapp", "cortex-m55": "mps3/corstone300/an547"}


@dataclass
class ScaffoldResult:
    out_dir: Path
    build: str
    files: list[str]
    manifest: dict[str, Any]


def _sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def mcu_context(profile: TargetProfile, base: dict[str, Any]) -> dict[str, Any]:
    flags, arch = CPU_FLAGS.get(profile.cpu, CPU_FLAGS["cortex-m4"])
    return {
        **base,
        "cpu": profile.cpu or "cortex-m4",
        "cpu_flags": flags,
        "tflm_arch": arch,
        "clock_hz": profile.clock_hz or 64_000_000,
        "command_buffer": COMMAND_BUFFER,
        "stack_bytes": 8192,
        "flash_origin": "0x08000000",
        "flash_length": profile.flash_bytes + 256 * 1024,
        "ram_origin": "0x20000000",
        "ram_length": profile.ram_bytes + 64 * 1024,
        "baud": profile.baud,
        "zephyr_board": ZEPHYR_BOARDS.get(profile.cpu, "qemu_cortex_m3"),
    }


def scaffold(model: str | os.PathLike[str], target: str | TargetProfile, build: str,
             out_dir: str | os.PathLike[str], name: str | None = None, labels: str | None = None,
             section: str | None = None, allow_over_budget: bool = False, force: bool = False) -> ScaffoldResult:
    if build not in BUILDS:
        raise GenerationError(f"unknown build kind {build!r} (must be one of {', '.join(BUILDS)})")
    profile = target if isinstance(target, TargetProfile) else load_profile(target)
    out = Path(out_dir)
    render.check_output(out, force)
    check_section(section)
    if build in MCU_BUILDS:
        files, ctx = _mcu_files(model, profile, build, name, labels, section, allow_over_budget)
    else:
        files, ctx = _phone_files(model, profile, build, name)
    manifest = {
        "generator": f"edgekit {_version()}",
        "build": build,
        "target": profile.name,
        "target_profile": {k: v for k, v in sorted(profile.values.items()) if not k.startswith("ops.allow")},
        "model": {"file": Path(model).name, "sha256": ctx["sha256"], "bytes": ctx["size"]},
        "arena": {"constant_bytes": ctx.get("arena_bytes"), "measured_host_bytes": ctx.get("arena_measured"),
                  "note": "measured with the host TFLM interpreter (64-bit); the constant adds the margin"}
        if build in MCU_BUILDS else None,
        "ops": [op["name"] for op in ctx.get("ops", [])],
        "templates": f"firmware_templates/{build}",
        "files": {rel: _sha(content) if not isinstance(content, Path) else "directory"
                  for rel, content in sorted(files.items())},
    }
    files["edgekit-project.json"] = json.dumps(manifest, indent=2) + "\n"
    render.write_tree(out, files, force)
    return ScaffoldResult(out_dir=out, build=build, files=sorted(files), manifest=manifest)


def _mcu_files(model: str | os.PathLike[str], profile: TargetProfile, build: str, name: str | None,
               labels: str | None, section: str | None, allow_over_budget: bool
               ) -> tuple[dict[str, str | bytes | Path], dict[str, Any]]:
    data, graph, profile, arena = prepare(model, profile, allow_over_budget)
    label_list = read_labels(labels, graph)
    base = codegen_context(data, graph, profile, name or Path(model).stem, Path(model).name, section, label_list,
                           arena)
    ctx = mcu_context(profile, base)
    code = render.render_kind("codegen", ctx)
    files: dict[str, str | bytes | Path] = {}
    src_dir = {"cmake": "src", "zephyr": "src", "arduino": "edgekit_firmware"}[build]
    for rel, text in {**code, **render.render_kind("common", ctx)}.items():
        files[f"{src_dir}/{rel}"] = text
    files.update(render.render_kind(build, ctx))
    files["edgekit/model.tflite"] = data  # what `edgekit bench PROJECT --port P` compares the device against
    return files, ctx


def _phone_files(model: str | os.PathLike[str], profile: TargetProfile, build: str, name: str | None
                 ) -> tuple[dict[str, str | bytes | Path], dict[str, Any]]:
    p = Path(model)
    if not p.exists():
        raise GenerationError(f"model {p} does not exist")
    if build == "android":
        if profile.runtime != "litert" or p.suffix.lower() != ".tflite":
            raise GenerationError(f"--build android needs a .tflite and a LiteRT target (got {p.name}, "
                                  f"{profile.name})", "e.g. edgekit fit MODEL -t android-arm64-cpu -o out/")
        data = p.read_bytes()
        from edgekit.analysis.graph import read_graph

        read_graph(data, where=str(p))
        asset = "model.tflite"
        payload: str | bytes | Path = data
        digest, size = _sha(data), len(data)
    else:
        if profile.runtime != "coreml" or p.suffix.lower() != ".mlpackage" or not p.is_dir():
            raise GenerationError(f"--build ios needs an .mlpackage and a Core ML target (got {p.name}, "
                                  f"{profile.name})", "e.g. edgekit fit MODEL -t ios-ane -o out/")
        asset = f"{c_identifier(name or p.stem)}.mlpackage"
        payload = p
        from edgekit._hashing import content_hash
        from edgekit.stages.coreml import package_bytes

        digest, size = content_hash(p), package_bytes(p)
    ident = c_identifier(name or p.stem)
    ctx = {
        "edgekit_version": _version(), "target": profile.name, "name": ident,
        "class_name": "".join(part.capitalize() for part in ident.split("_")) or "Model",
        "delegate": profile.delegate, "threads": profile.threads, "asset": asset, "sha256": digest,
        "size": size, "compute_units": profile.compute_units or "all",
        "model_file": p.name,
    }
    files: dict[str, str | bytes | Path] = dict(render.render_kind(build, ctx))
    if build == "android":
        files[f"app/src/main/assets/{asset}"] = payload
    else:
        files[asset] = payload
    return files, ctx


