"""CLI behaviour that needs no TensorFlow: start-up, targets, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DATA, as_other_user, run_cli


def test_help_is_fast_and_imports_no_heavy_framework() -> None:
    code = ("import sys, edgekit.cli; edgekit.cli.build_parser().format_help(); "
            "heavy = [m for m in ('tensorflow', 'coremltools', 'onnx2tf', 'keras') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    start = time.perf_counter()
    proc = run_cli("--help")
    assert proc.returncode == 0 and "analyze" in proc.stdout
    assert time.perf_counter() - start < 5.0


def test_targets_list_and_show() -> None:
    proc = run_cli("targets", "list")
    assert proc.returncode == 0
    for name in ("cortex-m4", "android-gpu", "ios-ane"):
        assert name in proc.stdout
    show = run_cli("targets", "show", "cortex-m4", "--json")
    data = json.loads(show.stdout)
    assert data["values"]["budgets.ram_bytes"] == 196_608
    assert data["sources"]["runtime.kind"].endswith("cortex-m-base.toml")
    text = run_cli("targets", "show", "cortex-m4").stdout
    assert "cortex-m-base.toml" in text and "cortex-m4.toml" in text
    doc = run_cli("targets", "show", "cortex-m4", "--ops-doc").stdout
    assert "- CONV_2D" in doc and "registers" in doc


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgekit: error:")
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0]


def test_missing_model(tmp_path: Path) -> None:
    _assert_one_line_error(run_cli("analyze", str(tmp_path / "nope.tflite"), "-t", "cortex-m4"),
                           "does not exist")


def test_unreadable_model() -> None:
    import os
    import shutil
    import tempfile

    # root reads any file: then the CLI runs as 'nobody' (setpriv), for whom permissions do apply
    cmd = as_other_user([sys.executable, "-m", "edgekit"]) if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="edgekit-perm-"))
    try:
        folder.chmod(0o755)
        p = folder / "m.tflite"
        p.write_bytes(b"x")
        p.chmod(0)
        if cmd:
            proc = subprocess.run([*cmd, "analyze", str(p), "-t", "cortex-m4"], capture_output=True, text=True,
                                  timeout=120, check=False, env={**os.environ, "HOME": str(folder),
                                                                 "TMPDIR": str(folder)})
        else:
            proc = run_cli("analyze", str(p), "-t", "cortex-m4")
        _assert_one_line_error(proc, "not readable")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_truncated_tflite(tmp_path: Path) -> None:
    from edgekit.analysis.tflm_ops import runtime_library

    sine = runtime_library().parent / "sine_float.tflite"  # a real model shipped with tflite-micro
    p = tmp_path / "cut.tflite"
    p.write_bytes(sine.read_bytes()[:200])
    _assert_one_line_error(run_cli("analyze", str(p), "-t", "cortex-m4"), "truncated or corrupt")


def test_not_a_tflite(tmp_path: Path) -> None:
    p = tmp_path / "junk.tflite"
    p.write_bytes(b"\x00" * 64)
    _assert_one_line_error(run_cli("analyze", str(p), "-t", "cortex-m4"), "not a TFLite flatbuffer")


def test_directory_that_is_not_a_savedmodel(tmp_path: Path) -> None:
    _assert_one_line_error(run_cli("analyze", str(tmp_path), "-t", "cortex-m4"), "not a SavedModel")


def test_unknown_format(tmp_path: Path) -> None:
    p = tmp_path / "m.pt"
    p.write_bytes(b"x")
    _assert_one_line_error(run_cli("analyze", str(p), "-t", "cortex-m4"), "unknown model format")


def test_unknown_target_lists_known_and_closest(tmp_path: Path) -> None:
    from edgekit.analysis.tflm_ops import runtime_library

    sine = runtime_library().parent / "sine_float.tflite"
    _assert_one_line_error(run_cli("analyze", str(sine), "-t", "cortex-m3"), "unknown target",
                           "did you mean", "known targets")


@pytest.mark.parametrize("name", ["invalid_cycle_a", "invalid_syntax", "invalid_unknown_key"])
def test_bad_profile_via_cli(name: str) -> None:
    from edgekit.analysis.tflm_ops import runtime_library

    sine = runtime_library().parent / "sine_float.tflite"
    _assert_one_line_error(run_cli("analyze", str(sine), "-t", str(DATA / "targets" / f"{name}.toml")))


def test_debug_shows_traceback(tmp_path: Path) -> None:
    proc = run_cli("--debug", "analyze", str(tmp_path / "nope.tflite"), "-t", "cortex-m4")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_usage_error_is_exit_2() -> None:
    proc = run_cli("analyze")
    assert proc.returncode == 2 and "error" in proc.stderr


def test_float_tflite_analysed_without_tensorflow() -> None:
    """An already-converted model is analysed with the real TFLM, no converter involved."""
    from edgekit.analysis.tflm_ops import runtime_library

    sine = runtime_library().parent / "sine_float.tflite"
    proc = run_cli("analyze", str(sine), "-t", "cortex-m4", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ops"] == ["FULLY_CONNECTED"]
    assert out["arena_bytes"] > 0 and out["budgets"]["ram"]["used"] == out["arena_reserved_bytes"] > out["arena_bytes"]
    # the M0+ has no FPU: its profile does not take float32 tensors
    proc = run_cli("analyze", str(sine), "-t", "cortex-m0plus", "--json")
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["budgets"]["dtypes"]["fits"] is False


def test_public_api_resolves_lazily() -> None:
    code = ("import sys, edgekit; names = [n for n in edgekit.__all__ if not callable(getattr(edgekit, n))]; "
            "print(names, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] False"


def test_json_errors_are_one_object_on_stdout(tmp_path: Path) -> None:
    for args in (["analyze", str(tmp_path / "none.tflite"), "-t", "cortex-m4", "--json"],
                 ["check", str(tmp_path / "none.tflite"), "-t", "nosuch-target", "--json"]):
        proc = run_cli(*args)
        assert proc.returncode == 2
        doc = json.loads(proc.stdout)  # exactly one JSON document, nothing else on stdout
        assert set(doc) == {"error", "hint", "exit_code"} and doc["exit_code"] == 2 and doc["error"]
        assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [f"edgekit: error: {doc['error']}"
                                                                          + (f" (hint: {doc['hint']})"
                                                                             if doc["hint"] else "")]


def test_every_subcommand_takes_debug_and_lists_its_exit_codes() -> None:
    from edgekit.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "--debug" in text and "exit codes: 0" in text, name
    proc = run_cli("analyze", "/nonexistent.tflite", "-t", "cortex-m4", "--debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr  # --debug after the subcommand works
