"""How the pipeline scales with the size of a model (issue 7).

Generated models of scalar latents, each stage timed on its own (CPU time of this process,
``time.process_time``, and wall time; the best of ``--repeats`` runs, so a busy machine
disturbs the figures less):

* **sparse**: a chain ``z0 -> z1 -> ... -> x`` observed at its end (the guide of each latent
  sees one value), with 10, 100 and 1,000 latents;
* **tree**: a binary tree of latents (heap order, ``z_i``'s parent is ``z_{i//2}``) observed at
  its leaves. Its faithful inverse is *not* sparse: the guide samples the deepest latents
  first, and a latent's posterior given the leaves depends on every leaf, so the first
  latents' guides see all of them (about n^2/2 guide inputs in all);
* **dense**: a chain with an observation on every latent, ``x_t ~ Normal(z_t, 1)`` (the guide
  of z_t sees x_1..x_t), up to 200 latents.

Stages: parse, check (names, shapes: the IR), graph, invert (the guide plan), compile (the
Pyro model and the guide's networks), first step (``fit(data, steps=1)`` on 64 points drawn
from the model). The table also gives the number of guide inputs, and for each stage its
growth exponent between consecutive sizes (time ~ n^k).

Then ``dgm check`` of a 10,000-line file (a chain of 5,000 latents) as a user runs it, in a
fresh process (start-up included), and ``log_prob`` with K = 1,000 on the 360 test digits.

A warm-up first compiles and fits a small model, so one-time costs of the process (imports,
the parser's grammar cache, torch's lazy imports) are reported apart.

Usage: ``python benchmarks/scale.py [--sizes 10,100,1000] [--dense 10,50,100,200]
[--repeats 3] [--threads 1] [--skip check,log_prob,tree]``
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # dgmlang, when not installed
sys.path.insert(1, str(Path(__file__).resolve().parent))  # baselines.py sits beside this file

import torch  # noqa: E402

STAGES = ("parse", "check", "graph", "invert", "compile", "first step")
BATCH = 64


def chain(latents: int, *, observe_every: bool = False) -> str:
    """``z0 -> z1 -> ... -> z_{n-1}``; observed at its end (one data variable x), or with
    ``x_t ~ Normal(z_t, 1)`` on every latent.

    >>> print(chain(2))
    model chain {
        latent z0
        latent z1
        data   x
        z0 ~ Normal(0, 1)
        z1 ~ Normal(z0, 1)
        x ~ Normal(z1, 1)
    }
    <BLANKLINE>
    """
    lines = ["model chain {"]
    lines += [f"    latent z{i}" for i in range(latents)]
    lines += [f"    data   x{i}" for i in range(latents)] if observe_every else ["    data   x"]
    lines.append("    z0 ~ Normal(0, 1)")
    lines += [f"    z{i} ~ Normal(z{i - 1}, 1)" for i in range(1, latents)]
    if observe_every:
        lines += [f"    x{i} ~ Normal(z{i}, 1)" for i in range(latents)]
    else:
        lines.append(f"    x ~ Normal(z{latents - 1}, 1)")
    lines.append("}")
    return "\n".join(lines) + "\n"


def tree(latents: int) -> str:
    """A binary tree of latents z1..zn in heap order (``z_i ~ Normal(z_{i // 2}, 1)``); every
    child position past n is an observed leaf ``x_c ~ Normal(z_{c // 2}, 1)``.

    >>> print(tree(2))
    model tree {
        latent z1
        latent z2
        data   x3
        data   x4
        data   x5
        z1 ~ Normal(0, 1)
        z2 ~ Normal(z1, 1)
        x3 ~ Normal(z1, 1)
        x4 ~ Normal(z2, 1)
        x5 ~ Normal(z2, 1)
    }
    <BLANKLINE>
    """
    leaves = [c for i in range(1, latents + 1) for c in (2 * i, 2 * i + 1) if c > latents]
    lines = ["model tree {"]
    lines += [f"    latent z{i}" for i in range(1, latents + 1)]
    lines += [f"    data   x{c}" for c in leaves]
    lines.append("    z1 ~ Normal(0, 1)")
    lines += [f"    z{i} ~ Normal(z{i // 2}, 1)" for i in range(2, latents + 1)]
    lines += [f"    x{c} ~ Normal(z{c // 2}, 1)" for c in leaves]
    lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass
class Timing:
    """Best CPU and wall seconds of each stage over the repeats."""

    cpu: dict[str, float] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)
    guide_inputs: int = 0

    def add(self, stage: str, cpu: float, wall: float) -> None:
        self.cpu[stage] = min(cpu, self.cpu.get(stage, math.inf))
        self.wall[stage] = min(wall, self.wall.get(stage, math.inf))


class _Clock:
    def __init__(self, timing: Timing):
        self.timing = timing

    def __call__(self, stage: str, fn, *args, **kwargs):
        cpu, wall = time.process_time(), time.perf_counter()
        result = fn(*args, **kwargs)
        self.timing.add(stage, time.process_time() - cpu, time.perf_counter() - wall)
        return result


def run_pipeline(text: str, timing: Timing, order: str = "nami") -> None:
    """Every stage once on `text`, into `timing`, the guide derived in `order`."""
    from dgmlang.check import check
    from dgmlang.graph import build_graph
    from dgmlang.compiled import CompiledModel
    from dgmlang.inverse import invert
    from dgmlang.parse import parse

    clock = _Clock(timing)
    program = clock("parse", parse, text, "generated.dgm")
    (ir,) = clock("check", check, program)
    graph = clock("graph", build_graph, ir)
    plan = clock("invert", invert, graph, order)
    model = clock("compile", CompiledModel, ir, plan, source=text, filename="generated.dgm")
    timing.guide_inputs = sum(len(step.inputs) for step in plan.steps)
    sample = model.sample(BATCH, seed=0)
    data = {name: sample[name] for name in ir.names("data")}
    clock("first step", model.fit, data, steps=1, batch_size=BATCH, seed=0, progress=False)


def measure(make, sizes: list[int], repeats: int, order: str = "nami") -> dict[int, Timing]:
    results = {}
    for n in sizes:
        timing = Timing()
        text = make(n)
        for _ in range(repeats):
            run_pipeline(text, timing, order)
        results[n] = timing
    return results


def print_table(title: str, results: dict[int, Timing]) -> None:
    print(f"\n{title}")
    header = (f"{'n':>6s} {'inputs':>8s} " + " ".join(f"{s:>11s}" for s in STAGES)
              + f" {'total':>8s} {'(wall)':>8s}")
    print(header)
    print("-" * len(header))
    previous = None
    for n, t in results.items():
        total, wall = sum(t.cpu.values()), sum(t.wall.values())
        cells = " ".join(f"{1e3 * t.cpu[s]:9.1f}ms" for s in STAGES)
        print(f"{n:6d} {t.guide_inputs:8d} {cells} {total:7.3f}s {wall:7.3f}s")
        if previous is not None:
            m, p = previous
            growth = " ".join(f"{_exponent(p.cpu[s], t.cpu[s], m, n):>11s}" for s in STAGES)
            total_growth = _exponent(sum(p.cpu.values()), total, m, n)
            print(f"{'':6s} {'n^k, k =':>8s} {growth} {total_growth:>8s}")
        previous = (n, t)


def _exponent(before: float, after: float, n_before: int, n_after: int) -> str:
    if before <= 0 or after <= 0:
        return "-"
    return f"{math.log(after / before) / math.log(n_after / n_before):.2f}"


def warm_up() -> tuple[float, float]:
    """Compile and fit a small model: imports and one-time set-up, timed apart."""
    cpu, wall = time.process_time(), time.perf_counter()
    timing = Timing()
    run_pipeline(chain(3), timing)
    return time.process_time() - cpu, time.perf_counter() - wall


def time_dgm_check(latents: int, repeats: int) -> tuple[int, float, float]:
    """``dgm check FILE`` in a fresh process on a generated chain: (lines, best CPU seconds of
    the child, best wall seconds)."""
    text = chain(latents)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "chain.dgm"
        path.write_text(text)
        command = [sys.executable, "-m", "dgmlang.cli", "check", str(path)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        subprocess.run(command, check=True, capture_output=True, env=env)  # warm the OS's file cache
        best_cpu = best_wall = math.inf
        for _ in range(repeats):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, env=env)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            best_cpu, best_wall = min(best_cpu, cpu), min(best_wall, wall)
    return text.count("\n"), best_cpu, best_wall


def time_log_prob(repeats: int) -> tuple[float, float]:
    """``log_prob`` with K = 1,000 on the 360 test digits (digits_vae after a few steps)."""
    import dgmlang
    from dgmlang.datasets import digits

    data = digits()
    model = dgmlang.load(ROOT / "examples" / "digits_vae.dgm")
    model.fit({"x": data.train_x}, steps=20, seed=0, progress=False)
    best_cpu = best_wall = math.inf
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        scores = model.log_prob({"x": data.test_x}, num_samples=1000, seed=0)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    assert scores.shape == (len(data.test_x),)
    return best_cpu, best_wall


def _machine() -> str:
    from baselines import cpu_name

    cpu = cpu_name()
    return (f"{cpu}, {os.cpu_count()} cores; python {platform.python_version()}, torch "
            f"{torch.__version__}; torch threads {torch.get_num_threads()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000", help="latents of the chain and the tree")
    parser.add_argument("--dense", default="10,50,100,200", help="latents of the fully observed chain")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size (the best is shown)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--check-latents", type=int, default=5000,
                        help="latents of the chain given to `dgm check` (two lines each)")
    parser.add_argument("--skip", default="", help="comma-separated: tree, dense, check, log_prob")
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    dense = [int(s) for s in args.dense.split(",") if s.strip()]

    torch.set_num_threads(args.threads)
    print(f"machine: {_machine()}")
    print(f"CPU time of this process (best of {args.repeats}); first step = fit(steps=1) on "
          f"{BATCH} points")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("note: PYTHONDONTWRITEBYTECODE is set, so every fresh process compiles dgmlang's "
              "sources again (start-up of `dgm check` includes it)")
    cpu, wall = warm_up()
    print(f"warm-up (imports, parser cache, first fit of a 3-latent chain): {cpu:.2f} s CPU, "
          f"{wall:.2f} s wall")

    print_table("chain observed at its end (sparse inverse)", measure(chain, sizes, args.repeats))
    if "tree" not in skip:
        print_table("binary tree observed at its leaves (its faithful inverse is dense)",
                    measure(tree, sizes, args.repeats))
    if "dense" not in skip:
        print_table("chain observed at every latent (dense inverse by nature)",
                    measure(lambda n: chain(n, observe_every=True), dense, args.repeats))
    if "check" not in skip:
        lines, cpu, wall = time_dgm_check(args.check_latents, args.repeats)
        print(f"\n`dgm check` of a {lines:,}-line file ({args.check_latents:,}-latent chain), "
              f"fresh process: {cpu:.2f} s CPU, {wall:.2f} s wall")
    if "log_prob" not in skip:
        cpu, wall = time_log_prob(args.repeats)
        print(f"log_prob, K = 1,000, 360 test digits (digits_vae): {cpu:.2f} s CPU, {wall:.2f} s wall")


if __name__ == "__main__":
    main()
