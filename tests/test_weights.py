"""Importance weighting: what it refuses (dgmlang/weights.py)."""
import pytest
import torch

import dgmlang
from dgmlang.errors import DGMUsageError

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


def test_invert_names_the_rows_no_posterior_draw_can_be_weighted_at():
    # 1e20 passes the data checks (float32 holds it) but its square overflows in the density
    m = dgmlang.compile(DELTA.replace(" guide(family = delta)", ""))
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
