"""Small Pyro/torch helpers shared by the testing kit: batches, prior draws, per-point scores,
and drawing from a guide for every data point at once."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping

import numpy as np
import pyro.poutine as poutine
import torch

from dgmlang import ir as irm


def as_batch(compiled, data: Any) -> dict[str, torch.Tensor]:
    """User data (dict of arrays, or one array) checked and converted to the model's tensors."""
    from dgmlang.data import prepare_data

    return dict(prepare_data(compiled.ir, data, purpose="testing").values)


def support_size(ir: irm.ModelIR, name: str) -> int:
    """How many values a scalar finite discrete variable takes (Bernoulli 2, Categorical K,
    Binomial total_count + 1)."""
    draw = ir.draw(name)
    if draw.dist == "Bernoulli":
        return 2
    if draw.dist == "Categorical":
        if draw.packed is not None:
            return draw.packed_params[0].shape[-1]
        expr = draw.param("logits") or draw.param("probs")
        return expr.shape[-1]
    if draw.dist == "Binomial":
        count = draw.param("total_count")
        if count is None:
            return 2
        if isinstance(count, irm.Lit) and not isinstance(count.value, tuple):
            return int(count.value) + 1
        raise ValueError(f"'{name}' has a total_count that is not a single literal")
    raise ValueError(f"'{name}' ({draw.dist}) is not a finite discrete variable")


def _int_input_classes(ir: irm.ModelIR, name: str) -> int:
    """The K of `onehot(name, K)` or the size of a dimension `name` indexes; 2 if unused."""
    found: list[int] = []

    def visit(expr):
        if isinstance(expr, irm.BuiltinCall):
            if expr.func == "onehot" and isinstance(expr.args[0], irm.Ref) and expr.args[0].name == name:
                found.append(int(expr.args[1].value))
            for a in expr.args:
                visit(a)
        elif isinstance(expr, irm.IndexExpr):
            visit(expr.value)
            value_shape = getattr(expr.value, "shape", ())
            for i, item in enumerate(expr.items):
                if isinstance(item, irm.Ref) and item.name == name and i < len(value_shape):
                    found.append(value_shape[i])
                elif not isinstance(item, irm.SliceItem):
                    visit(item)
        elif isinstance(expr, (irm.Unary,)):
            visit(expr.operand)
        elif isinstance(expr, irm.Binary):
            visit(expr.left)
            visit(expr.right)
        elif isinstance(expr, (irm.Stack, irm.NetCall)):
            for a in getattr(expr, "items", ()) or getattr(expr, "args", ()):
                visit(a)

    for draw in ir.draws:
        for _, expr in draw.params:
            visit(expr)
        if draw.packed is not None:
            visit(draw.packed)
    for let in ir.lets:
        visit(let.value)
    return min(found) if found else 2


def draw_inputs(ir: irm.ModelIR, n: int, given: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Every `input` for `n` points: `given` ones as they are, others drawn (reals standard
    normal, positives log-normal, units uniform, ints uniform over the classes they index)."""
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
            out[var.name] = torch.randint(0, _int_input_classes(ir, var.name), shape)
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
    with torch.no_grad():
        trace = poutine.trace(compiled.model).get_trace(dict(inputs), batch_size=n)
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
        if value.dim() >= 1 and value.shape[0] == n * num_samples and _in_plate(site):
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


def _in_plate(site) -> bool:
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
