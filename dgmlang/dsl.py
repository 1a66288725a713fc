"""The Python front end: the models of the `.dgm` language, written in Python.

A `Model` records the same syntax tree the parser builds from a `.dgm` file, then runs the
same checker, so the checked IR is identical, and every mistake is the same `DGMError`,
pointing at the line of the user's Python file that made it (spans record the calling
frame). Nothing here evaluates user text, and nothing imports torch until `Model.compile`.

>>> import dgmlang as dg
>>> m = dg.Model("digits_cvae")
>>> y = m.input("y", type="int")
>>> x = m.data("x", [64])
>>> z = m.latent("z", [16])
>>> m.draw(z, dg.Normal(0, 1))
>>> m.draw(x, dg.Binomial(16, logits=dg.mlp(z, dg.onehot(y, 10), hidden=[256, 256])))
>>> print(m.to_dgm(), end="")
model digits_cvae {
    input y : int
    data x[64]
    latent z[16]
<BLANKLINE>
    z ~ Normal(0, 1)
    x ~ Binomial(16, logits = mlp(z, onehot(y, 10), hidden = [256, 256]))
}
>>> [v.name for v in m.ir().variables]
['y', 'x', 'z']

Expressions are built with Python operators and the functions of this module, one for each
distribution (`Normal`, `Categorical`, ...), built-in function (`exp`, `onehot`, ...) and
network (`mlp`, `deconv`):

>>> shift = dg.tanh(z[:8]) * 2 - 1
>>> shift
Expr(tanh(z[:8]) * 2 - 1)
>>> h = m.let("h", shift)

A mistake is reported when the model is checked, at the Python line that made it (here a
doctest's line 1):

>>> m.draw(y, dg.Categorical(logits=dg.zeros(10)))
>>> m.ir()
Traceback (most recent call last):
  ...
dgmlang.errors.DGMTypeError: <doctest dgmlang.dsl[12]>:1:1: input 'y' cannot have a distribution
    m.draw(y, dg.Categorical(logits=dg.zeros(10)))
    ^
    hint: an input is given, never modeled; declare it `data` to model it
"""
from __future__ import annotations

import numbers
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

# `import dgmlang.ast as ast`, not `from dgmlang import ast`: the package's lazy __getattr__
# imports this module, so `from dgmlang import ...` here would import it again.
import dgmlang.ast as ast
from dgmlang.distributions import BUILTINS, DISTRIBUTIONS, NETWORKS
from dgmlang.errors import DGMError, DGMShapeError, DGMSyntaxError, DGMTypeError, did_you_mean
from dgmlang.dsl_expr import (
    FUNCTION_NAMES, Distribution, Expr, Network, call_node, caller_span, check_identifier,
    check_name, format_node, keyword_nodes, to_node,
)
from dgmlang.source import Span

if TYPE_CHECKING:  # pragma: no cover - imported lazily (torch)
    from dgmlang.compiled import CompiledModel
    from dgmlang.ir import ModelIR

__all__ = ["Model", "Expr", "Distribution", "Network"]  # extended below by the generated wrappers

# ---------------------------------------------------------------- the model


