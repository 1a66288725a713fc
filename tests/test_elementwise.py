"""sin, cos, min, max and clamp (issue 16): values equal torch's under numpy broadcasting and
batch dimensions, the checker knows their ranges (a clamped value can be a scale or a
probability), and wrong arity, shapes that do not broadcast and clamp bounds known to be out
of order are located errors, from a `.dgm` text and from the Python DSL."""
from __future__ import annotations

import inspect

import pytest
import torch

import dgmlang as dg
from dgmlang import ir
from dgmlang.check import check
from dgmlang.errors import DGMError, DGMShapeError, DGMTypeError
from dgmlang.evaluate import Evaluator
from dgmlang.parse import parse

HEAD = ("const B = [[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]]\n    const LOW = [-0.5, 0.0, 0.1]\n"
        "    data x[2, 3]\n    latent a[3]\n    latent s\n    a ~ Normal(0, 1)\n    s ~ Normal(0, 1)\n")


def model(body: str) -> ir.ModelIR:
    (result,) = check(parse(f"model m {{\n    {HEAD}    {body}\n}}", "t.dgm"))
    return result


def error(body: str) -> DGMError:
    with pytest.raises(DGMError) as info:
        model(body)
    return info.value


def where(err: DGMError, body: str, fragment: str) -> None:
    """The error is on the body's line, at `fragment`'s column."""
    assert err.span.line == HEAD.count("\n") + 2
    assert err.span.col == 5 + body.index(fragment), (err.span.col, str(err))


def evaluate(expression: str, env: dict) -> torch.Tensor:
    m = model(f"let out = {expression}\n    x ~ Normal(out, 1)")
    shape = next(d for d in m.draws if d.target == "x").param("loc").shape
    return Evaluator(m).evaluate(ir.Ref("out", shape), dict(env))


ENV = {"a": torch.randn(5, 3, generator=torch.Generator().manual_seed(0)),
       "s": torch.randn(5, generator=torch.Generator().manual_seed(1))}
B = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]])
LOW = torch.tensor([-0.5, 0.0, 0.1])


@pytest.mark.parametrize("expression, expected", [
    ("sin(a)", lambda a, s: torch.sin(a)),
    ("cos(a * 3)", lambda a, s: torch.cos(a * 3)),
    ("min(a, B)", lambda a, s: torch.minimum(a[:, None, :], B)),             # [3] with [2, 3]
    ("max(B, s)", lambda a, s: torch.maximum(B, s[:, None, None])),          # a per-point scalar
    ("max(a, 0)", lambda a, s: torch.relu(a)),
    ("clamp(B, LOW, 0.4)", lambda a, s: torch.clamp(B, LOW, torch.tensor(0.4))),
    ("clamp(a, s, s + 1)", lambda a, s: torch.clamp(a, s[:, None], s[:, None] + 1)),
    ("clamp(a, 1, s)", lambda a, s: torch.minimum(torch.maximum(a, torch.tensor(1.0)), s[:, None])),
])
def test_values_are_torchs_under_broadcasting_and_batch_dims(expression, expected):
    torch.testing.assert_close(evaluate(expression, ENV), expected(ENV["a"], ENV["s"]))


def test_shapes_broadcast_like_arithmetic():
    m = model("let u = clamp(a, LOW, B + 2)\n    let v = max(s, 0)\n    x ~ Normal(u + v, 1)")
    lets = {let.name: let.value.shape for let in m.lets}
    assert lets == {"u": (2, 3), "v": ()}


def test_a_network_takes_its_size_from_the_other_argument():
    m = model("x ~ Normal(max(mlp(a), B), 1)")
    (net,) = m.nets
    assert net.output_shape == (2, 3)


@pytest.mark.parametrize("scale", ["clamp(a, 0.05, 2)", "max(s, 0.1)", "clamp(exp(a), 0, 1) + 0.5",
                                   "cos(clamp(a, 0, 1.5))", "sin(clamp(a, 0.1, 3))"])
def test_a_value_shown_positive_can_be_a_scale(scale):
    model(f"x ~ Normal(0, {scale})")


@pytest.mark.parametrize("scale, why", [
    ("sin(a)", "can be negative"), ("cos(s) + 1", "can be 0"), ("min(s, 1)", "can be negative"),
    ("clamp(a, 0, 1)", "can be 0"), ("clamp(a, s, 2)", "can be negative"), ("max(s, a)", "can be any real number"),
])
def test_a_value_not_shown_positive_cannot(scale, why):
    err = error(f"x ~ Normal(0, {scale})")
    assert "must be positive" in err.message and why in err.message


