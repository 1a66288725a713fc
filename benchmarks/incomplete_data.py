"""Training on incomplete data (issue 13, item 3), in the manner of MIWAE (Mattei & Frellsen,
"MIWAE: Deep Generative Modelling and Imputation of Incomplete Data Sets", ICML 2019).

``examples/digits_vae.dgm`` is fitted, with `fit`'s defaults (Adam 1e-3, batch 128, 200
epochs, ELBO), on the training digits of `dgmlang.datasets.digits` with half of the pixels
missing completely at random (a fixed seed), exactly as a user calls it::

    m = dgmlang.load("examples/digits_vae.dgm")
    m.fit({"x": train_x}, mask={"x": observed}, seed=seed)

and, beside it, the same model fitted on the complete training digits. On the test digits,
with two patterns of hidden pixels — half of them missing at random (another fixed draw), and
the bottom half of every image (rows 4-7 of 8) — it prints the root-mean-square error of the
imputed hidden pixels (counts 0..16) of:

* each model's `invert` (the posterior mean of the hidden pixels, ``num_samples`` draws, the
  default importance resampling; the hidden pixels are given as NaN, so nothing of them is
  read), with the time `invert` took;
* mean imputation: each pixel's mean over the observed training pixels;

and the test log-likelihood of both models on the complete test digits (`log_prob`,
importance-weighted, K = ``--num-samples``). Everything runs in one process on one thread
(``--threads``), so the figures are side by side.

Usage (from the repository root)::

    .venv/bin/python benchmarks/incomplete_data.py                  # 200 epochs, as in docs/benchmarks.md
    .venv/bin/python benchmarks/incomplete_data.py --epochs 5       # a quick look

>>> masks = hidden_patterns(np.random.default_rng(0), 3)
>>> sorted(masks), masks["bottom half"][0].reshape(8, 8)[:, 0].tolist()
(['bottom half', 'random 50%'], [True, True, True, True, False, False, False, False])
"""
from __future__ import annotations

import argparse
import platform
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # dgmlang, when not installed

MODEL_FILE = ROOT / "examples" / "digits_vae.dgm"
PIXELS = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=200, help="training epochs (fit's default: 200)")
    parser.add_argument("--missing", type=float, default=0.5, help="share of training pixels missing (MCAR)")
    parser.add_argument("--invert-samples", type=int, default=100, help="posterior draws per test image (invert)")
    parser.add_argument("--num-samples", type=int, default=1000, help="K of the test log-likelihood estimate")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the masks, of fit and of the estimates")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    return parser.parse_args(argv)


def hidden_patterns(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """The observed pixels (True) of `n` test images under each pattern of hidden pixels."""
    bottom = np.zeros((n, 8, 8), dtype=bool)
    bottom[:, :4, :] = True
    return {"random 50%": rng.random((n, PIXELS)) >= 0.5, "bottom half": bottom.reshape(n, PIXELS)}


def uneven(caught: list) -> int:
    """How many points a call's DGMWarnings said have importance weights too uneven to trust."""
    counts = [re.search(r"weights of (\d+) of \d+ points are too uneven", str(w.message)) for w in caught]
    return sum(int(m.group(1)) for m in counts if m)


def rmse(completed: np.ndarray, truth: np.ndarray, observed: np.ndarray) -> float:
    hidden = ~observed
    return float(np.sqrt(np.mean((completed[hidden] - truth[hidden]) ** 2)))


def main(argv: list[str] | None = None) -> int:
    import dgmlang
    from dgmlang.datasets import digits

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = digits()
    train, test = data.train_x.numpy().astype(np.float64), data.test_x.numpy().astype(np.float64)
    rng = np.random.default_rng(args.seed)
    train_observed = rng.random(train.shape) >= args.missing
    patterns = hidden_patterns(rng, len(test))
    print(f"digits_vae, {len(train)} training images with {1 - train_observed.mean():.1%} of the pixels missing "
          f"at random (seed {args.seed}); {len(test)} test images; {args.epochs} epochs; "
          f"torch {torch.__version__}, {platform.python_version()}, {args.threads} thread(s)", flush=True)

    for mask in ({"x": train_observed}, None):  # warm-up: the first fit of a process pays its start-up
        dgmlang.load(MODEL_FILE).fit({"x": data.train_x}, mask=mask, steps=5, seed=args.seed, progress=False)
    models, fit_seconds = {}, {}
    for name, mask in (("incomplete", {"x": train_observed}), ("complete", None)):
        model = dgmlang.load(MODEL_FILE)
        start = time.perf_counter()
        losses = model.fit({"x": data.train_x}, mask=mask, epochs=args.epochs, seed=args.seed, progress=False)
        fit_seconds[name] = time.perf_counter() - start
        models[name] = model
        print(f"fit on {name} training data: {fit_seconds[name]:.1f} s, {len(losses)} steps, final loss "
              f"{losses[-1]:.2f} nats per image", flush=True)

    # mean imputation: each pixel's mean over its observed training values
    column_means = (train * train_observed).sum(0) / train_observed.sum(0)

    results: dict[tuple[str, str], tuple[float, float | None, int]] = {}
    for pattern, observed in patterns.items():
        partial = np.where(observed, test, np.nan)
        for name, model in models.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                start = time.perf_counter()
                draws = model.invert({"x": partial}, num_samples=args.invert_samples, seed=args.seed,
                                     progress=False)
                seconds = time.perf_counter() - start
            completed = draws["x"].double().mean(0).numpy()
            assert np.array_equal(completed[observed], test[observed])
            results[pattern, name] = (rmse(completed, test, observed), seconds, uneven(caught))
        results[pattern, "mean"] = (rmse(np.where(observed, test, column_means), test, observed), None, 0)

    log_likelihood = {}
    for name, model in models.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            scores = model.log_prob({"x": data.test_x}, num_samples=args.num_samples, seed=args.seed,
                                    progress=False)
            seconds = time.perf_counter() - start
        log_likelihood[name] = (float(scores.mean()), seconds, uneven(caught))

    print()
    print("imputation RMSE on the hidden test pixels (counts 0..16; invert: posterior mean of "
          f"{args.invert_samples} draws; its time; [points whose importance weights invert called too uneven])")
    header = f"{'hidden pixels':<14} {'trained on incomplete':>28} {'trained on complete':>28} {'mean imputation':>16}"
    print(header)
    for pattern in patterns:
        cells = []
        for name in models:
            error, seconds, bad = results[pattern, name]
            cells.append(f"{error:.3f} ({seconds:.1f} s) [{bad}]")
        print(f"{pattern:<14} {cells[0]:>28} {cells[1]:>28} {results[pattern, 'mean'][0]:>16.3f}")
    print()
    print(f"test log-likelihood of the complete test digits (nats per image, K = {args.num_samples}; "
          "[points whose importance weights log_prob called too uneven])")
    for name in models:
        value, seconds, bad = log_likelihood[name]
        print(f"  trained on {name:<10} {value:9.2f}  ({seconds:.1f} s) [{bad}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
