"""Text to syntax tree: `parse(text, filename) -> Program`, or a `DGMSyntaxError`.

The grammar is `grammar/dgm.lark` (package data). Lark's LALR parser calls a transformer
at every reduction, so the syntax tree (`dgmlang.ast`) is built during the parse: no parse
tree, no recursion over the depth of the input. Spans come from lark's tokens.

>>> program = parse('''
... model m {
...     latent z[2]
...     z ~ Normal(0, 1)
... }''', "m.dgm")
>>> program.models[0].body[1]
Draw(target='z', dist=Call(func='Normal', args=(Num(value=0), Num(value=1)), kwargs=()), index=None)
>>> print(program.models[0].body[1].span)
m.dgm:4:5
>>> try:
...     parse("model m {\\n    let h = (1 +\\n}", "m.dgm")
... except DGMSyntaxError as err:
...     print(err)
m.dgm:3:1: unexpected '}'
    }
    ^
    hint: expected one of: a name, a number, '(', '-', '['
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import gc
import importlib.resources
from pathlib import Path
import math
import re
import sys
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, NamedTuple

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lark import PostLex

import dgmlang.ast as ast
from dgmlang.grammar_cache import BUILD_OPTIONS, cache_file, cache_key, read_cache, write_cache
from dgmlang.errors import DGMSyntaxError, did_you_mean
from dgmlang.source import Source, Span

__all__ = ["parse", "paused_gc", "grammar_text", "KEYWORDS", "MAX_NESTING"]

#: Words that cannot name a variable, a model or a keyword argument.
KEYWORDS = frozenset(
    ("model", "data", "input", "latent", "global", "param", "const", "let", "net", "guide",
     "for", "in")
)

#: How deeply brackets and operators may nest. Later stages walk the tree recursively, so a
#: bound here keeps every one of them far from Python's recursion limit.
MAX_NESTING = 100


def parse(text: str, filename: str = "<string>") -> ast.Program:
    """The syntax tree of `text`, one `ModelDef` per `model` block; spans name `filename`.

    Raises `DGMSyntaxError` (with the span of the offending token and what was expected).

    >>> parse("model m { data x; x ~ Normal(0, 1) }").models[0].body[0]
    Decl(role='data', name='x', dims=(), type=None, guide=None, value=None)
    """
    source = Source(filename, text)
    state_token = _STATE.set(_ParseState(source))
    try:
        with paused_gc():
            return _parser().parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(err, source) from None
    finally:
        _STATE.reset(state_token)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the block, then restore its state.

    Every front-end stage (parse, check, graph, invert) builds many small objects that all
    survive the stage; left running, the collector rescans them over and over as they grow,
    about a tenth of `dgm check` on a 10,000-line file. Nothing collectable is made meanwhile
    that would not be collected later.

    >>> with paused_gc():
    ...     gc.isenabled()
    False
    >>> gc.isenabled()
    True
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# ---------------------------------------------------------------- per-parse state


@dataclass
class _ParseState:
    """What the transformer and post-lexer need during one call of `parse`.

    The `Lark` object (with its transformer) is built once and shared, so per-parse data
    lives in a context variable rather than on the transformer.
    """

    source: Source
    #: Nesting depth of each composite expression node built so far, by id(node).
    depth: dict[int, int] = field(default_factory=dict)


_STATE: contextvars.ContextVar[_ParseState] = contextvars.ContextVar("dgm_parse_state")


def _span(first, last) -> Span:
    """The span from the start of `first` to the end of `last` (tokens or nodes)."""
    source = _STATE.get().source
    if isinstance(first, Token):
        line, col = first.line, first.column
    else:
        line, col = first.span.line, first.span.col
    if isinstance(last, Token):
        end_line, end_col = last.end_line, last.end_column
    else:
        end_line, end_col = last.span.end_line, last.span.end_col
    return Span(source.name, line, col, end_line, end_col, source=source)


def _token_span(token: Token) -> Span:
    return _span(token, token)


# ---------------------------------------------------------------- post-lexer


class _LineJoiner(PostLex):
    """Drops newlines inside (...) and [...] (implicit line joining, as in Python), limits
    bracket nesting to MAX_NESTING, and rejects keywords where a name stands.

    A keyword is lexed as a NAME in states where lark's contextual lexer does not expect
    that keyword (`let data = 1`), so reserved words are caught here.
    """

    always_accept = ("_NEWLINE",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        for token in stream:
            kind = token.type
            if kind == "_NEWLINE":
                if depth:
                    continue
            elif kind == "LPAR" or kind == "LSQB":
                depth += 1
                if depth > MAX_NESTING:
                    raise _too_deep(_token_span(token))
            elif kind == "RPAR" or kind == "RSQB":
                if depth:
                    depth -= 1
            elif kind == "NAME" and token.value in KEYWORDS:
                raise DGMSyntaxError(
                    f"'{token.value}' is a reserved word and cannot be used as a name",
                    _token_span(token),
                    hint=f"choose another name, such as '{token.value}_'",
                )
            yield token


def _too_deep(span: Span) -> DGMSyntaxError:
    return DGMSyntaxError(
        "nesting too deep",
        span,
        hint=f"at most {MAX_NESTING} levels of brackets, calls and operators; "
        "split the expression with 'let'",
    )


# ---------------------------------------------------------------- transformer


class _Dims(NamedTuple):
    items: tuple[ast.Expr, ...]
    span: Span


class _TypeSpec(NamedTuple):
    name: str
    span: Span


class _GuideSpec(NamedTuple):
    options: tuple[ast.Keyword, ...]
    span: Span


_LEAVES = (ast.Num, ast.Name)


def _nested(node, children: Iterable) -> object:
    """Record `node`'s depth (one more than its deepest child); too deep is an error."""
    depth_of = _STATE.get().depth
    deepest = 0
    for child in children:
        if child is None or isinstance(child, _LEAVES):
            child_depth = 1
        else:
            child_depth = depth_of[id(child)]
        if child_depth > deepest:
            deepest = child_depth
    depth = deepest + 1
    if depth > MAX_NESTING:
        raise _too_deep(node.span)
    depth_of[id(node)] = depth
    return node


