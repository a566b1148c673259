"""The README's main job and its Quick start, run verbatim: `python3 dev.py demo -o demo` fits the
digits CNN to three targets and keeps its source, then every Quick start command runs on what it wrote."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, flags=re.S)
    return [ln.strip() for block in blocks for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_quick_start_runs_verbatim(tmp_path: Path) -> None:
    commands = quick_start_commands()
    assert commands[0] == "python3 dev.py demo -o demo" and len(commands) >= 8
    (tmp_path / "dev.py").symlink_to(ROOT / "dev.py")  # `python3 dev.py` as written, in a scratch folder
    env = {**os.environ, "EDGEKIT_CACHE_DIR": str(tmp_path / "cache")}
    for cmd in commands:
        proc = subprocess.run(cmd, shell=True, cwd=tmp_path, capture_output=True, text=True, env=env,
                              timeout=600, check=False)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        if cmd.endswith("demo -o demo"):
            demo_out = proc.stdout
    demo = tmp_path / "demo"
    # the demo: three targets, each fitting within the allowed drop
    for target in ("cortex-m4", "android-arm64-cpu", "ios-ane"):
        report = json.loads((demo / target / "report.json").read_text())
        assert report["fits"] is True, target
        winner = next(c for c in report["candidates"] if c["name"] == report["winner"])
        assert winner["drop"] <= 1.0 and all(c["metric"] is not None for c in report["candidates"])
    assert re.search(r"float test accuracy (9[5-9]|100)\.\d%", demo_out), demo_out
    assert (demo / "ios-ane" / "model.mlpackage").is_dir()
    assert {p.name for p in (demo / "source").iterdir()} >= {"digits_cnn.keras", "calib.npz", "eval.npz"}
    # what the Quick start wrote
    assert (demo / "fit-m7" / "model.tflite").is_file()
    assert (demo / "gen" / "model_data.cc").is_file() and (demo / "fw" / "CMakeLists.txt").is_file()
