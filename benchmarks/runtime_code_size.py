#!/usr/bin/env python3
"""TFLM's code in the flash budget: the estimate from the measured table against the built firmware.

For each model and each core (and kernel flavour) whose TFLM library is built under TFLM_ROOT, the cmake
scaffold (`edgekit scaffold --build cmake`, its generic board, for that core; RP2040's boot block left
out) is built with arm-none-eabi-gcc, and its flash (.text + .data, as `arm-none-eabi-size` prints them)
is compared with what edgekit estimates: model + TFLM runtime code (the table's interpreter + the model's
kernels, shared code counted once) + the scaffold's application (the table's app_bytes, calibrated on
another, one-layer model). The error is taken on what is not the model, where an error can hide.
Also prints `analyze --measure qemu` figures (arena on the target vs the host, time per inference) for
the cores QEMU runs.

Models: the demo's digits CNN (int8 and float32), an AD-shaped int8 autoencoder (64-8-64), and MLPerf
Tiny's four reference int8 models (with MLPERF_TINY_ROOT).

    TFLM_ROOT=... MLPERF_TINY_ROOT=... .venv/bin/python benchmarks/runtime_code_size.py [--measure]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekit.analysis import runtime_size
from edgekit.analysis.elf_size import read_elf
from edgekit.analysis.graph import read_graph
from edgekit.profiles import load_profile

CORES = ("cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55")
MLPERF = {
    "MLPerf Tiny VWW": "benchmark/training/visual_wake_words/trained_models/vww_96_int8.tflite",
    "MLPerf Tiny KWS": "benchmark/training/keyword_spotting/trained_models/kws_ref_model.tflite",
    "MLPerf Tiny IC": "benchmark/training/image_classification/trained_models/pretrainedResnet_quant.tflite",
    "MLPerf Tiny AD": "benchmark/training/anomaly_detection/trained_models/ad01_int8.tflite",
}


def own_models(tmp: Path) -> dict[str, Path]:
    from edgekit import data, intake
    from edgekit._tf import keras, tf
    from edgekit.demo import train_digits_cnn
    from edgekit.stages import quantize

    model, (xtr, _, _, _) = train_digits_cnn(epochs=3)
    model.save(tmp / "digits.keras")
    np.save(tmp / "calib.npy", xtr[:100])
    art = intake.load(tmp / "digits.keras")
    calib = data.load(tmp / "calib.npy", (1, 8, 8, 1))
    (tmp / "digits_int8.tflite").write_bytes(quantize.convert(art, "int8", calib, "int8"))
    (tmp / "digits_float.tflite").write_bytes(quantize.convert(art, "float32"))
    tf.random.set_seed(0)
    x = np.random.default_rng(0).normal(size=(128, 64)).astype(np.float32)
    ae = keras.Sequential([keras.Input((64,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(64)])
    ae.compile(optimizer="adam", loss="mse")
    ae.fit(x, x, epochs=1, verbose=0)
    ae.save(tmp / "ad.keras")
    np.save(tmp / "ad_calib.npy", x[:32])
    (tmp / "ae_int8.tflite").write_bytes(quantize.convert(intake.load(tmp / "ad.keras"), "int8",
                                                          data.load(tmp / "ad_calib.npy", (1, 64)), "int8"))
    return {"digits CNN int8": tmp / "digits_int8.tflite", "digits CNN float32": tmp / "digits_float.tflite",
            "autoencoder 64-8-64 int8": tmp / "ae_int8.tflite"}


def board_profile(core: str, kernels: str, tmp: Path) -> Path:
    """The core's profile with the kernel flavour, without the chip's boot block (RP2040's boot2), which is
    not part of this comparison. Not named like the profile it inherits (that would be a cycle)."""
    board = tmp / f"board-{core}-{kernels}.toml"
    board.write_text(f'schema_version = 1\ninherit = "{core}"\n[runtime]\nkernels = "{kernels}"\n'
                     "[memory]\nboot_header_size = 0\n")
    return board


def build_flash(model: Path, board: Path, tflm: Path, tmp: Path) -> tuple[int, int]:
    """(.text + .data of the cmake scaffold of ``model`` for ``board``, what of it TFLM and the C library
    take according to the link map)."""
    from edgekit.analysis.linkmap import flash_sections, parse_map
    from edgekit.codegen.scaffold import scaffold
    from edgekit.measure.qemu import TOOLCHAIN_LIBS

    scaffold(model, str(board), "cmake", tmp / "fw", name="m", allow_over_budget=True, plan=False, force=True)
    for cmd in (["cmake", "-S", str(tmp / "fw"), "-B", str(tmp / "b"), f"-DTFLM_ROOT={tflm}"],
                ["cmake", "--build", str(tmp / "b"), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{board.stem} build of {model.name} failed:\n{proc.stdout[-1500:]}"
                             f"{proc.stderr[-1500:]}")
    _, sizes = read_elf(tmp / "b" / "firmware.elf")
    sections = flash_sections(parse_map((tmp / "b" / "firmware.map").read_text(errors="replace")), sizes.sections)
    runtime = sum(n for (obj, _), n in sections.items()
                  if obj.split("(", 1)[0] in ("libtensorflow-microlite.a", *TOOLCHAIN_LIBS))
    return sizes.flash, runtime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure", action="store_true", help="also run analyze --measure qemu on each model")
    ap.add_argument("--kernels", default="cmsis_nn,reference", help="flavours to build (default both)")
    ap.add_argument("--cores", default=",".join(CORES), help="cores to build for (default all)")
    args = ap.parse_args()
    tflm = Path(os.environ.get("TFLM_ROOT", ""))
    if not (tflm / "tensorflow").is_dir():
        print("set TFLM_ROOT to a tflite-micro checkout with Cortex-M libraries built", file=sys.stderr)
        return 2
    tiny = os.environ.get("MLPERF_TINY_ROOT", "")
    commit = subprocess.run(["git", "-C", str(tflm), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    gcc = subprocess.run(["arm-none-eabi-gcc", "--version"], capture_output=True, text=True,
                         check=False).stdout.splitlines()[0]
    print(f"# {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; TFLM {commit}; {gcc}")
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as t:
        tmp = Path(t)
        models = own_models(tmp)
        if tiny:
            models.update({name: Path(tiny) / rel for name, rel in MLPERF.items()})
        print("\n| core | kernels | model | model B | runtime estimate B | + app (table) B | firmware .text+.data "
              "- model B | error | TFLM + C library in the firmware (link map) B | runtime-only error |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        errors, runtime_errors = [], []
        for core in args.cores.split(","):
            for kernels in args.kernels.split(","):
                arch = runtime_size.TFLM_ARCH[core]
                flavour = "_cmsis_nn" if kernels == "cmsis_nn" else ""
                lib = f"gen/cortex_m_generic_{arch}_default{flavour}_gcc/lib/libtensorflow-microlite.a"
                if not (tflm / lib).is_file():
                    continue
                board = board_profile(core, kernels, tmp)
                profile = load_profile(board)
                table, borrowed = runtime_size.find_table(profile)
                if table is None or borrowed or table.kernels != kernels or table.app_bytes is None:
                    print(f"| {core} | {kernels} | (no table) | | | | | | | |")
                    continue
                for name, path in models.items():
                    data = path.read_bytes()
                    code = runtime_size.estimate(read_graph(data).ops, profile)
                    assert code is not None
                    work = tmp / f"{core}-{kernels}-{abs(hash(name))}"
                    work.mkdir()
                    flash, runtime = build_flash(path, board, tflm, work)
                    measured = flash - len(data)
                    est = code.bytes + table.app_bytes
                    err = (est - measured) / measured
                    rerr = (code.bytes - runtime) / runtime
                    errors.append(abs(err))
                    runtime_errors.append(abs(rerr))
                    missing = f" (not in the table: {', '.join(code.missing)})" if code.missing else ""
                    print(f"| {core} | {table.kernels_label} | {name}{missing} | {len(data):,} | {code.bytes:,} | "
                          f"{table.app_bytes:,} | {measured:,} | {err * 100:+.2f}% | {runtime:,} | "
                          f"{rerr * 100:+.2f}% |", flush=True)
        print(f"\nlargest error {max(errors) * 100:.2f}% (runtime only: {max(runtime_errors) * 100:.2f}%) over "
              f"{len(errors)} firmwares")
        if args.measure:
            measure(models, tmp)
    return 0


def measure(models: dict[str, Path], tmp: Path) -> None:
    from edgekit.analysis.arena import reserved_arena_bytes
    from edgekit.analyzer import analyze

    os.environ["EDGEKIT_MEASURE_CACHE_DIR"] = str(tmp / "cache")
    print("\n| core (QEMU machine) | model | host arena (reserved) | target arena | instructions / inference | "
          "operators vs inference | first run | cached |")
    print("|---|---|---|---|---|---|---|---|")
    for core in ("cortex-m0plus", "cortex-m4", "cortex-m7"):
        for name, path in models.items():
            if "float32" in name:
                continue
            t0 = time.perf_counter()
            r = analyze(path, core, measure="qemu")
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            analyze(path, core, measure="qemu")
            again = time.perf_counter() - t0
            m = r.measurement
            host = r.arena_measured or 0
            print(f"| {core} ({m.machine}) | {name} | {host:,} B ({reserved_arena_bytes(host):,} B) | "
                  f"{m.arena_min:,} B | {m.instructions:,} | {m.ops_vs_inference * 100:+.2f}% | {first:.0f} s | "
                  f"{again:.1f} s |", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
