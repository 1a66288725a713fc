"""Importance weighting: what it refuses, how it chunks, its Pareto k̂ (dgmlang/weights.py)."""
import numpy as np
import pytest
import torch
from torch.distributions import Normal

import dgmlang
from dgmlang import weights
from dgmlang.errors import DGMUsageError
from dgmlang.weights import chunk_plan, pareto_k

DELTA = """
model collider {
    latent a guide(family = delta)
    latent b
    data   x
    a ~ Normal(0, 1)
    b ~ Normal(0, 1)
    x ~ Normal(a + b, 0.5)
}
"""


def test_a_delta_guide_is_refused_by_every_importance_weighted_query():
    m = dgmlang.compile(DELTA)
    data = {"x": torch.randn(6)}
    m.fit(data, steps=2, progress=False)  # the ELBO serves it: a point estimate of a
    for query in (lambda: m.log_prob(data, num_samples=4),
                  lambda: m.invert(data, num_samples=2),
                  lambda: m.fit(data, steps=1, objective="iwae", num_particles=2, progress=False)):
        with pytest.raises(DGMUsageError, match="latent 'a' has a delta guide") as err:
            query()
        assert "normal, mvn or flow" in err.value.hint


def test_the_same_model_with_a_density_is_scored():
    m = dgmlang.compile(DELTA.replace(" guide(family = delta)", ""))
    data = {"x": torch.randn(6)}
    assert torch.isfinite(m.log_prob(data, num_samples=4, seed=0)).all()


@pytest.mark.parametrize("chunked", [False, True])
def test_invert_names_the_rows_no_posterior_draw_can_be_weighted_at(chunked, monkeypatch):
    # 1e20 passes the data checks (float32 holds it) but its square overflows in the density
    m = dgmlang.compile(DELTA.replace(" guide(family = delta)", ""))
    if chunked:  # one row at a time, its proposals 300 at a time: the row is still named
        monkeypatch.setattr(weights, "CHUNK_VALUES", 300 * weights.values_per_row(m))
    x = torch.zeros(5)
    x[3] = 1e20
    with pytest.raises(dgmlang.errors.DGMDataError, match="not finite at row 3,") as err:
        m.invert({"x": x}, num_samples=3, seed=0)
    assert err.value.rows == [3]


def test_a_draw_that_overflows_into_a_network_is_a_model_error():
    from dgmlang.testing import simulate

    m = dgmlang.compile("""
model wide {
    data   x[784]
    latent z[20]
    z ~ Normal(0, 1e38)
    x ~ Bernoulli(logits = mlp(z, hidden = [400]))
}""")
    for draw in (lambda: m.sample(4, seed=0), lambda: simulate(m, 4, seed=0)):
        with pytest.raises(dgmlang.errors.DGMModelError, match="invalid arguments"):
            draw()


# ---------------------------------------------------------------- chunks


def test_chunks_are_bounded_by_cells_and_by_values():
    assert chunk_plan(100, 1000, 3) == (16, 1000)  # CHUNK_CELLS: 16 points of 1,000 particles
    assert chunk_plan(5, 1000, 3) == (5, 1000)
    assert chunk_plan(3, 20000, 3) == (1, weights.CHUNK_CELLS)
    assert chunk_plan(4, 1000, 65537) == (1, 255)  # CHUNK_VALUES: 2**24 // 65537 particles
    assert chunk_plan(4, 1000, 10**9) == (1, 1)  # never less than one of each
    assert chunk_plan(100, 1000, 3, cells=32000) == (32, 1000)
    for rows, particles, values in [(7, 1000, 65537), (50, 100, 784), (3, 5, 1), (1, 10**6, 40)]:
        points, per_chunk = chunk_plan(rows, particles, values)
        assert points * per_chunk <= weights.CHUNK_CELLS
        assert points * per_chunk * values <= weights.CHUNK_VALUES


def test_values_per_row_counts_data_inputs_latents_and_summed_out_classes():
    m = dgmlang.compile("""
model m {
    input  u[3]
    data   x[2, 5]
    latent z[4]
    latent c
    global g
    c ~ Categorical(logits = zeros(3))
    g ~ Normal(0, 1)
    z ~ Normal(g, 1)
    x ~ Normal(sum(z) + sum(u) + c, 1)
}""")
    assert m.roles.model_enumerated == ("c",)
    assert weights.values_per_row(m) == (3 + 10 + 4 + 1) * 3


