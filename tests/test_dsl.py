"""The Python DSL: the acceptance corpus written in Python gives the parser's syntax tree and
the checker's IR exactly; every mistake is a DGMError pointing at the line of this file."""
from __future__ import annotations

import inspect
import operator
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dgmlang as dg
from dgmlang import ast, dsl
from dgmlang.distributions import BUILTINS, DISTRIBUTIONS, NETWORKS
from dgmlang.errors import (
    DGMError, DGMErrors, DGMNameError, DGMShapeError, DGMSyntaxError, DGMTypeError, DGMUsageError,
)
from dgmlang.parse import parse
from dgmlang.printer import format_program

# ---------------------------------------------------------------- the acceptance corpus

from corpus_models import CORPUS


def digits_vae() -> dg.Model:
    m = dg.Model("digits_vae")
    x = m.data("x", [64])
    z = m.latent("z", [16])
    m.draw(z, dg.Normal(0, 1))
    m.draw(x, dg.Binomial(16, logits=dg.mlp(z, hidden=[256, 256])))
    return m


def digits_cvae() -> dg.Model:
    m = dg.Model("digits_cvae")
    y = m.input("y", type="int")
    x = m.data("x", shape=[64])
    z = m.latent("z", shape=[16])
    mu = m.param("mu", [10, 16])
    sd = m.param("sd", [10, 16], type="positive")
    m.draw(z, dg.Normal(mu[y], sd[y]))
    m.draw(x, dg.Binomial(16, logits=dg.mlp(z, dg.onehot(y, 10), hidden=[256, 256])))
    return m


def digits_hvae() -> dg.Model:
    m = dg.Model("digits_hvae")
    x = m.data("x", [64])
    z2 = m.latent("z2", [8])
    z1 = m.latent("z1", [16])
    m.draw(z2, dg.Normal(0, 1))
    m.draw(z1, dg.Normal(dg.mlp(z2, hidden=[128])))
    m.draw(x, dg.Binomial(16, logits=dg.mlp(z1, hidden=[256, 256])))
    return m


def gmm() -> dg.Model:
    m = dg.Model("gmm")
    mu = m.param("mu", [3, 2])
    x = m.data("x", [2])
    c = m.latent("c")
    m.draw(c, dg.Categorical(logits=dg.zeros(3)))
    m.draw(x, dg.Normal(mu[c], 0.5))
    return m


def linreg() -> dg.Model:
    m = dg.Model("linreg")
    u = m.input("u", [3])
    y = m.data("y")
    w = m.global_("w", [3])
    b = m.global_("b")
    m.draw(w, dg.Normal(0, 1))
    m.draw(b, dg.Normal(0, 10))
    m.draw(y, dg.Normal(dg.dot(w, u) + b, 0.5))
    return m


def ppca() -> dg.Model:
    m = dg.Model("ppca")
    W = m.const("W", [[1.0, 0.5], [0.2, -1.0], [0.7, 0.7]])
    x = m.data("x", [3])
    z = m.latent("z", [2])
    m.draw(z, dg.Normal(0, 1))
    m.draw(x, dg.Normal(W @ z, 0.1))  # `@` is matmul
    return m


BUILDERS = {f.__name__: f for f in (digits_vae, digits_cvae, digits_hvae, gmm, linreg, ppca)}


def checked(text: str):
    from dgmlang.check import check

    return check(parse(text, "corpus.dgm"))


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_model_builds_the_parsers_syntax_tree(name):
    assert BUILDERS[name]().program() == parse(CORPUS[name])


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_model_gives_the_checked_ir_of_its_dgm_text(name):
    (expected,) = checked(CORPUS[name])
    assert BUILDERS[name]().ir() == expected


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_to_dgm_round_trips(name):
    m = BUILDERS[name]()
    text = m.to_dgm()
    assert parse(text) == m.program()
    assert checked(text)[0] == m.ir()


def test_ir_is_rechecked_after_more_statements():
    m = dg.Model("m")
    z = m.latent("z", [2])
    m.draw(z, dg.Normal(0, 1))
    assert m.ir().names("latent") == ["z"]
    x = m.data("x", [2])
    m.draw(x, dg.Normal(z, 1))
    assert m.ir().names("latent", "data") == ["z", "x"]


# ---------------------------------------------------------------- expressions


