"""Time per training step: dgmlang's `fit` against the same models written by hand (issue 7).

Everything runs in one process on one thread, seeded. For each model, every implementation is
warmed up (JIT tracing, lazy guide construction), then timed in ``--repeats`` rounds of
``--steps`` steps; the implementations take turns within a round (in a rotating order), so a
slow spell of the machine hits them all alike. A round's time per step is its total time over
``--steps``; the table shows the median over rounds, the spread (min-max), and the ratio of
medians to plain PyTorch and to hand-written Pyro.

* plain PyTorch and hand-written Pyro: ``benchmarks/baselines.py`` (the same networks, the same
  estimator: the single-sample ELBO of a random minibatch of 128, per data point; Adam 1e-3);
* dgmlang: ``m = dgmlang.compile(TEXT)`` once, then ``m.fit(data, steps=N, batch_size=128,
  progress=False, fresh_optimizer=True)`` per round, as a user calls it, so data checks and
  batching are included (a fresh Adam each round: a later `fit` keeps the optimizer's state
  otherwise, which costs nothing per step but would make the rounds differ).

The last column is the mean loss per data point over the last round: the implementations train
for the same number of steps, so their losses should be alike (they are different random runs).

With ``--device cuda`` every implementation computes on the GPU: the baselines' networks are
built on the CPU and moved there, with their data and minibatch indices; dgmlang is
compiled with ``device="cuda"`` and given the data on the CPU, as a user would, so each of its
steps includes copying the minibatch over (`dgmlang.devices.to_device`). Times on a GPU are
taken after ``torch.cuda.synchronize()``.

``dmm`` (issue 14): a deep Markov model of the digits read as 8 rows of 8 pixels
(``baselines.DMM_TEXT``: z[8, 8], trans an mlp(64), emit an mlp(128), x[t] ~ Binomial(16);
dgmlang's derived guide, a GRU of width 64 run backward and a combiner), against the same model
and guide written by hand in Pyro in the layout of Pyro's ``examples/dmm.py`` (a ``pyro.markov``
loop over t, one site per step; ``baselines.PyroDMM``) and in plain PyTorch. Before the timing
its loss is checked against the plain-PyTorch one on the same weights (copied from dgmlang's):
the mean over 300 draws of each per-point loss on 256 rows, which must agree in expectation.

``compile`` (issue 15): ``digits_vae_bench`` trained by ``m.fit(..., compile=True)`` (the fast
path's step through ``torch.compile``, inductor) against the same eager plain-PyTorch step and
dgmlang's eager ``fit``, per step after the warm-up (whose seconds are printed). Before the
timing, one model is trained 200 steps eagerly and, from the same initial parameters and seed,
200 steps compiled: the mean loss per point over those steps must agree within 0.5%
(compiled random draws differ, so they are not equal).

Usage: ``python benchmarks/step_time.py [--steps 200] [--repeats 5] [--models vae,gmm,hvae,dmm,compile]
[--device cpu|cuda|cuda:N] [--quick]`` (``--quick``: 3 rounds of 50 steps after 5 warm-up steps,
a smoke run whose ratios are rougher).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # baselines.py sits beside this file
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # dgmlang, when not installed

import baselines as hand  # noqa: E402

VAE_TEXT = """
model digits_vae_bench {
    data   x[64]
    latent z[16] guide(hidden = [256, 256])

    z ~ Normal(0, 1)
    x ~ Binomial(16, logits = mlp(z, hidden = [256, 256]))
}
"""

HVAE_TEXT = """
model digits_hvae {
    data   x[64]
    latent z2[8]
    latent z1[16]

    z2 ~ Normal(0, 1)
    z1 ~ Normal(mlp(z2, hidden = [128]))
    x  ~ Binomial(16, logits = mlp(z1, hidden = [256, 256]))
}
"""

GMM_TEXT = """
model gmm {
    param  mu[3, 2]
    data   x[2]
    latent c

    c ~ Categorical(logits = zeros(3))
    x ~ Normal(mu[c], 0.5)
}
"""

GMM_POINTS = 1000

# Runs `steps` training steps and returns their losses per data point.
Runner = Callable[[int], list]


@dataclass(frozen=True)
class Implementation:
    name: str
    run: Runner


@dataclass(frozen=True)
class Benchmark:
    model: str
    text: str
    data: torch.Tensor
    reference_pyro: str  # the hand-written Pyro row the "vs Pyro" column divides by
    implementations: tuple[Implementation, ...]


def _repeat(step: hand.Step) -> Runner:
    return lambda steps: [step() for _ in range(steps)]


def _benchmarks(selected: list[str], seed: int, device: torch.device) -> list[Benchmark]:
    from dgmlang.datasets import digits

    train_x = digits().train_x  # dgmlang gets the data on the CPU, the baselines on `device`
    gmm_x = hand.gmm_data(GMM_POINTS, seed=seed)
    mu0 = hand.gmm_initial_means(seed=seed)
    x_on, gmm_on, mu0_on = train_x.to(device), gmm_x.to(device), mu0.to(device)

    def vae():  # built on the CPU, as dgmlang builds its networks, then moved
        return hand.VAENetworks(seed=seed).to(device)

    def hvae():
        return hand.HVAENetworks(seed=seed).to(device)

    def dmm():
        return hand.DMMNetworks(seed=seed).to(device)

    dmm_x = hand.dmm_data(train_x)
    dmm_on = dmm_x.to(device)

    builders = {
        "vae": lambda: Benchmark("vae", VAE_TEXT, train_x, "Pyro Trace_ELBO", (
            Implementation("plain PyTorch", _repeat(hand.plain_vae_step(vae(), x_on))),
            Implementation("Pyro Trace_ELBO", _repeat(hand.pyro_vae_step(vae(), x_on))),
            Implementation("Pyro JitTrace_ELBO",
                           _repeat(hand.pyro_vae_step(vae(), x_on, jit=True))),
        )),
        "gmm": lambda: Benchmark("gmm", GMM_TEXT, gmm_x, "Pyro TraceEnum_ELBO", (
            Implementation("plain PyTorch", _repeat(hand.plain_gmm_step(mu0_on, gmm_on))),
            Implementation("Pyro TraceEnum_ELBO", _repeat(hand.pyro_gmm_step(mu0_on, gmm_on))),
            Implementation("Pyro JitTraceEnum_ELBO", _repeat(hand.pyro_gmm_step(mu0_on, gmm_on, jit=True))),
        )),
        "compile": lambda: Benchmark("compile", VAE_TEXT, train_x, "plain PyTorch", (
            Implementation("plain PyTorch", _repeat(hand.plain_vae_step(vae(), x_on))),
        )),
        "hvae": lambda: Benchmark("hvae", HVAE_TEXT, train_x, "Pyro Trace_ELBO", (
            Implementation("plain PyTorch", _repeat(hand.plain_hvae_step(hvae(), x_on))),
            Implementation("Pyro Trace_ELBO", _repeat(hand.pyro_hvae_step(hvae(), x_on))),
            Implementation("Pyro JitTrace_ELBO",
                           _repeat(hand.pyro_hvae_step(hvae(), x_on, jit=True))),
        )),
        "dmm": lambda: Benchmark("dmm", hand.DMM_TEXT, dmm_x, "Pyro Trace_ELBO", (
            Implementation("plain PyTorch", _repeat(hand.plain_dmm_step(dmm(), dmm_on))),
            Implementation("Pyro Trace_ELBO", _repeat(hand.pyro_dmm_step(dmm(), dmm_on))),
            Implementation("Pyro JitTrace_ELBO",
                           _repeat(hand.pyro_dmm_step(dmm(), dmm_on, jit=True))),
        )),
    }
    return [builders[name]() for name in selected]


def _dgmlang_runner(text: str, data: torch.Tensor, device: torch.device, *,
                    compiled: bool = False) -> tuple[Runner | None, str]:
    """A runner calling dgmlang's `fit` (with ``compile=True`` when `compiled`), or None and
    the reason dgmlang cannot run yet."""
    try:
        from dgmlang import compile as dgm_compile
    except Exception as error:  # the package is being built; the baselines still print
        return None, f"not available ({type(error).__name__}: {error})"
    try:
        model = dgm_compile(text, device=device)
    except Exception as error:
        return None, f"not available (compile failed: {type(error).__name__}: {error})"
    if compiled:
        _compile_agreement(model, data)
    if text == hand.DMM_TEXT:
        _dmm_agreement(model, data)

    def run(steps: int) -> list:
        # a fresh Adam each round, as before fit kept the optimizer's state across calls
        return model.fit({"x": data}, steps=steps, batch_size=hand.BATCH_SIZE, progress=False,
                         fresh_optimizer=True, compile=compiled)

    return run, ""


def _compile_agreement(model, data: torch.Tensor, steps: int = 200, seed: int = 0) -> None:
    """Train `model` `steps` steps eagerly, then from the same initial parameters and seed
    `steps` steps compiled (the warm-up included); print both mean losses per point, their
    relative difference, and the warm-up's seconds. The model is left compiled and warm."""
    start = {"model": {k: v.clone() for k, v in model.model.state_dict().items()},
             "guide": {k: v.clone() for k, v in model.guide.state_dict().items()}}
    means = {}
    for compiled in (False, True):
        model.model.load_state_dict(start["model"])
        model.guide.load_state_dict(start["guide"])
        model.fitted, model.training_state = False, None
        losses = model.fit({"x": data}, steps=steps, batch_size=hand.BATCH_SIZE, progress=False,
                           fresh_optimizer=True, seed=seed, compile=compiled)
        means[compiled] = sum(losses) / len(losses)
    warmup = model.history.get("compile_seconds", [float("nan")])[-1]
    apart = abs(means[True] - means[False]) / abs(means[False])
    print(f"  compile warm-up {warmup:.1f} s; mean loss per point over {steps} steps from the same "
          f"start: eager {means[False]:.3f}, compiled {means[True]:.3f} ({100 * apart:.2f}% apart; "
          f"bar 0.5%: {'met' if apart <= 0.005 else 'NOT met'})")


