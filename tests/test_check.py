"""The checker: what the IR says about each construct, and which mistakes it reports where.

The exact wording of every error is pinned by the golden files (tests/test_golden.py);
these tests pin the IR and the rules behind the messages.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dgmlang import ast, ir
from dgmlang.check import check
from dgmlang.errors import (
    DGMError,
    DGMErrors,
    DGMGuideError,
    DGMModelError,
    DGMNameError,
    DGMShapeError,
    DGMTypeError,
)
from dgmlang.parse import parse


def model(body: str, name: str = "m") -> ir.ModelIR:
    (result,) = check(parse(f"model {name} {{\n{body}\n}}", "t.dgm"))
    return result


def error(body: str) -> DGMError:
    with pytest.raises(DGMError) as info:
        model(body)
    return info.value


def errors(body: str) -> list[DGMError]:
    err = error(body)
    return err.errors if isinstance(err, DGMErrors) else [err]


def where(err: DGMError) -> tuple[int, int]:
    """(line, col) within the model body (line 1 is the first body line)."""
    return err.span.line - 1, err.span.col


# ------------------------------------------------------------------ the corpus IR


def test_digits_vae_network_sizes_come_from_the_data():
    m = model("data x[64]\nlatent z[16]\nz ~ Normal(0, 1)\n"
              "x ~ Binomial(16, logits = mlp(z, hidden = [256, 256]))")
    (net,) = m.nets
    assert (net.name, net.kind, net.input_sizes, net.output_size, net.output_shape) == (
        "mlp_1", "mlp", (16,), 64, (64,))
    assert net.hidden == (256, 256) and net.activation == "relu" and net.anonymous
    logits = m.draw("x").param("logits")
    assert isinstance(logits, ir.NetCall) and logits.constraint == "real"
    assert m.draw("x").param("total_count") == ir.Lit(16, (), True)
    assert m.variable("x").type == "int" and m.variable("z").type == "real"


def test_a_lone_network_feeds_every_parameter_packed_in_pyro_order():
    m = model("data x[64]\nlatent z2[8]\nlatent z1[16]\nz2 ~ Normal(0, 1)\n"
              "z1 ~ Normal(mlp(z2, hidden = [128]))\nx ~ Bernoulli(logits = mlp(z1))")
    draw = m.draw("z1")
    assert draw.params == ()
    assert draw.packed.shape == (32,) and draw.packed.constraint == "real"
    assert draw.packed_params == (
        ir.PackedParam("loc", (16,), "real"), ir.PackedParam("scale", (16,), "positive"))
    assert m.net(draw.packed.net).output_size == 32


def test_packed_studentt_and_negative_binomial_include_every_listed_parameter():
    m = model("data a[3]\ndata n[3]\nlatent z[2]\nz ~ Normal(0, 1)\n"
              "a ~ StudentT(mlp(z))\nn ~ NegativeBinomial(mlp(z))")
    assert [p.name for p in m.draw("a").packed_params] == ["df", "loc", "scale"]
    assert [(p.name, p.constraint) for p in m.draw("n").packed_params] == [
        ("total_count", "positive"), ("logits", "real")]


def test_a_lone_network_for_a_one_parameter_distribution_binds_that_parameter():
    m = model("data x[5]\ndata w[5]\nlatent z[2]\nz ~ Normal(0, 1)\n"
              "x ~ Exponential(mlp(z))\nw ~ Dirichlet(mlp(z))")
    rate = m.draw("x").param("rate")
    assert m.draw("x").packed is None
    assert (rate.shape, rate.constraint) == ((5,), "positive")
    concentration = m.draw("w").param("concentration")
    assert (concentration.shape, concentration.constraint) == ((5,), "positive")


def test_net_constraint_is_the_parameter_it_feeds():
    m = model("data x[3]\ndata b[3]\nlatent z[2]\nz ~ Normal(0, 1)\n"
              "x ~ Normal(mlp(z), mlp(z))\nb ~ Bernoulli(probs = mlp(z))")
    assert m.draw("x").param("loc").constraint == "real"
    assert m.draw("x").param("scale").constraint == "positive"
    assert m.draw("b").param("probs").constraint == "unit"


def test_net_size_is_inferred_through_element_wise_functions_and_arithmetic():
    m = model("data n[12]\nlatent z[3]\nz ~ Normal(0, 1)\n"
              "n ~ Poisson(exp(mlp(z)) * 2 + 0.1)")
    rate = m.draw("n").param("rate")
    (net,) = m.nets
    assert rate.shape == (12,) and net.output_shape == (12,)
    # Seen through exp, the network itself is not mapped onto the rate's constraint.
    call = rate.left.left.args[0]
    assert isinstance(call, ir.NetCall) and call.constraint == "real"


def test_net_size_from_the_other_operand_and_from_a_lets_use():
    m = model("const B = [1, 2, 3]\ndata x[3]\nlatent z[2]\nz ~ Normal(0, 1)\n"
              "let h = mlp(z) + B\nlet g = mlp(z, hidden = [4])\nx ~ Normal(h, softplus(g))")
    assert [n.output_shape for n in m.nets] == [(3,), (3,)]
    assert [n.hidden for n in m.nets] == [(256,), (4,)]


def test_gmm_indexes_a_param_with_a_categorical_latent():
    m = model("param mu[3, 2]\ndata x[2]\nlatent c\nc ~ Categorical(logits = zeros(3))\n"
              "x ~ Normal(mu[c], 0.5)")
    loc = m.draw("x").param("loc")
    assert loc == ir.IndexExpr(ir.Ref("mu", (3, 2)), (ir.Ref("c", ()),), (2,))
    assert m.variable("c").type == "int"


def test_ppca_const_value_and_matmul_shape():
    m = model("const W = [[1.0, 0.5], [0.2, -1.0], [0.7, 0.7]]\ndata x[3]\nlatent z[2]\n"
              "z ~ Normal(0, 1)\nx ~ Normal(matmul(W, z), 0.1)")
    w = m.variable("W")
    assert w.value == ((1.0, 0.5), (0.2, -1.0), (0.7, 0.7)) and w.shape == (3, 2)
    assert m.draw("x").param("loc").shape == (3,)


def test_linreg_globals():
    m = model("input u[3]\ndata y\nglobal w[3]\nglobal b\nw ~ Normal(0, 1)\nb ~ Normal(0, 10)\n"
              "y ~ Normal(dot(w, u) + b, 0.5)")
    assert m.names("global") == ["w", "b"]
    assert m.draw("y").param("loc").shape == ()


def test_ir_does_not_depend_on_file_name_or_layout():
    text = "model m { data x[2]; latent z[2]; z ~ Normal(0, 1); x ~ Normal(mlp(z), 1) }"
    spread = "model m {\n  data x[2]\n\n  latent z[2]\n  z ~ Normal(0,\n 1)\n  x ~ Normal(mlp(z), 1)\n}"
    assert check(parse(text, "a.dgm")) == check(parse(spread, "b.dgm"))


def test_models_are_returned_in_file_order():
    text = "model b { data x; x ~ Normal(0, 1) }\nmodel a { data x; x ~ Normal(0, 1) }"
    assert [m.name for m in check(parse(text))] == ["b", "a"]


def test_every_node_carries_its_span():
    m = model("data x[2]\nlatent z[2]\nz ~ Normal(0, 1)\nx ~ Normal(mlp(z), 1)")
    assert m.variable("z").span.line == 3
    assert m.draw("x").span.line == 5
    assert m.draw("x").param("loc").span.col == 12
    assert m.nets[0].span.line == 5


# ------------------------------------------------------------------ shapes


@pytest.mark.parametrize("expr, shape", [
    ("matmul(A, v2)", (3,)),
    ("matmul(v3, A)", (2,)),
    ("matmul(A, B)", (3, 4)),
    ("matmul(v2, v2)", ()),
    ("dot(v2, v2)", ()),
    ("sum(A)", ()),
    ("mean(A)", ()),
    ("concat(v2, v3, v2)", (7,)),
    ("concat(A, A)", (3, 4)),
    ("softmax(A)", (3, 2)),
    ("onehot(k, 5)", (5,)),
    ("zeros(2, 3)", (2, 3)),
    ("ones(4)", (4,)),
    ("A[1]", (2,)),
    ("A[:, 0]", (3,)),
    ("A[1:]", (2, 2)),
    ("A[::2, -1]", (2,)),
    ("v3[k]", ()),
    ("A + v2", (3, 2)),
    ("A * ones(3, 1)", (3, 2)),
    ("[v2, v2, v2]", (3, 2)),
    ("[[1, 2], [3, 4]] ** 2", (2, 2)),
    ("-exp(v2)", (2,)),
])
def test_expression_shapes(expr, shape):
    m = model("const A = [[1, 2], [3, 4], [5, 6]]\nconst B = [[1, 2, 3, 4], [5, 6, 7, 8]]\n"
              "input v2[2]\ninput v3[3]\ninput k : int\ndata x\n"
              f"let e = {expr}\nx ~ Normal(0, 1)")
    (let,) = m.lets
    assert let.value.shape == shape


def test_scalar_parameters_broadcast_to_the_declared_shape():
    m = model("data x[4, 3]\ninput u[3]\nx ~ Normal(u, 1)")
    assert m.draw("x").param("loc").shape == (3,)


def test_parameter_that_does_not_broadcast_is_an_error_naming_both_shapes():
    err = error("data x[4, 3]\ninput u[4]\nx ~ Normal(u, 1)")
    assert isinstance(err, DGMShapeError)
    assert "[4]" in err.message and "[4, 3]" in err.message
    assert where(err) == (3, 12)


@given(
    st.lists(st.integers(1, 3), max_size=3),
    st.lists(st.integers(1, 3), max_size=3),
)
@settings(max_examples=60, deadline=None)
def test_arithmetic_broadcasts_like_numpy(a, b):
    def array(shape):
        return f"zeros({', '.join(map(str, shape))})" if shape else "0.0"

    body = f"data x\nlet e = {array(a)} + {array(b)}\nx ~ Normal(0, 1)"
    try:
        expected = np.broadcast_shapes(tuple(a), tuple(b))
    except ValueError:
        with pytest.raises(DGMShapeError):
            model(body)
    else:
        assert model(body).lets[0].value.shape == expected


def test_const_dimensions_and_const_arithmetic():
    m = model("const K = 3\nconst D = 2 * K + 1\ndata x[K, D]\nx ~ Normal(0, 1)")
    assert m.variable("x").shape == (3, 7)
    assert m.variable("D").value == 7 and m.variable("D").type == "int"


@pytest.mark.parametrize("dim", ["0", "2.5", "K", "W", "z"])
def test_a_dimension_that_is_not_a_positive_integer(dim):
    err = error(f"const K = -2\nconst W = [1, 2]\nlatent z\nz ~ Normal(0, 1)\ndata x[{dim}]\n"
                "x ~ Normal(0, 1)")
    assert isinstance(err, DGMShapeError)
    assert where(err) == (5, 8)


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize("call, fragment", [
    ("Normal(0)", "missing its argument 'scale'"),
    ("Normal(0, 1, 2)", "at most 2 arguments"),
    ("Normal(0, sd = 1)", "no argument 'sd'"),
    ("Normal(0, 1, loc = 2)", "'loc' is given twice"),
    ("Bernoulli()", "needs 'probs' or 'logits'"),
    ("Bernoulli(0.5, logits = 0)", "not both"),
    ("Normal(0, 0)", "scale must be positive"),
    ("Beta(1, -1)", "concentration0 must be positive"),
    ("Bernoulli(probs = 2)", "between 0 and 1"),
    ("Binomial(-1, 0.5)", "non-negative integer"),
    ("Categorical(probs = [0.5, 0.6])", "sum to 1"),
])
def test_wrong_distribution_arguments(call, fragment):
    err = error(f"data x\nx ~ {call}")
    assert isinstance(err, DGMTypeError)
    assert fragment in err.message


def test_positional_and_keyword_arguments_bind_by_pyro_name_in_pyro_order():
    m = model("data x\ndata y\nx ~ Binomial(logits = 0.3, total_count = 4)\ny ~ StudentT(3, scale = 2)")
    assert [n for n, _ in m.draw("x").params] == ["total_count", "logits"]
    assert [n for n, _ in m.draw("y").params] == ["df", "scale"]  # defaults are left to Pyro


def test_probs_takes_the_first_positional_slot_of_bernoulli():
    m = model("data x\nx ~ Bernoulli(0.3)")
    assert m.draw("x").params == (("probs", ir.Lit(0.3, ())),)


def test_total_count_must_be_an_integer_and_cannot_come_from_a_network():
    assert "integer" in error("input n\ndata x\nx ~ Binomial(n, 0.5)").message
    m = model("input n : int\ndata x\nx ~ Binomial(n, 0.5)")
    assert m.draw("x").param("total_count") == ir.Ref("n", ())
    err = error("latent z\ndata x\nz ~ Normal(0, 1)\nx ~ Binomial(mlp(z), 0.5)")
    assert "cannot produce" in err.message


def test_categorical_classes_come_from_probs_and_a_net_cannot_tell_them():
    m = model("param mu[4]\ndata x\nlatent c\nc ~ Categorical(probs = softmax(zeros(4)))\n"
              "x ~ Normal(mu[c], 1)")
    assert m.draw("c").param("probs").shape == (4,)
    err = error("data x\nlatent z[2]\nlatent c\nz ~ Normal(0, 1)\nc ~ Categorical(mlp(z))\n"
                "x ~ Normal(c, 1)")
    assert isinstance(err, DGMShapeError) and "number of classes" in err.hint
    m = model("data x\nlatent z[2]\nlatent c\nz ~ Normal(0, 1)\n"
              "c ~ Categorical(logits = mlp(z) + zeros(5))\nx ~ Normal(c, 1)")
    assert m.nets[0].output_shape == (5,)


def test_index_range_is_checked_against_the_number_of_classes_in_any_order():
    body = "param mu[3]\ndata x\nlatent c\nx ~ Normal(mu[c], 1)\nc ~ Categorical(logits = zeros({}))"
    model(body.format(3))
    err = error(body.format(4))
    assert isinstance(err, DGMShapeError) and where(err) == (4, 15)
    err = error("data x\ninput y : int\nlatent b\nb ~ Binomial(10, 0.5)\nx ~ Normal(sum(onehot(b, 10)), 1)")
    assert "up to 10" in err.message


# ------------------------------------------------------------------ networks


def test_anonymous_nets_are_numbered_in_source_order_whatever_the_checking_order():
    m = model("data x[2]\ndata y[3]\nlatent z[2]\nx ~ Normal(h, 1)\n"
              "y ~ Normal(mlp(z, hidden = [3]), 1)\nlet h = mlp(z, hidden = [2])\n"
              "z ~ Normal(mlp(x, hidden = [1]), 1)")
    assert [(n.name, n.hidden) for n in m.nets] == [
        ("mlp_1", (3,)), ("mlp_2", (2,)), ("mlp_3", (1,))]


def test_named_nets_share_weights_and_sizes_must_agree():
    m = model("data x[4]\ndata y[4]\nlatent z[2]\nlatent w[2]\nnet dec = mlp(hidden = [8], activation = tanh)\n"
              "z ~ Normal(0, 1)\nw ~ Normal(0, 1)\nx ~ Normal(dec(z), 1)\ny ~ Normal(dec(w), 1)")
    (net,) = m.nets
    assert (net.name, net.anonymous, net.activation, net.input_sizes, net.output_size) == (
        "dec", False, "tanh", (2,), 4)
    assert {m.draw(v).param("loc").net for v in ("x", "y")} == {"dec"}
    err = error("data x[4]\ndata y[5]\nlatent z[2]\nnet dec = mlp()\nz ~ Normal(0, 1)\n"
                "x ~ Normal(dec(z), 1)\ny ~ Normal(dec(z), 1)")
    assert isinstance(err, DGMShapeError) and where(err) == (7, 12)


def test_anonymous_net_names_skip_names_of_named_nets():
    m = model("data x[2]\nlatent z[2]\nnet mlp_1 = mlp()\nz ~ Normal(mlp_1(x), 1)\n"
              "x ~ Normal(mlp(z), 1)")
    assert sorted(n.name for n in m.nets) == ["mlp_1", "mlp_2"]


def test_net_input_sizes_are_flattened_argument_sizes():
    m = model("data x[2]\nlatent z[3, 4]\ninput y : int\nz ~ Normal(0, 1)\n"
              "x ~ Normal(mlp(z, onehot(y, 7), 1.5), 1)")
    assert m.nets[0].input_sizes == (12, 7, 1)


def test_deconv_takes_image_shapes():
    m = model("data x[1, 8, 8]\nlatent z[4]\nz ~ Normal(0, 1)\n"
              "x ~ Bernoulli(logits = deconv(z, channels = [32, 16]))")
    (net,) = m.nets
    assert (net.kind, net.output_shape, net.output_size, net.channels) == (
        "deconv", (1, 8, 8), 64, (32, 16))


def test_network_options_defaults():
    m = model("data x\nlatent z\nz ~ Normal(0, 1)\nx ~ Normal(mlp(z), 1)")
    assert (m.nets[0].hidden, m.nets[0].activation) == ((256,), "relu")


# ------------------------------------------------------------------ roles, types, guides


def test_types_of_random_variables_follow_their_support():
    m = model("data a\ndata b[3]\ndata c\ndata d : int\nlatent p : unit\n"
              "a ~ Bernoulli(0.5)\nb ~ Dirichlet(ones(3))\nc ~ Gamma(1, 1)\nd ~ Poisson(p + 1)\np ~ Beta(1, 1)")
    assert [m.variable(n).type for n in "abcdp"] == ["int", "simplex", "positive", "int", "unit"]


def test_declared_types_of_non_random_variables_are_kept():
    m = model("param s[3] : positive\ninput y : int\ndata x[3]\nx ~ Normal(0, s)")
    assert m.variable("s").type == "positive" and m.variable("y").type == "int"


def test_guide_options():
    m = model("data x[2]\nlatent z[2] guide(hidden = [64, 32], family = mvn)\nglobal w guide(family = flow)\n"
              "latent v[2]\nw ~ Normal(0, 1)\nz ~ Normal(w, 1)\nv ~ Normal(0, 1)\nx ~ Normal(z + v, 1)")
    assert m.variable("z").guide == ir.GuideOptions((64, 32), "mvn")
    assert m.variable("w").guide == ir.GuideOptions(None, "flow")
    assert m.variable("v").guide is None


@pytest.mark.parametrize("decl, kind", [
    ("latent z guide(familly = mvn)", DGMGuideError),
    ("latent z guide(family = gauss)", DGMGuideError),
    ("latent z guide(hidden = [0])", DGMShapeError),
    ("latent z guide(hidden = 3)", DGMTypeError),
])
def test_wrong_guide_options(decl, kind):
    err = error(f"data x\n{decl}\nz ~ Normal(0, 1)\nx ~ Normal(z, 1)")
    assert isinstance(err, kind) and err.span.line == 3


@pytest.mark.parametrize("body", [
    "latent n\nn ~ Poisson(3)\nx ~ Normal(n, 1)",
    "latent n\nn ~ Geometric(0.5)\nx ~ Normal(n, 1)",
    "latent s : positive\nlatent u\ns ~ Exponential(1)\nu ~ Uniform(0, s)\nx ~ Normal(u, 1)",
    "latent n\nlatent k\nn ~ Binomial(4, 0.5)\nk ~ Binomial(n, 0.5)\nx ~ Normal(k, 1)",
    "input m : int\nlatent k\nk ~ Binomial(m, 0.5)\nx ~ Normal(k, 1)",
    "global k\nk ~ Categorical(logits = zeros(2))\nx ~ Normal(k, 1)",
])
def test_latents_no_guide_can_handle_are_rejected_saying_why(body):
    err = error("data x\n" + body)
    assert isinstance(err, DGMGuideError)
    assert err.hint


def test_uniform_latent_with_bounds_from_inputs_is_allowed():
    m = model("input hi : positive\ndata x\nlatent u\nu ~ Uniform(0, hi)\nx ~ Normal(u, 1)")
    assert m.draw("u").dist == "Uniform"


def test_global_may_not_depend_on_a_per_data_point_variable():
    err = error("input u\ndata x\nglobal w\nlatent z\nz ~ Normal(0, 1)\nlet a = 2 * z\nlet b = a + 1\n"
                "w ~ Normal(b, 1)\nx ~ Normal(w, 1)")
    assert isinstance(err, DGMModelError)
    assert "'z'" in err.message and "let 'b'" in err.message and where(err) == (8, 12)
    model("param p\nconst c = 2\ndata x\nglobal v\nglobal w\nv ~ Normal(0, 1)\nlet a = v * c\n"
          "w ~ Normal(a + p, 1)\nx ~ Normal(w, 1)")


@pytest.mark.parametrize("role", ["input", "param", "const"])
def test_a_distribution_on_a_non_random_role(role):
    decl = "const y = 1" if role == "const" else f"{role} y"
    err = error(f"{decl}\ndata x\ny ~ Normal(0, 1)\nx ~ Normal(y, 1)")
    assert isinstance(err, DGMTypeError) and where(err) == (3, 1)


def test_no_distribution_and_two_distributions():
    assert isinstance(error("data x"), DGMModelError)
    err = error("data x\nx ~ Normal(0, 1)\nx ~ Normal(1, 1)")
    assert isinstance(err, DGMModelError) and where(err) == (3, 1)


# ------------------------------------------------------------------ names


def test_unknown_names_suggest_the_closest():
    err = error("data x\nlatent zeta\nzeta ~ Normal(0, 1)\nx ~ Normal(zetta, 1)")
    assert isinstance(err, DGMNameError) and err.hint == "did you mean 'zeta'?"
    err = error("data x\nx ~ Normal(expo(1), 1)")
    assert err.hint == "did you mean 'exp'?"
    err = error("data x\nx ~ Gama(1, 1)")
    assert err.hint == "did you mean 'Gamma'?"


@pytest.mark.parametrize("name", ["Normal", "softmax", "mlp", "onehot"])
def test_reserved_names(name):
    err = error(f"data {name}\n{name} ~ Normal(0, 1)")
    assert isinstance(err, DGMNameError) and where(err) == (1, 6)


def test_names_declared_twice_across_kinds():
    err = error("data x\nlatent h\nlet h = x\nx ~ Normal(0, 1)\nh ~ Normal(0, 1)")
    assert isinstance(err, DGMNameError) and where(err) == (3, 5)


def test_two_models_with_one_name():
    with pytest.raises(DGMNameError) as info:
        check(parse("model a { data x; x ~ Normal(0, 1) }\nmodel a { data y; y ~ Normal(0, 1) }"))
    assert info.value.span.line == 2


def test_let_cycle_names_the_cycle():
    err = error("data x\nlet a = c\nlet b = a\nlet c = b + 1\nx ~ Normal(a, 1)")
    assert isinstance(err, DGMModelError)
    assert "a -> c -> b -> a" in err.message and where(err) == (2, 5)


# ------------------------------------------------------------------ several errors


def test_independent_errors_are_all_reported_in_order():
    errs = errors("data x[2]\nlatent z[2]\nlatent w\nz ~ Normall(0, 1)\nw ~ Normal(0, -1)\n"
                  "x ~ Normal(mlp(zz), 1)\nlet q = [1, [2]]")
    assert [where(e) for e in errs] == [(4, 5), (5, 15), (6, 16), (7, 13)]


def test_one_mistake_gives_one_message():
    # A bad let used twice, a bad declaration used twice, a misspelled keyword.
    errs = errors("data x\ndata y\nlatent z\nlatent v[0]\nlet h = z + nope\nz ~ Normal(0, 1)\n"
                  "v ~ Normal(0, 1)\nx ~ Normal(h + sum(v), 1)\ny ~ Normal(h * sum(v), scal = 1)")
    assert [where(e) for e in errs] == [(4, 10), (5, 13), (9, 24)]


def test_errors_in_several_models_are_reported_together():
    text = "model a { data x; x ~ Normal(0) }\nmodel b { data y; y ~ Normal(q, 1) }"
    with pytest.raises(DGMErrors) as info:
        check(parse(text))
    assert [e.span.line for e in info.value.errors] == [1, 2]


def test_a_user_mistake_is_never_a_raw_python_exception():
    # An AST built by hand (as the Python front end may) deeper than the parser allows.
    expr: ast.Expr = ast.Num(1)
    for _ in range(5000):
        expr = ast.UnaryOp("-", expr)
    program = ast.Program((ast.ModelDef("m", (
        ast.Decl("data", "x"), ast.Let("h", expr),
        ast.Draw("x", ast.Call("Normal", (ast.Name("h"), ast.Num(1))))),),))
    with pytest.raises(DGMError):
        check(program)


# ------------------------------------------------------------------ speed


def test_a_chain_of_5000_latents_checks():
    # Timing belongs to benchmarks/scale.py; here only that a long chain checks (no recursion
    # limit, no quadratic blow-up large enough to matter) and comes out whole.
    n = 5000
    lines = ["model chain {", "    data x"]
    lines += [f"    latent z{i}" for i in range(n)]
    lines += ["    z0 ~ Normal(0, 1)"] + [f"    z{i} ~ Normal(z{i - 1}, 1)" for i in range(1, n)]
    lines += [f"    let h = z{n - 1} * 2", "    x ~ Normal(h, 1)", "}"]
    program = parse("\n".join(lines), "chain.dgm")
    (m,) = check(program)
    assert len(m.draws) == n + 1
    assert m.draws[-1].target == "x"


def test_checking_does_not_import_torch():
    import subprocess

    code = ("import sys, dgmlang.check, dgmlang.distributions; "
            "sys.exit('torch' in sys.modules or 'pyro' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---------------------------------------------------------------- limits (dgmlang.limits)


def test_limits_refuse_before_anything_large_is_built():
    import time

    from dgmlang.errors import DGMLimitError

    start = time.process_time()
    cases = {
        "data x[1000000000]\nx ~ Normal(0, 1)": (1, 6),
        "data x\nlatent z[9223372036854775808]\nz ~ Normal(0, 1)\nx ~ Normal(sum(z), 1)": (2, 10),
        "const A = 99999 ** 1000\ndata x\nx ~ Normal(A, 1)": (1, 11),
        "data x\nx ~ Normal(0, 1e-320)": (2, 15),
        "data x\nx ~ Normal(1e300, 1)": (2, 12),
        "input y : int\ndata x[2]\nx ~ Normal(mlp(onehot(y, 1000000)), 1)": (3, 26),
        "data x[2]\nlatent z\nz ~ Normal(0, 1)\nx ~ Normal(mlp(z, hidden = [100000000]), 1)": (4, 29),
    }
    for body, position in cases.items():
        err = error(body)
        assert isinstance(err, DGMLimitError), body
        assert where(err) == position, body
    # ten giant-power pairs: refused at once, without building a thousand-digit integer
    text = "\n".join(f"const A{i} = 99999 ** 860\nconst B{i} = A{i} ** 1024" for i in range(10))
    assert len(errors(text + "\ndata x\nx ~ Normal(0, 1)")) == 10
    assert time.process_time() - start < 2


def test_integer_arithmetic_stays_in_int64():
    assert model("const A = 2 ** 62\ndata x\nx ~ Normal(0, 1)").variable("A").value == 2**62
    assert isinstance(error("const A = 2 ** 63\ndata x\nx ~ Normal(0, 1)"), DGMError)
    assert isinstance(error("const A = 3037000500 * 3037000500\ndata x\nx ~ Normal(0, 1)"), DGMError)
    assert isinstance(error("const A = 1e30 * 1e30\ndata x\nx ~ Normal(A, 1)"), DGMError)
    assert model("const A = 10.0 ** 30\ndata x\nx ~ Normal(A, 1)").variable("A").value == 1e30
    # float32's normal numbers and 0 are fine; a subnormal keeps too few digits
    model("data x\nx ~ Normal(0, 1.2e-38)")
    model("data x\nx ~ Normal(0.0, 3e38)")
    assert "float32" in error("data x\nx ~ Normal(0, 1e-40)").message
    assert "float32" in error("const A = 1e-30 * 1e-30\ndata x\nx ~ Normal(0, A + 1)").message


def test_a_model_with_no_random_variable_is_refused():
    for body in ["", "input y", "param p", "const C = 1"]:
        err = error(body)
        assert isinstance(err, DGMModelError) and "no random variable" in err.message
    model("latent z\nz ~ Normal(0, 1)")  # nothing to fit, but it can be sampled


def test_limits_are_raised_by_the_module_constants(monkeypatch):
    from dgmlang import limits

    body = "data x[2000, 1000]\nx ~ Normal(0, 1)"
    assert "MAX_ELEMENTS" in error(body).hint
    monkeypatch.setattr(limits, "MAX_ELEMENTS", 2_000_000)
    assert model(body).variable("x").shape == (2000, 1000)
    wide = "data x[2]\nlatent z\nz ~ Normal(0, 1)\nx ~ Normal(mlp(z, hidden = [20000]), 1)"
    assert "MAX_WIDTH" in error(wide).hint
    monkeypatch.setattr(limits, "MAX_WIDTH", 20000)
    model(wide)
    onehot = "input y : int\ndata x[2]\nx ~ Normal(mlp(onehot(y, 200000), hidden = [8]), 1)"
    assert "MAX_CLASSES" in error(onehot).hint
    monkeypatch.setattr(limits, "MAX_CLASSES", 200000)
    model(onehot)
    monkeypatch.setattr(limits, "MAX_PARAMETERS", 100)
    err = error("data x[20]\nlatent z\nz ~ Normal(0, 1)\nx ~ Normal(mlp(z, hidden = [8]), 1)")
    assert "MAX_PARAMETERS" in err.hint and "mlp_1" in err.message


def test_limits_are_read_from_the_environment(monkeypatch):
    import importlib

    from dgmlang import limits

    monkeypatch.setenv("DGM_MAX_ELEMENTS", "12345")
    monkeypatch.setenv("DGM_MAX_WIDTH", "not a number")
    try:
        importlib.reload(limits)
        assert limits.MAX_ELEMENTS == 12345 and limits.MAX_WIDTH == 2**14
    finally:
        monkeypatch.delenv("DGM_MAX_ELEMENTS")
        monkeypatch.delenv("DGM_MAX_WIDTH")
        importlib.reload(limits)
    assert limits.MAX_ELEMENTS == 10**6


def test_numbers_beyond_the_limits_never_reach_the_range_arithmetic():
    huge = "9" * 400
    for body in [
        f"data x\nlatent s\ns ~ Uniform(1, {huge})\nlet a = 4 * (s - 1)\nx ~ Normal(a, 1)",
        f"data x\nlatent s\ns ~ Uniform(0, 1)\nx ~ Uniform(s, s + {huge})",
    ]:
        assert "64-bit" in error(body).message
