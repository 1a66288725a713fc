"""The derived guide: networks on the plan's inputs, families, globals, enumeration."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import pyro
import pyro.distributions as pdist
from pyro import poutine

import dgmlang
from dgmlang.errors import DGMDataError
from dgmlang.frontend import check_source
from dgmlang.guide import DECONV_GUIDE_HIDDEN, DEFAULT_HIDDEN, build_guide, guide_hidden
from dgmlang.lower import elbo_for, lower

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FAMILIES = ("normal", "mvn", "flow", "delta")


def checked(text: str):
    (model,) = check_source(text, "test.dgm")
    return model


def corpus(name: str):
    return checked((EXAMPLES / f"{name}.dgm").read_text())


def compiled(model, seed: int = 0):
    lowered = lower(model.ir, seed=seed, facts=model.facts)
    return lowered, build_guide(model.ir, model.plan, lowered, seed=seed)


def linear_sizes(module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules()
            if isinstance(m, torch.nn.Linear)]


# ------------------------------------------------------------------ networks and inputs


def test_hvae_guide_networks_read_the_plan_inputs():
    model = corpus("digits_hvae")
    assert model.plan.as_list() == [("z1", ["x"]), ("z2", ["z1"])]
    _, guide = compiled(model)
    assert linear_sizes(guide.nets["z1"]) == [(64, 256), (256, 256), (256, 32)]
    assert linear_sizes(guide.nets["z2"]) == [(16, 128), (128, 16)]
    trace = poutine.trace(guide).get_trace({"x": torch.zeros(5, 64)})
    assert trace.nodes["z1"]["value"].shape == (5, 16)
    assert trace.nodes["z2"]["value"].shape == (5, 8)


def test_class_labels_are_fed_one_hot():
    model = corpus("digits_cvae")
    _, guide = compiled(model)
    assert model.plan.as_list() == [("z", ["y", "x"])]
    assert guide.input_encoding == {"y": 10, "x": None}
    y, x = torch.tensor([3, 0]), torch.rand(2, 64) * 16
    features = guide.network_input("z", {"y": y, "x": x})
    assert torch.equal(features, torch.cat([torch.eye(10)[[3, 0]], x], -1))
    assert linear_sizes(guide.nets["z"])[0] == (74, 256)


def test_default_hidden_sizes_mirror_the_model_network():
    assert guide_hidden(corpus("digits_vae").facts, "z") == ((256, 256), "relu")
    assert guide_hidden(corpus("digits_hvae").facts, "z2") == ((128,), "relu")
    assert guide_hidden(corpus("ppca").facts, "z") == (DEFAULT_HIDDEN, "relu")
    facts = checked("""
    model m {
        data x[3]
        data img[1, 8, 8]
        latent z[2]
        latent u[2]
        let h = tanh(z)
        z ~ Normal(0, 1)
        u ~ Normal(0, 1)
        x ~ Normal(mlp(h, hidden = [32, 8], activation = tanh), 1)
        img ~ Normal(deconv(u, channels = [8]), 1)
    }""").facts
    assert guide_hidden(facts, "z") == ((8, 32), "tanh")  # through the let, reversed
    assert guide_hidden(facts, "u") == (DECONV_GUIDE_HIDDEN, "relu")


def test_guide_hidden_option_wins():
    model = checked((Path(__file__).parent / "programs/good/guide_options.dgm").read_text())
    _, guide = compiled(model)
    assert linear_sizes(guide.nets["a"]) == [(2, 64), (64, 64), (64, 4)]  # a <- b
    assert len(linear_sizes(guide.nets["c"])) == 1  # hidden = []
    assert [s[1] for s in linear_sizes(guide.nets["k"])] == [16, 1]


def test_same_seed_same_guide():
    model = corpus("digits_hvae")
    a, b, c = (compiled(model, seed=s)[1] for s in (0, 0, 1))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.state_dict()["nets.z1.layers.0.weight"],
                           c.state_dict()["nets.z1.layers.0.weight"])


def test_a_missing_guide_input_is_a_data_error():
    _, guide = compiled(corpus("ppca"))
    with pytest.raises(DGMDataError, match="the guide of 'z' reads 'x'"):
        guide({}, batch_size=3)


# ------------------------------------------------------------------ families

CONSTRAINED = """
model constrained {{
    data x[5]
    latent rate : positive guide(family = {family})
    latent p : unit guide(family = {family})
    latent weights[5] : simplex guide(family = {family})
    latent m[2, 3] guide(family = {family})
    global g[3] guide(family = {family})

    rate ~ LogNormal(0, 1)
    p ~ Beta(2, 2)
    weights ~ Dirichlet(ones(5))
    m ~ Normal(0, 1)
    g ~ Gamma(2, 2)
    x ~ Normal(rate * weights + p + sum(m) + sum(g), 0.1)
}}
"""


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_samples_in_the_support_with_the_right_shape(family):
    model = checked(CONSTRAINED.format(family=family))
    lowered, guide = compiled(model)
    x = torch.randn(6, 5)
    pyro.set_rng_seed(0)
    trace = poutine.trace(guide).get_trace({"x": x})
    model_trace = poutine.trace(poutine.replay(lowered, trace)).get_trace({"x": x})
    for name in ("rate", "p", "weights", "m", "g"):
        var = model.ir.variable(name)
        site = trace.nodes[name]
        batch = () if var.role == "global" else (6,)
        assert site["value"].shape == (*batch, *var.shape)
        assert site["fn"].event_shape == var.shape
        support = model_trace.nodes[name]["fn"].support
        assert bool(support.check(site["value"]).all()), name
        assert bool(torch.isfinite(site["fn"].log_prob(site["value"])).all())
    with pyro.settings.context(module_local_params=True):
        loss = elbo_for(model.ir, model.plan)(lowered, guide)({"x": x})
        loss.backward()
    assert math.isfinite(loss.item())


def test_mvn_family_has_an_amortized_full_covariance():
    model = checked(
        (EXAMPLES / "ppca.dgm").read_text().replace("latent z[2]", "latent z[2] guide(family = mvn)")
    )
    _, guide = compiled(model)
    assert linear_sizes(guide.nets["z"])[-1][1] == 2 + 3  # loc and a 2x2 triangle
    with torch.no_grad():
        for layer in guide.nets["z"].modules():  # make the off-diagonal entry visibly non-zero
            if isinstance(layer, torch.nn.Linear) and layer.out_features == 5:
                layer.bias[3] = 0.7
    q = poutine.trace(guide).get_trace({"x": torch.randn(4, 3)}).nodes["z"]["fn"]
    assert isinstance(q, pdist.MultivariateNormal)  # a real latent needs no transform
    tril = q.scale_tril
    assert tril.shape == (4, 2, 2)
    assert bool((tril.triu(1) == 0).all()) and bool((tril.diagonal(dim1=-2, dim2=-1) > 0).all())
    assert bool((q.covariance_matrix[:, 0, 1].abs() > 1e-3).all())


def test_flow_family_learns_shared_transforms():
    model = checked(CONSTRAINED.format(family="flow"))
    _, guide = compiled(model)
    assert len(guide.flows["m"]) == 2  # six numbers: two autoregressive layers
    assert len(guide.flows["rate"]) == 1  # one number: a spline
    names = [n for n, _ in guide.named_parameters()]
    assert any(n.startswith("flows.m.") for n in names)
    assert any(n.startswith("variational.g.flow.") for n in names)


def test_delta_family_is_a_point_estimate_through_the_bijection():
    model = checked(CONSTRAINED.format(family="delta"))
    _, guide = compiled(model)
    x = torch.randn(3, 5)
    first = poutine.trace(guide).get_trace({"x": x})
    second = poutine.trace(guide).get_trace({"x": x})
    for name in ("rate", "weights", "g"):
        assert torch.equal(first.nodes[name]["value"], second.nodes[name]["value"])
        assert isinstance(first.nodes[name]["fn"], pdist.Delta)


def test_globals_start_from_a_draw_with_a_small_scale():
    model = corpus("linreg")
    _, guide = compiled(model)
    w = guide.variational.family("w")
    assert w.loc.shape == (3,) and bool((w.loc != 0).all())
    assert torch.allclose(w.scale, torch.full((3,), 0.1))
    values = guide({"u": torch.zeros(4, 3), "y": torch.zeros(4)})
    assert values["w"].shape == (3,) and values["b"].shape == ()


def test_a_support_that_depends_on_inputs_is_read_at_each_call():
    model = checked("""
    model bounded {
        input a
        data x
        latent s
        s ~ Uniform(a, a + 1)
        x ~ Normal(s, 0.1)
    }""")
    _, guide = compiled(model)
    a = torch.tensor([-3.0, 0.0, 10.0])
    s = guide({"a": a, "x": torch.zeros(3)})["s"]
    assert bool(((s > a) & (s < a + 1)).all())


# ------------------------------------------------------------------ enumeration

DISCRETE_PARENT = """
model dp {
    param mu[3, 2]
    data x[2]
    latent y
    latent z[2] guide(family = delta)
    y ~ Categorical(logits = [0.0, 1.0, -1.0])
    z ~ Normal(0, 1)
    x ~ Normal(z + mu[y], 0.5)
}
"""


def test_guide_enumeration_is_exact_in_the_discrete_latent():
    model = checked(DISCRETE_PARENT)
    assert model.plan.as_list() == [("y", ["x"]), ("z", ["x", "y"])]
    lowered, guide = compiled(model)
    x = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-0.7, 0.0]])
    elbo = elbo_for(model.ir, model.plan)
    assert isinstance(elbo, pyro.infer.TraceEnum_ELBO)
    with pyro.settings.context(module_local_params=True):
        loss = elbo.differentiable_loss(lowered, guide, {"x": x})
        loss.backward()
    # brute force: sum over y of q(y | x) [log p(y) + log p(z) + log p(x | z, y) - log q(y | x)],
    # z = the guide's point estimate given (x, y)
    with torch.no_grad():
        log_q = torch.log_softmax(guide.nets["y"](x), -1)  # (3 points, 3 classes)
        log_prior = torch.log_softmax(torch.tensor([0.0, 1.0, -1.0]), -1)
        mu = lowered.params.value("mu")
        elbo_value = 0.0
        for y in range(3):
            features = torch.cat([x, torch.eye(3)[y].expand(3, 3)], -1)
            z = guide.nets["z"](features)
            log_p = (log_prior[y] + pdist.Normal(0, 1).log_prob(z).sum(-1)
                     + pdist.Normal(z + mu[y], 0.5).log_prob(x).sum(-1))
            elbo_value += (log_q[:, y].exp() * (log_p - log_q[:, y])).sum()
    assert -loss.item() == pytest.approx(elbo_value.item(), rel=1e-5)
    grads = [p.grad for p in guide.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_guide_enumeration_with_vectorized_particles():
    model = checked((Path(__file__).parent / "programs/good/discrete_parent.dgm").read_text())
    lowered, guide = compiled(model)
    elbo = elbo_for(model.ir, model.plan, num_particles=3, vectorize_particles=True)
    with pyro.settings.context(module_local_params=True):
        loss = elbo.differentiable_loss(lowered, guide, {"x": torch.randn(5, 10)}, size=20)
    assert math.isfinite(loss.item())


def test_binomial_and_bernoulli_latents_enumerated_in_the_guide():
    model = checked("""
    model counts {
        data x[3]
        latent n
        latent k
        latent z[2]
        n ~ Binomial(4, 0.5)
        k ~ Bernoulli(0.3)
        z ~ Normal(0, 1)
        x ~ Normal(mlp(z, n, k), 0.5)
    }""")
    kinds = {step.latent: step.kind for step in model.plan.steps}
    assert kinds == {"n": "enumerated_in_guide", "k": "enumerated_in_guide", "z": "amortized"}
    lowered, guide = compiled(model)
    trace = poutine.trace(poutine.enum(guide, first_available_dim=-2)).get_trace(
        {"x": torch.randn(6, 3)})
    assert isinstance(trace.nodes["n"]["fn"], pdist.Binomial)
    assert trace.nodes["n"]["value"].reshape(-1).tolist() == [0, 1, 2, 3, 4]
    assert trace.nodes["k"]["value"].reshape(-1).tolist() == [0, 1]
    assert trace.nodes["z"]["value"].shape[-2:] == (6, 2)
    with pyro.settings.context(module_local_params=True):
        loss = elbo_for(model.ir, model.plan)(lowered, guide)({"x": torch.randn(6, 3)})
    assert math.isfinite(loss.item())


def test_a_latent_nothing_observed_depends_on_gets_a_learned_constant():
    model = checked("""
    model loose {
        data x
        latent u[2]
        latent z
        u ~ Normal(0, 1)
        z ~ Normal(u[0], 1)
        x ~ Normal(0, 1)
    }""")
    assert model.plan.step("z").inputs == ()
    lowered, guide = compiled(model)
    values = guide({"x": torch.zeros(4)})
    assert values["z"].shape == (4,) and values["u"].shape == (4, 2)
    with pyro.settings.context(module_local_params=True):
        loss = elbo_for(model.ir, model.plan)(lowered, guide)({"x": torch.zeros(4)})
    assert math.isfinite(loss.item())


GOOD_PROGRAMS = sorted((Path(__file__).parent / "programs" / "good").glob("*.dgm"))


@pytest.mark.parametrize("path", GOOD_PROGRAMS, ids=[p.stem for p in GOOD_PROGRAMS])
def test_every_good_program_compiles_to_a_model_and_guide_with_a_finite_elbo(path):
    for model in check_source(path.read_text(), str(path)):
        lowered, guide = compiled(model)
        generator = torch.Generator().manual_seed(0)
        batch = {var.name: torch.randint(0, 3, (5, *var.shape), generator=generator).float()
                 for var in model.ir.variables if var.role == "input"}
        pyro.set_rng_seed(0)
        with torch.no_grad():
            prior = lowered(batch, batch_size=5)
        batch.update({name: prior[name] for name in model.ir.names("data")})
        with pyro.settings.context(module_local_params=True):
            loss = elbo_for(model.ir, model.plan)(lowered, guide)(batch, size=50)
        assert math.isfinite(loss.item()), model.ir.name
        sampled = guide(batch)
        assert set(sampled) == {s.latent for s in model.plan.steps
                                if s.kind != "enumerated_in_model"}


CONTINUOUS_PARENT = """
model cp {
    param mu[3]
    data x
    latent z[2] guide(family = delta)
    latent y
    z ~ Normal(0, 1)
    y ~ Categorical(logits = mlp(z, hidden = [4]) + zeros(3))
    x ~ Normal(mu[y], 0.5)
}
"""


def test_a_discrete_latent_enumerated_before_its_continuous_parent_is_exact():
    model = checked(CONTINUOUS_PARENT)
    assert model.plan.as_list() == [("y", ["x"]), ("z", ["y"])]
    lowered, guide = compiled(model)
    x = torch.tensor([0.4, -1.2, 2.0, 0.0])
    elbo = elbo_for(model.ir, model.plan)
    with pyro.settings.context(module_local_params=True):
        loss = elbo.differentiable_loss(lowered, guide, {"x": x})
        loss.backward()
    with torch.no_grad():
        log_q = torch.log_softmax(guide.nets["y"](x[:, None]), -1)
        mu = lowered.params.value("mu")
        total = 0.0
        for y in range(3):
            z = guide.nets["z"](torch.eye(3)[y].expand(4, 3))  # z's point estimate given y
            log_prior_y = torch.log_softmax(lowered.nets["mlp_1"](z), -1)[:, y]
            log_p = (pdist.Normal(0, 1).log_prob(z).sum(-1) + log_prior_y
                     + pdist.Normal(mu[y], 0.5).log_prob(x))
            total += (log_q[:, y].exp() * (log_p - log_q[:, y])).sum()
    assert -loss.item() == pytest.approx(total.item(), rel=1e-5)
    assert all(torch.isfinite(p.grad).all() for p in guide.parameters() if p.grad is not None)
    vectorized = elbo_for(model.ir, model.plan, num_particles=2, vectorize_particles=True)
    with pyro.settings.context(module_local_params=True):
        assert math.isfinite(vectorized.differentiable_loss(lowered, guide, {"x": x}).item())


def test_scalar_inputs_are_stacked_in_reading_order_and_standardized():
    model = dgmlang.compile("""
    model scalars {
        latent a
        latent b
        data   x
        data   y[2]
        a ~ Normal(100000, 1000)
        b ~ Normal(a, 1)
        x ~ Normal(b, 1)
        y ~ Normal(a, 1)
    }""", guide_order="minfill")
    model.fit({name: value for name, value in model.sample(64, seed=0).items() if name in ("x", "y")},
              steps=1, progress=False)
    env = {name: torch.randn(5, *shape) + 100000 for name, shape in (("a", ()), ("b", ()), ("x", ()), ("y", (2,)))}
    for site in model.guide.sites:
        parts = []
        for item in site.inputs:
            reference = model.guide.input_reference(item.name)
            value = (env[item.name] - reference.loc) / reference.scale
            parts.append(value.reshape(5, -1))
        torch.testing.assert_close(site.features(env), torch.cat(parts, dim=-1))
    assert any(not model.guide.input_reference(item.name).neutral
               for site in model.guide.sites for item in site.inputs)
