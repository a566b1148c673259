"""The flash that TFLM's code takes on a Cortex-M for a model's exact operator set: measured, not quoted.

A table per core and kernel flavour (CMSIS-NN or reference) holds what the linker kept, measured with
``tools/gen_tflm_code_size.py`` from a TFLM library build (``arm-none-eabi-gcc``, ``--gc-sections``,
newlib-nano), with the TFLM commit and compiler it came from:

- ``interpreter_bytes``: a program that builds a ``MicroInterpreter``, allocates and invokes, with no
  operator registered, minus the same program without TFLM (start-up code and C library set-up);
- per operator, ``bytes``: what registering that operator alone adds to it (its kernel, CMSIS-NN's
  functions, the C library and soft-float routines it pulls in);
- ``shared``: the input sections that two or more operators pull in (kernel_util helpers, quantization
  utilities, soft-float), by size, and which operators pull each: counted once for a set of operators.

The estimate for a set S is ``interpreter + sum(bytes of S) - sum(shared sections of S counted more than
once)``. ``app_bytes`` is what edgekit's generated firmware adds around the runtime (protocol runner,
board, start-up, vector table): a user's application replaces it, so it is not counted against the
model's budget (a profile's ``reserve.app_flash_bytes`` holds the application), but it is what a
scaffolded firmware's ``.text + .data`` has on top of model + runtime.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgekit.errors import ProfileError
from edgekit.profiles import TargetProfile

SCHEMA_VERSION = 1
BUILTIN_TABLE = Path(__file__).with_name("tflm_code_size.json")
TABLE_ENV = "EDGEKIT_TFLM_CODE_SIZE"
KERNELS = ("cmsis_nn", "reference")
# TFLM Makefile TARGET_ARCH per core, as the cmake scaffold builds it (edgekit.codegen.scaffold.CPU_FLAGS)
TFLM_ARCH = {"cortex-m0plus": "cortex-m0plus", "cortex-m3": "cortex-m3", "cortex-m4": "cortex-m4+fp",
             "cortex-m7": "cortex-m7+fp", "cortex-m33": "cortex-m33", "cortex-m55": "cortex-m55"}
# a core without a table of its own borrows the nearest one's figures, and says so
NEAREST = {"cortex-m3": ("cortex-m4+fp", "cortex-m0plus"), "cortex-m4": ("cortex-m7+fp",),
           "cortex-m7": ("cortex-m4+fp",), "cortex-m33": ("cortex-m4+fp",), "cortex-m55": ("cortex-m33",),
           "cortex-m0plus": ("cortex-m3",)}


@dataclass(frozen=True)
class OpCode:
    bytes: int  # what registering this operator alone adds
    shared: tuple[int, ...] = ()  # indices into the table's shared sections


@dataclass(frozen=True)
class CodeSizeTable:
    arch: str
    kernels: str
    interpreter_bytes: int
    ops: Mapping[str, OpCode]
    shared_bytes: tuple[int, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)  # tflm_commit, compiler, flags, library, ...
    unavailable: Mapping[str, str] = field(default_factory=dict)  # op -> why the library lacks it
    app_bytes: int | None = None
    source: str = ""  # the file it was read from

    @property
    def label(self) -> str:
        commit = str(self.meta.get("tflm_commit", "unknown"))[:10]
        return (f"{self.arch} {self.kernels_label}, TFLM {commit}, {self.meta.get('compiler_short', 'gcc')}")

    @property
    def kernels_label(self) -> str:
        return {"cmsis_nn": "CMSIS-NN", "reference": "reference kernels"}.get(self.kernels, self.kernels)

    def kernel_bytes(self, ops: Iterable[str]) -> tuple[int, dict[str, int], list[str], int]:
        """(kernel bytes of the set, each op's standalone bytes, ops not in the table, bytes shared and
        counted once)."""
        per: dict[str, int] = {}
        missing: list[str] = []
        counted: dict[int, int] = {}
        for op in sorted(set(ops)):
            code = self.ops.get(op)
            if code is None:
                missing.append(op)
                continue
            per[op] = code.bytes
            for i in code.shared:
                counted[i] = counted.get(i, 0) + 1
        saving = sum(self.shared_bytes[i] * (n - 1) for i, n in counted.items())
        return sum(per.values()) - saving, per, missing, saving


@dataclass(frozen=True)
class RuntimeCode:
    """TFLM's code for one model's operators on one core: what counts against flash beside the model."""

    bytes: int
    interpreter_bytes: int
    kernel_bytes: int
    per_op: Mapping[str, int]
    shared_saving: int
    missing: tuple[str, ...]
    table: str  # the table's label: core, kernels, TFLM commit, compiler
    kind: str  # "estimate: ..." (the measured table) or "measured: ..." (a built firmware)
    borrowed_from: str | None = None  # the core whose table stood in for the profile's

    @property
    def note(self) -> str:
        parts = [f"TFLM interpreter {self.interpreter_bytes:,} B + {len(self.per_op)} kernels "
                 f"{self.kernel_bytes:,} B ({self.kind})"]
        if self.missing:
            parts.append(f"not in the table, counted as 0: {', '.join(self.missing)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"bytes": self.bytes, "interpreter_bytes": self.interpreter_bytes,
                             "kernel_bytes": self.kernel_bytes, "per_op": dict(self.per_op),
                             "shared_counted_once": self.shared_saving, "table": self.table, "kind": self.kind}
        if self.missing:
            d["missing_ops"] = list(self.missing)
        if self.borrowed_from:
            d["borrowed_from"] = self.borrowed_from
        return d


def table_from_dict(d: Mapping[str, Any], source: str = "") -> CodeSizeTable:
    try:
        ops = {str(op): OpCode(int(v["bytes"]), tuple(int(i) for i in v.get("shared", ())))
               for op, v in d["ops"].items()}
        shared = tuple(int(b) for b in d.get("shared_bytes", ()))
        table = CodeSizeTable(arch=str(d["arch"]), kernels=str(d["kernels"]),
                              interpreter_bytes=int(d["interpreter_bytes"]), ops=ops, shared_bytes=shared,
                              meta=dict(d.get("meta", {})), unavailable=dict(d.get("unavailable", {})),
                              app_bytes=int(d["app_bytes"]) if d.get("app_bytes") is not None else None,
                              source=source)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProfileError(f"{source or 'code-size table'}: malformed table ({type(exc).__name__}: {exc})",
                           "regenerate it with tools/gen_tflm_code_size.py") from None
    for op, code in ops.items():
        if any(not 0 <= i < len(shared) for i in code.shared) or code.bytes < 0:
            raise ProfileError(f"{source or 'code-size table'}: {table.arch} {op} refers to a shared section "
                               "that is not there", "regenerate it with tools/gen_tflm_code_size.py")
    return table


def table_to_dict(t: CodeSizeTable) -> dict[str, Any]:
    d: dict[str, Any] = {"arch": t.arch, "kernels": t.kernels, "meta": dict(t.meta),
                         "interpreter_bytes": t.interpreter_bytes}
    if t.app_bytes is not None:
        d["app_bytes"] = t.app_bytes
    d["ops"] = {op: {"bytes": c.bytes, **({"shared": list(c.shared)} if c.shared else {})}
                for op, c in sorted(t.ops.items())}
    d["shared_bytes"] = list(t.shared_bytes)
    if t.unavailable:
        d["unavailable"] = dict(sorted(t.unavailable.items()))
    return d


def read_tables(path: Path) -> list[CodeSizeTable]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"code-size table {path} does not exist",
                           f"unset {TABLE_ENV}, or generate it with tools/gen_tflm_code_size.py -o {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"cannot read code-size table {path}: {exc}",
                           "regenerate it with tools/gen_tflm_code_size.py") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise ProfileError(f"{path}: not a version-{SCHEMA_VERSION} code-size table",
                           "regenerate it with tools/gen_tflm_code_size.py")
    tables = data.get("tables")
    if not isinstance(tables, list):
        raise ProfileError(f"{path}: no list of tables", "regenerate it with tools/gen_tflm_code_size.py")
    return [table_from_dict(t, str(path)) for t in tables]


def write_tables(path: Path, tables: Iterable[CodeSizeTable], generator: str) -> None:
    ordered = sorted(tables, key=lambda t: (t.arch, t.kernels))
    data = {"schema_version": SCHEMA_VERSION, "generator": generator,
            "tables": [table_to_dict(t) for t in ordered]}
    text = json.dumps(data, indent=1)
    # one line per list of numbers and per operator: a table reads (and diffs) operator by operator
    text = re.sub(r"\[\s+([-\d,\s]+?)\s+\]", lambda m: "[" + ", ".join(m.group(1).replace(",", " ").split()) + "]",
                  text)
    text = re.sub(r"\{\s+(\"bytes\": \d+)(,)?\s*(\"shared\": \[[^\]]*\])?\s+\}",
                  lambda m: "{" + m.group(1) + (", " + m.group(3) if m.group(3) else "") + "}", text)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)


@lru_cache(maxsize=4)
def _load(user: str) -> tuple[CodeSizeTable, ...]:
    found = list(read_tables(Path(user))) if user else []
    have = {(t.arch, t.kernels) for t in found}
    if BUILTIN_TABLE.is_file():
        found += [t for t in read_tables(BUILTIN_TABLE) if (t.arch, t.kernels) not in have]
    return tuple(found)


def tables() -> tuple[CodeSizeTable, ...]:
    """The measured tables: the file named by EDGEKIT_TFLM_CODE_SIZE first (yours, from your TFLM build),
    then the built-in one for every core and flavour yours does not have."""
    return _load(os.environ.get(TABLE_ENV, ""))


def kernels_of(profile: TargetProfile) -> str:
    return profile.kernels


def find_table(profile: TargetProfile) -> tuple[CodeSizeTable | None, str | None]:
    """The table for the profile's core and kernel flavour: (table, the core it was borrowed for) - the
    second is None when the core has its own table; (None, None) when there is none to use."""
    if not profile.is_tflm:
        return None, None
    arch = TFLM_ARCH.get(profile.cpu)
    if arch is None:
        return None, None
    kernels = kernels_of(profile)
    by_key = {(t.arch, t.kernels): t for t in tables()}
    if (arch, kernels) in by_key:
        return by_key[(arch, kernels)], None
    for other in NEAREST.get(profile.cpu, ()):
        if (other, kernels) in by_key:
            return by_key[(other, kernels)], profile.cpu
    return None, None


def estimate(ops: Iterable[str], profile: TargetProfile) -> RuntimeCode | None:
    """TFLM's code for ``ops`` on ``profile``'s core from the measured table; None when no table applies
    (not a TFLM target, or a core edgekit has no figures for)."""
    table, borrowed = find_table(profile)
    if table is None:
        return None
    kernels, per, missing, saving = table.kernel_bytes(ops)
    kind = f"estimate from the measured table: {table.label}"
    if borrowed:
        kind += f"; no table for {borrowed}, {table.arch}'s figures"
    return RuntimeCode(bytes=table.interpreter_bytes + kernels, interpreter_bytes=table.interpreter_bytes,
                       kernel_bytes=kernels, per_op=per, shared_saving=saving, missing=tuple(missing),
                       table=table.label, kind=kind, borrowed_from=borrowed)
