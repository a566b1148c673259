"""`scaffold`: a complete firmware or app project from ``firmware_templates/<build>/``.

Every project carries the codegen output and an ``edgekit-project.json``
manifest saying what was generated from what (microTVM's generate_project
copied its own description in the same way).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit import output
from edgekit.bench.protocol import COMMAND_BUFFER
from edgekit.codegen import render
from edgekit.codegen.c_array import c_identifier
from edgekit.codegen.generate import _version, check_section, codegen_context, prepare, read_labels
from edgekit.errors import DoesNotFit, GenerationError
from edgekit.profiles import TargetProfile, load_profile

if TYPE_CHECKING:
    from edgekit.analysis.graph import Graph

MCU_BUILDS = ("cmake", "arduino", "zephyr")
_C_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
PHONE_BUILDS = ("android", "ios")
BUILDS = MCU_BUILDS + PHONE_BUILDS

# arm-none-eabi-gcc flags and TFLM Makefile TARGET_ARCH per core
CPU_FLAGS = {
    "cortex-m0plus": ("-mcpu=cortex-m0plus -mthumb -mfloat-abi=soft", "cortex-m0plus"),
    "cortex-m3": ("-mcpu=cortex-m3 -mthumb -mfloat-abi=soft", "cortex-m3"),
    "cortex-m4": ("-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16", "cortex-m4+fp"),
    "cortex-m7": ("-mcpu=cortex-m7 -mthumb -mfloat-abi=hard -mfpu=fpv5-d16", "cortex-m7+fp"),
    "cortex-m33": ("-mcpu=cortex-m33 -mthumb -mfloat-abi=hard -mfpu=fpv5-sp-d16", "cortex-m33"),
    "cortex-m55": ("-mcpu=cortex-m55 -mthumb -mfloat-abi=hard", "cortex-m55"),
}
# The most external interrupts each core can have (its vector table has an entry for every one).
CORE_IRQS = {"cortex-m0plus": 32, "cortex-m3": 240, "cortex-m4": 240, "cortex-m7": 240, "cortex-m33": 480,
             "cortex-m55": 480}
# Zephyr board targets that QEMU runs (`west build -t run`): their board .conf turns semihosting on, so that
# edgekit-exit ends QEMU with an exit code
ZEPHYR_QEMU_BOARDS = {"mps2/an385": "mps2_an385", "qemu_cortex_m3": "qemu_cortex_m3",
                      "mps3/corstone300/an547": "mps3_corstone300_an547", "mps2/an521/cpu0": "mps2_an521_cpu0"}

# measured on the generated project for mps2/an385 (Zephyr 4.1.0, Debian arm-none-eabi-gcc 12.2): 1,000 CPU-s
# (34 min wall on a 2-core machine under a load of 6-7); shown in the project's README
ZEPHYR_BUILD_TIME = "about 17 CPU-minutes: some 9 minutes on 2 idle cores"

# MLPerf Tiny benchmark ids and how each reference firmware (benchmark/reference_submissions/*/
# submitter_implemented.cpp in mlcommons/tiny) takes its input and prints its result
MLPERF_MODELS = ("ic01", "kws01", "vww01", "ad01")
_MLPERF_INPUT = {"ic01": "uint8_offset", "vww01": "uint8_offset", "kws01": "raw", "ad01": "float32_quantize"}
_CONVENTION_DOC = {
    "raw": "the input tensor's bytes as they are",
    "uint8_offset": "uint8 pixels, from which the firmware subtracts 128 to get the int8 input",
    "float32_quantize": "float32 values (little-endian), quantized on the device with the input tensor's scale "
                        "and zero point",
    "float32_raw": "float32 values (little-endian), the float input tensor as it is",
}


@dataclass
class ScaffoldResult:
    out_dir: Path
    build: str
    files: list[str]
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _hex(value: int) -> str:
    return f"0x{value:08X}"


def memory_context(profile: TargetProfile) -> dict[str, Any]:
    """The generic board's linker regions, from the profile's [memory] (or, without one, budgets + margins)."""
    m = profile.memory
    if m is None:  # a profile without [memory]: the old guess, labelled as one
        return {"source": "no [memory] in the profile: guessed from the budgets; set ORIGIN and LENGTH to your "
                          "chip", "flash_origin": _hex(0x0800_0000), "boot_header_size": 0,
                "code_origin": _hex(0x0800_0000), "code_size": profile.flash_bytes + 256 * 1024,
                "ram_origin": _hex(0x2000_0000), "ram_size": profile.ram_bytes + 64 * 1024,
                "arena_origin": None, "arena_size": None}
    source = profile.sources.get("memory.flash_origin", "")
    return {"source": f"from {Path(source).name}" if source else "from the profile",
            "flash_origin": _hex(m.flash_origin), "boot_header_size": m.boot_header_size,
            "code_origin": _hex(m.flash_origin + m.boot_header_size), "code_size": m.flash_size - m.boot_header_size,
            "ram_origin": _hex(m.ram_origin), "ram_size": m.ram_size,
            "arena_origin": _hex(m.arena_origin) if m.arena_origin is not None else None,
            "arena_size": m.arena_size}


def mlperf_context(mlperf_model: str | None, graph: Graph) -> dict[str, Any]:
    """How `db` takes the input and what `results` prints, for an MLPerf Tiny model id (or none)."""
    model = mlperf_model or "none"
    if model != "none" and model not in MLPERF_MODELS:
        raise GenerationError(f"--mlperf-model {model!r} is not an MLPerf Tiny model id",
                              "one of " + ", ".join(MLPERF_MODELS))
    inp, out = graph.input_tensors()[0], graph.output_tensors()[0]
    convention = _MLPERF_INPUT.get(model, "raw")
    if convention == "uint8_offset" and inp.dtype != "int8":
        raise GenerationError(f"--mlperf-model {model} sends uint8 pixels that become int8 (minus 128); this "
                              f"model's input is {inp.dtype}", "use the int8 model, or no --mlperf-model")
    if convention == "float32_quantize":
        if inp.dtype == "float32":
            convention = "float32_raw"
        elif inp.dtype != "int8":
            raise GenerationError(f"--mlperf-model ad01 quantizes float32 input to int8; this model's input is "
                                  f"{inp.dtype}", "use the int8 (or float32) model, or no --mlperf-model")
        if out.elements != inp.elements:
            raise GenerationError(f"--mlperf-model ad01 scores the output against the input (an autoencoder); "
                                  f"this model has {inp.elements} input and {out.elements} output values")
    return {"mlperf_model": model, "input_convention": convention, "input_convention_doc": _CONVENTION_DOC[convention],
            "results_kind": "anomaly_mse" if model == "ad01" else "outputs"}


def mcu_context(profile: TargetProfile, base: dict[str, Any], zephyr_uart: str | None = None) -> dict[str, Any]:
    cpu = profile.cpu if profile.cpu in CPU_FLAGS else "cortex-m4"
    flags, arch = CPU_FLAGS[cpu]
    zephyr_board = profile.zephyr_board or "qemu_cortex_m3"
    return {
        **base,
        "cpu": cpu,
        "cpu_flags": flags,
        "tflm_arch": arch,
        # runtime.kernels: CMSIS-NN's optimized kernels (the default) or TFLM's reference kernels
        "kernels": profile.kernels,
        "kernels_make_arg": " OPTIMIZED_KERNEL_DIR=cmsis_nn" if profile.kernels == "cmsis_nn" else "",
        "kernels_lib_suffix": "_cmsis_nn" if profile.kernels == "cmsis_nn" else "",
        "fpu": profile.fpu and cpu != "cortex-m0plus",
        "clock_hz": profile.clock_hz or 64_000_000,
        "command_buffer": COMMAND_BUFFER,
        "stack_bytes": 8192,
        "irqs": profile.irqs or CORE_IRQS.get(cpu, 240),
        "memory": memory_context(profile),
        "baud": profile.baud,
        "zephyr_board": zephyr_board,
        "zephyr_uart": zephyr_uart,
        "zephyr_qemu_confs": sorted(ZEPHYR_QEMU_BOARDS.values()),
        "zephyr_build_time": ZEPHYR_BUILD_TIME,
    }


def scaffold(model: str | os.PathLike[str], target: str | TargetProfile, build: str,
             out_dir: str | os.PathLike[str], name: str | None = None, labels: str | None = None,
             section: str | None = None, allow_over_budget: bool = False, force: bool = False,
             mlperf_model: str | None = None, zephyr_uart: str | None = None, plan: bool = True) -> ScaffoldResult:
    """Render ``firmware_templates/<build>/`` around ``model`` into ``out_dir``.

    Raises DoesNotFit (exit code 1) when the model does not fit the target (a budget, an operator, a data
    type) unless ``allow_over_budget``, for every build kind, as ``edgekit check`` would; other problems
    raise EdgekitError subclasses (exit code 2).
    """
    if build not in BUILDS:
        raise GenerationError(f"unknown build kind {build!r} (must be one of {', '.join(BUILDS)})")
    if mlperf_model is not None and build not in MCU_BUILDS:
        raise GenerationError(f"--mlperf-model is for firmware builds ({', '.join(MCU_BUILDS)}), not {build}")
    if zephyr_uart is not None and (build != "zephyr" or not _C_LABEL.match(zephyr_uart)):
        raise GenerationError(f"--zephyr-uart {zephyr_uart!r}: a devicetree node label (e.g. uart1) for "
                              "--build zephyr" if build == "zephyr" else "--zephyr-uart is for --build zephyr")
    profile = target if isinstance(target, TargetProfile) else load_profile(target)
    out = Path(out_dir)
    check_section(section)
    notes: list[str] = []
    with output.Output(out_dir, force, inputs=[model, labels], command="scaffold") as staged:
        if build in MCU_BUILDS:
            files, ctx = _mcu_files(model, profile, build, name, labels, section, allow_over_budget, mlperf_model,
                                    zephyr_uart, plan, notes)
        else:
            files, ctx = _phone_files(model, profile, build, name, allow_over_budget)
        manifest = _manifest(model, profile, build, ctx, files)
        files["edgekit-project.json"] = json.dumps(manifest, indent=2) + "\n"
        for rel, content in files.items():
            staged.write(rel, content)
        staged.publish()
    return ScaffoldResult(out_dir=out, build=build, files=sorted(files), manifest=manifest, notes=notes)


def _manifest(model: str | os.PathLike[str], profile: TargetProfile, build: str, ctx: dict[str, Any],
              files: dict[str, str | bytes | Path]) -> dict[str, Any]:
    return {
        "generator": f"edgekit {_version()}",
        "build": build,
        "target": _target_ref(profile),
        "target_profile": {k: v for k, v in sorted(profile.values.items()) if not k.startswith("ops.allow")},
        "model": {"file": Path(model).name, "sha256": ctx["sha256"], "bytes": ctx["size"]},
        "arena": {"constant_bytes": ctx.get("arena_bytes"), "measured_host_bytes": ctx.get("arena_measured"),
                  "note": "measured with the host TFLM interpreter (64-bit); the constant adds the margin"}
        if build in MCU_BUILDS else None,
        "ops": [op["name"] for op in ctx.get("ops", [])],
        "mlperf_model": ctx.get("mlperf_model"),
        "templates": f"firmware_templates/{build}",
        "files": {rel: _sha(content) if not isinstance(content, Path) else "directory"
                  for rel, content in sorted(files.items())},
    }


def _target_ref(profile: TargetProfile) -> str:
    """How `edgekit bench PROJECT` finds the profile again: its name if that resolves to the same file on the
    search path, else the profile file's absolute path (a user's board given as a path)."""
    from edgekit.errors import ProfileError

    if profile.path is None:
        return profile.name
    try:
        found = load_profile(profile.name).path
    except ProfileError:
        found = None
    if found is not None and found.resolve() == profile.path.resolve():
        return profile.name
    return str(profile.path.resolve())


def _mcu_files(model: str | os.PathLike[str], profile: TargetProfile, build: str, name: str | None,
               labels: str | None, section: str | None, allow_over_budget: bool, mlperf_model: str | None,
               zephyr_uart: str | None, plan: bool = True, notes: list[str] | None = None
               ) -> tuple[dict[str, str | bytes | Path], dict[str, Any]]:
    data, graph, profile, arena = prepare(model, profile, allow_over_budget, plan=plan, notes=notes)
    label_list = read_labels(labels, graph)
    base = codegen_context(data, graph, profile, name or Path(model).stem, Path(model).name, section, label_list,
                           arena)
    ctx = {**mcu_context(profile, base, zephyr_uart), **mlperf_context(mlperf_model, graph)}
    code = render.render_kind("codegen", ctx)
    files: dict[str, str | bytes | Path] = {}
    src_dir = {"cmake": "src", "zephyr": "src", "arduino": "edgekit_firmware"}[build]
    for rel, text in {**code, **render.render_kind("common", ctx)}.items():
        files[f"{src_dir}/{rel}"] = text
    for rel, text in render.render_kind(build, ctx).items():
        if build == "zephyr" and rel == "boards/qemu.conf":  # one semihosting fragment per QEMU board
            for conf in ctx["zephyr_qemu_confs"]:
                files[f"boards/{conf}.conf"] = text
        else:
            files[rel] = text
    files["edgekit/model.tflite"] = data  # what `edgekit bench PROJECT --port P` compares the device against
    return files, ctx


def _phone_verdict(model: Path, profile: TargetProfile, allow_over_budget: bool) -> None:
    """`check`'s verdict for a phone artifact: DoesNotFit (exit 1) unless --allow-over-budget."""
    if allow_over_budget:
        return
    from edgekit.analyzer import analyze

    report = analyze(model, profile)
    if not report.fits:
        over = [f"{b.name} {b.used:,} > {b.limit:,}{' (' + b.note + ')' if b.note else ''}"
                for b in report.budgets if not b.fits]
        raise DoesNotFit(f"{model.name} does not fit {profile.name}: " + "; ".join(over),
                         "pass --allow-over-budget to generate anyway")


def _phone_files(model: str | os.PathLike[str], profile: TargetProfile, build: str, name: str | None,
                 allow_over_budget: bool) -> tuple[dict[str, str | bytes | Path], dict[str, Any]]:
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
        _phone_verdict(p, profile, allow_over_budget)
        asset = "model.tflite"
        payload: str | bytes | Path = data
        digest, size = _sha(data), len(data)
    else:
        if profile.runtime != "coreml" or p.suffix.lower() != ".mlpackage" or not p.is_dir():
            raise GenerationError(f"--build ios needs an .mlpackage and a Core ML target (got {p.name}, "
                                  f"{profile.name})", "e.g. edgekit fit MODEL -t ios-ane -o out/")
        _phone_verdict(p, profile, allow_over_budget)
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


