"""A level-3 training worker: builds a candidate architecture from its spec and fine-tunes it with the
teacher's targets, in its own process.

A task is a folder holding ``task.json``; the worker writes ``model.keras`` and ``result.json`` into it
(``result.json`` last, atomically: its presence means the task is finished, with ``ok`` or an ``error``).
The same entry point serves a local pool (``--serve``: one task folder per stdin line, a done marker per
task on stdout) and a cluster engine (``python -m edgekit.compress.worker TASK_DIR``: one task, exit 0), so
a scheduler on another machine runs exactly what a local process runs, given the folder.

task.json: ``teacher`` (a .keras file), ``data`` (an .npz: ``x``/``t`` training inputs and teacher targets,
optional ``y``; ``xv``/``tv`` held-out inputs and the teacher's outputs, optional ``yv``), ``kind`` (the
targets' kind: logits | probs | raw), ``metric`` (name of the held-out score), ``spec`` (a
:class:`edgekit.compress.candidate.Spec`), ``distill`` (a :class:`DistillConfig`'s fields, ``deadline_unix``
for a wall-clock deadline) and ``threads``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

DONE = "@@edgekit-l3 done"
READY = "@@edgekit-l3 ready"

_TEACHERS: dict[str, Any] = {}
_DATA: dict[str, dict[str, np.ndarray]] = {}


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def score_fn(metric: str, truth: np.ndarray) -> Any:
    """Higher is better: the metric's value, negated for error metrics."""
    from edgekit.evaluate import get_metric

    m = get_metric(metric)
    sign = 1.0 if m.higher_is_better else -1.0
    return lambda out: sign * m(truth, out)


def run_task(folder: Path) -> dict[str, Any]:
    from edgekit._tf import keras
    from edgekit.compress import candidate, cost, distill

    t0 = time.monotonic()
    task = json.loads((folder / "task.json").read_text())
    threads = int(task.get("threads", 0))
    if threads:
        from edgekit._tf import tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # already initialized in this process
    teacher = _TEACHERS.get(task["teacher"])
    if teacher is None:
        teacher = _TEACHERS[task["teacher"]] = keras.models.load_model(task["teacher"], compile=False)
    data = _DATA.get(task["data"])
    if data is None:
        with np.load(task["data"], allow_pickle=False) as z:
            data = _DATA[task["data"]] = {k: z[k] for k in z.files}
    spec = candidate.Spec.from_dict(task["spec"])
    if task.get("init"):  # continue from a fine-tuned model (quantization-aware fine-tuning of a finalist)
        built = candidate.Built(keras.models.load_model(task["init"], compile=False))
    else:
        built = candidate.build(teacher, spec, data["x"], data.get("y"))
    truth = data["yv"] if task.get("reference") == "labels" else data["tv"]
    cfg_doc = dict(task.get("distill", {}))
    deadline_unix = cfg_doc.pop("deadline_unix", None)
    cfg = distill.DistillConfig(**cfg_doc)
    if deadline_unix is not None:
        cfg.deadline = time.monotonic() + (float(deadline_unix) - time.time())
    result = distill.distill(built.model, data["x"], data["t"], task["kind"], data.get("y"), data["xv"],
                             score_fn(task["metric"], truth), cfg)
    built.model.save(folder / "model.keras")
    return {"ok": True, "distill": result.to_dict(), "cost": cost.estimate(built.model).to_dict(),
            "kept": built.kept, "factors": [f.__dict__ for f in built.factors],
            "seconds": round(time.monotonic() - t0, 2)}


def run_one(folder: Path) -> bool:
    try:
        doc = run_task(folder)
    except Exception as exc:  # the task's failure is its result, the worker lives on
        lines = str(exc).strip().splitlines()
        doc = {"ok": False, "error": f"{type(exc).__name__}: {lines[0][:300] if lines else ''}",
               "trace": traceback.format_exc()[-4000:]}
    _write_json(folder / "result.json", doc)
    return bool(doc["ok"])


def main(argv: list[str]) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if argv and argv[0] != "--serve":
        return 0 if run_one(Path(argv[0])) else 1
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries go to the log, not into the protocol
    print(READY, file=out, flush=True)
    for line in sys.stdin:
        folder = Path(line.strip())
        if not line.strip():
            continue
        run_one(folder)
        print(f"{DONE} {folder}", file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
