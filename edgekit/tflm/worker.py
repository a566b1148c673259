"""The TFLM host interpreter in a long-lived child process.

TFLM aborts the whole process on some models (a ``TFLITE_CHECK`` in a kernel), so it never runs inside
the CLI: the child loads each model, finds an arena that allocates, runs every sample, and prints the
allocation record; a crash kills only the child, which is restarted for the next job. Every read of the
child's output has a deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import options
from edgekit.errors import MeasurementError
from edgekit.tensors import dequantize, quantize

EVAL_TIMEOUT = options.Option("eval_timeout", 900.0, "seconds one TFLM evaluation child process may take")


@dataclass
class TflmRun:
    """One model's run on the TFLM host interpreter: raw and dequantized outputs, arena figures."""

    raw: np.ndarray
    outputs: np.ndarray
    arena_bytes: int
    trial_arena_bytes: int
    head_bytes: int = 0  # non-persistent part (activations, scratch)
    tail_bytes: int = 0  # persistent part (tensor structs, quantization data, kernel state)
    breakdown: dict[str, int] = field(default_factory=dict)


_ARENA_TOO_SMALL = ("failed to resize buffer", "failed to allocate", "failed starting model allocation")
# TFLM's host interpreter does not always fail cleanly on a small arena: when a kernel's Prepare asks for a temp
# TfLiteTensor and the arena is full it prints these and then dereferences the missing struct (SIGSEGV). Only
# a larger trial arena, in a new child, tells that apart from a model TFLM cannot run
_ARENA_CRASH = ("unable to allocate", "failed to populate a temp tflitetensor")


class _ArenaCrash(MeasurementError):
    """The child died while allocating: try again with a larger trial arena."""


def _load_captured(runtime: Any, libc: Any, data: bytes, arena: int, log: str) -> tuple[Any, str]:
    """``runtime.Interpreter.from_bytes`` with what TFLM prints captured in ``log`` (a file, so the
    parent can read it even when TFLM kills the process): (interpreter or None, TFLM's text)."""
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1), os.dup(2)
    with open(log, "wb") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            try:
                interp = runtime.Interpreter.from_bytes(data, arena_size=arena)
            except RuntimeError:
                interp = None
            libc.fflush(None)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
    return interp, Path(log).read_text(errors="replace")


def worker_main() -> int:
    """Child process: one job per stdin line (a spec file); for each model, find an arena, run
    every sample, print the allocation record; then a done marker."""
    import ctypes
    import json

    from tflite_micro.python.tflite_micro import runtime

    libc = ctypes.CDLL(None)  # TFLM prints through C stdio: flush it so records stay in order
    os.dup2(1, 2)  # ... and its records go to stderr: one stream keeps markers and records in order
    print("@@edgekit ready", flush=True)
    for line in sys.stdin:
        spec = json.loads(Path(line.strip()).read_text())
        x = np.load(spec["x"])
        for i, model_path in enumerate(spec["models"]):
            print(f"@@edgekit start {i}", flush=True)
            data = Path(model_path).read_bytes()
            arena = int(spec["arena"])
            while True:
                interp, said = _load_captured(runtime, libc, data, arena, spec["out"] + f".{i}.log")
                if interp is not None:
                    break
                # retry with a larger arena only when TFLM said the arena was too small; a kernel's
                # refusal ("Node X (number N) failed to prepare") is final
                too_small = any(k in said.lower() for k in _ARENA_TOO_SMALL) and "failed to prepare" not in said
                if arena >= int(spec["max_arena"]) or not too_small:
                    print(said, flush=True)
                    print(f"@@edgekit failed {i} {arena} {'small' if too_small else 'refused'}", flush=True)
                    return 3
                arena = min(int(spec["max_arena"]), arena * 2)
            d = interp.get_input_details(0)
            qi = d["quantization_parameters"]
            scale = float(qi["scales"][0]) if len(qi["scales"]) else 0.0
            zp = int(qi["zero_points"][0]) if len(qi["zero_points"]) else 0
            shape = tuple(int(v) for v in d["shape"])
            xs = x[: int(spec["limits"][i])] if spec["limits"][i] else x
            q = quantize(xs, d["dtype"], scale, zp)
            outs = []
            for j in range(len(xs)):
                interp.set_input(q[j : j + 1].reshape(shape), 0)
                interp.invoke()
                outs.append(interp.get_output(0))
            np.save(spec["out"] + f".{i}.npy", np.concatenate(outs))
            print(f"@@edgekit model {i} trial_arena {arena}", flush=True)
            interp.print_allocations()
            libc.fflush(None)
            print("", flush=True)
        print("@@edgekit done", flush=True)
    return 0


