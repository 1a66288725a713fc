"""dgmlang.testing without the backend: generated programs check, round-trip and invert
faithfully; shrinking gives small programs; the exact posteriors are right."""
import itertools
import os

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from dgmlang.check import check
from dgmlang.frontend import check_source
from dgmlang.parse import parse
from dgmlang.printer import format_program
from dgmlang.testing import (
    DiscreteModel,
    DiscreteNode,
    LinearEdge,
    LinearGaussianModel,
    LinearNode,
    assert_faithful_inverse,
    condition_gaussian,
    discrete_models,
    linear_gaussian_models,
    models,
    unfaithful_steps,
)

UNLESS_SLOW = pytest.mark.skipif(os.environ.get("DGM_SLOW") != "1", reason="slow; set DGM_SLOW=1")
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
               derandomize=True)
MANY = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ANY_MODEL = st.one_of(models(), models(with_nets=True), linear_gaussian_models(), discrete_models())


def _front_end_properties(m):
    (checked,) = check_source(m.text)
    ir = checked.ir
    # The declared roles are those of the structure.
    assert [(v.name, v.role) for v in ir.variables if v.role != "const"] == [
        (n.name, n.role) for n in m.nodes
    ]
    # print -> parse is the same tree, and checks to the same IR.
    program = parse(m.text)
    printed = format_program(program)
    assert parse(printed) == program
    assert check(parse(printed)) == (ir,)
    # The derived guide is a faithful inverse of the model graph.
    assert_faithful_inverse(checked.graph, checked.plan)


@FAST
@given(ANY_MODEL)
def test_generated_programs_check_round_trip_and_invert_faithfully(m):
    _front_end_properties(m)


@pytest.mark.slow
@UNLESS_SLOW
@MANY
@given(ANY_MODEL)
def test_generated_programs_large(m):
    _front_end_properties(m)


def test_shrinking_gives_the_smallest_readable_program():
    # The smallest model whose guide must enumerate a discrete latent itself.
    def wanted(m):
        return any(s.kind == "enumerated_in_guide" for s in m.checked.plan.steps)

    m = find(models(), wanted, settings=settings(database=None, max_examples=2000))
    assert m.text == (
        "model generated {\n"
        "    latent z1\n"
        "    latent z2\n"
        "    data   x1\n"
        "\n"
        "    z1 ~ Normal(0.0, 1.0)\n"
        "    z2 ~ Bernoulli(logits = 0.5 * z1)\n"
        "    x1 ~ Normal(0.0, 1.0)\n"
        "}\n"
    )
    # z1 and z2 are dependent; the guide draws z2 first and z1 from it.
    assert m.checked.plan.as_list() == [("z2", []), ("z1", ["z2"])]


def test_families_and_bounds_are_respected():
    @FAST
    @given(models(max_latents=2, max_data=1, max_globals=0, max_inputs=0, max_params=0,
                  families=["Normal", "Poisson", "Bernoulli"], guide_families=[None]))
    def prop(m):
        assert len(m.names("latent")) <= 2 and len(m.names("data")) == 1
        assert {n.family for n in m.nodes} <= {"Normal", "Poisson", "Bernoulli"}
        for n in m.nodes:  # an unbounded discrete family is data only
            assert n.family != "Poisson" or n.role == "data"

    prop()
    with pytest.raises(ValueError, match="unknown family 'Gaussian'"):
        models(families=["Gaussian"])


def test_unfaithful_plan_is_reported_by_name():
    g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "e")])
    nx.set_node_attributes(g, {"a": "latent", "b": "latent", "c": "latent", "d": "data", "e": "data"}, "role")
    from dgmlang.inverse import GuidePlan, GuideStep

    plan = GuidePlan((GuideStep("c", ("d", "e"), "amortized"), GuideStep("b", ("d",), "amortized"),
                      GuideStep("a", ("b", "c"), "amortized")))
    assert unfaithful_steps(g, plan) == [
        "the guide of 'b' sees {d} but in the model 'b' still depends on 'c', 'e' given those"
    ]


# ---------------------------------------------------------------- exact Gaussian posteriors


def _ancestral(model: LinearGaussianModel, n: int, rng) -> np.ndarray:
    """Draws of the joint by running the program forwards (no matrix algebra)."""
    values = {}
    for node in model.nodes:
        mean = np.full((n, node.dim), node.bias)
        for e in node.edges:
            w = np.asarray(e.weight, dtype=float).reshape(node.dim, model.node(e.parent).dim)
            mean = mean + values[e.parent] @ w.T
        values[node.name] = mean + node.scale * rng.standard_normal((n, node.dim))
    return np.concatenate([values[node.name] for node in model.nodes], axis=1)


@settings(max_examples=10, deadline=None)
@given(linear_gaussian_models(max_latents=3, max_data=2, dims=(1, 2, 3)))
def test_linear_gaussian_joint_matches_forward_simulation(lg):
    mean, cov = lg.joint
    draws = _ancestral(lg, 40_000, np.random.default_rng(0))
    sd = np.sqrt(np.diag(cov))
    # 40k draws: the sample mean is within 5 standard errors, the covariance within 0.05 sd^2.
    assert np.all(np.abs(draws.mean(0) - mean) < 5 * sd / np.sqrt(len(draws)))
    assert np.allclose(np.cov(draws.T), cov, atol=0.06 * np.outer(sd, sd).max())


