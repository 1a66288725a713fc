"""Inverse graphics: recover a scene's description from its picture.

`inverse_graphics.dgm` is a renderer written in the language: a soft-edged square with a
centre (px, py), a half-width `size` and a `brightness`, drawn on a 16x16 canvas with camera
noise (the seed's "cube", in two dimensions). The model has nothing to learn; fitting it to
rendered scenes trains the derived guide q(latents | image) to invert the renderer. Then, for
new scenes, `model.invert` gives a posterior over each latent. Reports the error of the
posterior mean against the true latent, next to always guessing the prior mean, and writes
a picture of the images, the re-rendered posterior means and the true scenes.

    python examples/inverse_graphics.py            # full scale (30 epochs on 5000 scenes)
    python examples/inverse_graphics.py --quick
"""
import numpy as np
from _common import HERE, dgmlang, fitted, options, wrote

from dgmlang.plots import image_grid

PRIOR = {"px": (3, 12), "py": (3, 12), "size": (1, 3.5), "brightness": (0.3, 1)}  # the Uniform bounds


def render(px, py, size, brightness):
    """The model's noise-free image, in numpy (for the picture)."""
    grid = np.arange(16.0)
    sigmoid = lambda v: 1 / (1 + np.exp(-v))
    in_x = sigmoid(4 * (size[:, None] - np.abs(grid - px[:, None])))
    in_y = sigmoid(4 * (size[:, None] - np.abs(grid - py[:, None])))
    return brightness[:, None, None] * in_y[:, :, None] * in_x[:, None, :]


args = options(__doc__.splitlines()[0], epochs=30)
renderer = dgmlang.load(HERE / "inverse_graphics.dgm")  # scenes drawn from the prior, rendered
train = renderer.sample(256 if args.quick else 5000, seed=args.seed)
model = fitted("inverse_graphics.dgm", {"img": train["img"]}, args)

test = model.sample(6 if args.quick else 200, seed=args.seed + 1)
posterior = model.invert({"img": test["img"]}, num_samples=20 if args.quick else 100, seed=args.seed)
print(f"{'latent':>10}  {'prior range':>12}  {'|error| of posterior mean':>26}  {'of the prior mean':>17}  {'posterior std':>13}")
estimate = {}
for name, (low, high) in PRIOR.items():
    truth = test[name].numpy()
    estimate[name] = posterior[name].mean(0).numpy()
    error = np.abs(estimate[name] - truth).mean()
    baseline = np.abs((low + high) / 2 - truth).mean()
    spread = posterior[name].std(0).mean().item()
    print(f"{name:>10}  {f'{low}..{high}':>12}  {error:26.3f}  {baseline:17.3f}  {spread:13.3f}")

shown = 8 if not args.quick else 6
pictures = np.concatenate([test["img"].numpy()[:shown],
                           render(*(estimate[k][:shown] for k in PRIOR)),
                           render(*(test[k].numpy()[:shown] for k in PRIOR))])
wrote(image_grid(pictures, args.out / "inverse_graphics.png", shape=(16, 16), ncols=shown, vmin=0, vmax=1,
                 row_labels=["observed", "inferred\nscene", "true\nscene"],
                 title="inverse graphics: a noisy image, the scene the posterior mean describes, the truth"))
