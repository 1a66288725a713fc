"""Inpainting: fill in the pixels you cannot see.

Fit `digits_vae.dgm` on the training digits, hide part of each test digit, and ask
`model.invert` for the posterior over the hidden pixels given the visible ones. dgmlang
handles the missing entries properly (importance resampling of the latent from the derived
guide reading many fillings of the hidden pixels, then the hidden pixels drawn given it; see
docs/missing-data.md), not by filling them with zeros. Two masks:

* bottom half - the lower 4 rows hidden: the model must guess the rest of the digit;
* random 50%  - every pixel hidden with probability 1/2.

The completion is the posterior mean of each hidden pixel. Reports its root-mean-square error
against the truth next to mean imputation (each hidden pixel set to its training mean), and
writes pictures of observed / completed / true digits.

    python examples/inpainting.py            # full scale (200 epochs)
    python examples/inpainting.py --quick
"""
import numpy as np
from _common import dgmlang, fitted, options, wrote

from dgmlang.plots import completion_grid

args = options(__doc__.splitlines()[0], epochs=200)
digits = dgmlang.datasets.digits()
train_x = digits.train_x[:256] if args.quick else digits.train_x
model = fitted("digits_vae.dgm", {"x": train_x}, args)

rows = 6 if args.quick else 100  # every 3rd..: a spread of test digits
truth = digits.test_x.numpy()[:: max(1, 360 // rows)][:rows]
pixel_mean = train_x.numpy().mean(0)
rng = np.random.default_rng(args.seed)
masks = {
    "bottom half": np.broadcast_to(np.arange(64) < 32, truth.shape).copy(),
    "random 50%": rng.random(truth.shape) < 0.5,
}
samples = 4 if args.quick else 32

for name, observed in masks.items():
    partial = np.where(observed, truth, np.nan)
    posterior = model.invert({"x": partial}, num_samples=samples, seed=args.seed)
    completed = posterior["x"].mean(0).numpy()
    hidden = ~observed
    rmse = np.sqrt(np.mean((completed[hidden] - truth[hidden]) ** 2))
    baseline = np.sqrt(np.mean((np.broadcast_to(pixel_mean, truth.shape)[hidden] - truth[hidden]) ** 2))
    print(f"{name:>11}: {hidden.sum()} hidden pixels; RMSE of the posterior mean {rmse:.2f}, "
          f"of mean imputation {baseline:.2f} (pixel counts 0..16)")
    slug = name.split()[0].replace("%", "")
    wrote(completion_grid(partial, completed, args.out / f"inpainting_{slug}.png", shape=(8, 8), truth=truth,
                          vmax=16, title=f"inpainting, {name} hidden (red): observed / completed / truth"))
