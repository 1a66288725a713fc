"""A fast training loss: the ELBO computed straight from the lowered networks, without Pyro's
per-step tracing.

`fit` spends much of a step in Pyro's bookkeeping (messengers, traces, `pyro.module`
registrations), not in the networks. For most models the bound is a sum of log densities
that can be written down directly; `build` returns an object whose ``loss(batch, size)``
computes it from the very same modules and parameters as the lowered model and its guide, so
checkpoints, `sample`, `invert` and `log_prob` see no difference.

The estimator is Pyro's, draw for draw, and the sites are the model's and the guide's own
(`dgmlang.sites`: ``model.sites`` and ``guide.sites``, the descriptions their ``pyro.sample``
loops are generated from). The guide samples the globals, then the local latents in plan
order, each from its site's distribution, broadcast over the plates (particles at dim -2,
data at dim -1) exactly as Pyro's `BroadcastMessenger` would, so the same random numbers are
drawn in the same order — except in a model with long runs of alike local latents (16 or
more, a wide tree's nodes at one depth), which `dgmlang.batched` draws as one, in one call. The model's densities are its sites' distributions. A discrete
latent the model sums out takes its
whole support along its own dim left of the plates (as Pyro's parallel enumeration places
it), and the local terms that depend on it are log-sum-exp'ed over those dims per data point
(`TraceEnum_ELBO`'s contraction, done at once). The loss is ``-(log p - log q)`` with the local
terms scaled by ``size / B`` and averaged over particles — the value and gradient of
`Trace_ELBO` / `TraceEnum_ELBO` (with ``vectorize_particles``) up to float rounding; with
``objective="iwae"`` it is the importance-weighted bound of ``fit(objective="iwae")``.
tests/test_fastpath.py compares both paths on every corpus model.

Where a batch lacks a label on some rows (semi-supervised learning: a data variable of
``plan.labels`` with missing entries) the loss is M2's bound, the label enumerated along a
dim left of the plates, clamped on labelled rows, weighted by q(label | x) elsewhere, plus
``aux_weight`` times the classification term (`FastLoss._semi_supervised`); only this path
computes it.

`build` returns None when the model needs Pyro's general path (`unsupported_reason` says
why): a discrete latent enumerated in the guide (its gradient needs Pyro's Dice estimator),
or globals under the importance-weighted bound (drawn apart from the local latents there).

>>> import pyro, torch, dgmlang
>>> from dgmlang import fastpath
>>> m = dgmlang.compile('''
... model tiny {
...     data   x[2]
...     latent z[2]
...     z ~ Normal(0, 1)
...     x ~ Normal(z, 0.5)
... }''')
>>> fast = fastpath.build(m.ir, m.plan, m.model, m.guide)
>>> batch = {"x": torch.zeros(4, 2)}
>>> _ = torch.manual_seed(0)
>>> a = fast.loss(batch, 10)
>>> _ = torch.manual_seed(0)
>>> elbo = pyro.infer.Trace_ELBO(max_plate_nesting=1)
>>> b = elbo.differentiable_loss(m.model, m.guide, batch, size=10)
>>> bool(torch.allclose(a, b))
True
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from dgmlang import ir as irm
from dgmlang.batched import alike_runs, draw_run
from dgmlang.distributions import DISTRIBUTIONS
from dgmlang.guide import AmortizedGuide
from dgmlang.lower import LoweredModel
from dgmlang.sites import plate_batch_shape

__all__ = ["FastLoss", "build", "unsupported_reason", "plate_batch_shape"]

#: Guide step kinds the fast path handles ("enumerated_in_guide" needs Pyro's Dice estimator).
SUPPORTED_KINDS = ("global", "amortized", "enumerated_in_model", "structured_chain")
OBJECTIVES = ("elbo", "iwae")


class FastLoss:
    """The training loss of one compiled model (see the module docs); build it with `build`.

    ``loss(batch, size)`` takes what `fit` hands Pyro's ELBO: `batch` holds every data and
    input variable, ``(B, *shape)``; `size` is the data set's size N. It returns the negative
    bound of the whole data set estimated from the minibatch, a differentiable scalar.
    """

    def __init__(self, lowered: LoweredModel, guide: AmortizedGuide, *, objective: str,
                 num_particles: int, aux_weight: float = 0.0):
        self.lowered = lowered
        self.guide = guide
        self.objective = objective
        self.num_particles = num_particles
        #: the weight of the auxiliary classification term on labelled rows (semi-supervised)
        self.aux_weight = float(aux_weight)
        self._labels = dict(getattr(guide, "label_sites", {}))
        self._imputations = dict(getattr(guide, "imputation_sites", {}))
        self._guide_sites = list(guide.sites)
        #: the guide's sites in plan order, long runs of alike ones gathered (`dgmlang.batched`)
        self._guide_items = alike_runs(self._guide_sites)
        self._guide_items_then_end = (*self._guide_items, None)
        sampled = {site.name for site in guide.sites}
        # every model site the guide does not sample is data or summed out in the model
        self._model_sites = [(site, site.enumerable and site.name not in sampled)
                             for site in lowered.sites]
        self._enumerates = any(enumerated for _, enumerated in self._model_sites)
        #: keep every local term per data point and sum them last (the same bound, summed
        #: in another order): a compiled step then never reduces the batch and event dims
        #: in one kernel, so inductor's code serves every batch size (`dgmlang.compiling`)
        self.per_point_terms = False

    def loss(self, batch: Mapping[str, torch.Tensor], size: int,
             mask: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The negative bound of the data set (`size` points) estimated from `batch`. `mask`
        (per data variable, True = observed) drops the terms of missing entries, whose
        values in `batch` are placeholders; the guide reads them filled as
        ``AmortizedGuide.filled`` fills them."""
        evaluator = self.lowered.evaluator
        evaluator.refresh()
        dtype, device = evaluator.dtype, evaluator.device
        env: dict[str, torch.Tensor] = {}
        for name, value in batch.items():
            if value.dtype != dtype or value.device != device:
                value = value.to(device=device, dtype=dtype)
            env[name] = value
        model_values = {}
        if mask:
            mask = {name: m.to(device) for name, m in mask.items()}
            model_values = {name: env[name] for name in mask}
            env.update(self.guide.filled(model_values, mask))
        n = next(iter(batch.values())).shape[0]
        iwae = self.objective == "iwae"
        particles = self.num_particles
        global_plates = ((-2, particles),) if particles > 1 and not iwae else ()
        local_plates = ((-2, particles), (-1, n)) if particles > 1 else ((-1, n),)
        label = next((name for name in self._labels if name in mask), None) if mask else None
        if label is not None:
            return self._semi_supervised(env, model_values, mask, label, size, n,
                                         global_plates, local_plates)
        # With latents summed out, or per-point weights to combine, the local terms are kept
        # per particle and data point; otherwise each is summed at once.
        per_point = iwae or self._enumerates or self.per_point_terms
        # Sums start from None, not 0.0: adding a Python zero would cost an op and an
        # autograd node per term for nothing (a small model's step is mostly such overhead).
        log_p_global = log_p_local = None
        log_q_global, log_q_local = self._draw_guide(env, global_plates, local_plates, per_point,
                                                     model_values, mask)
        env.update(model_values)  # the model scores the data as given (placeholders masked)
        summed_out = None  # the local terms that depend on an enumerated latent
        enumerated = 0
        for model_site, enumerate_it in self._model_sites:
            if model_site.is_global:
                log_p_global = _plus(log_p_global, model_site.log_prob(env, global_plates, False))
                continue
            if enumerate_it and model_site.constant and not mask:
                term = self._constant_enumerated(model_site, env, local_plates, enumerated)
                enumerated += 1
            else:
                if enumerate_it:
                    model_site.enumerate(env, len(local_plates) + enumerated)
                    enumerated += 1
                term = model_site.log_prob(env, local_plates, per_point,
                                           mask.get(model_site.name) if mask else None)
            if per_point and term.dim() > len(local_plates) and any(
                    extent > 1 for extent in term.shape[: term.dim() - len(local_plates)]):
                summed_out = _plus(summed_out, term)
            elif per_point:
                log_p_local = _plus(log_p_local, term.reshape(term.shape[term.dim() - len(local_plates):]))
            else:
                log_p_local = _plus(log_p_local, term)
        if summed_out is not None:  # log-sum-exp over the enumeration dims, left of the plates
            log_p_local = _plus(log_p_local, summed_out.logsumexp(
                tuple(range(summed_out.dim() - len(local_plates)))))
        log_p_local = 0.0 if log_p_local is None else log_p_local
        if iwae:
            weights = _minus(log_p_local, log_q_local).logsumexp(0) - math.log(particles)
            return -(weights.sum() * (size / n))
        local = _minus(log_p_local, log_q_local)
        if per_point and isinstance(local, torch.Tensor):
            local = local.sum()
        elbo = local * (size / n)
        if log_p_global is not None or log_q_global is not None:
            elbo = _minus(log_p_global, log_q_global) + elbo
        return -elbo / particles if particles > 1 else -elbo

    def _constant_enumerated(self, site, env, local_plates, enumerated: int) -> torch.Tensor:
        """Enumerate a latent whose distribution is constant (``c ~ Categorical(logits =
        zeros(3))``): its support goes into `env` and its per-point log-prob term is
        returned, both computed once (per dtype, device, plates and position among the
        enumerated latents; `Evaluator.cached` drops them when those change)."""
        # made over a data plate of one point and expanded to the batch's: the cache does
        # not depend on the batch size (a compiled step serves every size with one graph)
        one_point = tuple((dim, 1 if dim == -1 else size) for dim, size in local_plates)
        key = ("fastpath-enumerated", site.name, one_point, enumerated)

        def make():
            scratch = dict(env)
            site.enumerate(scratch, len(local_plates) + enumerated)
            return scratch[site.name], site.log_prob(scratch, one_point, True)

        support, term = self.lowered.evaluator.cached(key, make)
        env[site.name] = support
        left = term.shape[: term.dim() - len(local_plates)]
        return term.expand(*left, *plate_batch_shape((), local_plates))


    def _draw_guide(self, env, global_plates, local_plates, per_point: bool,
                    model_values=None, mask=None):
        """Draw every guide site into `env` (reparameterized); (log q of the globals, summed;
        log q of the locals, per particle and point when `per_point`, else summed). An
        imputed data variable in `mask` gets its missing entries drawn before the local
        latents (log q over those entries only), and its filled value goes into `env` and
        `model_values` (the model scores every entry of it: its mask is taken out)."""
        log_q_global = log_q_local = None
        imputing = [site for name, site in self._imputations.items() if mask and name in mask]
        for item in self._guide_items_then_end:
            run = item if isinstance(item, tuple) else None  # alike local sites (`alike_runs`)
            if imputing and (item is None or run is not None or not item.is_global):
                for imputed in imputing:
                    name, seen = imputed.name, mask.pop(imputed.name)
                    q = imputed.missing_distribution(env, seen)
                    target = plate_batch_shape(tuple(q.batch_shape), local_plates)
                    if tuple(q.batch_shape) != target:
                        q = q.expand(target)
                    draw = q.rsample()
                    log_q = q.log_prob(draw)
                    log_q_local = _plus(log_q_local, log_q if per_point else log_q.sum())
                    env[name] = model_values[name] = torch.where(seen, model_values[name], draw)
                imputing = []
            if item is None:
                break
            if run is not None:
                log_q = draw_run(run, env, local_plates, per_point)
                if log_q is not None:
                    log_q_local = _plus(log_q_local, log_q)
                    continue
            for site in run or (item,):  # (a run draw_run declined: site by site)
                q = site.distribution(env)
                target = plate_batch_shape(tuple(q.batch_shape),
                                           global_plates if site.is_global else local_plates)
                if tuple(q.batch_shape) != target:
                    q = q.expand(target)
                value = env[site.name] = q.rsample()
                log_q = q.log_prob(value)
                if site.is_global:
                    log_q_global = _plus(log_q_global, log_q.sum())
                else:
                    log_q_local = _plus(log_q_local, log_q if per_point else log_q.sum())
        return log_q_global, log_q_local

    def _semi_supervised(self, env, model_values, mask, label, size, n, global_plates,
                         local_plates) -> torch.Tensor:
        """The ELBO of a batch in which the label `label` is missing on some rows (M2 of
        Kingma et al. 2014): the label's values are enumerated along a dim left of the
        plates, clamped to the observed label on labelled rows (q a point mass there) and
        weighted by q(label | inputs) on the others, where its entropy is added:

            ELBO_i = Σ_k w_ik [log p(x_i, k, z_ik) - log q(z_ik | x_i, k)] + H_i,
            w_ik = 1[k = y_i] (labelled) or q(k | x_i) (missing), H_i = -Σ_k q log q (missing)

        plus ``aux_weight`` · log q(y_i | x_i) on labelled rows (the auxiliary
        classification term), local terms scaled by ``size / n``."""
        particles = self.num_particles
        site = self._labels[label]
        observed = mask[label]
        given = model_values[label]
        q_label = site.distribution(env)  # batch (n,): the label's inputs are given values
        support = q_label.enumerate_support(expand=False).reshape(-1)
        k = support.shape[0]
        right = len(local_plates)
        values = support.reshape((k,) + (1,) * right)
        enumerated = torch.where(observed, given, values)  # (k, [1,] n)
        log_q_k = q_label.log_prob(support.reshape(k, 1))  # (k, n)
        log_q_k = log_q_k.reshape((k,) + (1,) * (right - 1) + (n,))
        clamp = (values == given).to(log_q_k.dtype)
        weights = torch.where(observed, clamp, log_q_k.exp())
        entropy_term = torch.where(observed, torch.zeros_like(log_q_k), log_q_k)
        env[label] = enumerated
        log_p_global = 0.0
        log_q_global, log_q_local = self._draw_guide(env, global_plates, local_plates, True,
                                                     model_values, mask)
        local = 0.0 if log_q_local is None else -log_q_local
        for name, value in model_values.items():
            if name != label:
                env[name] = value
        for model_site, _ in self._model_sites:
            if model_site.is_global:
                log_p_global = log_p_global + model_site.log_prob(env, global_plates, False)
                continue
            drop = mask.get(model_site.name) if model_site.name != label else None
            local = local + model_site.log_prob(env, local_plates, True, drop)
        per_point = (weights * (local - entropy_term)).sum(0)  # ([particles,] n)
        elbo = _minus(log_p_global, log_q_global) + per_point.sum() * (size / n)
        elbo = elbo / particles if particles > 1 else elbo
        if self.aux_weight:
            log_q_observed = q_label.log_prob(given)
            aux = torch.where(observed, log_q_observed, torch.zeros_like(log_q_observed)).sum()
            elbo = elbo + self.aux_weight * aux * (size / n)
        return -elbo


