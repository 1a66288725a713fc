"""Queries of a compiled model: forward samples, log-likelihoods, posterior samples.

* `sample` — forward draws from the model; its globals are drawn once from the fitted
  guide (from the prior before fitting);
* `log_prob` — the importance-weighted estimate of log p(x_i) per data point, the guide as
  proposal (`dgmlang.weights`);
* `invert` — posterior samples given data, missing entries included: fully observed points
  by sampling/importance resampling (`resample`), points with missing entries the model
  can marginalize by importance resampling from the guide's mixture over fillings
  (`resample_missing`, `dgmlang.imputation`), other points with missing entries by
  Metropolis-within-Gibbs chains (`dgmlang.gibbs`).

Every function takes the compiled model (`dgmlang.compiled.CompiledModel`) and reads its
public attributes only: `ir`, `model`, `guide`, `facts`, `roles`, `fitted`.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Callable, Mapping

import torch
from tqdm import tqdm

import pyro
from pyro import poutine
from pyro.infer import infer_discrete

from dgmlang.data import Dataset, check_marginalizable, positive_int, prepare_data, prepare_inputs
from dgmlang.devices import to_device
from dgmlang.supports import support_of
from dgmlang import chains as chains_module
from dgmlang.errors import DGMDataError, DGMModelError, DGMUsageError, rows_phrase
from dgmlang.gibbs import gibbs
from dgmlang.imputation import draw_missing, mixture_weights, prior_fills, supports_mixture
from dgmlang.nets import seeded
from dgmlang.refine import check_refinable, installed, row_offsets
from dgmlang import weights as importance
from dgmlang.weights import check_importance_weighting, importance_weights, in_particles

__all__ = ["SIR_PROPOSALS", "SIR_PROPOSALS_PER_GLOBAL", "class_posterior", "guide_globals",
           "invert", "log_prob",
           "resample", "sample", "sample_enumerated"]

#: Proposals per data point for sampling/importance resampling in `invert`.
SIR_PROPOSALS = 1000
#: With globals: proposals per data point for each posterior draw of the globals.
SIR_PROPOSALS_PER_GLOBAL = 32
#: `invert`'s ways to treat points with missing entries.
INVERT_METHODS = ("resample", "gibbs")
#: Importance-resampling rounds for points with missing entries (`resample_missing`), the
#: fillings of the missing entries in each round's mixture proposal and the proposals per
#: filling (and from the prior). Measured on the tutorial's inversion (docs/missing-data.md):
#: 15 per filling instead of 25 saves a third of the time at the same RMSE, within noise;
#: fewer proposals in the first round than in the second cost RMSE.
IMPUTE_PASSES = 2
MIXTURE_FILLS = 20
PROPOSALS_PER_FILL = 15
#: Seconds a `log_prob` or `invert` call runs before its progress bar appears (tqdm's delay).
PROGRESS_DELAY = 2.0


def progress_bar(what: str, rows: int, show: bool) -> tqdm:
    """A bar over the `rows` data points of a `log_prob` or `invert` call, on stderr, shown
    only once the call has run `PROGRESS_DELAY` seconds (never when `show` is False)."""
    return tqdm(total=rows, disable=not show, delay=PROGRESS_DELAY, desc=what, unit="row",
                leave=False)


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
    """`draws` samples of every global from the guide, each ``(draws, *shape)``. The guide
    also draws the locals of a placeholder point, so draws are made at most `CHUNK_VALUES`
    values at a time."""
    if not model.roles.globals:
        return {}
    batch = _placeholder_batch(model)
    step = max(1, importance.CHUNK_VALUES // importance.values_per_row(model))
    parts = []
    for first in range(0, draws, step):
        n = min(step, draws - first)
        trace = poutine.trace(in_particles(model.guide, n, model.model.device)).get_trace(batch)
        parts.append({g: trace.nodes[g]["value"].reshape(n, *model.ir.variable(g).shape)
                      for g in model.roles.globals if g in trace.nodes})
    return {g: torch.cat([part[g] for part in parts]) for g in parts[0]}


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


def log_prob(model: Any, data: Any, *, mask: Mapping[str, Any] | None = None,
             num_samples: int = 1000, seed: int | None = None,
             progress: bool = True, refine: int = 0, refine_loss: Callable | None = None) -> torch.Tensor:
    """Importance-weighted estimate of log p(x_i | inputs_i) per data point, shape (n,),
    of the observed entries where some are missing (NaN, or False in `mask`; what
    `dgmlang.data.check_marginalizable` accepts: entries nothing depends on, whose terms are
    dropped — such rows propose from the guide's mixture over fillings, `mixture_rounds`,
    where the model has no globals — and entries others depend on, which the guide's
    imputation steps propose with the latents),
    in chunks of at most `CHUNK_CELLS` (particles x points) and `CHUNK_VALUES` values
    (`dgmlang.weights.chunk_plan`). Never silently -inf: rows whose
    estimate is not finite (data the checks accept but the model's density overflows at)
    are a `DGMDataError` naming them, its ``rows`` attribute listing them counted from 0.
    With `refine` steps (complete data only) the guide is refined row by row first, as in
    `invert` (`dgmlang.refine`; `refine_loss` is the model's one-particle ELBO loss): the
    estimate stays unbiased for p(x), from a better proposal."""
    positive_int("num_samples", num_samples)
    if refine:
        positive_int("refine", refine)
        check_refinable(model, "log_prob")
    check_importance_weighting(model, "log_prob")
    dataset = prepare_data(model.ir, data, purpose="log_prob", allow_missing=True, mask=mask,
                           facts=model.facts, dtype=model.model.dtype)
    if refine and dataset.has_missing:
        raise DGMUsageError("log_prob: refine serves rows without missing entries, and these data have some",
                            hint="score the rows with gaps without refine (their proposals are mixtures over "
                                 "fillings already), or give complete rows")
    labels = [step.latent for step in model.plan.labels]
    check_marginalizable(model.ir, dataset, purpose="log_prob", facts=model.facts, labels=labels)
    gaps = [name for name in labels if name in dataset.columns and dataset.columns[name].has_missing]
    if len(gaps) > 1:
        raise DGMUsageError(f"log_prob: labels {', '.join(map(repr, gaps))} all have missing "
                            "entries; log_prob sums out one label at a time",
                            hint="give all but one of them in full")
    # (where a variable others depend on has gaps, the guide's imputation step proposes them)
    imputing = any(dataset.columns[step.latent].has_missing for step in model.plan.imputations
                   if step.latent in dataset.columns)
    if not model.roles.guide_locals and not model.roles.globals and not imputing:
        num_samples = 1  # nothing left to sample: the model's sums are exact in one pass
    points, particles = importance.chunk_plan(dataset.n, num_samples, importance.values_per_row(model))
    result, unreliable = [], []
    guide_draws_latents = bool(model.roles.guide_locals) or imputing

    # Rows with gaps get the guide's mixture over fillings of them as proposal, as in
    # `invert` (`mixture_rounds`): the guide reading one filling proposes too narrowly.
    per_fill = -(-num_samples // (MIXTURE_FILLS + 1))
    # (not where a variable others depend on has gaps: the guide's imputation step proposes those)
    mixture = supports_mixture(model) and particles >= num_samples and not imputing

    def estimate_given(batch: Mapping[str, torch.Tensor],
                       observed: Mapping[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        gaps = _rows_with_gaps(observed, next(iter(batch.values())).shape[0])
        if mixture and gaps is not None and bool(gaps.any()):
            rows = gaps.nonzero().flatten()
            part = {name: value[rows] for name, value in batch.items()}
            _, log_w = mixture_rounds(model, part, {name: m[rows] for name, m in observed.items()}, {}, per_fill)
            score = log_w.logsumexp(0) - math.log(log_w.shape[0])
            flag = importance.unreliable_points(log_w, guide_draws_latents=True)
            if bool(gaps.all()):
                return score, flag
            complete = (~gaps).nonzero().flatten()
            scores, flags = estimate_given({name: value[complete] for name, value in batch.items()}, None)
            return (score.new_empty(gaps.shape).index_put((rows,), score).index_put((complete,), scores),
                    flag.new_empty(gaps.shape).index_put((rows,), flag).index_put((complete,), flags))
        local = [importance_weights(model, batch, particles=min(particles, num_samples - done),
                                    mask=observed).local
                 for done in range(0, num_samples, particles)]
        log_w = torch.cat(local) if len(local) > 1 else local[0]  # (num_samples, points)
        return (log_w.logsumexp(0) - math.log(num_samples),
                importance.unreliable_points(log_w, guide_draws_latents=guide_draws_latents))

    def estimate(batch: Mapping[str, torch.Tensor],
                 observed: Mapping[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        label = next((name for name in gaps if observed and name in observed), None)
        if label is None:
            return estimate_given(batch, observed)
        # a missing label is summed out exactly: log p(x) = log Σ_k p(x, label = k), each
        # term estimated as a row whose label is k (its guide reads k)
        seen = observed[label]
        rest = {name: m for name, m in observed.items() if name != label} or None
        scores, flags = [], []
        for k in range(model.facts.classes(label)):
            value = torch.where(seen, batch[label], torch.full_like(batch[label], k))
            score, flag = estimate_given({**batch, label: value}, rest)
            scores.append(score)
            flags.append(flag)
        scores_k, flags_k = torch.stack(scores), torch.stack(flags)
        best = scores_k.argmax(0, keepdim=True)
        return (torch.where(seen, scores_k[0], scores_k.logsumexp(0)),
                torch.where(seen, flags_k[0], flags_k.gather(0, best)[0]))

    with seeded(seed), torch.no_grad(), progress_bar(f"log_prob {model.name}", dataset.n, progress) as bar:
        offsets = None
        if refine:
            bar.total += dataset.n  # (each row counts twice: refined, then scored)
            offsets = row_offsets(model, dataset, refine, refine_loss, on_rows=bar.update)
        rng_state = torch.random.get_rng_state()
        for start in range(0, dataset.n, points):
            chunk = dataset.rows(slice(start, start + points))
            batch = to_device(chunk.values, model.model.device)
            observed = to_device(chunk.observed, model.model.device) if dataset.has_missing else None
            with installed(model.guide, offsets, slice(start, start + points)):
                try:
                    with checked_once(start):
                        scores, flags = estimate(batch, observed)
                except ValueError:  # a distribution's argument checks: an overflow at some rows?
                    with pyro.validation_enabled(False):
                        scores, flags = estimate(batch, observed)
                    if bool(torch.isfinite(scores).all()):
                        raise
            result.append(scores)  # non-finite rows are named below
            unreliable.append(flags)
            bar.update(chunk.n)
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
    importance.warn_if_unreliable("log_prob", torch.cat(unreliable))
    return scores


# ------------------------------------------------------------------ class_posterior

#: Rows `class_posterior` runs the label network on at once.
CLASS_POSTERIOR_ROWS = 4096


def class_posterior(model: Any, data: Any, name: str, *,
                    mask: Mapping[str, Any] | None = None) -> torch.Tensor:
    """q(`name` | its guide inputs) per row, ``(n, K)`` probabilities (K = 2 for a
    Bernoulli label, columns 0 and 1): the derived label network of a label of
    `GuidePlan.labels` (trained where the label was missing in `fit`, see
    docs/inference.md, "Semi-supervised learning"). `data` needs the network's inputs; the
    label itself is not read. Missing entries of the inputs are filled as `fit` fills them."""
    from dgmlang.errors import did_you_mean

    names = [v.name for v in model.ir.variables]
    labels = [step.latent for step in model.plan.labels]
    if not isinstance(name, str) or name not in names:
        raise DGMUsageError(f"class_posterior: the model has no variable {name!r}",
                            hint=did_you_mean(str(name), names) or
                            f"its labels: {', '.join(map(repr, labels)) or 'none'}")
    if name not in labels:
        why = ("it is not a Categorical or Bernoulli data variable a latent's guide reads"
               if model.facts.variables[name].role == "data" else
               f"it is a {model.facts.variables[name].role}, not a data variable")
        raise DGMUsageError(
            f"class_posterior: '{name}' is no label ({why}), so the guide has no q('{name}' | ...)",
            hint=f"this model's labels: {', '.join(map(repr, labels))}" if labels else
            "a label is a data variable with a Categorical or Bernoulli distribution that a "
            "latent's distribution reads (e.g. x ~ ...mlp(z, onehot(y, K))...)")
    dataset = prepare_data(model.ir, data, purpose="class_posterior", allow_missing=True,
                           mask=mask, facts=model.facts, dtype=model.model.dtype)
    site = model.guide.label_sites[name]
    missing_inputs = [i.name for i in site.inputs if i.name not in dataset.columns
                      or dataset.columns[i.name].raw is None]
    if missing_inputs:
        raise DGMDataError(f"class_posterior: no values for '{missing_inputs[0]}', which "
                           f"q('{name}' | ...) reads", hint="give it shaped (n, *shape)")
    out = []
    model.model.evaluator.refresh()
    with torch.no_grad():
        for start in range(0, dataset.n, CLASS_POSTERIOR_ROWS):
            chunk = dataset.rows(slice(start, start + CLASS_POSTERIOR_ROWS))
            env = {key: value.to(model.model.device) for key, value in chunk.values.items()}
            env = {key: value.to(model.model.dtype) if value.is_floating_point() else value
                   for key, value in env.items()}
            observed = {key: m.to(model.model.device) for key, m in chunk.observed.items()}
            if observed:
                env.update(model.guide.filled({key: env[key] for key in observed}, observed))
            q = site.distribution(env)
            probs = q.probs
            if probs.dim() == 1:  # Bernoulli: P(1) per row
                probs = torch.stack([1 - probs, probs], -1)
            out.append(probs)
    return torch.cat(out) if out else torch.zeros(0, model.facts.classes(name) or 2)


# ------------------------------------------------------------------ invert


def invert(model: Any, data: Any, *, mask: Mapping[str, Any] | None = None,
           num_samples: int = 100, seed: int | None = None,
           progress: bool = True, method: str = "resample", refine: int = 0,
           refine_loss: Callable | None = None) -> dict[str, torch.Tensor]:
    """Posterior samples given `data` (see `CompiledModel.invert`): the globals drawn from
    the guide, fully observed points resampled (`resample`) — from a guide refined row by
    row first where `refine` steps are asked for (`dgmlang.refine`; `refine_loss` is the
    model's one-particle ELBO loss, `dgmlang.training.objective`) — points with missing
    entries resampled too where the model can marginalize them (`resample_missing`), else —
    or with ``method="gibbs"`` — run as chains (`dgmlang.gibbs.gibbs`). `progress` shows a
    bar over the rows when the call takes more than `PROGRESS_DELAY` seconds."""
    positive_int("num_samples", num_samples)
    if refine:
        positive_int("refine", refine)
        check_refinable(model)
    if method not in INVERT_METHODS:
        raise DGMUsageError(f"invert: method={method!r} is not one of {', '.join(map(repr, INVERT_METHODS))}",
                            hint="'resample' (importance resampling from the guide, the default) or "
                                 "'gibbs' (Metropolis-within-Gibbs chains for points with missing entries)")
    check_importance_weighting(model, "invert")
    dataset = prepare_data(model.ir, data, purpose="invert", allow_missing=True, mask=mask,
                           facts=model.facts, dtype=model.model.dtype)
    with seeded(seed), torch.no_grad(), progress_bar(f"invert {model.name}", dataset.n, progress) as bar:
        globals_ = guide_globals(model, num_samples)
        complete = torch.ones(dataset.n, dtype=torch.bool, device="cpu")  # the data's device
        for observed in dataset.observed.values():
            complete &= observed.reshape(dataset.n, -1).all(-1)
        pieces: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        unreliable: list[torch.Tensor] = []
        for rows in (complete.nonzero().squeeze(-1), (~complete).nonzero().squeeze(-1)):
            if len(rows) == 0:
                continue
            part = dataset.rows(rows)  # read on the CPU; resample and gibbs move what they read
            try:
                if bool(complete[rows[0]]):
                    offsets = None
                    if refine:
                        bar.total += part.n  # (each refined row counts twice: refined, then weighed)
                        offsets = row_offsets(model, part, refine, refine_loss, on_rows=bar.update)
                    samples = resample(model, part, globals_, num_samples, unreliable=unreliable,
                                       on_rows=bar.update, offsets=offsets)
                elif method == "resample" and marginalizable(model, part):
                    samples = resample_missing(model, part, globals_, num_samples,
                                               unreliable=unreliable, on_rows=bar.update)
                else:
                    samples = gibbs(model, part, globals_, num_samples)
                    bar.update(part.n)
                pieces.append((rows, samples))
            except DGMDataError as err:
                if getattr(err, "rows", None) is None:
                    raise
                bad = [int(rows[i]) for i in err.rows]
                raise _bad_rows(f"invert: the model's density is not finite at {rows_phrase(bad)}, "
                                "so no posterior draw can be weighted there", bad) from None
    if unreliable:
        importance.warn_if_unreliable("invert", torch.cat(unreliable))
    out: dict[str, torch.Tensor] = {}
    for name in model.roles.data + model.roles.latents:
        first = pieces[0][1][name]
        value = first.new_empty(num_samples, dataset.n, *first.shape[2:])
        for rows, samples in pieces:
            value[:, rows.to(value.device)] = samples[name]
        out[name] = value
    out.update(globals_)
    return out


def _rows_with_gaps(observed: Mapping[str, torch.Tensor] | None, rows: int) -> torch.Tensor | None:
    """Per row, whether some entry in `observed` (per data variable, True = observed) is
    missing; None without masks."""
    gaps = [~seen.reshape(rows, -1).all(-1) for seen in (observed or {}).values()]
    return torch.stack(gaps).any(0) if gaps else None


def marginalizable(model: Any, part: Dataset) -> bool:
    """Whether the missing entries of `part` are ones the model can leave out of its
    density (`check_marginalizable`): then `resample_missing` serves them."""
    try:
        check_marginalizable(model.ir, part, purpose="invert", facts=model.facts)
    except DGMDataError:
        return False
    return True


def resample_missing(model: Any, part: Dataset, globals_: dict[str, torch.Tensor], draws: int, *,
                     unreliable: list[torch.Tensor] | None = None,
                     on_rows: Callable[[int], Any] | None = None) -> dict:
    """`resample` for points with missing entries that the model can marginalize: in
    `IMPUTE_PASSES` rounds of importance resampling, each proposing from the guide's mixture
    over `MIXTURE_FILLS` fillings of the missing entries (`dgmlang.imputation`) — drawn from
    the model in the first round, from the previous round's posterior draws after — then
    the missing entries drawn from the model given the chosen latents. Models the mixture
    does not serve (globals, guide-enumerated latents) get rounds of plain `resample`, the
    guide reading the previous round's posterior-mean imputation (a posterior draw of
    integer-valued variables)."""
    if not supports_mixture(model):
        fill = None
        for _ in range(IMPUTE_PASSES - 1):
            first = resample(model, part, globals_, draws, fill=fill)
            # the posterior mean where it is a valid value; one posterior draw for counts/classes
            fill = {name: (first[name].mean(0) if first[name].is_floating_point() else first[name][0]).cpu()
                    for name in part.observed}
        return resample(model, part, globals_, draws, fill=fill, unreliable=unreliable, on_rows=on_rows)
    device = model.model.device
    per_fill = max(PROPOSALS_PER_FILL, -(-3 * draws // (MIXTURE_FILLS + 1)))  # >= 3 per draw
    points, _ = importance.chunk_plan(part.n, (MIXTURE_FILLS + 1) * per_fill, importance.values_per_row(model))
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, part.n, points):
        chunk = part.rows(slice(start, start + points))
        batch = to_device(chunk.values, device)
        observed = to_device(chunk.observed, device)
        proposals, log_w = mixture_rounds(model, batch, observed, globals_, per_fill)
        usable = torch.isfinite(log_w).any(0) & ~(torch.isnan(log_w) | (log_w == math.inf)).any(0)
        if not bool(usable.all()):
            err = DGMDataError("invert: some rows have no finite importance weight")
            err.rows = [start + i for i in (~usable).nonzero().flatten().tolist()]  # type: ignore[attr-defined]
            raise err
        chosen = _resample_filled(model, batch, observed, proposals, log_w, globals_, draws)
        if unreliable is not None:
            unreliable.append(importance.unreliable_points(log_w, guide_draws_latents=True))
        for name, value in chosen.items():
            out.setdefault(name, []).append(value)
        if on_rows is not None:
            on_rows(chunk.n)
    return {name: torch.cat(values, dim=1) for name, values in out.items()}


def mixture_rounds(model: Any, batch: Mapping[str, torch.Tensor], observed: Mapping[str, torch.Tensor],
                   globals_: dict[str, torch.Tensor], per_fill: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The last of `IMPUTE_PASSES` rounds of `mixture_weights` — its proposals and log
    weights, `per_fill` per filling — after the rounds that refine the fillings: from the
    model's draws first, then from each round's `MIXTURE_FILLS` posterior draws (a row
    without a usable weight in a middle round draws uniformly; its last weights show it)."""
    fills = prior_fills(model, batch, MIXTURE_FILLS)
    for _ in range(IMPUTE_PASSES - 1):
        proposals, log_w = unchecked_on_failure(
            functools.partial(mixture_weights, model, batch, observed, fills, PROPOSALS_PER_FILL))
        usable = torch.isfinite(log_w).any(0) & ~(torch.isnan(log_w) | (log_w == math.inf)).any(0)
        log_w = torch.where(usable, torch.nan_to_num(log_w, nan=-math.inf), torch.zeros_like(log_w))
        chosen = _resample_filled(model, batch, observed, proposals, log_w, globals_, MIXTURE_FILLS)
        fills = {name: chosen[name] for name in model.roles.data}
    return unchecked_on_failure(functools.partial(mixture_weights, model, batch, observed, fills, per_fill))


def unchecked_on_failure(weigh: Callable[[], Any]) -> Any:
    """`weigh()`, or where a distribution's argument or support check fails (a value
    overflowing at some rows: a proposal of 0 for a positive latent, say), `weigh()` again
    without the checks: those rows get non-finite weights, which the caller names."""
    try:
        return weigh()
    except ValueError:
        with pyro.validation_enabled(False):
            return weigh()


def _resample_filled(model: Any, batch, observed, proposals, log_w: torch.Tensor, globals_, n: int) -> dict:
    """`n` draws per row from `proposals` in proportion to the weights, with the latents the
    model sums out drawn given them and every data variable's missing entries drawn from the
    model: ``(n, rows, ...)`` by name."""
    point = torch.arange(log_w.shape[1], device=log_w.device)
    index = torch.distributions.Categorical(logits=log_w.T).sample((n,))  # (n, rows)
    chosen = {name: value[index, point] for name, value in proposals.items()}
    chosen.update(sample_enumerated(model, batch, chosen, globals_, n, mask=observed))
    drawn = draw_missing(model, batch, chosen, globals_, n, observed)
    for name in model.roles.data:
        chosen[name] = batch[name].expand(n, *batch[name].shape)
        if name in observed:
            chosen[name] = torch.where(observed[name], chosen[name], drawn[name])
    return chosen


def resample(model: Any, part: Dataset, globals_: dict[str, torch.Tensor], draws: int, *,
             unreliable: list[torch.Tensor] | None = None,
             on_rows: Callable[[int], Any] | None = None,
             fill: Mapping[str, torch.Tensor] | None = None,
             offsets: Mapping[str, torch.Tensor] | None = None) -> dict:
    """Sampling/importance resampling for fully observed points: proposals from the guide,
    one resampled per posterior draw in proportion to p(x, z | g) / q(z | x, g); the guide
    refined per row by `offsets` (`dgmlang.refine.row_offsets` of `part`) where given.

    Without globals each point has `SIR_PROPOSALS` proposals and `draws` are resampled
    from them; with globals, each posterior draw of the globals gets its own
    `SIR_PROPOSALS_PER_GLOBAL` proposals and one of them is kept. A point's proposals are
    weighed at once, however many, unless they hold more than `CHUNK_VALUES` values
    (``data x[65536]``): then a chunk at a time (`choose_proposals`).

    `unreliable`, when given, gets per point whether its weights are too uneven to trust
    (`dgmlang.weights.unreliable_points`) wherever a point's proposals are weighed at once
    without globals (with globals, each draw's 32 proposals are too few to judge).
    `on_rows(k)` is called after each chunk of k points (a progress bar's update).

    Points with missing entries (``part.observed``; only entries the model can marginalize
    by dropping their terms, `check_marginalizable`) are weighed by the density of what is
    observed, the guide reading the missing entries filled by its input reference, or by
    `fill` (values shaped like the data, on the CPU) where given; each draw's missing
    entries are then drawn from the model given its latents (`draw_missing`)."""
    roles = model.roles
    per_group = SIR_PROPOSALS_PER_GLOBAL if globals_ else SIR_PROPOSALS
    if not roles.guide_locals:
        per_group = 1
    groups = draws if globals_ else 1
    particles = groups * per_group
    points, per_chunk = importance.chunk_plan(part.n, particles, importance.values_per_row(model),
                                              cells=max(importance.CHUNK_CELLS, particles))
    out: dict[str, list[torch.Tensor]] = {}
    device = model.model.device
    for start in range(0, part.n, points):
        chunk = part.rows(slice(start, start + points))
        batch = to_device(chunk.values, device)
        observed = to_device(chunk.observed, device) if part.has_missing else None
        guide_batch = None
        if observed and fill is not None:
            guide_batch = {**batch, **{name: torch.where(seen, batch[name], fill[name][start:start + points].to(device))
                                       for name, seen in observed.items()}}
        try:
            with checked_once(start), installed(model.guide, offsets, slice(start, start + points)):
                chosen = choose_proposals(model, batch, globals_, draws, per_group, per_chunk,
                                          unreliable=unreliable, mask=observed, guide_batch=guide_batch)
        except DGMDataError as err:
            err.rows = [start + i for i in err.rows]  # type: ignore[attr-defined]
            raise
        chosen.update(sample_enumerated(model, batch, chosen, globals_, draws, mask=observed))
        drawn = draw_missing(model, batch, chosen, globals_, draws, observed) if observed else {}
        for name in roles.data:
            chosen[name] = batch[name].expand(draws, *batch[name].shape)
            if name in drawn and name in observed:  # observed holds the variables with a gap only
                chosen[name] = torch.where(observed[name], chosen[name], drawn[name])
        for name, value in chosen.items():
            out.setdefault(name, []).append(value)
        if on_rows is not None:
            on_rows(next(iter(batch.values())).shape[0])
    return {name: torch.cat(values, dim=1) for name, values in out.items()}


def checked_once(start: int):
    """Pyro's argument and value checks for the chunk of rows starting at `start` only when
    it is the first: it finds a model's mistakes, the data were validated before (`prepare_data`),
    and later chunks rely on the checks of non-finite weights, as training's later steps do
    (the checks cost about a sixth of `log_prob`'s time on the digits)."""
    return pyro.validation_enabled(False) if start > 0 else contextlib.nullcontext()


def proposal_chunks(groups: int, per_group: int, per_chunk: int) -> list[tuple[int, int, int, int]]:
    """How `resample` weighs `groups` groups of `per_group` proposals, at most `per_chunk`
    at a time: (first group, groups, first proposal, proposals) per chunk — whole groups
    when a chunk holds one or more, else consecutive slices of one group.

    >>> proposal_chunks(1, 1000, 1000)   # one chunk: everything at once
    [(0, 1, 0, 1000)]
    >>> proposal_chunks(1, 1000, 400)
    [(0, 1, 0, 400), (0, 1, 400, 400), (0, 1, 800, 200)]
    >>> proposal_chunks(5, 32, 64)
    [(0, 2, 0, 32), (2, 2, 0, 32), (4, 1, 0, 32)]
    """
    if per_chunk >= per_group:
        step = per_chunk // per_group
        return [(g, min(step, groups - g), 0, per_group) for g in range(0, groups, step)]
    return [(g, 1, j, min(per_chunk, per_group - j))
            for g in range(groups) for j in range(0, per_group, per_chunk)]


def choose_proposals(model: Any, batch: Mapping[str, torch.Tensor], globals_: dict[str, torch.Tensor],
                     draws: int, per_group: int, per_chunk: int, *,
                     unreliable: list[torch.Tensor] | None = None,
                     mask: Mapping[str, torch.Tensor] | None = None,
                     guide_batch: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The guide's local latents resampled at the points of `batch`, ``(draws, rows, *shape)``:
    one proposal per draw of the globals among its `per_group` (with globals), else every
    draw among the same `per_group`, in proportion to the importance weights.

    The proposals are weighed `per_chunk` at a time (`proposal_chunks`). A draw takes its
    proposal from its group's first chunk, then from each later chunk with probability (the
    chunk's weight) / (the weight of the group's chunks so far), drawn within the chunk in
    proportion to the weights: an exact draw from all of them (weighted reservoir sampling),
    and with one chunk exactly the single categorical draw. Points where a group has no
    finite weight, or a weight is NaN or +inf, are a `DGMDataError` whose ``rows`` lists
    them (counted in `batch`). `mask` and `guide_batch` are `importance_weights`'."""
    rows = next(iter(batch.values())).shape[0]
    groups = draws if globals_ else 1
    chosen: dict[str, torch.Tensor] = {}
    device = model.model.device
    total = torch.full((groups, rows), -math.inf, dtype=torch.float64, device=device)  # log weight of a group's chunks so far
    any_finite = torch.zeros(groups, rows, dtype=torch.bool, device=device)
    broken = torch.zeros(rows, dtype=torch.bool, device=device)
    for first_group, n_groups, first, n in proposal_chunks(groups, per_group, per_chunk):
        given = {g: v[first_group:first_group + n_groups].repeat_interleave(n, 0).unsqueeze(1)
                 for g, v in globals_.items()}
        weigh = functools.partial(importance_weights, model, batch, particles=n_groups * n,
                                  given=given, mask=mask, guide_batch=guide_batch)
        weights = unchecked_on_failure(weigh)
        log_w = weights.local.reshape(n_groups, n, rows).permute(0, 2, 1)  # (groups, rows, n)
        if unreliable is not None and not globals_ and n == per_group:  # all of a point's proposals
            unreliable.append(importance.unreliable_points(
                log_w[0].T, guide_draws_latents=bool(model.roles.guide_locals)))
        finite = torch.isfinite(log_w).any(-1)
        bad = (torch.isnan(log_w) | (log_w == math.inf)).any(-1)
        here = slice(first_group, first_group + n_groups)
        any_finite[here] |= finite
        broken |= bad.any(0)
        logits = torch.where((finite & ~bad).unsqueeze(-1), log_w, torch.zeros_like(log_w))
        if globals_:  # one proposal per draw of the globals: (groups, 1, rows)
            index = torch.distributions.Categorical(logits=logits).sample().unsqueeze(1)
        else:  # `draws` proposals of the one group: (1, draws, rows)
            index = torch.distributions.Categorical(logits=logits[0]).sample((draws,))
            index = index.unsqueeze(0)
        index = index + n * torch.arange(n_groups, device=device).reshape(-1, 1, 1)
        point = torch.arange(rows, device=device)
        candidates = {name: weights.guide_trace.nodes[name]["value"][index, point]
                      for name in model.roles.guide_locals}
        chunk_total = log_w.logsumexp(-1).masked_fill(~finite | bad, -math.inf)
        if first == 0:  # the group's first chunk: every draw takes its proposal
            for name, value in candidates.items():
                if name not in chosen:
                    chosen[name] = value.new_empty(groups, *value.shape[1:])
                chosen[name][here] = value
            total[here] = chunk_total
            continue
        so_far = torch.logaddexp(total[here], chunk_total)
        take = torch.rand(index.shape, device=device) < (chunk_total - so_far).exp().nan_to_num(0.0).unsqueeze(1)
        for name, value in candidates.items():
            keep = chosen[name][here]
            chosen[name][here] = torch.where(take.reshape(*take.shape, *(1,) * (value.dim() - 3)), value, keep)
        total[here] = so_far
    usable = any_finite.all(0) & ~broken
    if not bool(usable.all()):  # no proposal to resample at these points
        err = DGMDataError("invert: some rows have no finite importance weight")
        err.rows = (~usable).nonzero().flatten().tolist()  # type: ignore[attr-defined]
        raise err
    return {name: value.flatten(0, 1) for name, value in chosen.items()}


def sample_enumerated(model: Any, batch, latents, globals_, draws: int, *,
                      mask: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Latents the model sums out, drawn from their exact conditional posterior given the
    data (its entries True in `mask`, where given) and the other latents
    (`infer_discrete`), ``(draws, rows)``; at most `CHUNK_VALUES` values at a time. Latent
    chains are drawn whole, ``(draws, rows, T)``, by forward filtering, backward sampling
    (`dgmlang.chains.posterior_paths`)."""
    chains = {name: site for name, site in model.model.chains.items() if name in model.roles.model_enumerated}
    drawn = {name: chains_module.posterior_paths(site, batch, globals_, draws) for name, site in chains.items()}
    if not [name for name in model.roles.model_enumerated if name not in chains]:
        return drawn
    rows = next(iter(batch.values())).shape[0]
    step = max(1, importance.CHUNK_VALUES // (rows * importance.values_per_row(model)))
    parts = []
    for first in range(0, draws, step):
        n = min(step, draws - first)
        given = {**{name: v[first:first + n] for name, v in latents.items()},
                 **{g: v[first:first + n].unsqueeze(1) for g, v in globals_.items()}}
        pyro_model = in_particles(poutine.condition(model.model, data=given), n, model.model.device)
        pyro_model = infer_discrete(pyro_model, first_available_dim=-3, temperature=1)
        trace = poutine.trace(pyro_model).get_trace(batch, mask=mask)
        parts.append({name: trace.nodes[name]["value"].expand(n, rows)
                      for name in model.roles.model_enumerated if name not in chains})
    return {**drawn, **{name: torch.cat([part[name] for part in parts]) for name in parts[0]}}


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
