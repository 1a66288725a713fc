"""The checked model: what `check` (and the Python DSL) produce and every later stage reads.

Everything is resolved here: roles, shapes (plain tuples of ints), types, the canonical Pyro
name of every distribution argument, the networks with their input and output sizes, and the
constraint each network output is mapped onto. Spans never take part in comparisons, so the
IR built from a `.dgm` file equals the IR built by the same model in Python.

Conventions the lowering relies on (see docs/internals.md):

* A value of an expression is a tensor shaped ``(*batch, *shape)``: `shape` (the event shape)
  is known here, batch dimensions (data plate, particles, enumeration) are on the left and
  broadcast. Per-data-point values carry the plate dimension; globals, params and consts do
  not. Every operation acts on the rightmost `len(shape)` dimensions.
* `NetCall.shape` is the shape of the value it produces; its input is every argument
  flattened over its own event dimensions and concatenated.

>>> Ref("z", (16,)) == Ref("z", (16,), span=None)
True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Iterator, Union

from dgmlang.source import Span

Shape = tuple[int, ...]


def _span():
    return field(default=None, compare=False, repr=False)


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Lit:
    """A literal number or array (nested tuples of floats/ints), `is_int` when all ints."""

    value: float | int | tuple
    shape: Shape
    is_int: bool = False
    span: Span | None = _span()


@dataclass(frozen=True)
class Ref:
    """A reference to a variable (any role), a `let` or a `const` by name."""

    name: str
    shape: Shape
    span: Span | None = _span()


@dataclass(frozen=True)
class Unary:
    op: str  # "-"
    operand: "IRExpr"
    shape: Shape
    span: Span | None = _span()


@dataclass(frozen=True)
class Binary:
    op: str  # "+", "-", "*", "/", "**" (element-wise, broadcasting event shapes numpy-style)
    left: "IRExpr"
    right: "IRExpr"
    shape: Shape
    span: Span | None = _span()


@dataclass(frozen=True)
class Stack:
    """A list expression whose items are not all literals: stacked on a new first event dim."""

    items: tuple["IRExpr", ...]
    shape: Shape
    span: Span | None = _span()


@dataclass(frozen=True)
class SliceItem:
    """A resolved `start:stop:step` on one event dimension (Python semantics)."""

    start: int | None
    stop: int | None
    step: int | None = None


@dataclass(frozen=True)
class IndexExpr:
    """`value[i, j:k]`: the items index the leading event dimensions of `value`.

    An item is a `SliceItem` or an integer-valued expression (a literal, or a per-data-point
    int/discrete variable such as `mu[c]`).
    """

    value: "IRExpr"
    items: tuple["IRExpr | SliceItem", ...]
    shape: Shape
    span: Span | None = _span()


@dataclass(frozen=True)
class BuiltinCall:
    """A built-in function (`exp`, `dot`, `onehot`, ...). Integer options such as onehot's K
    or zeros' n are `Lit` arguments."""

    func: str
    args: tuple["IRExpr", ...]
    shape: Shape
    span: Span | None = _span()


@dataclass(frozen=True)
class NetCall:
    """A call of network `net` on `args`; its output, reshaped to `shape`, is mapped onto
    `constraint` (a `distributions.CONSTRAINTS` name: "real" = identity, "positive" =
    softplus, "unit" = sigmoid, "simplex" = softmax over the last dim, ...)."""

    net: str
    args: tuple["IRExpr", ...]
    shape: Shape
    constraint: str = "real"
    span: Span | None = _span()


@dataclass(frozen=True)
class StepRef:
    """`name[t - lag]` inside the steps of a sequence: the value of the time-indexed variable
    `name` `lag` steps before the step being drawn (`lag` 0: the same step). `shape` is one
    step's shape (the variable's shape less its leading time dimension). Its value is
    ``env[step_key(name, lag)]``.

    >>> step_key("s", 1)
    's[t-1]'
    """

    name: str
    lag: int
    shape: Shape
    span: Span | None = _span()


def step_key(name: str, lag: int) -> str:
    """The key under which a step's value stands in an environment of values."""
    return f"{name}[t-{lag}]" if lag else f"{name}[t]"


IRExpr = Union[Lit, Ref, Unary, Binary, Stack, IndexExpr, BuiltinCall, NetCall, StepRef]


# ---------------------------------------------------------------- model parts


@dataclass(frozen=True)
class GuideOptions:
    """`guide(hidden = [...], family = ...)` on a latent or global declaration.

    `hidden` None means the default (mirror the network the latent feeds in the model).
    """

    hidden: tuple[int, ...] | None = None
    family: str = "normal"  # "normal" | "mvn" | "flow" | "delta"


@dataclass(frozen=True)
class Variable:
    """A declared name. `value` (nested tuples) is set for `const` only."""

    name: str
    role: str  # data | input | latent | global | param | const
    shape: Shape
    type: str = "real"  # real | int | positive | unit | simplex
    guide: GuideOptions | None = None
    value: float | int | tuple | None = None
    span: Span | None = _span()