def _dmm_agreement(model, data: torch.Tensor, rows: int = 256, draws: int = 300, seed: int = 0) -> None:
    """Print dgmlang's loss per point on `rows` rows (the fast path's `fit` computes, with the
    single-sample bound) and plain PyTorch's on the same weights (`DMMNetworks.copy_from`), each
    the mean of `draws` draws with its standard error: one estimator, so they agree in
    expectation (their draws differ: dgmlang draws the guide's noise for all steps at once)."""
    from dgmlang import fastpath

    model.fit({"x": data}, steps=1, batch_size=hand.BATCH_SIZE, progress=False)  # calibrated, built
    nets = hand.DMMNetworks().to(model.device).copy_from(model)
    fast = fastpath.build(model.ir, model.plan, model.model, model.guide)
    batch = data[:rows].to(model.device)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ours = torch.stack([fast.loss({"x": batch}, rows) / rows for _ in range(draws)])
        theirs = torch.stack([hand.dmm_elbo_loss(nets, batch) for _ in range(draws)])
    apart = float(ours.mean() - theirs.mean())
    error = float((ours.var() / draws + theirs.var() / draws).sqrt())
    print(f"  dmm loss per point on the same weights ({rows} rows, mean of {draws} draws): dgmlang "
          f"{float(ours.mean()):.3f}, plain PyTorch {float(theirs.mean()):.3f}; apart {apart:+.3f} "
          f"= {apart / error:+.1f} standard errors")


