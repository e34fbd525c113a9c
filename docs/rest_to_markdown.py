"""Turn the docstrings' reStructuredText into the Markdown the API reference renders.

The docstrings name other objects the way Sphinx does
(``:class:`~persistkit.errors.ConflictError```, ``:meth:`snapshot```). Rendered as
they are, mkdocs would print the role literally and never check the name. This
griffe extension rewrites each role into a mkdocs-autorefs link, resolved in the
object's own scope (``scoped_crossrefs`` in mkdocs.yml): a name that no longer
exists, or that is not in the reference, is then a warning, which
``mkdocs build --strict`` turns into a failure. A paragraph ending in ``::``
(reST's "an indented code block follows") ends in ``:``; the indented block is
already a Markdown code block.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_LITERAL_BLOCK_MARKER = re.compile(r"(?<=\S)::(?=\n\n)")
_ROLE = re.compile(r":(?:class|meth|func|mod|attr|exc|data|obj):`(?P<tilde>~?)(?P<target>[^`]+)`")


def _link(match: re.Match[str]) -> str:
    target = match["target"].lstrip(".")
    shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
    return f"[`{shown}`][{target}]"


class RestToMarkdown(griffe.Extension):
    """Rewrite roles and literal-block markers in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _LITERAL_BLOCK_MARKER.sub(":", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(_link, text)
