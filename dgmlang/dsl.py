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

import functools
import linecache
import math
import numbers
import os
import re
import sys
from dataclasses import dataclass, field
from types import FunctionType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

# `import dgmlang.ast as ast`, not `from dgmlang import ast`: the package's lazy __getattr__
# imports this module, so `from dgmlang import ...` here would import it again.
import dgmlang.ast as ast
from dgmlang.distributions import BUILTINS, DISTRIBUTIONS, NETWORKS
from dgmlang.errors import DGMError, DGMNameError, DGMShapeError, DGMSyntaxError, DGMTypeError, did_you_mean
from dgmlang.parse import KEYWORDS, MAX_NESTING
from dgmlang.source import Source, Span

if TYPE_CHECKING:  # pragma: no cover - imported lazily (torch)
    from dgmlang.compiled import CompiledModel
    from dgmlang.ir import ModelIR

__all__ = ["Model", "Expr", "Distribution", "Network"]  # extended below by the generated wrappers

# ---------------------------------------------------------------- where the user's code is

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


@functools.lru_cache(maxsize=512)
def _is_own_file(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR)


@functools.lru_cache(maxsize=64)
def _positions(code) -> tuple:
    """The (line, end_line, col, end_col) of each 2-byte code unit of `code` (Python >= 3.11)."""
    return tuple(code.co_positions())


_sources: dict[str, tuple[list[str], Source | None]] = {}


def _source_of(filename: str, module_globals: Mapping[str, Any]) -> tuple[list[str], Source | None]:
    """The lines of a user's file, and its text for error messages, joined once per file
    (linecache reads the file once and hands back the same list)."""
    lines = linecache.getlines(filename, module_globals)
    cached = _sources.get(filename)
    if cached is not None and cached[0] is lines:
        return cached
    _sources[filename] = (lines, Source(filename, "".join(lines)) if lines else None)
    return _sources[filename]