def _values(children: list) -> list:
    """The children that are nodes (not tokens, not the None of an absent `[...]`)."""
    return [c for c in children if c is not None and not isinstance(c, Token)]


def _split_arguments(items: list) -> tuple[tuple[ast.Expr, ...], tuple[ast.Keyword, ...]]:
    """Positional arguments, then keyword arguments; a repeated keyword or a positional
    argument after a keyword is an error (as in Python)."""
    args: list[ast.Expr] = []
    kwargs: list[ast.Keyword] = []
    for item in items:
        if isinstance(item, ast.Keyword):
            _check_not_repeated(item, kwargs, "keyword argument")
            kwargs.append(item)
        elif kwargs:
            raise DGMSyntaxError(
                "positional argument after keyword argument",
                item.span,
                hint="put positional arguments first, as in f(a, b, k = v)",
            )
        else:
            args.append(item)
    return tuple(args), tuple(kwargs)


def _check_not_repeated(keyword: ast.Keyword, earlier: list[ast.Keyword], what: str) -> None:
    for other in earlier:
        if other.name == keyword.name:
            raise DGMSyntaxError(
                f"{what} '{keyword.name}' repeated",
                keyword.span,
                hint=f"'{keyword.name}' is already given at line {other.span.line}, "
                f"column {other.span.col}",
            )


