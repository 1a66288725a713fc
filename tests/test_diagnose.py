"""A training failure names the site that went non-finite first, and its rows
(dgmlang/diagnose.py, called by fit after the failure only)."""
import pytest
import torch

import dgmlang
from dgmlang.errors import DGMTrainingError

SIMPLE = """
model m {
    data   x
    latent z
    z ~ Normal(0, 1)
    x ~ Normal(z, 1)
}
"""


def test_a_non_finite_loss_names_the_site_and_the_data_row():
    m = dgmlang.compile(SIMPLE)
    x = torch.zeros(8)
    x[5] = 1e30  # a float32 number whose square is not
    with pytest.raises(DGMTrainingError) as err:
        m.fit({"x": x}, steps=1, batch_size=8, seed=0, progress=False)
    message = err.value.message
    assert "step 1: the loss is" in message
    assert "'z'" in message or "'x'" in message
    assert message.endswith("at data row 5"), message


def test_a_non_finite_gradient_names_the_site_and_the_parameter():
    m = dgmlang.compile("""
model g {
    param  q : positive
    data   x
    latent z
    z ~ Normal(0, 1)
    x ~ Normal(z + sqrt(q * 0.0), 1)
}""")
    with pytest.raises(DGMTrainingError) as err:
        m.fit({"x": torch.zeros(4)}, steps=1, seed=0, progress=False)
    message = err.value.message
    assert "the gradient of model.params.q_unconstrained is not finite" in message
    assert "the gradient of log p of 'x' is not finite in param 'q'" in message


def test_a_healthy_step_is_not_recomputed(monkeypatch):
    from dgmlang import training

    def fail(*args, **kwargs):
        raise AssertionError("diagnosis on a healthy step")

    monkeypatch.setattr(training, "explain_failure", fail)
    m = dgmlang.compile(SIMPLE)
    m.fit({"x": torch.randn(16)}, steps=3, seed=0, progress=False)
