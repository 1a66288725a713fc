"""The handles of the Python front end: expressions, distributions and networks as the
syntax tree the parser would build, each node at the user's Python line (`caller_span`).

`dgmlang.dsl` builds models from these; a handle converts Python values (numbers, lists,
numpy arrays, other handles) into syntax and refuses anything else with a `DGMError`.

>>> import dgmlang as dg
>>> m = dg.Model("m")
>>> z = m.latent("z", [3])
>>> (dg.exp(z) * 2 + 1).node.op
'+'
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
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

# `import dgmlang.ast as ast`, not `from dgmlang import ast`: the package's lazy __getattr__
# imports the DSL, so `from dgmlang import ...` here would import it again.
import dgmlang.ast as ast
from dgmlang.errors import DGMError, DGMNameError, DGMSyntaxError, DGMTypeError
from dgmlang.parse import KEYWORDS, MAX_NESTING
from dgmlang.source import Source, Span

#: The dgmlang function (`dg.tanh`, ...) behind each Python function the DSL generates, so
#: one can be passed as an option (`activation=dg.tanh`); filled by `dgmlang.dsl`.
FUNCTION_NAMES: dict[Callable[..., Any], str] = {}

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


def caller_span() -> Span | None:
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


def check_name(name: Any, what: str, span: Span | None) -> str:
    """`name` if it can name a model, variable or network in a `.dgm` file; else a DGMError
    (the parser's, for a reserved word). Distribution and function names are left to the
    checker, which reports them as it does for a `.dgm` file."""
    if not isinstance(name, str):
        raise DGMTypeError(
            f"the name of a {what} must be a string, not {type(name).__name__}", span,
            hint="names are strings, e.g. \"z\"",
        )
    return check_identifier(name, f"{what} name", span)


def check_identifier(name: str, what: str, span: Span | None) -> str:
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
        return ast.Name(check_identifier(value, "name to refer to", span), span), 1
    if isinstance(value, (list, tuple)):
        return _list(value, span, 1)
    if isinstance(value, FunctionType) and value in FUNCTION_NAMES:
        return ast.Name(FUNCTION_NAMES[value], span), 1  # `activation=dg.tanh`
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


def to_node(value: Any, span: Span | None) -> ast.Expr:
    return _convert(value, span)[0]


def _keyword(name: Any, value: Any, span: Span | None) -> tuple[ast.Keyword, int]:
    if not isinstance(name, str):
        raise DGMTypeError(f"an option name must be a string, not {type(name).__name__}", span,
                           hint="e.g. guide=dict(family=\"mvn\")")
    node, depth = _convert(value, span)
    return _nested(ast.Keyword(check_identifier(name, "option name", span), node, span), (depth,))


def keyword_nodes(options: Mapping[str, Any], span: Span | None) -> tuple[ast.Keyword, ...]:
    return tuple(_keyword(name, value, span)[0] for name, value in options.items())


def call_node(func: str, args: Sequence[Any], kwargs: Mapping[str, Any], span: Span | None) -> tuple[ast.Call, int]:
    parts = [_convert(arg, span) for arg in args]
    parts += [_keyword(name, value, span) for name, value in kwargs.items()]
    positional = tuple(node for node, _ in parts[: len(args)])
    keywords = tuple(node for node, _ in parts[len(args):])
    return _nested(ast.Call(func, positional, keywords, span), (depth for _, depth in parts))


# ---------------------------------------------------------------- handles


def _binary(op: str, left: Any, right: Any) -> "Expr":
    span = caller_span()
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
        raise DGMTypeError(message, caller_span(), hint=hint)

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

    >>> from dgmlang.dsl import Model
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
        span = caller_span()
        node, depth = _convert(self, span)
        return Expr(*_nested(ast.UnaryOp("-", node, span), (depth,)))

    def __pos__(self) -> "Expr":
        return self

    def __abs__(self) -> "Expr":
        return Expr(*call_node("abs", (self,), {}, caller_span()))

    def __matmul__(self, other: Any) -> "Expr":
        return Expr(*call_node("matmul", (self, other), {}, caller_span()))

    def __rmatmul__(self, other: Any) -> "Expr":
        return Expr(*call_node("matmul", (other, self), {}, caller_span()))

    def __getitem__(self, key: Any) -> "Expr":
        span = caller_span()
        value, depth = _convert(self, span)
        items = [_index(item, span) for item in (key if isinstance(key, tuple) else (key,))]
        node = ast.Index(value, tuple(item for item, _ in items), span)
        return Expr(*_nested(node, (depth, *(item_depth for _, item_depth in items))))

    def __iter__(self) -> Iterator["Expr"]:
        # Without this, Python would iterate by indexing h[0], h[1], ... forever.
        raise DGMTypeError("a model value cannot be iterated over in Python", caller_span(),
                           hint="index it (h[0]) or slice it (h[:16]) instead")

    def __bool__(self) -> bool:
        raise DGMTypeError("a model value has no truth value in Python", caller_span(),
                           hint="model values exist only when the model runs; branch on "
                           "Python numbers while building the model")

    def __call__(self, *args: Any, **kwargs: Any) -> "Expr":
        raise DGMTypeError(f"{format_node(self.node)} is not a network and cannot be called",
                           caller_span(),
                           hint="declare a network with m.net(\"name\", dg.mlp(hidden=[...]))")

    def __repr__(self) -> str:
        return f"Expr({format_node(self.node)})"

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


def format_node(node: ast.Expr) -> str:
    from dgmlang.printer import format_expr

    return format_expr(node)


@_refuse(f"{_ARITHMETIC} {_UNSUPPORTED} getitem iter")
@dataclass(frozen=True, eq=False)
class Distribution:
    """A distribution with its arguments, such as ``Normal(0, 1)``: the second argument of
    `Model.draw`. It is not a value: it cannot take part in arithmetic.

    >>> from dgmlang.dsl import Binomial
    >>> Binomial(16, logits=0)
    Distribution(Binomial(16, logits = 0))
    """

    call: ast.Call

    def __repr__(self) -> str:
        return f"Distribution({format_node(self.call)})"

    def _refusal(self) -> tuple[str, str]:
        name = self.call.func
        return (f"the distribution {name} cannot be used as a value",
                f"draw a variable from it and use the variable, e.g. m.draw(v, dg.{name}(...))")


@_refuse(f"{_ARITHMETIC} {_UNSUPPORTED} getitem iter")
@dataclass(frozen=True, eq=False)
class Network:
    """A named network declared with `Model.net`; calling it on inputs gives its output, and
    every call shares its weights.

    >>> from dgmlang.dsl import Model, mlp
    >>> m = Model("m")
    >>> z = m.latent("z", [4])
    >>> dec = m.net("dec", mlp(hidden=[32]))
    >>> dec(z, 1)
    Expr(dec(z, 1))
    """

    name: str

    def __call__(self, *inputs: Any, **options: Any) -> Expr:
        return Expr(*call_node(self.name, inputs, options, caller_span()))

    def _refusal(self) -> tuple[str, str]:
        return (f"network '{self.name}' is used without its inputs",
                f"call it, e.g. {self.name}(z)")
