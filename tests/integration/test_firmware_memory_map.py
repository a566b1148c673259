"""The generic board's start-up code and linker script, linked with arm-none-eabi-gcc for each built-in
Cortex-M profile: the vector table, the stack and the tensor arena land where the profile's chip has them
(STM32H7: arena in the AXI SRAM; RP2040: vectors behind the 256-byte boot2), and the vector table has an
entry for every interrupt the core can have. Needs only arm-none-eabi-gcc (no TFLM, no QEMU).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MAIN = r"""
#include <stdint.h>
#include "board.h"
// stands in for the runner: the arena in the section the runner puts it in
__attribute__((section(".bss.edgekit_arena"))) __attribute__((aligned(16))) uint8_t g_test_arena[4096];
int main(void) {
  board_init();
  g_test_arena[0] = 1;
  board_uart_write((const char*)g_test_arena, 1);
  return g_test_arena[4095];
}
"""

BOOT2 = r"""
// a stand-in for the RP2040's 256-byte second-stage boot loader (the pico-sdk's boot_stage2)
__attribute__((section(".boot_header"), used)) const unsigned char g_boot2[256] = {0};
"""

# target -> (vector table address, stack top, arena address (None: in RAM's .bss), interrupt entries)
EXPECTED = {
    "cortex-m0plus": (0x1000_0100, 0x2004_2000, None, 32),
    "cortex-m4": (0x0000_0000, 0x2004_0000, None, 240),
    "cortex-m7": (0x0800_0000, 0x2002_0000, 0x2400_0000, 240),
    "cortex-m33": (0x0000_0000, 0x2008_0000, None, 480),
    "cortex-m55": (0x8000_0000, 0x2010_0000, 0x0200_0000, 480),
}


def _symbols(elf: Path) -> dict[str, tuple[int, int]]:
    out = subprocess.run(["arm-none-eabi-nm", "-S", str(elf)], capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4:
            table[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
        elif len(parts) == 3:
            table[parts[2]] = (int(parts[0], 16), 0)
    return table


def _link(fw: Path, target: str, tmp_path: Path, extra: list[Path]) -> subprocess.CompletedProcess[str]:
    from edgekit.codegen.scaffold import CPU_FLAGS

    (tmp_path / "main.c").write_text(MAIN)
    cmd = ["arm-none-eabi-gcc", *CPU_FLAGS[target][0].split(), "-Os", "-Wall", "-Wextra", "-Werror",
           "-ffunction-sections", "-fdata-sections", f"-I{fw / 'src'}", str(tmp_path / "main.c"),
           str(fw / "src" / "startup.c"), *map(str, extra), "-x", "c++", str(fw / "src" / "systick_clock.cc"),
           str(fw / "boards" / "generic" / "board.cc"), "-x", "none", f"-L{fw / 'boards'}",
           f"-T{fw / 'boards' / 'generic' / 'linker.ld'}", "-Wl,--gc-sections", "--specs=nano.specs",
           "--specs=nosys.specs", "-o", str(tmp_path / "fw.elf")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("target", sorted(EXPECTED))
def test_generic_board_links_to_the_chips_memory_map(models: dict[str, Path], tmp_path: Path, target: str) -> None:
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc is not installed")
    from edgekit.codegen.scaffold import scaffold

    fw = tmp_path / "fw"
    scaffold(models["int8"], target, "cmake", fw)
    vectors, stack_top, arena, irqs = EXPECTED[target]
    extra: list[Path] = []
    if target == "cortex-m0plus":
        # without the boot block the RP2040 does not start: the link says so instead of producing that image
        refused = _link(fw, target, tmp_path, [])
        assert refused.returncode != 0 and "link the chip's 256-byte boot block into .boot_header" in refused.stderr
        (tmp_path / "boot2.c").write_text(BOOT2)
        extra = [tmp_path / "boot2.c"]
    proc = _link(fw, target, tmp_path, extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    syms = _symbols(tmp_path / "fw.elf")
    assert syms["g_vectors"] == (vectors, (16 + irqs) * 4)
    assert syms["_estack"][0] == stack_top
    if arena is None:
        assert syms["_sbss"][0] <= syms["g_test_arena"][0] < syms["_ebss"][0]  # in RAM, zeroed with .bss
    else:
        assert syms["g_test_arena"][0] == arena
    if target == "cortex-m0plus":
        assert syms["g_boot2"][0] == 0x1000_0000
