"""MkDocs hooks for the documentation build.

The CLI reference is generated from ``dr-build``'s click help (mkdocs-click), which is plain
text such as ``SOURCE/<class>/<image>``. Rendered as Markdown, those placeholders pass through
as raw HTML tags and the browser hides them; this hook shows them as text again.
"""

from __future__ import annotations

import re
from typing import Any

_PLACEHOLDER = re.compile(r"<(class|image)>")


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    """Escape the help text's ``<class>``/``<image>`` placeholders on the CLI page."""
    if page.file.src_uri == "reference/cli.md":
        return _PLACEHOLDER.sub(r"&lt;\1&gt;", html)
    return html
