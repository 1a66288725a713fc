"""Missing entries that other variables depend on: latents of their row, drawn by the guide's
imputation step (`dgmlang.inverse.imputation_steps`), scored by the model in full. Checked
against exact Gaussian marginals (a linear-Gaussian chain, and a two-class mixture summed out
in the model) with random per-entry masks."""
from __future__ import annotations

import math

import pyro
import pytest
import torch
from torch.distributions import MultivariateNormal

import dgmlang
from dgmlang import fastpath
from dgmlang.data import prepare_data
from dgmlang.errors import DGMDataError
from dgmlang.inverse import GuideStep
from dgmlang.lower import elbo_for
from dgmlang.weights import importance_weights

CHAIN = """
model lg {
    data   x1[3]
    data   x2[3]
    latent z
    z ~ Normal(0, 1)
    x1 ~ Normal(z, 1)
    x2 ~ Normal(x1 * 0.5 + 0.1, 0.7)
}"""
MIXTURE = """
model mix {
    data   x1[2]
    data   x2[2]
    latent c
    c ~ Categorical(probs = [0.3, 0.7])
    x1 ~ Normal(4.0 * c - 2.0, 1)
    x2 ~ Normal(x1 * 0.5, 0.7)
}"""


def chain_moments(d: int = 3, shift: float = 0.1, latent_var: float = 1.0):
    eye, ones = torch.eye(d, dtype=torch.float64), torch.ones(d, d, dtype=torch.float64)
    c11 = latent_var * ones + eye
    cov = torch.cat([torch.cat([c11, 0.5 * c11], 1), torch.cat([0.5 * c11, 0.25 * c11 + 0.49 * eye], 1)])
    mean = torch.cat([torch.zeros(d, dtype=torch.float64), torch.full((d,), shift, dtype=torch.float64)])
    return mean, cov


def observed_log_density(mean, cov, value, seen) -> torch.Tensor:
    if not bool(seen.any()):
        return torch.zeros((), dtype=torch.float64)
    return MultivariateNormal(mean[seen], cov[seen][:, seen]).log_prob(value[seen])


def exact_chain(x1, x2, m1, m2) -> torch.Tensor:
    """log p(observed entries) per row, in closed form."""
    mean, cov = chain_moments()
    return torch.stack([observed_log_density(mean, cov, torch.cat([a, b]), torch.cat([ma, mb]))
                        for a, b, ma, mb in zip(x1, x2, m1, m2)])


def exact_mixture(x1, x2, m1, m2) -> torch.Tensor:
    _, cov = chain_moments(d=2, latent_var=0.0)
    out = []
    for a, b, ma, mb in zip(x1, x2, m1, m2):
        value, seen = torch.cat([a, b]), torch.cat([ma, mb])
        terms = []
        for c, prior in ((0, 0.3), (1, 0.7)):
            mu = torch.full((2,), 4.0 * c - 2.0, dtype=torch.float64)
            mean = torch.cat([mu, 0.5 * mu])
            terms.append(math.log(prior) + observed_log_density(mean, cov, value, seen))
        out.append(torch.stack(terms).logsumexp(0))
    return torch.stack(out)


def chain_data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, generator=g, dtype=torch.float64)
    x1 = z + torch.randn(n, 3, generator=g, dtype=torch.float64)
    x2 = 0.5 * x1 + 0.1 + 0.7 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    m1, m2 = torch.rand(n, 3, generator=g) > 0.5, torch.rand(n, 3, generator=g) > 0.5
    # data are read in torch's default dtype (float32)
    return x1.float().double(), x2.float().double(), m1, m2


def test_the_plan_has_an_imputation_step_and_the_guide_plan_is_unchanged():
    m = dgmlang.compile(CHAIN)
    assert m.plan.imputations == (GuideStep("x1", ("x1", "x2"), "imputed"),)
    assert m.plan.imputation("x2") is None  # nothing depends on x2: its gaps' terms are dropped
    assert m.guide_plan == [("z", ["x1"])]
    assert set(m.guide.imputation_sites) == {"x1"}


