"""Rows per second of `log_prob` and `invert` against a hand-written importance sampler with
the same networks (issue 15, item 5), side by side in one process, and where dgmlang's time
goes (a profile of each call).

    python benchmarks/posterior_speed.py                 # about a minute
    python benchmarks/posterior_speed.py --profile 0     # figures only

digits_vae on the 360 test digits, at the sizes the calls use today: `log_prob` with K =
1,000 particles per row (`dgmlang.weights.CHUNK_CELLS` = 16,384 particle-rows at a time), and
`invert` of complete rows (1,000 proposals per row, `SIR_PROPOSALS`, 100 draws resampled).
The hand-written sampler (`baselines.VAENetworks`: the same encoder 64-256-256-32 and decoder
16-256-256-64) proposes z ~ q(z | x), weighs by p(x | z) p(z) / q(z | x) with
torch.distributions, in the same chunks of 16 rows x 1,000 particles; its invert resamples
with `torch.multinomial`. Weights (trained or not) do not change the arithmetic, so the
dgmlang model is fitted for a few steps only and the hand-written networks are as
initialised. Median of `--repeats` calls, one thread. dgmlang checks the distributions'
arguments on its first chunk of rows only (`posterior.checked_once`); the hand-written
sampler checks every chunk (torch's default) or none (`--hand-validation off`).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import math
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributions as td

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import LATENT_DIM, TOTAL_COUNT, VAENetworks, cpu_name  # noqa: E402

import dgmlang  # noqa: E402
from dgmlang.datasets import digits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS_PER_CHUNK = 16  # CHUNK_CELLS // K


def hand_log_weights(nets: VAENetworks, x: torch.Tensor, particles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, log w): `particles` proposals per row of `x` from the encoder and their weights."""
    loc, scale = nets.encoder(x)
    q = td.Independent(td.Normal(loc, scale), 1)
    z = q.sample((particles,))
    prior = td.Independent(td.Normal(torch.zeros_like(z), torch.ones_like(z)), 1)
    likelihood = td.Independent(td.Binomial(TOTAL_COUNT, logits=nets.decoder(z)), 1)
    return z, likelihood.log_prob(x) + prior.log_prob(z) - q.log_prob(z)


@torch.no_grad()
def hand_log_prob(nets: VAENetworks, x: torch.Tensor, particles: int) -> torch.Tensor:
    scores = []
    for chunk in x.split(ROWS_PER_CHUNK):
        _, log_w = hand_log_weights(nets, chunk, particles)
        scores.append(torch.logsumexp(log_w, 0) - math.log(particles))
    return torch.cat(scores)


@torch.no_grad()
def hand_invert(nets: VAENetworks, x: torch.Tensor, proposals: int, draws: int) -> torch.Tensor:
    out = []
    for chunk in x.split(ROWS_PER_CHUNK):
        z, log_w = hand_log_weights(nets, chunk, proposals)  # (K, B, d), (K, B)
        picks = torch.multinomial(torch.softmax(log_w, 0).T, draws, replacement=True)  # (B, draws)
        out.append(z.permute(1, 0, 2).gather(1, picks.unsqueeze(-1).expand(-1, -1, LATENT_DIM)))
    return torch.cat(out).transpose(0, 1)  # (draws, n, d)


def median_seconds(call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile(call, lines: int) -> str:
    profiler = cProfile.Profile()
    profiler.runcall(call)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(lines)
    return "\n".join(line for line in text.getvalue().splitlines()
                     if line.strip() and not line.startswith(("   Ordered", "   List")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", type=int, default=12, help="profile lines per call (0: none)")
    parser.add_argument("--hand-validation", choices=("on", "off"), default="on",
                        help="torch.distributions' argument checks in the hand-written sampler "
                             "(on: torch's default)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = digits()
    test = torch.as_tensor(data.test_x, dtype=torch.float32)
    model = dgmlang.load(ROOT / "examples" / "digits_vae.dgm")
    model.fit({"x": data.train_x}, steps=20, seed=0, progress=False)
    nets = VAENetworks(seed=0)
    n = len(test)
    calls = {
        "log_prob": (lambda: model.log_prob({"x": test}, num_samples=args.particles, seed=0, progress=False),
                     lambda: run_hand(hand_log_prob, nets, test, args.particles)),
        "invert": (lambda: model.invert({"x": test}, num_samples=args.draws, seed=0, progress=False),
                   lambda: run_hand(hand_invert, nets, test, args.particles, args.draws)),
    }

    def run_hand(function, *arguments):
        previous = td.Distribution._validate_args
        td.Distribution.set_default_validate_args(args.hand_validation == "on")
        try:
            return function(*arguments)
        finally:
            td.Distribution.set_default_validate_args(previous)

    print(f"digits_vae, {n} test rows, K = {args.particles}, invert draws = {args.draws}; {cpu_name()}, "
          f"torch {torch.__version__}, 1 thread, median of {args.repeats}; hand-written sampler's "
          f"argument checks {args.hand_validation}")
    print(f"{'call':>9s} {'dgmlang':>10s} {'hand-written':>13s} {'dgmlang rows/s':>15s} "
          f"{'hand rows/s':>12s} {'ratio':>7s}")
    for name, (ours, hand) in calls.items():
        t_ours, t_hand = median_seconds(ours, args.repeats), median_seconds(hand, args.repeats)
        print(f"{name:>9s} {t_ours:9.3f}s {t_hand:12.3f}s {n / t_ours:15,.0f} {n / t_hand:12,.0f} "
              f"{t_ours / t_hand:6.2f}x", flush=True)
    if args.profile:
        for name, (ours, _) in calls.items():
            print(f"\nwhere dgmlang's {name} spends its time (by own time):")
            print(profile(ours, args.profile))


if __name__ == "__main__":
    main()
