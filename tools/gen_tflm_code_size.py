#!/usr/bin/env python3
"""Measure TFLM's code size per operator from a TFLM library build: the table edgekit counts against flash.

    TFLM_ROOT=/path/to/tflite-micro python tools/gen_tflm_code_size.py                # every library built
    python tools/gen_tflm_code_size.py --arch cortex-m4+fp --kernels cmsis_nn -o my_table.json
    python tools/gen_tflm_code_size.py --arch cortex-m4+fp --ops CONV_2D,SOFTMAX --check   # compare

For each library found in $TFLM_ROOT/gen (built with TFLM's Makefile, TARGET=cortex_m_generic; CMSIS-NN
with OPTIMIZED_KERNEL_DIR=cmsis_nn, reference kernels without), it compiles a small program
(tools/tflm_code_size/harness.cc) that reads a model, builds a MicroInterpreter, allocates and invokes,
and links it with ``--gc-sections`` and newlib-nano once with no operator, then once per operator the
checkout's MicroMutableOpResolver can register. The ELF sizes (what ``arm-none-eabi-size`` prints) give
the interpreter's fixed cost and each operator's bytes; the link maps give the input sections two or more
operators share, so that a set of operators counts them once. ``--app-model M.tflite`` also builds
edgekit's cmake scaffold of M for each core and records what the generated firmware adds around the
runtime (protocol runner, board, start-up).

Without ``-o`` the built-in table (edgekit/analysis/tflm_code_size.json) is updated: the tables measured
replace the ones for the same core and flavour; the others stay. Use ``-o FILE`` and
``EDGEKIT_TFLM_CODE_SIZE=FILE`` for figures from your own TFLM build and compiler.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekit.analysis.elf_size import read_elf  # noqa: E402
from edgekit.analysis.linkmap import flash_sections, parse_map  # noqa: E402
from edgekit.analysis.runtime_size import (  # noqa: E402
    BUILTIN_TABLE,
    CodeSizeTable,
    OpCode,
    read_tables,
    write_tables,
)

HARNESS = Path(__file__).resolve().parent / "tflm_code_size"
# -mcpu flags per TFLM TARGET_ARCH: the cmake scaffold's (edgekit.codegen.scaffold.CPU_FLAGS)
ARCHES = ("cortex-m0plus", "cortex-m3", "cortex-m4+fp", "cortex-m7+fp", "cortex-m33", "cortex-m55")
LIB = "gen/cortex_m_generic_{arch}_default{flavour}_gcc/lib/libtensorflow-microlite.a"
FLAVOURS = {"cmsis_nn": "_cmsis_nn", "reference": ""}
PROFILE_OF = {"cortex-m0plus": "cortex-m0plus", "cortex-m3": "cortex-m4", "cortex-m4+fp": "cortex-m4",
              "cortex-m7+fp": "cortex-m7", "cortex-m33": "cortex-m33", "cortex-m55": "cortex-m55"}
APP_FLAGS = ["-Os", "-ffunction-sections", "-fdata-sections"]  # as the cmake scaffold compiles its sources
CXX_FLAGS = ["-std=c++17", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics"]
LINK_FLAGS = ["-Wl,--gc-sections", "--specs=nano.specs", "--specs=nosys.specs"]


def cpu_flags(arch: str) -> list[str]:
    from edgekit.codegen.scaffold import CPU_FLAGS

    for flags, tflm_arch in CPU_FLAGS.values():
        if tflm_arch == arch:
            return flags.split()
    raise SystemExit(f"no compiler flags for TARGET_ARCH={arch}")


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)


def resolver_methods(tflm: Path) -> dict[str, str]:
    """op -> MicroMutableOpResolver method, read from the checkout's header (names only)."""
    text = (tflm / "tensorflow/lite/micro/micro_mutable_op_resolver.h").read_text()
    pairs = re.findall(r"TfLiteStatus (Add\w+)\((?:[^{}]*)\)\s*\{\s*return AddBuiltin\(\s*BuiltinOperator_(\w+)", text)
    return {op: method for method, op in pairs}


def compiler_version(cc: str) -> str:
    return run([cc, "--version"]).stdout.splitlines()[0].strip()


