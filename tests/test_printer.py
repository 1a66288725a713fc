"""The pretty-printer: canonical text, minimal parentheses, and parse(print(p)) == p."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dgmlang import ast
from dgmlang.parse import parse
from dgmlang.printer import format_expr, format_program, format_statement

from test_parse import CORPUS

REPO = Path(__file__).resolve().parent.parent
MODEL_FILES = sorted(
    [*REPO.glob("examples/*.dgm"), *REPO.glob("tests/programs/good/*.dgm")]
)

N, V = ast.Num, ast.Name

# Everything the grammar has, written untidily, with comments that the printer drops.
TRICKY = """\
# comments go; order, values and spellings stay
model a{const K=3;const W[2,K]=[[1,0.5,-1e-3],[.5,2.,-(4)]]
input y:int ; data x[ K , 2 ]  :  unit
latent z[16]guide(hidden=[512,512],family=mvn,)
global w guide()
param s : positive
net dec=mlp(hidden=[ 256 ,
                     256 ], activation=relu)
let h=dec(z,onehot(y,K))[:16,::2]   # a slice
z~Normal(0,1);w~Normal(-1 , 10)
x ~ Beta(exp(-h ** 2 / (1 + s)) , (-(h)) ** 2 - -w * (w - (1 - w)))
}
model b {
}
"""

TRICKY_FORMATTED = """\
model a {
    const K = 3
    const W[2, K] = [[1, 0.5, -0.001], [0.5, 2.0, -4]]
    input y : int
    data x[K, 2] : unit
    latent z[16] guide(hidden = [512, 512], family = mvn)
    global w guide()
    param s : positive

    net dec = mlp(hidden = [256, 256], activation = relu)
    let h = dec(z, onehot(y, K))[:16, ::2]
    z ~ Normal(0, 1)
    w ~ Normal(-1, 10)
    x ~ Beta(exp(-h ** 2 / (1 + s)), (-h) ** 2 - -w * (w - (1 - w)))
}

