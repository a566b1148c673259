"""The README's main job: `edgekit demo` fits the digits CNN to three targets, all fitting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_demo_fits_all_three_targets(tmp_path: Path) -> None:
    proc = run_cli("demo", "-o", str(tmp_path / "demo"), "--json", env={"EDGEKIT_CACHE_DIR": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [t["target"] for t in out["targets"]] == ["cortex-m4", "android-arm64-cpu", "ios-ane"]
    assert out["float_accuracy"] > 95
    for t in out["targets"]:
        assert t["fits"] is True
        assert all(c["metric"] is not None for c in t["candidates"])
        winner = next(c for c in t["candidates"] if c["name"] == t["winner"])
        assert winner["drop"] <= 1.0
    assert (tmp_path / "demo" / "cortex-m4" / "model.tflite").is_file()
    assert (tmp_path / "demo" / "ios-ane" / "model.mlpackage").is_dir()
    assert out["seconds"] < 180
