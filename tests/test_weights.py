"""Importance weighting: what it refuses, how it chunks (dgmlang/weights.py)."""
import pytest
import torch

import dgmlang
from dgmlang import weights
from dgmlang.errors import DGMUsageError
from dgmlang.weights import chunk_plan

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
