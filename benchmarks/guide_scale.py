"""Guides at any scale (issue 11): the amortized guide against the exact posterior of a
conjugate model whose values live far from unit scale.

    z ~ Normal(m, s) per data point;   x[2] ~ Normal(z, t)

For each model below (far: m, s, t = 10000, 10, 1; tiny: 0, 1e-3, 1e-3; unit: 0, 1, 1;
unit-wide: 0, 10, 1): 1,000 points drawn from the model (seed 0), `fit` for 3,000 steps at
lr 5e-3 (seed 0), then `invert` (2,000 posterior draws per point) and `log_prob` (K = 1,000)
against the closed forms. Printed per model: the posterior mean's error in posterior sds
(mean and worst over points), the posterior sd's ratio to the exact one, log_prob's error in
nats (mean and worst), and PSIS k-hat of log_prob's weights (median over points).

Run from the repository root:  .venv/bin/python benchmarks/guide_scale.py [--steps 3000]
"""
from __future__ import annotations

import argparse
import math
import time
import warnings

import torch

import dgmlang

MODELS = {
    "far": (10000.0, 10.0, 1.0),
    "tiny": (0.0, 1e-3, 1e-3),
    "unit": (0.0, 1.0, 1.0),
    "unit-wide": (0.0, 10.0, 1.0),
}

SOURCE = """
model scaled {{
    data   x[2]
    latent z
    z ~ Normal({m!r}, {s!r})
    x ~ Normal(z, {t!r})
}}
"""


def exact(m: float, s: float, t: float, x: torch.Tensor):
    """Posterior mean and sd of z, and log p(x), in float64."""
    x = x.double()
    precision = 1 / s**2 + 2 / t**2
    sd = precision ** -0.5
    mean = (m / s**2 + x.sum(-1) / t**2) / precision
    cov = torch.full((2, 2), s**2, dtype=torch.float64) + t**2 * torch.eye(2, dtype=torch.float64)
    marginal = torch.distributions.MultivariateNormal(torch.full((2,), m, dtype=torch.float64), cov)
    return mean, sd, marginal.log_prob(x)


def run(name: str, m: float, s: float, t: float, steps: int) -> dict:
    model = dgmlang.compile(SOURCE.format(m=m, s=s, t=t))
    data = {"x": model.sample(1000, seed=0)["x"]}
    start = time.perf_counter()
    model.fit(data, steps=steps, lr=5e-3, seed=0, progress=False)
    seconds = time.perf_counter() - start
    mean, sd, log_p = exact(m, s, t, data["x"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draws = model.invert(data, num_samples=2000, seed=0)["z"].double()
        estimate = model.log_prob(data, num_samples=1000, seed=0).double()
    mean_error = ((draws.mean(0) - mean) / sd).abs()
    nats = (estimate - log_p).abs()
    return {
        "model": name, "fit_s": seconds,
        "mean_err_sd": float(mean_error.mean()), "worst_mean_err_sd": float(mean_error.max()),
        "sd_ratio": float(draws.std(0).mean() / sd),
        "log_prob_err": float(nats.mean()), "worst_log_prob_err": float(nats.max()),
        "warned": sum(issubclass(w.category, dgmlang.DGMWarning) for w in caught)
        if hasattr(dgmlang, "DGMWarning") else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'model':10} {'mean err/sd':>12} {'worst':>8} {'sd ratio':>9} "
          f"{'log_prob err':>13} {'worst':>8} {'warnings':>9} {'fit s':>6}")
    for name in args.models.split(","):
        row = run(name, *MODELS[name], args.steps)
        print(f"{row['model']:10} {row['mean_err_sd']:12.3f} {row['worst_mean_err_sd']:8.3f} "
              f"{row['sd_ratio']:9.3f} {row['log_prob_err']:13.3f} {row['worst_log_prob_err']:8.3f} "
              f"{row['warned']:9d} {row['fit_s']:6.1f}")
    print("target: mean err/sd < 0.1 and log_prob err < 0.1 nats on every model")


if __name__ == "__main__":
    main()
