"""What a linked firmware occupies, read from its ELF section headers (what ``arm-none-eabi-size`` prints).

- flash: every allocated section with contents (``.text``, ``.rodata``, vector table, unwind tables,
  init arrays, and ``.data``, whose initial values are stored in flash and copied at start-up);
- RAM: allocated sections, ``.data`` included, without contents (``.bss``, stack, heap, tensor arena) too.

``text``/``data``/``bss`` are the three figures of ``size``'s Berkeley format: read-only allocated
contents, writable allocated contents, allocated without contents. ELF32 and ELF64, either byte order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import ModelError

SHF_WRITE, SHF_ALLOC = 0x1, 0x2
SHT_NOBITS = 8
MAX_ELF_BYTES = 256 << 20


@dataclass(frozen=True)
class ElfSizes:
    path: str
    text: int  # allocated, read-only, with contents
    data: int  # allocated, writable, with contents (initial values kept in flash)
    bss: int  # allocated without contents
    sections: dict[str, int] = field(default_factory=dict)  # allocated sections with contents -> bytes
    machine: int = 0  # e_machine: 40 = ARM

    @property
    def flash(self) -> int:
        """Bytes the image takes in flash: ``text + data``."""
        return self.text + self.data

    def to_dict(self) -> dict[str, object]:
        return {"text": self.text, "data": self.data, "bss": self.bss, "flash": self.flash}


def read_elf(path: str | Path) -> tuple[bytes, ElfSizes]:
    """The ELF file's bytes and its section sizes; ModelError for a file that is not an ELF."""
    p = Path(path)
    try:
        if not p.is_file():
            raise ModelError(f"firmware {p} does not exist or is not a file", "pass the linked firmware.elf")
        if p.stat().st_size > MAX_ELF_BYTES:
            raise ModelError(f"firmware {p} is {p.stat().st_size:,} B, too big for a microcontroller image")
        blob = p.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read firmware {p}: {exc.strerror}") from None
    return blob, elf_sizes(blob, str(p))


def elf_sizes(blob: bytes, where: str = "firmware") -> ElfSizes:
    if len(blob) < 52 or blob[:4] != b"\x7fELF":
        raise ModelError(f"{where} is not an ELF file", "pass the linked image (firmware.elf), not a .bin or .hex")
    cls, order = blob[4], blob[5]
    if cls not in (1, 2) or order not in (1, 2):
        raise ModelError(f"{where}: unknown ELF class {cls} or byte order {order}")
    e = "<" if order == 1 else ">"
    try:
        machine = struct.unpack_from(e + "H", blob, 18)[0]
        if cls == 1:
            shoff = struct.unpack_from(e + "I", blob, 0x20)[0]
            shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", blob, 0x2E)
            fmt, size_at = e + "IIIIII", 5
        else:
            shoff = struct.unpack_from(e + "Q", blob, 0x28)[0]
            shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", blob, 0x3A)
            fmt, size_at = e + "IIQQQQ", 5
        headers = [struct.unpack_from(fmt, blob, shoff + k * shentsize) for k in range(shnum)]
        strtab = headers[shstrndx][4] if shstrndx < shnum else 0
    except (struct.error, IndexError):
        raise ModelError(f"{where}: truncated or corrupt ELF section headers") from None
    text = data = bss = 0
    sections: dict[str, int] = {}
    for h in headers:
        name_off, kind, flags, size = h[0], h[1], h[2], h[size_at]
        if not flags & SHF_ALLOC:
            continue
        if kind == SHT_NOBITS:
            bss += size
            continue
        end = blob.find(b"\0", strtab + name_off)
        name = blob[strtab + name_off:end].decode("ascii", "replace") if end >= 0 else "?"
        sections[name] = sections.get(name, 0) + size
        if flags & SHF_WRITE:
            data += size
        else:
            text += size
    return ElfSizes(where, text, data, bss, sections, machine)
