"""GNU ld link maps (``-Wl,-Map=firmware.map``): which input section of which object ended up where.

The part after ``Linker script and memory map`` lists each output section (a line starting in column
0, e.g. ``.text  0x00000000  0x1234``) and under it the input sections placed in it, one per line or,
when the name is long, the name on one line and ``address size object`` on the next::

    .text
     .text.main     0x00008000       0x2c main.o
     .text._ZN6tflite16MicroInterpreter6InvokeEv
                    0x0000802c      0x1a4 /path/libtensorflow-microlite.a(micro_interpreter.o)

Patterns (`` *(.text*)``), symbol assignments, ``*fill*`` padding and ``LOAD`` lines are not input
sections. An input section is keyed by its object (``archive.a(member.o)`` or ``file.o``, without
directories) and its name: the same key in two links of the same objects is the same code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePath

from edgekit.errors import ModelError

_HEADER = "Linker script and memory map"
_OUTPUT = re.compile(r"^(\.[^\s]+|COMMON)(?:\s+(0x[0-9a-fA-F]+)\s+(0x[0-9a-fA-F]+))?")
_INPUT = re.compile(r"^ (\S+)\s+(0x[0-9a-fA-F]+)\s+(0x[0-9a-fA-F]+)\s+(\S.*)$")
_INPUT_NAME = re.compile(r"^ (\S+)\s*$")
_CONTINUED = re.compile(r"^\s+(0x[0-9a-fA-F]+)\s+(0x[0-9a-fA-F]+)\s+(\S.*)$")
_MEMBER = re.compile(r"^(.*?)\((.*)\)$")


@dataclass(frozen=True)
class InputSection:
    output: str  # the output section it was placed in (.text, .rodata, .data, ...)
    name: str  # input section name (.text._ZN6tflite...)
    obj: str  # "libtensorflow-microlite.a(conv.o)", "main.o"
    size: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.obj, self.name)

    @property
    def archive(self) -> str:
        """The archive the object came from ("" for a plain object file)."""
        m = _MEMBER.match(self.obj)
        return m.group(1) if m else ""


def object_name(path: str) -> str:
    """``/a/b/lib.a(x.o)`` -> ``lib.a(x.o)``; ``/a/CMakeFiles/fw.dir/src/main.cc.obj`` -> ``main.cc.obj``."""
    path = path.strip()
    m = _MEMBER.match(path)
    if m:
        return f"{PurePath(m.group(1)).name}({m.group(2)})"
    return PurePath(path).name


def parse_map(text: str, where: str = "link map") -> list[InputSection]:
    """Every input section placed in an output section, in map order (empty ones included)."""
    lines = text.splitlines()
    try:
        start = lines.index(_HEADER)
    except ValueError:
        raise ModelError(f"{where} is not a GNU ld link map (no '{_HEADER}' line)",
                         "link with -Wl,-Map=FILE and pass that file") from None
    out: list[InputSection] = []
    current = ""
    i = start + 1
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("OUTPUT(") or line.startswith("Cross Reference Table"):
            break
        if not line or line[0] != " ":
            m = _OUTPUT.match(line)
            current = m.group(1) if m else ""
            continue
        m = _INPUT.match(line)
        if m:
            name, size, obj = m.group(1), int(m.group(3), 16), m.group(4)
        else:
            n = _INPUT_NAME.match(line)
            c = _CONTINUED.match(lines[i]) if n and i < len(lines) else None
            if not (n and c):
                continue
            name, size, obj = n.group(1), int(c.group(2), 16), c.group(3)
            i += 1
        if name.startswith("*") or not current or obj.startswith("0x"):
            continue  # patterns, *fill*, and assignments are not input sections
        out.append(InputSection(current, name, object_name(obj), size))
    return out


def flash_sections(sections: Iterable[InputSection], flash_outputs: Iterable[str]) -> dict[tuple[str, str], int]:
    """Input sections placed in the given (flash) output sections: key -> bytes (empty ones left out)."""
    keep = set(flash_outputs)
    found: dict[tuple[str, str], int] = {}
    for s in sections:
        if s.output in keep and s.size:
            found[s.key] = found.get(s.key, 0) + s.size
    return found
