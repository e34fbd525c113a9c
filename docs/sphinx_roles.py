"""Turn the docstrings' Sphinx roles into cross-references the API reference checks.

The docstrings name other objects the way Sphinx does
(``:class:`~persistkit.errors.ConflictError```, ``:meth:`snapshot```). Rendered as
they are, mkdocs would print the role literally and never check the name. This
griffe extension rewrites each role into a mkdocs-autorefs link, resolved in the
object's own scope (``scoped_crossrefs`` in mkdocs.yml): a name that no longer
exists, or that is not in the reference, is then a warning, which
``mkdocs build --strict`` turns into a failure.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|mod|attr|exc|data|obj):`(?P<tilde>~?)(?P<target>[^`]+)`")


def _link(match: re.Match[str]) -> str:
    target = match["target"].lstrip(".")
    shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
    return f"[`{shown}`][{target}]"


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_link, obj.docstring.value)
