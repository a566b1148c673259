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
