"""Super-resolution: infer an 8x8 digit from a 4x4 view of it.

`digits_superres.dgm` writes the downsampling operator into the model (2x2 block averages,
as the matrix product A * image * A^T), so seeing a 4x4 image is just observing the data
variable `lo`. Fit on pairs (digit, its 4x4 version); then, given only the 4x4 version of a
test digit, `model.invert` infers the 8x8 digit (x is absent, so it is missing everywhere).
Reports the root-mean-square error of the posterior mean against the true digit, next to
bilinear upsampling of the 4x4 image, and writes a picture of both.

    python examples/superres.py            # full scale (200 epochs)
    python examples/superres.py --quick
"""
import numpy as np
import torch
import torch.nn.functional as F
from _common import dgmlang, fitted, options, wrote

from dgmlang.plots import image_grid


def downsample(x: np.ndarray) -> np.ndarray:
    """2x2 block averages: (n, 8, 8) -> (n, 4, 4), what the model's operator computes."""
    return x.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4))


args = options(__doc__.splitlines()[0], epochs=200)
digits = dgmlang.datasets.digits()
train = digits.train_x.numpy().reshape(-1, 8, 8)
if args.quick:
    train = train[:256]
model = fitted("digits_superres.dgm", {"x": train, "lo": downsample(train)}, args)

rows = 6 if args.quick else 100
truth = digits.test_x.numpy().reshape(-1, 8, 8)[:: max(1, 360 // rows)][:rows]
low = downsample(truth)
posterior = model.invert({"lo": low}, num_samples=4 if args.quick else 32, seed=args.seed)
inferred = posterior["x"].mean(0).numpy()
bilinear = F.interpolate(torch.as_tensor(low)[:, None], size=(8, 8), mode="bilinear",
                         align_corners=False)[:, 0].numpy()
rmse = lambda guess: np.sqrt(np.mean((guess - truth) ** 2))
print(f"RMSE against the true 8x8 digits (pixel counts 0..16): inferred (posterior mean) {rmse(inferred):.2f}, "
      f"bilinear upsampling {rmse(bilinear):.2f}, each 4x4 pixel repeated {rmse(low.repeat(2, 1).repeat(2, 2)):.2f}")
print(f"the inferred digits reproduce the 4x4 views to RMSE {np.sqrt(np.mean((downsample(inferred) - low) ** 2)):.2f}")

shown = min(rows, 10)
pictures = np.concatenate([low.repeat(2, 1).repeat(2, 2)[:shown], bilinear[:shown], inferred[:shown], truth[:shown]])
wrote(image_grid(pictures, args.out / "superres.png", shape=(8, 8), ncols=shown, vmax=16,
                 row_labels=["4x4 input", "bilinear", "inferred", "truth"], title="super-resolution, 4x4 -> 8x8"))
