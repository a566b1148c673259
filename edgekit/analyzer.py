"""`analyze`: does this model fit this target - flash, RAM, operators, data types - and by how much."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit import data as data_mod
from edgekit import intake
from edgekit.analysis import compat
from edgekit.analysis.elf_size import ElfSizes
from edgekit.analysis.graph import Graph, read_graph
from edgekit.analysis.runtime_size import RuntimeCode
from edgekit.analysis.verdict import Budget, TflmAssessment, assess_tflm, budgets, hopeless, runtime_note
from edgekit.errors import DataError, EdgekitError, MeasurementError, ModelError, TargetRefused
from edgekit.profiles import TargetProfile, load_profile

MEASURES = ("qemu",)

__all__ = ["AnalysisReport", "Budget", "analyze"]


@dataclass
class AnalysisReport:
    model: str
    target: str
    runtime: str
    artifact_kind: str
    flash_bytes: int
    ram_bytes: int
    ram_kind: str
    graph: Graph
    budgets: list[Budget]
    unsupported_ops: list[str]
    findings: list[compat.Finding]
    calibration: str
    arena: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    deployable: bytes | None = field(default=None, repr=False)
    arena_measured: int | None = None  # TFLM targets: the arena the host TFLM interpreter allocated
    blockers: list[str] = field(default_factory=list)  # TFLM targets: why TFLM cannot run the model
    params_estimate: int | None = None  # the model was not converted: its parameter count
    runtime_code: RuntimeCode | None = None  # TFLM targets: TFLM's code for the model's operators (estimate)
    firmware: ElfSizes | None = None  # a built firmware whose .text+.data replaced the flash estimate
    measurement: Any = None  # edgekit.measure.qemu.QemuMeasurement with --measure qemu
    delegation: dict[str, Any] | None = None  # LiteRT GPU/NNAPI targets: which operators the delegate takes

    @property
    def fits(self) -> bool:
        return all(b.fits for b in self.budgets)

    def to_dict(self) -> dict[str, Any]:
        g = self.graph
        return {
            "model": self.model,
            "target": self.target,
            "runtime": self.runtime,
            "artifact": self.artifact_kind,
            "fits": self.fits,
            "flash_bytes": self.flash_bytes,
            "arena_bytes": self.arena_measured,
            "arena_reserved_bytes": self.ram_bytes if self.arena_measured is not None else None,
            "ram_bytes": self.ram_bytes,
            "ram_kind": self.ram_kind,
            "params": self.params_estimate if self.params_estimate is not None else g.params,
            "macs": g.macs,
            "ops": g.ops,
            "dtypes": g.dtypes,
            "unsupported_ops": self.unsupported_ops,
            "unsupported": [{"constraint": f.constraint, "reason": f.reason, "items": list(f.items)}
                            for f in self.findings],
            "budgets": {b.name: b.to_dict() for b in self.budgets},
            "runtime_code": self.runtime_code.to_dict() if self.runtime_code is not None else None,
            "firmware": {"path": self.firmware.path, **self.firmware.to_dict()} if self.firmware is not None else None,
            "measurement": self.measurement.to_dict() if self.measurement is not None else None,
            "blockers": self.blockers,
            "calibration": self.calibration,
            "arena": self.arena,
            "layers": [
                {"index": la.index, "op": la.op, "inputs": [list(s) for s in la.input_shapes],
                 "outputs": [list(s) for s in la.output_shapes], "params": la.params,
                 "macs": la.macs, "weight_bytes": la.weight_bytes}
                for la in g.layers
            ],
            "delegation": self.delegation,
            "notes": self.notes,
        }


def _deployable(art: intake.Artifact, profile: TargetProfile, calib_path: str | None,
                notes: list[str]) -> tuple[bytes, str]:
    """Convert ``art`` the way ``profile`` deploys it; returns (tflite bytes, calibration label)."""
    from edgekit.stages import quantize

    assert art.tflite is None
    mode = quantize.ARTIFACT_MODE.get(profile.artifact, "float32")
    calib: data_mod.Dataset | None = None
    label = "none (not needed for " + mode + ")"
    shape = quantize.input_shape(art)
    if calib_path:
        calib = data_mod.load(calib_path, shape)
        label = f"{calib.source} ({len(calib)} samples)"
    if mode in ("int8", "int16x8") and calib is None:
        calib = data_mod.synthetic(shape)
        label = f"SYNTHETIC: {calib.source}, {len(calib)} samples - pass --calib for real figures"
        notes.append("calibration used synthetic data: quantization scales (and so accuracy) are "
                     "not representative; sizes and the arena still are")
    return quantize.convert(art, mode, calib, profile.io_dtype), label


def analyze(model: str | os.PathLike[str], target: str | TargetProfile, calib: str | None = None,
            input_shape: str | Sequence[int] | None = None, firmware: str | os.PathLike[str] | None = None,
            measure: str | None = None, use_cache: bool = True) -> AnalysisReport:
    """Analyze ``model`` against ``target`` (a profile name, path, or TargetProfile).

    ``input_shape`` (e.g. "1,96,96,3") fixes the input dimensions a source model leaves dynamic.
    ``firmware``: a linked image of this model whose ``.text + .data`` replaces the flash estimate.
    ``measure="qemu"`` (TFLM targets, needs ``TFLM_ROOT``): build the firmware for the profile's core and
    measure it under QEMU (:mod:`edgekit.measure`): the arena that really allocates, the time per operator
    and the firmware's exact sizes replace the host figures.
    """
    profile = target if isinstance(target, TargetProfile) else load_profile(target)
    elf = _firmware(firmware, profile)
    if measure is not None and measure not in MEASURES:
        raise DataError(f"--measure {measure!r} is not a measurement edgekit makes", "use --measure qemu")
    if measure is not None and not profile.is_tflm:
        raise DataError(f"--measure {measure} builds TFLM firmware; target {profile.name} runs {profile.runtime}",
                        "for phones: edgekit bench --adb")
    if measure == "qemu":
        from edgekit.measure.build import preflight

        preflight(profile)  # TFLM_ROOT, its library for the core, the tools: before any conversion
    if Path(model).suffix == ".mlpackage" and Path(model).is_dir():
        if calib:
            raise DataError(f"--calib is for float source models; {model} is an already converted .mlpackage",
                            "drop --calib")
        return _analyze_mlpackage(Path(model), profile)
    if profile.runtime != "coreml" and Path(model).suffix.lower() in (".keras", ".h5", ".hdf5"):
        # weights far over the flash budget: a verdict from the file's weight datasets, before TensorFlow
        # loads them (a 200 MB model would otherwise take gigabytes and minutes to say the same)
        weights = intake.stored_weight_count(Path(model))
        early = _hopeless_report(str(model), profile, weights, []) if weights else None
        if early is not None:
            return early
    art = intake.load(model, input_shape=input_shape)
    notes: list[str] = list(art.notes)
    try:
        report = _analyze(art, profile, calib, notes, elf)
    finally:
        art.cleanup()
    if measure == "qemu":
        _measure_qemu(report, profile, use_cache, keep_flash=elf is not None)
    return report


def _firmware(path: str | os.PathLike[str] | None, profile: TargetProfile) -> tuple[bytes, ElfSizes] | None:
    if path is None:
        return None
    from edgekit.analysis.elf_size import read_elf

    if not profile.is_tflm:
        raise DataError(f"--firmware is a microcontroller image; target {profile.name} runs {profile.runtime}")
    p = Path(path)
    if p.is_dir():  # a scaffold's build folder (or the project, built in build/)
        found = [c for c in (p / "firmware.elf", p / "build" / "firmware.elf") if c.is_file()]
        if not found:
            raise DataError(f"--firmware {p} is a folder without firmware.elf (nor build/firmware.elf)",
                            "build the scaffold first (cmake -B build ... && cmake --build build), or pass the ELF")
        p = found[0]
    return read_elf(p)


def _measure_qemu(report: AnalysisReport, profile: TargetProfile, use_cache: bool, keep_flash: bool) -> None:
    """Replace the host's arena and the estimated flash with what the firmware does on QEMU's core."""
    from edgekit.analysis.verdict import flash_budget
    from edgekit.measure.qemu import measure_qemu

    if report.deployable is None or report.arena_measured is None:
        why = "; ".join(report.blockers) or "; ".join(n for n in report.notes if "not measured" in n) or "no arena"
        raise MeasurementError(f"--measure qemu: the TFLM interpreter cannot run this model ({why})",
                               "analyze without --measure says what to change")
    try:
        m = measure_qemu(report.deployable, profile, report.ram_bytes, use_cache)
    except TargetRefused as exc:
        # the host's reference kernels ran it; the target's build (optimized kernels) does not: it does not fit
        report.blockers.append(f"the {profile.cpu} firmware: {exc.message}")
        report.budgets = [Budget("runtime", 0, len(report.blockers), "reasons TFLM cannot run it",
                                 "; ".join(report.blockers)) if b.name == "runtime" else b for b in report.budgets]
        report.notes.append(f"measured on QEMU: the firmware built for {profile.cpu} ({profile.kernels}) does not "
                            "run this model, although the host TFLM interpreter (reference kernels) does")
        return
    report.measurement = m
    ram = Budget("ram", profile.ram_bytes, m.arena_min, "bytes",
                 f"tflm-arena measured on QEMU {m.machine} ({m.core}, {m.kernels}): the smallest that allocates")
    lines = {b.name: b for b in report.budgets}
    lines["ram"] = ram
    report.ram_bytes, report.ram_kind = m.arena_min, "tflm-arena (QEMU)"
    if not keep_flash:
        fw = ElfSizes(f"the {m.core} firmware built for QEMU", m.firmware["text"], m.firmware["data"],
                      m.firmware["bss"])
        kind = lines["flash"].note
        lines["flash"] = flash_budget(profile, report.graph, report.flash_bytes, kind, fw)[0]
        report.firmware = fw
    report.budgets = [lines[b.name] for b in report.budgets]
    report.notes = [n for n in report.notes if not n.startswith(("arena measured with the host", "runtime code "))]
    if report.runtime_code is not None:
        est, parts = report.runtime_code.bytes, m.flash_parts
        real = parts["tflm"] + parts["c_library"]
        report.notes.append(f"runtime code: estimated {est:,} B ({report.runtime_code.table}); in this firmware TFLM "
                            f"{parts['tflm']:,} B + C library {parts['c_library']:,} B = {real:,} B "
                            f"({(est - real) / max(real, 1) * 100:+.1f}%)")
    report.notes.append(f"arena and times measured on QEMU {m.machine} ({m.machine_note}), TFLM {m.kernels} "
                        f"({m.tflm_library}){'; from the measurement cache' if m.cached else ''}")
    report.notes.extend(m.notes)


def _check_given_tflite(art: intake.Artifact, graph: Graph, calib: str | None) -> None:
    """A .tflite is analysed as it is: no calibration, and a fixed input shape."""
    from edgekit.stages import quantize

    if calib:
        raise DataError(f"--calib is for float source models; {art.source} is already a .tflite (its "
                        "quantization is fixed, the data would not be used)",
                        "drop --calib, or pass the source model (.keras, SavedModel or .onnx) to convert it")
    if len(graph.inputs) == 1:
        quantize.input_shape(art)  # dynamic dimensions, or an --input-shape that contradicts the model
    elif graph.dynamic_inputs():
        t = graph.dynamic_inputs()[0]
        raise ModelError(f"{art.source}: input {t.name or t.index} {t.shape_text()} has dynamic dimensions; "
                         "a deployable model needs a fixed shape", "re-convert it from the source model with a "
                         "fixed input shape")
    elif art.input_shape is not None:
        raise ModelError(f"--input-shape applies to single-input models; {art.source} has {len(graph.inputs)}")


def _param_count(art: intake.Artifact) -> int | None:
    """The source model's parameter count, without converting it (None when it cannot be had cheaply)."""
    if art.keras_model is not None:
        return int(art.keras_model.count_params())
    if art.float_tflite_cache is not None:
        return read_graph(art.float_tflite_cache).params
    if art.saved_model_dir is not None:
        from math import prod

        from edgekit._tf import tf

        try:
            variables = tf.train.list_variables(str(art.saved_model_dir / "variables" / "variables"))
        except Exception:  # no variables file (constants folded in): the conversion will tell
            return None
        return sum(prod(shape) for name, shape in variables if "OPTIMIZER_SLOT" not in name and shape)
    return None


