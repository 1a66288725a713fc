"""Lowering checked models to Pyro: expressions, distributions, the data plate, params."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import pyro
import pyro.distributions as pdist
from pyro import poutine

from dgmlang.errors import DGMDataError, DGMUsageError
from dgmlang.frontend import check_source
from dgmlang.guide import build_guide
from dgmlang.ir import (
    BuiltinCall, Binary, IndexExpr, Lit, ModelIR, Net, NetCall, Ref, SliceItem, Stack,
    Unary, Variable,
)
from dgmlang.lower import elbo_for, lower

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CORPUS = ("digits_vae", "digits_cvae", "digits_hvae", "gmm", "linreg", "ppca")


def checked(text: str):
    (model,) = check_source(text, "test.dgm")
    return model


def corpus(name: str):
    return checked((EXAMPLES / f"{name}.dgm").read_text())


def example_data(ir, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs drawn at random and data sampled from the freshly built model."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    for var in ir.variables:
        if var.role == "input":
            if var.type == "int":
                inputs[var.name] = torch.randint(0, 10, (n, *var.shape), generator=generator)
            else:
                inputs[var.name] = torch.randn((n, *var.shape), generator=generator)
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        values = lower(ir, seed=seed)(inputs, batch_size=n)
    return {**inputs, **{name: values[name] for name in ir.names("data")}}


# ------------------------------------------------------------------ expressions

W = ((1.0, 0.5), (0.2, -1.0), (0.7, 0.7))


@pytest.fixture(scope="module")
def host():
    """A model with a const W (3, 2), a param mu (3, 2) and a network f: (2 + 1) -> (2, 3)."""
    ir = ModelIR(
        "host",
        (Variable("W", "const", (3, 2), value=W), Variable("mu", "param", (3, 2))),
        (),
        nets=(Net("f", "mlp", (2, 1), 6, (2, 3), hidden=(4,)),),
    )
    return lower(ir, seed=0)


def ref(name, *shape):
    return Ref(name, tuple(shape))


def call(func, *args, shape=()):
    return BuiltinCall(func, tuple(args), tuple(shape))


def test_binary_lines_up_event_dims_not_batch_dims(host):
    a, b = torch.randn(5), torch.randn(3)  # a per-point scalar, a global vector
    out = host.evaluate(Binary("+", ref("a"), ref("b", 3), (3,)), {"a": a, "b": b})
    assert torch.allclose(out, a[:, None] + b)


def test_binary_broadcasts_particle_and_enumeration_dims(host):
    w = torch.randn(4, 1, 3)  # particles at dim -2, the data plate at -1
    x = torch.randn(5, 3)
    c = torch.arange(2.0).reshape(2, 1, 1)  # an enumeration dim left of the particles
    out = host.evaluate(Binary("*", Binary("*", ref("w", 3), ref("x", 3), (3,)), ref("c"), (3,)),
                        {"w": w, "x": x, "c": c})
    assert out.shape == (2, 4, 5, 3)
    assert torch.allclose(out, w * x * c[..., None])


def test_unary_power_and_division(host):
    a = torch.rand(5, 2) + 1
    out = host.evaluate(Unary("-", Binary("**", ref("a", 2), Lit(2, (), True), (2,)), (2,)),
                        {"a": a})
    assert torch.allclose(out, -(a ** 2))
    out = host.evaluate(Binary("/", Lit(1.0, ()), ref("a", 2), (2,)), {"a": a})
    assert torch.allclose(out, 1 / a)


def test_dot_sums_over_the_last_dim(host):
    w, u = torch.randn(3), torch.randn(5, 3)
    assert torch.allclose(host.evaluate(call("dot", ref("w", 3), ref("u", 3)), {"w": w, "u": u}),
                          u @ w)
    particles = torch.randn(4, 1, 3)
    out = host.evaluate(call("dot", ref("w", 3), ref("u", 3)), {"w": particles, "u": u})
    assert out.shape == (4, 5)
    assert torch.allclose(out, (particles * u).sum(-1))


def test_matmul_matrix_vector_on_event_dims(host):
    z = torch.randn(5, 2)
    out = host.evaluate(call("matmul", ref("W", 3, 2), ref("z", 2), shape=(3,)), {"z": z})
    assert torch.allclose(out, z @ torch.tensor(W).T)
    enumerated = torch.randn(2, 1, 2)
    out = host.evaluate(call("matmul", ref("W", 3, 2), ref("z", 2), shape=(3,)), {"z": enumerated})
    assert out.shape == (2, 1, 3)


def test_matmul_matrix_matrix_vector_matrix_and_stacks_of_matrices(host):
    a, b = torch.randn(2, 3), torch.randn(5, 3, 4)
    out = host.evaluate(call("matmul", ref("a", 2, 3), ref("b", 3, 4), shape=(2, 4)),
                        {"a": a, "b": b})
    assert torch.allclose(out, torch.einsum("ij,njk->nik", a, b), atol=1e-6)
    v = torch.randn(5, 3)
    out = host.evaluate(call("matmul", ref("v", 3), ref("a", 3, 4), shape=(4,)),
                        {"v": v, "a": b[0]})
    assert torch.allclose(out, v @ b[0], atol=1e-6)
    stack = torch.randn(6, 3, 2)  # event (6, 3, 2) unbatched, times a per-point vector
    z = torch.randn(5, 2)
    out = host.evaluate(call("matmul", ref("s", 6, 3, 2), ref("z", 2), shape=(6, 3)),
                        {"s": stack, "z": z})
    assert torch.allclose(out, torch.einsum("kij,nj->nki", stack, z), atol=1e-6)


def test_sum_and_mean_reduce_every_event_dim(host):
    h = torch.randn(5, 2, 3)
    assert torch.allclose(host.evaluate(call("sum", ref("h", 2, 3)), {"h": h}), h.sum((1, 2)))
    assert torch.allclose(host.evaluate(call("mean", ref("h", 2, 3)), {"h": h}), h.mean((1, 2)))


def test_softmax_and_log_softmax_act_on_the_last_dim(host):
    h = torch.randn(5, 2, 3)
    out = host.evaluate(call("softmax", ref("h", 2, 3), shape=(2, 3)), {"h": h})
    assert torch.allclose(out.sum(-1), torch.ones(5, 2))
    out = host.evaluate(call("log_softmax", ref("h", 2, 3), shape=(2, 3)), {"h": h})
    assert torch.allclose(out, torch.log_softmax(h, -1))


def test_elementwise_functions(host):
    h = torch.rand(5, 2) + 0.1
    for name, fn in [("exp", torch.exp), ("log", torch.log), ("sqrt", torch.sqrt),
                     ("abs", torch.abs), ("sigmoid", torch.sigmoid), ("tanh", torch.tanh),
                     ("relu", torch.relu), ("softplus", torch.nn.functional.softplus)]:
        assert torch.allclose(host.evaluate(call(name, ref("h", 2), shape=(2,)), {"h": h}), fn(h))


def test_concat_broadcasts_batch_dims_before_joining(host):
    z, g = torch.randn(5, 2), torch.randn(3)
    out = host.evaluate(call("concat", ref("z", 2), ref("g", 3), shape=(5,)), {"z": z, "g": g})
    assert torch.equal(out, torch.cat([z, g.expand(5, 3)], -1))
    enumerated = torch.randn(2, 1, 2)
    out = host.evaluate(call("concat", ref("e", 2), ref("z", 2), shape=(4,)),
                        {"e": enumerated, "z": z})
    assert out.shape == (2, 5, 4)


def test_onehot_zeros_ones(host):
    y = torch.tensor([0.0, 2.0, 1.0])
    out = host.evaluate(call("onehot", ref("y"), Lit(3, (), True), shape=(3,)), {"y": y})
    assert torch.equal(out, torch.eye(3)[[0, 2, 1]])
    enumerated = torch.arange(3).reshape(3, 1)  # an enumerated Categorical: long, (3, 1)
    out = host.evaluate(call("onehot", ref("y"), Lit(3, (), True), shape=(3,)), {"y": enumerated})
    assert out.shape == (3, 1, 3) and out.dtype == torch.float32
    assert torch.equal(host.evaluate(call("zeros", Lit(2, (), True), Lit(3, (), True),
                                          shape=(2, 3)), {}), torch.zeros(2, 3))
    assert torch.equal(host.evaluate(call("ones", Lit(4, (), True), shape=(4,)), {}),
                       torch.ones(4))


def test_onehot_of_a_value_out_of_range_is_a_data_error(host):
    with pytest.raises(DGMDataError, match=r"needs integers in 0..2"):
        host.evaluate(call("onehot", ref("y"), Lit(3, (), True), shape=(3,)),
                      {"y": torch.tensor([0.0, 3.0])})


def test_stack_and_array_literals(host):
    a = torch.randn(5)
    out = host.evaluate(Stack((ref("a"), Lit(1.0, ())), (2,)), {"a": a})
    assert torch.equal(out, torch.stack([a, torch.ones(5)], -1))
    assert torch.equal(host.evaluate(Lit(W, (3, 2)), {}), torch.tensor(W))


def test_indexing_an_unbatched_param_by_a_per_point_class(host):
    mu = host.params.value("mu").detach()
    c = torch.tensor([2.0, 0.0, 1.0, 2.0])
    out = host.evaluate(IndexExpr(ref("mu", 3, 2), (ref("c"),), (2,)), {"c": c})
    assert torch.equal(out, mu[[2, 0, 1, 2]])
    enumerated = torch.arange(3).reshape(3, 1)
    out = host.evaluate(IndexExpr(ref("mu", 3, 2), (ref("c"),), (2,)), {"c": enumerated})
    assert out.shape == (3, 1, 2)
    assert torch.equal(out[:, 0], mu)


def test_indexing_a_batched_value_gathers_per_point(host):
    mu = torch.randn(4, 1, 3, 2)  # a global with particle dims
    c = torch.tensor([2, 0, 1, 2, 1])
    out = host.evaluate(IndexExpr(ref("m", 3, 2), (ref("c"),), (2,)), {"m": mu, "c": c})
    assert out.shape == (4, 5, 2)
    for p in range(4):
        for i in range(5):
            assert torch.equal(out[p, i], mu[p, 0, c[i]])


def test_several_items_slices_and_literal_indices(host):
    m = torch.randn(3, 4, 2)
    c, d = torch.tensor([0, 2, 1]), torch.tensor([3, 0, 1])
    out = host.evaluate(IndexExpr(ref("m", 3, 4, 2), (ref("c"), ref("d")), (2,)),
                        {"m": m, "c": c, "d": d})
    assert torch.equal(out, m[c, d])
    # a slice on the first event dim, a per-point index on the second
    out = host.evaluate(IndexExpr(ref("m", 3, 4, 2), (SliceItem(None, None), ref("d")), (3, 2)),
                        {"m": m, "d": d})
    assert torch.equal(out, m[:, d].permute(1, 0, 2))
    h = torch.randn(5, 4, 6)
    out = host.evaluate(IndexExpr(ref("h", 4, 6), (SliceItem(None, None), SliceItem(1, 5, 2)),
                                  (4, 2)), {"h": h})
    assert torch.equal(out, h[:, :, 1:5:2])
    out = host.evaluate(IndexExpr(ref("h", 4, 6), (SliceItem(None, None, -1),), (4, 6)), {"h": h})
    assert torch.equal(out, h.flip(1))
    out = host.evaluate(IndexExpr(ref("h", 4, 6), (Lit(1, (), True), SliceItem(None, 2)), (2,)),
                        {"h": h})
    assert torch.equal(out, h[:, 1, :2])


def test_network_call_flattens_arguments_and_applies_its_head(host):
    z, s = torch.randn(5, 2), torch.randn(5)
    expr = NetCall("f", (ref("z", 2), ref("s")), (2, 3), "positive")
    out = host.evaluate(expr, {"z": z, "s": s})
    assert out.shape == (5, 2, 3) and bool((out > 0).all())
    raw = host.nets["f"](torch.cat([z, s[:, None]], -1)).reshape(5, 2, 3)
    assert torch.allclose(out, torch.nn.functional.softplus(raw) + 1e-6)
    enumerated = torch.arange(3.0).reshape(3, 1)
    assert host.evaluate(expr, {"z": z, "s": enumerated}).shape == (3, 5, 2, 3)


def test_lets_consts_and_params_are_found_by_name():
    model = checked("""
    model m {
        const A = [1.0, 2.0]
        param b[2]
        data x[2]
        latent z[2]
        let h = z * A + b
        z ~ Normal(0, 1)
        x ~ Normal(h, 1)
    }""")
    lowered = lower(model.ir)
    z = torch.randn(5, 2)
    out = lowered.evaluate(Ref("h", (2,)), {"z": z})
    assert torch.allclose(out, z * torch.tensor([1.0, 2.0]) + lowered.params.value("b"))


# ------------------------------------------------------------------ the corpus


@pytest.mark.parametrize("name", CORPUS)
def test_every_corpus_model_takes_a_finite_svi_step(name):
    model = corpus(name)
    lowered = lower(model.ir, seed=0)
    guide = build_guide(model.ir, model.plan, lowered, seed=0)
    data = example_data(model.ir, 16)
    pyro.set_rng_seed(1)
    with pyro.settings.context(module_local_params=True):
        loss_fn = elbo_for(model.ir, model.plan)(lowered, guide)
        optimizer = torch.optim.Adam(loss_fn.parameters(), lr=1e-3)
        loss = loss_fn(data, size=100)
        loss.backward()
        optimizer.step()
    assert math.isfinite(loss.item())
    grads = [p.grad for p in loss_fn.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)


@pytest.mark.parametrize("name", CORPUS)
def test_the_model_samples_every_variable_with_its_shape(name):
    ir = corpus(name).ir
    inputs = {k: v for k, v in example_data(ir, 7).items() if k in ir.names("input")}
    trace = poutine.trace(lower(ir)).get_trace(inputs, batch_size=7)
    for var in ir.variables:
        if var.role in ("data", "latent"):
            site = trace.nodes[var.name]
            assert site["value"].shape == (7, *var.shape)
            assert site["fn"].event_shape == var.shape
            assert site["fn"].batch_shape == (7,)
        elif var.role == "global":
            assert trace.nodes[var.name]["value"].shape == var.shape
            assert trace.nodes[var.name]["fn"].batch_shape == ()


def test_draws_run_in_dependency_order_whatever_the_source_order():
    model = checked("""
    model backwards {
        data x[2]
        latent z[2]
        x ~ Normal(z, 0.1)
        z ~ Normal(3, 0.1)
    }""")
    values = lower(model.ir)({}, batch_size=4)
    assert bool((values["x"] > 2).all())


def test_plate_scales_the_minibatch_by_n_over_b():
    model = corpus("ppca")
    lowered = lower(model.ir)
    guide = build_guide(model.ir, model.plan, lowered)
    data = example_data(model.ir, 10)
    elbo = elbo_for(model.ir, model.plan)
    with pyro.settings.context(module_local_params=True):
        losses = []
        for size in (10, 50):
            pyro.set_rng_seed(3)
            losses.append(elbo.differentiable_loss(lowered, guide, data, size=size).item())
    assert losses[1] == pytest.approx(5 * losses[0], rel=1e-5)


def test_gmm_enumeration_gives_the_exact_marginal_likelihood():
    model = corpus("gmm")
    lowered = lower(model.ir)
    guide = build_guide(model.ir, model.plan, lowered)
    x = torch.tensor([[0.0, 0.1], [2.0, -1.0], [-1.5, 0.5], [0.3, 2.0]])
    mu = lowered.params.value("mu").detach()
    components = pdist.Normal(mu, 0.5).log_prob(x[:, None, :]).sum(-1) + math.log(1 / 3)
    exact = torch.logsumexp(components, -1).sum()
    elbo = elbo_for(model.ir, model.plan)
    assert isinstance(elbo, pyro.infer.TraceEnum_ELBO)
    with pyro.settings.context(module_local_params=True):
        loss = elbo.differentiable_loss(lowered, guide, {"x": x})
        assert -loss.item() == pytest.approx(exact.item(), rel=1e-5)
        scaled = elbo.differentiable_loss(lowered, guide, {"x": x}, size=40)
        assert scaled.item() == pytest.approx(10 * loss.item(), rel=1e-5)


def test_elbo_for_chooses_trace_elbo_without_enumeration():
    model = corpus("ppca")
    elbo = elbo_for(model.ir, model.plan, num_particles=4, vectorize_particles=True)
    assert type(elbo) is pyro.infer.Trace_ELBO
    assert elbo.num_particles == 4 and elbo.max_plate_nesting == 2  # one more for particles


def test_vectorized_particles_reach_globals_and_enumeration():
    for name in ("linreg", "gmm"):
        model = corpus(name)
        lowered = lower(model.ir)
        guide = build_guide(model.ir, model.plan, lowered)
        elbo = elbo_for(model.ir, model.plan, num_particles=3, vectorize_particles=True)
        with pyro.settings.context(module_local_params=True):
            loss = elbo.differentiable_loss(lowered, guide, example_data(model.ir, 6), size=30)
        assert math.isfinite(loss.item())


def test_packed_network_feeds_every_parameter_through_its_head():
    model = corpus("digits_hvae")
    lowered = lower(model.ir)
    z2 = torch.randn(5, 8) * 10
    q = lowered.distribution(model.ir.draw("z1"), {"z2": z2})
    assert q.event_shape == (16,) and q.batch_shape == (5,)
    assert bool((q.base_dist.scale > 0).all())
    flat = lowered.nets["mlp_1"](z2)
    assert torch.equal(q.base_dist.loc, flat[:, :16])


def test_heads_probability_and_concentration():
    model = checked("""
    model heads {
        data x[4]
        data w[3]
        latent z[2]
        z ~ Normal(0, 1)
        x ~ Bernoulli(probs = mlp(z))
        w ~ Dirichlet(mlp(z))
    }""")
    lowered = lower(model.ir)
    env = {"z": torch.randn(6, 2) * 20}
    probs = lowered.distribution(model.ir.draw("x"), env).base_dist.probs
    assert bool(((probs >= 0) & (probs <= 1)).all())
    concentration = lowered.distribution(model.ir.draw("w"), env).concentration
    assert concentration.shape == (6, 3) and bool((concentration > 0).all())


# ------------------------------------------------------------------ params


def test_params_start_from_a_seeded_draw_through_their_constraint():
    text = """
    model p {
        param mu[3, 2]
        param s[2] : positive
        param q : unit
        param w[4] : simplex
        data x[2]
        x ~ Normal(mu[0] * s * q + w[1], 1)
    }"""
    ir = checked(text).ir
    a, b, c = lower(ir, seed=0), lower(ir, seed=0), lower(ir, seed=1)
    mu = a.params.value("mu")
    assert bool((mu != 0).all()) and mu.std() > 0.1
    assert torch.equal(mu, b.params.value("mu"))
    assert not torch.equal(mu, c.params.value("mu"))
    assert bool((a.params.value("s") > 0).all())
    assert 0 < float(a.params.value("q").detach()) < 1
    assert float(a.params.value("w").detach().sum()) == pytest.approx(1.0, abs=1e-6)
    assert a.state_dict().keys() == b.state_dict().keys()


def test_variable_names_that_shadow_module_attributes():
    model = checked("""
    model shadows {
        param training
        param eval[2]
        data x[2]
        x ~ Normal(eval * training, 1)
    }""")
    lowered = lower(model.ir)
    assert lowered.training is True
    values = lowered({"x": torch.zeros(3, 2)})
    assert values["x"].shape == (3, 2)
    assert lowered.params.value("eval").shape == (2,)


def test_the_model_runs_in_double_precision():
    model = corpus("digits_cvae")
    lowered = lower(model.ir).double()
    values = lowered({"y": torch.tensor([1, 2])})
    assert values["x"].dtype == torch.float64 and values["z"].dtype == torch.float64


# ------------------------------------------------------------------ masks and mistakes


def test_mask_keeps_only_observed_entries_in_the_likelihood():
    model = checked("""
    model masked {
        data x[3]
        x ~ Normal(1, 2)
    }""")
    lowered = lower(model.ir)
    x = torch.tensor([[0.5, float("nan"), 2.0], [1.0, 1.0, float("nan")]])
    observed = ~torch.isnan(x)
    trace = poutine.trace(lowered).get_trace({"x": x}, mask={"x": observed})
    log_p = trace.nodes["x"]["fn"].log_prob(trace.nodes["x"]["value"])
    expected = torch.where(observed, pdist.Normal(1.0, 2.0).log_prob(x.nan_to_num()),
                           torch.zeros(())).sum(-1)
    assert torch.allclose(log_p, expected)


def test_masks_must_fit_observed_data():
    lowered = lower(corpus("ppca").ir)
    x = torch.zeros(3, 3)
    with pytest.raises(DGMDataError, match="mask for 'z'"):
        lowered({"x": x}, mask={"z": torch.ones(3, 2, dtype=torch.bool)})
    with pytest.raises(DGMDataError, match=r"the mask of 'x' should be shaped \[3, 3\]"):
        lowered({"x": x}, mask={"x": torch.ones(3, dtype=torch.bool)})


def test_missing_input_wrong_shape_and_inconsistent_sizes_are_data_errors():
    lowered = lower(corpus("digits_cvae").ir)
    with pytest.raises(DGMDataError, match="input 'y' is missing"):
        lowered({"x": torch.zeros(3, 64)})
    with pytest.raises(DGMDataError, match=r"'x' should be shaped \[3, 64\]"):
        lowered({"x": torch.zeros(3, 8, 8), "y": torch.zeros(3)})
    with pytest.raises(DGMDataError, match="disagree on the number of points"):
        lowered({"x": torch.zeros(3, 64), "y": torch.zeros(4)})
    with pytest.raises(DGMDataError, match="'xx' is not a data or input variable") as err:
        lowered({"xx": torch.zeros(3, 64), "y": torch.zeros(3)})
    assert "did you mean 'x'" in str(err.value)
    with pytest.raises(DGMDataError, match="'z' is not a data or input variable"):
        lowered({"z": torch.zeros(3, 16), "y": torch.zeros(3)})
    with pytest.raises(DGMUsageError, match="batch_size"):
        lower(corpus("ppca").ir)({})
