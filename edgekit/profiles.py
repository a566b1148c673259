"""Target profiles: pure data in TOML files, validated, with explicit inheritance.

A profile file looks like::

    schema_version = 1
    inherit = "cortex-m-base"
    description = "nRF52840 / STM32L4 class"
    [hardware]
    cpu = "cortex-m4"
    clock_hz = 64_000_000
    [budgets]
    flash_bytes = 1_048_576
    ram_bytes = 196_608     # usable contiguous arena, not chip RAM

Profiles are found on a search path: the built-in ``targets/`` folder, then
the folders in ``EDGEKIT_TARGETS_PATH`` (``os.pathsep``-separated), and a
``--target`` argument may also be a path to a ``.toml`` file.  Every resolved
value remembers the file it came from (``edgekit targets show NAME``).
"""

from __future__ import annotations

import difflib
import math
import os
import stat
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit import _paths
from edgekit.errors import ProfileError

SCHEMA_VERSION = 1

RUNTIMES = ("tflm", "litert", "coreml")
ARTIFACTS = (
    "tflite-float32",
    "tflite-float16",
    "tflite-dynamic",
    "tflite-int8",
    "tflite-int16x8",
    "mlpackage-fp16",
)
DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool", "int4")

# section -> key -> (python types accepted, help text). Top-level keys live in "".
SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], str]]] = {
    "": {
        "schema_version": ((int,), "profile schema version; this edgekit reads version 1"),
        "inherit": ((str,), "name of the profile whose values this one starts from"),
        "description": ((str,), "one line shown in `edgekit targets list`"),
        "abstract": ((bool,), "true for base profiles that only exist to be inherited"),
    },
    "runtime": {
        "kind": ((str,), "tflm | litert | coreml"),
        "artifact": ((str,), "deployable artifact: " + " | ".join(ARTIFACTS)),
        "io_dtype": ((str,), "model input/output dtype on the device: int8 | float32"),
        "delegate": ((str,), "LiteRT delegate: none | xnnpack | gpu | nnapi"),
        "threads": ((int,), "interpreter threads on the device"),
        "min_deployment_target": ((str,), "Core ML minimum deployment target, e.g. iOS16"),
        "compute_precision": ((str,), "Core ML compute precision: fp16 | fp32"),
        "compute_units": ((str,), "Core ML compute units: all | cpu_and_ne | cpu_only"),
        "strip_metadata": ((bool,), "drop flatbuffer content the device never reads"),
        "kernels": ((str,), "TFLM kernels the firmware links: cmsis_nn | reference (picks the measured code-size "
                            "table that counts against flash)"),
    },
    "hardware": {
        "arch": ((str,), "instruction set, e.g. armv7e-m, arm64"),
        "cpu": ((str,), "core name, e.g. cortex-m4"),
        "clock_hz": ((int,), "core clock in Hz"),
        "fpu": ((bool,), "hardware floating point"),
        "simd": ((str,), "SIMD extension: none | dsp | helium | neon"),
        "pointer_bytes": ((int,), "pointer size on the target (4 on Cortex-M)"),
        "irqs": ((int,), "external interrupts the vector table has entries for (default: the core's maximum)"),
        "zephyr_board": ((str,), "Zephyr board target for `scaffold --build zephyr`, e.g. nrf52840dk/nrf52840"),
    },
    "memory": {
        "flash_origin": ((int,), "start address of the program flash"),
        "flash_size": ((int,), "bytes of program flash on the chip"),
        "boot_header_size": ((int,), "bytes at the start of flash kept for the chip's boot block before the "
                                     "vector table (RP2040: 256 for the second-stage boot loader)"),
        "ram_origin": ((int,), "start address of the RAM holding stack, .data and .bss"),
        "ram_size": ((int,), "bytes of that RAM region"),
        "arena_origin": ((int,), "optional: start address of a separate RAM region for the tensor arena"),
        "arena_size": ((int,), "optional: bytes of that arena region"),
    },
    "budgets": {
        "flash_bytes": ((int,), "bytes of flash/storage the model may take (TFLM targets: model + TFLM's code; "
                                "default there: memory.flash_size - memory.boot_header_size - "
                                "reserve.app_flash_bytes)"),
        "ram_bytes": ((int,), "usable contiguous RAM for the tensor arena / activations (default on a TFLM target: "
                              "the arena's region - reserve.app_ram_bytes)"),
        "latency_ms": ((int, float), "optional latency budget for one inference"),
    },
    "ops": {
        "allow": ((list,), "builtin operator names the runtime can execute"),
        "allow_all_builtin": ((bool,), "every LiteRT builtin operator is executable"),
        "require_full_delegation": ((bool,), "LiteRT with a GPU/NNAPI delegate: an operator the delegate does not "
                                             "take (it would fall back to the CPU) is a 'does not fit', not a "
                                             "warning"),
        "source": ((str,), "where the operator list comes from"),
        "dtypes": ((list,), "tensor data types the runtime accepts: " + ", ".join(DTYPES)),
    },
    "reserve": {
        "app_flash_bytes": ((int,), "flash the application keeps beside the model and TFLM's code (boot loader, "
                                    "its own code and constants, file systems)"),
        "app_ram_bytes": ((int,), "RAM the application keeps in the region the tensor arena lives in (stack, heap, "
                                  ".data/.bss, its buffers)"),
    },
    "transport": {
        "kind": ((str,), "serial | adb | none (no transport edgekit can bench over, e.g. iOS)"),
        "baud": ((int,), "serial baud rate"),
    },
}


