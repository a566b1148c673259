"""Where the data folders live: inside the wheel, or beside the package in a checkout."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    installed = _PKG / "_data" / name  # placed there by the wheel build (force-include)
    if installed.is_dir():
        return installed
    return _PKG.parent / name  # a source checkout / editable install


def targets_dir() -> Path:
    return _data_dir("targets")


def templates_dir() -> Path:
    return _data_dir("firmware_templates")