class _Builder(Transformer):
    """Builds `dgmlang.ast` nodes; lark calls one method per grammar rule (or alias)."""

    # Rules without a method here are the inlined `_rules` (and their repetitions), whose
    # trees lark splices into the parent. With no `__default__`, lark builds those trees
    # directly instead of through two extra calls per reduction. (This transformer is only
    # ever used inside the parser, never with `transform`.)
    __default__ = None

    # -------------------------------------------------------------- file and model

    def start(self, children):
        return ast.Program(tuple(children), span=_span(children[0], children[-1]))

    def model(self, children):
        keyword, name, _lbrace, *body, rbrace = children
        return ast.ModelDef(
            name.value, tuple(body), span=_span(keyword, rbrace), name_span=_token_span(name)
        )

    # -------------------------------------------------------------- declarations

    def decl(self, children):
        role, name, *rest = children
        dims: tuple[ast.Expr, ...] = ()
        type_name = None
        guide = None
        for part in rest:
            if isinstance(part, _Dims):
                dims = part.items
            elif isinstance(part, _TypeSpec):
                type_name = part.name
            else:
                guide = part.options
        return ast.Decl(
            role.value,
            name.value,
            dims,
            type_name,
            guide,
            span=_span(role, rest[-1] if rest else name),
            name_span=_token_span(name),
        )

    def const_decl(self, children):
        keyword, name, *rest, value = children
        dims = rest[0].items if rest else ()
        return ast.Decl(
            "const",
            name.value,
            dims,
            value=value,
            span=_span(keyword, value),
            name_span=_token_span(name),
        )

    def dims(self, children):
        return _Dims(tuple(_values(children)), _span(children[0], children[-1]))

    def type_spec(self, children):
        colon, name = children
        if name.value not in ast.TYPES:
            hint = "the types are " + ", ".join(ast.TYPES)
            suggestion = did_you_mean(name.value, ast.TYPES)
            raise DGMSyntaxError(
                f"unknown type '{name.value}'",
                _token_span(name),
                hint=f"{hint}; {suggestion}" if suggestion else hint,
            )
        return _TypeSpec(name.value, _span(colon, name))

    def guide_spec(self, children):
        options: list[ast.Keyword] = []
        for option in _values(children):
            _check_not_repeated(option, options, "guide option")
            options.append(option)
        return _GuideSpec(tuple(options), _span(children[0], children[-1]))

    # -------------------------------------------------------------- statements

    def draw(self, children):
        target, _lsqb, index, _rsqb, dist = children
        return ast.Draw(target.value, dist, span=_span(target, dist), index=index)

    def let_stmt(self, children):
        keyword, name, _lsqb, index, _rsqb, value = children
        return ast.Let(name.value, value, span=_span(keyword, value), index=index)

    def for_stmt(self, children):
        keyword, var, _in, start, _colon, stop, _lbrace, *body, rbrace = children
        return ast.For(var.value, start, stop, tuple(body), span=_span(keyword, rbrace),
                       var_span=_token_span(var))

    def net_stmt(self, children):
        keyword, name, call = children
        return ast.NetDef(name.value, call, span=_span(keyword, call))

    # -------------------------------------------------------------- expressions

    def number(self, children):
        (token,) = children
        text = token.value
        span = _token_span(token)
        if text.isdigit():
            try:
                value: int | float = int(text)
            except ValueError:  # longer than sys.get_int_max_str_digits()
                raise DGMSyntaxError(
                    f"integer literal with {len(text)} digits is too long", span
                ) from None
        else:
            value = float(text)
            if math.isinf(value):
                raise DGMSyntaxError(
                    f"number {text} is too large", span, hint=f"the largest is {sys.float_info.max!r}"
                )
        return ast.Num(value, span=span)

    def name(self, children):
        (token,) = children
        return ast.Name(token.value, span=_token_span(token))

    def binop(self, children):
        left, op, right = children
        return _nested(ast.BinOp(op.value, left, right, span=_span(left, right)), (left, right))

    def neg(self, children):
        minus, operand = children
        return _nested(ast.UnaryOp("-", operand, span=_span(minus, operand)), (operand,))

    def paren(self, children):
        lpar, inner, rpar = children
        # The node covers its parentheses, so `(a + b) * c` spans from '(' to 'c'.
        node = replace(inner, span=_span(lpar, rpar))
        return _nested(node, (inner,)) if not isinstance(node, _LEAVES) else node

    def index(self, children):
        value, _lsqb, *indices, rsqb = children
        return _nested(
            ast.Index(value, tuple(indices), span=_span(value, rsqb)), (value, *indices)
        )

    def slice(self, children):
        start, _colon, stop, _second_colon, step = children
        present = [c for c in children if c is not None]
        node = ast.Slice(start, stop, step, span=_span(present[0], present[-1]))
        return _nested(node, (start, stop, step))

    def call(self, children):
        name, _lpar, *items, rpar = children
        args, kwargs = _split_arguments(_values(items))
        node = ast.Call(name.value, args, kwargs, span=_span(name, rpar))
        return _nested(node, (*args, *kwargs))

    def keyword(self, children):
        name, value = children
        return _nested(ast.Keyword(name.value, value, span=_span(name, value)), (value,))

    def list(self, children):
        items = tuple(_values(children))
        return _nested(ast.ListExpr(items, span=_span(children[0], children[-1])), items)


# ---------------------------------------------------------------- building the parser


