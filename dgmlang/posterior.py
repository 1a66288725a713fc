"""Queries of a compiled model: forward samples, log-likelihoods, posterior samples.

* `sample` — forward draws from the model; its globals are drawn once from the fitted
  guide (from the prior before fitting);
* `log_prob` — the importance-weighted estimate of log p(x_i) per data point, the guide as
  proposal (`dgmlang.weights`);
* `invert` — posterior samples given data, missing entries included: fully observed points
  by sampling/importance resampling (`resample`), points with missing entries by
  Metropolis-within-Gibbs chains (`dgmlang.gibbs`).

Every function takes the compiled model (`dgmlang.compiled.CompiledModel`) and reads its
public attributes only: `ir`, `model`, `guide`, `facts`, `roles`, `fitted`.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Mapping

import torch

import pyro
from pyro import poutine
from pyro.infer import infer_discrete

from dgmlang.data import Dataset, positive_int, prepare_data, prepare_inputs
from dgmlang.devices import to_device
from dgmlang.supports import support_of
from dgmlang.errors import DGMDataError, DGMModelError, rows_phrase
from dgmlang.gibbs import gibbs
from dgmlang.nets import seeded
from dgmlang import weights as importance
from dgmlang.weights import check_importance_weighting, importance_weights, in_particles

__all__ = ["SIR_PROPOSALS", "SIR_PROPOSALS_PER_GLOBAL", "guide_globals", "invert", "log_prob",
           "resample", "sample", "sample_enumerated"]

#: Proposals per data point for sampling/importance resampling in `invert`.
SIR_PROPOSALS = 1000
#: With globals: proposals per data point for each posterior draw of the globals.
SIR_PROPOSALS_PER_GLOBAL = 32


# ------------------------------------------------------------------ sample


def sample(model: Any, n: int, inputs: Mapping[str, Any] | None = None, *,
           seed: int | None = None) -> dict[str, torch.Tensor]:
    """Draw `n` data points from the model: every data variable and latent ``(n, *shape)``;
    globals (one draw: from the fitted guide, from the prior before fitting) ``(*shape)``.

    `inputs` holds every input variable, ``(n, *shape)`` or one value for all n.
    """
    positive_int("n", n)
    given_inputs = prepare_inputs(model.ir, inputs, n, facts=model.facts, dtype=model.model.dtype)
    given_inputs = to_device(given_inputs, model.model.device)
    with seeded(seed), torch.no_grad():
        pyro_model = model.model
        if model.roles.globals and model.fitted:
            draws = guide_globals(model, 1)
            pyro_model = poutine.condition(pyro_model, data={g: v[0] for g, v in draws.items()})
        trace = forward_trace(pyro_model, given_inputs, n)
    names = model.ir.names("data", "latent", "global")
    return {name: trace.nodes[name]["value"].detach() for name in names}


def forward_trace(pyro_model: Any, inputs: Mapping[str, torch.Tensor], n: int) -> poutine.Trace:
    """The trace of one forward run of the model for `n` points. A distribution given
    invalid arguments by the values drawn before it (a prior so wide its draws overflow
    float32 in a network, say) is a `DGMModelError` naming the site, not torch's ValueError."""
    try:
        return poutine.trace(pyro_model).get_trace(dict(inputs), batch_size=n)
    except ValueError as err:
        first = str(err).splitlines()[0]
        if "Expected parameter" not in first:
            raise
        site = None
        with pyro.validation_enabled(False):
            trace = poutine.trace(pyro_model).get_trace(dict(inputs), batch_size=n)
        for name, node in trace.nodes.items():
            value = node.get("value")
            if node["type"] == "sample" and torch.is_tensor(value) and value.is_floating_point() \
                    and not bool(torch.isfinite(value).all()):
                site = name
                break
        where = f" (the first value that is not finite: '{site}')" if site else ""
        raise DGMModelError(
            f"drawing from the model: a distribution got invalid arguments{where}: {first[:160]}",
            hint="the values drawn before it overflow float32 (a very wide prior feeding a "
                 "network or a density): narrow the prior, or rescale the model",
        ) from None


def guide_globals(model: Any, draws: int) -> dict[str, torch.Tensor]:
    """`draws` samples of every global from the guide, each ``(draws, *shape)``."""
    if not model.roles.globals:
        return {}
    batch = _placeholder_batch(model)
    trace = poutine.trace(in_particles(model.guide, draws, model.model.device)).get_trace(batch)
    return {g: trace.nodes[g]["value"].reshape(draws, *model.ir.variable(g).shape)
            for g in model.roles.globals if g in trace.nodes}


