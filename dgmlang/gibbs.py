"""Metropolis-within-Gibbs for data points with missing entries (Mattei & Frellsen 2018).

`invert` (`dgmlang.posterior`) hands the points with missing entries to `gibbs`: one chain
per posterior draw and data point targets p(latents, missing entries | observed entries).
A sweep updates the latents (an independent Metropolis-Hastings step with the guide as
proposal, then a random-walk step), draws the latents the model sums out from their exact
conditional, then redraws the missing entries variable by variable. Chains start from the
prior predictive and run `WARMUP_SWEEPS` sweeps that accept every guide proposal
(pseudo-Gibbs, Rezende et al. 2014) before `GIBBS_SWEEPS` exact ones.

Every function takes the compiled model (`dgmlang.compiled.CompiledModel`) and reads its
public attributes only: `model`, `guide`, `roles`.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

import pyro
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import infer_discrete
from pyro.poutine.util import prune_subsample_sites

from dgmlang.data import Dataset
from dgmlang.devices import to_device
from dgmlang.errors import DGMDataError
from dgmlang.marginals import redraw
from dgmlang import weights as importance
from dgmlang.weights import importance_weights

__all__ = ["GIBBS_SWEEPS", "WARMUP_SWEEPS", "gibbs", "run_chains"]

#: Warm-up sweeps of each `invert` chain that accept every guide proposal (pseudo-Gibbs,
#: Rezende et al. 2014): they only move the chains near the posterior before the exact sweeps.
WARMUP_SWEEPS = 20
#: Metropolis-within-Gibbs sweeps per chain when `invert` fills missing entries.
GIBBS_SWEEPS = 100


def gibbs(model: Any, part: Dataset, globals_: dict[str, torch.Tensor], draws: int) -> dict:
    """`draws` posterior samples for every point of `part`, one chain each (see
    `run_chains`). Without globals the chains of a chunk of points run side by side as rows;
    with globals, one batch of chains per posterior draw of the globals, which stay fixed
    in it."""
    if globals_:
        runs = [_chains_or_error(model, part, {g: v[s] for g, v in globals_.items()}, range(part.n))
                for s in range(draws)]
        return {name: torch.stack([run[name] for run in runs]) for name in runs[0]}
    points = max(1, min(part.n, importance.CHUNK_CELLS // draws))
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, part.n, points):
        chunk = part.rows(slice(start, start + points))
        chains = _chains_or_error(model, chunk.repeated(draws), {}, range(start, start + chunk.n))
        for name, value in chains.items():
            out.setdefault(name, []).append(value.reshape(draws, chunk.n, *value.shape[1:]))
    return {name: torch.cat(values, dim=1) for name, values in out.items()}


def _chains_or_error(model: Any, part: Dataset, given: dict[str, torch.Tensor], rows: range) -> dict:
    """`run_chains`, a distribution's failure on values the chains reached (a heavy-tailed
    draw overflowing to inf, then NaN parameters) made a `DGMDataError` whose ``rows`` are
    `rows` (the points of `part`, counted in the caller's part)."""
    try:
        return run_chains(model, part, given)
    except (ValueError, RuntimeError) as failure:
        err = DGMDataError(f"invert: the Gibbs chains reached values where the model fails ({failure})")
        err.rows = list(rows)  # type: ignore[attr-defined]
        raise err from None


def run_chains(model: Any, part: Dataset, given: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One chain per row of `part`, targeting p(latents, missing entries | observed ones,
    `given`). A sweep updates the latents (`_update_locals`), draws the latents the model
    sums out from their exact conditional, then redraws the missing entries
    (`_redraw_missing`). Chains start from the prior predictive, run `WARMUP_SWEEPS`
    sweeps that accept every guide proposal, then `GIBBS_SWEEPS` exact sweeps; the last
    state is returned (data, latents, summed-out latents by name, one row per chain)."""
    roles = model.roles
    rows = part.n
    values = to_device(part.values, model.model.device)  # the chains run on the model's device
    observed = to_device(part.observed, model.model.device)
    inputs = {name: values[name] for name in roles.inputs}
    pyro_model = poutine.condition(model.model, data=given) if given else model.model
    prior = poutine.trace(pyro_model).get_trace(inputs, batch_size=rows)
    data = {}
    for name in roles.data:
        value = values[name]
        if name in observed:
            value = redraw(prior.nodes[name]["fn"], value, observed[name], prior.nodes[name]["value"])
        data[name] = value
    # Missing entries of a variable nothing depends on are summed out when the discrete
    # latents are drawn (the model's mask), so those and the entries are drawn jointly.
    leaves = {n: m for n, m in observed.items() if not roles.has_children[n]}
    exact = not roles.guide_locals and len(leaves) == len(observed)
    latents: dict[str, torch.Tensor] = {}
    enumerated: dict[str, torch.Tensor] = {}
    for sweep in range(1 if exact else WARMUP_SWEEPS + GIBBS_SWEEPS):
        batch = {**inputs, **data}
        # as in fit: argument validation on the first sweep only (the values it would
        # check later come from the same distributions)
        with pyro.validation_enabled(False) if sweep else contextlib.nullcontext():
            if roles.guide_locals:
                latents = _update_locals(model, batch, given, latents, warmup=sweep < WARMUP_SWEEPS)
            enumerated = _sample_enumerated_rows(model, batch, {**latents, **given}, leaves)
            data = _redraw_missing(model, observed, inputs, data, {**latents, **enumerated, **given})
    return {**data, **latents, **enumerated}


def _update_locals(model: Any, batch, given, latents, *, warmup: bool) -> dict[str, torch.Tensor]:
    """The latents' Gibbs block: an independent Metropolis-Hastings step with the guide
    q(z | completed data) as proposal, then a random-walk step (during warm-up, the
    proposal is taken as it is)."""
    proposal = importance_weights(model, batch, particles=None, given=given)
    proposed = {n: proposal.guide_trace.nodes[n]["value"] for n in model.roles.guide_locals}
    if warmup:
        return proposed
    current = importance_weights(model, batch, particles=None, given=given, guide_values=latents)
    gain = proposal.local - current.local
    accept = torch.rand(gain.shape[0], device=gain.device).log() < gain
    latents = {n: _where_rows(accept, proposed[n], latents[n]) for n in latents}
    log_p = torch.where(accept, proposal.log_p, current.log_p)
    return _random_walk(model, batch, given, latents, log_p)


def _random_walk(model: Any, batch, given, latents, log_p) -> dict[str, torch.Tensor]:
    """A random-walk Metropolis step on the real-valued latents, the increment the
    difference of two independent guide draws over sqrt(2): symmetric and scaled like the
    posterior, it keeps chains moving where the guide is too narrow for the independent
    proposal to be accepted."""
    if not model.roles.real_locals:
        return latents
    guide = poutine.condition(model.guide, data=given) if given else model.guide
    first, second = (poutine.trace(guide).get_trace(batch) for _ in range(2))
    moved = dict(latents)
    for name in model.roles.real_locals:
        step = first.nodes[name]["value"] - second.nodes[name]["value"]
        moved[name] = latents[name] + step / math.sqrt(2)
    new = importance_weights(model, batch, particles=None, given=given, guide_values=moved)
    accept = torch.rand(log_p.shape[0], device=log_p.device).log() < new.log_p - log_p
    return {n: _where_rows(accept, moved[n], latents[n]) for n in latents}


def _sample_enumerated_rows(model: Any, batch, fixed, mask) -> dict[str, torch.Tensor]:
    """The latents the model sums out, drawn from their exact conditional for chains laid
    out as rows (no particle plate); entries False in `mask` are left out of the likelihood
    (marginalized)."""
    if not model.roles.model_enumerated:
        return {}
    pyro_model = infer_discrete(poutine.condition(model.model, data=fixed),
                                first_available_dim=-2, temperature=1)
    trace = poutine.trace(pyro_model).get_trace(batch, mask=mask)
    rows = next(iter(batch.values())).shape[0]
    # one per row: a draw whose distribution depends on no per-row value comes back
    # unbatched for a single row (scalar latents only are summed out)
    return {name: trace.nodes[name]["value"].expand(rows) for name in model.roles.model_enumerated}


def _redraw_missing(model: Any, observed: dict[str, torch.Tensor], inputs, data,
                    fixed) -> dict[str, torch.Tensor]:
    """One Gibbs sweep over the missing entries (False in `observed`, per data variable
    with any), data variable by data variable in topological order: propose them from the
    model given their parents; a variable that other variables depend on is accepted with
    the Metropolis-Hastings ratio of those."""
    pyro_model = poutine.condition(model.model, data=fixed)
    data = dict(data)
    for name in model.roles.data:
        if name not in observed:
            continue
        trace = poutine.trace(pyro_model).get_trace({**inputs, **data})
        value = data[name]
        proposed = redraw(trace.nodes[name]["fn"], value, observed[name])
        if model.roles.has_children[name]:
            new_trace = poutine.trace(pyro_model).get_trace({**inputs, **data, name: proposed})
            gain = (_others_log_prob(new_trace, name, value.device)
                    - _others_log_prob(trace, name, value.device))
            accept = torch.rand(value.shape[0], device=value.device).log() < gain
            proposed = _where_rows(accept, proposed, value)
        data[name] = proposed
    return data


def _where_rows(accept: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """`new` in the rows (leading dim) where `accept`, else `old`."""
    return torch.where(accept.reshape(-1, *(1,) * (new.dim() - 1)), new, old)


def _others_log_prob(trace: poutine.Trace, name: str, device: torch.device) -> torch.Tensor:
    """Per row: the log density of every site in `trace` but `name` (rows = data plate;
    zero on `device` when there is no other site)."""
    total: torch.Tensor | float = 0.0
    for site_name, site in prune_subsample_sites(trace).nodes.items():
        if site["type"] != "sample" or site_name == name:
            continue
        log_p = scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"])
        total = total + log_p
    return total if torch.is_tensor(total) else torch.zeros((), device=device)