def test_every_operator_builds_what_the_parser_reads():
    m = dg.Model("ops")
    z = m.latent("z", [4])
    W = m.const("W", [[1, 0, 0, 0], [0, 1, 0, 0]])
    m.let("h", (1 - z) / 2 + 2 ** -z * z[0:4:2][1] - abs(W @ z)[:1] ** 0.5)
    m.let("k", -dg.tanh(z) * 3.5 + z[1:, ] / z[::2] - dg.concat(z[:2], [1, -2]))
    expected = parse("""
model ops {
    latent z[4]
    const W = [[1, 0, 0, 0], [0, 1, 0, 0]]
    let h = (1 - z) / 2 + 2 ** -z * z[0:4:2][1] - abs(matmul(W, z))[:1] ** 0.5
    let k = -tanh(z) * 3.5 + z[1:] / z[::2] - concat(z[:2], [1, -2])
}""")
    assert m.program() == expected


def test_named_networks_and_options_as_in_the_text():
    m = dg.Model("nets")
    y = m.input("y", type="int")
    x = m.data("x", [4])
    z = m.latent("z", [2], guide=dict(hidden=[512, 512], family="mvn"))
    dec = m.net("dec", dg.mlp(hidden=[8], activation=dg.tanh))
    h = m.let("h", dec(z, dg.onehot(y, 3)))
    m.draw(z, dg.Normal(0, 1))
    m.draw(x, dg.Normal(h + dec(z, dg.onehot(y, 3)), dg.softplus(dg.mlp(z, activation="relu"))))
    expected = parse("""
model nets {
    input y : int
    data x[4]
    latent z[2] guide(hidden = [512, 512], family = mvn)
    net dec = mlp(hidden = [8], activation = tanh)
    let h = dec(z, onehot(y, 3))
    z ~ Normal(0, 1)
    x ~ Normal(h + dec(z, onehot(y, 3)), softplus(mlp(z, activation = relu)))
}""")
    assert m.program() == expected


def test_python_values_become_literals_as_the_parser_reads_them():
    m = dg.Model("lits")
    K = m.const("K", 3)
    m.const("A", np.array([[1.5, -2.0], [0.0, 4.0]]))
    m.const("B", (np.int64(2), -0.0, 1e-3), shape=[K])
    m.param("mu", [K, np.int64(2)], type="positive")
    m.data("x", np.int64(4))
    expected = parse("""
model lits {
    const K = 3
    const A = [[1.5, -2.0], [0.0, 4.0]]
    const B[K] = [2, -0.0, 0.001]
    param mu[K, 2] : positive
    data x[4]
}""")
    assert m.program() == expected
    assert isinstance(m.program().models[0].body[0].value.value, int)


def test_a_model_built_in_a_loop():
    m = dg.Model("chain")
    sizes = [8, 4, 2]
    z = [m.latent(f"z{i}", [size]) for i, size in enumerate(sizes)]
    x = m.data("x", [16])
    m.draw(z[0], dg.Normal(0, 1))
    for parent, child in zip(z, z[1:]):
        m.draw(child, dg.Normal(dg.mlp(parent, hidden=[32])))
    m.draw(x, dg.Bernoulli(logits=dg.mlp(z[-1])))
    text = """
model chain {
    latent z0[8]
    latent z1[4]
    latent z2[2]
    data x[16]
    z0 ~ Normal(0, 1)
    z1 ~ Normal(mlp(z0, hidden = [32]))
    z2 ~ Normal(mlp(z1, hidden = [32]))
    x ~ Bernoulli(logits = mlp(z2))
}"""
    assert m.program() == parse(text)
    assert m.ir() == checked(text)[0]


def test_compile_takes_the_guide_order_as_the_text_does():
    m = dg.Model("tree")
    a, b, c = (m.latent(name) for name in "abc")
    xs = [m.data(f"x{i}") for i in range(3)]
    m.draw(a, dg.Normal(0, 1))
    m.draw(b, dg.Normal(a, 1))
    m.draw(c, dg.Normal(a, 1))
    for x, parent in zip(xs, (b, b, c)):
        m.draw(x, dg.Normal(parent, 1))
    for order in ("nami", "minfill"):
        assert m.compile(guide_order=order).plan == dg.compile(m.to_dgm(), guide_order=order).plan
    assert m.compile(guide_order="minfill").plan != m.compile().plan
    with pytest.raises(DGMUsageError, match="unknown guide order"):
        m.compile(guide_order="min-fill")