_BYTES_PER_PARAM = {"int8": 1, "int16x8": 1, "dynamic": 1, "float16": 2, "float32": 4}


def _hopeless_report(source: str, profile: TargetProfile, params: int, notes: list[str]) -> AnalysisReport | None:
    """A verdict before any conversion for a model whose weights alone are FLASH_HOPELESS_FACTOR
    times the flash budget (converting and measuring it would take minutes and gigabytes to say so)."""
    from edgekit.stages import quantize

    mode = quantize.ARTIFACT_MODE.get(profile.artifact, "float32")
    per = _BYTES_PER_PARAM.get(mode, 1)
    estimate = params * per
    if not hopeless(estimate, profile.flash_bytes):
        return None
    notes.append(f"not converted: {params:,} parameters take at least about {estimate:,} B as {mode} "
                 f"({per} B each), {estimate / max(profile.flash_bytes, 1):,.0f}x the flash budget; RAM, "
                 "operators and data types were not analysed")
    return AnalysisReport(
        model=source, target=profile.name, runtime=profile.runtime,
        artifact_kind=f"{profile.artifact} (not converted)", flash_bytes=estimate, ram_bytes=0,
        ram_kind="not measured", graph=Graph(size_bytes=0, tensors=[], layers=[], inputs=[], outputs=[], subgraphs=0),
        budgets=[Budget("flash", profile.flash_bytes, estimate, "bytes",
                        f"estimate: {params:,} parameters x {per} B ({mode})")],
        unsupported_ops=[], findings=[], calibration="none (not converted)", notes=notes, params_estimate=params,
    )


