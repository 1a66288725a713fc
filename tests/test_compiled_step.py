"""`fit(compile=...)`: the fast path's step through torch.compile (issue 15, item 2).

The backends here are cheap ones (a graph-counting backend that runs the captured graph
eagerly), so the tests check capture, the one graph for every batch size, the warm-up record
and the fallback without paying for inductor; benchmarks/step_time.py times inductor.
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

import dgmlang
from dgmlang import compiling
from dgmlang.cli import main
from dgmlang.errors import DGMUsageError, DGMWarning

VAE = """
model tiny_vae {
    data   x[4]
    latent z[2]
    z ~ Normal(0, 1)
    x ~ Normal(mlp(z, hidden = [8]), 0.5)
}
"""

MIXTURE = """
model mix {
    param  mu[3, 2]
    data   x[2]
    latent c
    c ~ Categorical(logits = zeros(3))
    x ~ Normal(mu[c], 0.5)
}
"""


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them eagerly."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts from an empty TorchDynamo cache: the graphs counted are its own
    (the compiled loss's code is shared by every model, so earlier tests' entries would be
    tried, and recompiled around, first)."""
    import torch._dynamo

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(text: str) -> dgmlang.CompiledModel:
    torch.manual_seed(0)  # the same initial parameters for every model made here
    return dgmlang.compile(text)


def _data(n: int = 50, dim: int = 4) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(1))


def test_compiled_fit_matches_eager_with_one_graph_for_the_ragged_batch():
    x = _data()  # 50 rows in batches of 16: every epoch ends with a batch of 2
    backend = CountingBackend()
    compiled = _model(VAE)
    losses = compiled.fit(x, steps=20, batch_size=16, compile=backend, progress=False, seed=0)
    eager = _model(VAE).fit(x, steps=20, batch_size=16, progress=False, seed=0)
    assert backend.graphs == 1  # the batches of 16 and of 2 ran one graph: no recompile
    assert all(math.isfinite(v) for v in losses)
    # the captured graph draws the same random numbers here; only the summation order differs
    assert losses == pytest.approx(eager, rel=1e-4)
    assert len(compiled.history["compile_seconds"]) == 1
    assert compiled.history["compile_seconds"][0] > 0
    # a later fit reuses the compiled step: no warm-up of its own
    compiled.fit(x, steps=5, batch_size=16, compile=backend, progress=False)
    assert compiled.history["compile_seconds"][-1] == 0.0


def test_a_model_summed_out_in_the_model_compiles_to_one_graph():
    x = _data(40, 2)
    backend = CountingBackend()
    losses = _model(MIXTURE).fit({"x": x}, steps=12, batch_size=16, compile=backend,
                                 progress=False, seed=0)
    eager = _model(MIXTURE).fit({"x": x}, steps=12, batch_size=16, progress=False, seed=0)
    assert backend.graphs == 1
    assert losses == pytest.approx(eager, rel=1e-5)


def test_a_failing_compiler_warns_and_trains_eagerly():
    def broken(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler here")

    x = _data()
    m = _model(VAE)
    with pytest.warns(DGMWarning, match="could not compile the training step .*no C\\+\\+ compiler here.*"
                                        "training eagerly"):
        losses = m.fit(x, steps=10, batch_size=16, compile=broken, progress=False, seed=0)
    assert losses == _model(VAE).fit(x, steps=10, batch_size=16, progress=False, seed=0)
    assert math.isnan(m.history["compile_seconds"][0])


def test_a_model_the_fast_path_does_not_serve_warns_and_trains_eagerly():
    m = _model("""
    model semi {
        data   x
        latent y
        latent z
        y ~ Bernoulli(0.5)
        z ~ Normal(0, 1)
        x ~ Normal(z + y, 1)
    }""")
    backend = CountingBackend()
    with pytest.warns(DGMWarning, match="enumerated in guide.*training eagerly"):
        losses = m.fit(torch.randn(20), steps=3, batch_size=8, compile=backend, progress=False)
    assert backend.graphs == 0 and all(math.isfinite(v) for v in losses)


def test_compile_option_is_checked():
    assert compiling.backend_of(True) == compiling.BACKEND
    with pytest.raises(DGMUsageError, match="not a torch.compile backend"):
        _model(VAE).fit(_data(), steps=1, compile="no_such_backend", progress=False)


def test_cli_fit_compile_reports_the_warm_up(tmp_path, monkeypatch, capsys):
    backend = CountingBackend()
    monkeypatch.setattr(compiling, "BACKEND", backend)  # --compile's backend, cheap here
    (tmp_path / "vae.dgm").write_text(VAE)
    np.save(tmp_path / "x.npy", _data().numpy())
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DGMWarning)
        assert main(["fit", str(tmp_path / "vae.dgm"), "--data", str(tmp_path / "x.npy"),
                     "--steps", "6", "--batch-size", "16", "--compile", "--no-score",
                     "--out", str(out), "-q"]) == 0
    assert "compiled the training step with torch.compile" in capsys.readouterr().err
    assert backend.graphs == 1
    assert json.loads((out / "run.json").read_text())["compile_seconds"] > 0
