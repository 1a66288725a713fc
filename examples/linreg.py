"""Bayesian linear regression: global latents, checked against the exact posterior.

In `linreg.dgm` the weights w and the intercept b are `global` latents: one value shared by
all data points, with a prior. Their guide is a set of per-model variational parameters (a
diagonal Normal), fitted by maximizing the ELBO. For this model the posterior is Gaussian and
known in closed form, so we print both: the means should agree closely; the guide's standard
deviations are those of the best diagonal approximation (close here, since the covariates are
independent).

    python examples/linreg.py            # full scale
    python examples/linreg.py --quick
"""
import numpy as np
from _common import fitted, options

args = options(__doc__.splitlines()[0], epochs=1000, quick_epochs=20)
rng = np.random.default_rng(args.seed)
n, true_w, true_b, noise = 100, np.array([1.0, -2.0, 0.5]), 3.0, 0.5
u = rng.normal(size=(n, 3))
y = u @ true_w + true_b + noise * rng.normal(size=n)
model = fitted("linreg.dgm", {"u": u, "y": y}, args, batch_size=n, lr=0.05, cache=False)

# exact posterior of (w, b): prior precision diag(1, 1, 1, 1/100), Gaussian likelihood
design = np.c_[u, np.ones(n)]
cov = np.linalg.inv(design.T @ design / noise**2 + np.diag([1.0, 1.0, 1.0, 1 / 100]))
mean = cov @ design.T @ y / noise**2

draws = model.invert({"u": u[:1], "y": y[:1]}, num_samples=2000, seed=args.seed)  # globals: (2000, ...)
fitted_draws = np.c_[draws["w"].numpy(), draws["b"].numpy()]
print(f"{'':>5} {'true':>6} {'exact mean':>11} {'fitted mean':>12} {'exact sd':>9} {'fitted sd':>10}")
for i, name in enumerate(["w[0]", "w[1]", "w[2]", "b"]):
    truth = [*true_w, true_b][i]
    print(f"{name:>5} {truth:6.2f} {mean[i]:11.3f} {fitted_draws[:, i].mean():12.3f} "
          f"{np.sqrt(cov[i, i]):9.3f} {fitted_draws[:, i].std():10.3f}")
