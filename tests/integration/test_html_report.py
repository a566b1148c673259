"""report.html in a real headless browser (Debian's Chromium): the page renders, its script runs with no
error, it loads nothing from the network, and a screenshot is kept (test-artifacts/ or
$EDGEKIT_TEST_ARTIFACTS)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("EDGEKIT_TEST_ARTIFACTS", ROOT / "test-artifacts"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1280,1800"]


def render(page: Path, tmp_path: Path, shot: str) -> str:
    """The DOM after the page's script ran, and a screenshot kept under ARTIFACTS."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    profile = tmp_path / f"chromium-{shot}"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = ARTIFACTS / f"{shot}.png"
    png.unlink(missing_ok=True)
    snap = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}", page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)
    assert snap.returncode == 0 and png.stat().st_size > 10_000, snap.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return dom.stdout


def assert_self_contained(page: Path) -> None:
    text = page.read_text()
    fetches = re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text) + re.findall(r"@import|url\(", text)
    assert not fetches, fetches


def assert_rendered(dom: str) -> None:
    assert 'data-rendered="yes"' in dom, dom[:500]
    assert 'data-errors=""' in dom, re.search(r'data-errors="[^"]*"', dom)


def test_analyze_report_renders(models: dict[str, Path], tmp_path: Path) -> None:
    from edgekit.analyzer import analyze
    from edgekit.report.html import analysis_html

    report = analyze(models["int8"], "cortex-m4")
    page = tmp_path / "analyze.html"
    page.write_text(analysis_html(report))
    assert_self_contained(page)
    dom = render(page, tmp_path, "report-analyze")
    assert_rendered(dom)
    assert "Tensors live at the peak" in dom and 'class="peak"' in dom
    assert dom.count("<tr") >= len(report.graph.layers) + 3
    for budget in ("flash", "ram", "ops", "dtypes"):
        assert f"<td>{budget}</td>" in dom


def test_fit_report_renders(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.fitting import fit

    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "cache"))
    fit(models["keras"], "cortex-m4", eval_data=str(models["calib"]), out_dir=tmp_path / "out", quiet=True)
    page = tmp_path / "out" / "report.html"
    assert_self_contained(page)
    dom = render(page, tmp_path, "report-fit")
    assert_rendered(dom)
    assert "WINNER" in dom and "<svg" in dom and "Candidates" in dom
    assert dom.count("<circle") == 4  # the candidates plot, inline: float32, int16x8, int8, int8-per-tensor
    assert "int8 layer 1:" in dom  # the per-layer error, worst first


def test_bench_report_renders(models: dict[str, Path], tmp_path: Path) -> None:
    import sys

    from tests.conftest import run_cli

    sim = subprocess.Popen([sys.executable, "-m", "edgekit", "device-sim", str(models["int8"]), "--stop-after",
                            "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sim.stdout is not None
        port = sim.stdout.readline().strip()
        proc = run_cli("bench", str(models["int8"]), "-t", "cortex-m4", "--port", port, "--runs", "5",
                       "--warmup", "1", "-o", str(tmp_path / "bench"), timeout=120)
    finally:
        sim.kill()
        sim.wait()
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "bench" / "report.html"
    assert_self_contained(page)
    dom = render(page, tmp_path, "report-bench")
    assert_rendered(dom)
    assert "Latency statistics" in dom and "median_us" in dom and "<svg" in dom and "model_hash" in dom
