"""What a model is judged on, decided once for every command (analyze, check, codegen, fit).

- :class:`Budget`: one line of a verdict (limit, used, fits, margin).
- :func:`tflm_ram_budget`: the RAM line for a TFLM target - the arena the firmware reserves
  (:func:`~edgekit.analysis.arena.reserved_arena_bytes` of the measured arena), never the raw
  measurement, so `check` and `codegen` cannot disagree.
- :func:`assess_tflm`: whether the TFLM interpreter can run the model at all (operators, float16,
  hybrid kernels, its own refusal) and, if so, its measured arena. The TFLM child is not started
  for a model it cannot run, nor for one hopelessly over budget.
- :func:`flash_budget`: the flash line. On a TFLM target it counts the model *and* TFLM's code for the
  model's exact operators (:mod:`edgekit.analysis.runtime_size`, measured per core), shown as two parts;
  a built firmware's ``.text + .data`` (:class:`~edgekit.analysis.elf_size.ElfSizes`) replaces both when
  given, against the flash the whole image may take (the budget plus what the application reserves).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgekit import options
from edgekit.analysis import compat, runtime_size
from edgekit.analysis.arena import ArenaMeasurement, TflmRefusal, reserved_arena_bytes
from edgekit.analysis.elf_size import ElfSizes
from edgekit.analysis.graph import Graph
from edgekit.profiles import TargetProfile

HOST_ARENA_NOTE = ("arena measured with the host TFLM interpreter (64-bit pointers); a 32-bit Cortex-M build "
                   "needs slightly less (pointer-sized bookkeeping)")


@dataclass(frozen=True)
class Budget:
    name: str
    limit: int | float
    used: int | float
    unit: str
    note: str = ""
    parts: tuple[tuple[str, int], ...] = ()  # what `used` is made of, e.g. (("model", n), ("runtime code", m))

    @property
    def fits(self) -> bool:
        return self.used <= self.limit

    @property
    def margin(self) -> int | float:
        return self.limit - self.used

    @property
    def parts_text(self) -> str:
        """``model 63,760 B + runtime code 93,564 B``, or "" for a line of one part."""
        if len(self.parts) < 2:
            return ""
        return " + ".join(f"{name} {value:,} B" for name, value in self.parts)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"limit": self.limit, "used": self.used, "fits": self.fits,
                             "margin": self.margin, "unit": self.unit}
        if self.note:
            d["note"] = self.note
        if self.parts:
            d["parts"] = dict(self.parts)
        return d


def tflm_ram_budget(profile: TargetProfile, measured: int) -> Budget:
    """The RAM budget line of a TFLM target for an arena of ``measured`` bytes (host TFLM): what is
    compared is the arena the firmware reserves, ``reserved_arena_bytes(measured)``."""
    pct = round(options.ARENA_MARGIN.value * 100)
    return Budget("ram", profile.ram_bytes, reserved_arena_bytes(measured), "bytes",
                  f"tflm-arena reserved: measured {measured:,} B + {pct}% margin")


@dataclass
class TflmAssessment:
    """The TFLM side of a verdict."""

    ram_bytes: int  # the figure compared with the RAM budget
    ram_kind: str  # "tflm-arena" (the reserved arena) or "peak-activation" (not measured: a lower bound)
    measured: int | None = None  # the arena the host TFLM interpreter allocated
    arena: ArenaMeasurement | None = None
    blockers: list[str] = field(default_factory=list)  # why TFLM cannot run the model (a "does not fit")
    notes: list[str] = field(default_factory=list)
    refused_op: str | None = None

    @property
    def reserved(self) -> int | None:
        return reserved_arena_bytes(self.measured) if self.measured is not None else None

    def ram_budget(self, profile: TargetProfile) -> Budget:
        if self.measured is not None:
            return tflm_ram_budget(profile, self.measured)
        return Budget("ram", profile.ram_bytes, self.ram_bytes, "bytes",
                      "peak-activation: arena not measured, a lower bound")


def hopeless(used: int, limit: int) -> bool:
    """A figure so far over its budget (FLASH_HOPELESS_FACTOR times) that no measurement can change the verdict."""
    return used > options.FLASH_HOPELESS_FACTOR.value * max(limit, 1)


def assess_tflm(model: bytes, graph: Graph, profile: TargetProfile, skip_hopeless: bool = True) -> TflmAssessment:
    """Measure the arena of ``model`` on the TFLM interpreter, if it can run it; else say why not.

    A refusal or crash of the TFLM interpreter (:class:`TflmRefusal`) becomes a blocker with TFLM's
    own reason; degenerate quantization stays an error (the fix is calibration data).
    """
    from edgekit.analysis.arena import measure_arena

    unsupported = compat.unsupported_ops(graph, profile)
    blockers = compat.tflm_blockers(graph, profile)
    peak = graph.peak_activation_bytes()
    why_not = None
    if unsupported:
        why_not = f"TFLM does not register {', '.join(unsupported)}"
    elif blockers:
        why_not = "; ".join(b.split(":")[0] for b in blockers)
    elif not graph.inputs:
        why_not = "the model has no input"
    elif peak > options.ARENA_MAX_BYTES.value:
        why_not = f"its activations alone need {peak:,} B, over EDGEKIT_ARENA_MAX_BYTES"
    elif skip_hopeless and hopeless(len(model), profile.flash_bytes):
        why_not = f"the model is {len(model) / max(profile.flash_bytes, 1):,.0f}x the flash budget"
    elif skip_hopeless and hopeless(peak, profile.ram_bytes):
        why_not = f"its activations alone are {peak / max(profile.ram_bytes, 1):,.0f}x the RAM budget"
    refused_op = None
    if why_not is None:
        try:
            m = measure_arena(model)
        except TflmRefusal as exc:
            blockers.append(exc.message)
            refused_op = exc.op
            why_not = "the TFLM interpreter refused it"
        else:
            return TflmAssessment(reserved_arena_bytes(m.total_bytes), "tflm-arena", m.total_bytes, m, blockers,
                                  [HOST_ARENA_NOTE])
    return TflmAssessment(peak, "peak-activation", blockers=blockers, refused_op=refused_op,
                          notes=[f"arena not measured ({why_not}): RAM shows the peak activation memory, "
                                 "a lower bound"])


def flash_budget(profile: TargetProfile, graph: Graph, model_bytes: int, note: str,
                 firmware: ElfSizes | None = None) -> tuple[Budget, runtime_size.RuntimeCode | None]:
    """The flash line: model bytes, plus on a TFLM target TFLM's code for the model's operators (two parts).

    With ``firmware`` (a linked image of this model), its ``.text + .data`` is what counts, against
    ``budgets.flash_bytes + reserve.app_flash_bytes``: the image holds the application too.
    """
    if firmware is not None:
        room = profile.flash_bytes + (profile.app_flash_bytes or 0)
        where = f"measured: {firmware.path} .text+.data"
        if profile.app_flash_bytes:
            where += f", against the flash budget + {profile.app_flash_bytes:,} B the application reserves"
        return Budget("flash", room, firmware.flash, "bytes", f"{note}; {where}",
                      (("model", model_bytes), ("runtime code + application", firmware.flash - model_bytes))), None
    code = runtime_size.estimate(graph.ops, profile) if profile.is_tflm else None
    if code is None:
        return Budget("flash", profile.flash_bytes, model_bytes, "bytes", note), None
    return Budget("flash", profile.flash_bytes, model_bytes + code.bytes, "bytes", note,
                  (("model", model_bytes), ("runtime code", code.bytes))), code


def runtime_note(profile: TargetProfile, code: runtime_size.RuntimeCode | None) -> str | None:
    """The line a report shows about TFLM's code in the flash figure (None for a non-TFLM target)."""
    if not profile.is_tflm:
        return None
    if code is None:
        return (f"flash counts the model only: no measured TFLM code-size table for core {profile.cpu or '(none)'!r} "
                f"({profile.kernels}); generate one with tools/gen_tflm_code_size.py and set "
                f"{runtime_size.TABLE_ENV}")
    return f"runtime code {code.bytes:,} B: {code.note}"


