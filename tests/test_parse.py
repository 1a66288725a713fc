"""The grammar and the parser: every construct, spans, error messages, deep and long input."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from dgmlang import ast
from dgmlang.errors import DGMSyntaxError
from dgmlang.parse import KEYWORDS, MAX_NESTING, parse
from dgmlang.source import render_span

# The acceptance corpus of LANGUAGE.md, verbatim.
CORPUS = """\
# A variational autoencoder for the 8x8 digits (pixel values are counts 0..16).
model digits_vae {
    data   x[64]
    latent z[16]

    z ~ Normal(0, 1)
    x ~ Binomial(16, logits = mlp(z, hidden = [256, 256]))
}

# Draw a chosen digit: the class is a control signal.
model digits_cvae {
    input  y : int
    data   x[64]
    latent z[16]

    z ~ Normal(0, 1)
    x ~ Binomial(16, logits = mlp(z, onehot(y, 10), hidden = [256, 256]))
}

# Two levels of latents: the guide draws z1 from x, then z2 from z1 (a faithful inverse).
model digits_hvae {
    data   x[64]
    latent z2[8]
    latent z1[16]

    z2 ~ Normal(0, 1)
    z1 ~ Normal(mlp(z2, hidden = [128]))
    x  ~ Binomial(16, logits = mlp(z1, hidden = [256, 256]))
}

# A mixture of three Gaussians: a discrete latent, summed out exactly.
model gmm {
    param  mu[3, 2]
    data   x[2]
    latent c

    c ~ Categorical(logits = zeros(3))
    x ~ Normal(mu[c], 0.5)
}

# Bayesian linear regression: global latents; the posterior is known exactly.
model linreg {
    input  u[3]
    data   y
    global w[3]
    global b

    w ~ Normal(0, 1)
    b ~ Normal(0, 10)
    y ~ Normal(dot(w, u) + b, 0.5)
}