def _placeholder_batch(model: Any) -> dict[str, torch.Tensor]:
    """One data point of valid placeholder values (inputs and data), for running the guide
    where only its globals are wanted."""
    batch = {}
    for name in model.roles.inputs + model.roles.data:
        var = model.ir.variable(name)
        support = support_of(model.ir, var, facts=model.facts)
        dtype = torch.long if support.integer_dtype else torch.get_default_dtype()
        batch[name] = torch.full((1, *var.shape), support.placeholder, dtype=dtype,
                                 device=model.model.device)
    return batch


# ------------------------------------------------------------------ log_prob


def log_prob(model: Any, data: Any, *, num_samples: int = 1000, seed: int | None = None) -> torch.Tensor:
    """Importance-weighted estimate of log p(x_i | inputs_i) per data point, shape (n,),
    in chunks of at most `CHUNK_CELLS` (particles x points). Never silently -inf: rows whose
    estimate is not finite (data the checks accept but the model's density overflows at)
    are a `DGMDataError` naming them, its ``rows`` attribute listing them counted from 0."""
    positive_int("num_samples", num_samples)
    check_importance_weighting(model, "log_prob")
    dataset = prepare_data(model.ir, data, purpose="log_prob", facts=model.facts,
                           dtype=model.model.dtype)
    points = max(1, min(dataset.n, importance.CHUNK_CELLS // num_samples))
    particles = max(1, min(num_samples, importance.CHUNK_CELLS // points))
    result = []

    def estimate(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for done in range(0, num_samples, particles):
            k = min(particles, num_samples - done)
            lse = importance_weights(model, batch, particles=k).local.logsumexp(0)
            total = lse if total is None else torch.logaddexp(total, lse)
        return total - math.log(num_samples)

    with seeded(seed), torch.no_grad():
        rng_state = torch.random.get_rng_state()
        for start in range(0, dataset.n, points):
            batch = to_device(dataset.rows(slice(start, start + points)).values, model.model.device)
            try:
                result.append(estimate(batch))
            except ValueError:  # a distribution's argument checks: an overflow at some rows?
                with pyro.validation_enabled(False):
                    again = estimate(batch)
                if bool(torch.isfinite(again).all()):
                    raise
                result.append(again)  # the non-finite rows are named below
        scores = torch.cat(result)
        bad = ~torch.isfinite(scores)
        if bool(bad.any()):  # never a silent -inf: name the rows (and the site, if one shows)
            rows = bad.nonzero().flatten().tolist()
            values = sorted({"nan" if math.isnan(v) else ("-inf" if v < 0 else "inf")
                             for v in scores[bad].tolist()})
            from dgmlang.diagnose import explain_failure  # only on failure

            why = explain_failure(model, to_device(dataset.rows(torch.tensor(rows[:100], device="cpu")).values,
                                                   model.model.device),
                                  rows=rows[:100], rng_state=rng_state)
            raise _bad_rows(f"log_prob: the log-likelihood of {rows_phrase(rows)} is "
                            f"{' or '.join(values)}" + (f" ({why})" if why else ""), rows)
    return scores


# ------------------------------------------------------------------ invert


def invert(model: Any, data: Any, *, mask: Mapping[str, Any] | None = None,
           num_samples: int = 100, seed: int | None = None) -> dict[str, torch.Tensor]:
    """Posterior samples given `data` (see `CompiledModel.invert`): the globals drawn from
    the guide, fully observed points resampled (`resample`), the others run as chains
    (`dgmlang.gibbs.gibbs`)."""
    positive_int("num_samples", num_samples)
    check_importance_weighting(model, "invert")
    dataset = prepare_data(model.ir, data, purpose="invert", allow_missing=True, mask=mask,
                           facts=model.facts, dtype=model.model.dtype)
    with seeded(seed), torch.no_grad():
        globals_ = guide_globals(model, num_samples)
        complete = torch.ones(dataset.n, dtype=torch.bool, device="cpu")  # the data's device
        for observed in dataset.observed.values():
            complete &= observed.reshape(dataset.n, -1).all(-1)
        pieces: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        for rows in (complete.nonzero().squeeze(-1), (~complete).nonzero().squeeze(-1)):
            if len(rows) == 0:
                continue
            part = dataset.rows(rows)
            part = replace(part, values=to_device(part.values, model.model.device),
                           observed=to_device(part.observed, model.model.device))
            sampler = resample if bool(complete[rows[0]]) else gibbs
            try:
                pieces.append((rows, sampler(model, part, globals_, num_samples)))
            except DGMDataError as err:
                if getattr(err, "rows", None) is None:
                    raise
                bad = [int(rows[i]) for i in err.rows]
                raise _bad_rows(f"invert: the model's density is not finite at {rows_phrase(bad)}, "
                                "so no posterior draw can be weighted there", bad) from None
    out: dict[str, torch.Tensor] = {}
    for name in model.roles.data + model.roles.latents:
        first = pieces[0][1][name]
        value = first.new_empty(num_samples, dataset.n, *first.shape[2:])
        for rows, samples in pieces:
            value[:, rows.to(value.device)] = samples[name]
        out[name] = value
    out.update(globals_)
    return out


def resample(model: Any, part: Dataset, globals_: dict[str, torch.Tensor], draws: int) -> dict:
    """Sampling/importance resampling for fully observed points: proposals from the guide,
    one resampled per posterior draw in proportion to p(x, z | g) / q(z | x, g).

    Without globals each point has `SIR_PROPOSALS` proposals and `draws` are resampled
    from them; with globals, each posterior draw of the globals gets its own
    `SIR_PROPOSALS_PER_GLOBAL` proposals and one of them is kept."""
    roles = model.roles
    per_group = SIR_PROPOSALS_PER_GLOBAL if globals_ else SIR_PROPOSALS
    if not roles.guide_locals:
        per_group = 1
    groups = draws if globals_ else 1
    particles = groups * per_group
    points = max(1, min(part.n, importance.CHUNK_CELLS // particles))
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, part.n, points):
        batch = part.rows(slice(start, start + points)).values
        rows = next(iter(batch.values())).shape[0]
        given = {g: v.repeat_interleave(per_group, 0).unsqueeze(1) for g, v in globals_.items()}
        try:
            weights = importance_weights(model, batch, particles=particles, given=given)
        except ValueError:  # a distribution's argument checks: an overflow at some rows?
            with pyro.validation_enabled(False):
                weights = importance_weights(model, batch, particles=particles, given=given)
        log_w = weights.local.reshape(groups, per_group, rows).permute(0, 2, 1)
        usable = torch.isfinite(log_w).any(-1).all(0) & ~torch.isnan(log_w).any(-1).any(0)
        if not bool(usable.all()):  # no proposal to resample at these points
            err = DGMDataError("invert: some rows have no finite importance weight")
            err.rows = [start + i for i in (~usable).nonzero().flatten().tolist()]  # type: ignore[attr-defined]
            raise err
        if globals_:  # one kept proposal per draw of the globals: (draws, rows)
            index = torch.distributions.Categorical(logits=log_w).sample()
            index = index + per_group * torch.arange(groups, device=index.device).unsqueeze(1)
        else:  # `draws` resampled proposals per point: (draws, rows)
            index = torch.distributions.Categorical(logits=log_w[0]).sample((draws,))
        point = torch.arange(rows, device=index.device)
        chosen = {name: weights.guide_trace.nodes[name]["value"][index, point]
                  for name in roles.guide_locals}
        chosen.update(sample_enumerated(model, batch, chosen, globals_, draws))
        for name in roles.data:
            chosen[name] = batch[name].expand(draws, *batch[name].shape)
        for name, value in chosen.items():
            out.setdefault(name, []).append(value)
    return {name: torch.cat(values, dim=1) for name, values in out.items()}


def sample_enumerated(model: Any, batch, latents, globals_, draws: int) -> dict[str, torch.Tensor]:
    """Latents the model sums out, drawn from their exact conditional posterior given the
    data and the other latents (`infer_discrete`), ``(draws, rows)``."""
    if not model.roles.model_enumerated:
        return {}
    given = {**latents, **{g: v.unsqueeze(1) for g, v in globals_.items()}}
    pyro_model = in_particles(poutine.condition(model.model, data=given), draws,
                              model.model.device)
    pyro_model = infer_discrete(pyro_model, first_available_dim=-3, temperature=1)
    trace = poutine.trace(pyro_model).get_trace(batch)
    rows = next(iter(batch.values())).shape[0]
    return {name: trace.nodes[name]["value"].expand(draws, rows)
            for name in model.roles.model_enumerated}


def _bad_rows(message: str, rows: list[int]) -> DGMDataError:
    """The error for data rows at which the model's density is not finite (they passed the
    data checks), its ``rows`` attribute listing them counted from 0."""
    err = DGMDataError(
        message,
        hint="these rows passed the data checks, but the model's log-density is not finite at "
             "them: look at their values (a magnitude like 1e20 overflows float32 inside a "
             "density, e.g. in (x - loc)**2)",
    )
    err.rows = rows  # type: ignore[attr-defined] - for callers that renumber rows
    return err