model b {
}
"""


def roundtrip(program: ast.Program) -> ast.Program:
    return parse(format_program(program), "formatted.dgm")


def parse_expr(text: str) -> ast.Expr:
    return parse(f"model m {{\n    let v = {text}\n}}").models[0].body[0].value


def test_corpus_round_trips_and_formatting_is_idempotent():
    program = parse(CORPUS, "corpus.dgm")
    text = format_program(program)
    assert roundtrip(program) == program
    assert format_program(parse(text)) == text


def test_corpus_model_prints_canonically():
    ppca = parse(CORPUS).models[-1]
    assert format_program(ast.Program((ppca,))) == (
        "model ppca {\n"
        "    const W = [[1.0, 0.5], [0.2, -1.0], [0.7, 0.7]]\n"
        "    data x[3]\n"
        "    latent z[2]\n"
        "\n"
        "    z ~ Normal(0, 1)\n"
        "    x ~ Normal(matmul(W, z), 0.1)\n"
        "}\n"
    )


def test_tricky_program_prints_canonically_and_round_trips():
    program = parse(TRICKY, "tricky.dgm")
    assert format_program(program) == TRICKY_FORMATTED
    assert roundtrip(program) == program


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.name)
def test_every_model_file_in_the_repository_round_trips(path):
    program = parse(path.read_text(encoding="utf-8"), str(path))
    assert roundtrip(program) == program


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("1+2*3", "1 + 2 * 3"),
        ("(1+2)*3", "(1 + 2) * 3"),
        ("((a))", "a"),
        ("a-(b-c)", "a - (b - c)"),
        ("(a-b)-c", "a - b - c"),
        ("a/(b*c)", "a / (b * c)"),
        ("a*(b/c)", "a * (b / c)"),
        ("(a*b)/c", "a * b / c"),
        ("a**(b**c)", "a ** b ** c"),
        ("(a**b)**c", "(a ** b) ** c"),
        ("-(x**2)", "-x ** 2"),
        ("(-x)**2", "(-x) ** 2"),
        ("(-2)**2", "(-2) ** 2"),
        ("2**(-1)", "2 ** -1"),
        ("2**(-(1))", "2 ** -1"),
        ("-(-x)", "--x"),
        ("a-(-b)", "a - -b"),
        ("(-a)*b", "-a * b"),
        ("-(a*b)", "-(a * b)"),
        ("-(a+b)", "-(a + b)"),
        ("(a+b)[0]", "(a + b)[0]"),
        ("(-a)[0]", "(-a)[0]"),
        ("(a**2)[0]", "(a ** 2)[0]"),
        ("(x[0])[1]", "x[0][1]"),
        ("f((a+b), k=(c))", "f(a + b, k = c)"),
        ("[(1), (2+3)]", "[1, 2 + 3]"),
        ("h[(1):(2):(3)]", "h[1:2:3]"),
        ("h[:]", "h[:]"),
        ("h[::2]", "h[::2]"),
        ("h[1:]", "h[1:]"),
        ("h[1::]", "h[1:]"),
        ("1.", "1.0"),
        (".5e1", "5.0"),
        ("1e-3", "0.001"),
        ("1e16", "1e+16"),
    ],
)
def test_minimal_parentheses(text, canonical):
    tree = parse_expr(text)
    assert format_expr(tree) == canonical
    assert parse_expr(canonical) == tree


@pytest.mark.parametrize(
    "value",
    [0.1 + 0.2, 1 / 3, 1e-300, 5e-324, 1.7976931348623157e308, 1e16, 2.0**70, 123456789.123456789, 0.0],
)
def test_floats_round_trip_exactly(value):
    (back,) = parse_expr(f"[{format_expr(N(value))}]").items
    assert type(back.value) is float and back.value == value


def test_ints_stay_ints():
    for value in (0, 7, 10**40):
        back = parse_expr(format_expr(N(value)))
        assert type(back.value) is int and back.value == value


def test_negative_numbers_print_as_a_unary_minus():
    # The parser never makes a negative Num (it reads -2 as UnaryOp('-', Num(2))), but a
    # tree built in Python may hold one: it prints where a unary minus would be valid.
    assert format_expr(ast.BinOp("**", N(-2), N(2))) == "(-2) ** 2"
    assert format_expr(ast.BinOp("-", V("a"), N(-1.5))) == "a - -1.5"
    assert format_expr(ast.Index(N(-1), (N(0),))) == "(-1)[0]"
    assert format_expr(ast.BinOp("**", N(-0.0), N(2))) == "(-0.0) ** 2"
    assert parse_expr(format_expr(ast.BinOp("**", N(-2), N(2)))) == ast.BinOp(
        "**", ast.UnaryOp("-", N(2)), N(2)
    )


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_numbers_without_a_literal_are_refused(value):
    with pytest.raises(ValueError):
        format_expr(N(value))


def test_statements_print_on_one_line():
    stmts = parse(
        "model m {\n latent z[K,2]:positive guide(hidden=[8])\n const c=-1\n"
        " net f=mlp(hidden=[4])\n let h=f(z)\n z~Normal(0,1)\n}"
    ).models[0].body
    assert [format_statement(s) for s in stmts] == [
        "latent z[K, 2] : positive guide(hidden = [8])",
        "const c = -1",
        "net f = mlp(hidden = [4])",
        "let h = f(z)",
        "z ~ Normal(0, 1)",
    ]


def test_order_of_statements_is_kept_and_blank_lines_follow_declaration_groups():
    program = parse("model m {\n let a = 1\n data x\n x ~ Normal(a, 1)\n latent z\n z ~ Normal(0, 1)\n}")
    assert format_program(program) == (
        "model m {\n    let a = 1\n    data x\n\n    x ~ Normal(a, 1)\n    latent z\n\n"
        "    z ~ Normal(0, 1)\n}\n"
    )
    assert roundtrip(program) == program


# ---------------------------------------------------------------- random trees


NAMES = st.sampled_from(["a", "b", "x", "mu", "W", "h_1", "Normal", "mlp", "real"])
NUMBERS = st.one_of(
    st.integers(min_value=0, max_value=10**30),
    st.floats(min_value=0, allow_infinity=False, allow_nan=False),
).map(N)
LEAVES = st.one_of(NUMBERS, NAMES.map(V))


def _compound(children):
    index = st.one_of(
        children,
        st.builds(
            ast.Slice,
            st.none() | children,
            st.none() | children,
            st.none() | children,
        ),
    )
    keywords = st.lists(st.builds(ast.Keyword, NAMES, children), max_size=2).map(
        lambda kws: tuple({kw.name: kw for kw in reversed(kws)}.values())  # names unique
    )
    return st.one_of(
        st.builds(ast.BinOp, st.sampled_from(["+", "-", "*", "/", "**"]), children, children),
        st.builds(ast.UnaryOp, st.just("-"), children),
        st.builds(ast.ListExpr, st.lists(children, max_size=3).map(tuple)),
        st.builds(ast.Index, children, st.lists(index, min_size=1, max_size=3).map(tuple)),
        st.builds(
            ast.Call,
            NAMES,
            st.lists(children, max_size=3).map(tuple),
            keywords,
        ),
    )


EXPRESSIONS = st.recursive(LEAVES, _compound, max_leaves=25)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(EXPRESSIONS)
def test_any_expression_tree_round_trips(tree):
    assert parse_expr(format_expr(tree)) == tree
