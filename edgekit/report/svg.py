"""Report templates (SVG plots) rendered with Jinja from edgekit/report/templates/."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
                              undefined=jinja2.StrictUndefined, autoescape=True)


def render_template(name: str, context: dict[str, Any]) -> str:
    return _env().get_template(name).render(**context)
