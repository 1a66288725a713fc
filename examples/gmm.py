"""A mixture of three Gaussians: a discrete latent summed out exactly.

In `gmm.dgm` each point picks a cluster c (a Categorical latent) and is drawn around that
cluster's mean mu[c]; the means are `param`s (maximum-likelihood point estimates). dgmlang
sums c out exactly in the model (enumeration), so no guide is needed for it, and `invert`
draws c from its exact posterior given x (the "responsibilities"). We fit three synthetic
clusters, compare the learned means with the true ones, and label each point by its most
probable cluster.

    python examples/gmm.py            # full scale
    python examples/gmm.py --quick
"""
import itertools

import matplotlib
import numpy as np
import torch
from _common import fitted, options, wrote

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

args = options(__doc__.splitlines()[0], epochs=100, quick_epochs=5)
rng = np.random.default_rng(args.seed)
true_mu = np.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
labels = rng.integers(0, 3, size=600)
x = true_mu[labels] + 0.5 * rng.normal(size=(600, 2))
model = fitted("gmm.dgm", {"x": x}, args, batch_size=200, lr=0.05, cache=False)

mu = model.model.params.value("mu").detach().numpy()
order = min(itertools.permutations(range(3)), key=lambda p: np.abs(mu[list(p)] - true_mu).max())
print("true means       ", true_mu.round(2).tolist())
print("learned (matched)", mu[list(order)].astype(float).round(2).tolist())
print(f"largest error of a learned mean coordinate: {np.abs(mu[list(order)] - true_mu).max():.3f}")

c = model.invert({"x": x}, num_samples=50, seed=args.seed)["c"]  # exact posterior draws of c
most_probable = torch.mode(c, 0).values.numpy()
agreement = max(np.mean(np.array(p)[most_probable] == labels) for p in itertools.permutations(range(3)))
print(f"points whose most probable cluster is their true cluster: {agreement:.1%}")

fig, ax = plt.subplots(figsize=(4.5, 4))
ax.scatter(x[:, 0], x[:, 1], c=most_probable, cmap="tab10", vmin=0, vmax=9, s=6)
ax.scatter(*true_mu.T, marker="x", s=80, color="black", label="true means")
ax.scatter(*mu.T, marker="+", s=120, color="red", label="learned means")
ax.legend(fontsize=8)
ax.set_title("gmm: points coloured by their most probable cluster", fontsize=9)
fig.tight_layout()
fig.savefig(args.out / "gmm.png", dpi=100)
plt.close(fig)
wrote(args.out / "gmm.png")
