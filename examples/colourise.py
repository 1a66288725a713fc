"""Colourisation: infer a colour image from its greyscale view.

`colourise.dgm` is a model of 8x8 colour patches given their greyscale view (the usual
luminance weights, a known operator written into the model: a patch is its grey view plus a
chroma the operator cannot see, drawn from a latent code and the grey view). It is fitted on
patches cut from one of the two photographs scikit-learn ships (`china.jpg`); then, given
only the grey view of new patches, `model.invert` infers the colour (rgb is absent, so it is
missing everywhere). Reports the
RMSE of the posterior mean colour against the truth, next to copying the grey value into R,
G and B, painting every pixel the training set's mean colour, and grey plus the training
set's mean colour offset — on flower.jpg, and on patches of china.jpg held out from training
(the same photograph's colours: what a model of one photograph's patches can know); writes a
picture of grey input / inferred / truth.

    python examples/colourise.py            # full scale
    python examples/colourise.py --quick
"""
import numpy as np
from _common import fitted, options, wrote
from sklearn.datasets import load_sample_images

from dgmlang.plots import image_grid

LUMA = np.array([0.299, 0.587, 0.114])


def patches(image: np.ndarray, size: int = 8) -> np.ndarray:
    """Non-overlapping size x size patches of an (H, W, 3) uint8 image, as floats in [0, 1]."""
    h, w = (image.shape[0] // size) * size, (image.shape[1] // size) * size
    cut = image[:h, :w].reshape(h // size, size, w // size, size, 3).swapaxes(1, 2)
    return cut.reshape(-1, size, size, 3).astype(np.float64) / 255.0


args = options(__doc__.splitlines()[0], epochs=100)
photos = dict(zip((f.rsplit("/", 1)[-1] for f in load_sample_images().filenames), load_sample_images().images))
rng = np.random.default_rng(args.seed)
china = patches(photos["china.jpg"])
order = rng.permutation(len(china))
held_out, train = china[order[:500]], china[order[500:]]
flower = patches(photos["flower.jpg"])
tests = {"flower.jpg": flower[rng.permutation(len(flower))[:500]], "china.jpg, held out": held_out}
if args.quick:
    train = train[:256]
    tests = {name: test[:16] for name, test in tests.items()}
model = fitted("colourise.dgm", {"rgb": train, "grey": (train @ LUMA)[..., None]}, args)


def report(where: str, test: np.ndarray) -> np.ndarray:
    """Invert the grey views of `test`; print the RMSEs; return the inferred colours."""
    grey = test @ LUMA
    posterior = model.invert({"grey": grey[..., None]}, num_samples=8 if args.quick else 64, seed=args.seed,
                             progress=False)
    inferred = posterior["rgb"].mean(0).numpy()
    rmse = lambda guess: float(np.sqrt(np.mean((guess - test) ** 2)))
    copied = np.repeat(grey[..., None], 3, axis=-1)
    mean_colour = np.broadcast_to(train.reshape(-1, 3).mean(0), test.shape)
    offset = grey[..., None] + (train - (train @ LUMA)[..., None]).reshape(-1, 3).mean(0)
    print(f"{where}, {len(test)} patches, colour RMSE (values in [0, 1]): inferred (posterior mean) "
          f"{rmse(inferred):.4f}; grey copied into R, G, B {rmse(copied):.4f} (inferred "
          f"{1 - rmse(inferred) / rmse(copied):+.0%} below it); the training set's mean colour "
          f"{rmse(mean_colour):.4f}; grey plus the training set's mean colour offset {rmse(offset):.4f}; "
          f"the inferred colours reproduce the grey views to RMSE "
          f"{float(np.sqrt(np.mean((inferred @ LUMA - grey) ** 2))):.4f}")
    return inferred


inferred = {where: report(where, test) for where, test in tests.items()}

shown = min(len(held_out), 10) if not args.quick else 8
rows, labels = [], []
for where, test in tests.items():
    rows += [np.repeat((test @ LUMA)[:shown, ..., None], 3, axis=-1), inferred[where][:shown], test[:shown]]
    labels += [f"{where[:6]} grey", "inferred", "truth"]
wrote(image_grid(np.concatenate(rows), args.out / "colourise.png", shape=(8, 8, 3), ncols=shown, vmax=1,
                 row_labels=labels, title="colourisation: grey input, inferred colour, truth"))