def _char_col(lines: list[str], line: int, byte_col: int) -> int:
    """1-based character column of the 0-based UTF-8 byte offset `byte_col` on `line`."""
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    if text.isascii():
        return byte_col + 1
    return len(text.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore")) + 1


def _caller_span() -> Span | None:
    """The span of the expression the user's code is executing: the first frame outside
    dgmlang, at the line and columns of its current call or operator (col 1 when Python
    does not record columns)."""
    frame = sys._getframe(1)
    while frame is not None and _is_own_file(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return None
    filename = frame.f_code.co_filename
    lines, source = _source_of(filename, frame.f_globals)
    line = frame.f_lineno
    end_line, col, end_col = line, 1, 1
    if hasattr(frame.f_code, "co_positions") and frame.f_lasti >= 0:
        positions = _positions(frame.f_code)
        unit = frame.f_lasti // 2
        if unit < len(positions) and None not in positions[unit]:
            line, end_line, byte_col, byte_end = positions[unit]
            col = _char_col(lines, line, byte_col)
            end_col = _char_col(lines, end_line, byte_end)
    return Span(filename, line, col, end_line, end_col, source=source)


# ---------------------------------------------------------------- Python values -> syntax

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _check_name(name: Any, what: str, span: Span | None) -> str:
    """`name` if it can name a model, variable or network in a `.dgm` file; else a DGMError
    (the parser's, for a reserved word). Distribution and function names are left to the
    checker, which reports them as it does for a `.dgm` file."""
    if not isinstance(name, str):
        raise DGMTypeError(
            f"the name of a {what} must be a string, not {type(name).__name__}", span,
            hint="names are strings, e.g. \"z\"",
        )
    return _check_identifier(name, f"{what} name", span)


def _check_identifier(name: str, what: str, span: Span | None) -> str:
    if not _IDENTIFIER.match(name):
        raise DGMNameError(
            f"{name!r} is not a valid {what}", span,
            hint="a name is a letter or '_' followed by letters, digits and '_'",
        )
    if name in KEYWORDS:
        raise DGMSyntaxError(
            f"'{name}' is a reserved word and cannot be used as a name", span,
            hint=f"choose another name, such as '{name}_'",
        )
    return name


def _nested(node: ast.Expr | ast.Keyword | ast.Slice, depths: Iterable[int]) -> tuple[Any, int]:
    """`node` with its nesting depth (one more than its deepest child, as the parser counts);
    too deep is the parser's error, since later stages walk the tree recursively."""
    depth = max(depths, default=0) + 1
    if depth > MAX_NESTING:
        raise _too_deep(node.span)
    return node, depth


def _too_deep(span: Span | None) -> DGMSyntaxError:
    return DGMSyntaxError(
        "nesting too deep", span,
        hint=f"at most {MAX_NESTING} levels of brackets, calls and operators; "
        "split the expression with 'let'",
    )


def _number(value: int | float, span: Span | None) -> tuple[ast.Expr, int]:
    """A Python number as the parser reads its literal: the grammar has no signed numbers,
    so a negative one is unary minus applied to its magnitude."""
    if math.copysign(1, value) < 0:
        return ast.UnaryOp("-", ast.Num(-value, span), span), 2
    return ast.Num(value, span), 1


def _convert(value: Any, span: Span | None) -> tuple[ast.Expr, int]:
    """The syntax of a Python value used inside a model expression, and its depth."""
    if isinstance(value, Expr):
        node = value.node
        if isinstance(node, ast.Name):  # a handle used again: point at this use
            return ast.Name(node.name, span), 1
        return node, value.depth
    if isinstance(value, bool):
        raise DGMTypeError(f"{value} is not a number in a model", span,
                           hint=f"write {int(value)} instead")
    if isinstance(value, int):
        return _number(int(value), span)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DGMTypeError(f"{value} is not a finite number", span,
                               hint="a model's numbers are finite")
        return _number(float(value), span)
    if isinstance(value, str):
        return ast.Name(_check_identifier(value, "name to refer to", span), span), 1
    if isinstance(value, (list, tuple)):
        return _list(value, span, 1)
    if isinstance(value, FunctionType) and value in _FUNCTION_NAMES:
        return ast.Name(_FUNCTION_NAMES[value], span), 1  # `activation=dg.tanh`
    if isinstance(value, (Distribution, Network)):
        message, hint = value._refusal()
        raise DGMTypeError(message, span, hint=hint)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars
        return _convert(value.tolist(), span)
    if hasattr(value, "__index__"):
        return _number(value.__index__(), span)
    if isinstance(value, numbers.Real):
        return _convert(float(value), span)
    raise DGMTypeError(
        f"a {type(value).__name__} cannot be part of a model expression", span,
        hint="use numbers, lists of numbers, variables (m.latent(...), ...) and dgmlang "
        "functions such as dg.exp or dg.mlp",
    )


def _list(items: Sequence[Any], span: Span | None, level: int) -> tuple[ast.ListExpr, int]:
    converted = []
    for item in items:
        if isinstance(item, (list, tuple)):
            if level >= MAX_NESTING:  # stop before Python's own recursion limit
                raise _too_deep(span)
            converted.append(_list(item, span, level + 1))
        else:
            converted.append(_convert(item, span))
    nodes = tuple(node for node, _ in converted)
    return _nested(ast.ListExpr(nodes, span), (depth for _, depth in converted))


def _to_node(value: Any, span: Span | None) -> ast.Expr:
    return _convert(value, span)[0]


def _keyword(name: Any, value: Any, span: Span | None) -> tuple[ast.Keyword, int]:
    if not isinstance(name, str):
        raise DGMTypeError(f"an option name must be a string, not {type(name).__name__}", span,
                           hint="e.g. guide=dict(family=\"mvn\")")
    node, depth = _convert(value, span)
    return _nested(ast.Keyword(_check_identifier(name, "option name", span), node, span), (depth,))


def _keywords(options: Mapping[str, Any], span: Span | None) -> tuple[ast.Keyword, ...]:
    return tuple(_keyword(name, value, span)[0] for name, value in options.items())


def _call(func: str, args: Sequence[Any], kwargs: Mapping[str, Any], span: Span | None) -> tuple[ast.Call, int]:
    parts = [_convert(arg, span) for arg in args]
    parts += [_keyword(name, value, span) for name, value in kwargs.items()]
    positional = tuple(node for node, _ in parts[: len(args)])
    keywords = tuple(node for node, _ in parts[len(args):])
    return _nested(ast.Call(func, positional, keywords, span), (depth for _, depth in parts))


# ---------------------------------------------------------------- handles


def _binary(op: str, left: Any, right: Any) -> "Expr":
    span = _caller_span()
    (left_node, left_depth), (right_node, right_depth) = _convert(left, span), _convert(right, span)
    return Expr(*_nested(ast.BinOp(op, left_node, right_node, span), (left_depth, right_depth)))


def _operator(op: str, reflected: bool) -> Callable[[Any, Any], "Expr"]:
    if reflected:
        return lambda self, other: _binary(op, other, self)
    return lambda self, other: _binary(op, self, other)


def _refuse(names: str):
    """A class decorator: each dunder method in `names` raises the DGMTypeError of the
    class's `_refusal()` at the user's line, instead of Python's TypeError."""

    def refusal(self, *_: Any) -> Any:
        message, hint = self._refusal()
        raise DGMTypeError(message, _caller_span(), hint=hint)

    def decorate(cls):
        for name in names.split():
            setattr(cls, f"__{name}__", refusal)
        return cls

    return decorate


_ARITHMETIC = "add radd sub rsub mul rmul truediv rtruediv pow rpow matmul rmatmul neg pos abs"
_UNSUPPORTED = "floordiv rfloordiv mod rmod lt le gt ge and rand or ror xor rxor invert lshift rlshift rshift rrshift"


@_refuse(_UNSUPPORTED)
@dataclass(frozen=True, eq=False)
class Expr:
    """A value in a model under construction: a variable's handle, a `let`, or an expression
    built from them with `+ - * / **`, unary `-`, `@` (matmul), `abs()`, indexing and
    slicing, and the functions of this module. `node` is its `dgmlang.ast` syntax.

    >>> m = Model("m")
    >>> mu = m.param("mu", [3, 2])
    >>> c = m.latent("c")
    >>> mu[c], mu[1:, 0], 2 ** -mu, abs(mu @ [1, 2])
    (Expr(mu[c]), Expr(mu[1:, 0]), Expr(2 ** -mu), Expr(abs(matmul(mu, [1, 2]))))
    """

    node: ast.Expr
    depth: int = field(default=1, repr=False)  # nesting depth, bounded as in the parser

    __add__, __radd__ = _operator("+", False), _operator("+", True)
    __sub__, __rsub__ = _operator("-", False), _operator("-", True)
    __mul__, __rmul__ = _operator("*", False), _operator("*", True)
    __truediv__, __rtruediv__ = _operator("/", False), _operator("/", True)
    __pow__, __rpow__ = _operator("**", False), _operator("**", True)

    def __neg__(self) -> "Expr":
        span = _caller_span()
        node, depth = _convert(self, span)
        return Expr(*_nested(ast.UnaryOp("-", node, span), (depth,)))

    def __pos__(self) -> "Expr":
        return self

    def __abs__(self) -> "Expr":
        return Expr(*_call("abs", (self,), {}, _caller_span()))

    def __matmul__(self, other: Any) -> "Expr":
        return Expr(*_call("matmul", (self, other), {}, _caller_span()))

    def __rmatmul__(self, other: Any) -> "Expr":
        return Expr(*_call("matmul", (other, self), {}, _caller_span()))

    def __getitem__(self, key: Any) -> "Expr":
        span = _caller_span()
        value, depth = _convert(self, span)
        items = [_index(item, span) for item in (key if isinstance(key, tuple) else (key,))]
        node = ast.Index(value, tuple(item for item, _ in items), span)
        return Expr(*_nested(node, (depth, *(item_depth for _, item_depth in items))))

    def __iter__(self) -> Iterator["Expr"]:
        # Without this, Python would iterate by indexing h[0], h[1], ... forever.
        raise DGMTypeError("a model value cannot be iterated over in Python", _caller_span(),
                           hint="index it (h[0]) or slice it (h[:16]) instead")

    def __bool__(self) -> bool:
        raise DGMTypeError("a model value has no truth value in Python", _caller_span(),
                           hint="model values exist only when the model runs; branch on "
                           "Python numbers while building the model")

    def __call__(self, *args: Any, **kwargs: Any) -> "Expr":
        raise DGMTypeError(f"{_format(self.node)} is not a network and cannot be called",
                           _caller_span(),
                           hint="declare a network with m.net(\"name\", dg.mlp(hidden=[...]))")

    def __repr__(self) -> str:
        return f"Expr({_format(self.node)})"

    def _refusal(self) -> tuple[str, str]:
        return ("the operators of a model are + - * / ** @ and unary -",
                "comparisons and other operators have no meaning in a model")


def _index(item: Any, span: Span | None) -> tuple[ast.Expr | ast.Slice, int]:
    if isinstance(item, slice):
        parts = [(None, 1) if part is None else _convert(part, span)
                 for part in (item.start, item.stop, item.step)]
        node = ast.Slice(*(part for part, _ in parts), span=span)
        return _nested(node, (depth for _, depth in parts))
    if item is None or item is Ellipsis:
        raise DGMTypeError(f"{item!r} cannot index a model value", span,
                           hint="index with numbers, int variables and slices such as h[:16]")
    return _convert(item, span)


def _format(node: ast.Expr) -> str:
    from dgmlang.printer import format_expr

    return format_expr(node)


@_refuse(f"{_ARITHMETIC} {_UNSUPPORTED} getitem iter")
@dataclass(frozen=True, eq=False)
class Distribution:
    """A distribution with its arguments, such as ``Normal(0, 1)``: the second argument of
    `Model.draw`. It is not a value: it cannot take part in arithmetic.

    >>> Binomial(16, logits=0)
    Distribution(Binomial(16, logits = 0))
    """

    call: ast.Call

    def __repr__(self) -> str:
        return f"Distribution({_format(self.call)})"

    def _refusal(self) -> tuple[str, str]:
        name = self.call.func
        return (f"the distribution {name} cannot be used as a value",
                f"draw a variable from it and use the variable, e.g. m.draw(v, dg.{name}(...))")


@_refuse(f"{_ARITHMETIC} {_UNSUPPORTED} getitem iter")
@dataclass(frozen=True, eq=False)
class Network:
    """A named network declared with `Model.net`; calling it on inputs gives its output, and
    every call shares its weights.

    >>> m = Model("m")
    >>> z = m.latent("z", [4])
    >>> dec = m.net("dec", mlp(hidden=[32]))
    >>> dec(z, 1)
    Expr(dec(z, 1))
    """

    name: str

    def __call__(self, *inputs: Any, **options: Any) -> Expr:
        return Expr(*_call(self.name, inputs, options, _caller_span()))

    def _refusal(self) -> tuple[str, str]:
        return (f"network '{self.name}' is used without its inputs",
                f"call it, e.g. {self.name}(z)")


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
        span = _caller_span()
        self.name = _check_name(name, "model", span)
        self._span = span
        self._body: list[ast.Stmt] = []
        self._checked: tuple[int, ModelIR] | None = None

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {len(self._body)} statements)"

    # -- declarations

    def input(self, name: str, shape: Any = (), *, type: str | None = None) -> Expr:  # noqa: A002
        """`input name[shape] : type` -- a control signal, given at fit, sample and invert."""
        return self._declare("input", name, shape, type, None, _caller_span())

    def data(self, name: str, shape: Any = (), *, type: str | None = None) -> Expr:  # noqa: A002
        """`data name[shape] : type` -- observed during training."""
        return self._declare("data", name, shape, type, None, _caller_span())

    def latent(self, name: str, shape: Any = (), *, type: str | None = None,  # noqa: A002
               guide: Mapping[str, Any] | None = None) -> Expr:
        """`latent name[shape] : type guide(...)` -- one per data point; `guide` holds the
        guide options, e.g. ``guide=dict(hidden=[512], family="mvn")``."""
        return self._declare("latent", name, shape, type, guide, _caller_span())

    def global_(self, name: str, shape: Any = (), *, type: str | None = None,  # noqa: A002
                guide: Mapping[str, Any] | None = None) -> Expr:
        """`global name[shape] : type guide(...)` -- a latent shared by all data points."""
        return self._declare("global", name, shape, type, guide, _caller_span())

    def param(self, name: str, shape: Any = (), *, type: str | None = None) -> Expr:  # noqa: A002
        """`param name[shape] : type` -- a learned point estimate."""
        return self._declare("param", name, shape, type, None, _caller_span())

    def const(self, name: str, value: Any, shape: Any = ()) -> Expr:
        """`const name[shape] = value` -- a fixed number or (nested) list of numbers (a
        numpy array will do); the shape is optional, as in a `.dgm` file."""
        span = _caller_span()
        name = _check_name(name, "variable", span)
        dims = _dims(shape, span)
        node = _to_node(value, span)
        self._body.append(ast.Decl("const", name, dims, value=node, span=span, name_span=span))
        return Expr(ast.Name(name, span))

    def _declare(self, role: str, name: str, shape: Any, type_: str | None,
                 guide: Mapping[str, Any] | None, span: Span | None) -> Expr:
        name = _check_name(name, "variable", span)
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
            options = _keywords(guide, span)
        self._body.append(ast.Decl(role, name, dims, type_, options, span=span, name_span=span))
        return Expr(ast.Name(name, span))

    # -- statements

    def let(self, name: str, value: Any) -> Expr:
        """`let name = value` -- a named deterministic value."""
        span = _caller_span()
        name = _check_name(name, "let", span)
        self._body.append(ast.Let(name, _to_node(value, span), span))
        return Expr(ast.Name(name, span))

    def net(self, name: str, network: Expr) -> Network:
        """`net name = mlp(...)` -- a named network whose calls share weights."""
        span = _caller_span()
        name = _check_name(name, "network", span)
        node = network.node if isinstance(network, Expr) else None
        # Any call is recorded, as the grammar allows; the checker reports one that builds
        # no network in the words it uses for a `.dgm` file.
        if not isinstance(node, ast.Call):
            raise DGMTypeError(
                f"network '{name}' must be defined by {' or '.join(NETWORKS)}(...), not "
                f"{_describe(network)}", span,
                hint=f"e.g. m.net(\"{name}\", dg.mlp(hidden=[256, 256]))",
            )
        self._body.append(ast.NetDef(name, node, span))
        return Network(name)

    def draw(self, variable: Expr | str, distribution: Distribution) -> None:
        """`variable ~ distribution`: the distribution of a data, latent or global variable."""
        span = _caller_span()
        target = variable.node if isinstance(variable, Expr) else variable
        if isinstance(target, ast.Name):
            target = target.name
        if not isinstance(target, str):
            raise DGMTypeError("only a declared variable can be drawn", span,
                               hint="pass the handle m.latent(...) returned, or its name")
        _check_identifier(target, "variable name", span)
        if isinstance(distribution, Distribution):
            call = distribution.call
        elif isinstance(distribution, Expr) and isinstance(distribution.node, ast.Call):
            call = distribution.node  # `dg.exp(1)`: the checker says it is no distribution
        else:
            raise DGMTypeError(
                f"'{target}' must be drawn from a distribution, not "
                f"{_describe(distribution)}", span, hint="e.g. m.draw(z, dg.Normal(0, 1))",
            )
        self._body.append(ast.Draw(target, call, span))

    # -- results

    def program(self) -> ast.Program:
        """The model's syntax tree: what `dgmlang.parse.parse` gives for `to_dgm()`."""
        model = ast.ModelDef(self.name, tuple(self._body), self._span, self._span)
        return ast.Program((model,), self._span)

    def ir(self) -> "ModelIR":
        """The checked model; every mistake is a `DGMError` pointing at its Python line."""
        if self._checked is None or self._checked[0] != len(self._body):
            from dgmlang.check import check

            try:
                (checked,) = check(self.program())
            except DGMError as err:
                # The checker's own frames say nothing to the user; the message says where.
                raise err.with_traceback(None) from None
            self._checked = (len(self._body), checked)
        return self._checked[1]

    def to_dgm(self) -> str:
        """The model as `.dgm` text."""
        from dgmlang.printer import format_program

        return format_program(self.program())

    def compile(self) -> "CompiledModel":
        """The compiled model, as `dgmlang.load` gives it for the same `.dgm` text."""
        from dgmlang.frontend import check_irs, compile_checked

        checked = check_irs((self.ir(),))[0]
        return compile_checked(checked, source=self.to_dgm(), filename=f"<model {self.name}>")


def _describe(value: Any) -> str:
    if isinstance(value, Expr):
        return f"the value {_format(value.node)}"
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
        node = _to_node(dim, span)
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
_FUNCTION_NAMES: dict[Callable[..., Any], str] = {}


def _distribution_wrapper(name: str) -> Callable[..., Distribution]:
    spec = DISTRIBUTIONS[name]

    def distribution(*args: Any, **kwargs: Any) -> Distribution:
        span = _caller_span()
        return Distribution(_call(name, args, kwargs, span)[0])

    distribution.__name__ = distribution.__qualname__ = name
    distribution.__doc__ = (
        f"The distribution ``{spec.signature()}`` (Pyro's names), the second argument of "
        "`Model.draw`."
    )
    return distribution


def _function_wrapper(name: str, doc: str) -> Callable[..., Expr]:
    def function(*args: Any, **kwargs: Any) -> Expr:
        span = _caller_span()
        return Expr(*_call(name, args, kwargs, span))

    function.__name__ = function.__qualname__ = name
    function.__doc__ = doc
    _FUNCTION_NAMES[function] = name
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
