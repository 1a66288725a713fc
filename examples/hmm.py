"""Segmenting a signal with a hidden Markov model: a discrete chain summed out exactly.

`hmm.dgm` is a chain of 3 hidden states over 100 steps, each step emitting a Gaussian
reading around its state's level mu[s[t]]; the transition matrix and the levels are
`param`s. dgmlang sums the chain out with the forward algorithm, so the likelihood is
exact and fitting is maximum likelihood (no guide is needed). We generate signals from a
known HMM, fit the model, compare the learned levels and transitions with the true ones (up
to a relabelling of the states), and segment a signal: `marginals` gives p(s[t] = k | x),
`invert` draws whole state paths (forward filtering, backward sampling).

    python examples/hmm.py            # full scale
    python examples/hmm.py --quick
"""
import itertools

import matplotlib
import numpy as np
import torch
from _common import fitted, options, wrote

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

args = options(__doc__.splitlines()[0], epochs=150, quick_epochs=20)
rng = np.random.default_rng(args.seed)
true_trans = np.array([[0.95, 0.04, 0.01], [0.03, 0.94, 0.03], [0.02, 0.03, 0.95]])
true_mu = np.array([-2.0, 0.5, 3.0])
n, steps = 200, 100
states = np.zeros((n, steps), dtype=int)
states[:, 0] = rng.integers(0, 3, size=n)
for t in range(1, steps):
    states[:, t] = [rng.choice(3, p=true_trans[s]) for s in states[:, t - 1]]
x = true_mu[states] + rng.normal(size=(n, steps))
model = fitted("hmm.dgm", {"x": x}, args, batch_size=50, lr=0.05, cache=False)

mu = model.model.param("mu").detach().numpy()
order = list(min(itertools.permutations(range(3)), key=lambda p: np.abs(mu[list(p)] - true_mu).max()))
trans = model.model.param("trans").detach().numpy()[np.ix_(order, order)]
print("true levels        ", true_mu.tolist())
print("learned (relabeled)", [round(float(v), 2) for v in mu[order]])
print(f"largest error of a learned transition probability: {np.abs(trans - true_trans).max():.3f}")

probs = model.marginals({"x": x[:1]}, "s")[0].numpy()[:, order]  # p(s[t] = k | x), (T, K)
agreement = np.mean(probs.argmax(-1) == states[0])
print(f"steps whose most probable state is the true state: {agreement:.1%}")
paths = model.invert({"x": x[:1]}, num_samples=20, seed=args.seed)["s"][:, 0].numpy()
relabel = np.argsort(order)
print(f"steps where a posterior path agrees with the true state: {np.mean(relabel[paths] == states[0]):.1%}")

fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 4), sharex=True)
top.plot(x[0], lw=0.8, color="black")
top.plot(true_mu[states[0]], lw=1.5, color="tab:green", label="true level")
top.plot(mu[order][probs.argmax(-1)], lw=1.0, ls="--", color="tab:red", label="most probable level")
top.legend(fontsize=7)
top.set_title("hmm: a signal segmented by its exact smoothing marginals", fontsize=9)
bottom.stackplot(np.arange(steps), probs.T, labels=[f"p(s[t] = {k} | x)" for k in range(3)])
bottom.set_xlabel("t")
bottom.legend(fontsize=7, loc="upper right")
fig.tight_layout()
fig.savefig(args.out / "hmm.png", dpi=100)
plt.close(fig)
wrote(args.out / "hmm.png")
