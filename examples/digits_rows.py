"""An autoregressive image model: the digits read row by row by a gru, their likelihood exact.

`digits_rows.dgm` draws each 8-pixel row of a digit from a gru's summary of the rows above
it (Binomial counts, 16 trials per pixel). Nothing is latent, so `fit` maximizes the exact
likelihood and `log_prob` is exact: one pass, no importance sampling. We fit it on the fixed
training split of `dgmlang.datasets.digits()` and print its test log-likelihood beside
digits_vae's (docs/benchmarks.md: -87.20 nats per image, an importance-weighted estimate
with 1,000 draws, 200 epochs, seed 0), and draw a few digits row by row.

The row model is the weaker one: given the rows above, a row's 8 pixels are independent
Binomials, so it cannot say that neighbours in a row go together (the VAE's z does). It
also overfits the 1,437 training digits: 60 epochs is about its best test likelihood
(200 epochs reach a training loss of 85 nats but a test log-likelihood of -153.8).

    python examples/digits_rows.py            # full scale: 60 epochs, about 40 s
    python examples/digits_rows.py --quick
"""
import matplotlib
import torch
from _common import fitted, options, wrote

from dgmlang.datasets import digits

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: digits_vae's test log-likelihood in docs/benchmarks.md (ELBO, seed 0, K = 1000)
VAE_TEST_LL = -87.20

args = options(__doc__.splitlines()[0], epochs=60, quick_epochs=2)
torch.set_num_threads(1)
d = digits()
train, test = d.train_x.reshape(-1, 8, 8), d.test_x.reshape(-1, 8, 8)
model = fitted("digits_rows.dgm", {"x": train}, args, lr=3e-3)
ll = float(model.log_prob({"x": test}).mean())
print(f"test log-likelihood, nats per image: digits_rows {ll:.2f} (exact) | "
      f"digits_vae {VAE_TEST_LL:.2f} (docs/benchmarks.md, importance-weighted, K = 1000)")

drawn = model.sample(16, seed=args.seed)["x"]
fig, axes = plt.subplots(2, 8, figsize=(8, 2.2))
for ax, image in zip(axes.flat, drawn):
    ax.imshow(image.numpy(), cmap="gray_r", vmin=0, vmax=16)
    ax.axis("off")
fig.suptitle("digits drawn row by row")
path = args.out / "digits_rows.png"
fig.savefig(path, dpi=100, bbox_inches="tight")
wrote(path)
