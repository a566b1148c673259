"""TFLM's code size in the flash budget: the measured table, its arithmetic, the link-map and ELF readers
(checked against GNU binutils' own `nm` and `size` on a program the host's gcc links), and the budgets the
Cortex-M profiles derive from their chip's memory and what the application reserves."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgekit import profiles
from edgekit.analysis import runtime_size
from edgekit.analysis.elf_size import elf_sizes, read_elf
from edgekit.analysis.linkmap import flash_sections, object_name, parse_map
from edgekit.errors import ModelError, ProfileError

CORTEX_M = ("cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55")


def _table(**over: object) -> runtime_size.CodeSizeTable:
    d = {"arch": "cortex-m4+fp", "kernels": "cmsis_nn", "interpreter_bytes": 1000,
         "ops": {"A": {"bytes": 300, "shared": [0, 1]}, "B": {"bytes": 200, "shared": [0]}, "C": {"bytes": 50}},
         "shared_bytes": [40, 7], "meta": {"tflm_commit": "abc", "compiler_short": "gcc 12"}}
    d.update(over)
    return runtime_size.table_from_dict(d, "test")


def test_shared_sections_count_once_for_a_set_of_operators() -> None:
    t = _table()
    assert t.kernel_bytes(["A"]) == (300, {"A": 300}, [], 0)
    # A and B both pull section 0 (40 B): the pair is 40 B less than the two alone
    assert t.kernel_bytes(["A", "B"]) == (460, {"A": 300, "B": 200}, [], 40)
    assert t.kernel_bytes(["A", "B", "C", "B"])[0] == 510  # duplicates are one operator
    kernels, _, missing, _ = t.kernel_bytes(["A", "ZZZ"])
    assert (kernels, missing) == (300, ["ZZZ"])


def test_malformed_tables_are_refused_by_name() -> None:
    with pytest.raises(ProfileError, match="shared section that is not there"):
        _table(ops={"A": {"bytes": 1, "shared": [5]}})
    with pytest.raises(ProfileError, match="malformed"):
        runtime_size.table_from_dict({"arch": "x"}, "t.json")


def test_builtin_table_covers_every_shipped_core_with_its_provenance() -> None:
    by_arch = {(t.arch, t.kernels): t for t in runtime_size.read_tables(runtime_size.BUILTIN_TABLE)}
    for name in CORTEX_M:
        p = profiles.load_profile(name)
        table, borrowed = runtime_size.find_table(p)
        assert table is not None and borrowed is None, name
        assert (table.arch, table.kernels) in by_arch
        assert table.arch == runtime_size.TFLM_ARCH[p.cpu]
        # every operator the profile allows was measured, or the library says why it lacks it
        assert p.ops <= set(table.ops) | set(table.unavailable), name
        assert 10_000 < table.interpreter_bytes < 100_000
        for key in ("tflm_commit", "compiler", "library", "library_sha256", "flags"):
            assert table.meta.get(key), (name, key)
        assert table.app_bytes is not None and 0 < table.app_bytes < 64_000


def test_a_core_without_a_table_borrows_the_nearest_and_says_so(tmp_path: Path) -> None:
    board = tmp_path / "m3.toml"
    board.write_text('schema_version = 1\ninherit = "cortex-m4"\n[hardware]\ncpu = "cortex-m3"\n')
    code = runtime_size.estimate(["CONV_2D"], profiles.load_profile(board))
    assert code is not None and code.borrowed_from == "cortex-m3" and "no table for cortex-m3" in code.kind
    unknown = tmp_path / "riscv.toml"
    unknown.write_text('schema_version = 1\ninherit = "cortex-m4"\n[hardware]\ncpu = "rv32imc"\n')
    assert runtime_size.estimate(["CONV_2D"], profiles.load_profile(unknown)) is None


def test_a_user_table_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = _table(interpreter_bytes=12_345)
    runtime_size.write_tables(tmp_path / "mine.json", [mine], "test")
    monkeypatch.setenv(runtime_size.TABLE_ENV, str(tmp_path / "mine.json"))
    code = runtime_size.estimate(["A", "B"], profiles.load_profile("cortex-m4"))
    assert code is not None and code.bytes == 12_345 + 460 and code.interpreter_bytes == 12_345
    m7 = runtime_size.estimate(["CONV_2D"], profiles.load_profile("cortex-m7"))
    assert m7 is not None and "cortex-m7+fp" in m7.table  # the built-in table fills in the other cores
    monkeypatch.setenv(runtime_size.TABLE_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(ProfileError, match="does not exist"):
        runtime_size.tables()


# ----------------------------------------------------------------- link maps and ELF sizes, with GNU binutils

LONG = "a_function_whose_name_is_long_enough_that_ld_wraps_the_line"
PROGRAM = f"""
__attribute__((noinline)) int {LONG}(int x) {{ return x * 3 + 1; }}
int unused_and_collected(int x) {{ return x * x * x; }}
const char table[300] = "x";
int counter = 7;
int zeros[64];
int from_the_archive(int x);
int main(void) {{ zeros[counter & 63] = counter; return {LONG}(table[counter & 255]) + from_the_archive(zeros[1]); }}
"""
MEMBER = "__attribute__((noinline)) int from_the_archive(int x) { return x ^ 0x5a5a; }\n"


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None or shutil.which("nm") is None or shutil.which("size") is None:
        pytest.skip("the host's gcc and binutils (nm, size) are not installed")
    d = tmp_path_factory.mktemp("link")
    (d / "prog.c").write_text(PROGRAM)
    (d / "member.c").write_text(MEMBER)
    for src in ("prog", "member"):
        subprocess.run(["gcc", "-O1", "-ffunction-sections", "-fdata-sections", "-c", f"{src}.c", "-o", f"{src}.o"],
                       cwd=d, check=True, timeout=120)
    subprocess.run(["ar", "rcs", "libx.a", "member.o"], cwd=d, check=True, timeout=60)
    subprocess.run(["gcc", "prog.o", "libx.a", "-Wl,--gc-sections", "-Wl,-Map=prog.map", "-o", "prog.elf"], cwd=d,
                   check=True, timeout=120)
    return d


def test_link_map_sections_match_nm_sizes(linked: Path) -> None:
    sections = parse_map((linked / "prog.map").read_text())
    ours = {s.name: s for s in sections if s.obj == "prog.o"}
    nm = subprocess.run(["nm", "-S", "--defined-only", "prog.elf"], cwd=linked, capture_output=True, text=True,
                        check=True).stdout
    sizes = {m.group(2): int(m.group(1), 16) for m in re.finditer(r"^\w+ (\w+) \w (\w+)$", nm, re.M)}
    # the long name sits on a line of its own, its address, size and object on the next
    assert ours[f".text.{LONG}"].size == sizes[LONG] and ours[f".text.{LONG}"].output == ".text"
    assert ours[".text.main"].size == sizes["main"]
    assert ours[".rodata.table"].size == 300 and ours[".data.counter"].size == 4
    assert ".text.unused_and_collected" not in ours  # garbage-collected: not placed, not listed
    member = next(s for s in sections if s.name == ".text.from_the_archive")
    assert member.obj == "libx.a(member.o)" and member.archive == "libx.a" and member.size == sizes["from_the_archive"]


def test_elf_sizes_equal_binutils_size(linked: Path) -> None:
    blob, sizes = read_elf(linked / "prog.elf")
    berkeley = subprocess.run(["size", "prog.elf"], cwd=linked, capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(v) for v in berkeley.splitlines()[1].split()[:3])
    assert (sizes.text, sizes.data, sizes.bss) == (text, data, bss)
    assert sizes.flash == text + data
    placed = flash_sections(parse_map((linked / "prog.map").read_text()), sizes.sections)
    assert placed[("prog.o", ".rodata.table")] == 300
    assert sum(placed.values()) <= sizes.flash + 4096  # input sections before merging and alignment
    assert elf_sizes(blob).text == text


def test_not_an_elf_or_a_map_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "fw.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelError, match="is not an ELF file"):
        read_elf(tmp_path / "fw.bin")
    with pytest.raises(ModelError, match="does not exist"):
        read_elf(tmp_path / "nothing.elf")
    with pytest.raises(ModelError, match="not a GNU ld link map"):
        parse_map("hello\n", "x.map")
    assert object_name("/a/b/libtensorflow-microlite.a(conv.o)") == "libtensorflow-microlite.a(conv.o)"
    assert object_name("/build/CMakeFiles/firmware.dir/src/main.cc.obj") == "main.cc.obj"


# ----------------------------------------------------------------- budgets from the chip and the application's reserve


def test_cortex_m_budgets_are_the_chip_minus_the_application() -> None:
    for name in CORTEX_M:
        p = profiles.load_profile(name)
        mem = p.memory
        assert mem is not None and p.app_flash_bytes and p.app_ram_bytes, name
        assert p.flash_bytes == mem.flash_size - mem.boot_header_size - p.app_flash_bytes, name
        assert p.ram_bytes == (mem.arena_size or mem.ram_size) - p.app_ram_bytes, name
        assert set(p.derived) == {"budgets.flash_bytes", "budgets.ram_bytes"}
    shown = dict((k, v) for k, v, _ in profiles.describe(profiles.load_profile("cortex-m0plus")))
    assert "(= memory.flash_size - memory.boot_header_size - reserve.app_flash_bytes)" in shown["budgets.flash_bytes"]


def test_a_board_changes_its_chip_and_the_budget_follows(tmp_path: Path) -> None:
    small = tmp_path / "stm32l4.toml"
    small.write_text('schema_version = 1\ninherit = "cortex-m4"\n[memory]\nflash_origin = 0x0800_0000\n'
                     "flash_size = 524_288\nram_origin = 0x2000_0000\nram_size = 98_304\n")
    p = profiles.load_profile(small)
    assert (p.flash_bytes, p.ram_bytes) == (524_288 - 131_072, 98_304 - 65_536)
    assert p.sources["budgets.flash_bytes"] == str(small.resolve())  # the file nearest the leaf that set a term
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('schema_version = 1\ninherit = "cortex-m4"\n[budgets]\nflash_bytes = 300_000\n')
    p = profiles.load_profile(explicit)
    assert p.flash_bytes == 300_000 and "budgets.flash_bytes" not in p.derived and p.ram_bytes == 196_608
    greedy = tmp_path / "greedy.toml"
    greedy.write_text('schema_version = 1\ninherit = "cortex-m4"\n[reserve]\napp_flash_bytes = 2_000_000\n')
    with pytest.raises(ProfileError, match=r"reserve.app_flash_bytes = 2,000,000 leaves no flash for the model and "
                                           r"TFLM \(memory.flash_size = 1,048,576 B\)"):
        profiles.load_profile(greedy)
    bad = tmp_path / "bad.toml"
    bad.write_text('schema_version = 1\ninherit = "cortex-m4"\n[runtime]\nkernels = "fast"\n')
    with pytest.raises(ProfileError, match=r"runtime.kernels = 'fast' \(must be one of cmsis_nn, reference"):
        profiles.load_profile(bad)


def test_reference_kernels_have_their_own_measured_table(tmp_path: Path) -> None:
    """runtime.kernels = "reference" counts TFLM's reference kernels (measured for the Cortex-M4F), not
    CMSIS-NN's; a core without a reference table borrows the nearest one's and says so."""
    board = tmp_path / "ref.toml"
    board.write_text('schema_version = 1\ninherit = "cortex-m4"\n[runtime]\nkernels = "reference"\n')
    ref = runtime_size.estimate(["CONV_2D", "SOFTMAX"], profiles.load_profile(board))
    cmsis = runtime_size.estimate(["CONV_2D", "SOFTMAX"], profiles.load_profile("cortex-m4"))
    assert ref is not None and cmsis is not None and ref.borrowed_from is None
    assert "reference kernels" in ref.table and "CMSIS-NN" in cmsis.table
    # CMSIS-NN's convolution brings its own optimized paths on top of what TFLM's kernel needs
    assert ref.per_op["CONV_2D"] < cmsis.per_op["CONV_2D"]
    m7 = tmp_path / "m7ref.toml"
    m7.write_text('schema_version = 1\ninherit = "cortex-m7"\n[runtime]\nkernels = "reference"\n')
    borrowed = runtime_size.estimate(["CONV_2D"], profiles.load_profile(m7))
    assert borrowed is not None and borrowed.borrowed_from == "cortex-m7" and "cortex-m4+fp" in borrowed.kind
