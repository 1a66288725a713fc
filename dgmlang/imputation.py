"""Importance sampling for data points with missing entries, from a mixture of guides.

The guide reads whole data points. Given one with missing entries it must read them filled
somehow, and a guide reading one filling proposes latents that explain that filling: too
narrow a proposal for p(z | observed entries), which is as broad as the missing entries
leave it. `mixture_weights` proposes from the mixture over F fillings,

    q(z) = 1/(F+1) [p(z) + sum_f q(z | observed entries, missing entries = filling f)],

and weighs each proposal by p(observed entries, z) / q(z): the mixture's density is
evaluated for every proposal (the guide run once per filling), so the weights are exact
whatever the fillings are. The prior p(z) is the defensive component (Hesterberg 1995): it
bounds every weight by (F+1) p(observed entries | z), so a point with few observed entries,
whose posterior is as broad as its prior, is not left to guides that each read one filling
and propose too narrowly. `dgmlang.posterior.resample_missing` starts from fillings drawn
from the model (`prior_fills`) and then refines them with its own posterior draws
(population Monte Carlo, Cappé et al. 2004).

Missing entries here are ones nothing else depends on, in a distribution that factorizes
over entries (`dgmlang.data.check_marginalizable`): their terms are left out of the model's
density, and given the latents they are drawn from the model (`draw_missing`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from dgmlang.marginals import redraw
from dgmlang.weights import in_particles, site_sums

__all__ = ["draw_missing", "mixture_weights", "prior_fills", "supports_mixture"]


def supports_mixture(model: Any) -> bool:
    """Whether `mixture_weights` serves the model: a guide that draws local latents, no
    globals (each draw of them would need its own mixture) and no latent the guide
    enumerates."""
    roles = model.roles
    return bool(roles.guide_locals) and not roles.globals and not roles.guide_enumerated


def prior_fills(model: Any, batch: Mapping[str, torch.Tensor], fills: int) -> dict[str, torch.Tensor]:
    """`fills` draws of every data variable from the model (given the inputs in `batch`),
    ``(fills, rows, *shape)``: fillings for the first round of `mixture_weights`."""
    rows = next(iter(batch.values())).shape[0]
    inputs = {name: batch[name] for name in model.roles.inputs}
    pyro_model = in_particles(model.model, fills, model.model.device)
    trace = poutine.trace(pyro_model).get_trace(inputs, batch_size=rows)
    return {name: trace.nodes[name]["value"].expand(fills, *batch[name].shape)
            for name in model.roles.data}


def mixture_weights(model: Any, batch: Mapping[str, torch.Tensor], observed: Mapping[str, torch.Tensor],
                    fills: Mapping[str, torch.Tensor],
                    per_fill: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Proposals of the local latents from the mixture of the guide over the fillings in
    `fills` (each ``(F, rows, *shape)``; used where `observed` is False), `per_fill` from
    each and `per_fill` from the prior, and their log importance weights: the proposals
    ``((F + 1) * per_fill, rows, ...)`` by name and the weights ``((F + 1) * per_fill, rows)``."""
    n_fills = next(iter(fills.values())).shape[0]
    names = model.roles.guide_locals
    device = model.model.device
    rows = next(iter(batch.values())).shape[0]
    guide_batches = [{**batch, **{name: torch.where(seen, batch[name], fills[name][f])
                                  for name, seen in observed.items()}}
                     for f in range(n_fills)]
    drawn = []
    for guide_batch in guide_batches:
        trace = poutine.trace(in_particles(model.guide, per_fill, device)).get_trace(guide_batch)
        drawn.append({name: trace.nodes[name]["value"] for name in names})
    inputs = {name: batch[name] for name in model.roles.inputs}
    trace = poutine.trace(in_particles(model.model, per_fill, device)).get_trace(inputs, batch_size=rows)
    drawn.append({name: trace.nodes[name]["value"] for name in names})
    proposals = {name: torch.cat([d[name] for d in drawn]) for name in names}
    particles = (n_fills + 1) * per_fill
    plate_shape = (particles, rows)
    no_globals: frozenset[str] = frozenset()
    log_q = []
    for guide_batch in guide_batches:
        guide = in_particles(poutine.condition(model.guide, data=proposals), particles, device)
        trace = prune_subsample_sites(poutine.trace(guide).get_trace(guide_batch))
        log_q.append(site_sums(trace, plate_shape, no_globals, device)[0])
    pyro_model = in_particles(poutine.condition(model.model, data=proposals), particles, device)
    if model.roles.model_enumerated:
        pyro_model = poutine.enum(pyro_model, first_available_dim=-3)
    trace = prune_subsample_sites(poutine.trace(pyro_model).get_trace(dict(batch), mask=dict(observed)))
    log_p = site_sums(trace, plate_shape, no_globals, device)[0]
    prior = poutine.Trace()  # the same trace without the data's sites: log p(z)
    prior.nodes.update((name, site) for name, site in trace.nodes.items() if name not in model.roles.data)
    log_q.append(site_sums(prior, plate_shape, no_globals, device)[0])
    log_q_mixture = torch.stack(log_q).logsumexp(0) - math.log(n_fills + 1)
    return proposals, log_p - log_q_mixture


def draw_missing(model: Any, batch: Mapping[str, torch.Tensor], latents: Mapping[str, torch.Tensor],
                 globals_: Mapping[str, torch.Tensor], draws: int,
                 observed: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Every data variable drawn from the model given `latents` ``(draws, rows, ...)``
    (the model-enumerated ones included) and the globals ``(draws, ...)``,
    ``(draws, rows, *shape)``: the missing entries' exact conditional where nothing
    depends on them. A variable in `observed` keeps its observed entries and gets its
    missing ones given them (`dgmlang.marginals.redraw`: a Dirichlet row's rest)."""
    rows = next(iter(batch.values())).shape[0]
    given = {**latents, **{g: v.unsqueeze(1) for g, v in globals_.items()}}
    pyro_model = in_particles(poutine.condition(model.model, data=given), draws, model.model.device)
    inputs = {name: batch[name] for name in model.roles.inputs}
    trace = poutine.trace(pyro_model).get_trace(inputs, batch_size=rows)
    drawn = {name: trace.nodes[name]["value"].expand(draws, *batch[name].shape)
             for name in model.roles.data}
    for name, seen in (observed or {}).items():
        site = trace.nodes[name]
        drawn[name] = redraw(site["fn"], batch[name], seen, site["value"]).expand(draws, *batch[name].shape)
    return drawn
