"""What the checker knows while it checks: a checked expression (`Value`), what its consumer
expects (`Want`), the variables it reads (`Dep`), a declared variable (`VarInfo`), a named
network (`NetInfo`), a draw bound to its distribution (`BoundDraw`), and `Skip`, which stops
checking a statement whose cause was reported already."""
from __future__ import annotations

from dataclasses import dataclass

from dgmlang import ast
from dgmlang import check_ranges as ranges
from dgmlang import ir
from dgmlang.check_ranges import Range
from dgmlang.check_shapes import Shape
from dgmlang.source import Span


class Skip(Exception):
    """Stop checking this statement: its cause was reported already (no cascades)."""


@dataclass(frozen=True)
class Dep:
    """A variable an expression reads: where (the reference in this expression) and through
    which let, if any."""

    name: str
    span: Span | None
    via: str | None = None


@dataclass(frozen=True)
class Value:
    """A checked expression: its IR, whether it is integer-valued (and then, when known, an
    exclusive upper bound of its values), the first per-data-point and first random
    variable it reads, and the range its values are known to lie in."""

    expr: ir.IRExpr
    is_int: bool = False
    bound: int | None = None
    local: Dep | None = None
    random: Dep | None = None
    range: Range = ranges.REAL

    @property
    def shape(self) -> Shape:
        return self.expr.shape


@dataclass(frozen=True)
class Want:
    """What the consumer of an expression expects: the shape a network output must take
    (None when unknown, with `why`), and the constraint a network feeding it directly is
    mapped onto."""

    shape: Shape | None = None
    constraint: str = "real"
    why: str | None = None

    def inner(self) -> "Want":
        """The same shape, seen through an element-wise function or arithmetic."""
        return Want(self.shape, "real", self.why)


NO_WANT = Want()


def merge_deps(a: Dep | None, b: Dep | None) -> Dep | None:
    return a if a is not None else b


@dataclass
class VarInfo:
    decl: ast.Decl
    shape: Shape | None  # None: its declaration failed (skip whatever uses it)
    type: str
    value: object = None
    guide: ir.GuideOptions | None = None
    family_span: Span | None = None


@dataclass
class NetInfo:
    """A named network: its options and what its first call fixed."""

    definition: ast.NetDef
    kind: str
    options: dict | None  # None: its definition failed
    input_sizes: tuple[int, ...] | None = None
    output_shape: Shape | None = None
    first_call: Span | None = None
    called: bool = False


@dataclass(frozen=True)
class BoundDraw:
    ir: ir.Draw
    values: dict
    classes: int | None