def grammar_text() -> str:
    """The text of the grammar, `grammar/dgm.lark` at the repository root, which is installed
    as the package `dgmlang.grammar` (in a wheel and in an editable install alike); a source
    checkout used without installing (on ``PYTHONPATH``) reads the file itself."""
    try:
        grammar = importlib.resources.files("dgmlang.grammar")
    except ModuleNotFoundError:
        grammar = Path(__file__).resolve().parents[1] / "grammar"
    return grammar.joinpath("dgm.lark").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def _parser() -> Lark:
    """The parser, from the grammar cache when there is a good one (`dgmlang.grammar_cache`), else
    built and cached. lark's own ``cache=`` is not used: it unpickles the file."""
    grammar = grammar_text()
    runtime = {"transformer": _Builder(), "postlex": _LineJoiner()}
    path = cache_file(grammar)
    key = cache_key(grammar)
    cached = read_cache(path, key) if path else None
    if cached is not None:
        try:
            return Lark._load_from_dict(cached["data"], cached["memo"], **runtime)
        except Exception:  # noqa: BLE001 - a cache lark cannot load is rebuilt
            pass
    parser = Lark(grammar, **BUILD_OPTIONS, **runtime)
    if path:
        write_cache(path, key, parser)
    return parser


# ---------------------------------------------------------------- lark errors to DGMSyntaxError


#: How an expected terminal reads in "expected one of: ...". Terminals with a fixed text
#: (keywords, punctuation) read as that text in quotes.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "_NEWLINE": "end of statement",
    "_SEMICOLON": "end of statement",
    "$END": "end of file",
}
_WORD_ORDER = {"a name": 0, "a number": 1, "end of statement": 3, "end of file": 4}


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    try:
        terminal = _parser().get_terminal(name)
    except KeyError:
        return name.lower()
    if terminal.pattern.type == "str":
        return f"'{terminal.pattern.value}'"
    return name.lower()


def _expected(names: Iterable[str]) -> list[str]:
    names = set(names)
    if "MODEL" in names:  # between models a line break is allowed but never what is missing
        names -= {"_NEWLINE", "_SEMICOLON"}
    words = {_describe_terminal(name) for name in names}
    return sorted(words, key=lambda word: (_WORD_ORDER.get(word, 2), word))


def _expected_hint(names: Iterable[str] | None) -> str | None:
    words = _expected(names or ())
    if not words:
        return None
    if len(words) == 1:
        return f"expected {words[0]}"
    return "expected one of: " + ", ".join(words)


_BLANK = re.compile(r"(\s|#[^\n]*)*")


def _end_of_file_span(source: Source) -> Span:
    """One column past the end of the last line that holds anything but whitespace."""
    content = source.text.rstrip()
    line = content.count("\n") + 1
    col = len(content) - (content.rfind("\n") + 1) + 1
    return Span(source.name, line, col, line, col + 1, source=source)


def _describe_token(token: Token) -> str:
    if token.type == "NAME":
        return f"unexpected name '{token.value}'"
    if token.type == "NUMBER":
        return f"unexpected number {token.value}"
    if token.type == "_NEWLINE":
        return "unexpected end of line"
    if token.type == "_SEMICOLON":
        return "unexpected ';'"
    return f"unexpected '{token.value}'"


def _syntax_error(err: UnexpectedInput, source: Source) -> DGMSyntaxError:
    if isinstance(err, UnexpectedCharacters):
        char = source.text[err.pos_in_stream]
        span = Span(source.name, err.line, err.column, err.line, err.column + 1, source=source)
        return DGMSyntaxError(f"unexpected character {char!r}", span, hint=_expected_hint(err.allowed))
    if isinstance(err, UnexpectedEOF):
        return DGMSyntaxError(
            "unexpected end of file", _end_of_file_span(source), hint=_expected_hint(err.expected)
        )
    assert isinstance(err, UnexpectedToken), type(err)
    token = err.token
    expected = err.accepts or err.expected
    hint = _expected_hint(expected)
    if token.type == "$END":
        if _BLANK.fullmatch(source.text):
            return DGMSyntaxError(
                "the file holds no model",
                _end_of_file_span(source),
                hint="a model file holds one or more blocks 'model NAME { ... }'",
            )
        return DGMSyntaxError("unexpected end of file", _end_of_file_span(source), hint=hint)
    if token.type == "_NEWLINE":
        span = Span(source.name, token.line, token.column, token.line, token.column + 1, source=source)
    else:
        span = Span(
            source.name, token.line, token.column, token.end_line, token.end_column, source=source
        )
    if token.type == "NAME":
        keywords = [name.lower() for name in expected if name.lower() in KEYWORDS]
        suggestion = did_you_mean(token.value, keywords)
        if suggestion:
            hint = f"{hint}; {suggestion}" if hint else suggestion
    return DGMSyntaxError(_describe_token(token), span, hint=hint)
