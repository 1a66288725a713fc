"""Probabilistic PCA: an amortized guide checked against the closed-form posterior.

`ppca.dgm` maps a 2-d latent z through a fixed matrix W to a 3-d observation with a little
noise. p(z | x) is Gaussian with a known mean and covariance, so the derived guide q(z | x) -
a network from x - can be checked for any x. We also hide one coordinate of x and let
`invert` fill it in; the exact answer is again Gaussian. (The default guide family is a
diagonal Normal, so it can match the posterior means but not the correlation between z[0]
and z[1]; `latent z[2] guide(family = mvn)` would match both.)

    python examples/ppca.py            # full scale
    python examples/ppca.py --quick
"""
import numpy as np
from _common import fitted, options

args = options(__doc__.splitlines()[0], epochs=300, quick_epochs=3)
W, noise = np.array([[1.0, 0.5], [0.2, -1.0], [0.7, 0.7]]), 0.1
rng = np.random.default_rng(args.seed)
x = rng.normal(size=(2000, 2)) @ W.T + noise * rng.normal(size=(2000, 3))
model = fitted("ppca.dgm", {"x": x}, args, lr=3e-3, cache=False)

fresh = rng.normal(size=(4, 2)) @ W.T + noise * rng.normal(size=(4, 3))
post_cov = np.linalg.inv(np.eye(2) + W.T @ W / noise**2)
post_mean = fresh @ W @ post_cov / noise**2
z = model.invert({"x": fresh}, num_samples=2000, seed=args.seed)["z"].numpy()
print("posterior mean of z for four new points")
for i in range(4):
    print(f"  exact {post_mean[i].round(3)}   dgmlang {z[:, i].mean(0).round(3)}")
print(f"posterior sd: exact {np.sqrt(np.diag(post_cov)).round(4)}, dgmlang {z.std(0).mean(0).round(4)}")

partial = fresh.copy()
partial[:, 2] = np.nan  # hide x[2]
filled = model.invert({"x": partial}, num_samples=500, seed=args.seed)["x"][:, :, 2].numpy()
# exact: x[2] | x[0], x[1] from the joint Gaussian N(0, W W^T + noise^2 I)
joint = W @ W.T + noise**2 * np.eye(3)
gain = joint[2, :2] @ np.linalg.inv(joint[:2, :2])
exact = fresh[:, :2] @ gain
sd = np.sqrt(joint[2, 2] - gain @ joint[:2, 2])
print(f"x[2] filled in from x[0], x[1]: exact {exact.round(3)} (sd {sd:.3f})")
print(f"                              dgmlang {filled.mean(0).round(3)} (sd {filled.std(0).mean():.3f})")
