"""What checkpointing costs a training step (issue 12, item 4).

One process, one thread, seeded. The model is examples/digits_vae.dgm on the digits training
set (1,437 rows, batch 128). Three ways of running ``m.fit(data, steps=N)`` take turns within
each of ``--repeats`` rounds (in a rotating order, so a slow spell of the machine hits them
alike), each on a fresh copy of the same model:

* ``none``: no checkpoint;
* ``default``: ``checkpoint=PATH`` with the defaults — a write every 60 s and one at the end
  (in a short round, only the one at the end);
* ``every K``: ``checkpoint=PATH, checkpoint_every=K`` — a write every K steps.

It prints the median time per step of each, side by side, the time of one checkpoint write
(`CompiledModel.save`: serialise, SHA-256 digest, fsync, rename; median of ``--writes``), and
what that write costs per step at the default cadence: one write per 60 s of training, i.e.
write time / 60 s of the training time.

Usage: ``python benchmarks/checkpoint_cost.py [--steps 200] [--repeats 5] [--every 50]``
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # dgmlang, when not installed

import dgmlang  # noqa: E402
from dgmlang.datasets import digits  # noqa: E402
from dgmlang.training import DEFAULT_CHECKPOINT_SECONDS  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per way")
    parser.add_argument("--every", type=int, default=50, help="K of the 'every K' way")
    parser.add_argument("--writes", type=int, default=20, help="checkpoint writes timed alone")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    text = (ROOT / "examples" / "digits_vae.dgm").read_text()
    data = {"x": digits().train_x}
    folder = Path(tempfile.mkdtemp(prefix="dgm-checkpoint-cost-"))
    ways = {
        "none": {},
        "default (60 s + end)": {"checkpoint": folder / "default.dgmfit"},
        f"every {args.every} steps": {"checkpoint": folder / "every.dgmfit", "checkpoint_every": args.every},
    }
    per_step: dict[str, list[float]] = {name: [] for name in ways}
    for name, options in ways.items():  # warm up: lazy building, first-step validation
        dgmlang.compile(text).fit(data, steps=5, seed=0, progress=False, **options)
    for round_index in range(args.repeats):
        names = list(ways)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            m = dgmlang.compile(text)
            start = time.perf_counter()
            m.fit(data, steps=args.steps, seed=round_index, progress=False, **ways[name])
            per_step[name].append((time.perf_counter() - start) / args.steps)

    model = dgmlang.load_fitted(folder / "default.dgmfit")
    writes = []
    for _ in range(args.writes):
        start = time.perf_counter()
        model.save(folder / "alone.dgmfit")
        writes.append(time.perf_counter() - start)
    write = statistics.median(writes)
    size = (folder / "alone.dgmfit").stat().st_size

    base = statistics.median(per_step["none"])
    print(f"digits_vae, batch 128, 1 thread; torch {torch.__version__}; {args.repeats} rounds of "
          f"{args.steps} steps; medians")
    print(f"{'checkpointing':24s} {'ms/step':>8s} {'min-max':>15s} {'vs none':>8s}")
    for name, times in per_step.items():
        median = statistics.median(times)
        print(f"{name:24s} {1e3 * median:8.2f} {1e3 * min(times):7.2f}-{1e3 * max(times):<7.2f} "
              f"{100 * (median / base - 1):+7.2f}%")
    print(f"one checkpoint write: {1e3 * write:.2f} ms (median of {args.writes}; file {size / 1e6:.2f} MB)")
    print(f"its cost per step: every {args.every} steps {100 * write / (args.every * base):.3f}% of a step; "
          f"at the default (one per {DEFAULT_CHECKPOINT_SECONDS:.0f} s) "
          f"{100 * write / DEFAULT_CHECKPOINT_SECONDS:.4f}% of training time")


if __name__ == "__main__":
    main()
