"""Why a training step went non-finite: the step recomputed site by site, after the failure.

`fit` checks only the loss and the gradients' sums on every step (cheap). When one is not
finite, `explain_failure` runs the failed step again with the same random numbers, through
Pyro's traces of the guide and the model, and looks at the sites in the order they were
drawn: the first whose value or log-density is not finite is named, with the rows of the
data set it went wrong at; for a gradient, each site's log-density is differentiated on its
own and the first whose gradient is not finite is named with the networks or parameters it
reaches. Nothing here runs on a healthy step.

>>> import dgmlang, torch
>>> m = dgmlang.compile('''
... model m {
...     data   x
...     latent z
...     z ~ Normal(0, 1)
...     x ~ Normal(z, 1)
... }''')
>>> batch = {"x": torch.tensor([0.0, float("inf")])}
>>> explain_failure(m, batch, rows=[7, 9], rng_state=torch.random.get_rng_state())
"the guide of 'z' reads a value that is not finite at data row 9"
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

import pyro
from pyro import poutine

from dgmlang.errors import rows_phrase

__all__ = ["argument_check_failed", "explain_failure"]


def argument_check_failed(err: ValueError) -> bool:
    """Whether `err` is torch's argument validation refusing a distribution's parameters or
    a value (what a non-finite or out-of-range argument raises while validation is on)."""
    return "Expected parameter" in str(err) or "Expected value" in str(err)


def explain_failure(model: Any, batch: Mapping[str, torch.Tensor], *, rows: Sequence[int],
                    rng_state: torch.Tensor,
                    parameters: Sequence[tuple[str, torch.nn.Parameter]] = ()) -> str | None:
    """What went non-finite first when the step on `batch` (data set rows `rows`, drawn with
    torch's RNG at `rng_state`) was recomputed; None when nothing did this time. With
    `parameters` (named, as `fit` steps them) a failed gradient is traced to its site."""
    saved = torch.random.get_rng_state()
    torch.random.set_rng_state(rng_state)
    try:
        with pyro.validation_enabled(False):  # non-finite values, not refusals, are sought
            return _explain(model, dict(batch), list(rows), list(parameters))
    except Exception as err:  # noqa: BLE001 - a diagnosis must never hide the failure itself
        return f"recomputing the step raised {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    finally:
        torch.random.set_rng_state(saved)


def _explain(model: Any, batch: dict, rows: list[int],
             named: list[tuple[str, torch.nn.Parameter]]) -> str | None:
    size = len(rows)
    guide_trace = poutine.trace(model.guide).get_trace(batch, size=size)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(
        batch, size=size)
    terms = []
    for owner, trace in (("guide", guide_trace), ("model", model_trace)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["name"] == "data":
                continue
            value = site["value"]
            log_p = site["fn"].log_prob(value)
            if owner == "guide" and not (_finite(value) and _finite(log_p)):
                reads = _guide_inputs(model, name, batch, rows)
                if reads:
                    return reads
                if not _finite(value):
                    return f"the guide drew a value of '{name}' that is not finite{_at(value, rows)}"
            if not _finite(log_p):
                where = "log q" if owner == "guide" else "log p"
                return f"{where} of '{name}' is not finite{_at(log_p, rows)}"
            terms.append((owner, name, log_p))
    if not named:
        return None
    params = [p for _, p in named]
    for owner, name, log_p in terms:
        if not log_p.requires_grad:
            continue
        grads = torch.autograd.grad(log_p.sum(), params, allow_unused=True, retain_graph=True)
        bad = [pname for (pname, _), g in zip(named, grads)
               if g is not None and not bool(torch.isfinite(g).all())]
        if bad:
            where = "log q" if owner == "guide" else "log p"
            return (f"the gradient of {where} of '{name}' is not finite in "
                    f"{', '.join(_network(p) for p in bad[:3])}")
    return None


def _guide_inputs(model: Any, latent: str, batch: dict, rows: list[int]) -> str | None:
    """The guide network of `latent` reading a non-finite value, named with its rows."""
    try:
        features = model.guide.network_input(latent, batch)
    except Exception:  # noqa: BLE001 - it reads a latent drawn in the guide, not in the batch
        return None
    if _finite(features):
        return None
    return f"the guide of '{latent}' reads a value that is not finite{_at(features, rows)}"


def _finite(value: torch.Tensor) -> bool:
    return not torch.is_floating_point(value) or bool(torch.isfinite(value).all())


def _at(value: torch.Tensor, rows: list[int]) -> str:
    """' at data row(s) ...' for a per-point value (the data plate is dim -1 of the batch
    dims, or the leading dim of a value drawn in the guide)."""
    if not torch.is_floating_point(value) or value.dim() == 0:
        return ""
    bad = ~torch.isfinite(value)
    n = len(rows)
    dims = [d for d in range(value.dim()) if value.shape[d] == n]
    if not dims:
        return ""
    dim = dims[0]
    per_row = bad.movedim(dim, 0).reshape(n, -1).any(-1)
    hit = [rows[i] for i in torch.nonzero(per_row).flatten().tolist()]
    if not hit:
        return ""
    return f" at data {rows_phrase(hit, most=5)}"


def _network(parameter: str) -> str:
    """'model.nets.mlp_1.layers.0.weight' -> "the model's network 'mlp_1'"."""
    parts = parameter.split(".")
    owner = "model's" if parts[0] == "model" else "guide's"
    if len(parts) > 2 and parts[1] == "nets":
        return f"the {owner} network '{parts[2]}'"
    if len(parts) > 2 and parts[1] == "params":
        return f"param '{parts[2].removesuffix('_unconstrained')}'"
    if len(parts) > 2 and parts[1] == "variational":
        return f"the guide's parameters of '{parts[2]}'"
    if len(parts) > 2 and parts[1] == "flows":
        return f"the guide's flow of '{parts[2]}'"
    return parameter