def _analyze(art: intake.Artifact, profile: TargetProfile, calib: str | None,
             notes: list[str], elf: tuple[bytes, ElfSizes] | None = None) -> AnalysisReport:
    from edgekit.stages import quantize

    if profile.runtime == "coreml":
        return _analyze_coreml(art, profile, calib, notes)
    if art.tflite is not None:
        tfl = art.tflite
        graph = read_graph(tfl, where=str(art.source))
        _check_given_tflite(art, graph, calib)
        kind = f"tflite-{graph.quantization}"
        artifact_kind, calib_label = f"{kind} (as given)", "none (model given as .tflite)"
        if kind != profile.artifact:
            notes.append(f"{profile.name} deploys {profile.artifact}; this .tflite is {kind}: run `edgekit fit` "
                         f"on its source model (.keras, SavedModel or .onnx) to get the {profile.artifact} form")
    else:
        quantize.input_shape(art)  # dynamic dimensions are a clear error before any work
        params = _param_count(art)
        early = _hopeless_report(str(art.source), profile, params, notes) if params is not None else None
        if early is not None:
            return early
        tfl, calib_label = _deployable(art, profile, calib, notes)
        graph = read_graph(tfl, where=str(art.source))
        kind = artifact_kind = profile.artifact
    findings = compat.check(graph, profile)
    unsupported = compat.unsupported_ops(graph, profile)
    tflm: TflmAssessment | None = None
    if profile.is_tflm:
        tflm = assess_tflm(tfl, graph, profile)
        ram, ram_kind = tflm.ram_bytes, tflm.ram_kind
        ram_budget = tflm.ram_budget(profile)
        notes.extend(tflm.notes)
    else:
        ram, ram_kind = graph.peak_activation_bytes(), "peak-activation"
        ram_budget = Budget("ram", profile.ram_bytes, ram, "bytes", ram_kind)
        notes.append("RAM is the peak activation memory (sum of live tensors, execution order)")
        if graph.dequantized_weight_bytes:
            notes.append(f"weights apart: {graph.dequantized_weight_bytes:,} B of weights are dequantized to float "
                         "when the interpreter prepares (held like weights, not counted as activations)")
    coverage = compat.delegate_coverage(graph, profile)
    if coverage is not None:
        severity = "" if not coverage.on_cpu else (
            "DOES NOT FIT (require_full_delegation): " if profile.require_full_delegation else "WARNING: ")
        notes.append(severity + coverage.summary())
    blockers = tflm.blockers if tflm is not None else []
    arena = tflm.arena.to_dict() if tflm is not None and tflm.arena is not None else None
    if arena is not None and tflm is not None and tflm.arena is not None:
        arena["memory_plan"] = _memory_plan(tfl, graph, tflm.arena.head_bytes, notes)
    if profile.latency_ms is not None:
        notes.append(f"latency budget {profile.latency_ms} ms is checked by `edgekit bench`, not analyze")
    from edgekit.analysis import runtime_size

    code = runtime_size.estimate(graph.ops, profile) if profile.is_tflm else None
    said = runtime_note(profile, code)
    if said and elf is None:
        notes.append(said)
    fw = None
    if elf is not None:
        blob, fw = elf
        if blob.find(tfl) < 0:
            notes.append(f"{fw.path} does not hold this model's exact bytes (another model, or a copy with an embedded "
                         "memory plan): the model part of its flash is this model's size")
    return AnalysisReport(
        model=str(art.source), target=profile.name, runtime=profile.runtime, artifact_kind=artifact_kind,
        flash_bytes=len(tfl), ram_bytes=ram, ram_kind=ram_kind, graph=graph,
        budgets=budgets(profile, graph, len(tfl), kind, ram_budget, blockers, firmware=fw),
        unsupported_ops=unsupported, findings=findings, calibration=calib_label,
        arena=arena, notes=notes, deployable=tfl, arena_measured=tflm.measured if tflm is not None else None,
        blockers=blockers, runtime_code=code, firmware=fw,
        delegation=coverage.to_dict() if coverage is not None else None,
    )