class Model:
    """One model block, built statement by statement in the order of the calls.

    Declarations return handles (`Expr`) to use in later expressions; `draw` gives a variable
    its distribution. `ir()` checks the model, `to_dgm()` prints it as `.dgm` text,
    `compile()` compiles it. The roles are the methods `input`, `data`, `latent`, `global_`
    (``global`` is a Python keyword), `param` and `const`.

    >>> m = Model("linreg")
    >>> u = m.input("u", [3])
    >>> y = m.data("y")
    >>> w = m.global_("w", [3])
    >>> b = m.global_("b")
    >>> m.draw(w, Normal(0, 1))
    >>> m.draw(b, Normal(0, 10))
    >>> m.draw(y, Normal(dot(w, u) + b, 0.5))
    >>> m.ir().names("global")
    ['w', 'b']
    """

    def __init__(self, name: str):
        span = caller_span()
        self.name = check_name(name, "model", span)
        self._span = span
        self._body: list[ast.Stmt] = []
        self._open: list[list[ast.Stmt]] = [self._body]  # the bodies being written: loops nest
        self._count = 0  # statements recorded, loops' included
        self._checked: tuple[int, ModelIR] | None = None

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {len(self._body)} statements)"

    def _append(self, stmt: ast.Stmt) -> None:
        self._open[-1].append(stmt)
        self._count += 1

    # -- declarations

    def input(self, name: str, shape: Any = (), *, type: str | None = None) -> Expr:  # noqa: A002
        """`input name[shape] : type` -- a control signal, given at fit, sample and invert."""
        return self._declare("input", name, shape, type, None, caller_span())

    def data(self, name: str, shape: Any = (), *, type: str | None = None) -> Expr:  # noqa: A002
        """`data name[shape] : type` -- observed during training."""
        return self._declare("data", name, shape, type, None, caller_span())

    def latent(self, name: str, shape: Any = (), *, type: str | None = None,  # noqa: A002
               guide: Mapping[str, Any] | None = None) -> Expr:
        """`latent name[shape] : type guide(...)` -- one per data point; `guide` holds the
        guide options, e.g. ``guide=dict(hidden=[512], family="mvn")``."""
        return self._declare("latent", name, shape, type, guide, caller_span())

    def global_(self, name: str, shape: Any = (), *, type: str | None = None,  # noqa: A002
                guide: Mapping[str, Any] | None = None) -> Expr:
        """`global name[shape] : type guide(...)` -- a latent shared by all data points."""
        return self._declare("global", name, shape, type, guide, caller_span())

    def param(self, name: str, shape: Any = (), *, type: str | None = None) -> Expr:  # noqa: A002
        """`param name[shape] : type` -- a learned point estimate."""
        return self._declare("param", name, shape, type, None, caller_span())

    def const(self, name: str, value: Any, shape: Any = ()) -> Expr:
        """`const name[shape] = value` -- a fixed number or (nested) list of numbers (a
        numpy array will do); the shape is optional, as in a `.dgm` file."""
        span = caller_span()
        name = check_name(name, "variable", span)
        dims = _dims(shape, span)
        node = to_node(value, span)
        self._append(ast.Decl("const", name, dims, value=node, span=span, name_span=span))
        return Expr(ast.Name(name, span))

    def _declare(self, role: str, name: str, shape: Any, type_: str | None,
                 guide: Mapping[str, Any] | None, span: Span | None) -> Expr:
        name = check_name(name, "variable", span)
        dims = _dims(shape, span)
        if type_ is not None:
            _check_type(type_, name, span)
        options = None
        if guide is not None:
            if not isinstance(guide, Mapping):
                raise DGMTypeError(
                    f"the guide options of '{name}' must be a dict, not {type(guide).__name__}",
                    span, hint="e.g. guide=dict(hidden=[512], family=\"mvn\")",
                )
            options = keyword_nodes(guide, span)
        self._append(ast.Decl(role, name, dims, type_, options, span=span, name_span=span))
        return Expr(ast.Name(name, span))

    # -- statements

    def let(self, name: str | Expr, value: Any, *, step: Any = None) -> Expr:
        """`let name = value` -- a named deterministic value; with `step` (or a handle
        indexed by one, `h[t]`), one step of a recurrent let, `let name[step] = value` (see
        docs/language.md, "Time").

        >>> m = Model("lm")
        >>> x = m.data("x", [8], type="int")
        >>> cell = m.net("cell", gru(hidden=4))
        >>> h = m.let("h", zeros(4), step=0)
        >>> with m.loop("t", 1, 8) as t:
        ...     _ = m.let(h[t], cell(h[t - 1], onehot(x[t - 1], 3)))
        ...     m.draw(x[t], Categorical(logits=mlp(h[t], hidden=[]) + zeros(3)))
        >>> m.draw(x[0], Categorical(logits=zeros(3)))
        >>> m.ir().lets[0].steps[1].first
        1
        >>> print(m.to_dgm().splitlines()[6])
                let h[t] = cell(h[t - 1], onehot(x[t - 1], 3))
        """
        span = caller_span()
        node = name.node if isinstance(name, Expr) else name
        if isinstance(node, ast.Index) and isinstance(node.value, ast.Name) and len(node.indices) == 1 \
                and step is None:
            node, index = node.value.name, node.indices[0]
        else:
            index = None if step is None else to_node(step, span)
        if isinstance(node, ast.Name):
            node = node.name
        if not isinstance(node, str):
            raise DGMTypeError("a let is named by a string, or is one step of a recurrent let (h[t])", span,
                               hint='e.g. m.let("h", zeros(8), step=0), then m.let(h[t], ...) inside m.loop')
        name = check_name(node, "let", span)
        self._append(ast.Let(name, to_node(value, span), span, index))
        return Expr(ast.Name(name, span))

    def net(self, name: str, network: Expr) -> Network:
        """`net name = mlp(...)` -- a named network whose calls share weights."""
        span = caller_span()
        name = check_name(name, "network", span)
        node = network.node if isinstance(network, Expr) else None
        # Any call is recorded, as the grammar allows; the checker reports one that builds
        # no network in the words it uses for a `.dgm` file.
        if not isinstance(node, ast.Call):
            raise DGMTypeError(
                f"network '{name}' must be defined by {' or '.join(NETWORKS)}(...), not "
                f"{_describe(network)}", span,
                hint=f"e.g. m.net(\"{name}\", dg.mlp(hidden=[256, 256]))",
            )
        self._append(ast.NetDef(name, node, span))
        return Network(name)

    def draw(self, variable: Expr | str, distribution: Distribution) -> None:
        """`variable ~ distribution`: the distribution of a data, latent or global variable."""
        span = caller_span()
        target = variable.node if isinstance(variable, Expr) else variable
        if isinstance(target, ast.Name):
            target = target.name
        index = None
        if isinstance(target, ast.Index) and isinstance(target.value, ast.Name) and len(target.indices) == 1:
            target, index = target.value.name, target.indices[0]  # one step: `s[t]`, `s[0]`
        if not isinstance(target, str):
            raise DGMTypeError("only a declared variable, or one step of it, can be drawn", span,
                               hint="pass the handle m.latent(...) returned, its name, or s[t] inside m.loop")
        check_identifier(target, "variable name", span)
        if isinstance(distribution, Distribution):
            call = distribution.call
        elif isinstance(distribution, Expr) and isinstance(distribution.node, ast.Call):
            call = distribution.node  # `dg.exp(1)`: the checker says it is no distribution
        else:
            raise DGMTypeError(
                f"'{target}' must be drawn from a distribution, not "
                f"{_describe(distribution)}", span, hint="e.g. m.draw(z, dg.Normal(0, 1))",
            )
        self._append(ast.Draw(target, call, span, index))

    def loop(self, index: str, start: Any, stop: Any) -> "_Loop":
        """`for index in start:stop { ... }`: the draws made inside the ``with`` block are the
        loop's body, repeated for each step (see docs/language.md, "Time"); yields the index.

        >>> m = Model("chain")
        >>> s = m.latent("s", [10])
        >>> x = m.data("x", [10])
        >>> m.draw(s[0], Categorical(logits=zeros(2)))
        >>> with m.loop("t", 1, 10) as t:
        ...     m.draw(s[t], Categorical(logits=onehot(s[t - 1], 2) * 3))
        >>> with m.loop("t", 0, 10) as t:
        ...     m.draw(x[t], Normal(s[t], 1))
        >>> print(m.to_dgm().splitlines()[5])
            for t in 1:10 {
        """
        span = caller_span()
        name = check_name(index, "loop index", span)
        return _Loop(self, ast.For(name, to_node(start, span), to_node(stop, span), (), span, span))

    # -- results

    def program(self) -> ast.Program:
        """The model's syntax tree: what `dgmlang.parse.parse` gives for `to_dgm()`."""
        model = ast.ModelDef(self.name, tuple(self._body), self._span, self._span)
        return ast.Program((model,), self._span)

    def ir(self) -> "ModelIR":
        """The checked model; every mistake is a `DGMError` pointing at its Python line."""
        if self._checked is None or self._checked[0] != self._count:
            from dgmlang.check import check

            try:
                (checked,) = check(self.program())
            except DGMError as err:
                # The checker's own frames say nothing to the user; the message says where.
                raise err.with_traceback(None) from None
            self._checked = (self._count, checked)
        return self._checked[1]

    def to_dgm(self) -> str:
        """The model as `.dgm` text."""
        from dgmlang.printer import format_program

        return format_program(self.program())

    def compile(self, *, device=None, dtype=None, guide_order: str = "nami") -> "CompiledModel":
        """The compiled model, as `dgmlang.load` gives it for the same `.dgm` text, on
        `device` ("cpu" by default, "cuda", "cuda:N", "mps") in `dtype` ("float32" by
        default, "float64"), its guide derived in `guide_order` ("nami" or "minfill"); see
        `dgmlang.compile`."""
        from dgmlang.frontend import check_irs, check_placement, compile_checked

        check_placement(device, dtype)
        checked = check_irs((self.ir(),), guide_order=guide_order)[0]
        return compile_checked(checked, source=self.to_dgm(), filename=f"<model {self.name}>",
                               device=device, dtype=dtype)


