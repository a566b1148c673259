"""`edgekit config`, `edgekit cache info|clear` with the cache's size limit, and shell completion."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli


def test_config_lists_every_setting_with_its_source() -> None:
    proc = run_cli("config", "--json", env={"EDGEKIT_READ_TIMEOUT": "3.5"})
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)["settings"]}
    for name in ("EDGEKIT_READ_TIMEOUT", "EDGEKIT_EVAL_TIMEOUT", "EDGEKIT_ARENA_MARGIN", "EDGEKIT_CACHE_DIR",
                 "EDGEKIT_TARGETS_PATH", "EDGEKIT_CACHE_MAX_BYTES", "EDGEKIT_OUTPUT_MIN_FREE_BYTES"):
        assert name in rows and rows[name]["help"], name
    assert rows["EDGEKIT_READ_TIMEOUT"]["value"] == 3.5
    assert rows["EDGEKIT_READ_TIMEOUT"]["source"] == "environment (EDGEKIT_READ_TIMEOUT)"
    assert rows["EDGEKIT_EVAL_TIMEOUT"]["source"] == "default"


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_a_bad_setting_is_one_line(value: str) -> None:
    proc = run_cli("config", env={"EDGEKIT_READ_TIMEOUT": value})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "EDGEKIT_READ_TIMEOUT" in lines[0], proc.stderr


def _entry(root: Path, key: str, size: int, age: float) -> Path:
    entry = root / key[:2] / key
    entry.mkdir(parents=True)
    (entry / "model.tflite").write_bytes(b"\0" * size)
    (entry / "candidate.json").write_text("{}")
    os.utime(entry / "candidate.json", (age, age))
    return entry


def test_cache_info_clear_and_the_size_limit(tmp_path: Path) -> None:
    from edgekit.fitting import cache

    root = tmp_path / "cache"
    old = _entry(root, "a" * 64, 4000, 1_000_000)
    mid = _entry(root, "ab" + "c" * 62, 4000, 2_000_000)
    new = _entry(root, "b" * 64, 4000, 3_000_000)
    (root / "README.txt").write_text("not edgekit's")
    (root / "zz").mkdir()
    (root / "zz" / "notes").write_text("not edgekit's either")
    info = json.loads(run_cli("cache", "info", "--json", env={"EDGEKIT_CACHE_DIR": str(root)}).stdout)
    assert info["entries"] == 3 and info["bytes"] >= 12000
    # least recently used first, down to the limit
    assert cache.prune(limit=9000, root=root) == [old]
    assert mid.exists() and new.exists()
    proc = run_cli("cache", "clear", env={"EDGEKIT_CACHE_DIR": str(root)})
    assert proc.returncode == 0 and "removed 2 entries" in proc.stdout
    assert not mid.exists() and not new.exists()
    assert (root / "README.txt").is_file() and (root / "zz" / "notes").is_file()  # never what edgekit did not write


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_completes_commands_options_choices_and_targets(tmp_path: Path) -> None:
    proc = run_cli("completion", "bash")
    assert proc.returncode == 0
    script = tmp_path / "edgekit.bash"
    script.write_text(proc.stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        out = subprocess.run(["bash", "-c", f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
                              "_edgekit; printf '%s\\n' \"${COMPREPLY[@]}\""], capture_output=True, text=True,
                             check=True, cwd=tmp_path)
        return out.stdout.split()

    assert "analyze" in complete("edgekit", "an") and "check" in complete("edgekit", "ch")
    assert "--target" in complete("edgekit", "analyze", "--ta")
    assert set(complete("edgekit", "fit", "--optimize", "")) == {"size", "latency", "ram"}
    assert "cortex-m4" in complete("edgekit", "check", "m.tflite", "-t", "cortex-m")
    assert complete("edgekit", "cache", "") [:2] == ["info", "clear"]
