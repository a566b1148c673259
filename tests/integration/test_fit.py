"""fit end to end: every quantization mode, TFLM and Core ML paths, cache, reports, bad input."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATA, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def digits(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgekit.demo import digits_split

    out = tmp_path_factory.mktemp("digits")
    _, _, xte, yte = digits_split(0)
    np.savez(out / "eval.npz", x=xte, y=yte)
    return {**models, "eval": out / "eval.npz", "dir": out}


@pytest.fixture()
def cache(tmp_path: Path) -> dict[str, str]:
    return {"EDGEKIT_CACHE_DIR": str(tmp_path / "cache")}


def _fit(d: dict[str, Path], target: str, out: Path, env: dict[str, str], *extra: str):  # type: ignore[no-untyped-def]
    return run_cli("fit", str(d["keras"]), "-t", target, "--calib", str(d["calib"]), "--eval", str(d["eval"]),
                   "-o", str(out), *extra, env=env)


def test_fit_cortex_m4_int8_stripped_and_measured(digits: dict[str, Path], tmp_path: Path,
                                                  cache: dict[str, str]) -> None:
    out = tmp_path / "m4"
    proc = _fit(digits, "cortex-m4", out, cache)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    names = [c["name"] for c in report["candidates"]]
    assert names == ["float32", "int16x8", "int8", "int8-per-tensor"]  # least to most aggressive
    for c in report["candidates"]:
        assert c["error"] == "" and c["metric"] is not None, c
        assert c["evaluated_on"].startswith("TFLM host interpreter")
        assert c["ram_kind"] == "tflm-arena" and c["ram_bytes"] > 0
    # one scale per tensor: no per-channel multipliers in flash or in the arena (the smallest here)
    by = {c["name"]: c for c in report["candidates"]}
    assert by["int8-per-tensor"]["flash_bytes"] < by["int8"]["flash_bytes"]
    assert by["int8-per-tensor"]["ram_bytes"] < by["int8"]["ram_bytes"]
    assert report["winner"] == "int8-per-tensor" and report["fits"] is True
    winner = by["int8-per-tensor"]
    model = out / "model.tflite"
    assert model.stat().st_size == winner["flash_bytes"]
    # stripped for the microcontroller, verified bit-exact, and at least 3.6x under the float .tflite
    assert "names, metadata, signatures" in winner["stripped"]
    assert digits["float"].stat().st_size / model.stat().st_size >= 3.6
    from edgekit.analysis.graph import read_graph
    from edgekit.stages.strip import buffer_alignments

    g = read_graph(model.read_bytes())
    assert g.metadata_names == [] and g.signature_count == 0
    assert all(t.name == "" for t in g.tensors)
    assert all(off % 16 == 0 for off in buffer_alignments(model.read_bytes()))
    # the measured accuracy is the artifact's own: rerun it on TFLM here
    from edgekit.evaluate import get_metric, run_tflm

    z = np.load(digits["eval"])
    assert get_metric("top1")(z["y"], run_tflm(model.read_bytes(), z["x"])) == pytest.approx(winner["metric"])
    assert (out / "report.md").read_text().count("| int8-per-tensor |") == 1
    assert report["layer_errors"]["layers"], "the int8 candidate's per-layer error is always computed"
    import xml.etree.ElementTree as ET

    svg = ET.fromstring((out / "candidates.svg").read_text())
    assert len(svg.findall(".//{http://www.w3.org/2000/svg}circle")) == 4
    assert "WINNER" in proc.stdout


def test_fit_android_covers_float_float16_dynamic_int8(digits: dict[str, Path], tmp_path: Path,
                                                       cache: dict[str, str]) -> None:
    out = tmp_path / "phone"
    proc = _fit(digits, "android-arm64-cpu", out, cache, "--optimize", "size", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    by = {c["name"]: c for c in report["candidates"]}
    assert list(by) == ["float32", "float16", "dynamic", "int8"]
    for c in by.values():
        assert c["error"] == "" and c["metric"] is not None and c["latency_ms"] > 0
        assert c["evaluated_on"].startswith("LiteRT")
    assert by["float16"]["flash_bytes"] < by["float32"]["flash_bytes"] * 0.6
    assert by["int8"]["flash_bytes"] < by["float32"]["flash_bytes"] * 0.35
    smallest = min((c for c in by.values() if c["fits"] and c["drop"] <= 1.0), key=lambda c: c["flash_bytes"])
    assert report["winner"] == smallest["name"]
    from edgekit.analysis.graph import read_graph

    g = read_graph((out / "model.tflite").read_bytes())
    assert g.signature_count >= 1  # the phone runtime keeps its signatures (not stripped)


def test_fit_core_ml_end_to_end(digits: dict[str, Path], tmp_path: Path, cache: dict[str, str]) -> None:
    out = tmp_path / "ios"
    proc = _fit(digits, "ios-ane", out, cache)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    by = {c["name"]: c for c in report["candidates"]}
    assert {"fp16", "linear-int8", "palettize-4bit", "palettize-2bit", "prune-50"} <= set(by)
    for c in by.values():
        assert c["error"] == "" and c["metric"] is not None
    assert by["linear-int8"]["flash_bytes"] < by["fp16"]["flash_bytes"] * 0.7
    assert by["palettize-4bit"]["flash_bytes"] < by["linear-int8"]["flash_bytes"]
    pkg = out / "model.mlpackage"
    assert (pkg / "Manifest.json").is_file()
    assert any("Core ML cannot run predictions off macOS" in n for n in report["notes"])
    # phones rank by latency by default; the Neural Engine's figure is the same for every compression,
    # and the report says so (size then decides)
    assert report["goal"] == "latency"
    assert len({c["latency_ms"] for c in by.values()}) == 1
    assert all("compression changes size, not latency" in c["latency_kind"] for c in by.values())
    assert report["winner"] == min((c for c in by.values() if c["fits"] and c["drop"] <= 1.0),
                                   key=lambda c: c["flash_bytes"])["name"]


def test_cache_makes_a_rerun_do_no_work_twice(digits: dict[str, Path], tmp_path: Path,
                                              cache: dict[str, str]) -> None:
    t0 = time.perf_counter()
    assert _fit(digits, "android-arm64-cpu", tmp_path / "a", cache).returncode == 0
    first = time.perf_counter() - t0
    proc = _fit(digits, "android-arm64-cpu", tmp_path / "b", cache, "--json")
    report = json.loads(proc.stdout)
    assert all(c["cached"] for c in report["candidates"])
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    assert [c["metric"] for c in a["candidates"]] == [c["metric"] for c in report["candidates"]]
    assert (tmp_path / "a" / "model.tflite").read_bytes() == (tmp_path / "b" / "model.tflite").read_bytes()
    proc = _fit(digits, "android-arm64-cpu", tmp_path / "c", cache, "--json", "--no-cache")
    fresh = json.loads(proc.stdout)
    assert not any(c["cached"] for c in fresh["candidates"])
    # rebuilt from scratch: the same ranking figures, the same winner, the same bytes (issue 13: a build step
    # must get the same artifact from the same inputs; host timings made the demo flip float16/dynamic)
    assert [c["latency_ms"] for c in fresh["candidates"]] == [c["latency_ms"] for c in a["candidates"]]
    assert fresh["winner"] == a["winner"]
    assert (tmp_path / "c" / "model.tflite").read_bytes() == (tmp_path / "a" / "model.tflite").read_bytes()
    assert all(c["latency_kind"].startswith("estimate: cortex-a76 cost model") for c in fresh["candidates"])
    assert "est" in (tmp_path / "c" / "report.md").read_text().split("| int8 |")[1].split("\n")[0]
    assert first > 0


def test_host_timing_is_opt_in_and_never_for_a_gpu(digits: dict[str, Path], tmp_path: Path,
                                                   cache: dict[str, str]) -> None:
    import os

    proc = _fit(digits, "android-arm64-cpu", tmp_path / "h", cache, "--json", "--latency", "host",
                "--candidates", "float32,int8")
    assert proc.returncode == 0, proc.stderr
    for c in json.loads(proc.stdout)["candidates"]:
        threads = min(4, os.cpu_count() or 1)  # the profile asks for 4; never more than this host has
        assert c["latency_kind"].startswith(f"host CPU timing, LiteRT, {threads} threads, noise +-"), c
    proc = _fit(digits, "android-gpu", tmp_path / "g", cache, "--json", "--latency", "host", "--candidates",
                "float16")
    report = json.loads(proc.stdout)
    assert report["candidates"][0]["latency_kind"].startswith("estimate: GPU delegate")
    assert any("--latency host ignored" in n for n in report["notes"])


def test_nothing_fits_shows_closest_and_overrun(digits: dict[str, Path], tmp_path: Path,
                                                cache: dict[str, str]) -> None:
    out = tmp_path / "tiny"
    proc = _fit(digits, str(DATA / "targets" / "valid_tiny_board.toml"), out, cache)
    assert proc.returncode == 1, proc.stderr
    assert "NOTHING FITS" in proc.stdout and "closest: int8-per-tensor" in proc.stdout
    assert "flash over by" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["fits"] is False and report["winner"] is None and report["closest"] == "int8-per-tensor"
    assert (out / "closest.tflite").is_file() and not (out / "model.tflite").exists()


def test_custom_metric_and_regression_metrics(digits: dict[str, Path], tmp_path: Path,
                                              cache: dict[str, str]) -> None:
    (tmp_path / "mymetric.py").write_text(
        "import numpy as np\n"
        "def top2(y_true, y_pred):\n"
        "    top = np.argsort(y_pred, axis=-1)[:, -2:]\n"
        "    return float(np.mean([t in row for t, row in zip(y_true, top)]))\n")
    env = {**cache, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = _fit(digits, "android-arm64-cpu", tmp_path / "o", env, "--metric", "mymetric:top2", "--max-drop",
                "0.02", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["metric"] == "mymetric:top2" and 0.9 < report["baseline"] <= 1.0
    # mse against one-hot targets: lower is better, the drop is the increase
    z = np.load(digits["eval"])
    onehot = np.eye(10, dtype=np.float32)[z["y"]]
    np.savez(tmp_path / "reg.npz", x=z["x"], y=onehot)
    proc = run_cli("fit", str(digits["keras"]), "-t", "android-arm64-cpu", "--eval", str(tmp_path / "reg.npz"),
                   "--metric", "mse", "--max-drop", "0.01", "-o", str(tmp_path / "r"), "--json", env=cache)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["metric"] == "mse" and report["baseline"] < 0.1
    assert all(c["drop"] == pytest.approx(c["metric"] - report["baseline"]) for c in report["candidates"])


BAD = {
    "eval_wrong_shape": (lambda z: {"x": z["x"][:, :4], "y": z["y"]}, "shape"),
    "eval_nan": (lambda z: {"x": np.where(np.arange(z["x"].size).reshape(z["x"].shape) == 5, np.nan, z["x"]),
                            "y": z["y"]}, "NaN or Inf"),
    "labels_out_of_range": (lambda z: {"x": z["x"], "y": z["y"] + 5}, "integers in [0, 10)"),
    "labels_wrong_rows": (lambda z: {"x": z["x"], "y": z["y"][:10]}, "one label per sample"),
    "eval_smaller_than_classes": (lambda z: {"x": z["x"][:5], "y": z["y"][:5]}, "5 evaluation samples for 10"),
    "eval_no_labels": (lambda z: {"x": z["x"]}, "no labels"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_eval_data(case: str, digits: dict[str, Path], tmp_path: Path, cache: dict[str, str]) -> None:
    make, needle = BAD[case]
    z = dict(np.load(digits["eval"]))
    np.savez(tmp_path / "bad.npz", **make(z))
    out = tmp_path / "out"
    proc = run_cli("fit", str(digits["keras"]), "-t", "cortex-m4", "--eval", str(tmp_path / "bad.npz"),
                   "-o", str(out), env=cache)
    assert proc.returncode == 2, proc.stdout
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [
    (["--max-drop", "-1"], "must be a finite number >= 0"),
    (["--max-drop", "lots"], "is not a number"),
    (["--level", "3"], "--level 3 needs training data: pass --train"),
    (["--level", "4"], "--level 4 is invalid (must be 1, 2 or 3)"),
    (["--metric", "nosuchmodule:f"], "cannot load metric"),
])
def test_bad_options(args: list[str], needle: str, digits: dict[str, Path], tmp_path: Path,
                     cache: dict[str, str]) -> None:
    out = tmp_path / "out"
    proc = _fit(digits, "cortex-m4", out, cache, *args)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_runtime_that_cannot_take_the_model(digits: dict[str, Path], tmp_path: Path) -> None:
    proc = run_cli("fit", str(digits["int8"]), "-t", "ios-ane", "--eval", str(digits["eval"]),
                   "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and "Core ML" in proc.stderr and ".tflite" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_existing_output_refused_then_forced(digits: dict[str, Path], tmp_path: Path,
                                            cache: dict[str, str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = _fit(digits, "android-arm64-cpu", out, cache)
    assert proc.returncode == 2 and "exists" in proc.stderr and "--force" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine"
    proc = _fit(digits, "android-arm64-cpu", out, cache, "--force")  # not edgekit's directory: refused
    assert proc.returncode == 2 and "keep.txt" in proc.stderr and (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    proc = _fit(digits, "android-arm64-cpu", out, cache, "--candidates", "int8")
    assert proc.returncode == 0 and json.loads((out / "report.json").read_text())["winner"] == "int8"
    proc = _fit(digits, "android-arm64-cpu", out, cache, "--candidates", "float16", "--force")
    assert proc.returncode == 0 and json.loads((out / "report.json").read_text())["winner"] == "float16"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary left behind