@dataclass(frozen=True)
class MemoryMap:
    """The chip's memory regions (profile section [memory]); the generic linker script is made from it."""

    flash_origin: int
    flash_size: int
    ram_origin: int
    ram_size: int
    boot_header_size: int = 0
    arena_origin: int | None = None
    arena_size: int | None = None

    @property
    def arena_region(self) -> bool:
        return self.arena_origin is not None


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    runtime: str
    artifact: str
    io_dtype: str
    flash_bytes: int
    ram_bytes: int
    dtypes: tuple[str, ...]
    ops: frozenset[str]
    allow_all_builtin: bool
    arch: str = ""
    cpu: str = ""
    clock_hz: int = 0
    fpu: bool = False
    simd: str = "none"
    pointer_bytes: int = 8
    latency_ms: float | None = None
    delegate: str = "none"
    threads: int = 1
    min_deployment_target: str = ""
    compute_precision: str = ""
    compute_units: str = ""
    strip_metadata: bool = False
    require_full_delegation: bool = False
    ops_source: str = ""
    transport: str = "serial"
    baud: int = 115200
    irqs: int | None = None
    zephyr_board: str = ""
    memory: MemoryMap | None = None
    kernels: str = "cmsis_nn"  # TFLM targets: the kernel flavour the firmware links
    app_flash_bytes: int | None = None  # [reserve]: what the application keeps of flash and of the arena's RAM
    app_ram_bytes: int | None = None
    derived: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)  # key -> formula
    path: Path | None = None
    # dotted key -> file that set it (after inheritance)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    values: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_tflm(self) -> bool:
        return self.runtime == "tflm"

    def op_supported(self, op: str) -> bool:
        return self.allow_all_builtin or op in self.ops

    @property
    def partial_delegation(self) -> bool:
        """LiteRT with a GPU or NNAPI delegate whose ``ops.allow`` lists what the delegate takes: the CPU
        runs the rest (every LiteRT builtin), so an operator outside the list is a fallback, not a stop."""
        return (self.runtime == "litert" and self.delegate in ("gpu", "nnapi") and not self.allow_all_builtin)


# ---------------------------------------------------------------- search path