def _memory_plan(tfl: bytes, graph: Graph, head: int, notes: list[str]) -> dict[str, Any] | None:
    """What edgekit's memory planner would make of this model's non-persistent arena (figures only:
    analyze reports the model as given; fit and codegen embed the plan)."""
    from edgekit.analysis.planner import plan
    from edgekit.stages.memplan import read_offsets

    if read_offsets(tfl) is not None:
        notes.append(f"memory plan: the model carries an offline plan (non-persistent arena {head:,} B as measured)")
        return {"embedded": True}
    try:
        p = plan(graph)
    except EdgekitError as exc:
        notes.append(f"memory plan: not planned ({exc.message})")
        return None
    if p.arena_bytes < head:
        order = ", operators reordered" if p.reordered else ""
        notes.append(f"memory plan: non-persistent arena {head:,} B with TFLM's own planner, {p.arena_bytes:,} B with "
                     f"edgekit's plan (liveness bound {p.bound_bytes:,} B{order}); edgekit fit and codegen embed it")
    else:
        notes.append(f"memory plan: TFLM's own planner already reaches {head:,} B (liveness bound {p.bound_bytes:,} B)")
    return {"embedded": False, "measured_head_bytes": head, **p.to_dict()}


def _analyze_mlpackage(pkg: Path, profile: TargetProfile) -> AnalysisReport:
    """A compiled-for-deployment .mlpackage: its size, and its RAM estimated from the Core ML program's
    activation shapes (needs coremltools, the `convert` extra; without it RAM is reported as not checked)."""
    from edgekit._extras import MissingExtra
    from edgekit.analysis.mlprogram import program_memory
    from edgekit.stages import coreml

    if profile.runtime != "coreml":
        raise EdgekitError(f"{pkg.name} is a Core ML package; target {profile.name} runs {profile.runtime}")
    flash = coreml.package_bytes(pkg)
    graph = Graph(size_bytes=flash, tensors=[], layers=[], inputs=[], outputs=[], subgraphs=1)
    budgets = [Budget("flash", profile.flash_bytes, flash, "bytes", "mlpackage")]
    notes = ["checked: the package's size (flash) and, below, RAM; not checked: operators (Core ML decides "
             "per device which compute unit runs each), latency (measure it in Xcode)"]
    try:
        mem = program_memory(pkg)
    except MissingExtra as exc:
        ram, ram_kind = 0, "not checked"
        notes.append(f"RAM not checked: {exc.message}")
    except Exception as exc:  # a package coremltools cannot read: say so, keep the size verdict
        ram, ram_kind = 0, "not checked"
        notes.append(f"RAM not checked: the Core ML program could not be read ({type(exc).__name__}: {exc})"[:300])
    else:
        ram, ram_kind = mem.peak_activation_bytes, "estimate: peak live activations of the Core ML program"
        budgets.append(Budget("ram", profile.ram_bytes, ram, "bytes", ram_kind))
        notes.append(f"RAM estimated from the program's {mem.operations} operations and their declared shapes "
                     f"and types ({mem.weight_bytes:,} B of weights apart); Core ML may fuse or tile on the device"
                     + ("; some shapes are dynamic and were counted as 1" if mem.dynamic else ""))
    return AnalysisReport(
        model=str(pkg), target=profile.name, runtime=profile.runtime, artifact_kind="mlpackage (as given)",
        flash_bytes=flash, ram_bytes=ram, ram_kind=ram_kind, graph=graph, budgets=budgets, unsupported_ops=[],
        findings=[], calibration="none", notes=notes,
    )