def _warm_up(implementations: list[Implementation], steps: int) -> list[Implementation]:
    """Run each implementation ``steps`` steps; drop (and say so) a dgmlang run that fails."""
    ready = []
    for impl in implementations:
        try:
            impl.run(steps)
        except Exception as error:
            if not impl.name.startswith("dgmlang fit"):
                raise
            print(f"  dgmlang: not available (fit failed: {type(error).__name__}: {error})")
            continue
        ready.append(impl)
    return ready


def _time_rounds(implementations: list[Implementation], steps: int, repeats: int):
    per_step = {impl.name: [] for impl in implementations}
    last_loss = {}
    for round_index in range(repeats):
        shift = round_index % len(implementations)
        for impl in implementations[shift:] + implementations[:shift]:
            _synchronize()
            start = time.perf_counter()
            losses = impl.run(steps)
            _synchronize()
            per_step[impl.name].append((time.perf_counter() - start) / steps)
            last_loss[impl.name] = sum(float(v) for v in losses) / len(losses)
    return per_step, last_loss


def _synchronize() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _machine(device: torch.device) -> str:
    cpu = hand.cpu_name()
    if device.type == "cuda":
        cpu = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), host {cpu}"
    import pyro

    return (f"{cpu}; torch {torch.__version__}, pyro {pyro.__version__}, python {platform.python_version()}; "
            f"torch threads {torch.get_num_threads()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per implementation")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (JIT, lazy building)")
    parser.add_argument("--models", default="vae,gmm,hvae,dmm,compile",
                        help="comma-separated: vae, gmm, hvae, dmm, compile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where every implementation computes")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 3 rounds of 50 steps after 5 warm-up steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.warmup = 50, 3, 5
    selected = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(selected) - {"vae", "gmm", "hvae", "dmm", "compile"})
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from vae, gmm, hvae, dmm, compile")

    from dgmlang.devices import device_of
    from dgmlang.errors import DGMError

    try:
        device = device_of(args.device)
    except DGMError as err:
        parser.exit(1, f"step_time.py: {err}\n")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    print(f"machine: {_machine(device)}; device {device}")
    print(f"{args.repeats} rounds of {args.steps} steps after {args.warmup} warm-up steps; "
          f"batch {hand.BATCH_SIZE}, Adam {hand.LEARNING_RATE}")
    header = f"{'model':6s} {'implementation':24s} {'ms/step':>8s} {'min-max':>13s} {'vs torch':>9s} {'vs Pyro':>8s} {'loss/pt':>9s}"
    for bench in _benchmarks(selected, args.seed, device):
        print(f"\n{header}\n{'-' * len(header)}")
        implementations = list(bench.implementations)
        dgm_run, why_not = _dgmlang_runner(bench.text, bench.data, device)
        if dgm_run is None:
            print(f"  dgmlang: {why_not}")
        else:
            implementations.append(Implementation("dgmlang fit", dgm_run))
        if bench.model == "compile" and dgm_run is not None:
            compiled_run, why_not = _dgmlang_runner(bench.text, bench.data, device, compiled=True)
            if compiled_run is not None:
                implementations.append(Implementation("dgmlang fit compile", compiled_run))
        implementations = _warm_up(implementations, args.warmup)
        per_step, last_loss = _time_rounds(implementations, args.steps, args.repeats)
        median = {name: statistics.median(times) for name, times in per_step.items()}
        for name, times in per_step.items():
            print(f"{bench.model:6s} {name:24s} {1e3 * median[name]:8.2f} "
                  f"{1e3 * min(times):6.2f}-{1e3 * max(times):<6.2f} "
                  f"{median[name] / median['plain PyTorch']:8.2f}x "
                  f"{median[name] / median[bench.reference_pyro]:7.2f}x "
                  f"{last_loss[name]:9.3f}")


if __name__ == "__main__":
    main()