def test_both_paths_of_fit_give_the_same_loss_and_gradients():
    for text, elbo in ((CHAIN, pyro.infer.Trace_ELBO(max_plate_nesting=1)), (MIXTURE, None)):
        m = dgmlang.compile(text).to("cpu", torch.float64)
        d = 3 if text is CHAIN else 2
        g = torch.Generator().manual_seed(3)
        x = {"x1": torch.randn(6, d, generator=g), "x2": torch.randn(6, d, generator=g)}
        mask = {k: torch.rand(6, d, generator=g) > 0.4 for k in x}
        data = prepare_data(m.ir, x, allow_missing=True, mask=mask)
        batch = {k: v.double() for k, v in data.values.items()}
        fast = fastpath.build(m.ir, m.plan, m.model, m.guide)
        params = [p for p in m.guide.parameters() if p.requires_grad]
        torch.manual_seed(1)
        a = fast.loss(batch, 10, dict(data.observed))
        grad_a = torch.autograd.grad(a, params, allow_unused=True)
        torch.manual_seed(1)
        elbo = elbo or elbo_for(m.ir, m.plan)
        b = elbo.differentiable_loss(m.model, m.guide, batch, size=10, mask=data.observed)
        grad_b = torch.autograd.grad(b, params, allow_unused=True)
        assert torch.allclose(a, b, atol=1e-9), (text, a, b)
        assert any(ga is not None for ga in grad_a)  # the imputation network is trained
        for ga, gb in zip(grad_a, grad_b):
            assert (ga is None) == (gb is None) and (ga is None or torch.allclose(ga, gb, atol=1e-9))


def test_log_prob_and_the_elbo_against_the_exact_marginal_of_a_linear_gaussian_chain():
    m = dgmlang.compile(CHAIN).to("cpu", torch.float64)
    x1, x2, m1, m2 = chain_data(400)
    m.fit({"x1": x1, "x2": x2}, mask={"x1": m1, "x2": m2}, steps=1500, seed=0, progress=False)
    k = 12
    rows = {"x1": x1[:k], "x2": x2[:k]}
    masks = {"x1": m1[:k], "x2": m2[:k]}
    exact = exact_chain(x1[:k], x2[:k], m1[:k], m2[:k])
    scores = m.log_prob(rows, mask=masks, num_samples=20000, seed=0, progress=False)
    assert (scores - exact).abs().max() < 0.05  # measured 0.015
    # the bound fit maximizes lies below log p(observed entries), row by row
    pyro.set_rng_seed(0)
    with torch.no_grad():
        local = importance_weights(m, rows, particles=4000, mask=masks).local
    elbo, se = local.mean(0), local.std(0) / math.sqrt(4000)
    assert (elbo <= exact + 4 * se).all()
    assert float((exact - elbo).mean()) < 0.2


def test_log_prob_with_a_latent_summed_out_in_the_model_is_the_exact_mixture_marginal():
    m = dgmlang.compile(MIXTURE).to("cpu", torch.float64)
    g = torch.Generator().manual_seed(1)
    c = (torch.rand(300, 1, generator=g) < 0.7).double()
    x1 = (4 * c - 2 + torch.randn(300, 2, generator=g, dtype=torch.float64)).float().double()
    x2 = (0.5 * x1 + 0.7 * torch.randn(300, 2, generator=g, dtype=torch.float64)).float().double()
    m1, m2 = torch.rand(300, 2, generator=g) > 0.5, torch.rand(300, 2, generator=g) > 0.5
    m.fit({"x1": x1, "x2": x2}, mask={"x1": m1, "x2": m2}, steps=800, seed=0, progress=False)
    k = 12
    scores = m.log_prob({"x1": x1[:k], "x2": x2[:k]}, mask={"x1": m1[:k], "x2": m2[:k]},
                        num_samples=20000, seed=0, progress=False)
    exact = exact_mixture(x1[:k], x2[:k], m1[:k], m2[:k])
    assert (scores - exact).abs().max() < 0.05


def test_gaps_in_a_dirichlet_row_others_depend_on_are_refused_by_name():
    dirichlet = dgmlang.compile("""
    model d {
        data p[3]
        data y
        p ~ Dirichlet([1.0, 2.0, 3.0])
        y ~ Normal(dot(p, [1.0, 2.0, 3.0]), 1)
    }""")
    with pytest.raises(DGMDataError, match=r"fit: data 'p' has missing entries, but 'y' depends on it.*"
                                           r"a Dirichlet row with gaps has no guide") as err:
        dirichlet.fit({"p": torch.tensor([[0.2, float("nan"), 0.5]]), "y": torch.zeros(1)},
                      steps=1, progress=False)
    assert "invert" in err.value.hint  # a discrete non-label: tests/test_missing.py


def test_invert_with_such_gaps_runs_its_chains():
    m = dgmlang.compile(CHAIN)
    x1, x2, m1, m2 = chain_data(3)
    post = m.invert({"x1": x1.float(), "x2": x2.float()}, mask={"x1": m1, "x2": m2}, num_samples=5,
                    seed=0, progress=False)
    assert post["x1"].shape == (5, 3, 3) and torch.isfinite(post["x1"]).all()
    assert (post["x1"][:, m1] == x1.float()[m1]).all()