class _Loop:
    """The ``with`` block of `Model.loop`: statements made inside it form the loop's body."""

    def __init__(self, model: Model, node: ast.For):
        self._model = model
        self._node = node
        self._body: list[ast.Stmt] = []

    def __enter__(self) -> Expr:
        self._model._open.append(self._body)
        return Expr(ast.Name(self._node.var, self._node.var_span))

    def __exit__(self, *exc) -> None:
        self._model._open.pop()
        self._model._append(replace(self._node, body=tuple(self._body)))


def _describe(value: Any) -> str:
    if isinstance(value, Expr):
        return f"the value {format_node(value.node)}"
    return f"a {type(value).__name__}"


def _check_type(type_: Any, name: str, span: Span | None) -> None:
    """A declared type is one of `ast.TYPES` (the parser's error, for an unknown one)."""
    hint = "the types are " + ", ".join(ast.TYPES)
    if not isinstance(type_, str):
        raise DGMTypeError(f"the type of '{name}' must be a string such as \"int\"", span,
                           hint=hint)
    if type_ not in ast.TYPES:
        suggestion = did_you_mean(type_, ast.TYPES)
        raise DGMSyntaxError(f"unknown type '{type_}'", span,
                             hint=f"{hint}; {suggestion}" if suggestion else hint)


