from __future__ import annotations

from pathlib import Path

import pytest

from edgekit import profiles
from edgekit.errors import ProfileError

DATA = Path(__file__).resolve().parent.parent / "data" / "targets"
SHIPPED = ["android-arm64-cpu", "android-gpu", "ios-ane", "cortex-m0plus", "cortex-m4", "cortex-m7",
           "cortex-m33", "cortex-m55"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_resolve(name: str) -> None:
    p = profiles.load_profile(name)
    assert p.name == name
    assert p.flash_bytes > 0 and p.ram_bytes > 0
    assert p.runtime in profiles.RUNTIMES
    assert p.dtypes
    assert p.allow_all_builtin or p.ops
    assert p.transport in ("serial", "adb")


def test_list_excludes_abstract_base() -> None:
    names = profiles.list_targets()
    assert set(SHIPPED) <= set(names)
    assert "cortex-m-base" not in names


def test_inheritance_records_sources() -> None:
    p = profiles.load_profile("cortex-m4")
    assert p.sources["budgets.ram_bytes"].endswith("cortex-m4.toml")
    assert p.sources["runtime.kind"].endswith("cortex-m-base.toml")
    assert p.runtime == "tflm" and p.pointer_bytes == 4
    gpu = profiles.load_profile("android-gpu")
    assert gpu.sources["budgets.flash_bytes"].endswith("android-arm64-cpu.toml")
    assert gpu.delegate == "gpu" and not gpu.allow_all_builtin


def test_cortex_m_ops_equal_what_tflm_registers() -> None:
    from edgekit.analysis.tflm_ops import registered_builtin_ops

    registered = set(registered_builtin_ops())
    assert len(registered) > 50  # sanity: read from the real runtime library
    for name in ("cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55"):
        assert profiles.load_profile(name).ops == registered


def test_user_profile_by_path() -> None:
    p = profiles.load_profile(str(DATA / "valid_tiny_board.toml"))
    assert p.ram_bytes == 1024 and p.runtime == "tflm"
    assert p.sources["budgets.ram_bytes"].endswith("valid_tiny_board.toml")


def test_user_profile_on_search_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "my-board.toml").write_text(
        'schema_version = 1\ninherit = "cortex-m7"\n[budgets]\nram_bytes = 300_000\n')
    monkeypatch.setenv("EDGEKIT_TARGETS_PATH", str(tmp_path))
    assert "my-board" in profiles.list_targets()
    p = profiles.load_profile("my-board")
    assert p.ram_bytes == 300_000 and p.cpu == "cortex-m7"


def test_unknown_target_suggests_closest() -> None:
    with pytest.raises(ProfileError) as exc:
        profiles.load_profile("cortex-m5")
    assert "did you mean 'cortex-m55'" in str(exc.value)
    assert "cortex-m4" in str(exc.value)


def test_abstract_profile_is_refused() -> None:
    with pytest.raises(ProfileError, match="abstract"):
        profiles.load_profile("cortex-m-base")


INVALID = sorted(DATA.glob("invalid_*.toml"))
EXPECTED = {
    "invalid_unknown_key": "unknown key budgets.flash_byte",
    "invalid_unknown_section": "unknown section [memory]",
    "invalid_wrong_type": "wrong type",
    "invalid_no_schema_version": "missing schema_version",
    "invalid_future_schema": "schema_version = 99",
    "invalid_syntax": "malformed profile",
    "invalid_cycle_a": "cycle",
    "invalid_cycle_b": "cycle",
    "invalid_self_inherit": "cycle",
    "invalid_unknown_parent": "names no known profile",
    "invalid_runtime": "runtime.kind = 'tvm'",
    "invalid_negative_budget": "must be a positive number",
    "invalid_dtype": "qint7",
    "invalid_missing_budget": "missing budgets.flash_bytes",
    "invalid_no_ops": "no operators allowed",
}


def test_every_invalid_file_has_an_expectation() -> None:
    assert {p.stem for p in INVALID} == set(EXPECTED)


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_profiles_fail_with_file_and_reason(path: Path) -> None:
    with pytest.raises(ProfileError) as exc:
        profiles.load_profile(str(path))
    text = str(exc.value)
    assert EXPECTED[path.stem] in text
    assert "\n" not in text
    if path.stem not in ("invalid_cycle_a", "invalid_cycle_b", "invalid_self_inherit"):
        assert path.name in text  # names the file
    else:
        assert "inherit" in text


def test_unknown_key_hint_suggests_spelling() -> None:
    with pytest.raises(ProfileError) as exc:
        profiles.load_profile(str(DATA / "invalid_unknown_key.toml"))
    assert "did you mean budgets.flash_bytes" in str(exc.value)


def test_generated_op_list_is_current() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(root / "tools" / "gen_tflm_ops.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
