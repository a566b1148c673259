"""Bytes to a C initializer list, fast (vectorized) and deterministic.

Each byte becomes ``0xNN,`` with 16 per line: the same layout as ``xxd -i``,
generated without a Python-level loop so a 10 MB model takes a fraction of a
second.
"""

from __future__ import annotations

import keyword
import re

import numpy as np

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
C_KEYWORDS = frozenset({
    "alignas", "alignof", "and", "and_eq", "asm", "auto", "bitand", "bitor", "bool", "break", "case", "catch",
    "char", "char8_t", "char16_t", "char32_t", "class", "compl", "concept", "const", "consteval", "constexpr",
    "constinit", "const_cast", "continue", "co_await", "co_return", "co_yield", "decltype", "default",
    "delete", "do", "double", "dynamic_cast", "else", "enum", "explicit", "export", "extern", "false",
    "float", "for", "friend", "goto", "if", "inline", "int", "long", "mutable", "namespace", "new",
    "noexcept", "not", "not_eq", "nullptr", "operator", "or", "or_eq", "private", "protected", "public",
    "register", "reinterpret_cast", "requires", "restrict", "return", "short", "signed", "sizeof", "static",
    "static_assert", "static_cast", "struct", "switch", "template", "this", "thread_local", "throw", "true",
    "try", "typedef", "typeid", "typename", "union", "unsigned", "using", "virtual", "void", "volatile",
    "wchar_t", "while", "xor", "xor_eq", "main",
})


def c_identifier(name: str, fallback: str = "model") -> str:
    """A valid, non-reserved C/C++ identifier derived from ``name`` (never injected raw)."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name)
    ident = re.sub(r"_+", "_", ident).strip("_")
    if not ident:
        ident = fallback
    if ident[0].isdigit():
        ident = "m_" + ident
    if ident in C_KEYWORDS or keyword.iskeyword(ident) or re.match(r"^_[A-Z]|^__", ident):
        ident = ident.lstrip("_") + "_model"
    return ident


def c_string(text: str) -> str:
    """A C string literal for ``text``: printable ASCII kept, everything else escaped."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif 32 <= code < 127 and ch != "?":  # '?' escaped: no trigraphs
            out.append(ch)
        else:
            out.extend(f"\\{b:03o}" for b in ch.encode())
    return '"' + "".join(out) + '"'


def format_bytes(data: bytes, per_line: int = 16, indent: str = "  ") -> str:
    """``0x..,`` entries, ``per_line`` per line, each line indented; no trailing newline."""
    if not data:
        return ""
    arr = np.frombuffer(data, dtype=np.uint8)
    n = arr.size
    cell = np.empty((n, 6), dtype=np.uint8)  # "0xNN, "
    cell[:, 0] = ord("0")
    cell[:, 1] = ord("x")
    cell[:, 2] = _HEX[arr >> 4]
    cell[:, 3] = _HEX[arr & 0x0F]
    cell[:, 4] = ord(",")
    cell[:, 5] = ord(" ")
    rows = -(-n // per_line)
    pad = rows * per_line - n
    if pad:
        cell = np.concatenate([cell, np.zeros((pad, 6), dtype=np.uint8)])
    grid = cell.reshape(rows, per_line * 6)
    ind = np.frombuffer(indent.encode(), dtype=np.uint8)
    lines = np.concatenate([np.broadcast_to(ind, (rows, ind.size)), grid[:, :-1],
                            np.full((rows, 1), ord("\n"), dtype=np.uint8)], axis=1)
    text = lines.tobytes()
    if pad:  # the last row: drop the padding cells
        last_len = ind.size + (per_line - pad) * 6 - 1
        text = text[: -(lines.shape[1])] + lines[-1, :last_len].tobytes() + b"\n"
    return text.decode("ascii").rstrip("\n")