# Probabilistic PCA with fixed loadings: p(z | x) is Gaussian and known in closed form.
model ppca {
    const W = [[1.0, 0.5], [0.2, -1.0], [0.7, 0.7]]
    data   x[3]
    latent z[2]

    z ~ Normal(0, 1)
    x ~ Normal(matmul(W, z), 0.1)
}
"""

N, V = ast.Num, ast.Name


def B(op, left, right):
    return ast.BinOp(op, left, right)


def neg(operand):
    return ast.UnaryOp("-", operand)


def call(func, *args, **kwargs):
    return ast.Call(func, tuple(args), tuple(ast.Keyword(k, v) for k, v in kwargs.items()))


def lst(*items):
    return ast.ListExpr(tuple(items))


def body(text: str) -> tuple:
    """The statements of a one-model program whose body is `text`."""
    return parse(f"model m {{\n{text}\n}}", "t.dgm").models[0].body


def expr(text: str) -> ast.Expr:
    """The expression `text`, parsed as the value of a `let`."""
    (let,) = body(f"    let v = {text}")
    return let.value


def syntax_error(text: str) -> DGMSyntaxError:
    with pytest.raises(DGMSyntaxError) as info:
        parse(text, "t.dgm")
    return info.value


# ---------------------------------------------------------------- the corpus


def test_corpus_parses_into_its_models():
    program = parse(CORPUS, "corpus.dgm")
    assert [m.name for m in program.models] == [
        "digits_vae", "digits_cvae", "digits_hvae", "gmm", "linreg", "ppca",
    ]
    vae = program.models[0]
    assert vae.body == (
        ast.Decl("data", "x", (N(64),)),
        ast.Decl("latent", "z", (N(16),)),
        ast.Draw("z", call("Normal", N(0), N(1))),
        ast.Draw(
            "x",
            call("Binomial", N(16), logits=call("mlp", V("z"), hidden=lst(N(256), N(256)))),
        ),
    )
    cvae, gmm, linreg, ppca = program.models[1], program.models[3], program.models[4], program.models[5]
    assert cvae.body[0] == ast.Decl("input", "y", (), "int")
    assert gmm.body[-1] == ast.Draw(
        "x", call("Normal", ast.Index(V("mu"), (V("c"),)), N(0.5))
    )
    assert linreg.body[-1].dist.args[0] == B("+", call("dot", V("w"), V("u")), V("b"))
    assert ppca.body[0] == ast.Decl(
        "const", "W", (),
        value=lst(lst(N(1.0), N(0.5)), lst(N(0.2), neg(N(1.0))), lst(N(0.7), N(0.7))),
    )


# ---------------------------------------------------------------- declarations and statements


@pytest.mark.parametrize("role", ["data", "input", "latent", "global", "param"])
def test_every_role_declares_a_variable(role):
    assert body(f"    {role} v") == (ast.Decl(role, "v"),)


@pytest.mark.parametrize("type_name", ast.TYPES)
def test_every_type_can_follow_a_colon(type_name):
    assert body(f"    param s[3] : {type_name}") == (ast.Decl("param", "s", (N(3),), type_name),)


def test_dimensions_are_numbers_or_const_names():
    assert body("    const K = 3\n    data img[1, K, 16,]") == (
        ast.Decl("const", "K", value=N(3)),
        ast.Decl("data", "img", (N(1), V("K"), N(16))),
    )


def test_guide_options_on_latents_and_globals():
    stmts = body(
        "    latent z[16] : positive guide(hidden = [512, 512], family = normal)\n"
        "    global w guide(family = mvn)\n"
        "    global b guide()\n"
        "    latent u guide(anything = 1.5)"
    )
    assert stmts == (
        ast.Decl(
            "latent", "z", (N(16),), "positive",
            guide=(
                ast.Keyword("hidden", lst(N(512), N(512))),
                ast.Keyword("family", V("normal")),
            ),
        ),
        ast.Decl("global", "w", guide=(ast.Keyword("family", V("mvn")),)),
        ast.Decl("global", "b", guide=()),
        ast.Decl("latent", "u", guide=(ast.Keyword("anything", N(1.5)),)),
    )
    assert stmts[0].guide is not None and stmts[2].guide == () and body("    latent z")[0].guide is None


def test_const_with_and_without_dimensions():
    assert body("    const W = [[1, 0.5], [0.2, -1]]\n    const b[2] = [0, 1]") == (
        ast.Decl("const", "W", value=lst(lst(N(1), N(0.5)), lst(N(0.2), neg(N(1))))),
        ast.Decl("const", "b", (N(2),), value=lst(N(0), N(1))),
    )


def test_draw_let_and_net_statements():
    stmts = body(
        "    net dec = mlp(hidden = [256, 256], activation = relu)\n"
        "    let h = dec(z, y)\n"
        "    x ~ Bernoulli(logits = h)"
    )
    assert stmts == (
        ast.NetDef("dec", call("mlp", hidden=lst(N(256), N(256)), activation=V("relu"))),
        ast.Let("h", call("dec", V("z"), V("y"))),
        ast.Draw("x", call("Bernoulli", logits=V("h"))),
    )


def test_statements_end_at_newlines_or_semicolons():
    expected = (ast.Decl("data", "x"), ast.Draw("x", call("Normal", N(0), N(1))))
    assert body("    data x; x ~ Normal(0, 1)") == expected
    assert body(";;\n    data x ;; ;\n\n\n    x ~ Normal(0, 1);\n;") == expected
    assert parse("model m { data x; x ~ Normal(0, 1) }").models[0].body == expected
    assert parse("model m {\r\n    data x\r\n    x ~ Normal(0, 1)\r\n}\r\n").models[0].body == expected


def test_comments_and_blank_lines_anywhere():
    text = (
        "# header\n\n   # indented comment\nmodel m {  # after the brace\n"
        "    # a comment line\n\n    data x  # trailing comment\n"
        "    x ~ Normal(  # inside parentheses\n        0, 1)\n}  # after the model\n# end"
    )
    assert parse(text).models[0].body == (
        ast.Decl("data", "x"),
        ast.Draw("x", call("Normal", N(0), N(1))),
    )


def test_newlines_inside_brackets_join_lines():
    stmts = body(
        "    x ~ Binomial(\n        16,\n        logits = mlp(\n            z,\n"
        "            hidden = [\n                256,\n                256,\n            ],\n"
        "        ),\n    )\n    let v = (1 +\n        2)"
    )
    assert stmts == (
        ast.Draw("x", call("Binomial", N(16), logits=call("mlp", V("z"), hidden=lst(N(256), N(256))))),
        ast.Let("v", B("+", N(1), N(2))),
    )


def test_a_newline_outside_brackets_ends_the_statement():
    err = syntax_error("model m {\n    let v = 1 +\n        2\n}")
    assert err.message == "unexpected end of line"
    assert (err.span.line, err.span.col) == (2, 16)


def test_several_models_and_empty_models():
    program = parse("model a {}\nmodel b { }\n\nmodel c {\n}\n")
    assert program == ast.Program((ast.ModelDef("a", ()), ast.ModelDef("b", ()), ast.ModelDef("c", ())))


# ---------------------------------------------------------------- expressions


def test_numbers_are_ints_without_point_or_exponent():
    values = expr("[1, 16, 1.0, 1., .5, 1e-3, 2E+2, 0, 007]").items
    assert [v.value for v in values] == [1, 16, 1.0, 1.0, 0.5, 0.001, 200.0, 0, 7]
    assert [type(v.value) for v in values] == [int, int, float, float, float, float, float, int, int]


@pytest.mark.parametrize(
    "text, tree",
    [
        ("1 + 2 * 3", B("+", N(1), B("*", N(2), N(3)))),
        ("(1 + 2) * 3", B("*", B("+", N(1), N(2)), N(3))),
        ("a - b - c", B("-", B("-", V("a"), V("b")), V("c"))),
        ("a - (b - c)", B("-", V("a"), B("-", V("b"), V("c")))),
        ("a / b * c", B("*", B("/", V("a"), V("b")), V("c"))),
        ("a ** b ** c", B("**", V("a"), B("**", V("b"), V("c")))),
        ("(a ** b) ** c", B("**", B("**", V("a"), V("b")), V("c"))),
        ("-x ** 2", neg(B("**", V("x"), N(2)))),
        ("(-x) ** 2", B("**", neg(V("x")), N(2))),
        ("2 ** -1", B("**", N(2), neg(N(1)))),
        ("-a * b", B("*", neg(V("a")), V("b"))),
        ("a * -b", B("*", V("a"), neg(V("b")))),
        ("- - a", neg(neg(V("a")))),
        ("a - -b", B("-", V("a"), neg(V("b")))),
        ("-2", neg(N(2))),
        ("x[0] ** 2", B("**", ast.Index(V("x"), (N(0),)), N(2))),
        ("-x[0]", neg(ast.Index(V("x"), (N(0),)))),
        ("exp(a)[1][2]", ast.Index(ast.Index(call("exp", V("a")), (N(1),)), (N(2),))),
        ("(a + b)[0]", ast.Index(B("+", V("a"), V("b")), (N(0),))),
        ("[a, [1, 2], []]", lst(V("a"), lst(N(1), N(2)), lst())),
    ],
)
def test_operator_precedence_and_associativity(text, tree):
    assert expr(text) == tree


@pytest.mark.parametrize(
    "text, indices",
    [
        ("h[:16]", (ast.Slice(None, N(16)),)),
        ("mu[c]", (V("c"),)),
        ("W[0, 1:3]", (N(0), ast.Slice(N(1), N(3)))),
        ("h[1:]", (ast.Slice(N(1), None),)),
        ("h[:]", (ast.Slice(None, None),)),
        ("h[::2]", (ast.Slice(None, None, N(2)),)),
        ("h[1:2:3]", (ast.Slice(N(1), N(2), N(3)),)),
        ("h[1::]", (ast.Slice(N(1), None),)),
        ("h[K - 1:, -1]", (ast.Slice(B("-", V("K"), N(1)), None), neg(N(1)))),
    ],
)
def test_indexing_and_slices(text, indices):
    value = expr(text)
    assert isinstance(value, ast.Index) and value.indices == indices


def test_calls_take_positional_then_keyword_arguments():
    assert expr("f()") == call("f")
    assert expr("f(a, b, k = v, j = 2,)") == call("f", V("a"), V("b"), k=V("v"), j=N(2))
    assert expr("mlp(z, onehot(y, 10), hidden = [128])") == call(
        "mlp", V("z"), call("onehot", V("y"), N(10)), hidden=lst(N(128))
    )


# ---------------------------------------------------------------- spans


def test_declaration_model_and_expression_spans():
    text = "model vae {\n    latent z[16] : positive\n    let h = (a + b) * c\n}"
    model = parse(text, "v.dgm").models[0]
    assert (model.span.line, model.span.col, model.span.end_line, model.span.end_col) == (1, 1, 4, 2)
    assert (model.name_span.line, model.name_span.col, model.name_span.end_col) == (1, 7, 10)
    decl, let = model.body
    assert (decl.span.line, decl.span.col, decl.span.end_col) == (2, 5, 28)
    assert (decl.name_span.col, decl.name_span.end_col) == (12, 13)
    assert (let.span.col, let.span.end_col) == (5, 24)
    product = let.value
    assert (product.span.col, product.span.end_col) == (13, 24)  # from '(' to 'c'
    assert (product.left.span.col, product.left.span.end_col) == (13, 20)  # the parentheses
    assert (product.left.left.span.col, product.left.right.span.col) == (14, 18)
    assert product.span.file == "v.dgm" and product.span.source.text == text


def test_every_node_has_a_span_inside_the_text():
    program = parse(CORPUS, "corpus.dgm")
    seen = 0

    def visit(node):
        nonlocal seen
        if isinstance(node, tuple):
            for item in node:
                visit(item)
            return
        if not hasattr(node, "__dataclass_fields__"):
            return
        span = node.span
        assert span is not None and span.file == "corpus.dgm", node
        assert (span.line, span.col) < (span.end_line, span.end_col), node
        seen += 1
        for name in node.__dataclass_fields__:
            if name not in ("span", "name_span"):
                visit(getattr(node, name))

    visit(program)
    assert seen > 100


def test_span_text_is_the_source_of_the_node():
    text = "model m {\n    x ~ Normal(mu[c], 0.5 * exp(-s))\n}"
    draw = parse(text).models[0].body[0]
    line = text.split("\n")[1]

    def source_of(node):
        return line[node.span.col - 1 : node.span.end_col - 1]

    assert source_of(draw) == "x ~ Normal(mu[c], 0.5 * exp(-s))"
    assert source_of(draw.dist) == "Normal(mu[c], 0.5 * exp(-s))"
    assert source_of(draw.dist.args[0]) == "mu[c]"
    assert source_of(draw.dist.args[1]) == "0.5 * exp(-s)"
    assert source_of(draw.dist.args[1].right.args[0]) == "-s"


def test_tabs_count_as_one_column_and_the_caret_lines_up():
    text = "model m {\n\tdata\tx[3]\n\tx ~ Normal(0, @)\n}"
    decl = parse("model m {\n\tdata\tx[3]\n}").models[0].body[0]
    assert (decl.span.col, decl.name_span.col) == (2, 7)
    err = syntax_error(text)
    assert (err.span.line, err.span.col) == (3, 16)
    lines = str(err).split("\n")
    assert lines[0] == "t.dgm:3:16: unexpected character '@'"
    source_line, caret_line = lines[1], lines[2]
    assert source_line == "    \tx ~ Normal(0, @)"
    # Rendered with any tab width, the caret stands under the '@'.
    for width in (1, 4, 8):
        assert caret_line.expandtabs(width).index("^") == source_line.expandtabs(width).index("@")


@pytest.mark.parametrize(
    "text, line, col",
    [
        ("model m {\n    data x\n", 2, 11),
        ("model m {\n    data x", 2, 11),
        ("model m {\n    data x   \n\n  \n", 2, 11),
        ("model m {\n    let v = f(1,\n", 2, 17),
        ("model", 1, 6),
    ],
)
def test_unexpected_end_of_file_points_past_the_last_line(text, line, col):
    err = syntax_error(text)
    assert err.message == "unexpected end of file"
    assert (err.span.line, err.span.col) == (line, col)
    caret = str(err).split("\n")[2]
    assert caret.index("^") == 4 + col - 1


# ---------------------------------------------------------------- errors


def test_syntax_error_names_the_token_and_what_was_expected():
    err = syntax_error("model m {\n    let h = (1 +\n}")
    assert str(err) == (
        "t.dgm:3:1: unexpected '}'\n"
        "    }\n"
        "    ^\n"
        "    hint: expected one of: a name, a number, '(', '-', '['"
    )


@pytest.mark.parametrize(
    "text, message, hint",
    [
        ("model m {\n    data x y\n}", "unexpected name 'y'",
         "expected one of: ':', '[', 'guide', '}', end of statement"),
        ("model m {\n    x ~ Normal(0, 1))\n}", "unexpected ')'", None),
        ("model m {\n    x ~ Normal 0\n}", "unexpected number 0", "expected '('"),
        ("model m {\n    x ~ 3\n}", "unexpected number 3", "expected a name"),
        ("model m {\n    data x[]\n}", "unexpected ']'", "expected one of: a name, a number"),
        ("model m {\n    data x[-1]\n}", "unexpected '-'", "expected one of: a name, a number"),
        ("modle m {}", "unexpected name 'modle'", "expected 'model'; did you mean 'model'?"),
        ("model m {\n    laten z\n}", "unexpected name 'z'", "expected one of: '[', '~'"),
        ("model m { data x }}", "unexpected '}'", "expected one of: 'model', end of file"),
        ("model m {\n    let = 3\n}", "unexpected '='", "expected a name"),
        ("model m {\n    x ~ Normal(0, 1) ;\n    ;let v = 1 2\n}", "unexpected number 2", None),
        ("model m {\n    let v = a $ b\n}", "unexpected character '$'", None),
        ("model m {\n    let v = 1.5.2\n}", "unexpected number .2", None),
        ("model m {\n    let v = 'a'\n}", "unexpected character \"'\"", None),
        ("model m {\n    let v = +1\n}", "unexpected '+'", None),
        ("   \n# only a comment\n", "the file holds no model",
         "a model file holds one or more blocks 'model NAME { ... }'"),
        ("", "the file holds no model", None),
    ],
)
def test_syntax_error_messages(text, message, hint):
    err = syntax_error(text)
    assert err.message == message
    if hint is not None:
        assert err.hint == hint
    assert str(err).startswith(f"t.dgm:{err.span.line}:{err.span.col}: {message}")


@pytest.mark.parametrize("keyword", sorted(KEYWORDS))
def test_keywords_cannot_name_variables(keyword):
    for text in (f"    let {keyword} = 1", f"    latent z\n    z ~ Normal({keyword}, 1)"):
        with pytest.raises(DGMSyntaxError) as info:
            body(text)
        assert keyword in info.value.message


def test_reserved_word_error_points_at_the_word():
    err = syntax_error("model m {\n    let net = 1\n}")
    assert err.message == "'net' is a reserved word and cannot be used as a name"
    assert (err.span.line, err.span.col, err.span.end_col) == (2, 9, 12)
    assert err.hint == "choose another name, such as 'net_'"


def test_names_that_merely_contain_keywords_are_fine():
    assert body("    let database = models + guides + latent_z")[0] == ast.Let(
        "database", B("+", B("+", V("models"), V("guides")), V("latent_z"))
    )


def test_unknown_type_suggests_a_close_one():
    err = syntax_error("model m {\n    input y : itn\n}")
    assert err.message == "unknown type 'itn'"
    assert err.hint == "the types are real, int, positive, unit, simplex; did you mean 'int'?"
    assert (err.span.col, err.span.end_col) == (15, 18)


def test_argument_order_and_repeats():
    err = syntax_error("model m {\n    x ~ Normal(loc = 0, 1)\n}")
    assert err.message == "positional argument after keyword argument"
    assert err.span.col == 25
    err = syntax_error("model m {\n    x ~ Binomial(16, logits = a, logits = b)\n}")
    assert err.message == "keyword argument 'logits' repeated"
    assert err.hint == "'logits' is already given at line 2, column 22"
    err = syntax_error("model m {\n    latent z guide(family = mvn, family = flow)\n}")
    assert err.message == "guide option 'family' repeated"


def test_numbers_that_do_not_fit():
    err = syntax_error("model m {\n    let v = 1e999\n}")
    assert err.message == "number 1e999 is too large"
    err = syntax_error("model m {\n    let v = " + "9" * 5000 + "\n}")
    assert err.message == "integer literal with 5000 digits is too long"
    assert expr("1" + "0" * 300) == N(10**300)


# ---------------------------------------------------------------- deep and long input


@pytest.mark.parametrize(
    "nested",
    [
        "(" * 10_000 + "x" + ")" * 10_000,
        "[" * 10_000 + "]" * 10_000,
        "(" * 10_000,
        "-" * 10_000 + "x",
        "x" + " ** x" * 10_000,
        "x" + " + x" * 10_000,
        "f(" * 10_000 + ")" * 10_000,
        "x" + "[0]" * 10_000,
        "- (" * 5_000 + "x" + ")" * 5_000,
    ],
)
def test_deep_nesting_is_a_syntax_error_not_a_recursion_error(nested):
    err = syntax_error(f"model m {{\n    let v = {nested}\n}}")
    assert err.message == "nesting too deep"
    assert err.span.line == 2 and err.span.col > 9
    assert "100" in err.hint


def test_nesting_up_to_the_limit_parses():
    depth = MAX_NESTING - 1
    value = expr("[" * depth + "]" * depth)
    levels = 0
    while value.items:
        (value,) = value.items
        levels += 1
    assert levels == depth - 1
    assert expr("(" * MAX_NESTING + "x" + ")" * MAX_NESTING) == V("x")
    assert syntax_error(
        "model m {\n    let v = " + "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1) + "\n}"
    ).message == "nesting too deep"


def test_long_names_and_long_lines():
    name = "a" * 100_000
    assert expr(name) == V(name)
    many = ", ".join(str(i) for i in range(20_000))
    assert len(expr(f"[{many}]").items) == 20_000


def chain_program(latents: int) -> str:
    """A chain z0 -> z1 -> ... -> x: one declaration and one draw per latent."""
    lines = ["model chain {"]
    lines += [f"    latent z{i}" for i in range(latents)]
    lines += ["    data x", "    z0 ~ Normal(0, 1)"]
    lines += [f"    z{i} ~ Normal(z{i - 1}, 1)" for i in range(1, latents)]
    lines += [f"    x ~ Normal(z{latents - 1}, 1)", "}"]
    return "\n".join(lines) + "\n"


def test_a_ten_thousand_line_file_parses(capsys):
    text = chain_program(5000)
    assert text.count("\n") >= 10_000
    parse(text)  # the first call builds (or loads) the parser
    start = time.perf_counter()
    program = parse(text, "chain.dgm")
    elapsed = time.perf_counter() - start
    (model,) = program.models
    assert len(model.body) == 10_002
    assert model.body[-2] == ast.Draw("z4999", call("Normal", V("z4998"), N(1)))
    assert model.body[-2].span.line == 10_002
    with capsys.disabled():
        print(f"\n[parse] 10,004-line chain of 5,000 latents: {elapsed * 1000:.0f} ms")


# ---------------------------------------------------------------- start-up


def run_python(code: str, cache_home) -> str:
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_home))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_parser_start_up_uses_a_grammar_cache_and_no_torch(tmp_path, capsys):
    code = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "from dgmlang.parse import parse\n"
        "program = parse('model m { data x; x ~ Normal(0, 1) }')\n"
        "print(f'{time.perf_counter() - start:.3f}', 'torch' in sys.modules, program.models[0].name)\n"
    )
    cold = run_python(code, tmp_path).split()
    assert list((tmp_path / "dgmlang").glob("grammar-*.cache"))
    warm = run_python(code, tmp_path).split()
    assert cold[1:] == warm[1:] == ["False", "m"]
    with capsys.disabled():
        print(f"\n[parse] import + first parse: {cold[0]} s without cache, {warm[0]} s with cache")