def search_path(extra: Iterable[Path] = ()) -> list[Path]:
    dirs = [_paths.targets_dir()]
    env = os.environ.get("EDGEKIT_TARGETS_PATH", "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += list(extra)
    return dirs


def _index(dirs: Iterable[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.toml")):
            found.setdefault(f.stem, f)  # earlier directories win
    return found


MAX_PROFILE_BYTES = 1 << 20  # a profile is a few hundred bytes; anything this big is not one


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise ProfileError(f"{path} is a directory, not a profile file",
                               "pass a .toml file, or put the directory on EDGEKIT_TARGETS_PATH and use a name")
        if not stat.S_ISREG(st.st_mode):
            raise ProfileError(f"profile {path} is not a regular file", "pass a .toml file")
        if st.st_size > MAX_PROFILE_BYTES:
            raise ProfileError(f"profile {path} is {st.st_size:,} bytes (a profile is at most "
                               f"{MAX_PROFILE_BYTES:,})", "is this the right file?")
        with path.open("rb") as fh:
            data = fh.read(MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        raise ProfileError(f"profile file {path} does not exist") from None
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"profile {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                           "TOML files are UTF-8: re-save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(
            f"malformed profile {path}: {exc}", "check the TOML syntax at that line"
        ) from None
    except RecursionError:
        raise ProfileError(f"malformed profile {path}: values nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ProfileError(f"malformed profile {path}: {_clip(str(exc), 120)}") from None


def _show(text: str, limit: int = 60) -> str:
    """A key or value as it can appear in a one-line message (quoted when it has odd characters)."""
    plain = text.replace("_", "").replace("-", "").replace(".", "").isalnum() and text.isascii()
    return _clip(text if plain else repr(text), limit)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validate(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """Reject unknown keys and wrong types; return a flat dotted-key dict."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            if key not in SCHEMA or key == "":
                raise ProfileError(
                    f"{path}: unknown section [{_show(key)}]",
                    "known sections: " + ", ".join(f"[{s}]" for s in SCHEMA if s),
                )
            section = SCHEMA[key]
            for sub, subval in value.items():
                if sub not in section:
                    close = difflib.get_close_matches(sub, section, n=1)
                    hint = f"did you mean {key}.{close[0]}?" if close else (
                        f"known keys in [{key}]: " + ", ".join(section)
                    )
                    raise ProfileError(f"{path}: unknown key {key}.{_show(sub)}", hint)
                _check_type(path, f"{key}.{sub}", subval, section[sub])
                flat[f"{key}.{sub}"] = subval
        else:
            if key in SCHEMA and key:
                raise ProfileError(f"{path}: {key} must be a table ([{key}]), not {type(value).__name__}",
                                   f"write the keys under a [{key}] header")
            if key not in SCHEMA[""]:
                close = difflib.get_close_matches(key, list(SCHEMA[""]) + list(SCHEMA), n=1)
                hint = f"did you mean {close[0]}?" if close else (
                    "top-level keys: " + ", ".join(SCHEMA[""])
                )
                raise ProfileError(f"{path}: unknown key {_show(key)}", hint)
            _check_type(path, key, value, SCHEMA[""][key])
            flat[key] = value
    version = flat.get("schema_version")
    if version is None:
        raise ProfileError(f"{path}: missing schema_version", f"add `schema_version = {SCHEMA_VERSION}`")
    if version != SCHEMA_VERSION:
        raise ProfileError(
            f"{path}: schema_version = {version} is not supported (this edgekit reads {SCHEMA_VERSION})"
        )
    return flat


def _check_type(path: Path, key: str, value: Any, spec: tuple[tuple[type, ...], str]) -> None:
    types, help_text = spec
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        expected = " or ".join(t.__name__ for t in types)
        raise ProfileError(
            f"{path}: {key} = {_clip(repr(value))} has the wrong type (must be {expected}: {help_text})"
        )
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise ProfileError(f"{path}: {key} must be a list of strings")


# ---------------------------------------------------------------- resolution


def _resolve_raw(
    path: Path, index: dict[str, Path], chain: list[Path], order: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The values of ``path`` after inheritance and the file each came from; ``order`` receives the files
    of the chain, root first."""
    if path in chain:
        cycle = " -> ".join(p.stem for p in [*chain, path])
        raise ProfileError(f"profile inheritance cycle: {cycle}", f"remove one `inherit` in {path}")
    flat = _validate(_read_toml(path), path)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    parent = flat.get("inherit")
    if parent is not None:
        local = _index([path.parent])
        parent_path = local.get(parent) or index.get(parent)
        if parent_path is None:
            raise ProfileError(
                f"{path}: inherit = {parent!r} names no known profile",
                _closest_hint(parent, index),
            )
        values, sources = _resolve_raw(parent_path.resolve(), index, [*chain, path], order)
        values.pop("abstract", None)
        sources.pop("abstract", None)
    for key, value in flat.items():
        if key == "inherit":
            continue
        values[key] = value
        sources[key] = str(path)
    if order is not None:
        order.append(str(path))
    return values, sources


def _closest_hint(name: str, index: Mapping[str, Path]) -> str:
    close = difflib.get_close_matches(name, list(index), n=1)
    known = ", ".join(sorted(n for n in index if not n.endswith("-base")))
    return (f"did you mean {close[0]!r}? " if close else "") + f"known targets: {known}"


def _require(values: Mapping[str, Any], key: str, path: Path) -> Any:
    if key not in values:
        section, _, sub = key.partition(".")
        raise ProfileError(
            f"{path}: missing {key}",
            f"set `{sub} = ...` under [{section}] here or in the profile it inherits",
        )
    return values[key]


CHOICES = {
    "runtime.delegate": ("none", "xnnpack", "gpu", "nnapi"),
    "runtime.compute_precision": ("fp16", "fp32"),
    "runtime.compute_units": ("all", "cpu_and_ne", "cpu_and_gpu", "cpu_only"),
    "runtime.kernels": ("cmsis_nn", "reference"),
    "hardware.simd": ("none", "dsp", "helium", "neon"),
    "transport.kind": ("serial", "adb", "none"),
}
# key -> (smallest allowed, largest allowed, what it is)
RANGES: dict[str, tuple[float, float, str]] = {
    "budgets.flash_bytes": (1, 2**62, "a positive number of bytes"),
    "budgets.ram_bytes": (1, 2**62, "a positive number of bytes"),
    "budgets.latency_ms": (1e-6, 1e9, "a positive, finite number of milliseconds"),
    "hardware.clock_hz": (1, 10**12, "a positive frequency in Hz"),
    "hardware.irqs": (1, 496, "between 1 and 496, the Armv8-M maximum"),
    "runtime.threads": (1, 1024, "at least 1"),
    "transport.baud": (1, 100_000_000, "a positive baud rate"),
    "memory.flash_size": (1, 2**32, "a positive number of bytes"),
    "memory.ram_size": (1, 2**32, "a positive number of bytes"),
    "memory.arena_size": (1, 2**32, "a positive number of bytes"),
    "memory.boot_header_size": (0, 2**32, "a number of bytes >= 0"),
    "memory.flash_origin": (0, 2**32 - 1, "a 32-bit address"),
    "memory.ram_origin": (0, 2**32 - 1, "a 32-bit address"),
    "memory.arena_origin": (0, 2**32 - 1, "a 32-bit address"),
    "reserve.app_flash_bytes": (0, 2**32, "a number of bytes >= 0"),
    "reserve.app_ram_bytes": (0, 2**32, "a number of bytes >= 0"),
}


def _build(name: str, path: Path, values: dict[str, Any], sources: dict[str, str],
           order: list[str] | None = None) -> TargetProfile:
    def bad(key: str, why: str, hint: str | None = None) -> ProfileError:
        return ProfileError(f"{sources.get(key, path)}: {key} = {_clip(repr(values.get(key)))} ({why})", hint)

    runtime = _require(values, "runtime.kind", path)
    if runtime not in RUNTIMES:
        raise bad("runtime.kind", f"must be one of {', '.join(RUNTIMES)}")
    artifact = _require(values, "runtime.artifact", path)
    if artifact not in ARTIFACTS:
        raise bad("runtime.artifact", f"must be one of {', '.join(ARTIFACTS)}")
    derived = _derive_budgets(values, sources, path, order or [])
    dtypes = tuple(_require(values, "ops.dtypes", path))
    for dt in dtypes:
        if dt not in DTYPES:
            raise ProfileError(f"{sources.get('ops.dtypes', path)}: ops.dtypes has {_clip(repr(dt))} "
                               f"(must be among {', '.join(DTYPES)})")
    _require(values, "budgets.flash_bytes", path)
    _require(values, "budgets.ram_bytes", path)
    for key, (low, high, what) in RANGES.items():
        value = values.get(key)
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            raise bad(key, f"must be {what}")
    for key, allowed in CHOICES.items():
        if key in values and values[key] not in allowed:
            raise bad(key, f"must be one of {', '.join(allowed)}")
    if values.get("hardware.pointer_bytes", 8) not in (4, 8):
        raise bad("hardware.pointer_bytes", "must be 4 or 8")
    io_dtype = values.get("runtime.io_dtype", "float32")
    if io_dtype not in ("int8", "float32"):
        raise bad("runtime.io_dtype", "must be int8 or float32")
    ops = frozenset(values.get("ops.allow", []))
    allow_all = bool(values.get("ops.allow_all_builtin", False))
    if not ops and not allow_all:
        raise ProfileError(f"{path}: no operators allowed", "set ops.allow or ops.allow_all_builtin = true")
    memory = _memory(values, sources, path)
    latency = values.get("budgets.latency_ms")
    return TargetProfile(
        name=name,
        description=values.get("description", ""),
        runtime=runtime,
        artifact=artifact,
        io_dtype=io_dtype,
        flash_bytes=int(values["budgets.flash_bytes"]),
        ram_bytes=int(values["budgets.ram_bytes"]),
        latency_ms=float(latency) if latency is not None else None,
        dtypes=dtypes,
        ops=ops,
        allow_all_builtin=allow_all,
        require_full_delegation=bool(values.get("ops.require_full_delegation", False)),
        ops_source=values.get("ops.source", ""),
        arch=values.get("hardware.arch", ""),
        cpu=values.get("hardware.cpu", ""),
        clock_hz=int(values.get("hardware.clock_hz", 0)),
        fpu=bool(values.get("hardware.fpu", False)),
        simd=values.get("hardware.simd", "none"),
        pointer_bytes=int(values.get("hardware.pointer_bytes", 8)),
        delegate=values.get("runtime.delegate", "none"),
        threads=int(values.get("runtime.threads", 1)),
        min_deployment_target=values.get("runtime.min_deployment_target", ""),
        compute_precision=values.get("runtime.compute_precision", ""),
        compute_units=values.get("runtime.compute_units", ""),
        strip_metadata=bool(values.get("runtime.strip_metadata", False)),
        transport=values.get("transport.kind", "serial"),
        baud=int(values.get("transport.baud", 115200)),
        irqs=values.get("hardware.irqs"),
        zephyr_board=values.get("hardware.zephyr_board", ""),
        memory=memory,
        kernels=values.get("runtime.kernels", "cmsis_nn"),
        app_flash_bytes=values.get("reserve.app_flash_bytes"),
        app_ram_bytes=values.get("reserve.app_ram_bytes"),
        derived=derived,
        path=path,
        sources=dict(sources),
        values=dict(values),
    )


def _derive_budgets(values: dict[str, Any], sources: dict[str, str], path: Path, order: list[str]) -> dict[str, str]:
    """Budgets a TFLM profile states as its chip's memory minus what the application reserves.

    ``budgets.flash_bytes`` (model + TFLM's code) = ``memory.flash_size - memory.boot_header_size -
    reserve.app_flash_bytes``; ``budgets.ram_bytes`` (the arena) = the arena's region (``memory.arena_size``,
    else ``memory.ram_size``) ``- reserve.app_ram_bytes``. A budget set explicitly (anywhere in the
    inheritance chain) is kept as it is. Returns key -> formula for the budgets it derived.
    """
    derived: dict[str, str] = {}
    if _memory_complete(values, sources, path) is None:
        return derived
    rules = {
        "budgets.flash_bytes": ("reserve.app_flash_bytes", ["memory.flash_size", "memory.boot_header_size"]),
        "budgets.ram_bytes": ("reserve.app_ram_bytes",
                              ["memory.arena_size" if "memory.arena_size" in values else "memory.ram_size"]),
    }
    for key, (reserve, chip) in rules.items():
        if key in values or reserve not in values or chip[0] not in values:
            continue
        for k in (*chip, reserve):
            value = values.get(k, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                return derived  # the range checks name the bad value
        room = values[chip[0]] - sum(values.get(k, 0) for k in chip[1:])
        terms = " - ".join(k for k in chip if k in values)
        left = room - values[reserve]
        if left <= 0:
            raise ProfileError(f"{sources.get(reserve, path)}: {reserve} = {values[reserve]:,} leaves no "
                               f"{'flash for the model and TFLM' if 'flash' in key else 'RAM for the tensor arena'} "
                               f"({terms} = {room:,} B)", f"lower {reserve}, or set {key} explicitly")
        values[key] = left
        files = [sources[k] for k in (*chip, reserve) if k in sources]
        # the budget comes from the file nearest the leaf among those that set its terms
        sources[key] = max(files, key=lambda f: order.index(f) if f in order else -1) if files else str(path)
        derived[key] = f"{terms} - {reserve}"
    return derived


def _memory_complete(values: Mapping[str, Any], sources: Mapping[str, str], path: Path) -> str | None:
    """None without a [memory] section; else the file to name in errors, once the map is complete."""
    keys = [k for k in values if k.startswith("memory.")]
    if not keys:
        return None
    leaf = str(path.resolve())
    where = leaf if any(sources.get(k) == leaf for k in keys) else sources.get(keys[0], str(path))
    for key in ("memory.flash_origin", "memory.flash_size", "memory.ram_origin", "memory.ram_size"):
        if key not in values:
            raise ProfileError(f"{where}: [memory] without {key}",
                               "a memory map names flash_origin, flash_size, ram_origin and ram_size")
    if ("memory.arena_origin" in values) != ("memory.arena_size" in values):
        raise ProfileError(f"{where}: [memory] needs both arena_origin and arena_size, or neither")
    return where


def _memory(values: Mapping[str, Any], sources: Mapping[str, str], path: Path) -> MemoryMap | None:
    """The [memory] section, checked for completeness and against the budgets; None when absent."""
    where = _memory_complete(values, sources, path)
    if where is None:
        return None
    mem = MemoryMap(flash_origin=values["memory.flash_origin"], flash_size=values["memory.flash_size"],
                    ram_origin=values["memory.ram_origin"], ram_size=values["memory.ram_size"],
                    boot_header_size=values.get("memory.boot_header_size", 0),
                    arena_origin=values.get("memory.arena_origin"), arena_size=values.get("memory.arena_size"))
    regions = [("flash", mem.flash_origin, mem.flash_size), ("ram", mem.ram_origin, mem.ram_size)]
    if mem.arena_origin is not None and mem.arena_size is not None:
        regions.append(("arena", mem.arena_origin, mem.arena_size))
    for region, origin, size in regions:
        if origin + size > 2**32:
            raise ProfileError(f"{where}: memory.{region}_origin + memory.{region}_size = {origin + size:#x} "
                               "runs past the 32-bit address space")
    for i, (a, a0, an) in enumerate(regions):
        for b, b0, bn in regions[i + 1:]:
            if a0 < b0 + bn and b0 < a0 + an:
                raise ProfileError(f"{where}: memory regions {a} ({a0:#x}+{an:#x}) and {b} ({b0:#x}+{bn:#x}) "
                                   "overlap")
    if mem.boot_header_size >= mem.flash_size:
        raise ProfileError(f"{where}: memory.boot_header_size = {mem.boot_header_size} leaves no flash")
    code_bytes = mem.flash_size - mem.boot_header_size
    if values["budgets.flash_bytes"] > code_bytes:
        raise ProfileError(f"{sources.get('budgets.flash_bytes', path)}: budgets.flash_bytes = "
                           f"{values['budgets.flash_bytes']:,} is more than the chip's flash ({code_bytes:,} B "
                           "usable in [memory])", "lower the budget, or set memory.flash_size for your chip")
    arena_room = mem.arena_size if mem.arena_size is not None else mem.ram_size
    if values["budgets.ram_bytes"] > arena_room:
        region = "memory.arena_size" if mem.arena_size is not None else "memory.ram_size"
        raise ProfileError(f"{sources.get('budgets.ram_bytes', path)}: budgets.ram_bytes = "
                           f"{values['budgets.ram_bytes']:,} does not fit the region the arena lives in "
                           f"({region} = {arena_room:,})", f"lower the budget, or set {region} for your chip")
    return mem


def load_profile(name_or_path: str | os.PathLike[str], extra_dirs: Iterable[Path] = ()) -> TargetProfile:
    """Load and fully resolve a profile by name (search path) or by file path."""
    dirs = search_path(extra_dirs)
    index = _index(dirs)
    text = str(name_or_path)
    if not text:
        raise ProfileError("empty target name", _closest_hint("", index))
    if text.endswith(".toml") or os.sep in text or (os.altsep and os.altsep in text) or text not in index:
        path = Path(text)
        if path.is_dir():
            raise ProfileError(f"target {path} is a directory, not a profile file",
                               f"pass one of its .toml files, or set EDGEKIT_TARGETS_PATH={path} and use the "
                               "profile's name")
        if text.endswith(".toml") or os.sep in text or (os.altsep and os.altsep in text):
            if not path.exists():
                raise ProfileError(f"profile file {path} does not exist", "check the path")
            name = path.stem
        else:
            raise ProfileError(f"unknown target {text!r}", _closest_hint(text, index))
    else:
        name = text
        path = index[name]
    order: list[str] = []
    values, sources = _resolve_raw(path.resolve(), index, [], order)
    if values.get("abstract"):
        raise ProfileError(
            f"target {name!r} is an abstract base profile",
            "use a profile that inherits it, e.g. " + ", ".join(list_targets(warn=False)[:3]),
        )
    return _build(name, path, values, sources, order)


def list_targets(extra_dirs: Iterable[Path] = (), warn: bool = True) -> list[str]:
    """Names of every concrete (non-abstract) profile on the search path.

    A profile that does not load (not UTF-8, malformed, invalid values, ...) is left out; with ``warn``, one
    line on stderr names it and says why, so that one broken file never hides the others.
    """
    names = []
    for name, path in sorted(_index(search_path(extra_dirs)).items()):
        try:
            raw = _read_toml(path)
            if raw.get("abstract", False) is True:
                continue
            load_profile(path, extra_dirs)
        except ProfileError as exc:
            if warn:
                print(f"edgekit: warning: skipping target profile {name!r}: {exc}", file=sys.stderr)
            continue
        names.append(name)
    return names


def describe(profile: TargetProfile) -> list[tuple[str, str, str]]:
    """(key, value, source file) rows for `edgekit targets show`."""
    rows = []
    for key in sorted(profile.values):
        value = profile.values[key]
        if isinstance(value, list):
            shown = f"[{len(value)} items] " + ", ".join(map(str, value))
        else:
            shown = repr(value) if isinstance(value, str) else str(value)
        if key in profile.derived:
            shown += f" (= {profile.derived[key]})"
        rows.append((key, shown, profile.sources.get(key, "")))
    return rows