def _dims(shape: Any, span: Span | None) -> tuple[ast.Expr, ...]:
    """A declared shape: a sequence of positive ints or const names/handles (or one int)."""
    if shape is None:
        return ()
    if hasattr(shape, "tolist") and not isinstance(shape, Expr):  # numpy arrays and ints
        shape = shape.tolist()
    if isinstance(shape, (int, str, Expr)) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (list, tuple)):
        raise DGMShapeError(f"a shape is a list of dimensions, not a {type(shape).__name__}",
                            span, hint="e.g. shape=[3, 2], or shape=[] for a scalar")
    dims = []
    for dim in shape:
        node = to_node(dim, span)
        if not isinstance(node, (ast.Num, ast.Name)):
            raise DGMShapeError(
                f"a dimension must be a positive integer or a const name, not {dim!r}", span,
                hint="e.g. shape=[64] or shape=[K] with K = m.const(\"K\", 10)",
            )
        dims.append(node)
    return tuple(dims)


# ---------------------------------------------------------------- generated wrappers

#: Each generated function of this module (builtins and networks) -> its name in the language,
#: so that ``activation=dg.tanh`` reads as the name ``tanh``.


def _distribution_wrapper(name: str) -> Callable[..., Distribution]:
    spec = DISTRIBUTIONS[name]

    def distribution(*args: Any, **kwargs: Any) -> Distribution:
        span = caller_span()
        return Distribution(call_node(name, args, kwargs, span)[0])

    distribution.__name__ = distribution.__qualname__ = name
    distribution.__doc__ = (
        f"The distribution ``{spec.signature()}`` (Pyro's names), the second argument of "
        "`Model.draw`."
    )
    return distribution


def _function_wrapper(name: str, doc: str) -> Callable[..., Expr]:
    def function(*args: Any, **kwargs: Any) -> Expr:
        span = caller_span()
        return Expr(*call_node(name, args, kwargs, span))

    function.__name__ = function.__qualname__ = name
    function.__doc__ = doc
    FUNCTION_NAMES[function] = name
    return function


def _generated() -> Iterator[tuple[str, Callable[..., Any]]]:
    for name in DISTRIBUTIONS:
        yield name, _distribution_wrapper(name)
    for name, spec in BUILTINS.items():
        low, high = spec.arity
        arity = f"{low}" if low == high else f"{low} or more" if high is None else f"{low} to {high}"
        yield name, _function_wrapper(
            name, f"The built-in function ``{name}`` ({arity} arguments, shape rule "
            f"{spec.shape_rule!r}), as in a `.dgm` file.")
    for name, options in NETWORKS.items():
        defaults = ", ".join(f"{key}={value!r}" for key, value in options.items())
        yield name, _function_wrapper(
            name, f"A network ``{name}(inputs..., {defaults})``: anonymous when called on "
            "inputs, or the definition given to `Model.net`.")


for _name, _wrapper in _generated():
    globals()[_name] = _wrapper
    __all__.append(_name)
del _name, _wrapper

# `abs` and `sum` now shadow Python's builtins in this module on purpose (they are the
# language's functions): code here must not call Python's own.
