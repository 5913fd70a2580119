"""A griffe extension for the API reference: Google ``Example:`` sections read as doctest examples.

The package's docstrings follow Lightning's ``Example:`` heading; griffe's Google parser reads only
``Examples:`` as code examples (``Example:`` would be an admonition of plain Markdown, where
``>>>`` lines and their output lose their layout).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename the ``Example:`` heading of every docstring to ``Examples:`` before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
