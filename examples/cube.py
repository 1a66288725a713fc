"""The cube: recover an object's shape, colour, position, size and rotation from its picture.

`cube.dgm` is a renderer written in the language: one object (a cube, a sphere or a pyramid,
a Categorical latent) seen in perspective by a pinhole camera looking slightly down, its RGB
colour shaded by a fixed light, its position across (`x`) and in depth, its size and the
cube's rotation about the vertical axis, drawn on a 32x32 RGB canvas with pixel noise of sd
0.05. The model has nothing to learn; fitting it to rendered scenes trains the derived guide
q(latents | image) to invert the renderer, and `invert` gives posterior draws for new scenes
(the guide proposes, importance resampling corrects). The picture pins the colour and size
down far more sharply than the amortized guide learns to, so `invert(refine=200)` first
refines the guide's output scene by scene (200 Adam steps on each scene's ELBO, the networks
fixed; `dgmlang.refine`). On held-out scenes it reports shape accuracy, the position error of
the object's centre in pixels, colour RMSE, relative size error and the cube's rotation
error, for the amortized guide, the refined one and a nearest-neighbour lookup (the latents
of the closest of 10,000 rendered scenes), and writes a picture of observed / inferred
(refined) / true scenes (the inferred scene re-rendered by the model's own renderer).

    python examples/cube.py            # full scale: 40 epochs on 5000 scenes (minutes)
    python examples/cube.py --quick
"""
import time
import warnings

import numpy as np
import torch
from _common import HERE, dgmlang, fitted, options, wrote

from dgmlang.evaluate import Evaluator
from dgmlang.ir import Ref
from dgmlang.plots import image_grid

CONTINUOUS = ("x", "depth", "size", "turn", "red", "green", "blue")
SHAPES = ("cube", "sphere", "pyramid")


def centre(x, depth):
    """The object's centre on the canvas in pixels (the camera of cube.dgm: F = 40)."""
    return np.stack([16 + 40 * x / depth, 4 + 56 / depth], -1)


def summary(estimate, truth):
    """The five figures: shape accuracy, position error (px), colour RMSE, relative size
    error and the cube's rotation error (radians, on true cubes)."""
    position = np.linalg.norm(centre(estimate["x"], estimate["depth"]) - centre(truth["x"], truth["depth"]), axis=-1)
    colour = np.stack([estimate[c] - truth[c] for c in ("red", "green", "blue")], -1)
    cubes = truth["shape"] == 0
    return {
        "shape accuracy": float((estimate["shape"] == truth["shape"]).mean()),
        "position error (px)": float(position.mean()),
        "colour RMSE": float(np.sqrt((colour ** 2).mean())),
        "size error (relative)": float((np.abs(estimate["size"] - truth["size"]) / truth["size"]).mean()),
        "cube rotation error (rad)": float(np.abs(estimate["turn"] - truth["turn"])[cubes].mean()),
    }


def posterior_estimate(draws):
    """The posterior mode of the shape; the posterior mean of the rest, the position as the
    mean of each draw's projected centre (so the picture is of one scene)."""
    shape = draws["shape"].long()
    counts = torch.stack([(shape == k).sum(0) for k in range(3)], -1)
    estimate = {"shape": counts.argmax(-1).numpy()}
    for name in CONTINUOUS:
        estimate[name] = draws[name].mean(0).numpy()
    # the cube's rotation from the draws that are cubes (others leave it unconstrained)
    is_cube = (shape == 0).float()
    turn = (draws["turn"] * is_cube).sum(0) / is_cube.sum(0).clamp(min=1)
    estimate["turn"] = torch.where(is_cube.sum(0) > 0, turn, draws["turn"].mean(0)).numpy()
    return estimate


def nearest_neighbour(bank, images):
    """The latents of the bank's scene closest (in squared pixel distance) to each image."""
    flat_bank = bank["img"].reshape(len(bank["img"]), -1)
    flat = images.reshape(len(images), -1)
    distance = (flat ** 2).sum(1, keepdim=True) - 2 * flat @ flat_bank.T + (flat_bank ** 2).sum(1)
    nearest = distance.argmin(1)
    return {name: bank[name][nearest].numpy() for name in ("shape",) + CONTINUOUS}


def render(model, scene):
    """The noise-free image of each scene, by the model's own renderer (its `scene` let)."""
    env = {name: torch.as_tensor(scene[name], dtype=torch.float32) for name in ("shape",) + CONTINUOUS}
    return Evaluator(model.ir).evaluate(Ref("scene", (3, 32, 32)), env).numpy()


def extra(parser):
    parser.add_argument("--refine", type=int, default=None,
                        help="Adam steps per scene refining the guide before it is weighed (default 200; 5 with --quick)")


args = options(__doc__.splitlines()[0], epochs=40, quick_epochs=1, extra=extra)
refine = args.refine if args.refine is not None else (5 if args.quick else 200)
if not args.quick:  # (the test suite runs --quick in its own process state: left alone)
    torch.set_num_threads(1)  # batches of 64: one thread is faster than two on shared cores
renderer = dgmlang.load(HERE / "cube.dgm")  # scenes drawn from the prior, rendered
train = renderer.sample(128 if args.quick else 5000, seed=args.seed)
start = time.perf_counter()
model = fitted("cube.dgm", {"img": train["img"]}, args, batch_size=64, lr=2e-3)
print(f"training (or loading) took {time.perf_counter() - start:.0f} s")

test = renderer.sample(8 if args.quick else 500, seed=args.seed + 1)
bank = renderer.sample(100 if args.quick else 10000, seed=args.seed + 2)
truth = {name: test[name].numpy() for name in ("shape",) + CONTINUOUS}
columns = {}
for steps in (0, refine):
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # (the amortized guide's weights are uneven)
        warnings.simplefilter("always")
        draws = model.invert({"img": test["img"]}, num_samples=10 if args.quick else 50, seed=args.seed,
                             progress=False, refine=steps)
    estimate = posterior_estimate(draws)
    label = f"refined ({steps} steps)" if steps else "amortized"
    columns[label] = summary(estimate, truth)
    uneven = f"; {str(caught[0].message).split(' (')[0]}" if caught else ""
    print(f"invert, {label}: {time.perf_counter() - start:.0f} s{uneven}")
columns["nearest neighbour"] = summary(nearest_neighbour(bank, test["img"]), truth)
print(f"{len(test['img'])} held-out scenes; nearest neighbour among {len(bank['img'])} rendered scenes")
print(f"{'':>26}" + "".join(f"  {label:>20}" for label in columns))
for name in columns["amortized"]:
    print(f"{name:>26}" + "".join(f"  {figures[name]:20.3f}" for figures in columns.values()))

shown = 6 if args.quick else 10
pictures = np.concatenate([test["img"].numpy()[:shown],
                           render(model, {k: v[:shown] for k, v in estimate.items()}),
                           render(model, {k: v[:shown] for k, v in truth.items()})])
titles = [SHAPES[k] for k in truth["shape"][:shown]] + [SHAPES[k] for k in estimate["shape"][:shown]] \
    + [""] * shown
wrote(image_grid(pictures.transpose(0, 2, 3, 1), args.out / "cube.png", shape=(32, 32, 3), ncols=shown, vmin=0, vmax=1,
                 titles=titles, row_labels=["observed", "inferred\nscene", "true\nscene"],
                 title="the cube: a noisy picture, the scene the posterior describes, the truth"))
