"""Exact HMM likelihoods at scale (issue 14): `log_prob` of 100 sequences of T = 1,000 steps
with K = 10 states, the chain summed out by the forward algorithm (`dgmlang.chains`).

The model is `examples/hmm.dgm`'s form with T and K changed; its parameters are as
initialised (random), the data drawn from the model itself. `log_prob` is timed as a user
calls it (data checks included), the median of ``--repeats`` calls after one warm-up, in
float32 and float64, on one thread. The result is also checked against a forward algorithm
written here in float64 numpy (the largest relative difference is printed).

Usage: ``python benchmarks/hmm_log_prob.py [--steps 1000] [--states 10] [--rows 100] [--repeats 5]``
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

import dgmlang

TEXT = """
model hmm {{
    const T = {steps}
    const K = {states}
    param  trans[K, K] : simplex
    param  mu[K]
    param  sigma : positive
    data   x[T]
    latent s[T]

    s[0] ~ Categorical(logits = zeros(K))
    for t in 1:T {{ s[t] ~ Categorical(probs = trans[s[t - 1]]) }}
    for t in 0:T {{ x[t] ~ Normal(mu[s[t]], sigma) }}
}}
"""


def forward_numpy(x, trans, mu, sigma) -> np.ndarray:
    """log p(x) per row by a scaled forward algorithm in float64."""
    k = len(mu)
    like = np.exp(-0.5 * ((x[..., None] - mu) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    a = like[:, 0] / k
    total = np.zeros(len(x))
    for t in range(x.shape[1]):
        if t:
            a = (a @ trans) * like[:, t]
        scale = a.sum(-1)
        total += np.log(scale)
        a = a / scale[:, None]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--states", type=int, default=10)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    m = dgmlang.compile(TEXT.format(steps=args.steps, states=args.states))
    x = m.sample(args.rows, seed=0)["x"]
    params = {name: m.model.param(name).detach().double().numpy() for name in ("trans", "mu", "sigma")}
    exact = forward_numpy(x.double().numpy(), params["trans"], params["mu"], params["sigma"])
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    print(f"log_prob of {args.rows} sequences, T = {args.steps}, K = {args.states}")
    for dtype in ("float32", "float64"):
        m.to(dtype=dtype)
        data = {"x": x.to(getattr(torch, dtype))}
        m.log_prob(data, progress=False)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            got = m.log_prob(data, progress=False)
            times.append(time.perf_counter() - start)
        error = float(np.max(np.abs(got.double().numpy() - exact) / np.abs(exact)))
        print(f"  {dtype}: median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}); "
              f"largest relative difference from the numpy forward algorithm {error:.1e}")


if __name__ == "__main__":
    main()