# ---------------------------------------------------------------- Pareto k


def arviz_k(log_w: np.ndarray) -> float:
    """arviz's psislw k-hat for one vector of log weights (reff = 1) with its _gpdfit,
    transcribed step by step."""
    x = log_w - log_w.max()
    s = len(x)
    cutoff = max(np.sort(x)[-int(np.ceil(min(s / 5, 3 * s ** 0.5))) - 1], np.log(np.finfo(float).tiny))
    tail = np.sort(x[x > cutoff])
    if len(tail) <= 4:
        return np.inf
    ary = np.exp(tail) - np.exp(cutoff)
    n = len(ary)
    m = 30 + int(n ** 0.5)
    b = 1 - np.sqrt(m / (np.arange(1, m + 1, dtype=float) - 0.5))
    b = b / (3 * ary[int(n / 4 + 0.5) - 1]) + 1 / ary[-1]
    k = np.log1p(-b[:, None] * ary).mean(axis=1)
    profile = n * (np.log(-(b / k)) - k - 1)
    w = 1 / np.exp(profile - profile[:, None]).sum(axis=1)
    keep = w >= 10 * np.finfo(float).eps
    w, b = w[keep] / w[keep].sum(), b[keep]
    k = np.log1p(-np.sum(b * w) * ary).mean()
    return (n * k + 10 * 0.5) / (n + 10)


def test_pareto_k_is_arviz_psis_k_hat():
    g = torch.Generator().manual_seed(0)
    spread = torch.tensor([0.1, 1.0, 3.0, 10.0, 30.0], dtype=torch.float64)
    for samples in (21, 100, 257, 1000, 4000):
        log_w = torch.randn(samples, 5, generator=g, dtype=torch.float64) * spread
        ours = pareto_k(log_w)
        reference = [arviz_k(log_w[:, r].numpy()) for r in range(5)]
        assert np.allclose(ours.numpy(), reference, rtol=0, atol=1e-6), (samples, ours, reference)
    assert np.allclose(pareto_k(log_w.float()).numpy(), reference, atol=1e-4)  # float32 input


def test_pareto_k_tells_good_proposals_from_heavy_tailed_weights():
    g = torch.Generator().manual_seed(1)

    def normal_weights(scale):  # target N(0, 1), proposal N(0, scale**2): 50 rows of 1,000
        z = scale * torch.randn(1000, 50, generator=g)
        return Normal(0, 1).log_prob(z) - Normal(0, scale).log_prob(z)

    assert (pareto_k(normal_weights(2.0)) < 0.5).all()  # wider proposal: bounded weights
    # narrower proposal: weights with a Pareto tail of shape 1 - scale**2 = 0.91
    assert pareto_k(normal_weights(0.3)).mean() > 0.7
    for k in (0.5, 0.8):  # weights u**-k, u uniform: exactly Pareto with shape k
        u = torch.rand(4000, 50, generator=g, dtype=torch.float64)
        assert abs(float(pareto_k(-k * u.log()).mean()) - k) < 0.05


def test_pareto_k_edge_cases():
    log_w = torch.randn(100, 4, dtype=torch.float64)
    log_w[:, 1] = 3.0  # every weight equal: exact importance sampling
    log_w[5, 2] = float("nan")
    log_w[:, 3] = -1000.0  # one weight dominates the rest beyond float64: no tail to fit
    log_w[0, 3] = 0.0
    k = pareto_k(log_w)
    assert torch.isfinite(k[0]) and k[1] == -float("inf") and torch.isnan(k[2]) and k[3] == float("inf")
    assert torch.isinf(pareto_k(torch.randn(20, 3))).all()  # 20 weights: a tail of 4
    for bad in (torch.zeros(5), torch.zeros(2, 3, 4), torch.zeros(5, 2, dtype=torch.long), [[0.0]]):
        with pytest.raises(DGMUsageError, match=r"\(particles, rows\)"):
            pareto_k(bad)