@dataclass(frozen=True)
class Net:
    """A network. `input_sizes` are the flattened sizes of the arguments of its calls (every
    call of a named net agrees); `output_size` is the flat size it must produce."""

    name: str
    kind: str  # "mlp" | "deconv" | "gru" (input_sizes: the state's, then the input's)
    input_sizes: tuple[int, ...]
    output_size: int
    output_shape: Shape
    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    channels: tuple[int, ...] = ()
    anonymous: bool = False
    span: Span | None = _span()


@dataclass(frozen=True)
class PackedParam:
    """One distribution parameter carved out of a network that feeds all of them."""

    name: str
    shape: Shape
    constraint: str


@dataclass(frozen=True)
class Draw:
    """`target ~ dist(...)` with every argument under its canonical Pyro name.

    Either `params` holds the arguments the user gave (defaults are not filled in here: the
    Pyro class supplies them), or `packed` is one network call whose flat output is split, in
    order, into `packed_params`, each mapped onto its constraint.

    A sequence (a variable drawn step by step, `s[t] ~ ...`) has no arguments of its own:
    `steps` holds one `Draw` per run of steps (`first`, `stop`), each over one step's shape,
    in time order, together covering every step once; `dist` is theirs.
    """

    target: str
    dist: str
    params: tuple[tuple[str, IRExpr], ...] = ()
    packed: NetCall | None = None
    packed_params: tuple[PackedParam, ...] = ()
    span: Span | None = _span()
    steps: tuple["Steps", ...] = ()

    def param(self, name: str) -> IRExpr | None:
        if self.steps:
            return self.steps[0].draw.param(name)
        return dict(self.params).get(name)

    @property
    def expressions(self) -> list[IRExpr]:
        """The argument expressions of the draw (the packed network call included; of every
        run of steps of a sequence)."""
        if self.steps:
            return [e for run in self.steps for e in run.draw.expressions]
        return [value for _, value in self.params] + ([self.packed] if self.packed else [])


@dataclass(frozen=True)
class Steps:
    """Steps `first`, ..., `stop - 1` of a sequence, each drawn as `draw` says (its
    expressions read other steps through `StepRef`). With `length` (the name of an int
    input), the steps from each data point's length on are padding: not part of the model."""

    first: int
    stop: int
    draw: Draw
    length: str | None = None


@dataclass(frozen=True)
class LetSteps:
    """Steps `first`, ..., `stop - 1` of a recurrent let, each computed as `value` (over one
    step's shape; it reads other steps, its own earlier ones included, through `StepRef`)."""

    first: int
    stop: int
    value: IRExpr


@dataclass(frozen=True)
class LetDef:
    """`let name = value`; a recurrent let (`let h[0] = ...`, `let h[t] = ...(h[t - 1])`)
    has `steps`, its runs in time order together covering steps 0 to T - 1 once, and
    `value` is then its last run's value (one step's shape)."""

    name: str
    value: IRExpr
    span: Span | None = _span()
    steps: tuple[LetSteps, ...] = ()


@dataclass(frozen=True)
class ModelIR:
    """A checked model. `variables` in declaration order; `draws` and `lets` in source order."""

    name: str
    variables: tuple[Variable, ...]
    draws: tuple[Draw, ...]
    lets: tuple[LetDef, ...] = ()
    nets: tuple[Net, ...] = ()
    span: Span | None = _span()

    def variable(self, name: str) -> Variable:
        return self._by_name[0][name]

    def draw(self, name: str) -> Draw:
        return self._by_name[1][name]

    @cached_property
    def _by_name(self) -> tuple[dict[str, Variable], dict[str, Draw]]:
        """Variables and draws by name, built on first use (a model may have thousands)."""
        return {v.name: v for v in self.variables}, {d.target: d for d in self.draws}

    def net(self, name: str) -> Net:
        return next(n for n in self.nets if n.name == name)

    def names(self, *roles: str) -> list[str]:
        """Names of the variables with any of `roles`, in declaration order."""
        return [v.name for v in self.variables if v.role in roles]


def walk(exprs: Iterable[IRExpr]) -> Iterator[IRExpr]:
    """Every sub-expression of `exprs`, pre-order, left to right, with an explicit stack
    (expressions may nest deeply). The one expression walker of the compiled layer.

    >>> e = Binary("+", Ref("a", ()), Unary("-", Ref("b", ()), ()), ())
    >>> [type(x).__name__ for x in walk([e])]
    ['Binary', 'Ref', 'Unary', 'Ref']
    """
    stack = list(exprs)[::-1]
    while stack:
        e = stack.pop()
        yield e
        if isinstance(e, Binary):
            stack += (e.right, e.left)
        elif isinstance(e, Unary):
            stack.append(e.operand)
        elif isinstance(e, IndexExpr):
            stack += [i for i in e.items if not isinstance(i, SliceItem)][::-1]
            stack.append(e.value)
        elif isinstance(e, Stack):
            stack += e.items[::-1]
        elif isinstance(e, (BuiltinCall, NetCall)):
            stack += e.args[::-1]


LOCAL_ROLES = ("data", "input", "latent")
RANDOM_ROLES = ("data", "latent", "global")
