"""A deep Markov model: the digits read row by row, a latent state per row.

`dmm.dgm` gives each of a digit's 8 rows a latent state z[t] of 16 numbers: z[0] is
standard Normal, a transition network moves the state from row to row (Normal, a learned
scale), an emission network draws the row's 8 pixels from it (Binomial, 16 trials). Its
guide is derived: a structured chain q(z[t] | z[t-1], x[t:]) that summarizes the rows from
t on with a gru run backward (docs/guides.md, "Continuous latent chains"). For comparison
the same model is fitted again with the naive guide q(z[t] | x[t]) of
`dgmlang.statespace.mean_field` (same epochs, lr and seed). Both are fitted on the fixed
training split of `dgmlang.datasets.digits()`; we print their test log-likelihoods
(importance-weighted, K = 1000 draws from each fit's own guide) beside digits_vae's
(docs/benchmarks.md: -87.20 nats per image) and digits_rows's (-134.97, exact), and write
test digits, their reconstructions through each guide (z drawn by `invert`, the mean of
20 draws of x given z) and digits drawn from the model to dmm.png.

The sizes (latent numbers per row D, transition width H, emission width E, guide width G)
were chosen on a validation split carved from the training digits, never the test split:
each candidate fitted with the structured guide for 600 epochs on the first 1,237
training digits and scored on the other 200 (K = 200); `--select` runs that again and
prints the table. Seed 0 gave (D, H, E, G = 4, 32, 64, 64) -90.58, (8, 64, 128, 128)
-84.00, (16, 128, 256, 128) -81.78 and (32, 128, 256, 128) -82.90 nats per image, so
dmm.dgm holds D = 16, H = 128, E = 256, G = 128. The test split is only scored by the
fits on all 1,437 training digits.

    python examples/dmm.py            # full scale: 600 epochs per guide, about 4 minutes
    python examples/dmm.py --quick
    python examples/dmm.py --select   # the size choice (4 fits on 1,237 digits, about 9 minutes)
"""
import re

import torch
from _common import HERE, dgmlang, fitted, options, wrote
from pyro import poutine

from dgmlang import statespace
from dgmlang.plots import image_grid

#: digits_vae's test log-likelihood in docs/benchmarks.md (ELBO, seed 0, K = 1000)
VAE_TEST_LL = -87.20
#: digits_rows's exact test log-likelihood in docs/benchmarks.md (60 epochs, seed 0)
ROWS_TEST_LL = -134.97
LR = 3e-3
#: the sizes tried by --select: (D, H, E, G), the const values of dmm.dgm
CANDIDATES = [(4, 32, 64, 64), (8, 64, 128, 128), (16, 128, 256, 128), (32, 128, 256, 128)]
VALIDATION_ROWS = 200


def extra(parser):
    parser.add_argument("--select", action="store_true",
                        help="fit each candidate size on a validation split of the training digits and stop")


args = options(__doc__.splitlines()[0], epochs=600, quick_epochs=2, extra=extra)
torch.set_num_threads(1)
d = dgmlang.datasets.digits()
train, test = d.train_x.reshape(-1, 8, 8), d.test_x.reshape(-1, 8, 8)
if args.quick:
    train, test = train[:256], test[:20]
draws = 20 if args.quick else 1000


def with_sizes(source: str, sizes) -> str:
    """dmm.dgm's text with its consts D, H, E, G set to `sizes`."""
    for name, value in zip("DHEG", sizes):
        source, count = re.subn(rf"const {name} = \d+", f"const {name} = {value}", source)
        assert count == 1, name
    return source


if args.select:
    source = (HERE / "dmm.dgm").read_text()
    held = 40 if args.quick else VALIDATION_ROWS
    fit_x, check_x = train[:-held], train[-held:]
    print(f"validation: fitted on {len(fit_x)} training digits, scored on the other {len(check_x)}")
    scores = {}
    for sizes in CANDIDATES:
        model = dgmlang.compile(with_sizes(source, sizes))
        model.fit({"x": fit_x}, epochs=args.epochs, seed=args.seed, lr=LR, progress=not args.quick)
        ll = model.log_prob({"x": check_x}, num_samples=20 if args.quick else 200, seed=args.seed,
                            progress=False)
        scores[sizes] = float(ll.mean())
        print("D, H, E, G = {}, {}, {}, {}: validation log-likelihood {:.2f}".format(*sizes, scores[sizes]))
    print("best: D, H, E, G = {}, {}, {}, {}".format(*max(scores, key=scores.get)))
    raise SystemExit(0)


def reconstruct(model, x: torch.Tensor, n: int = 20) -> torch.Tensor:
    """The mean of x given z over `n` posterior draws of z (`invert`), ``x.shape``."""
    z = model.invert({"x": x}, num_samples=n, seed=args.seed, progress=False)["z"]
    with torch.no_grad():
        trace = poutine.trace(poutine.condition(model.model, data={"z": z.flatten(0, 1)})).get_trace(
            {}, batch_size=z.shape[0] * z.shape[1])
    return trace.nodes["x"]["value"].reshape(n, *x.shape).mean(0)


structured = fitted("dmm.dgm", {"x": train}, args, lr=LR)
naive = fitted("dmm.dgm", {"x": train}, args, lr=LR, label="dmm with the naive guide",
               prepare=lambda model: statespace.mean_field(model, seed=args.seed))
print("guide plan:", structured.guide_plan)
ll = {name: float(model.log_prob({"x": test}, num_samples=draws, seed=args.seed,
                                 progress=not args.quick).mean())
      for name, model in (("structured", structured), ("naive", naive))}
print(f"test log-likelihood, nats per image (K = {draws}): dmm structured guide {ll['structured']:.2f} | "
      f"dmm naive guide {ll['naive']:.2f} | digits_vae {VAE_TEST_LL:.2f} | digits_rows {ROWS_TEST_LL:.2f} "
      "(the last two from docs/benchmarks.md)")

shown = test[:10]
drawn = structured.sample(20, seed=args.seed)["x"]
images = torch.cat([shown, reconstruct(structured, shown), reconstruct(naive, shown), drawn])
wrote(image_grid(images.numpy(), args.out / "dmm.png", shape=(8, 8), ncols=10, vmax=16,
                 row_labels=["test", "structured", "naive", "drawn", "drawn"],
                 title="test digits, reconstructed through each guide, and drawn from the model"))
