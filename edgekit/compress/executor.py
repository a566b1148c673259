"""Where candidate trainings run: the :class:`Executor` interface and its local implementation.

A task is a folder with ``task.json`` (see :mod:`edgekit.compress.worker`); it is finished when its
``result.json`` exists. The search only submits folders, waits for finished ones and cancels the rest, so a
cluster engine takes over by implementing the same four methods (copy the folder to shared storage, run
``python -m edgekit.compress.worker FOLDER`` on a node, report the folder when its ``result.json`` is
there). :class:`LocalExecutor` keeps ``jobs`` long-lived worker processes (TensorFlow is imported once per
worker, not once per task), each with its share of this machine's cores; every wait has a deadline, a
task over its time limit or a crashed worker becomes that task's error result, and cancelling kills only
the processes it started.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from edgekit import options
from edgekit.compress.worker import DONE, READY

TASK_TIMEOUT = options.Option("l3_task_timeout", 3600.0, "seconds one level-3 fine-tune task may take")
WORKER_START_TIMEOUT = options.Option("l3_worker_start_timeout", 300.0,
                                      "seconds a level-3 worker process may take to start")


class Executor(ABC):
    """Runs task folders, at most ``jobs`` at a time."""

    jobs: int = 1

    @abstractmethod
    def submit(self, task: Path) -> None:
        """Queue a task folder."""

    @abstractmethod
    def wait(self, timeout: float) -> list[Path]:
        """Task folders finished since the last call (each has a result.json), waiting at most ``timeout``
        seconds for the first one."""

    @abstractmethod
    def busy(self) -> int:
        """Tasks queued or running."""

    @abstractmethod
    def cancel(self) -> list[Path]:
        """Stop every queued and running task; the folders that will never finish."""

    def close(self) -> None:
        self.cancel()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_error(task: Path, error: str) -> None:
    tmp = task / f"result.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"ok": False, "error": error}))
    tmp.replace(task / "result.json")


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    log: Path
    ready: bool = False
    task: Path | None = None
    started: float = 0.0
    buf: bytes = b""


class LocalExecutor(Executor):
    """``jobs`` worker processes on this machine."""

    def __init__(self, jobs: int, logs: Path, threads: int | None = None) -> None:
        self.jobs = max(1, int(jobs))
        cores = os.cpu_count() or 1
        self.threads = threads or max(1, cores // self.jobs)
        self.logs = logs
        self.queue: deque[Path] = deque()
        self.workers: list[_Worker] = []
        self.finished: list[Path] = []

    def _spawn(self) -> _Worker:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"worker-{len(self.workers)}-{time.time_ns()}.log"
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_NUM_INTRAOP_THREADS=str(self.threads),
                   TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS=str(self.threads))
        with open(log, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "edgekit.compress.worker", "--serve"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env)
        w = _Worker(proc, log, started=time.monotonic())
        self.workers.append(w)
        return w

    def submit(self, task: Path) -> None:
        self.queue.append(task)
        self._dispatch()

    def busy(self) -> int:
        return len(self.queue) + sum(1 for w in self.workers if w.task is not None)

    def _dispatch(self) -> None:
        self.workers = [w for w in self.workers if w.proc.poll() is None or w.task is not None]
        while self.queue:
            idle = [w for w in self.workers if w.task is None and w.proc.poll() is None]
            if not idle and len(self.workers) < self.jobs:
                idle = [self._spawn()]
            if not idle:
                return
            w, task = idle[0], self.queue.popleft()
            w.task, w.started = task, time.monotonic()
            if w.ready:
                self._send(w)

    def _send(self, w: _Worker) -> None:
        assert w.proc.stdin is not None and w.task is not None
        try:
            w.proc.stdin.write(f"{w.task}\n".encode())
            w.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the exit is noticed by wait()

    def _finish(self, w: _Worker, error: str | None = None) -> None:
        if w.task is None:
            return
        if error is not None or not (w.task / "result.json").is_file():
            write_error(w.task, error or "the worker finished without a result")
        self.finished.append(w.task)
        w.task = None

    def _died(self, w: _Worker) -> None:
        try:  # its pipe closed; an interpreter stuck in its shutdown is not waited for
            code = w.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            code = w.proc.wait(timeout=10)
        tail = w.log.read_text(errors="replace").strip().splitlines()[-1:] if w.log.is_file() else []
        self._finish(w, f"the worker process exited with code {code}" + (f": {tail[0][:200]}" if tail else ""))

    def wait(self, timeout: float) -> list[Path]:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            self._dispatch()
            self._check_limits()
            if self.finished or not self.busy():
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._read(min(left, 1.0))
        done, self.finished = self.finished, []
        return done

    def _check_limits(self) -> None:
        now = time.monotonic()
        for w in self.workers:
            if w.proc.poll() is not None and (w.task is not None or not w.ready):
                if w.task is not None:
                    self._died(w)
                continue
            if not w.ready and now - w.started > WORKER_START_TIMEOUT.value:
                self._kill(w)
                self._finish(w, f"the worker process did not start within {WORKER_START_TIMEOUT.value:.0f} s")
            elif w.ready and w.task is not None and now - w.started > TASK_TIMEOUT.value:
                self._kill(w)
                self._finish(w, f"the task did not finish within {TASK_TIMEOUT.value:.0f} s "
                                f"(EDGEKIT_{TASK_TIMEOUT.name.upper()})")

    def _read(self, timeout: float) -> None:
        live = [w for w in self.workers if w.proc.poll() is None and w.proc.stdout is not None]
        if not live:
            time.sleep(min(timeout, 0.05))
            return
        with selectors.DefaultSelector() as sel:
            for w in live:
                assert w.proc.stdout is not None
                sel.register(w.proc.stdout.fileno(), selectors.EVENT_READ, w)
            for key, _ in sel.select(timeout=timeout):
                w = key.data
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    if w.task is not None:
                        self._died(w)
                    continue
                w.buf += chunk
                while b"\n" in w.buf:
                    line, w.buf = w.buf.split(b"\n", 1)
                    text = line.decode(errors="replace").strip()
                    if text == READY:
                        w.ready = True
                        if w.task is not None:
                            w.started = time.monotonic()
                            self._send(w)
                    elif text.startswith(DONE) and w.task is not None:
                        self._finish(w)

    def _kill(self, w: _Worker) -> None:
        if w.proc.poll() is None:
            w.proc.kill()
        try:
            w.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def cancel(self) -> list[Path]:
        lost = list(self.queue)
        self.queue.clear()
        for w in self.workers:
            if w.task is not None:
                lost.append(w.task)
                w.task = None
            self._kill(w)
        self.workers = []
        return lost

    def close(self) -> None:
        """Stop the workers: idle ones by closing their input, busy ones (a cancelled search) by killing."""
        self.queue.clear()
        for w in self.workers:
            if w.task is None and w.proc.poll() is None and w.proc.stdin is not None:
                try:
                    w.proc.stdin.close()
                    w.proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._kill(w)
        self.workers = []
