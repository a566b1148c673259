"""A non-editable install must carry targets/ and firmware_templates/ inside the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_contains_data_folders(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, check=False)
    if proc.returncode != 0 and "hatchling" in proc.stderr:
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path),
                               str(ROOT)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("edgekit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for target in ROOT.joinpath("targets").glob("*.toml"):
        assert f"edgekit/_data/targets/{target.name}" in names
    templates = [p for p in ROOT.joinpath("firmware_templates").rglob("*") if p.is_file()]
    for t in templates:
        assert "edgekit/_data/firmware_templates/" + t.relative_to(ROOT / "firmware_templates").as_posix() in names

    # installed (not editable) into a scratch target dir, the profiles are found there
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
                   capture_output=True, check=True)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import edgekit, edgekit._paths as p; "
            "assert edgekit.__file__.startswith(sys.argv[1]), edgekit.__file__; "
            "print(p.targets_dir()); print(edgekit.load_profile('cortex-m4').ram_bytes)")
    out = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True,
                         cwd=tmp_path, check=True)
    lines = out.stdout.split()
    assert lines[0].startswith(str(site)) and lines[1] == "196608"


@pytest.mark.slow
def test_sdist_carries_what_its_tests_need_and_they_pass_from_it(tmp_path: Path) -> None:
    import tarfile

    build = subprocess.run([sys.executable, "-c", "import sys, hatchling.build as b; "
                            "print(b.build_sdist(sys.argv[1]))", str(tmp_path)], cwd=ROOT, capture_output=True,
                           text=True, check=False)
    assert build.returncode == 0, build.stderr[-2000:]  # hatchling comes with the dev extra
    sdist = tmp_path / build.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "src", filter="data")
    top = names[0].split("/")[0]
    for needed in ("LICENSE", "README.md", "docs/protocol.md", "tools/gen_tflm_ops.py", "tests/conftest.py",
                   "tests/data/targets/valid_tiny_board.toml", "dev.py", "constraints.txt"):
        assert f"{top}/{needed}" in names, needed
    root = tmp_path / "src" / top
    # the unit tests (no TensorFlow models) run from the unpacked sdist, importing its own edgekit
    env = {**__import__("os").environ, "PYTHONPATH": str(root)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                          "tests/unit"], cwd=root, capture_output=True, text=True, env=env, check=False, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:]
    assert " passed" in run.stdout



def test_wheel_has_no_test_only_code() -> None:
    """The emulated adb device and other doubles belong to the tests, not to what users install."""
    for p in ROOT.joinpath("edgekit").rglob("*.py"):
        text = p.read_text()
        assert "adb_device" not in p.name, p
        assert "import pytest" not in text, p
