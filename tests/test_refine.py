"""invert(refine=steps): the guide refined row by row before its proposals are weighed."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import dgmlang
from dgmlang.data import prepare_data
from dgmlang.errors import DGMUsageError
from dgmlang.refine import installed, row_offsets
from dgmlang.training import objective

SHARP = """
model sharp {
    data   x[10, 3]
    latent z[3]
    z ~ Normal(0, 1)
    x ~ Normal(z, 0.3)
}"""


def exact_posterior(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """z | x for SHARP, per entry: precision 1 + 10 / 0.09."""
    precision = 1 + x.shape[-2] / 0.09
    return (x.sum(-2) / 0.09) / precision, 1 / math.sqrt(precision)


def test_refined_offsets_take_an_untrained_guide_to_each_rows_posterior():
    model = dgmlang.compile(SHARP)
    data = {"x": model.sample(6, seed=0)["x"]}
    part = prepare_data(model.ir, data, purpose="invert", facts=model.facts)
    torch.manual_seed(0)
    counted = []
    offsets = row_offsets(model, part, 300, objective(model, "elbo", 1), on_rows=counted.append)
    assert sum(counted) == 6
    assert offsets["z"].shape == (6, 6)
    site = model.guide.sites[0]
    mean, sd = exact_posterior(data["x"])
    with installed(model.guide, offsets), torch.no_grad():
        q = site.distribution(dict(data))
    assert float(((q.mean - mean) / sd).abs().max()) < 0.75
    assert 0.7 < float((q.stddev / sd).median()) < 1.4
    assert site.offset is None  # taken out after the block
    with torch.no_grad():
        plain = site.distribution(dict(data))
    assert float(((plain.mean - mean) / sd).abs().max()) > 3  # what the refinement fixed


def test_invert_with_refine_reaches_what_an_untrained_guide_misses():
    model = dgmlang.compile(SHARP)
    data = {"x": model.sample(8, seed=1)["x"]}
    mean, sd = exact_posterior(data["x"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = model.invert(data, num_samples=50, seed=0, progress=False)
    refined = model.invert(data, num_samples=50, seed=0, progress=False, refine=200)
    assert not torch.equal(plain["z"], refined["z"])
    assert float(((refined["z"].mean(0) - mean) / sd).abs().max()) < 1
    assert 0.6 < float((refined["z"].std(0) / sd).median()) < 1.5
    assert all(site.offset is None for site in model.guide.sites)
    again = model.invert(data, num_samples=50, seed=0, progress=False, refine=200)
    torch.testing.assert_close(again["z"], refined["z"])


def test_a_guide_enumerated_latent_and_rows_with_gaps():
    """Offsets also move a discrete latent's logits; rows with missing entries are inverted
    as without refine (they are not refined)."""
    model = dgmlang.compile("""
    model pick {
        data   x[20]
        latent k
        latent z
        k ~ Categorical(probs = [0.5, 0.5])
        z ~ Normal(0, 1)
        let side = onehot(k, 2)
        x ~ Normal(side[0] * z + side[1] * (4 + z), 0.2)
    }""")
    plans = {step.latent: step.kind for step in model.plan.steps}
    assert plans["k"] == "enumerated_in_guide"
    truth = model.sample(10, seed=2)
    x = truth["x"].clone()
    x[0, 3] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        draws = model.invert({"x": x}, num_samples=30, seed=0, progress=False, refine=150)
    k = draws["k"].float().mean(0).round().long()
    assert (k[1:] == truth["k"][1:]).all()
    assert torch.isfinite(draws["z"]).all()


@pytest.mark.parametrize("refine", [-1, 1.5, True, "10"])
def test_refine_must_be_a_whole_number_of_steps(refine):
    model = dgmlang.compile(SHARP)
    with pytest.raises(DGMUsageError, match="refine must be a positive integer"):
        model.invert({"x": model.sample(2, seed=0)["x"]}, refine=refine, progress=False)


def test_a_structured_chain_guide_is_refused_with_a_hint():
    model = dgmlang.compile("""
    model ssm {
        const T = 5
        data   x[T]
        latent z[T]
        z[0] ~ Normal(0, 1)
        for t in 1:T { z[t] ~ Normal(0.9 * z[t - 1], 0.5) }
        for t in 0:T { x[t] ~ Normal(z[t], 0.4) }
    }""")
    data = {"x": model.sample(3, seed=0)["x"]}
    with pytest.raises(DGMUsageError, match="refine does not serve latent 'z'") as info:
        model.invert(data, refine=5, progress=False)
    assert "without refine" in info.value.hint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (an untrained guide's weights are uneven)
        assert np.isfinite(model.invert(data, num_samples=5, progress=False)["z"].numpy()).all()


def test_a_model_with_globals_refines_its_locals_given_the_guides_globals():
    model = dgmlang.compile("""
    model shared {
        data   x[10]
        global mu
        latent z
        mu ~ Normal(0, 3)
        z ~ Normal(mu, 1)
        x ~ Normal(z, 0.3)
    }""")
    data = {"x": model.sample(20, seed=0)["x"]}
    model.fit(data, steps=100, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        draws = model.invert(data, num_samples=10, seed=0, progress=False, refine=100)
    assert draws["mu"].shape == (10,) and draws["z"].shape == (10, 20)
    # z is pinned by its 10 observations (sd 0.3 / sqrt(10) ~ 0.1), whatever mu's draw
    assert float((draws["z"].mean(0) - data["x"].mean(-1)).abs().max()) < 0.3


def test_log_prob_with_refine_stays_unbiased_and_tightens():
    """SHARP's exact log p(x) is known (x is Gaussian); an untrained guide's importance
    estimate falls far short of it on some rows, the refined one comes within a tenth or two."""
    model = dgmlang.compile(SHARP)
    data = {"x": model.sample(6, seed=3)["x"]}
    x = data["x"].double()
    # per entry j: x[:, j] ~ N(0, 0.09 I + 1 1^T), 10 observations
    cov = 0.09 * torch.eye(10, dtype=torch.float64) + torch.ones(10, 10, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(torch.zeros(10, dtype=torch.float64), cov)
    truth = exact.log_prob(x.transpose(1, 2)).sum(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = model.log_prob(data, num_samples=200, seed=0, progress=False).double()
    refined = model.log_prob(data, num_samples=200, seed=0, progress=False, refine=300).double()
    assert float((truth - refined).abs().max()) < 0.3  # (seed 0: at most 0.15)
    assert float((truth - plain).max()) > 5  # (seed 0: up to 79 nats short)
    assert all(site.offset is None for site in model.guide.sites)


def test_log_prob_refine_refuses_rows_with_gaps():
    model = dgmlang.compile(SHARP)
    x = model.sample(3, seed=0)["x"]
    x[1, 0, 0] = float("nan")
    with pytest.raises(DGMUsageError, match="refine serves rows without missing entries"):
        model.log_prob({"x": x}, refine=10, progress=False)
