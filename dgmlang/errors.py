"""Every mistake a user can make is a `DGMError`; nothing else should reach them.

An error carries a `Span` (where), a message (what), and an optional hint (how to fix it).
Its text is ``FILE:LINE:COL: message``, the source line, a caret, then the hint.

>>> from dgmlang.source import Source, Span
>>> src = Source("m.dgm", "model m {\\n  latent z\\n}")
>>> err = DGMNameError("unknown name 'zz'", Span("m.dgm", 2, 10, 2, 11, source=src),
...                    hint="did you mean 'z'?")
>>> print(err)
m.dgm:2:10: unknown name 'zz'
      latent z
             ^
    hint: did you mean 'z'?
"""
from __future__ import annotations

import difflib
from typing import Iterable, Sequence

from dgmlang.source import Span


class DGMError(Exception):
    """Root of every error a user can cause: in a model, data, arguments or a checkpoint."""

    def __init__(self, message: str, span: Span | None = None, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint

    def __str__(self) -> str:
        if self.span is None:
            text = self.message
        else:
            head, _, rest = _render(self.span).partition("\n")
            text = f"{head}: {self.message}" + (f"\n{rest}" if rest else "")
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


def _render(span: Span) -> str:
    from dgmlang.source import render_span

    return render_span(span)


class DGMSyntaxError(DGMError):
    """The text is not in the language's grammar."""


class DGMNameError(DGMError):
    """Unknown names, names declared twice, reserved words used as names."""


class DGMShapeError(DGMError):
    """Shapes that do not fit together, or a dimension that is not a positive integer."""


class DGMTypeError(DGMError):
    """A value of the wrong kind: wrong distribution arguments, a distribution on a non-random role."""


class DGMModelError(DGMError):
    """A model whose structure is wrong: cycles, a variable with no distribution or two."""


class DGMGuideError(DGMError):
    """A guide option that does not exist, or a latent no derived guide can handle."""


class DGMDataError(DGMError):
    """Data that does not fit the model: names, shapes, dtypes, values outside the support."""


class DGMCheckpointError(DGMError):
    """A saved model that cannot be read safely."""


class DGMTrainingError(DGMError):
    """Training that cannot go on (a NaN or infinite loss)."""


class DGMUsageError(DGMError):
    """A wrong argument to the Python API or the command line."""


class DGMLimitError(DGMError):
    """A model larger than a limit of `dgmlang.limits` (a size, a width, a number); the
    message names the limit and how to raise it."""


class DGMErrors(DGMError):
    """Several independent errors in one file, reported together (sorted by position)."""

    def __init__(self, errors: Iterable[DGMError]):
        self.errors = sorted(
            errors, key=lambda e: (e.span.line, e.span.col) if e.span else (0, 0)
        )
        first = self.errors[0]
        super().__init__(first.message, first.span, hint=first.hint)

    def __str__(self) -> str:
        return "\n\n".join(str(e) for e in self.errors)


class DGMWarning(UserWarning):
    """A result dgmlang computed but cannot vouch for (an importance-sampling estimate whose
    weights are too uneven to trust, say); the message says what to try."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A "did you mean 'x'?" hint when a candidate is close to `name`.

    >>> did_you_mean("Normall", ["Normal", "Gamma"])
    "did you mean 'Normal'?"
    """
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def rows_phrase(rows: Sequence[int], *, most: int = 10) -> str:
    """Data rows named in a message: the first `most` of them.

    >>> rows_phrase([3]), rows_phrase(range(12))
    ('row 3', 'rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...')
    """
    rows = list(rows)
    listed = ", ".join(map(str, rows[:most])) + (", ..." if len(rows) > most else "")
    return f"row{'s' if len(rows) > 1 else ''} {listed}"
