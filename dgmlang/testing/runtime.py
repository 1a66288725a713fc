"""The torch and Pyro helpers the testing kit shares: batches, inputs and prior draws,
per-point scores, drawing from a guide for every data point at once, and the model's own
class probabilities of the latents it sums out.

The other modules of `dgmlang.testing` import this one inside the functions that run a
model, so ``import dgmlang.testing`` itself does not load torch.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from dgmlang.data import prepare_data
from dgmlang.facts import ModelFacts
from dgmlang.testing.plans import facts_of


def as_batch(compiled, data: Any) -> dict[str, torch.Tensor]:
    """User data (dict of arrays, or one array) checked and converted to the model's tensors."""
    return dict(prepare_data(compiled.ir, data, purpose="testing").values)


def support_size(facts: ModelFacts, name: str) -> int:
    """How many values a scalar finite discrete variable takes (Bernoulli 2, Categorical K,
    Binomial total_count + 1): `ModelFacts.classes`, with a reason when it has none."""
    k = facts.classes(name)
    if k is not None:
        return k
    draw = facts.draws[name]
    if draw.dist == "Binomial":
        raise ValueError(f"'{name}' has a total_count that is not a single literal")
    raise ValueError(f"'{name}' ({draw.dist}) is not a finite discrete variable")


def int_input_classes(facts: ModelFacts, name: str) -> int:
    """How many values an integer `name` may take where it is used: the smallest K of its
    `onehot(name, K)` and of the dimensions it indexes (`ModelFacts.integer_uses`); 2 if unused."""
    return min((use.limit for use in facts.integer_uses.get(name, ())), default=2)


def draw_inputs(compiled, n: int, given: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Every `input` of a compiled model for `n` points: `given` ones as they are, others drawn
    (reals standard normal, positives log-normal, units uniform, ints uniform over the classes
    they index)."""
    ir = compiled.ir
    given = dict(given or {})
    out = {}
    for var in ir.variables:
        if var.role != "input":
            continue
        if var.name in given:
            out[var.name] = torch.as_tensor(given[var.name])
            continue
        shape = (n, *var.shape)
        if var.type == "int":
            out[var.name] = torch.randint(0, int_input_classes(facts_of(compiled), var.name), shape)
        elif var.type == "positive":
            out[var.name] = torch.randn(shape).exp()
        elif var.type == "unit":
            out[var.name] = torch.rand(shape)
        elif var.type == "simplex":
            out[var.name] = torch.distributions.Dirichlet(torch.ones(var.shape)).sample((n,))
        else:
            out[var.name] = torch.randn(shape)
    return out


def prior_draw(compiled, inputs: Mapping[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Every global, latent and data variable drawn from the model (params as they are)."""
    from dgmlang.posterior import forward_trace

    with torch.no_grad():
        trace = forward_trace(compiled.model, inputs, n)
    return {
        name: site["value"].detach()
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
    }


def point_log_prob(trace, n: int) -> torch.Tensor:
    """The sum of every sample site's log density per data point, `(n,)` (unscaled).
    Sites outside the data plate (globals) are added to every point."""
    trace.compute_log_prob()
    total = torch.zeros(n, dtype=torch.float64)
    for site in trace.nodes.values():
        if site["type"] == "sample":
            total = total + site["log_prob"].double()
    return total


def repeat_rows(batch: Mapping[str, torch.Tensor], times: int) -> dict[str, torch.Tensor]:
    """Each point's row repeated `times` times, sample-major: row ``s * n + i`` is point i."""
    return {k: v.repeat(times, *([1] * (v.dim() - 1))) for k, v in batch.items()}


def guide_draws(
    guide: Callable, batch: Mapping[str, torch.Tensor], num_samples: int, *, names=None
) -> dict[str, torch.Tensor]:
    """`num_samples` draws of every guide site for each point of `batch`.

    The batch is repeated `num_samples` times along the data plate, so one guide call serves
    every draw (and any guide works, however its networks treat extra batch dims). Local
    sites come back `(num_samples, n, *shape)`; sites outside the plate (globals) are drawn
    once per call, so they are drawn by `num_samples` separate calls: `(num_samples, *shape)`.
    """
    n = len(next(iter(batch.values())))
    with torch.no_grad():
        trace = poutine.trace(guide).get_trace(repeat_rows(batch, num_samples))
    out: dict[str, torch.Tensor] = {}
    global_sites = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or (names and name not in names):
            continue
        value = site["value"].detach()
        if value.dim() >= 1 and value.shape[0] == n * num_samples and in_plate(site):
            out[name] = value.reshape(num_samples, n, *value.shape[1:])
        else:
            global_sites.append(name)
    if global_sites:
        draws = {name: [] for name in global_sites}
        with torch.no_grad():
            for _ in range(num_samples):
                t = poutine.trace(guide).get_trace(dict(batch))
                for name in global_sites:
                    draws[name].append(t.nodes[name]["value"].detach())
        out.update({name: torch.stack(v) for name, v in draws.items()})
    return out


def in_plate(site) -> bool:
    """Whether a trace site lies inside a plate (the data plate: a local site)."""
    return any(frame.name is not None and frame.dim is not None for frame in site["cond_indep_stack"])


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)


@contextlib.contextmanager
def seeded(seed: int | None):
    """Fork torch's RNG (Pyro draws from it) and seed it; the caller's state is restored."""
    with torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        yield


def class_probs(dist, k: int) -> np.ndarray:
    """P(value = c) for c in 0..k-1 of a finite discrete distribution, `(*batch, k)`: works
    for whatever `TraceEnum_ELBO.compute_marginals` returns (Bernoulli, Categorical, ...)."""
    with torch.no_grad():
        values = [torch.full(dist.batch_shape, float(c)) for c in range(k)]
        return np.stack([to_numpy(dist.log_prob(v).exp()) for v in values], axis=-1)


def model_marginals(model, batch: Mapping[str, torch.Tensor], guide: Callable, name: str, k: int,
                    num_samples: int, seed: int, has_globals: bool,
                    conditioned: Callable | None = None) -> np.ndarray:
    """p(name = c | x, everything the guide samples), averaged over the guide's draws:
    `(n, k)`. Pyro's `TraceEnum_ELBO.compute_marginals` does the exact sum; `conditioned`
    replaces the model (e.g. the model conditioned on reference draws)."""
    n = len(next(iter(batch.values())))
    chunks = min(num_samples, 50) if has_globals else 1
    per_chunk = max(1, num_samples // chunks)
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=model.model.max_plate_nesting)
    total = np.zeros((n, k))
    with seeded(seed), torch.no_grad():
        for _ in range(chunks):
            marginals = elbo.compute_marginals(conditioned or model.model, guide,
                                               repeat_rows(batch, per_chunk))
            probs = class_probs(marginals[name], k)
            total += probs.reshape(per_chunk, n, k).mean(0)
    return total / chunks


__all__ = [
    "as_batch", "support_size", "int_input_classes", "draw_inputs", "prior_draw",
    "point_log_prob", "repeat_rows", "guide_draws", "in_plate", "to_numpy", "seeded",
    "class_probs", "model_marginals",
]