def tflm_commit(tflm: Path) -> str:
    head = run(["git", "-C", str(tflm), "rev-parse", "HEAD"]).stdout.strip() or "unknown"
    dirty = run(["git", "-C", str(tflm), "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    return head + ("-modified" if dirty else "")


class Measure:
    """Links of the harness against one library, keyed input sections from each link map."""

    def __init__(self, tflm: Path, arch: str, kernels: str, lib: Path, work: Path, jobs: int) -> None:
        self.tflm, self.arch, self.kernels, self.lib, self.work, self.jobs = tflm, arch, kernels, lib, work, jobs
        self.flags = cpu_flags(arch)
        downloads = tflm / "tensorflow/lite/micro/tools/make/downloads"
        self.includes = [f"-I{tflm}", f"-I{downloads}/flatbuffers/include", f"-I{downloads}/gemmlowp",
                         f"-I{downloads}/ruy", f"-I{work}"]
        self.defines = ["-DTF_LITE_STATIC_MEMORY"] + (["-DCMSIS_NN"] if kernels == "cmsis_nn" else [])

    def compile_harness(self, methods: dict[str, str]) -> dict[str, str]:
        """Compile harness.cc with every method the header has; a method the compiler rejects is dropped."""
        methods = dict(methods)
        for _ in range(5):
            (self.work / "ops.inc").write_text("".join(f"EDGEKIT_OP({op}, {m})\n" for op, m in sorted(methods.items())))
            proc = run(["arm-none-eabi-g++", *self.flags, *APP_FLAGS, *CXX_FLAGS, *self.defines, *self.includes,
                        "-c", str(HARNESS / "harness.cc"), "-o", str(self.work / "harness.o")])
            if proc.returncode == 0:
                return methods
            bad = set(re.findall(r"has no member named '(Add\w+)'", proc.stderr))
            drop = [op for op, m in methods.items() if m in bad]
            if not drop:
                raise SystemExit(f"harness.cc does not compile for {self.arch}:\n{proc.stderr[-3000:]}")
            for op in drop:
                del methods[op]
        raise SystemExit("harness.cc: too many rounds of dropping resolver methods")

    def link(self, name: str, op: str | None, empty: bool = False) -> tuple[int, dict[tuple[str, str], int]] | str:
        """(flash bytes, flash input sections) of one program, or the linker's complaint."""
        obj = self.work / f"{name}.o"
        if empty:
            src, objs = HARNESS / "empty.c", [str(obj)]
        else:
            src, objs = HARNESS / "add_ops.c", [str(self.work / "harness.o"), str(obj)]
        proc = run(["arm-none-eabi-gcc", *self.flags, *APP_FLAGS, *([f"-DEDGEKIT_OP={op}"] if op else []),
                    "-c", str(src), "-o", str(obj)])
        if proc.returncode != 0:
            return proc.stderr.strip()[-500:]
        elf, mapfile = self.work / f"{name}.elf", self.work / f"{name}.map"
        libs = [] if empty else [str(self.lib)]
        proc = run(["arm-none-eabi-g++", *self.flags, *objs, *libs, "-lm", *LINK_FLAGS, f"-Wl,-Map={mapfile}",
                    "-o", str(elf)])
        if proc.returncode != 0:
            undefined = re.findall(r"undefined reference to `([^']+)'", proc.stderr)
            return ("undefined: " + ", ".join(sorted(set(undefined))[:3])) if undefined else proc.stderr[-500:]
        _, sizes = read_elf(elf)
        sections = flash_sections(parse_map(mapfile.read_text(), str(mapfile)), sizes.sections)
        for f in (elf, mapfile, obj):
            f.unlink()
        return sizes.flash, sections

    def table(self, ops_filter: set[str] | None) -> CodeSizeTable:
        methods = self.compile_harness(resolver_methods(self.tflm))
        if ops_filter:
            methods = {op: m for op, m in methods.items() if op in ops_filter}
        empty = self.link("empty", None, empty=True)
        base = self.link("base", None)
        if isinstance(empty, str) or isinstance(base, str):
            said = empty if isinstance(empty, str) else base
            raise SystemExit(f"{self.arch} {self.kernels}: the harness does not link: {said}")
        base_flash, base_secs = base
        results: dict[str, tuple[int, dict[tuple[str, str], int]] | str] = {}
        with concurrent.futures.ThreadPoolExecutor(self.jobs) as pool:
            futures = {op: pool.submit(self.link, f"op_{op}", op) for op in sorted(methods)}
            for op, fut in futures.items():
                results[op] = fut.result()
        extra: dict[str, dict[tuple[str, str], int]] = {}
        ops: dict[str, int] = {}
        unavailable: dict[str, str] = {}
        for op, res in results.items():
            if isinstance(res, str):
                unavailable[op] = f"{methods[op]}() does not link against this library ({res})"
                continue
            flash, secs = res
            ops[op] = flash - base_flash
            extra[op] = {k: v for k, v in secs.items() if k not in base_secs}
        counts = Counter(k for secs in extra.values() for k in secs)
        shared_keys = sorted(k for k, n in counts.items() if n >= 2)
        index = {k: i for i, k in enumerate(shared_keys)}
        sizes = {k: max(extra[op][k] for op in extra if k in extra[op]) for k in shared_keys}
        codes = {op: OpCode(ops[op], tuple(sorted(index[k] for k in extra[op] if k in index))) for op in ops}
        meta = {"tflm_commit": tflm_commit(self.tflm), "compiler": compiler_version("arm-none-eabi-gcc"),
                "compiler_short": "gcc " + compiler_version("arm-none-eabi-gcc").split()[-2],
                "library": str(self.lib.relative_to(self.tflm)),
                "library_sha256": hashlib.sha256(self.lib.read_bytes()).hexdigest(),
                "flags": " ".join(self.flags + APP_FLAGS + LINK_FLAGS) + " (the program; the library as TFLM's "
                         "Makefile built it)",
                "empty_program_bytes": empty[0], "harness_bytes": base_flash}
        return CodeSizeTable(self.arch, self.kernels, base_flash - empty[0], codes,
                             tuple(sizes[k] for k in shared_keys), meta, unavailable)


def app_bytes(table: CodeSizeTable, tflm: Path, lib: Path, model: Path, work: Path) -> tuple[int, dict[str, object]]:
    """What edgekit's cmake scaffold adds around model + runtime on this core: its firmware's flash minus
    the model and minus the table's estimate for the model's operators."""
    from edgekit.analysis.graph import read_graph
    from edgekit.codegen.scaffold import scaffold

    profile = work / "app-core.toml"
    profile.write_text(f'schema_version = 1\ninherit = "{PROFILE_OF[table.arch]}"\n'
                       f'[runtime]\nkernels = "{table.kernels}"\n[memory]\nboot_header_size = 0\n')
    project, build = work / "app-fw", work / "app-build"
    scaffold(model, str(profile), "cmake", project, name="app", allow_over_budget=True, force=True)
    var = "TFLM_LIB_" + re.sub(r"[^A-Za-z0-9_]", "_", table.arch)
    for cmd in (["cmake", "-S", str(project), "-B", str(build), f"-DTFLM_ROOT={tflm}", f"-D{var}={lib}"],
                ["cmake", "--build", str(build), "-j2"]):
        proc = run(cmd)
        if proc.returncode != 0:
            raise SystemExit(f"the scaffold for {table.arch} does not build:\n{proc.stdout[-2000:]}"
                             f"{proc.stderr[-2000:]}")
    data = (project / "edgekit" / "model.tflite").read_bytes()
    _, sizes = read_elf(build / "firmware.elf")
    ops = read_graph(data).ops
    kernels, _, missing, _ = table.kernel_bytes(ops)
    if missing:
        raise SystemExit(f"--app-model uses {', '.join(missing)}, not measured for {table.arch}")
    shutil.rmtree(project)
    shutil.rmtree(build)
    return sizes.flash - len(data) - table.interpreter_bytes - kernels, {
        "app_model": f"{model.name} ({len(data):,} B, {', '.join(ops)})", "app_firmware_flash": sizes.flash}


def auto_app_model(work: Path) -> Path:
    """A one-layer int8 model (16 -> FULLY_CONNECTED -> 4), the same bytes every run (seeded weights)."""
    import numpy as np

    from edgekit import data, intake
    from edgekit._tf import keras
    from edgekit.stages import quantize

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(4)])
    model.save(work / "app.keras")
    x = np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32)
    np.save(work / "calib.npy", x)
    tfl = quantize.convert(intake.load(work / "app.keras"), "int8", data.load(work / "calib.npy", (1, 16)), "int8")
    (work / "app.tflite").write_bytes(tfl)
    return work / "app.tflite"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tflm-root", default=os.environ.get("TFLM_ROOT", ""), help="tflite-micro checkout (TFLM_ROOT)")
    ap.add_argument("--arch", action="append", choices=ARCHES, help="TFLM TARGET_ARCH (default: every one built)")
    ap.add_argument("--kernels", action="append", choices=sorted(FLAVOURS), help="kernel flavour (default: both)")
    ap.add_argument("--ops", help="only these operators (comma-separated), e.g. to check a few quickly")
    ap.add_argument("--app-model", help="a .tflite whose cmake scaffold calibrates the firmware's app_bytes, or "
                    "'auto': a one-layer int8 model made here (16 inputs, FULLY_CONNECTED, 4 outputs; needs "
                    "edgekit's convert extra)")
    ap.add_argument("-o", "--output", type=Path, help=f"write here instead of updating {BUILTIN_TABLE.name}")
    ap.add_argument("--check", action="store_true", help="compare with the built-in table instead of writing")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="links in parallel (default 2)")
    args = ap.parse_args()
    if not args.tflm_root:
        print("set TFLM_ROOT (or --tflm-root) to a tflite-micro checkout with a Cortex-M library built",
              file=sys.stderr)
        return 2
    tflm = Path(args.tflm_root).resolve()
    if shutil.which("arm-none-eabi-gcc") is None:
        print("arm-none-eabi-gcc is not installed (Debian: gcc-arm-none-eabi)", file=sys.stderr)
        return 2
    wanted = [(a, k) for a in (args.arch or ARCHES) for k in (args.kernels or sorted(FLAVOURS))]
    found = [(a, k, tflm / LIB.format(arch=a, flavour=FLAVOURS[k])) for a, k in wanted]
    found = [f for f in found if f[2].is_file()]
    if not found:
        print(f"no TFLM library for {', '.join(f'{a} {k}' for a, k in wanted)} under {tflm}/gen: build one with "
              "TFLM's Makefile (see the cmake scaffold's CMakeLists.txt)", file=sys.stderr)
        return 2
    ops_filter = {o.strip() for o in args.ops.split(",")} if args.ops else None
    measured: list[CodeSizeTable] = []
    for arch, kernels, lib in found:
        with tempfile.TemporaryDirectory(prefix="edgekit-codesize-") as tmp:
            print(f"measuring {arch} {kernels} ({lib.relative_to(tflm)}) ...", file=sys.stderr, flush=True)
            table = Measure(tflm, arch, kernels, lib, Path(tmp), max(1, args.jobs)).table(ops_filter)
            if args.app_model:
                model = auto_app_model(Path(tmp)) if args.app_model == "auto" else Path(args.app_model)
                app, info = app_bytes(table, tflm, lib, model, Path(tmp))
                table = CodeSizeTable(table.arch, table.kernels, table.interpreter_bytes, table.ops,
                                      table.shared_bytes, {**table.meta, **info}, table.unavailable, app)
            print(f"  interpreter {table.interpreter_bytes:,} B, {len(table.ops)} operators, "
                  f"{len(table.unavailable)} not in the library, {len(table.shared_bytes)} shared sections"
                  + (f", scaffold app {table.app_bytes:,} B" if table.app_bytes is not None else ""), file=sys.stderr)
            measured.append(table)
    if args.check:
        return check(measured)
    target = args.output or BUILTIN_TABLE
    keep = [t for t in read_tables(target) if (t.arch, t.kernels) not in {(m.arch, m.kernels) for m in measured}] \
        if target.is_file() and ops_filter is None else []
    write_tables(target, keep + measured, "tools/gen_tflm_code_size.py")
    print(f"wrote {len(measured)} table(s) to {target}", file=sys.stderr)
    return 0


def check(measured: list[CodeSizeTable]) -> int:
    """Each measured figure equals the built-in table's (same TFLM commit and compiler: same bytes)."""
    builtin = {(t.arch, t.kernels): t for t in read_tables(BUILTIN_TABLE)}
    bad = 0
    for m in measured:
        b = builtin.get((m.arch, m.kernels))
        if b is None:
            print(f"{m.arch} {m.kernels}: not in the built-in table", file=sys.stderr)
            bad += 1
            continue
        if b.meta.get("library_sha256") != m.meta.get("library_sha256"):
            print(f"{m.arch} {m.kernels}: note: a different library build than the table's", file=sys.stderr)
        if m.interpreter_bytes != b.interpreter_bytes:
            print(f"{m.arch} {m.kernels}: interpreter {m.interpreter_bytes} B, table {b.interpreter_bytes} B",
                  file=sys.stderr)
            bad += 1
        for op, code in m.ops.items():
            if op not in b.ops or b.ops[op].bytes != code.bytes:
                print(f"{m.arch} {m.kernels} {op}: {code.bytes} B, table {b.ops[op].bytes if op in b.ops else '-'}",
                      file=sys.stderr)
                bad += 1
    print("built-in table is current" if not bad else f"{bad} figure(s) differ", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
