"""Source positions and rendering a source line with a caret under a place.

>>> src = Source("m.dgm", "model m {\\n  data x\\n}\\n")
>>> span = Span(src.name, 2, 8, 2, 9, source=src)
>>> print(render_span(span))
m.dgm:2:8
      data x
           ^
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class Source:
    """The text of one file (or a Python file's line, for the DSL), kept for error messages."""

    name: str
    text: str = field(repr=False)

    @cached_property
    def lines(self) -> list[str]:
        """The text split into lines, once (rendering many errors stays linear)."""
        return self.text.split("\n")

    def line(self, number: int) -> str:
        """The text of 1-based line `number` without its newline ('' past the end)."""
        if 1 <= number <= len(self.lines):
            return self.lines[number - 1].rstrip("\r")
        return ""


@dataclass(frozen=True)
class Span:
    """Where a node came from: 1-based line and column of its start and end (end exclusive).

    `source` is kept for rendering only and never takes part in comparisons.
    """

    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    source: Source | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def render_span(span: Span) -> str:
    """`FILE:LINE:COL`, then the source line and a caret line under the span.

    Tabs before the column are copied into the caret line so the caret lines up in any
    terminal; a span past the end of its line puts the caret just after the last character.
    """
    head = str(span)
    if span.source is None:
        return head
    text = span.source.line(span.line)
    prefix = "".join(ch if ch == "\t" else " " for ch in text[: span.col - 1])
    prefix += " " * max(0, span.col - 1 - len(text))
    if span.end_line == span.line and span.end_col > span.col:
        width = min(span.end_col, len(text) + 1) - span.col
    else:
        width = 1
    return f"{head}\n    {text}\n    {prefix}{'^' * max(1, width)}"