class TflmWorker:
    """The TFLM host interpreter in a long-lived child process: isolated from the CLI (a kernel
    abort kills only the child, which is restarted for the next job), started early so that its
    imports overlap the caller's own work, and reused for every candidate of a search."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = False
        self.timeout = EVAL_TIMEOUT

    def start(self) -> TflmWorker:
        if self.proc is None or self.proc.poll() is not None:
            self.ready = False
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from edgekit.tflm.worker import worker_main; "
                 "sys.exit(worker_main())"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return self

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None

    def __enter__(self) -> TflmWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_until(self, marker: bytes, deadline: float) -> tuple[bytes, bool]:
        """Read the child's output up to ``marker``; (text, found). Never blocks past ``deadline``."""
        import selectors
        import time

        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = bytearray()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while marker not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.proc.kill()
                    raise MeasurementError(
                        f"the TFLM interpreter did not finish within {self.timeout.value:.0f} s",
                        f"raise EDGEKIT_{self.timeout.name.upper()} for large models or many samples")
                if not sel.select(timeout=min(left, 1.0)):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    return bytes(buf), False
                buf += chunk
        return bytes(buf), True

    def _failure(self, models: list[bytes], text: str, out: Path) -> MeasurementError:
        """The child stopped before its done marker: why, from what it (and TFLM) printed."""
        import re

        from edgekit.tflm.record import TflmRefusal, crash_error, degenerate_op, tflm_reason

        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc, self.ready = None, False
        started = re.findall(r"@@edgekit start (\d+)", text)
        i = int(started[-1]) if started else 0
        section = text[text.rfind("@@edgekit start"):] if started else text
        log = out.with_name(f"{out.name}.{i}.log")
        if "@@edgekit failed" not in section and log.is_file():  # TFLM killed the child while loading
            section += "\n" + log.read_text(errors="replace")
        failed = re.search(r"@@edgekit failed \d+ (\d+) (\w+)", section)
        if not failed and any(k in section.lower() for k in _ARENA_CRASH):
            return _ArenaCrash(tflm_reason(section) or "TFLM crashed while allocating the arena")
        if failed and failed.group(2) == "small":
            return TflmRefusal(f"the model does not allocate even in a {int(failed.group(1)):,}-byte trial arena",
                               "raise EDGEKIT_ARENA_MAX_BYTES if the model really needs more")
        if failed:
            said = tflm_reason(section[: failed.start()])
            node = re.search(r"Node (\w+) \(number", said)
            return TflmRefusal("TFLM: " + (said or "the interpreter refused the model without a reason"),
                               op=node.group(1) if node else None)
        return crash_error(code, section, degenerate_op(models[min(i, len(models) - 1)]))

    def run(self, models: list[bytes], x: np.ndarray, limits: list[int] | None = None,
            timeout: options.Option = EVAL_TIMEOUT) -> list[TflmRun]:
        """Run each model on ``x`` (model i on its first ``limits[i]`` samples; 0 = all)."""
        import time

        from edgekit.analysis.graph import read_graph
        from edgekit.tflm.record import TflmRefusal

        self.timeout = timeout
        deadline = time.monotonic() + timeout.value
        start = 64 * 1024
        for m in models:
            start = max(start, 2 * read_graph(m).peak_activation_bytes() + 16 * 1024)
        most = int(options.ARENA_MAX_BYTES.value)
        while True:
            try:
                return self._run(models, x, limits, start, deadline)
            except _ArenaCrash as exc:
                if start >= most:
                    raise TflmRefusal(f"the model does not allocate even in a {start:,}-byte trial arena "
                                      f"(TFLM crashed: {exc.message})",
                                      "raise EDGEKIT_ARENA_MAX_BYTES if the model really needs more") from None
                start = min(most, start * 4)

    def _run(self, models: list[bytes], x: np.ndarray, limits: list[int] | None, start: int,
             deadline: float) -> list[TflmRun]:
        import json
        import re

        from edgekit.analysis.graph import read_graph
        from edgekit.tflm.record import parse_allocation_record

        self.start()
        assert self.proc is not None and self.proc.stdin is not None
        with tempfile.TemporaryDirectory(prefix="edgekit-tflm-") as tmp:
            paths = []
            for i, m in enumerate(models):
                paths.append(str(Path(tmp) / f"m{i}.tflite"))
                Path(paths[-1]).write_bytes(m)
            np.save(Path(tmp) / "x.npy", np.asarray(x, dtype=np.float32))
            spec = {"models": paths, "x": str(Path(tmp) / "x.npy"), "out": str(Path(tmp) / "y"),
                    "arena": start, "max_arena": int(options.ARENA_MAX_BYTES.value),
                    "limits": limits or [0] * len(models)}
            (Path(tmp) / "spec.json").write_text(json.dumps(spec))
            if not self.ready:
                _, self.ready = self._read_until(b"@@edgekit ready", deadline)
            try:
                self.proc.stdin.write(f"{Path(tmp) / 'spec.json'}\n".encode())
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            raw_out, ok = self._read_until(b"@@edgekit done", deadline)
            text = raw_out.decode(errors="replace")
            if not ok:
                raise self._failure(models, text, Path(tmp) / "y")
            runs = []
            sections = re.split(r"@@edgekit model \d+ ", text)[1:]
            for i, (m, sect) in enumerate(zip(models, sections, strict=True)):
                trial = int(re.search(r"trial_arena (\d+)", sect).group(1))  # type: ignore[union-attr]
                record = parse_allocation_record(sect)
                raw = np.load(Path(tmp) / f"y.{i}.npy")
                out_t = read_graph(m).output_tensors()[0]
                oscale = out_t.scale[0] if out_t.scale else 0.0
                ozp = out_t.zero_point[0] if out_t.zero_point else 0
                runs.append(TflmRun(raw=raw, outputs=dequantize(raw, oscale, ozp),
                                    arena_bytes=record["total"], trial_arena_bytes=trial, head_bytes=record["head"],
                                    tail_bytes=record["tail"], breakdown=record["breakdown"]))
            return runs


