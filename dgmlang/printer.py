"""Syntax tree back to canonical `.dgm` text: `format_program(program)`, `format_expr(expr)`.

Four-space indentation, one statement per line, a blank line after the declarations and
between models, spaces around binary operators, `=` and `~`, and only the parentheses that
precedence needs. Reading the text back gives the same tree: for every program `p` that
`dgmlang.parse.parse` returns, ``parse(format_program(p)) == p``. Comments are not part of
the tree, so they are not kept.

>>> from dgmlang.parse import parse
>>> print(format_program(parse("model m{data x[3];latent z ; z~Normal(0,1)\\n x~Normal((z),1)}")))
model m {
    data x[3]
    latent z
<BLANKLINE>
    z ~ Normal(0, 1)
    x ~ Normal(z, 1)
}
<BLANKLINE>
"""
from __future__ import annotations

import math

import dgmlang.ast as ast

__all__ = ["format_program", "format_model", "format_statement", "format_expr"]

INDENT = "    "

# Binding strength, loosest first, as in the grammar: a sub-expression is parenthesized
# when it binds more loosely than its place requires.
_SUM, _PRODUCT, _UNARY, _POWER, _POSTFIX = 1, 2, 3, 4, 5
_BINARY = {"+": _SUM, "-": _SUM, "*": _PRODUCT, "/": _PRODUCT, "**": _POWER}


def format_program(program: ast.Program) -> str:
    """The text of every model, separated by a blank line, ending with a newline."""
    return "\n".join(format_model(model) for model in program.models)


def format_model(model: ast.ModelDef) -> str:
    """`model NAME { ... }` with a blank line where the declarations end."""
    lines = [f"model {model.name} {{"]
    previous = None
    for stmt in model.body:
        if isinstance(previous, ast.Decl) and not isinstance(stmt, ast.Decl):
            lines.append("")
        lines.extend(INDENT + line for line in _statement_lines(stmt))
        previous = stmt
    lines.append("}")
    return "\n".join(lines) + "\n"


def _statement_lines(stmt: ast.Stmt) -> list[str]:
    """A statement's lines: one, or a `for` loop's header, body (indented) and brace."""
    if not isinstance(stmt, ast.For):
        return [format_statement(stmt)]
    head = f"for {stmt.var} in {_format(stmt.start, 0)}:{_format(stmt.stop, 0)} {{"
    return [head, *(INDENT + line for s in stmt.body for line in _statement_lines(s)), "}"]


def format_statement(stmt: ast.Stmt) -> str:
    """One declaration or statement on one line, without indentation.

    >>> from dgmlang.parse import parse
    >>> print(format_statement(parse("model m { latent z[K,2]:positive guide(family=mvn) }").models[0].body[0]))
    latent z[K, 2] : positive guide(family = mvn)
    """
    if isinstance(stmt, ast.Decl):
        return _format_decl(stmt)
    if isinstance(stmt, ast.Draw):
        return f"{stmt.target}{_step(stmt.index)} ~ {format_expr(stmt.dist)}"
    if isinstance(stmt, ast.Let):
        return f"let {stmt.name}{_step(stmt.index)} = {format_expr(stmt.value)}"
    if isinstance(stmt, ast.For):
        return "\n".join(_statement_lines(stmt))
    if isinstance(stmt, ast.NetDef):
        return f"net {stmt.name} = {format_expr(stmt.call)}"
    raise TypeError(f"not a dgm statement: {stmt!r}")


def _step(index: ast.Expr | None) -> str:
    return "" if index is None else f"[{_format(index, 0)}]"


def format_expr(expr: ast.Expr) -> str:
    """An expression with minimal parentheses.

    >>> from dgmlang.parse import parse
    >>> let = parse("model m { let h = (-(a)) ** 2 + -(b ** 2) * (c - d)[0:2, :] }").models[0].body[0]
    >>> format_expr(let.value)
    '(-a) ** 2 + -b ** 2 * (c - d)[0:2, :]'
    """
    return _format(expr, 0)


def _format_decl(decl: ast.Decl) -> str:
    dims = f"[{', '.join(format_expr(d) for d in decl.dims)}]" if decl.dims else ""
    if decl.role == "const":
        return f"const {decl.name}{dims} = {format_expr(decl.value)}"
    text = f"{decl.role} {decl.name}{dims}"
    if decl.type is not None:
        text += f" : {decl.type}"
    if decl.guide is not None:
        text += f" guide({_format_arguments((), decl.guide)})"
    return text


def _format_number(value: int | float) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no dgm literal")
        return repr(value)  # the shortest text that reads back as exactly this float
    return str(value)


def _binding(expr: ast.Expr) -> int:
    """How tightly `expr`'s printed form binds (a negative number reads as unary minus)."""
    if isinstance(expr, ast.BinOp):
        return _BINARY[expr.op]
    if isinstance(expr, ast.UnaryOp):
        return _UNARY
    if isinstance(expr, ast.Num) and math.copysign(1.0, expr.value) < 0:
        return _UNARY
    return _POSTFIX


def _format(expr: ast.Expr, required: int) -> str:
    """`expr` in a place that needs binding strength `required`, parenthesized if weaker."""
    text = _format_bare(expr)
    return f"({text})" if _binding(expr) < required else text


def _format_bare(expr: ast.Expr) -> str:
    if isinstance(expr, ast.Num):
        return _format_number(expr.value)
    if isinstance(expr, ast.Name):
        return expr.name
    if isinstance(expr, ast.BinOp):
        strength = _BINARY[expr.op]
        if expr.op == "**":  # right-associative; its left operand must not be a unary minus
            left, right = _format(expr.left, _POSTFIX), _format(expr.right, _UNARY)
        else:
            left, right = _format(expr.left, strength), _format(expr.right, strength + 1)
        return f"{left} {expr.op} {right}"
    if isinstance(expr, ast.UnaryOp):
        return f"{expr.op}{_format(expr.operand, _UNARY)}"
    if isinstance(expr, ast.Call):
        return f"{expr.func}({_format_arguments(expr.args, expr.kwargs)})"
    if isinstance(expr, ast.ListExpr):
        return f"[{', '.join(_format(item, 0) for item in expr.items)}]"
    if isinstance(expr, ast.Index):
        indices = ", ".join(_format_index(index) for index in expr.indices)
        return f"{_format(expr.value, _POSTFIX)}[{indices}]"
    raise TypeError(f"not a dgm expression: {expr!r}")


def _format_arguments(args, kwargs) -> str:
    parts = [_format(arg, 0) for arg in args]
    parts += [f"{kw.name} = {_format(kw.value, 0)}" for kw in kwargs]
    return ", ".join(parts)


def _format_index(index: ast.Expr | ast.Slice) -> str:
    if not isinstance(index, ast.Slice):
        return _format(index, 0)
    parts = ["" if part is None else _format(part, 0) for part in (index.start, index.stop)]
    if index.step is not None:
        parts.append(_format(index.step, 0))
    return ":".join(parts)
