"""Jinja2 rendering of structural templates (PowerShell, configs).

Templates render *structure* only: StrictUndefined catches a missing variable, and values
from the playbook never go through here; they travel as parameters.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from labctl.core.assets import asset_path
from labctl.core.errors import TemplateError

if TYPE_CHECKING:
    import jinja2


def psquote(value: object) -> str:
    """Single-quote a value for PowerShell. Only for labctl's own constants, never user data."""
    return "'" + str(value).replace("'", "''") + "'"


@lru_cache(maxsize=8)
def environment(root: str) -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(asset_path(root))),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["psquote"] = psquote
    return env


def render(root: str, name: str, **context: object) -> str:
    import jinja2

    try:
        text: str = environment(root).get_template(name).render(**context)
        return text
    except jinja2.TemplateNotFound:
        raise TemplateError(f"template {root}/{name} not found") from None
    except jinja2.UndefinedError as e:
        raise TemplateError(f"template {root}/{name}: {e.message}") from None
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"template {root}/{name}:{e.lineno}: {e.message}") from None
