"""Missing entries of a joint distribution (a Dirichlet row): the observed entries are scored
by their exact marginal (the aggregation property, `dgmlang.marginals`), in `log_prob`, in
both of `fit`'s paths, and `invert` draws the missing part given the observed one."""
from __future__ import annotations

import math

import pyro
import pytest
import torch
from torch.distributions import Beta, Dirichlet, Normal

import dgmlang
from dgmlang import fastpath
from dgmlang.data import prepare_data
from dgmlang.marginals import observed_log_prob

nan = float("nan")
ALPHA = torch.tensor([2.0, 3.0, 1.5, 2.5], dtype=torch.float64)
CONSTANT = """
model d {
    data x[4]
    x ~ Dirichlet([2.0, 3.0, 1.5, 2.5])
}"""
LATENT = """
model d {
    data   x[3]
    latent z
    z ~ Normal(0, 1)
    x ~ Dirichlet(exp(z) * [1.0, 2.0, 3.0])
}"""


def aggregated(alpha: torch.Tensor, row: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """log p(observed entries) written out: Dirichlet(α_obs, Σ α_mis) at (x_obs, 1 - Σ x_obs)."""
    if not bool(seen.any()):
        return torch.zeros((), dtype=alpha.dtype)
    if bool(seen.all()):
        return Dirichlet(alpha).log_prob(row)
    a = torch.cat([alpha[seen], alpha[~seen].sum().reshape(1)])
    x = torch.cat([row[seen], (1 - row[seen].sum()).reshape(1)])
    return Dirichlet(a).log_prob(x)


def test_the_marginal_of_two_observed_entries_is_the_integral_over_a_missing_one():
    x = torch.tensor([0.1, 0.25, 0.3, 0.35], dtype=torch.float64)
    base = Dirichlet(ALPHA)
    seen = torch.tensor([True, False, True, False])
    rest = 1 - 0.1 - 0.3
    t = torch.linspace(0, rest, 200_001, dtype=torch.float64)[1:-1]
    rows = torch.stack([torch.full_like(t, 0.1), t, torch.full_like(t, 0.3), rest - t], -1)
    integral = torch.trapezoid(base.log_prob(rows).exp(), t).log()
    assert abs(float(observed_log_prob(base, x, seen) - integral)) < 1e-8
    # one entry missing: the row is determined and the term is the full density
    one = torch.tensor([True, True, True, False])
    assert float(observed_log_prob(base, x, one)) == pytest.approx(float(base.log_prob(x)), abs=1e-12)
    # integrating the two-observed marginal over x[2] gives the one-observed one, a Beta
    s = torch.linspace(0, 0.9, 200_001, dtype=torch.float64)[1:-1]
    rows = torch.stack([torch.full_like(s, 0.1), torch.zeros_like(s), s, torch.zeros_like(s)], -1)
    inner = torch.trapezoid(observed_log_prob(base, rows, seen.expand(rows.shape)).exp(), s).log()
    first = torch.tensor([True, False, False, False])
    beta = Beta(ALPHA[0], ALPHA[1:].sum()).log_prob(torch.tensor(0.1, dtype=torch.float64))
    assert abs(float(inner - beta)) < 1e-6  # the trapezoid rule near sqrt(x2) at 0: 1.2e-7
    assert abs(float(observed_log_prob(base, x, first) - beta)) < 1e-12
    assert float(observed_log_prob(base, x, torch.zeros(4, dtype=torch.bool))) == 0.0


def test_log_prob_of_rows_with_random_gaps_is_the_exact_marginal():
    torch.manual_seed(0)
    m = dgmlang.compile(CONSTANT).to("cpu", torch.float64)
    rows = Dirichlet(ALPHA).sample((40,)).float().double()  # data are read in torch's default dtype
    seen = torch.rand(40, 4) < 0.5
    scores = m.log_prob({"x": rows}, mask={"x": seen}, num_samples=3, progress=False)
    exact = torch.stack([aggregated(ALPHA, r, s) for r, s in zip(rows, seen)])
    assert (scores - exact).abs().max() < 1e-10
    # NaN marks the same gaps
    with_nan = torch.where(seen, rows, torch.full_like(rows, nan))
    assert torch.allclose(m.log_prob({"x": with_nan}, num_samples=3, progress=False), exact, atol=1e-10)


def test_log_prob_with_a_latent_matches_quadrature_over_it():
    m = dgmlang.compile(LATENT).to("cpu", torch.float64)
    pyro.set_rng_seed(0)
    rows = torch.tensor([[0.1, nan, 0.3], [0.2, nan, nan], [0.3, 0.3, 0.4]], dtype=torch.float64)
    seen = ~torch.isnan(rows)
    scores = m.log_prob({"x": rows}, num_samples=4000, seed=0, progress=False)
    z = torch.linspace(-8, 8, 20_001, dtype=torch.float64)
    prior = Normal(0.0, 1.0).log_prob(z)
    for i in range(3):
        alpha = z.exp().unsqueeze(-1) * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        terms = torch.stack([aggregated(a, rows[i], seen[i]) for a in alpha])
        exact = torch.trapezoid((prior + terms).exp(), z).log()
        assert abs(float(scores[i] - exact)) < 0.03, (i, float(scores[i]), float(exact))  # measured <= 0.0096


def test_both_paths_of_fit_give_the_same_masked_loss_and_gradient():
    m = dgmlang.compile(LATENT).to("cpu", torch.float64)
    data = prepare_data(m.ir, {"x": torch.tensor([[0.1, nan, 0.3], [0.2, nan, nan], [0.3, 0.3, 0.4]])},
                        allow_missing=True)
    batch = {k: v.double() for k, v in data.values.items()}
    assert torch.allclose(batch["x"].sum(-1), torch.ones(3, dtype=torch.float64))  # filled onto it
    fast = fastpath.build(m.ir, m.plan, m.model, m.guide)
    params = list(m.guide.parameters())
    torch.manual_seed(1)
    a = fast.loss(batch, 10, data.observed)
    grad_a = torch.autograd.grad(a, params, allow_unused=True)
    torch.manual_seed(1)
    elbo = pyro.infer.Trace_ELBO(max_plate_nesting=1)
    b = elbo.differentiable_loss(m.model, m.guide, batch, size=10, mask=data.observed)
    grad_b = torch.autograd.grad(b, params, allow_unused=True)
    assert torch.allclose(a, b, atol=1e-10)
    for ga, gb in zip(grad_a, grad_b):
        assert (ga is None) == (gb is None) and (ga is None or torch.allclose(ga, gb, atol=1e-10))
    m.fit({"x": data.values["x"]}, mask=data.observed, steps=5, progress=False)


def test_invert_draws_the_missing_part_of_a_row_given_the_observed_part():
    m = dgmlang.compile(CONSTANT).to("cpu", torch.float64)
    rows = torch.tensor([[0.1, nan, 0.3, nan], [nan, nan, nan, 0.2], [0.1, 0.2, 0.3, nan]])
    post = m.invert({"x": rows}, num_samples=4000, seed=0, progress=False)["x"]
    assert torch.allclose(post.sum(-1), torch.ones(4000, 3, dtype=torch.float64))
    assert (post[:, 0, [0, 2]] == rows[0, [0, 2]].double()).all()  # as given (read in float32)
    assert torch.allclose(post[:, 2, 3], torch.full((4000,), 0.4, dtype=torch.float64))
    # given x0, x2, the rest 0.6 splits as 0.6 * Beta(3, 2.5); given x3 = 0.2, (x0, x1, x2) = 0.8 Dir(2, 3, 1.5)
    for row, entries, alpha, rest in ((0, [1, 3], torch.tensor([3.0, 2.5]), 0.6),
                                      (1, [0, 1, 2], torch.tensor([2.0, 3.0, 1.5]), 0.8)):
        draws = post[:, row, entries]
        mean = rest * alpha / alpha.sum()
        sd = rest * Dirichlet(alpha.double()).variance.sqrt()
        assert ((draws.mean(0) - mean).abs() < 4 * sd / math.sqrt(4000)).all()
        assert ((draws.std(0) / sd - 1).abs() < 0.1).all()
