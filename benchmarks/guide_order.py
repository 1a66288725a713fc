"""NaMI's natural elimination order against min-fill (issue 15, item 4): guide size, time
from text to the first step, and KL to the exact posterior, side by side in one run.

    python benchmarks/guide_order.py                     # about 10 minutes on 2 cores
    python benchmarks/guide_order.py --models 4 --steps 500   # a smoke run

* **size**: binary trees of latents in heap order observed at their leaves (`scale.tree`),
  15, 127 and 1,023 latents: the total number of inputs the guide networks read, and the
  CPU time from text to the end of the first training step (`scale.run_pipeline`).
* **KL**: random scalar linear-Gaussian trees (each latent has at most one latent parent) and
  DAGs (up to two), 5 to 8 latents, data under the deepest latents; the guide (the default
  normal family, whose conditionals can be exact here) trained on the prior predictive with
  `dgmlang.testing.train_guide` in either order, then the mean KL(q || p) over 200 simulated
  points against the exact Gaussian posterior. Only the models whose two plans differ are
  trained (the others would give the same numbers twice).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import Timing, run_pipeline, tree  # noqa: E402

from dgmlang.compiled import CompiledModel  # noqa: E402
from dgmlang.frontend import check_source  # noqa: E402
from dgmlang.inverse import ORDERS  # noqa: E402
from dgmlang.testing import LinearEdge, LinearGaussianModel, LinearNode, gaussian_kl, train_guide  # noqa: E402


def random_network(rng: np.random.Generator, *, latents: int, max_parents: int, name: str) -> LinearGaussianModel:
    """Scalar latents z1..zL, each with up to `max_parents` earlier latents as parents (the
    first none), and one or two data nodes under each latent without latent children."""
    nodes: list[LinearNode] = []
    for i in range(1, latents + 1):
        earlier = [n.name for n in nodes]
        count = 0 if not earlier else int(rng.integers(1, min(max_parents, len(earlier)) + 1))
        parents = rng.choice(earlier, size=count, replace=False) if count else []
        edges = tuple(LinearEdge(str(p), float(rng.choice([-1.5, -0.8, 0.7, 1.2]))) for p in parents)
        nodes.append(LinearNode(f"z{i}", "latent", (), edges, 0.0, float(rng.choice([0.5, 1.0]))))
    has_child = {e.parent for n in nodes for e in n.edges}
    leaves = [n.name for n in nodes if n.name not in has_child]
    for j, leaf in enumerate(leaves * 2 if len(leaves) < 3 else leaves, start=1):
        nodes.append(LinearNode(f"x{j}", "data", (), (LinearEdge(leaf, float(rng.choice([0.8, 1.5]))),),
                                0.0, float(rng.choice([0.3, 0.6]))))
    return LinearGaussianModel(name, tuple(nodes), "normal")


#: One cell of `size_table`, run as its own process: a warm-up (imports and one-time set-up),
#: then the pipeline; prints the guide's inputs and the CPU seconds. It imports what a
#: user's script does (dgmlang, and `scale` for the model text and the clock), not this
#: benchmark's numpy, scikit-learn and testing helpers: a bigger heap makes every full
#: collection of the cycle collector slower, and one falls in the first step.
CELL = """
import sys
sys.path.insert(0, sys.argv[4])
import torch
torch.set_num_threads(int(sys.argv[3]))
from scale import Timing, run_pipeline, tree
run_pipeline(tree(3), Timing())
timing = Timing()
run_pipeline(tree(int(sys.argv[2])), timing, sys.argv[1])
print(timing.guide_inputs, sum(timing.cpu.values()))
"""


def size_table(sizes: list[int], threads: int) -> None:
    """Each cell in a process of its own, as a user's `dgm fit` is: a model built before in
    the same process (NaMI's 1,023-latent one holds half a million inputs) leaves the heap
    and the allocator in another state, which alone moves the next one by 0.2-0.3 s."""
    print("binary tree observed at its leaves: guide inputs and CPU seconds from text to first step")
    print(f"{'latents':>8s}" + "".join(f" {o + ' inputs':>15s} {o + ' time':>13s}" for o in ORDERS))
    here = str(Path(__file__).resolve().parent)
    for n in sizes:
        cells = []
        for order in ORDERS:
            out = subprocess.run([sys.executable, "-c", CELL, order, str(n), str(threads), here],
                                 check=True, capture_output=True, text=True).stdout.split()
            cells.append(f" {int(out[-2]):15,d} {float(out[-1]):12.2f}s")
        print(f"{n:8d}" + "".join(cells), flush=True)


def kl_table(models: int, steps: int, points: int) -> None:
    print(f"\nKL(q || p) per point, nats (guides trained {steps} steps on the prior predictive, "
          f"{points} test points)")
    print(f"{'model':>10s} {'latents':>8s} {'nami inputs':>12s} {'minfill inputs':>15s} "
          f"{'nami KL':>9s} {'minfill KL':>11s} {'difference':>11s}")
    differences = {"tree": [], "dag": []}
    for kind, max_parents in (("tree", 1), ("dag", 2)):
        rng = np.random.default_rng(0 if kind == "tree" else 1)
        tried = 0
        while len(differences[kind]) < models and tried < 20 * models:
            tried += 1
            lg = random_network(rng, latents=int(rng.integers(5, 9)), max_parents=max_parents,
                                name=f"{kind}{tried}")
            plans = {o: check_source(lg.text, guide_order=o)[0] for o in ORDERS}
            if plans["nami"].plan.steps == plans["minfill"].plan.steps:
                continue
            data = lg.sample(points, seed=1)
            observed = {k: data[k] for k in lg.names("data")}
            posterior = lg.posterior(observed)
            kls, inputs = {}, {}
            for order, checked in plans.items():
                torch.manual_seed(0)
                model = CompiledModel(checked.ir, checked.plan, source=lg.text, filename=lg.name,
                                      facts=checked.facts)
                train_guide(model, steps=steps, seed=0)
                kls[order] = float(gaussian_kl(model, posterior, observed, num_samples=200).mean())
                inputs[order] = sum(len(s.inputs) for s in checked.plan.steps)
            difference = kls["minfill"] - kls["nami"]
            differences[kind].append(difference)
            latents = len(lg.names("latent"))
            print(f"{lg.name:>10s} {latents:8d} {inputs['nami']:12d} {inputs['minfill']:15d} "
                  f"{kls['nami']:9.4f} {kls['minfill']:11.4f} {difference:+11.4f}", flush=True)
    for kind, values in differences.items():
        if values:
            print(f"{kind}s: minfill - nami over {len(values)} models: mean {np.mean(values):+.4f}, "
                  f"worst {max(values):+.4f} nats (bar: at most +0.02)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="15,127,1023")
    parser.add_argument("--models", type=int, default=6, help="models of each kind whose plans differ")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    size_table([int(n) for n in args.sizes.split(",")], args.threads)
    kl_table(args.models, args.steps, args.points)
    print(f"\n{time.perf_counter() - start:.0f} s in all; torch {torch.__version__}, {args.threads} thread(s)")


if __name__ == "__main__":
    main()