def tflm_session(models: list[bytes], x: np.ndarray, worker: TflmWorker | None = None,
                 limits: list[int] | None = None) -> list[TflmRun]:
    """Run every model on ``x`` with TFLM in an isolated child (``worker``'s, or a new one)."""
    if worker is not None:
        return worker.run(models, x, limits)
    with TflmWorker() as w:
        return w.run(models, x, limits)


def run_tflm(model: bytes, x: np.ndarray, raw: bool = False) -> np.ndarray:
    """Outputs of the TFLM host interpreter (in a child process) for inputs ``x``."""
    run = tflm_session([model], x)[0]
    return run.raw if raw else run.outputs


_PRESTARTED: list[TflmWorker] = []


def prestart() -> None:
    """Start a worker now, so that its imports overlap the caller's own (a CLI command that will measure
    an arena calls this first thing); the next :func:`take_prestarted` hands it over."""
    if not _PRESTARTED:
        _PRESTARTED.append(TflmWorker().start())


def take_prestarted() -> TflmWorker | None:
    """The worker :func:`prestart` started, once (the caller closes it), or None."""
    return _PRESTARTED.pop() if _PRESTARTED else None


def close_prestarted() -> None:
    """Stop a prestarted worker nobody took (the command ended before it measured)."""
    while _PRESTARTED:
        _PRESTARTED.pop().close()
