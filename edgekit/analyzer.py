"""`analyze`: does this model fit this target - flash, RAM, operators, data types - and by how much."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit import data as data_mod
from edgekit import intake
from edgekit.analysis import compat
from edgekit.analysis.graph import Graph, read_graph
from edgekit.errors import EdgekitError
from edgekit.profiles import TargetProfile, load_profile


@dataclass(frozen=True)
class Budget:
    name: str
    limit: int | float
    used: int | float
    unit: str
    note: str = ""

    @property
    def fits(self) -> bool:
        return self.used <= self.limit

    @property
    def margin(self) -> int | float:
        return self.limit - self.used

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"limit": self.limit, "used": self.used, "fits": self.fits,
                             "margin": self.margin, "unit": self.unit}
        if self.note:
            d["note"] = self.note
        return d


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
            "arena_bytes": self.ram_bytes if self.ram_kind == "tflm-arena" else None,
            "ram_bytes": self.ram_bytes,
            "ram_kind": self.ram_kind,
            "params": g.params,
            "macs": g.macs,
            "ops": g.ops,
            "dtypes": g.dtypes,
            "unsupported_ops": self.unsupported_ops,
            "unsupported": [{"constraint": f.constraint, "reason": f.reason, "items": list(f.items)}
                            for f in self.findings],
            "budgets": {b.name: b.to_dict() for b in self.budgets},
            "calibration": self.calibration,
            "arena": self.arena,
            "layers": [
                {"index": la.index, "op": la.op, "inputs": [list(s) for s in la.input_shapes],
                 "outputs": [list(s) for s in la.output_shapes], "params": la.params,
                 "macs": la.macs, "weight_bytes": la.weight_bytes}
                for la in g.layers
            ],
            "notes": self.notes,
        }


def _deployable(art: intake.Artifact, profile: TargetProfile, calib_path: str | None,
                notes: list[str]) -> tuple[bytes, str]:
    """Convert ``art`` the way ``profile`` deploys it; returns (tflite bytes, calibration label)."""
    from edgekit.stages import quantize

    if art.tflite is not None:
        if calib_path:
            notes.append("--calib ignored: the model is already a .tflite file")
        return art.tflite, "none (model given as .tflite)"
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
                     "not representative; sizes and arena are")
    return quantize.convert(art, mode, calib, profile.io_dtype), label


def analyze(model: str | os.PathLike[str], target: str | TargetProfile,
            calib: str | None = None) -> AnalysisReport:
    """Analyze ``model`` against ``target`` (a profile name, path, or TargetProfile)."""
    profile = target if isinstance(target, TargetProfile) else load_profile(target)
    if Path(model).suffix == ".mlpackage" and Path(model).is_dir():
        return _analyze_mlpackage(Path(model), profile)
    art = intake.load(model)
    notes: list[str] = list(art.notes)
    try:
        return _analyze(art, profile, calib, notes)
    finally:
        art.cleanup()


def _analyze(art: intake.Artifact, profile: TargetProfile, calib: str | None,
             notes: list[str]) -> AnalysisReport:
    findings: list[compat.Finding] = []
    if profile.runtime == "coreml":
        return _analyze_coreml(art, profile, calib, notes)
    tfl, calib_label = _deployable(art, profile, calib, notes)
    graph = read_graph(tfl, where=str(art.source))
    findings = compat.check(graph, profile)
    unsupported = compat.unsupported_ops(graph, profile)
    arena_info: dict[str, Any] | None = None
    if profile.is_tflm:
        if unsupported:
            raise_unsupported = ", ".join(unsupported)
            ram = graph.peak_activation_bytes()
            ram_kind = "peak-activation"
            notes.append(f"arena not measured: TFLM does not register {raise_unsupported}; "
                         "RAM shows the peak activation memory instead")
        else:
            from edgekit.analysis.arena import measure_arena

            m = measure_arena(tfl)
            ram, ram_kind = m.total_bytes, "tflm-arena"
            arena_info = m.to_dict()
            notes.append("arena measured with the host TFLM interpreter (64-bit pointers); a 32-bit "
                         "Cortex-M build needs slightly less (pointer-sized bookkeeping)")
    else:
        ram, ram_kind = graph.peak_activation_bytes(), "peak-activation"
        notes.append("RAM is the peak activation memory (sum of live tensors, execution order)")
    budgets = [
        Budget("flash", profile.flash_bytes, len(tfl), "bytes", profile.artifact),
        Budget("ram", profile.ram_bytes, ram, "bytes", ram_kind),
        Budget("ops", 0, len(unsupported), "unsupported operators", ", ".join(unsupported)),
        Budget("dtypes", 0, len(compat.constraint_dtypes(graph, profile)), "unsupported data types",
               ", ".join(compat.constraint_dtypes(graph, profile))),
    ]
    if profile.latency_ms is not None:
        notes.append(f"latency budget {profile.latency_ms} ms is checked by `edgekit bench`, not analyze")
    return AnalysisReport(
        model=str(art.source), target=profile.name, runtime=profile.runtime,
        artifact_kind=profile.artifact if art.tflite is None else "tflite (as given)",
        flash_bytes=len(tfl), ram_bytes=ram, ram_kind=ram_kind, graph=graph, budgets=budgets,
        unsupported_ops=unsupported, findings=findings, calibration=calib_label, arena=arena_info,
        notes=notes, deployable=tfl,
    )


def _analyze_mlpackage(pkg: Path, profile: TargetProfile) -> AnalysisReport:
    """A compiled-for-deployment .mlpackage: only its size can be checked without Core ML."""
    from edgekit.stages import coreml

    if profile.runtime != "coreml":
        raise EdgekitError(f"{pkg.name} is a Core ML package; target {profile.name} runs {profile.runtime}")
    flash = coreml.package_bytes(pkg)
    graph = Graph(size_bytes=flash, tensors=[], layers=[], inputs=[], outputs=[], subgraphs=1)
    return AnalysisReport(
        model=str(pkg), target=profile.name, runtime=profile.runtime, artifact_kind="mlpackage (as given)",
        flash_bytes=flash, ram_bytes=0, ram_kind="not measured", graph=graph,
        budgets=[Budget("flash", profile.flash_bytes, flash, "bytes", "mlpackage")], unsupported_ops=[],
        findings=[], calibration="none", notes=["an .mlpackage is checked for size only (no graph analysis)"],
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
