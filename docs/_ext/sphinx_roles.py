"""A griffe extension for the API reference: docstrings in ``dr`` cross-reference with Sphinx
roles (``:class:`Policy```, ``:func:`~dr.loss.densify```); mkdocstrings' Google-style
renderer would show the role names. This renders each role as inline code of its target."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|data|attr|mod|exc|obj|const):`~?([^`]+)`")


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` to ```target``` in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(r"`\1`", obj.docstring.value)