def _plus(total, term):
    """``total + term``, where a `total` of None is an empty sum (no op for it)."""
    return term if total is None else total + term


def _minus(left, right):
    """``left - right``, where None is zero on either side (no op for it)."""
    if right is None:
        return 0.0 if left is None else left
    return -right if left is None else left - right


def unsupported_reason(ir: irm.ModelIR, plan, *, objective: str = "elbo") -> str | None:
    """Why the fast path cannot compute `objective` for this model, or None when it can.

    >>> import dgmlang
    >>> m = dgmlang.compile('''
    ... model semi {
    ...     data   x
    ...     latent y
    ...     latent z
    ...     y ~ Bernoulli(0.5)
    ...     z ~ Normal(0, 1)
    ...     x ~ Normal(z + y, 1)
    ... }''')
    >>> unsupported_reason(m.ir, m.plan)
    "latent 'y' is enumerated in guide"
    """
    if objective not in OBJECTIVES:
        return f"unknown objective {objective!r}"
    draws = {d.target: d for d in ir.draws}
    for step in plan.steps:
        if step.kind not in SUPPORTED_KINDS:
            return f"latent '{step.latent}' is {step.kind.replace('_', ' ')}"
        if step.kind != "enumerated_in_model" and DISTRIBUTIONS[draws[step.latent].dist].discrete:
            return f"latent '{step.latent}' is discrete and sampled"
    if objective == "iwae" and any(v.role == "global" for v in ir.variables):
        return "the importance-weighted bound draws the globals apart from the local latents"
    return None


def build(ir: irm.ModelIR, plan, lowered: LoweredModel, guide: AmortizedGuide, *,
          objective: str = "elbo", num_particles: int = 1,
          aux_weight: float = 0.0) -> FastLoss | None:
    """The fast loss of `objective` ("elbo" or "iwae") for this model and guide, or None when
    the model needs Pyro's general path (see `unsupported_reason`)."""
    if unsupported_reason(ir, plan, objective=objective) is not None:
        return None
    return FastLoss(lowered, guide, objective=objective, num_particles=num_particles,
                    aux_weight=aux_weight)
