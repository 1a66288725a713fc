"""Issue 15 item 1: the digits log-likelihood with epochs chosen on a validation split.

Fits ``examples/digits_best.dgm`` with IWAE on the first 1,237 training digits, in chunks of
``--chunk`` epochs; after each chunk it scores the last 200 training digits (the fixed
validation split, never the test split) with ``log_prob`` (K = ``--val-samples``) and keeps
the parameters of the best chunk. Only the kept parameters are scored on the test split
(K = 1000). Prints one line per seed and the mean; the bar is -85.3 nats per image.

Usage (from the repository root; one thread)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/digits_best.py --seeds 0 1

>>> args = parse_args(["--epochs", "20", "--chunk", "10"])
>>> args.particles, args.epochs // args.chunk
(20, 2)
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL_FILE = ROOT / "examples" / "digits_best.dgm"
VALIDATION_ROWS = 200
BAR = -85.3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--chunk", type=int, default=25, help="epochs between validation scores")
    parser.add_argument("--particles", type=int, default=20, help="IWAE particles in training")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-samples", type=int, default=200, help="K of the validation estimate")
    parser.add_argument("--num-samples", type=int, default=1000, help="K of the test estimate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    return parser.parse_args(argv)


def run(args: argparse.Namespace, seed: int, train_x, val_x, test_x) -> dict:
    """One seed: train in chunks, keep the best chunk by validation LL, score it on test."""
    import dgmlang

    model = dgmlang.load(MODEL_FILE)
    best = (float("-inf"), 0, None)
    start = time.perf_counter()
    for done in range(args.chunk, args.epochs + 1, args.chunk):
        model.fit({"x": train_x}, epochs=args.chunk, objective="iwae", num_particles=args.particles,
                  lr=args.lr, seed=seed, progress=False, resume=done > args.chunk)
        val = model.log_prob({"x": val_x}, num_samples=args.val_samples, seed=seed).mean().item()
        print(f"  seed {seed} epoch {done}: validation {val:.2f}", flush=True)
        if val > best[0]:
            best = (val, done, (copy.deepcopy(model.model.state_dict()),
                                copy.deepcopy(model.guide.state_dict())))
    seconds = time.perf_counter() - start
    model.model.load_state_dict(best[2][0])
    model.guide.load_state_dict(best[2][1])
    test = model.log_prob({"x": test_x}, num_samples=args.num_samples, seed=seed).mean().item()
    return {"seed": seed, "epoch": best[1], "validation": best[0], "test": test, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    from dgmlang.datasets import digits

    data = digits()
    train_x, val_x = data.train_x[:-VALIDATION_ROWS], data.train_x[-VALIDATION_ROWS:]
    print(f"digits_best: IWAE K={args.particles}, lr {args.lr}, up to {args.epochs} epochs in chunks of "
          f"{args.chunk}; {len(train_x)} train / {len(val_x)} validation / {len(data.test_x)} test")
    results = [run(args, seed, train_x, val_x, data.test_x) for seed in args.seeds]
    for r in results:
        print(f"seed {r['seed']}: kept epoch {r['epoch']}, validation {r['validation']:.2f} (K={args.val_samples}), "
              f"test {r['test']:.2f} (K={args.num_samples}), {r['seconds']:.0f} s")
    tests = [r["test"] for r in results]
    print(f"test mean {sum(tests) / len(tests):.2f} nats per image; bar {BAR}: "
          f"{'met' if min(tests) >= BAR else 'missed'} on every seed" if min(tests) >= BAR else
          f"test mean {sum(tests) / len(tests):.2f} nats per image; bar {BAR}: missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