def _analyze_coreml(art: intake.Artifact, profile: TargetProfile, calib: str | None,
                    notes: list[str]) -> AnalysisReport:
    from edgekit.stages import coreml, quantize

    if calib:
        notes.append("--calib ignored: Core ML fp16 conversion needs no calibration")
    with tempfile.TemporaryDirectory(prefix="edgekit-coreml-") as tmp:
        unsupported: list[str] = []
        try:
            pkg = coreml.convert(art, profile, Path(tmp) / "model.mlpackage")
            flash = coreml.package_bytes(pkg)
        except EdgekitError as exc:
            if art.tflite is not None:
                raise
            unsupported = [f"conversion: {exc.message}"]
            flash = 0
    graph = read_graph(quantize.convert(art, "float32"), where=str(art.source))
    ram = graph.peak_activation_bytes() // (2 if profile.compute_precision == "fp16" else 1)
    notes.append("graph table from the float TFLite form; flash is the .mlpackage size; RAM is the "
                 "peak activation memory at the profile's compute precision")
    budgets = [
        Budget("flash", profile.flash_bytes, flash, "bytes", profile.artifact),
        Budget("ram", profile.ram_bytes, ram, "bytes", "peak-activation"),
        Budget("ops", 0, len(unsupported), "unconvertible layers", "; ".join(unsupported)),
    ]
    return AnalysisReport(
        model=str(art.source), target=profile.name, runtime=profile.runtime,
        artifact_kind=profile.artifact, flash_bytes=flash, ram_bytes=ram, ram_kind="peak-activation",
        graph=graph, budgets=budgets, unsupported_ops=unsupported, findings=[],
        calibration="none (fp16 conversion)", notes=notes,
    )
