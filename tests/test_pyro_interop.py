"""`m.model` and `m.guide` are plain Pyro callables (docs/inference.md, "Using Pyro's own
tools"): Pyro's Predictive, a user's own SVI loop and render_model work on them."""
import shutil

import pytest
import torch

import pyro
import pyro.infer
import pyro.optim

import dgmlang

PPCA = """
model ppca {
    const W = [[1.0, 0.5], [0.2, -1.0], [0.7, 0.7]]
    data   x[3]
    latent z[2]
    z ~ Normal(0, 1)
    x ~ Normal(matmul(W, z), 0.1)
}
"""
W = torch.tensor([[1.0, 0.5], [0.2, -1.0], [0.7, 0.7]])


def _data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    return z @ W.T + 0.1 * torch.randn(n, 3, generator=g)


def test_predictive_draws_from_the_prior_and_the_guide():
    m = dgmlang.compile(PPCA)
    x = _data(50)
    pyro.set_rng_seed(0)
    prior = pyro.infer.Predictive(m.model, num_samples=7)({}, batch_size=5)
    assert prior["z"].shape == (7, 5, 2) and prior["x"].shape == (7, 5, 3)
    posterior = pyro.infer.Predictive(m.model, guide=m.guide, num_samples=4,
                                      return_sites=["z", "x"])({"x": x})
    assert posterior["z"].shape == (4, 50, 2)
    # as with any Pyro model, a site observed through the arguments comes back as observed
    assert torch.equal(posterior["x"][0], x)
    # a posterior predictive: the guide's z given x, then the model run without x
    z = posterior["z"][0]
    redrawn = pyro.poutine.condition(m.model, data={"z": z})({}, batch_size=50)
    assert redrawn["x"].shape == (50, 3) and (redrawn["x"] - z @ W.T).abs().max() < 0.6


def test_a_users_own_svi_loop_fits_the_model():
    """Trace_ELBO over m.model / m.guide with Pyro's optimizer: the guide's mean of z moves to
    the exact posterior mean (ppca's posterior is Gaussian and known)."""
    m = dgmlang.compile(PPCA)
    x = _data(200)
    pyro.set_rng_seed(0)
    svi = pyro.infer.SVI(m.model, m.guide, pyro.optim.Adam({"lr": 0.02}), pyro.infer.Trace_ELBO())
    losses = [svi.step({"x": x}) for _ in range(600)]
    assert sum(losses[-50:]) / 50 < sum(losses[:50]) / 50
    precision = torch.eye(2) + W.T @ W / 0.01
    exact = torch.linalg.solve(precision, (W.T @ x.T) / 0.01).T
    draws = pyro.infer.Predictive(m.model, guide=m.guide, num_samples=200,
                                  return_sites=["z"])({"x": x})["z"].mean(0)
    assert (draws - exact).abs().mean() < 0.05


def test_render_model_sees_the_sites_and_the_plate():
    pytest.importorskip("graphviz")
    m = dgmlang.compile(PPCA)
    graph = pyro.render_model(m.model, model_args=({"x": _data(5)},), render_distributions=True)
    source = graph.source
    assert "z" in source and "x" in source and "data" in source   # the data plate
    assert "z -> x" in source
    if shutil.which("dot") is not None:  # the binary renders it; without it, .source is all
        assert graph.pipe(format="svg")