@settings(max_examples=20, deadline=None)
@given(linear_gaussian_models(max_latents=3, max_data=2, dims=(1, 2)), st.integers(0, 2**16))
def test_gaussian_posterior_matches_the_precision_form(lg, seed):
    """Conditioning by covariance blocks equals conditioning by the precision matrix."""
    data = lg.sample(3, seed=seed)
    observed = {k: data[k] for k in lg.names("data")}
    post = lg.posterior(observed)
    mean, cov = lg.joint
    lat = np.concatenate([np.arange(len(mean))[lg.slices[k]] for k in lg.names("latent")])
    obs = np.concatenate([np.arange(len(mean))[lg.slices[k]] for k in lg.names("data")])
    precision = np.linalg.inv(cov)
    post_cov = np.linalg.inv(precision[np.ix_(lat, lat)])
    x_obs = np.concatenate([observed[k].reshape(3, -1) for k in lg.names("data")], axis=1)
    post_mean = mean[lat] - (x_obs - mean[obs]) @ (post_cov @ precision[np.ix_(lat, obs)]).T
    assert np.allclose(post.cov, post_cov, atol=1e-8)
    assert np.allclose(post.mean, post_mean, atol=1e-8)


def test_gaussian_posterior_of_the_worked_tree():
    """a -> b, a -> c, b -> d, c -> e with unit weights: b and c stay correlated given d, e."""
    tree = LinearGaussianModel("tree", (
        LinearNode("a", "latent", ()),
        LinearNode("b", "latent", (), (LinearEdge("a", 1.0),)),
        LinearNode("c", "latent", (), (LinearEdge("a", 1.0),)),
        LinearNode("d", "data", (), (LinearEdge("b", 1.0),)),
        LinearNode("e", "data", (), (LinearEdge("c", 1.0),)),
    ))
    post = tree.posterior({"d": np.array([1.0]), "e": np.array([1.0])})
    # var d = var e = 3, cov(d, e) = cov(a, d) = cov(a, e) = 1: E[a | d = e = 1] = 2 / (3 + 1)
    assert np.allclose(post.mean_of("a"), [0.5])
    corr = post.cov[1, 2] / np.sqrt(post.cov[1, 1] * post.cov[2, 2])
    assert corr == pytest.approx(0.2, abs=1e-12)
    samples = post.sample(200_000, seed=1)
    assert np.mean(samples["b"]) == pytest.approx(post.mean_of("b")[0], abs=0.01)
    lp = post.log_prob({k: samples[k][:3] for k in post.names})
    assert lp.shape == (3, 1) and np.all(np.isfinite(lp))


def test_condition_gaussian_with_nothing_observed_is_the_prior():
    mean, cov = np.array([1.0, 2.0]), np.array([[2.0, 0.5], [0.5, 1.0]])
    m, c = condition_gaussian(mean, cov, np.array([], dtype=int), np.array([0, 1]), np.zeros((2, 0)))
    assert np.array_equal(m, [[1.0, 2.0], [1.0, 2.0]]) and np.array_equal(c, cov)


# ---------------------------------------------------------------- exact discrete posteriors


@settings(max_examples=15, deadline=None)
@given(discrete_models(max_latents=3, max_data=2))
def test_discrete_joint_is_normalised_and_matches_ancestral_sampling(dm):
    probs = np.exp(dm.log_joint)
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)
    draws = dm.sample(20_000, seed=0)
    for i, node in enumerate(dm.nodes):
        axes = tuple(j for j in range(len(dm.nodes)) if j != i)
        expected = probs.sum(axis=axes)
        observed = np.bincount(draws[node.name], minlength=node.classes) / 20_000
        assert np.all(np.abs(observed - expected) < 5 * np.sqrt(expected * (1 - expected) / 20_000) + 1e-3)


def test_discrete_posterior_by_hand():
    """c ~ Categorical(softmax([0, 1, -1])); x ~ Bernoulli(sigmoid(T[c])): Bayes' rule by hand."""
    table = (-1.0, 2.0, 0.5)
    dm = DiscreteModel("d", (
        DiscreteNode("c", "latent", "Categorical", 3, table=(0.0, 1.0, -1.0)),
        DiscreteNode("x", "data", "Bernoulli", 2, ("c",), table=table),
    ))
    prior = np.exp([0.0, 1.0, -1.0]) / np.exp([0.0, 1.0, -1.0]).sum()
    like = 1 / (1 + np.exp(-np.array(table)))
    post = dm.posterior({"x": np.array([1, 0])})
    expected_1 = prior * like / (prior * like).sum()
    expected_0 = prior * (1 - like) / (prior * (1 - like)).sum()
    assert np.allclose(post.marginal("c"), [expected_1, expected_0], atol=1e-12)
    assert np.allclose(np.exp(post.log_evidence), [(prior * like).sum(), (prior * (1 - like)).sum()])


def test_discrete_joint_posterior_over_two_latents():
    dm = DiscreteModel("d", (
        DiscreteNode("a", "latent", "Bernoulli", 2, table=0.5),
        DiscreteNode("b", "latent", "Bernoulli", 2, table=-0.5),
        DiscreteNode("x", "data", "Categorical", 3, ("a", "b"),
                     table=(((0.0, 1.0, 2.0), (1.0, 0.0, 0.0)), ((2.0, 0.0, 1.0), (0.0, 0.0, 0.0)))),
    ))
    post = dm.posterior({"x": np.array([2])})
    brute = np.zeros((2, 2))
    for a, b in itertools.product(range(2), range(2)):
        brute[a, b] = np.exp(dm.log_joint[a, b, 2])
    brute /= brute.sum()
    assert np.allclose(post.probs[0], brute, atol=1e-12)
    assert np.allclose(post.marginal("a")[0], brute.sum(1))
