"""The core install (no `convert` extra) handles a .tflite end to end, and a source model that needs
the extra gets one line naming it. The extra's packages are blocked from import in every process
(tests/data/no_convert_extra/sitecustomize.py); the real light install is measured by
benchmarks/light_install.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import DATA, ROOT, run_cli

CORE = {"PYTHONPATH": os.pathsep.join([str(DATA / "no_convert_extra"), str(ROOT)])}


@pytest.mark.slow
def test_tflite_commands_need_no_convert_extra(models: dict[str, Path], tmp_path: Path) -> None:
    proc = run_cli("check", str(models["int8"]), "-t", "cortex-m4", env=CORE)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
    proc = run_cli("analyze", str(models["float"]), "-t", "android-arm64-cpu", "--json", env=CORE)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("codegen", str(models["int8"]), "-t", "cortex-m4", "-o", str(tmp_path / "gen"), env=CORE)
    assert proc.returncode == 0 and (tmp_path / "gen" / "model_data.cc").is_file(), proc.stderr
    proc = run_cli("scaffold", str(models["int8"]), "-t", "cortex-m4", "-b", "cmake", "-o", str(tmp_path / "fw"),
                   env=CORE)
    assert proc.returncode == 0, proc.stderr


def test_the_blocker_really_blocks() -> None:
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-c", "import tensorflow"], env={**os.environ, **CORE},
                           capture_output=True, text=True, check=False)
    assert probe.returncode != 0 and "blocked: core install" in probe.stderr


@pytest.mark.parametrize("model, extra_for", [("keras", "Keras models"), ("h5", "Keras models"),
                                              ("onnx", "converting .onnx models")])
def test_source_models_name_the_missing_extra(models: dict[str, Path], model: str, extra_for: str,
                                              tmp_path: Path) -> None:
    path = models.get(model)
    if model == "onnx":  # the file's content does not matter: the extra is asked for before it is read
        path = tmp_path / "m.onnx"
        path.write_bytes(b"\x08\x07")
    proc = run_cli("analyze", str(path), "-t", "cortex-m4", env=CORE)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert extra_for in lines[0] and "pip install 'edgekit[convert]'" in lines[0], lines[0]
