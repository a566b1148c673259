"""Flash counts the model and TFLM's code for its operators: `check` names the runtime's share when that is
what does not fit, and a linked firmware's .text+.data replaces the estimate (no TFLM checkout needed: the
code-size table is built in, the firmware here is linked by the host's own gcc)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def _board(tmp_path: Path, flash: int, name: str = "board") -> Path:
    board = tmp_path / f"{name}.toml"
    board.write_text(f'schema_version = 1\ninherit = "cortex-m4"\n[budgets]\nflash_bytes = {flash}\n')
    return board


def test_fits_by_model_bytes_alone_but_not_with_its_runtime_code(models: dict[str, Path], tmp_path: Path) -> None:
    model = models["int8"]
    size = model.stat().st_size
    code = json.loads(run_cli("analyze", str(model), "-t", "cortex-m4", "--json").stdout)["runtime_code"]
    assert code["per_op"].keys() == {"CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "RESHAPE", "SOFTMAX"}
    assert code["bytes"] == code["interpreter_bytes"] + code["kernel_bytes"] > 40_000
    assert "cortex-m4+fp CMSIS-NN" in code["table"] and code["kind"].startswith("estimate from the measured table")
    # a board whose flash holds the model with room to spare, but not the model and TFLM's code
    board = _board(tmp_path, size + code["bytes"] // 2)
    proc = run_cli("check", str(model), "-t", str(board))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (f"flash {size + code['bytes']:,} > {size + code['bytes'] // 2:,} by {code['bytes'] - code['bytes'] // 2:,} "
            f"(model {size:,} B + runtime code {code['bytes']:,} B") in proc.stdout
    out = json.loads(run_cli("check", str(model), "-t", str(board), "--json").stdout)
    assert out["fits"] is False and out["budgets"]["flash"]["parts"] == {"model": size, "runtime code": code["bytes"]}
    assert out["budgets"]["ram"]["fits"] is True  # the runtime's share alone is what does not fit
    # with room for both it fits
    assert run_cli("check", str(model), "-t", str(_board(tmp_path, size + code["bytes"], "roomy"))).returncode == 0


def test_the_flash_figure_differs_per_core(models: dict[str, Path]) -> None:
    """The same operators cost different code on each core (CMSIS-NN's paths for DSP, MVE, or neither)."""
    seen = {}
    for target in ("cortex-m0plus", "cortex-m4", "cortex-m55"):
        out = json.loads(run_cli("analyze", str(models["int8"]), "-t", target, "--json").stdout)
        seen[target] = out["runtime_code"]["bytes"]
        assert out["budgets"]["flash"]["used"] == out["flash_bytes"] + seen[target]
    assert len(set(seen.values())) == 3


def test_a_linked_firmware_replaces_the_estimate(models: dict[str, Path], tmp_path: Path) -> None:
    """--firmware: the ELF's .text+.data (as binutils' `size` prints them) is what counts, model included."""
    if shutil.which("gcc") is None or shutil.which("size") is None:
        pytest.skip("the host's gcc and binutils are not installed")
    model = models["int8"]
    (tmp_path / "blob.S").write_text(f'.section .rodata\n.balign 16\n.incbin "{model}"\n')
    (tmp_path / "main.c").write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "blob.S", "main.c", "-o", "fw.elf"], cwd=tmp_path, check=True, timeout=120)
    berkeley = subprocess.run(["size", "fw.elf"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    text, data = (int(v) for v in berkeley.splitlines()[1].split()[:2])
    out = json.loads(run_cli("analyze", str(model), "-t", "cortex-m4", "--firmware", str(tmp_path / "fw.elf"),
                             "--json").stdout)
    flash = out["budgets"]["flash"]
    assert flash["used"] == text + data == out["firmware"]["flash"]
    assert flash["limit"] == 917_504 + 131_072  # the image holds the application: budget + its reserve
    assert flash["parts"] == {"model": model.stat().st_size, "runtime code + application": text + data -
                              model.stat().st_size}
    assert not any("does not hold this model" in n for n in out["notes"])
    # a built scaffold's folder (its build/firmware.elf) is taken as well; a folder without one is refused
    (tmp_path / "build").mkdir()
    shutil.copyfile(tmp_path / "fw.elf", tmp_path / "build" / "firmware.elf")
    folder = json.loads(run_cli("analyze", str(model), "-t", "cortex-m4", "--firmware", str(tmp_path), "--json").stdout)
    assert folder["budgets"]["flash"]["used"] == text + data
    empty = run_cli("check", str(model), "-t", "cortex-m4", "--firmware", str(tmp_path / "build" / "..") + "/nothing")
    assert empty.returncode == 2
    (tmp_path / "none").mkdir()
    none = run_cli("check", str(model), "-t", "cortex-m4", "--firmware", str(tmp_path / "none"))
    assert none.returncode == 2 and "is a folder without firmware.elf" in none.stderr
    # an image of something else is measured all the same, and said to be
    other = json.loads(run_cli("analyze", str(model), "-t", "cortex-m4", "--firmware", str(tmp_path / "main.c"),
                               "--json").stdout)
    assert other["error"].startswith(f"{tmp_path / 'main.c'} is not an ELF file")
    subprocess.run(["gcc", "main.c", "-o", "empty.elf"], cwd=tmp_path, check=True, timeout=120)
    out = json.loads(run_cli("analyze", str(model), "-t", "cortex-m4", "--firmware", str(tmp_path / "empty.elf"),
                             "--json").stdout)
    assert any("does not hold this model's exact bytes" in n for n in out["notes"])


def test_measure_needs_tflm_root_and_a_tflm_target(models: dict[str, Path], tmp_path: Path) -> None:
    proc = run_cli("analyze", str(models["int8"]), "-t", "cortex-m4", "--measure", "qemu",
                   env={"TFLM_ROOT": "", "EDGEKIT_MEASURE_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "edgekit: error: --measure qemu builds the firmware against TFLM: TFLM_ROOT is not set" in proc.stderr
    proc = run_cli("analyze", str(models["float"]), "-t", "android-arm64-cpu", "--measure", "qemu")
    assert proc.returncode == 2 and "target android-arm64-cpu runs litert" in proc.stderr
    proc = run_cli("check", str(models["int8"]), "-t", "cortex-m33", "--measure", "qemu",
                   env={"TFLM_ROOT": str(tmp_path)})
    assert proc.returncode == 2 and "no QEMU board for cortex-m33's core 'cortex-m33'" in proc.stderr
