"""Metropolis-within-Gibbs (dgmlang.gibbs): the shapes of what the chains return."""
import torch

import dgmlang

GLOBAL_CLASS = """
model global_class {
    global g
    latent c
    data   x
    g ~ LogNormal(0.0, 0.5)
    c ~ Categorical(logits = mlp(g, hidden = [8]) + zeros(3))
    x ~ Normal(0.0, 1.0)
}
"""


def test_a_summed_out_latent_of_one_missing_row_keeps_its_row_dim():
    # c depends on the global only, so for one chain row Pyro's draw came back unbatched
    # and filling invert's result failed on a shape mismatch
    m = dgmlang.compile(GLOBAL_CLASS)
    x = torch.tensor([0.3, float("nan"), -0.5])
    samples = m.invert({"x": x}, num_samples=2, seed=0)
    assert samples["c"].shape == (2, 3)
    assert samples["x"].shape == (2, 3) and bool(torch.isfinite(samples["x"]).all())
