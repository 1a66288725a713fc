"""Where things are in the source, for the checker's messages: the line of a span, the head
of a span, the name inside a statement, an operator between its operands, the text of an
expression as written, and a walk over an expression's nodes."""
from __future__ import annotations

from typing import Iterator

from dgmlang import ast
from dgmlang.source import Span


def line_of(span: Span | None) -> str:
    return str(span.line) if span is not None else "?"


def position_of(span: Span | None) -> tuple:
    return (span.file, span.line, span.col) if span is not None else ("", 0, 0)


def head_span(span: Span | None, length: int) -> Span | None:
    """The first `length` characters of `span` (on its first line)."""
    if span is None:
        return None
    return Span(span.file, span.line, span.col, span.line, span.col + length, source=span.source)


def name_span_in(span: Span | None, name: str) -> Span | None:
    """The span of the first whole-word `name` on `span`'s first line (`let NAME = ...`)."""
    if span is None or span.source is None:
        return span
    text = span.source.line(span.line)
    start = span.col - 1
    while True:
        at = text.find(name, start)
        if at < 0:
            return span
        before = text[at - 1] if at > 0 else " "
        after = text[at + len(name)] if at + len(name) < len(text) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            return Span(span.file, span.line, at + 1, span.line, at + 1 + len(name), source=span.source)
        start = at + 1


def walk_ast(expr) -> Iterator:
    """Every node of an expression, in source order (pre-order, left to right), iteratively."""
    stack = [expr]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        yield node
        if isinstance(node, ast.Call):
            children = [*node.args, *(k.value for k in node.kwargs)]
        elif isinstance(node, ast.BinOp):
            children = [node.left, node.right]
        elif isinstance(node, ast.UnaryOp):
            children = [node.operand]
        elif isinstance(node, ast.ListExpr):
            children = list(node.items)
        elif isinstance(node, ast.Index):
            children = [node.value, *node.indices]
        elif isinstance(node, ast.Slice):
            children = [node.start, node.stop, node.step]
        elif isinstance(node, ast.Keyword):
            children = [node.value]
        else:
            children = []
        stack.extend(reversed(children))


def argument_exprs(param_names: tuple[str, ...], call: ast.Call) -> dict[str, ast.Expr]:
    """The arguments of a distribution call by parameter name (positional in `param_names`
    order, then keywords), as written."""
    given = dict(zip(param_names, call.args))
    given.update((k.name, k.value) for k in call.kwargs)
    return given


def declared_span(stmt) -> Span | None:
    """Where a declaration, let or net statement names what it declares."""
    if isinstance(stmt, ast.Decl):
        return stmt.name_span or stmt.span
    return name_span_in(stmt.span, stmt.name)


def op_span(e: ast.BinOp) -> Span | None:
    """The operator of a binary operation: the text between its operands when it sits on
    one line, else the whole expression."""
    left, right = e.left.span, e.right.span
    if left is None or right is None or left.end_line != right.line or left.source is None:
        return e.span
    text = left.source.line(left.line)
    at = text.find(e.op, left.end_col - 1, right.col - 1)
    if at < 0:
        return e.span
    return Span(left.file, left.line, at + 1, left.line, at + 1 + len(e.op), source=left.source)


def source_text(expr) -> str:
    """The text of an expression as the user wrote it (when on one line), for messages."""
    span = getattr(expr, "span", None)
    if span is not None and span.source is not None and span.line == span.end_line:
        return span.source.line(span.line)[span.col - 1 : span.end_col - 1]
    if isinstance(expr, ast.Name):
        return expr.name
    if isinstance(expr, ast.Num):
        return repr(expr.value)
    return "this expression"