def budgets(profile: TargetProfile, graph: Graph, flash_bytes: int, flash_note: str, ram: Budget,
            blockers: list[str] | None = None, firmware: ElfSizes | None = None) -> list[Budget]:
    """Every budget line of a verdict on a converted model: flash (the model's ``flash_bytes`` plus, on a
    TFLM target, TFLM's code for its operators), RAM, operators, data types and, for TFLM targets, whether
    the TFLM interpreter can run it."""
    unsupported = compat.unsupported_ops(graph, profile)
    bad_types = compat.constraint_dtypes(graph, profile)
    out = [
        flash_budget(profile, graph, flash_bytes, flash_note, firmware)[0],
        ram,
        Budget("ops", 0, len(unsupported), "unsupported operators", ", ".join(unsupported)),
        Budget("dtypes", 0, len(bad_types), "unsupported data types", ", ".join(bad_types)),
    ]
    if profile.is_tflm:
        found = blockers or []
        out.append(Budget("runtime", 0, len(found), "reasons TFLM cannot run it", "; ".join(found)))
    coverage = compat.delegate_coverage(graph, profile)
    if coverage is not None and profile.require_full_delegation:
        out.append(Budget("delegation", 0, len(coverage.on_cpu), "operators left on the CPU",
                          "; ".join(f"{p.op} ({p.reason})" for p in coverage.on_cpu)))
    return out