def test_every_distribution_function_and_network_has_a_wrapper():
    for name in DISTRIBUTIONS:
        made = getattr(dg, name)(1, scale=2)
        assert isinstance(made, dsl.Distribution)
        assert made.call.func == name and made.call.kwargs[0].name == "scale"
        assert name in dsl.__all__ and getattr(dg, name).__doc__.startswith("The distribution")
    for name in (*BUILTINS, *NETWORKS):
        made = getattr(dg, name)(1, 2)
        assert isinstance(made, dsl.Expr) and made.node.func == name
        assert name in dsl.__all__


def test_repr_shows_dgm_syntax():
    m = dg.Model("m")
    z = m.latent("z", [3])
    assert repr(2 * z[0] - 1) == "Expr(2 * z[0] - 1)"
    assert repr(dg.Normal(z, scale=1)) == "Distribution(Normal(z, scale = 1))"
    assert repr(m) == "Model('m', 1 statements)"


# ---------------------------------------------------------------- spans point at this file


def line_of(text: str, start: int = 1) -> tuple[int, str]:
    """The first line of this file at or after `start` holding `text`, and that line."""
    with open(__file__, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if number >= start and text in line:
                return number, line.rstrip("\n")
    raise AssertionError(f"{text!r} is not in {__file__}")


def test_spans_point_at_the_python_call():
    m = dg.Model("m")
    z = m.latent("z", [2])
    m.draw(z, dg.Normal(0, 1))  # the call under test
    line, text = line_of("m.draw(z, dg.Normal(0, 1))  # the call under test")
    draw = m.program().models[0].body[-1]
    assert draw.span.file == __file__
    assert (draw.span.line, draw.span.col) == (line, text.index("m.draw") + 1)
    assert (draw.dist.span.line, draw.dist.span.col) == (line, text.index("dg.Normal") + 1)
    assert draw.dist.span.end_col == text.index(")  # the call") + 1  # exclusive
    assert draw.span.source.line(line) == text


def test_span_of_a_call_over_several_lines():
    m = dg.Model("m")
    z = m.latent("z", [2])
    m.draw(z, dg.Normal(  # several lines
        0, 1))
    line, _ = line_of("m.draw(z, dg.Normal(  # several lines")
    span = m.program().models[0].body[-1].span
    assert (span.line, span.end_line) == (line, line + 1)


def test_a_handle_used_again_points_at_its_use():
    m = dg.Model("m")
    z = m.latent("z", [2])
    h = dg.exp(z)  # the use
    line, text = line_of("h = dg.exp(z)  # the use")
    assert (h.node.args[0].span.line, h.node.args[0].span.col) == (line, text.index("dg.exp") + 1)


def test_unknown_name_points_at_the_python_line_with_a_suggestion():
    m = dg.Model("m")
    x = m.data("x", [2])
    z = m.latent("z", [2])
    m.draw(z, dg.Normal(0, 1))
    m.draw(x, dg.Normal("zz", 1))  # unknown name
    line, text = line_of('m.draw(x, dg.Normal("zz", 1))  # unknown name')
    with pytest.raises(DGMNameError) as caught:
        m.ir()
    err = caught.value
    assert (err.span.file, err.span.line) == (__file__, line)
    assert err.hint == "did you mean 'z'?"
    assert f"{__file__}:{line}:" in str(err) and text in str(err)


def test_a_handle_of_another_model_is_an_unknown_name_at_its_use():
    other = dg.Model("other")
    q = other.latent("q", [2])
    m = dg.Model("m")
    x = m.data("x", [2])
    m.draw(x, dg.Normal(q, 1))  # q is not declared in m
    line, _ = line_of("m.draw(x, dg.Normal(q, 1))  # q is not declared in m")
    with pytest.raises(DGMNameError) as caught:
        m.ir()
    assert caught.value.span.line == line


def test_independent_mistakes_are_reported_together_at_their_lines():
    m = dg.Model("m")
    u = m.input("u", [2])
    z = m.latent("z", [2])
    m.latent("z", [2])  # declared twice
    m.draw(z, dg.Normal(0, 1))
    m.draw(u, dg.Normal(0, 1))  # a distribution on an input
    with pytest.raises(DGMError) as caught:
        m.ir()
    errors = _errors(caught.value)
    lines = {err.span.line for err in errors}
    assert line_of('m.latent("z", [2])  # declared twice')[0] in lines
    assert line_of("m.draw(u, dg.Normal(0, 1))  # a distribution on an input")[0] in lines
    assert all(err.span.file == __file__ for err in errors)


def _shape_mismatch(m: dg.Model) -> None:
    z = m.latent("z", [3])
    x = m.data("x", [2])
    m.draw(z, dg.Normal(0, 1))
    m.draw(x, dg.Normal(z, 1))  # z[3] where x[2] is needed


# name: the .dgm text, the same model in Python, a text on the line the error points at
BAD_MODELS = {
    "missing_argument": (
        "model m {\n latent z\n z ~ Normal(0)\n}",
        lambda m: m.draw(m.latent("z"), dg.Normal(0)),
        'lambda m: m.draw(m.latent("z"), dg.Normal(0)),',
    ),
    "shape_mismatch": (
        "model m {\n latent z[3]\n data x[2]\n z ~ Normal(0, 1)\n x ~ Normal(z, 1)\n}",
        _shape_mismatch,
        "# z[3] where x[2] is needed",
    ),
    "unknown_distribution_keyword": (
        "model m {\n latent z\n z ~ Normal(0, sigma = 1)\n}",
        lambda m: m.draw(m.latent("z"), dg.Normal(0, sigma=1)),
        "dg.Normal(0, sigma=1)),",
    ),
    "no_distribution": (
        "model m {\n latent z\n}",
        lambda m: m.latent("z"),
        'lambda m: m.latent("z"),',
    ),
    "unknown_guide_family": (
        "model m {\n latent z guide(family = mvm)\n z ~ Normal(0, 1)\n}",
        lambda m: m.draw(m.latent("z", guide={"family": "mvm"}), dg.Normal(0, 1)),
        '{"family": "mvm"}',
    ),
    "reserved_distribution_name": (
        "model m {\n latent Normal\n Normal ~ Normal(0, 1)\n}",
        lambda m: m.draw(m.latent("Normal"), dg.Normal(0, 1)),
        'm.latent("Normal")',
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_MODELS))
def test_a_mistake_gives_the_same_error_as_in_a_dgm_file(name):
    text, build, marker = BAD_MODELS[name]
    with pytest.raises(DGMError) as from_text:
        checked(text)
    m = dg.Model("m")
    build(m)
    with pytest.raises(DGMError) as from_python:
        m.ir()
    assert _reported(from_python.value) == _reported(from_text.value)
    line = line_of(marker)[0]
    for err in _errors(from_python.value):
        assert (err.span.file, err.span.line) == (__file__, line)


def _errors(err: DGMError) -> list[DGMError]:
    return err.errors if isinstance(err, DGMErrors) else [err]


def _reported(err: DGMError) -> list[tuple[str, str, str | None]]:
    """What a user reads, less the position (several errors on one Python line have one
    column, so they may come in another order than in the text)."""
    return sorted((type(e).__name__, e.message, e.hint or "") for e in _errors(err))


# ---------------------------------------------------------------- Python mistakes are DGMErrors

# Each case is a lambda on its own line: the error must point at that line.
PYTHON_MISTAKES = [
    (DGMTypeError, lambda m, z: z + {"a": 1}),
    (DGMTypeError, lambda m, z: dg.Normal({1, 2}, 1)),
    (DGMTypeError, lambda m, z: dg.Normal(None, 1)),
    (DGMTypeError, lambda m, z: dg.exp(True)),
    (DGMTypeError, lambda m, z: dg.exp(float("nan"))),
    (DGMTypeError, lambda m, z: dg.Normal(0, 1) + 1),
    (DGMTypeError, lambda m, z: 2 * dg.Normal(0, 1)),
    (DGMTypeError, lambda m, z: dg.exp(dg.Normal(0, 1))),
    (DGMTypeError, lambda m, z: m.net("dec", dg.mlp(hidden=[2])) * 2),
    (DGMTypeError, lambda m, z: dg.exp(m.net("dec", dg.mlp(hidden=[2])))),
    (DGMTypeError, lambda m, z: list(z)),
    (DGMTypeError, lambda m, z: z if z else 0),
    (DGMTypeError, lambda m, z: z < 1),
    (DGMTypeError, lambda m, z: z // 2),
    (DGMTypeError, lambda m, z: z[...]),
    (DGMTypeError, lambda m, z: z(1)),
    (DGMTypeError, lambda m, z: m.draw(z, 3)),
    (DGMTypeError, lambda m, z: m.draw(z, z * 2)),
    (DGMTypeError, lambda m, z: m.draw(z + 1, dg.Normal(0, 1))),
    (DGMTypeError, lambda m, z: m.net("dec", z)),
    (DGMTypeError, lambda m, z: m.net("dec", dg.Normal(0, 1))),
    (DGMTypeError, lambda m, z: m.latent("w", guide="mvn")),
    (DGMTypeError, lambda m, z: m.latent(3)),
    (DGMTypeError, lambda m, z: m.data("x", type=int)),
    (DGMNameError, lambda m, z: m.latent("2z")),
    (DGMNameError, lambda m, z: dg.exp("not a name")),
    (DGMNameError, lambda m, z: dg.Model("my model")),
    (DGMSyntaxError, lambda m, z: m.latent("data")),
    (DGMSyntaxError, lambda m, z: dg.mlp(z, guide=1)),
    (DGMSyntaxError, lambda m, z: m.input("y", type="integer")),
    (DGMShapeError, lambda m, z: m.data("x", {"a": 1})),
    (DGMShapeError, lambda m, z: m.data("x", [2, -1])),
]


@pytest.mark.parametrize(
    "error, mistake", PYTHON_MISTAKES,
    ids=[f"line{mistake.__code__.co_firstlineno}" for _, mistake in PYTHON_MISTAKES],
)
def test_a_python_mistake_is_a_dgm_error_at_its_line(error, mistake):
    m = dg.Model("m")
    z = m.latent("z", [2])
    with pytest.raises(error) as caught:
        mistake(m, z)
    span = caught.value.span
    assert (span.file, span.line) == (__file__, mistake.__code__.co_firstlineno)
    assert str(caught.value).startswith(f"{__file__}:{span.line}:")


def test_reserved_word_and_unknown_type_messages_are_the_parsers():
    m = dg.Model("m")
    for python, text in [
        (lambda: m.latent("data"), "model m {\n latent data\n}"),
        (lambda: m.input("y", type="integer"), "model m {\n input y : integer\n}"),
    ]:
        with pytest.raises(DGMSyntaxError) as from_python:
            python()
        with pytest.raises(DGMSyntaxError) as from_text:
            parse(text)
        assert from_python.value.message == from_text.value.message
        assert from_python.value.hint == from_text.value.hint


def test_deep_nesting_is_the_parsers_error_not_a_recursion_error():
    from dgmlang.parse import MAX_NESTING

    m = dg.Model("m")
    z = m.latent("z")
    h = z
    with pytest.raises(DGMSyntaxError, match="nesting too deep") as caught:
        for _ in range(10 * MAX_NESTING):
            h = h + 1
    assert caught.value.span.line == line_of("h = h + 1")[0]
    nested: list = []
    for _ in range(sys.getrecursionlimit() + 10):
        nested = [nested]
    with pytest.raises(DGMSyntaxError, match="nesting too deep"):
        m.const("W", nested)



# ---------------------------------------------------------------- every test program, in Python

PROGRAMS = Path(__file__).parent / "programs"
OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
             "**": operator.pow}
MODEL_VALUES = (dsl.Expr, dsl.Distribution)


class NotExpressible(Exception):
    """The program says something the Python DSL cannot: a guide on a `data` declaration,
    or a misspelled function (in Python, an AttributeError of the module)."""


def replay(model: ast.ModelDef) -> dg.Model:
    """`model` rebuilt through the DSL's public calls, in its statement order, as a user
    would write it in Python."""
    m = dg.Model(model.name)
    handles: dict[str, object] = {}
    nets: dict[str, dsl.Network] = {}

    def value(node):
        if isinstance(node, ast.Num):
            return node.value
        if isinstance(node, ast.Name):
            return handles.get(node.name, node.name)
        if isinstance(node, ast.ListExpr):
            return [value(item) for item in node.items]
        if isinstance(node, ast.UnaryOp):
            number = node.operand.value if isinstance(node.operand, ast.Num) else None
            if isinstance(number, float) or number:  # Python's ints have no -0; its floats do
                return -number
            operand = value(node.operand)
            return -operand if isinstance(operand, MODEL_VALUES) else dsl.Expr(node)
        if isinstance(node, ast.BinOp):
            left, right = value(node.left), value(node.right)
            if not isinstance(left, MODEL_VALUES) and not isinstance(right, MODEL_VALUES):
                return dsl.Expr(node)  # Python would compute the numbers (or join the lists)
            return OPERATORS[node.op](left, right)
        if isinstance(node, ast.Index):
            indexed = value(node.value)
            if not isinstance(indexed, MODEL_VALUES):
                return dsl.Expr(node)  # Python would index the list
            return indexed[tuple(index(item) for item in node.indices)]
        assert isinstance(node, ast.Call), node
        if node.func in nets:
            func = nets[node.func]
        elif node.func in dsl.__all__:
            func = getattr(dg, node.func)
        else:
            raise NotExpressible(node.func)
        return func(*map(value, node.args), **{kw.name: value(kw.value) for kw in node.kwargs})

    def index(node):
        if isinstance(node, ast.Slice):
            parts = (node.start, node.stop, node.step)
            return slice(*(None if part is None else value(part) for part in parts))
        return value(node)

    def statement(stmt):
        if isinstance(stmt, ast.For):
            with m.loop(stmt.var, value(stmt.start), value(stmt.stop)) as step:
                outer = handles.get(stmt.var)
                handles[stmt.var] = step
                for inner in stmt.body:
                    statement(inner)
                if outer is None:
                    handles.pop(stmt.var)
                else:
                    handles[stmt.var] = outer
        elif isinstance(stmt, ast.Decl) and stmt.role == "const":
            handles[stmt.name] = m.const(stmt.name, value(stmt.value), [value(d) for d in stmt.dims])
        elif isinstance(stmt, ast.Decl):
            options: dict[str, object] = {} if stmt.type is None else {"type": stmt.type}
            if stmt.guide is not None:
                if stmt.role not in ("latent", "global"):
                    raise NotExpressible("guide options on a " + stmt.role)
                options["guide"] = {kw.name: value(kw.value) for kw in stmt.guide}
            declare = m.global_ if stmt.role == "global" else getattr(m, stmt.role)
            handles[stmt.name] = declare(stmt.name, [value(d) for d in stmt.dims], **options)
        elif isinstance(stmt, ast.Draw) and stmt.index is not None:  # one step: s[t] ~ ...
            m.draw(handles[stmt.target][index(stmt.index)], value(stmt.dist))
        elif isinstance(stmt, ast.Draw):
            m.draw(handles.get(stmt.target, stmt.target), value(stmt.dist))
        elif isinstance(stmt, ast.Let) and stmt.index is not None:
            raise NotExpressible("a let of one step")
        elif isinstance(stmt, ast.Let):
            handles[stmt.name] = m.let(stmt.name, value(stmt.value))
        else:
            nets[stmt.name] = m.net(stmt.name, value(stmt.call))

    for stmt in model.body:
        statement(stmt)
    return m


def _as_read(err: DGMError, with_hint: bool = True) -> set[tuple[str, ...]]:
    """What a user reads, less positions: line numbers in messages differ between files.
    A set, since the checker reports one mistake once per place, and one line of Python
    (the replay's) may build several places of the text."""
    def unplaced(text: str | None) -> str:
        return re.sub(r"\bline \d+", "line N", text or "")

    return {(type(e).__name__, unplaced(e.message)) + ((unplaced(e.hint),) if with_hint else ())
            for e in _errors(err)}


GOOD = sorted(PROGRAMS.glob("good/*.dgm"))
BAD = sorted(PROGRAMS.glob("bad/*.dgm"))


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_every_good_program_written_in_python_gives_its_tree_and_ir(path):
    program = parse(path.read_text(), str(path))
    for model, ir in zip(program.models, checked(path.read_text())):
        m = replay(model)
        assert m.program().models[0] == model
        assert m.ir() == ir


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_every_bad_program_written_in_python_gives_its_errors(path):
    from dgmlang.frontend import check_irs, check_source

    text = path.read_text()
    try:
        program = parse(text, str(path))
    except DGMSyntaxError:
        pytest.skip("a syntax error: the DSL builds no text")
    if len(program.models) != 1:
        pytest.skip("the DSL builds one model at a time")
    with pytest.raises(DGMError) as from_text:
        check_source(text, str(path))
    try:
        m = replay(program.models[0])
    except NotExpressible as missing:
        pytest.skip(f"not expressible in Python: {missing}")
    except DGMError as err:  # raised while the model is built: its hint speaks Python
        from_python, with_hint = err, False
    else:
        with pytest.raises(DGMError) as caught:
            check_irs((m.ir(),))
        from_python, with_hint = caught.value, True
    assert _as_read(from_python, with_hint) == _as_read(from_text.value, with_hint)
    lines, first = inspect.getsourcelines(replay)
    for err in _errors(from_python):
        assert err.span.file == __file__ and first <= err.span.line < first + len(lines)



# Random expressions in a fixed model: the DSL gives the parser's tree, and the checker
# gives both the same IR or the same errors.
NAMES = ["z", "x", "y", "mu", "K", "h"]
LEAVES = st.one_of(
    st.integers(min_value=0, max_value=20).map(ast.Num),
    st.sampled_from([0.5, 2.0, 1e-3]).map(ast.Num),
    st.sampled_from(NAMES).map(ast.Name),
)


def _composites(inner):
    index = st.one_of(inner, st.builds(ast.Slice, st.none() | inner, st.none() | inner,
                                       st.none() | inner))
    return st.one_of(
        st.builds(ast.UnaryOp, st.just("-"), inner),
        st.builds(ast.BinOp, st.sampled_from(sorted(OPERATORS)), inner, inner),
        st.builds(ast.Index, inner, st.lists(index, min_size=1, max_size=2).map(tuple)),
        st.builds(ast.ListExpr, st.lists(inner, min_size=1, max_size=3).map(tuple)),
        st.builds(ast.Call, st.sampled_from(sorted(BUILTINS)),
                  st.lists(inner, min_size=1, max_size=2).map(tuple)),
        st.builds(ast.Call, st.just("mlp"), st.lists(inner, min_size=1, max_size=2).map(tuple),
                  st.just((ast.Keyword("hidden", ast.ListExpr((ast.Num(4),))),))),
    )


EXPRESSIONS = st.recursive(LEAVES, _composites, max_leaves=8)


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(EXPRESSIONS, EXPRESSIONS)
def test_random_expressions_written_in_python_match_the_text(let_value, loc):
    from dgmlang.check import check

    declarations = (
        ast.Decl("const", "K", value=ast.Num(3)), ast.Decl("input", "y", type="int"),
        ast.Decl("data", "x", (ast.Num(3),)), ast.Decl("latent", "z", (ast.Num(3),)),
        ast.Decl("param", "mu", (ast.Num(3), ast.Num(2))),
    )
    body = declarations + (
        ast.Let("h", let_value),
        ast.Draw("z", ast.Call("Normal", (ast.Num(0), ast.Num(1)))),
        ast.Draw("x", ast.Call("Normal", (loc, ast.Num(1)))),
    )
    # Through the text, so the tree is the one the parser gives (parentheses resolved).
    program = parse(format_program(ast.Program((ast.ModelDef("m", body),))), "m.dgm")
    m = replay(program.models[0])
    assert m.program() == program
    try:
        expected = check(program)[0]
    except DGMError as from_text:
        with pytest.raises(DGMError) as from_python:
            m.ir()
        assert _as_read(from_python.value) == _as_read(from_text)
    else:
        assert m.ir() == expected


def test_compile_hands_the_checked_model_and_its_text_to_the_compiler(monkeypatch):
    from dgmlang import frontend

    handed = {}

    def compile_checked(checked, *, source, filename, device=None, dtype=None):
        handed.update(checked=checked, source=source, filename=filename, device=device, dtype=dtype)
        return "the compiled model"

    monkeypatch.setattr(frontend, "compile_checked", compile_checked)
    m = digits_cvae()
    assert m.compile(dtype="float64") == "the compiled model"
    assert handed["device"] is None and handed["dtype"] == "float64"
    (from_text,) = frontend.check_source(CORPUS["digits_cvae"])
    assert handed["checked"].ir == from_text.ir == m.ir()
    assert handed["checked"].plan == from_text.plan
    assert handed["source"] == m.to_dgm() and "digits_cvae" in handed["filename"]


def test_compiled_model_is_the_one_dg_compile_gives_and_saves_its_text(tmp_path):
    m = linreg()
    fitted = m.compile()
    from_text = dg.compile(CORPUS["linreg"])
    assert fitted.ir == from_text.ir
    assert fitted.guide_plan == from_text.guide_plan
    drawn = fitted.sample(4, inputs={"u": np.zeros((4, 3))}, seed=0)
    assert {name: tuple(value.shape) for name, value in drawn.items()} == {
        "y": (4,), "w": (3,), "b": ()}
    fitted.save(tmp_path / "linreg.pt")
    assert dg.load_fitted(tmp_path / "linreg.pt").ir == m.ir()
