#!/usr/bin/env python3
"""Bootstrap a local virtual environment from the pinned constraints, then run a job.

    python3 dev.py demo     # the main job on the embedded default (edgekit demo)
    python3 dev.py test     # ruff, mypy and the whole test suite
    python3 dev.py edgekit ARGS...   # any edgekit command inside the environment

The environment lives in .venv/ and is rebuilt only when pyproject.toml or
constraints.txt change (a stamp file records their hash).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("EDGEKIT_VENV", ROOT / ".venv"))
PY = VENV / "bin" / "python"
STAMP = VENV / ".edgekit-stamp"


def _digest() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "constraints.txt"):
        h.update((ROOT / name).read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()


def bootstrap() -> None:
    if not (3, 11) <= sys.version_info[:2] < (3, 13):
        sys.exit(f"dev.py: Python 3.11 or 3.12 is needed, this is {sys.version.split()[0]}")
    digest = _digest()
    if PY.exists() and STAMP.exists() and STAMP.read_text() == digest:
        return
    if not PY.exists():
        print(f"dev.py: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("dev.py: installing pinned dependencies (constraints.txt); first run takes a few minutes",
          flush=True)
    subprocess.run([str(PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(digest)


def run(cmd: list[str], cwd: Path | None = ROOT) -> int:
    return subprocess.run(cmd, cwd=cwd).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    job, rest = argv[0], argv[1:]
    bootstrap()
    edgekit = [str(PY), "-m", "edgekit"]
    if job == "demo":  # edgekit runs where you are: relative paths are yours
        return run([*edgekit, "demo", *rest], cwd=None)
    if job == "edgekit":
        return run([*edgekit, *rest], cwd=None)
    if job == "test":
        for step in (
            [str(PY), "-m", "ruff", "check", "edgekit", "tests", "tools", "benchmarks", "examples", "dev.py"],
            [str(PY), "-m", "mypy"],
            [str(PY), "-m", "pytest", *rest],
        ):
            print("dev.py: " + " ".join(Path(step[0]).name if i == 0 else a for i, a in enumerate(step)),
                  flush=True)
            code = run(step)
            if code != 0:
                return code
        return 0
    print(f"dev.py: unknown job {job!r} (demo, test, edgekit)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
