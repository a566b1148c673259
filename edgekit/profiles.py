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
import os
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
    },
    "hardware": {
        "arch": ((str,), "instruction set, e.g. armv7e-m, arm64"),
        "cpu": ((str,), "core name, e.g. cortex-m4"),
        "clock_hz": ((int,), "core clock in Hz"),
        "fpu": ((bool,), "hardware floating point"),
        "simd": ((str,), "SIMD extension: none | dsp | helium | neon"),
        "pointer_bytes": ((int,), "pointer size on the target (4 on Cortex-M)"),
    },
    "budgets": {
        "flash_bytes": ((int,), "bytes of flash/storage the model may take"),
        "ram_bytes": ((int,), "usable contiguous RAM for the tensor arena / activations"),
        "latency_ms": ((int, float), "optional latency budget for one inference"),
    },
    "ops": {
        "allow": ((list,), "builtin operator names the runtime can execute"),
        "allow_all_builtin": ((bool,), "every LiteRT builtin operator is executable"),
        "source": ((str,), "where the operator list comes from"),
        "dtypes": ((list,), "tensor data types the runtime accepts: " + ", ".join(DTYPES)),
    },
    "transport": {
        "kind": ((str,), "serial | adb"),
        "baud": ((int,), "serial baud rate"),
    },
}


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
    ops_source: str = ""
    transport: str = "serial"
    baud: int = 115200
    path: Path | None = None
    # dotted key -> file that set it (after inheritance)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    values: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_tflm(self) -> bool:
        return self.runtime == "tflm"

    def op_supported(self, op: str) -> bool:
        return self.allow_all_builtin or op in self.ops


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


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ProfileError(f"profile file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(
            f"malformed profile {path}: {exc}", "check the TOML syntax at that line"
        ) from None
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror}") from None


def _validate(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """Reject unknown keys and wrong types; return a flat dotted-key dict."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            if key not in SCHEMA or key == "":
                raise ProfileError(
                    f"{path}: unknown section [{key}]",
                    "known sections: " + ", ".join(f"[{s}]" for s in SCHEMA if s),
                )
            section = SCHEMA[key]
            for sub, subval in value.items():
                if sub not in section:
                    close = difflib.get_close_matches(sub, section, n=1)
                    hint = f"did you mean {key}.{close[0]}?" if close else (
                        f"known keys in [{key}]: " + ", ".join(section)
                    )
                    raise ProfileError(f"{path}: unknown key {key}.{sub}", hint)
                _check_type(path, f"{key}.{sub}", subval, section[sub])
                flat[f"{key}.{sub}"] = subval
        else:
            if key not in SCHEMA[""]:
                close = difflib.get_close_matches(key, list(SCHEMA[""]) + list(SCHEMA), n=1)
                hint = f"did you mean {close[0]}?" if close else (
                    "top-level keys: " + ", ".join(SCHEMA[""])
                )
                raise ProfileError(f"{path}: unknown key {key}", hint)
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
            f"{path}: {key} = {value!r} has the wrong type (must be {expected}: {help_text})"
        )
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise ProfileError(f"{path}: {key} must be a list of strings")


# ---------------------------------------------------------------- resolution


def _resolve_raw(
    path: Path, index: dict[str, Path], chain: list[Path]
) -> tuple[dict[str, Any], dict[str, str]]:
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
        values, sources = _resolve_raw(parent_path.resolve(), index, [*chain, path])
        values.pop("abstract", None)
        sources.pop("abstract", None)
    for key, value in flat.items():
        if key == "inherit":
            continue
        values[key] = value
        sources[key] = str(path)
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


def _build(name: str, path: Path, values: dict[str, Any], sources: dict[str, str]) -> TargetProfile:
    runtime = _require(values, "runtime.kind", path)
    if runtime not in RUNTIMES:
        raise ProfileError(f"{path}: runtime.kind = {runtime!r} (must be one of {', '.join(RUNTIMES)})")
    artifact = _require(values, "runtime.artifact", path)
    if artifact not in ARTIFACTS:
        raise ProfileError(f"{path}: runtime.artifact = {artifact!r} (must be one of {', '.join(ARTIFACTS)})")
    dtypes = tuple(_require(values, "ops.dtypes", path))
    for dt in dtypes:
        if dt not in DTYPES:
            raise ProfileError(f"{path}: ops.dtypes has {dt!r} (must be among {', '.join(DTYPES)})")
    for key in ("budgets.flash_bytes", "budgets.ram_bytes"):
        if _require(values, key, path) <= 0:
            raise ProfileError(f"{path}: {key} = {values[key]} (must be a positive number of bytes)")
    io_dtype = values.get("runtime.io_dtype", "float32")
    if io_dtype not in ("int8", "float32"):
        raise ProfileError(f"{path}: runtime.io_dtype = {io_dtype!r} (must be int8 or float32)")
    ops = frozenset(values.get("ops.allow", []))
    allow_all = bool(values.get("ops.allow_all_builtin", False))
    if not ops and not allow_all:
        raise ProfileError(f"{path}: no operators allowed", "set ops.allow or ops.allow_all_builtin = true")
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
        path=path,
        sources=dict(sources),
        values=dict(values),
    )


def load_profile(name_or_path: str | os.PathLike[str], extra_dirs: Iterable[Path] = ()) -> TargetProfile:
    """Load and fully resolve a profile by name (search path) or by file path."""
    dirs = search_path(extra_dirs)
    index = _index(dirs)
    text = str(name_or_path)
    if text.endswith(".toml") or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise ProfileError(f"profile file {path} does not exist")
        name = path.stem
    else:
        name = text
        found = index.get(name)
        if found is None:
            raise ProfileError(f"unknown target {name!r}", _closest_hint(name, index))
        path = found
    values, sources = _resolve_raw(path.resolve(), index, [])
    if values.get("abstract"):
        raise ProfileError(
            f"target {name!r} is an abstract base profile",
            "use a profile that inherits it, e.g. " + ", ".join(list_targets()[:3]),
        )
    return _build(name, path, values, sources)


def list_targets(extra_dirs: Iterable[Path] = ()) -> list[str]:
    """Names of every concrete (non-abstract) profile on the search path."""
    names = []
    for name, path in sorted(_index(search_path(extra_dirs)).items()):
        try:
            raw = _read_toml(path)
        except ProfileError:
            names.append(name)  # listed so that `show` reports the error
            continue
        if not raw.get("abstract", False):
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
        rows.append((key, shown, profile.sources.get(key, "")))
    return rows