def test_a_clamped_value_can_be_a_probability_and_sin_cannot():
    model("x ~ Bernoulli(probs = clamp(a, 0.01, 0.99))")
    model("x ~ Bernoulli(probs = (sin(a) + 1) / 2)")
    assert "can be negative" in error("x ~ Bernoulli(probs = sin(a))").message


@pytest.mark.parametrize("body, fragment, kind, words", [
    ("x ~ Normal(max(a), 1)", "max(a)", DGMTypeError, "max takes 2 arguments, got 1"),
    ("x ~ Normal(clamp(a, 0), 1)", "clamp(a, 0)", DGMTypeError, "clamp takes 3 arguments, got 2"),
    ("x ~ Normal(sin(a, 1), 1)", "sin(a, 1)", DGMTypeError, "sin takes 1 argument, got 2"),
    ("x ~ Normal(min(a, [1, 2]), 1)", "[1, 2]", DGMShapeError, "shapes [3] and [2] do not broadcast in 'min'"),
    ("x ~ Normal(clamp(B, LOW, [0, 1]), 1)", "[0, 1]", DGMShapeError, "shapes [2, 3] and [2]"),
    ("x ~ Normal(clamp(a, 1, 0.5), 1)", "1, 0.5", DGMTypeError,
     "clamp's lower bound '1' is above its upper bound '0.5'"),
    ("x ~ Normal(clamp(a, LOW, [0, -1, 1]), 1)", "LOW", DGMTypeError, "'LOW' is above its upper bound"),
    ("x ~ Normal(clamp(a, exp(s) + 1, 0.5), 1)", "exp(s)", DGMTypeError, "is always above its upper bound"),
    ("x ~ Normal(max(a, 1, 2), 1)", "max(a, 1, 2)", DGMTypeError, "max takes 2 arguments, got 3"),
])
def test_mistakes_are_located(body, fragment, kind, words):
    err = error(body)
    assert isinstance(err, kind) and words in err.message, str(err)
    where(err, body, fragment)


def test_bounds_that_may_be_in_either_order_or_equal_are_accepted():
    model("x ~ Normal(clamp(a, s, 1) + clamp(a, 0.5, 0.5) + clamp(a, LOW, [0.5, 0.0, 0.2]), 1)")


def line_of(text: str) -> int:
    source = inspect.getsource(inspect.getmodule(line_of)).splitlines()
    return next(i for i, line in enumerate(source, 1) if text in line)


def test_the_python_dsl_builds_the_same_model_and_locates_mistakes():
    m = dg.Model("m")
    x = m.data("x", [3])
    a = m.latent("a", [3])
    m.draw(a, dg.Normal(0, 1))
    m.draw(x, dg.Normal(dg.max(dg.sin(a), dg.cos(a)), dg.clamp(dg.exp(a), 0.05, 2)))
    text = "model m {\n    data x[3]\n    latent a[3]\n    a ~ Normal(0, 1)\n" \
           "    x ~ Normal(max(sin(a), cos(a)), clamp(exp(a), 0.05, 2))\n}"
    assert m.ir().draws == check(parse(text, "t.dgm"))[0].draws

    bad = dg.Model("bad")
    y = bad.data("y", [3])
    b = bad.latent("b", [3])
    bad.draw(b, dg.Normal(0, 1))
    bad.draw(y, dg.Normal(b, dg.clamp(dg.exp(b), 1, 0.5)))  # bounds out of order
    with pytest.raises(DGMTypeError) as caught:
        bad.ir()
    assert caught.value.span.line == line_of("dg.clamp(dg.exp(b), 1, 0.5)))  # bounds out of order")
    assert "clamp's lower bound '1' is above" in caught.value.message


def test_gradients_reach_the_latents_through_the_functions():
    m = dg.compile("model m {\n  data x[3]\n  latent a[3]\n  a ~ Normal(0, 1)\n"
                   "  x ~ Normal(max(sin(a), cos(a)) + clamp(a, -1, 1), clamp(exp(a), 0.05, 2))\n}")
    data = m.sample(64, seed=0)
    losses = m.fit({"x": data["x"]}, epochs=3, seed=0, progress=False)
    assert all(torch.isfinite(torch.tensor(losses)))
