"""The syntax tree of a `.dgm` file: frozen dataclasses, each with a `span` that never
takes part in comparisons, so equal programs compare equal wherever they came from.

>>> Num(1.0) == Num(1.0, span=None)
True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from dgmlang.source import Span


def _span():
    return field(default=None, compare=False, repr=False)


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Num:
    """A number literal; `value` is an int when written without '.' or exponent."""

    value: int | float
    span: Span | None = _span()


@dataclass(frozen=True)
class Name:
    name: str
    span: Span | None = _span()


@dataclass(frozen=True)
class ListExpr:
    """`[a, b, c]`."""

    items: tuple["Expr", ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class UnaryOp:
    op: str  # "-"
    operand: "Expr"
    span: Span | None = _span()


@dataclass(frozen=True)
class BinOp:
    op: str  # "+", "-", "*", "/", "**"
    left: "Expr"
    right: "Expr"
    span: Span | None = _span()


@dataclass(frozen=True)
class Slice:
    """`start:stop:step` inside brackets; each part may be None."""

    start: "Expr | None"
    stop: "Expr | None"
    step: "Expr | None" = None
    span: Span | None = _span()


@dataclass(frozen=True)
class Index:
    """`value[i, j:k]`."""

    value: "Expr"
    indices: tuple["Expr | Slice", ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class Keyword:
    """`name = value` inside a call's parentheses."""

    name: str
    value: "Expr"
    span: Span | None = _span()


@dataclass(frozen=True)
class Call:
    """`func(args..., kw = value, ...)`: a built-in function, a network, a distribution,
    or a call of a named network."""

    func: str
    args: tuple["Expr", ...]
    kwargs: tuple[Keyword, ...] = ()
    span: Span | None = _span()


Expr = Union[Num, Name, ListExpr, UnaryOp, BinOp, Index, Call]


# ---------------------------------------------------------------- declarations and statements


ROLES = ("data", "input", "latent", "global", "param", "const")
TYPES = ("real", "int", "positive", "unit", "simplex")


@dataclass(frozen=True)
class Decl:
    """`role name[dims] : type guide(options)` or `const name = value`.

    `dims` are Num or Name expressions (a `const` name); `value` is set only for `const`.
    """

    role: str
    name: str
    dims: tuple[Expr, ...] = ()
    type: str | None = None
    guide: tuple[Keyword, ...] | None = None
    value: Expr | None = None
    span: Span | None = _span()
    name_span: Span | None = _span()


@dataclass(frozen=True)
class Draw:
    """`target ~ Dist(args)`, or `target[index] ~ Dist(args)`: one step of a sequence."""

    target: str
    dist: Call
    span: Span | None = _span()
    index: Expr | None = None


@dataclass(frozen=True)
class Let:
    """`let name = expr`, or `let name[index] = expr` (a step of a recurrent let)."""

    name: str
    value: Expr
    span: Span | None = _span()
    index: Expr | None = None


@dataclass(frozen=True)
class NetDef:
    """`net name = mlp(hidden = [...])` (no positional arguments: inputs come at the call)."""

    name: str
    call: Call
    span: Span | None = _span()


@dataclass(frozen=True)
class For:
    """`for var in start:stop { body }`: the body's statements for var = start, ..., stop - 1."""

    var: str
    start: Expr
    stop: Expr
    body: tuple["Stmt", ...]
    span: Span | None = _span()
    var_span: Span | None = _span()


Stmt = Union[Decl, Draw, Let, NetDef, For]


@dataclass(frozen=True)
class ModelDef:
    name: str
    body: tuple[Stmt, ...]
    span: Span | None = _span()
    name_span: Span | None = _span()


@dataclass(frozen=True)
class Program:
    models: tuple[ModelDef, ...]
    span: Span | None = _span()
