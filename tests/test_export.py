"""dgmlang.export: invert's draws as an arviz.InferenceData (the `arviz` extra)."""
import math

import pytest
import torch

import dgmlang
from dgmlang.errors import DGMUsageError

az = pytest.importorskip("arviz")

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
REGRESSION = """
model reg {
    input  u
    data   y
    global b
    b ~ Normal(0, 1)
    y ~ Normal(b * u, 0.5)
}
"""


def _ppca_data(n=12):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, generator=g) @ W.T + 0.1 * torch.randn(n, 3, generator=g)


def test_groups_shapes_and_the_log_likelihood_of_each_draw():
    m = dgmlang.compile(PPCA)
    x = _ppca_data()
    m.fit(x, steps=400, lr=0.01, seed=0, progress=False)
    x[0, 1] = float("nan")                                  # one missing entry
    draws = m.invert({"x": x}, num_samples=20, seed=0, progress=False)
    idata = m.to_arviz({"x": x}, draws=draws)
    assert set(idata.groups()) == {"posterior", "observed_data", "log_likelihood"}
    assert idata.posterior["z"].dims == ("chain", "draw", "point", "z_dim_0")
    assert idata.posterior["z"].shape == (1, 20, 12, 2)
    assert torch.allclose(torch.as_tensor(idata.posterior["z"].values[0]), draws["z"])
    assert math.isnan(idata.observed_data["x"].values[0, 1])
    # log p(x_i | z_i) by hand, over the observed entries only
    z = draws["z"]
    mean = z @ W.T
    by_hand = torch.distributions.Normal(mean, 0.1).log_prob(torch.nan_to_num(x))
    by_hand[:, 0, 1] = 0.0
    assert idata.log_likelihood["x"].shape == (1, 20, 12)
    assert torch.allclose(torch.as_tensor(idata.log_likelihood["x"].values[0]), by_hand.sum(-1), atol=1e-4)


def test_globals_have_no_point_dimension_and_summary_runs():
    m = dgmlang.compile(REGRESSION)
    u = torch.linspace(-1, 1, 30)
    y = 2.0 * u + 0.5 * torch.randn(30, generator=torch.Generator().manual_seed(1))
    m.fit({"u": u, "y": y}, steps=300, lr=0.05, seed=0, progress=False)
    idata = m.to_arviz({"u": u, "y": y}, num_samples=40, seed=0)
    assert idata.posterior["b"].dims == ("chain", "draw")
    summary = az.summary(idata, var_names=["b"], kind="stats")
    assert abs(summary.loc["b", "mean"] - 2.0) < 0.5
    assert idata.log_likelihood["y"].shape == (1, 40, 30)


def test_without_arviz_a_usage_error_names_the_extra(monkeypatch):
    import importlib

    real = importlib.import_module

    def no_arviz(name, *args):
        if name == "arviz":
            raise ImportError("No module named 'arviz'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_arviz)
    m = dgmlang.compile(PPCA)
    with pytest.raises(DGMUsageError, match=r"dgmlang\[arviz\]"):
        m.to_arviz({"x": _ppca_data()}, num_samples=2)
