"""Command line: argument parsing only. The ONE place that maps errors to exit codes.

Exit codes: 0 fits / success, 1 does not fit, 2 error (one line; --debug for the traceback).
Nothing heavy is imported at start-up: TensorFlow, coremltools and onnx2tf load on first use.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from edgekit.errors import EdgekitError

EXIT_OK, EXIT_OVER, EXIT_ERROR = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse's own convention)
        self.exit(EXIT_ERROR, f"edgekit: error: {message} (see `{self.prog} --help`)\n")


class _VersionAction(argparse.Action):
    """--version, read from the installed metadata only when asked (importlib.metadata costs ~0.1-0.2 s of
    every command's start-up otherwise)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"edgekit {_version()}")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edgekit", description="Take a trained model to phones and microcontrollers.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--version", action=_VersionAction, nargs=0, help="show edgekit's version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("targets", help="list target profiles or show one resolved")
    tsub = t.add_subparsers(dest="targets_command", metavar="ACTION", parser_class=_Parser)
    tsub.add_parser("list", help="list every target profile on the search path")
    show = tsub.add_parser("show", help="show a profile's resolved values and the file each came from")
    show.add_argument("name", help="profile name or path to a .toml file")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument("--ops-doc", action="store_true", help="print the supported-operators document")

    a = sub.add_parser("analyze", help="does MODEL fit TARGET: flash, RAM, operators, data types")
    a.add_argument("model", help=".keras, .h5, SavedModel directory, .tflite or .onnx")
    a.add_argument("--target", "-t", required=True, help="profile name (edgekit targets list) or .toml path")
    a.add_argument("--calib", help="calibration data (.npy, .npz with x/y, or an image folder)")
    a.add_argument("--input-shape", metavar="DIMS",
                   help="fix dynamic input dimensions, e.g. 1,96,96,3 (batch first) or 96,96,3")
    _measure_args(a)
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.add_argument("-o", "--output", help="also write report.txt, report.json and a self-contained report.html "
                   "(per-layer memory bars, tensors live at the peak, budgets) into this directory")
    a.add_argument("--force", action="store_true", help="replace an output directory edgekit wrote before")

    f = sub.add_parser("fit", help="compress and convert MODEL to fit TARGET within an accuracy tolerance")
    f.add_argument("model", help=".keras, .h5, SavedModel directory or .onnx (the float source model)")
    f.add_argument("--target", "-t", required=True, help="profile name or .toml path")
    f.add_argument("--eval", required=True, dest="eval_data",
                   help="evaluation data (.npz x/y; without labels - .npy, .npz without y, an image folder - for "
                        "--metric agreement / mse-to-float)")
    f.add_argument("--calib", help="calibration data (.npy, .npz, image folder); default: eval samples")
    f.add_argument("--train", help="training data (same formats as --eval; labels optional: without them the float "
                   "model's outputs are the targets): level 2 fine-tunes the clustered candidates on it, level 3 "
                   "(required) distills its changed architectures from the original model")
    f.add_argument("--max-drop", type=_non_negative, default=1.0,
                   help="largest allowed drop of the first metric (top1/top5/f1/auc/agreement: points; default 1.0)")
    f.add_argument("--metric", default="top1",
                   help="top1 (default), top5, f1 (macro), auc (binary or anomaly scores), mse, mae, agreement "
                        "(top-1 agreement with the float model, no labels), mse-to-float, or module:function; "
                        "several comma-separated (top1,f1): all reported, the first governs --max-drop")
    f.add_argument("--optimize", choices=["size", "latency", "ram"],
                   help="what the winner minimizes (default: latency for phones, size otherwise)")
    f.add_argument("--latency", choices=["model", "host"], default="model",
                   help="latency figure to rank by: model = deterministic per-runtime cost model (default, the "
                        "same artifact every run); host = LiteRT timed on this host (CPU phone targets only)")
    f.add_argument("--level", type=int, default=1,
                   help="1 = post-training quantization ladder (default); 2 = adds mixed precision driven by the "
                        "per-layer error, weights below 8 bits (INT4, LUT, palettization) and weight clustering "
                        "before quantization (fine-tuned with --train); 3 = adds structured pruning and low-rank "
                        "factorization, distilled from the original with --train, chosen by a search")
    f.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="level 3: stop the search after this many minutes (in all) and report the best so far")
    f.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="level 3: candidate fine-tunes run in N worker processes at once (default 1)")
    f.add_argument("--candidates", help="comma-separated ladder steps to try (default: the whole ladder): "
                   "TFLM float32,int16x8,int8,int8-per-tensor (level 2: mixed-16x8,mixed-float,int4-keep-worst,"
                   "int4,lut-4bit,cluster16-int4,cluster16-lut-4bit,cluster32-lut-5bit,cluster64-lut-6bit); "
                   "LiteRT float32,float16,dynamic,int8 (level 2: mixed-float,int4-weights,cluster16-int4-weights); "
                   "Core ML fp16,"
                   "linear-int8,palettize-8bit,palettize-6bit,palettize-4bit,palettize-2bit,prune-50 (level 2, "
                   "iOS 18: palettize-4bit-grouped,palettize-3bit-grouped,linear-int4-block)")
    f.add_argument("-o", "--output", required=True, help="output directory (written atomically)")
    f.add_argument("--force", action="store_true", help="replace an existing output directory")
    f.add_argument("--no-cache", action="store_true", help="ignore and do not write the candidate cache")
    f.add_argument("--json", action="store_true", help="print report.json instead of the table")
    f.add_argument("--input-shape", metavar="DIMS",
                   help="fix dynamic input dimensions, e.g. 1,96,96,3 (batch first) or 96,96,3")
    f.add_argument("--device", metavar="PORT|adb|qemu",
                   help="measure the finalists there and rank by that (the report shows estimate vs measurement): "
                        "qemu = the firmware for the target's core under QEMU ($TFLM_ROOT; instruction counts); adb "
                        "= a phone with --benchmark-binary; a serial port or URL = a board, each finalist put there "
                        "by --flash-cmd. Without it, Cortex-M candidates are ranked on QEMU when the ranking needs a "
                        "latency and $TFLM_ROOT allows, else by the estimate (labelled)")
    f.add_argument("--flash-cmd", metavar="CMD",
                   help="--device PORT: the command that puts a finalist on the board, {model} its .tflite (e.g. "
                        "'make -C fw MODEL={model} flash')")
    f.add_argument("--benchmark-binary", help="--device adb: TFLite's benchmark_model built for the phone")
    f.add_argument("--serial", help="--device adb: the phone's serial (needed when several are attached)")
    f.add_argument("--baud", type=_whole(1), help="--device PORT: baud rate (default: the profile's)")

    c = sub.add_parser("codegen", help="C array, model settings and op resolver for a TFLM target")
    c.add_argument("model", help="the deployable .tflite (e.g. from edgekit fit)")
    c.add_argument("--target", "-t", required=True, help="TFLM profile name or .toml path")
    c.add_argument("-o", "--output", required=True, help="output directory (written atomically)")
    c.add_argument("--name", help="C identifier stem (default: the file name, sanitized)")
    c.add_argument("--section", help="place the model array in this linker section, e.g. .model_data")
    c.add_argument("--labels", help="class labels, one per line, in output order")
    c.add_argument("--allow-over-budget", action="store_true", help="generate even if the model does not fit")
    c.add_argument("--force", action="store_true", help="replace an existing output directory")
    c.add_argument("--no-plan", action="store_true",
                   help="keep the model's bytes as given: do not embed a verified memory plan (smaller arena)")

    sc = sub.add_parser("scaffold", help="a complete firmware or app project around MODEL")
    sc.add_argument("model", help=".tflite (cmake, arduino, zephyr, android) or .mlpackage (ios)")
    sc.add_argument("--target", "-t", required=True, help="profile name or .toml path")
    sc.add_argument("--build", "-b", required=True, choices=["cmake", "arduino", "zephyr", "android", "ios"],
                    help="project kind")
    sc.add_argument("-o", "--output", required=True, help="output directory (written atomically)")
    sc.add_argument("--name", help="C identifier stem (default: the file name, sanitized)")
    sc.add_argument("--labels", help="class labels, one per line, in output order")
    sc.add_argument("--section", help="linker section for the model array")
    sc.add_argument("--allow-over-budget", action="store_true", help="generate even if the model does not fit")
    sc.add_argument("--force", action="store_true", help="replace an existing output directory")
    sc.add_argument("--no-plan", action="store_true",
                    help="keep the model's bytes as given: do not embed a verified memory plan (smaller arena)")
    sc.add_argument("--mlperf-model", choices=["ic01", "kws01", "vww01", "ad01"],
                    help="firmware: answer as this MLPerf Tiny benchmark (m-model-[ID]) and take its input as "
                         "its reference firmware does (ic01/vww01 uint8 pixels, ad01 float32, kws01 int8); "
                         "default: none (m-model-[NAME], raw input tensor bytes)")
    sc.add_argument("--zephyr-uart", metavar="LABEL",
                    help="zephyr: the devicetree node label of the UART the protocol uses (default: the board's "
                         "zephyr,console UART)")

    be = sub.add_parser("bench", help="on-device latency: a board over serial (MLPerf Tiny runner protocol), "
                        "QEMU, or an Android phone over adb (--adb)")
    be.add_argument("model", help="the deployed .tflite, or a scaffolded project directory (edgekit-project.json)")
    be.add_argument("--target", "-t", help="profile name or .toml path (default: the project's)")
    where = be.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial port or pyserial URL (/dev/ttyACM0, socket://host:port, rfc2217://...)")
    where.add_argument("--qemu", metavar="BUILD_DIR", help="run the qemu scaffold's firmware.elf under qemu-system-arm")
    where.add_argument("--adb", action="store_true", help="an Android phone over adb, with TFLite's benchmark_model")
    be.add_argument("--serial", help="adb device serial (needed when several are attached)")
    be.add_argument("--benchmark-binary", help="TFLite benchmark_model built for the phone (with --adb)")
    be.add_argument("--big-cores", action="store_true",
                    help="pin benchmark_model (taskset) to the phone's cores with the highest maximum frequency")
    be.add_argument("--baud", type=_whole(1), help="baud rate (default: the profile's)")
    be.add_argument("--runs", type=_whole(1), default=50, help="timed inferences, per-inference method (default 50)")
    be.add_argument("--warmup", type=_whole(0), default=5, help="warm-up inferences (default 5)")
    be.add_argument("--method", choices=["auto", "per-inference", "window"], default="auto",
                    help="per-inference: `infer 1 0` per run; window: MLPerf Tiny's runner method, `infer N W` "
                         "windows of at least --window-seconds (default auto: per-inference with edgekit "
                         "firmware, window with plain MLPerf Tiny devices)")
    be.add_argument("--windows", type=_whole(1), default=5, help="windows with --method window (default 5)")
    be.add_argument("--window-seconds", type=_seconds, default=10.0,
                    help="shortest window with --method window, in device seconds (default 10, as MLPerf Tiny)")
    be.add_argument("--input", help="input sample (.npy/.npz; default: a seeded random input)")
    be.add_argument("-o", "--output",
                    help="write bench.json, latency.svg and report.html here (--adb: bench.json, report.txt)")
    be.add_argument("--force", action="store_true", help="replace an existing output directory")
    be.add_argument("--json", action="store_true", help="print one JSON object")

    ds = sub.add_parser("device-sim", help="a device emulator on a pseudo-terminal (prints its path)")
    ds.add_argument("model", help="the .tflite the emulated device runs (on the TFLM host interpreter)")
    ds.add_argument("--mlperf-model", choices=["ic01", "kws01", "vww01", "ad01"],
                    help="act as MLPerf Tiny's firmware for this benchmark model: `profile` names it and `db` "
                         "takes its input convention (default: none, the model's raw input bytes)")
    ds.add_argument("--no-extensions", action="store_true", help="behave as a plain MLPerf Tiny device")
    ds.add_argument("--reset-after", type=_whole(0), default=0,
                    help="reboot every N commands (fault injection; 0 = never)")
    ds.add_argument("--garbage", action="store_true", help="emit noise and split lines (fault injection)")
    ds.add_argument("--silent", action="store_true", help="never answer (fault injection)")
    ds.add_argument("--wrong-hash", action="store_true", help="report another model's hash (fault injection)")
    ds.add_argument("--corrupt-output", action="store_true", help="flip an output bit (fault injection)")
    ds.add_argument("--stop-after", type=_seconds, help="exit after this many seconds")

    k = sub.add_parser("check", help="build-step gate: does MODEL fit TARGET (exit 0 fits, 1 over, 2 error)")
    k.add_argument("model", help=".tflite, .mlpackage, .keras, .h5, SavedModel directory or .onnx")
    k.add_argument("--target", "-t", required=True, help="profile name or .toml path")
    k.add_argument("--calib", help="calibration data for a float model")
    k.add_argument("--input-shape", metavar="DIMS",
                   help="fix dynamic input dimensions, e.g. 1,96,96,3 (batch first) or 96,96,3")
    _measure_args(k)
    k.add_argument("--json", action="store_true", help="print one JSON object")

    cf = sub.add_parser("config", help="every EDGEKIT_* setting: its value, where it came from, what it does")
    cf.add_argument("--json", action="store_true", help="print one JSON object")

    ca = sub.add_parser("cache", help="the fit cache: where it is and how big (info), or empty it (clear)")
    ca.add_argument("action", choices=["info", "clear"], help="info: path, entries, bytes, limit; clear: remove "
                    "every entry (only edgekit's own)")
    ca.add_argument("--json", action="store_true", help="print one JSON object")

    co = sub.add_parser("completion", help="print a shell completion script (bash or zsh)")
    co.add_argument("shell", choices=["bash", "zsh"], help="e.g. `eval \"$(edgekit completion bash)\"` in ~/.bashrc")

    d = sub.add_parser("demo", help="the embedded default: a digits CNN fitted to cortex-m4, a phone and an iPhone")
    d.add_argument("--target", "-t", action="append",
                   help="target profile (repeatable; default cortex-m4, android-arm64-cpu, ios-ane)")
    d.add_argument("-o", "--output", help="keep each target's artifact and report under this directory")
    d.add_argument("--force", action="store_true", help="replace existing output directories")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    _conventions(sub)
    return p


EXITS = {  # every subcommand's help ends with its exit codes (docs/exit-codes.md has the whole table)
    "targets": "0 listed or shown; 2 unknown or invalid profile",
    "analyze": "0 fits every budget; 1 does not fit (the table says which budget, by how much); 2 error",
    "fit": "0 a winner meets every budget within --max-drop; 1 nothing fits (the closest is written); 2 error",
    "codegen": "0 written; 1 does not fit (nothing written; --allow-over-budget to generate anyway); 2 error",
    "scaffold": "0 written; 1 does not fit (nothing written; --allow-over-budget to generate anyway); 2 error",
    "bench": "0 done, within the latency budget or with none; 1 over the profile's latency_ms; 2 error "
             "(including a device output that differs from the TFLM host interpreter)",
    "device-sim": "0 ended by edgekit-exit or --stop-after; 2 error",
    "check": "0 fits; 1 does not fit; 2 error",
    "config": "0 listed; 2 an EDGEKIT_* setting has an invalid value",
    "cache": "0 done; 2 error",
    "completion": "0 printed",
    "demo": "0 every target fits; 1 at least one does not; 2 error",
}


def _conventions(sub: Any) -> None:
    """What every subcommand has: --debug after the subcommand too, and its exit codes in its help."""
    for name, parser in sub.choices.items():
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show tracebacks on errors")
        parser.epilog = (f"exit codes: {EXITS[name]}; 130/143 interrupted or terminated"
                         if name in EXITS else None)


def _measure_args(p: argparse.ArgumentParser) -> None:
    """analyze's and check's options that replace estimates with measurements (TFLM targets)."""
    p.add_argument("--measure", choices=["qemu"],
                   help="qemu: build the firmware for the target's core against $TFLM_ROOT and run it under "
                        "qemu-system-arm -icount shift=0: the arena that really allocates, time per operator and "
                        "the firmware's exact flash replace the host figures (builds cached by model and target)")
    p.add_argument("--firmware", metavar="ELF|DIR",
                   help="a linked firmware of this model (the ELF, or a built scaffold's build folder): its "
                        ".text+.data replaces the estimated model + runtime code in the flash budget")
    p.add_argument("--no-cache", action="store_true", help="with --measure: build and measure afresh")


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgekit")
    except PackageNotFoundError:
        return "0+unknown"


def _cmd_targets(args: argparse.Namespace) -> int:
    from edgekit import profiles

    if args.targets_command in (None, "list"):
        from edgekit.report.text import human_bytes, table

        rows: list[tuple[object, ...]] = []
        for name in profiles.list_targets():
            try:
                pr = profiles.load_profile(name)
                rows.append((name, pr.runtime, pr.artifact, human_bytes(pr.flash_bytes),
                             human_bytes(pr.ram_bytes), pr.description))
            except EdgekitError as exc:
                rows.append((name, "ERROR", "", "", "", str(exc)))
        print(table(["target", "runtime", "artifact", "flash", "ram", "description"], rows, "lllrr"))
        return EXIT_OK
    pr = profiles.load_profile(args.name)
    if args.ops_doc:
        from edgekit.analysis.compat import supported_ops_markdown

        print(supported_ops_markdown(pr))
        return EXIT_OK
    described = profiles.describe(pr)
    if args.json:
        print(json.dumps({"name": pr.name, "values": dict(pr.values), "sources": dict(pr.sources)},
                         indent=2, default=str))
        return EXIT_OK
    print(f"{pr.name}: {pr.description}")
    width = max(len(k) for k, _, _ in described)
    for key, value, source in described:
        if len(value) > 90:
            value = value[:87] + "..."
        print(f"  {key.ljust(width)}  {value}    [{os.path.relpath(source) if source else ''}]")
    return EXIT_OK


def _prestart_tflm(args: argparse.Namespace) -> None:
    """A .tflite for a TFLM target will be measured in the TFLM child: start it before the heavier imports,
    so that its start-up overlaps them (check's cold start)."""
    if not str(args.model).lower().endswith(".tflite"):
        return
    from edgekit.profiles import load_profile

    if load_profile(args.target).is_tflm:
        from edgekit.tflm.worker import prestart

        prestart()


def _cmd_analyze(args: argparse.Namespace) -> int:
    if args.output is not None:
        from edgekit.codegen.render import check_output

        check_output(args.output, args.force, inputs=[args.model, args.calib])
    _prestart_tflm(args)
    from edgekit.analyzer import analyze
    from edgekit.report.text import render_analysis

    report = analyze(args.model, args.target, calib=args.calib, input_shape=args.input_shape, firmware=args.firmware,
                     measure=args.measure, use_cache=not args.no_cache)
    if args.output is not None:
        from edgekit.codegen.render import write_tree
        from edgekit.report.html import analysis_html

        write_tree(args.output, {"report.txt": render_analysis(report) + "\n",
                                 "report.json": json.dumps(report.to_dict(), indent=2) + "\n",
                                 "report.html": analysis_html(report)},
                   args.force, inputs=[args.model, args.calib], command="analyze")
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(render_analysis(report))
    return EXIT_OK if report.fits else EXIT_OVER


def _candidates(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        from edgekit.errors import DataError

        raise DataError(f"--candidates {text!r} names no ladder step", "e.g. --candidates int8 or int16x8,int8")
    return names


def _cmd_fit(args: argparse.Namespace) -> int:
    from edgekit.fitting import fit
    from edgekit.fitting.measured import Device

    device = (Device(args.device, benchmark_binary=args.benchmark_binary, adb_serial=args.serial,
                     flash_cmd=args.flash_cmd, baud=args.baud) if args.device else None)
    result = fit(args.model, args.target, eval_data=args.eval_data, calib=args.calib, max_drop=args.max_drop,
                 metric=args.metric, goal=args.optimize, level=args.level, out_dir=args.output, latency=args.latency,
                 force=args.force, use_cache=not args.no_cache, quiet=args.json, input_shape=args.input_shape,
                 only=_candidates(args.candidates), train=args.train, device=device, time_budget=args.time_budget,
                 jobs=args.jobs)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        from edgekit.report.fit_report import render_text

        print(render_text(result))
    return EXIT_OK if result.fits else EXIT_OVER


def _cmd_codegen(args: argparse.Namespace) -> int:
    from edgekit.codegen.generate import codegen

    r = codegen(args.model, args.target, args.output, name=args.name, section=args.section, labels=args.labels,
                allow_over_budget=args.allow_over_budget, force=args.force, plan=not args.no_plan)
    print(f"wrote {r.out_dir}/: {', '.join(r.files)}")
    for note in r.notes:
        print(f"  {note}")
    print(f"  {r.size:,} B model array, {len(r.ops)} ops ({', '.join(r.ops)}), arena {r.arena_bytes:,} B "
          f"(measured {r.arena_measured:,} B on the host TFLM + margin)")
    return EXIT_OK


def _cmd_scaffold(args: argparse.Namespace) -> int:
    from edgekit.codegen.scaffold import scaffold

    r = scaffold(args.model, args.target, args.build, args.output, name=args.name, labels=args.labels,
                 section=args.section, allow_over_budget=args.allow_over_budget, force=args.force,
                 mlperf_model=args.mlperf_model, zephyr_uart=args.zephyr_uart, plan=not args.no_plan)
    print(f"wrote {r.out_dir}/ ({r.build}, {len(r.files)} files; see edgekit-project.json)")
    for note in r.notes:
        print(f"  {note}")
    return EXIT_OK


def _whole(minimum: int) -> Any:
    """argparse type for bench/device-sim counts: a whole number >= ``minimum``."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} must be >= {minimum}")
        return value

    return convert


def _seconds(text: str) -> float:
    """argparse type for bench/device-sim durations: a finite number of seconds > 0."""
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text} must be a number of seconds > 0")
    return value


def _cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgekit.bench.report import render_text, write_report
    from edgekit.bench.runner import bench, load_project, mismatch
    from edgekit.errors import DataError
    from edgekit.profiles import load_profile

    model = Path(args.model)
    target = args.target
    if model.is_dir():
        project_target, model = load_project(model)
        target = target or project_target
        args.model = str(model)
    elif not model.exists():
        from edgekit.errors import ModelError

        raise ModelError(f"model file {model} does not exist", "pass the .tflite the firmware was generated from, "
                         "or the scaffolded project directory")
    if not target:
        raise DataError("--target is required unless MODEL is a scaffolded project directory")
    profile = load_profile(target)
    if args.output is not None:
        from edgekit.codegen.render import check_output

        check_output(args.output, args.force, inputs=[args.model, args.input])
    if args.adb:
        return _bench_adb(args, profile)
    transport: Any
    if args.qemu:
        from edgekit.transports.qemu import QemuTransport

        transport = QemuTransport(Path(args.qemu))
        kind = "virtual time (QEMU -icount shift=0: instruction-proportional, not board ms)"
    else:
        from edgekit.transports.serial_port import SerialTransport

        transport = SerialTransport(args.port, args.baud or profile.baud)
        kind = "device"
    result = bench(args.model, profile, transport, runs=args.runs, warmup=args.warmup, input_path=args.input,
                   time_kind=kind, method=args.method, windows=args.windows, window_seconds=args.window_seconds,
                   progress=_bench_progress() if not args.json else None)
    if args.output is not None:
        write_report(result, Path(args.output), args.force)
    print(json.dumps(result.to_dict(), indent=2) if args.json else render_text(result))
    if mismatch(result):
        print(f"edgekit: error: device output differs from the TFLM host interpreter: {result.checks['output']}",
              file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OVER if result.within_budget is False else EXIT_OK


def _bench_progress() -> Any:
    """Progress on a terminal's stderr (one rewritten line), at most every 0.2 s; nothing when piped."""
    import time

    if not sys.stderr.isatty():
        return None
    last = [0.0]

    def show(i: int, total: int, text: str) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and i != total:
            return
        last[0] = now
        head = f"bench {i}/{total}" if total else "bench"
        print(f"\r{head}: {text}".ljust(80)[:120], end="\n" if total and i == total else "", file=sys.stderr,
              flush=True)

    return show


def _bench_adb(args: argparse.Namespace, profile: Any) -> int:
    from edgekit.bench.adb_bench import bench_adb, render_text
    from edgekit.errors import DataError

    if not args.benchmark_binary:
        raise DataError("--adb needs --benchmark-binary PATH (TFLite's benchmark_model for the phone)")
    r = bench_adb(args.model, profile, args.benchmark_binary, serial=args.serial, runs=args.runs,
                  warmup=args.warmup, big_cores=args.big_cores)
    if args.output is not None:
        from edgekit.codegen.render import write_tree

        write_tree(args.output, {"bench.json": json.dumps(r.to_dict(), indent=2) + "\n",
                                 "report.txt": render_text(r) + "\n"},
                   args.force, inputs=[args.model], command="bench")
    print(json.dumps(r.to_dict(), indent=2) if args.json else render_text(r))
    return EXIT_OVER if r.within_budget is False else EXIT_OK


def _cmd_device_sim(args: argparse.Namespace) -> int:
    from edgekit.sim.device import SimOptions, run_device_sim

    opts = SimOptions(no_extensions=args.no_extensions, reset_after=args.reset_after, garbage=args.garbage,
                      silent=args.silent, wrong_hash=args.wrong_hash, corrupt_output=args.corrupt_output,
                      mlperf_model=args.mlperf_model)
    return run_device_sim(args.model, opts, args.stop_after)


def _cmd_check(args: argparse.Namespace) -> int:
    _prestart_tflm(args)
    from edgekit.analyzer import analyze

    report = analyze(args.model, args.target, calib=args.calib, input_shape=args.input_shape, firmware=args.firmware,
                     measure=args.measure, use_cache=not args.no_cache)
    if args.json:
        d = report.to_dict()
        d.pop("layers", None)
        print(json.dumps(d, indent=2))
    else:
        over = [f"{b.name} {b.used:,} > {b.limit:,} by {-b.margin:,}"
                f"{' (' + '; '.join(x for x in (b.parts_text, b.note) if x) + ')' if b.parts_text or b.note else ''}"
                if b.unit == "bytes" and b.name == "flash" else
                f"{b.name} {b.used:,} > {b.limit:,}{' (' + b.note + ')' if b.note else ''}"
                for b in report.budgets if not b.fits]
        status = "ok" if report.fits else "OVER BUDGET: " + "; ".join(over)
        if report.measurement is not None:
            ram = f"ram {report.ram_bytes:,} B arena measured on QEMU {report.measurement.machine}"
        elif report.arena_measured is not None:
            ram = f"ram {report.ram_bytes:,} B reserved arena (measured {report.arena_measured:,} B + margin)"
        elif report.ram_kind in ("not measured", "not checked"):
            ram = f"ram {report.ram_kind}"
        else:
            ram = f"ram {report.ram_bytes:,} B {report.ram_kind}"
        flash_line = next((b for b in report.budgets if b.name == "flash"), None)
        flash = (f"flash {flash_line.used:,} B = {flash_line.parts_text}" if flash_line is not None and
                 flash_line.parts_text else f"flash {report.flash_bytes:,} B")
        print(f"edgekit check {report.target}: {status} ({flash}, {ram})")
    return EXIT_OK if report.fits else EXIT_OVER


def _cmd_demo(args: argparse.Namespace) -> int:
    from edgekit.demo import DEMO_TARGETS, run_demo

    return run_demo(tuple(args.target or DEMO_TARGETS), out_dir=args.output, force=args.force, as_json=args.json)


def _cmd_config(args: argparse.Namespace) -> int:
    from edgekit import options

    rows = [{"name": o.env, "value": o.value, "default": o.default, "source": o.source, "help": o.help}
            for o in options.all_options()]
    rows += [{"name": p.env, "value": p.value, "default": p.default, "source": p.source, "help": p.help}
             for p in options.PATH_SETTINGS]
    rows.sort(key=lambda r: str(r["name"]))
    if args.json:
        print(json.dumps({"settings": rows}, indent=2))
        return EXIT_OK
    from edgekit.report.text import table

    print(table(["setting", "value", "source", "meaning"],
                [(r["name"], r["value"], r["source"], r["help"]) for r in rows], "llll"))
    return EXIT_OK


def _cmd_cache(args: argparse.Namespace) -> int:
    from edgekit.fitting import cache

    root = cache.cache_dir()
    if args.action == "clear":
        n, size = cache.clear(root)
        info = {"path": str(root), "removed_entries": n, "removed_bytes": size}
        print(json.dumps(info) if args.json else f"removed {n} entries ({size:,} B) from {root}")
        return EXIT_OK
    found = cache.entries(root)
    info = {"path": str(root), "entries": len(found), "bytes": sum(e.bytes for e in found),
            "limit_bytes": int(cache.CACHE_MAX_BYTES.value)}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"fit cache {root}: {info['entries']} entries, {info['bytes']:,} B of {info['limit_bytes']:,} B "
              "(EDGEKIT_CACHE_MAX_BYTES; least recently used entries go first)")
    return EXIT_OK


def _cmd_completion(args: argparse.Namespace) -> int:
    from edgekit.completion import script

    print(script(build_parser(), args.shell))
    return EXIT_OK


COMMANDS = {"targets": _cmd_targets, "analyze": _cmd_analyze, "fit": _cmd_fit, "codegen": _cmd_codegen,
            "scaffold": _cmd_scaffold, "check": _cmd_check, "bench": _cmd_bench, "device-sim": _cmd_device_sim,
            "demo": _cmd_demo, "config": _cmd_config, "cache": _cmd_cache, "completion": _cmd_completion}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        print("edgekit: error: no command given (commands: " + ", ".join(COMMANDS) + "; see `edgekit --help`)",
              file=sys.stderr)
        return EXIT_ERROR
    from edgekit._session import Terminated, run_session

    try:
        with run_session():
            try:
                return COMMANDS[args.command](args)
            finally:
                if "edgekit.tflm.worker" in sys.modules:
                    sys.modules["edgekit.tflm.worker"].close_prestarted()
    except EdgekitError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"edgekit: error: {exc}", file=sys.stderr)
        _json_error(args, exc.message, exc.hint, exc.exit_code)
        return exc.exit_code
    except BrokenPipeError:  # output piped into `head` and the like
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("edgekit: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        print("edgekit: terminated by signal " + str(exc.signum), file=sys.stderr)
        return 128 + exc.signum
    except Exception as exc:  # a bug: still one line unless --debug
        if args.debug:
            traceback.print_exc()
        text = " ".join(str(exc).split())[:300]
        print(f"edgekit: internal error: {type(exc).__name__}: {text} (rerun with --debug and report it)",
              file=sys.stderr)
        _json_error(args, f"internal error: {type(exc).__name__}: {text}", "rerun with --debug and report it",
                    EXIT_ERROR)
        return EXIT_ERROR


def _json_error(args: argparse.Namespace, message: str, hint: str | None, code: int) -> None:
    """With --json, an error is also one JSON object on stdout, so a CI parser never reads an empty stdout."""
    if getattr(args, "json", False):
        with contextlib.suppress(OSError):
            print(json.dumps({"error": message, "hint": hint, "exit_code": code}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
