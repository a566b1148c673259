"""The Jinja environment for everything edgekit generates.

Templates live in ``firmware_templates/<kind>/<output-file-name>.j2`` and are
rendered with ``StrictUndefined``: a missing variable is an error, never an
empty string in generated code.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from edgekit import _paths, output
from edgekit.errors import GenerationError


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_paths.templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def templates(kind: str) -> list[str]:
    """Template names under ``kind/`` (relative, ending in .j2)."""
    root = _paths.templates_dir() / kind
    if not root.is_dir():
        raise GenerationError(f"no templates for {kind!r} in {_paths.templates_dir()}")
    return sorted(str(p.relative_to(_paths.templates_dir())) for p in root.rglob("*.j2"))


def render(template: str, context: Mapping[str, Any]) -> str:
    try:
        return environment().get_template(template).render(**context)
    except jinja2.UndefinedError as exc:
        raise GenerationError(f"template {template} uses an undefined value: {exc.message}") from None


def render_kind(kind: str, context: Mapping[str, Any]) -> dict[str, str]:
    """Render every template of ``kind``; keys are output paths (template path minus kind/ and .j2)."""
    out = {}
    for name in templates(kind):
        rel = name[len(kind) + 1 : -len(".j2")]
        out[rel] = render(name, context)
    return out


def check_output(out: str | os.PathLike[str], force: bool,
                 inputs: Iterable[str | os.PathLike[str] | None] = ()) -> None:
    """Refuse an output path before any work starts (see :mod:`edgekit.output` for the rules)."""
    output.check_path(out, force, inputs)


def write_tree(out: str | os.PathLike[str], files: Mapping[str, str | bytes | Path], force: bool,
               inputs: Iterable[str | os.PathLike[str] | None] = (), command: str = "") -> None:
    """Write ``files`` (relative path -> text, bytes, or a file/directory to copy) atomically into ``out``."""
    with output.Output(out, force, inputs, command=command,
                       expected_bytes=sum(len(c) for c in files.values() if not isinstance(c, Path))) as o:
        for rel, content in files.items():
            o.write(rel, content)
        o.publish()
