from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit import profiles
from edgekit.errors import ProfileError

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "targets"
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
    assert p.transport in ("serial", "adb", "none")


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
    "invalid_unknown_section": "unknown section [memroy]",
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
    "invalid_negative_latency": "budgets.latency_ms = -3 (must be a positive, finite number",
    "invalid_nan_latency": "budgets.latency_ms = nan (must be a positive, finite number",
    "invalid_negative_clock": "hardware.clock_hz = -64 (must be a positive frequency",
    "invalid_zero_baud": "transport.baud = 0 (must be a positive baud rate)",
    "invalid_zero_threads": "runtime.threads = 0 (must be at least 1)",
    "invalid_zero_irqs": "hardware.irqs = 0",
    "invalid_delegate": "runtime.delegate = 'tpu' (must be one of none, xnnpack, gpu, nnapi)",
    "invalid_pointer_bytes": "hardware.pointer_bytes = 3 (must be 4 or 8)",
    "invalid_section_not_table": "budgets must be a table ([budgets]), not int",
    "invalid_not_utf8": "is not UTF-8 text (byte 0xe9 at offset 37)",
    "invalid_budget_over_chip": "budgets.ram_bytes = 300,000 does not fit the region the arena lives in "
                                "(memory.ram_size = 262,144)",
    "invalid_memory_overlap": "memory regions ram (0x20000000+0x20000) and arena (0x20010000+0x80000) overlap",
    "invalid_memory_half_arena": "needs both arena_origin and arena_size",
    "invalid_memory_incomplete": "[memory] without memory.flash_size",
    "invalid_memory_past_4g": "runs past the 32-bit address space",
    "invalid_huge_number": "malformed profile",
    "invalid_deep_nesting": "values nested too deeply",
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


# ---------------------------------------------------------------- memory maps of the built-in profiles

# (flash origin, flash size, boot header, RAM origin, RAM size, arena origin, arena size) of the chip each
# built-in Cortex-M profile names in its description
CHIPS = {
    "cortex-m0plus": (0x1000_0000, 2 << 20, 256, 0x2000_0000, 264 << 10, None, None),  # RP2040 (Pico)
    "cortex-m4": (0x0, 1 << 20, 0, 0x2000_0000, 256 << 10, None, None),  # nRF52840
    "cortex-m7": (0x0800_0000, 2 << 20, 0, 0x2000_0000, 128 << 10, 0x2400_0000, 512 << 10),  # STM32H743
    "cortex-m33": (0x0, 1 << 20, 0, 0x2000_0000, 512 << 10, None, None),  # nRF5340 application core
    "cortex-m55": (0x8000_0000, 0x58_0000, 0, 0x2000_0000, 1 << 20, 0x0200_0000, 4 << 20),  # Alif E3/E7 HP
}


@pytest.mark.parametrize("name", sorted(CHIPS))
def test_builtin_memory_maps_are_the_named_chips(name: str) -> None:
    m = profiles.load_profile(name).memory
    assert m is not None
    assert (m.flash_origin, m.flash_size, m.boot_header_size, m.ram_origin, m.ram_size, m.arena_origin,
            m.arena_size) == CHIPS[name]


def test_phone_profiles_have_no_memory_map() -> None:
    assert profiles.load_profile("android-arm64-cpu").memory is None


def test_a_user_board_overrides_one_memory_key(tmp_path: Path) -> None:
    f = tmp_path / "stm32l4.toml"
    f.write_text('schema_version = 1\ninherit = "cortex-m4"\n[memory]\nflash_origin = 0x0800_0000\n')
    p = profiles.load_profile(str(f))
    assert p.memory is not None and p.memory.flash_origin == 0x0800_0000 and p.memory.ram_size == 256 << 10
    assert p.sources["memory.flash_origin"] == str(f.resolve())


# ---------------------------------------------------------------- files that are not profiles


def test_a_directory_as_target_says_so(tmp_path: Path) -> None:
    for text in (str(tmp_path), str(tmp_path) + os.sep):
        with pytest.raises(ProfileError, match="is a directory, not a profile file") as exc:
            profiles.load_profile(text)
        assert "EDGEKIT_TARGETS_PATH" in str(exc.value)


def test_a_directory_named_like_a_profile_says_so(tmp_path: Path) -> None:
    (tmp_path / "board.toml").mkdir()
    with pytest.raises(ProfileError, match="is a directory"):
        profiles.load_profile(str(tmp_path / "board.toml"))


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(ProfileError, match="not a regular file"):
        profiles.load_profile(str(fifo))


def test_broken_files_on_the_search_path_are_skipped_with_one_warning(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "latin1.toml").write_bytes(b'schema_version = 1\ndescription = "caf\xe9"\ninherit = "cortex-m4"\n')
    (tmp_path / "negative.toml").write_text('schema_version = 1\ninherit = "cortex-m4"\n[budgets]\nlatency_ms = -3\n')
    (tmp_path / "good.toml").write_text('schema_version = 1\ninherit = "cortex-m4"\n')
    monkeypatch.setenv("EDGEKIT_TARGETS_PATH", str(tmp_path))
    names = profiles.list_targets()
    assert "good" in names and "latin1" not in names and "negative" not in names
    assert set(SHIPPED) <= set(names)
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 2, warnings
    assert all(w.startswith("edgekit: warning: skipping target profile") for w in warnings)
    assert "not UTF-8" in warnings[0] and "latency_ms = -3" in warnings[1]


def test_every_shipped_profile_loads_without_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    profiles.list_targets()
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- property: only ProfileError, never a hang

VALID_TEXTS = [p.read_text() for p in sorted((ROOT / "targets").glob("cortex-m*.toml"))] + [
    (DATA / "valid_tiny_board.toml").read_text()]


@st.composite
def _mutated_profile(draw: st.DrawFn) -> bytes:
    text = draw(st.sampled_from(VALID_TEXTS)).encode()
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "splice", "number"]))
        pos = draw(st.integers(0, len(text)))
        if kind == "flip" and text:
            i = min(pos, len(text) - 1)
            text = text[:i] + bytes([text[i] ^ draw(st.integers(1, 255))]) + text[i + 1:]
        elif kind == "insert":
            text = text[:pos] + draw(st.binary(min_size=1, max_size=8)) + text[pos:]
        elif kind == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 40)):]
        elif kind == "splice":
            text = text[:pos] + draw(st.sampled_from(SPLICES)) + text[pos:]
        else:
            text = text[:pos] + str(draw(st.integers(-2**70, 2**70))).encode() + text[pos:]
    return text


SPLICES = [b"\n[memory]\nflash_origin = 0\n", b"\n[budgets]\nlatency_ms = -1\n", b"inherit = \"cortex-m7\"\n",
           b"\n[hardware]\nirqs = 999\n", b"[[budgets]]\n", b"= [[[[[[[[[[1]]]]]]]]]]", b"\xff\xfe", b"nan",
           b"inf", b"\"\"\"", b"\n[ops]\ndtypes = [1, 2]\n", b"\n\"a\\nb\" = 1\n", b"abstract = true\n",
           b"\n[hardware]\nclock_hz = " + b"9" * 5000 + b"\n"]


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(_mutated_profile(), st.binary(max_size=300),
                      st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_loader_raises_only_profile_error(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("prop") / "board.toml"
    path.write_bytes(data)
    try:
        p = profiles.load_profile(str(path))
    except ProfileError as exc:
        assert "\n" not in str(exc)
        return
    assert p.flash_bytes > 0 and p.ram_bytes > 0 and p.runtime in profiles.RUNTIMES
