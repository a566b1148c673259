"""The Jinja environment for everything edgekit generates.

Templates live in ``firmware_templates/<kind>/<output-file-name>.j2`` and are
rendered with ``StrictUndefined``: a missing variable is an error, never an
empty string in generated code.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from edgekit import _paths
from edgekit.errors import GenerationError, OutputExistsError


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


def check_output(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise OutputExistsError(f"output directory {out} exists and is not empty",
                                "pass --force to replace it, or choose another -o")


def write_tree(out: Path, files: Mapping[str, str | bytes | Path], force: bool) -> None:
    """Write ``files`` (relative path -> text, bytes, or a directory to copy) atomically into ``out``."""
    check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for rel, content in files.items():
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copytree(content, dst) if content.is_dir() else shutil.copyfile(content, dst)
            elif isinstance(content, bytes):
                dst.write_bytes(content)
            else:
                dst.write_text(content)
            if rel.endswith((".sh", "gradlew")):
                dst.chmod(0o755)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, out: Path) -> None:
    """Rename a finished temporary directory into place; an old ``out`` is replaced only now."""
    backup = None
    if out.exists():
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(backup)
    tmp.rename(out)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
