"""A fast training loss: the ELBO computed straight from the lowered networks, without Pyro's
per-step tracing.

`fit` spends much of a step in Pyro's bookkeeping (messengers, traces, `pyro.module`
registrations), not in the networks. For most models the bound is a sum of log densities
that can be written down directly; `build` returns an object whose ``loss(batch, size)``
computes it from the very same modules and parameters as the lowered model and its guide, so
checkpoints, `sample`, `invert` and `log_prob` see no difference.

The estimator is Pyro's, draw for draw. The guide samples the globals, then the local
latents in plan order, each from the distribution the guide itself builds
(`dgmlang.guide.family_distribution`), broadcast over the plates (particles at dim -2, data
at dim -1) exactly as Pyro's `BroadcastMessenger` would, so the same random numbers are drawn
in the same order. The model's densities are the lowered model's: the same Pyro distribution
classes with the same arguments (network calls and references to values are evaluated here,
everything else by `LoweredModel.evaluate`). A discrete latent the model sums out takes its
whole support along its own dim left of the plates (as Pyro's parallel enumeration places
it), and the local terms that depend on it are log-sum-exp'ed over those dims per data point
(`TraceEnum_ELBO`'s contraction, done at once). The loss is ``-(log p - log q)`` with the local
terms scaled by ``size / B`` and averaged over particles — the value and gradient of
`Trace_ELBO` / `TraceEnum_ELBO` (with ``vectorize_particles``) up to float rounding; with
``objective="iwae"`` it is the importance-weighted bound of ``fit(objective="iwae")``.
tests/test_fastpath.py compares both paths on every corpus model.

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
from typing import Any, Callable, Mapping

import torch
from torch import nn

from dgmlang import ir as irm
from dgmlang.distributions import DISTRIBUTIONS
from dgmlang.guide import AmortizedGuide, _split_raw, family_distribution
from dgmlang.lower import LoweredModel, flatten_event, pad_event, pyro_class, walk
from dgmlang.nets import to_constraint

__all__ = ["FastLoss", "build", "unsupported_reason", "plate_batch_shape"]

#: Guide step kinds the fast path handles ("enumerated_in_guide" needs Pyro's Dice estimator).
SUPPORTED_KINDS = ("global", "amortized", "enumerated_in_model")
OBJECTIVES = ("elbo", "iwae")

Env = dict  # variable name -> value, shaped (*batch, *event)


def plate_batch_shape(actual: tuple[int, ...], plates: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """The batch shape Pyro's `BroadcastMessenger` expands a site's distribution to inside
    `plates` (``(dim, size)`` pairs, dims negative, outermost first).

    >>> plate_batch_shape((), ((-2, 5), (-1, 3)))
    (5, 3)
    >>> plate_batch_shape((), ((-2, 5),))      # a global inside the particle plate
    (5, 1)
    >>> plate_batch_shape((3,), ())
    (3,)
    """
    target: list[int | None] = [None if size == 1 else size for size in actual]
    for dim, size in plates:
        target = [None] * (-dim - len(target)) + target
        target[dim] = size
    for i in range(-len(target) + 1, 1):
        if target[i] is None:
            target[i] = actual[i] if len(actual) >= -i else 1
    return tuple(target)


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """numpy broadcasting of two shapes known to be compatible (`torch.broadcast_shapes`
    costs tens of microseconds a call)."""
    if a == b:
        return a
    if len(a) < len(b):
        a, b = b, a
    b = (1,) * (len(a) - len(b)) + b
    return tuple(x if y == 1 else y for x, y in zip(a, b))


def _concat(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """`dgmlang.lower.concat_features`: flat features broadcast over their batch dims and
    joined."""
    parts = [p if p.dtype == dtype else p.to(dtype) for p in parts]
    batch: tuple[int, ...] = ()
    for p in parts:
        batch = _broadcast(batch, tuple(p.shape[:-1]))
    return torch.cat([p if tuple(p.shape[:-1]) == batch else p.expand(*batch, p.shape[-1])
                      for p in parts], dim=-1)


class FastLoss:
    """The training loss of one compiled model (see the module docs); build it with `build`.

    ``loss(batch, size)`` takes what `fit` hands Pyro's ELBO: `batch` holds every data and
    input variable, ``(B, *shape)``; `size` is the data set's size N. It returns the negative
    bound of the whole data set estimated from the minibatch, a differentiable scalar.
    """

    def __init__(self, lowered: LoweredModel, guide: AmortizedGuide, *, objective: str,
                 num_particles: int):
        self.lowered = lowered
        self.guide = guide
        self.objective = objective
        self.num_particles = num_particles
        ir = lowered.ir
        # Lookups by name, built once: the IR's own are linear searches, and a model may
        # have thousands of variables.
        self.variables = {v.name: v for v in ir.variables}
        self.draws = {d.target: d for d in ir.draws}
        self._lets = {let.name: let.value for let in ir.lets}
        self._consts = {v.name for v in ir.variables if v.role == "const"}
        self._constants: dict[tuple[str, Any], Any] = {}  # values and distributions that never change
        self.dtype, self.device = lowered.dtype, lowered.device  # updated at each call
        self._constants_key: tuple | None = None
        self._guide_sites = [_GuideSite(self, step) for step in
                             (*guide._global_steps, *guide._local_steps)]
        enumerated = {step.latent for step in guide.plan.steps if step.kind == "enumerated_in_model"}
        self._model_sites = [_ModelSite(self, name, name in lowered.global_order, name in enumerated)
                             for name in (*lowered.global_order, *lowered.local_order)]
        self._enumerates = bool(enumerated)

    def loss(self, batch: Mapping[str, torch.Tensor], size: int) -> torch.Tensor:
        """The negative bound of the data set (`size` points) estimated from `batch`."""
        lowered = self.lowered
        dtype, device = lowered.dtype, lowered.device
        self.dtype, self.device = dtype, device
        # Cached constants are rebuilt after .double() or .to(device), and when Pyro's
        # validation is switched (a distribution keeps the setting it was built under).
        key = (dtype, device, torch.distributions.Distribution._validate_args)
        if self._constants_key != key:
            self._constants.clear()
            self._constants_key = key
        env: Env = {}
        for name, value in batch.items():
            if value.dtype != dtype or value.device != device:
                value = value.to(device=device, dtype=dtype)
            env[name] = value
        n = len(next(iter(batch.values())))
        iwae = self.objective == "iwae"
        particles = self.num_particles
        global_plates = ((-2, particles),) if particles > 1 and not iwae else ()
        local_plates = ((-2, particles), (-1, n)) if particles > 1 else ((-1, n),)
        # With latents summed out, or per-point weights to combine, the local terms are kept
        # per particle and data point; otherwise each is summed at once.
        per_point = iwae or self._enumerates
        log_q_global = log_q_local = log_p_global = log_p_local = 0.0
        for site in self._guide_sites:
            if site.is_global:
                log_q_global = log_q_global + site.sample(env, global_plates).sum()
            else:
                log_q = site.sample(env, local_plates)
                log_q_local = log_q_local + (log_q if per_point else log_q.sum())
        summed_out = None  # the local terms that depend on an enumerated latent
        enumerated = 0
        for model_site in self._model_sites:
            if model_site.is_global:
                log_p_global = log_p_global + model_site.log_prob(env, global_plates, False)
                continue
            if model_site.enumerated:
                model_site.enumerate(env, len(local_plates) + enumerated)
                enumerated += 1
            term = model_site.log_prob(env, local_plates, per_point)
            if per_point and any(extent > 1 for extent in term.shape[: term.dim() - len(local_plates)]):
                summed_out = term if summed_out is None else summed_out + term
            elif per_point:
                log_p_local = log_p_local + term.reshape(term.shape[term.dim() - len(local_plates):])
            else:
                log_p_local = log_p_local + term
        if summed_out is not None:  # log-sum-exp over the enumeration dims, left of the plates
            log_p_local = log_p_local + summed_out.logsumexp(
                tuple(range(summed_out.dim() - len(local_plates))))
        if iwae:
            weights = (log_p_local - log_q_local).logsumexp(0) - math.log(particles)
            return -(weights.sum() * (size / n))
        local = log_p_local - log_q_local
        if per_point:
            local = local.sum()
        elbo = (log_p_global - log_q_global) + local * (size / n)
        return -elbo / particles if particles > 1 else -elbo

    # ------------------------------------------------------------------ expressions

    def compile_expr(self, expr: irm.IRExpr) -> Callable[[Env], torch.Tensor]:
        """A function of the values in `env` computing `expr` as `LoweredModel.evaluate` does:
        references and network calls here, anything else by the lowered model itself."""
        lowered = self.lowered
        if isinstance(expr, irm.Ref):
            name = expr.name

            def ref(env: Env) -> torch.Tensor:
                value = env.get(name)
                return value if value is not None else lowered.evaluate(expr, env)

            return ref
        if isinstance(expr, irm.NetCall):
            features = self.compile_features(expr)
            module = lowered.nets[lowered._net_keys[expr.net]]
            shape, constraint, span = expr.shape, expr.constraint, expr.span

            def net_call(env: Env) -> torch.Tensor:
                flat = module(features(env))
                return to_constraint(flat.reshape(flat.shape[:-1] + shape), constraint, span=span)

            return net_call
        if self.is_constant(expr):
            key = ("expr", id(expr))
            constants = self._constants

            def constant(env: Env) -> torch.Tensor:
                value = constants.get(key)
                if value is None:
                    value = constants[key] = lowered.evaluate(expr, {})
                return value

            return constant
        return lambda env: lowered.evaluate(expr, env)

    def compile_features(self, call: irm.NetCall) -> Callable[[Env], torch.Tensor]:
        """The flat input of a network call (`LoweredModel.net_features` without the call)."""
        args = [(self.compile_expr(a), len(a.shape)) for a in call.args]
        if len(args) == 1:
            (arg, rank), = args

            def single(env: Env) -> torch.Tensor:
                value = arg(env)
                value = flatten_event(value, rank) if rank != 1 else value
                return value if value.dtype == self.dtype else value.to(self.dtype)

            return single
        return lambda env: _concat([flatten_event(f(env), r) for f, r in args], self.dtype)

    def is_constant(self, expr: irm.IRExpr) -> bool:
        """Whether `expr` reads nothing but literals and consts (its value never changes)."""
        pending, seen = [expr], set()
        while pending:
            for e in walk([pending.pop()]):
                if isinstance(e, irm.NetCall):
                    return False
                if isinstance(e, irm.Ref) and e.name not in self._consts:
                    if e.name not in self._lets:
                        return False
                    if e.name not in seen:
                        seen.add(e.name)
                        pending.append(self._lets[e.name])
        return True


class _GuideSite:
    """One latent the guide samples, with its network (or variational parameters) and its
    inputs resolved once."""

    def __init__(self, fast: FastLoss, step):
        guide = fast.guide
        self.fast = fast
        self.guide = guide
        self.name = step.latent
        self.info = guide._infos[step.latent]
        self.is_global = step.kind == "global"
        if self.is_global:
            self.family = guide.variational.family(step.latent)
            self.flow = self.family.flow
        else:
            self.net = guide.nets[guide._net_keys[step.latent]]
            self.flow = guide._flow(step.latent)
            self.inputs = [(name, len(fast.variables[name].shape), guide.input_encoding[name])
                           for name in step.inputs]

    def features(self, env: Env) -> torch.Tensor:
        """The guide network's input, as `AmortizedGuide.network_input` builds it: each input
        (one-hot encoded where the guide encodes it) flattened, broadcast and concatenated."""
        inputs = self.inputs
        if len(inputs) == 1 and inputs[0][1] == 1 and not inputs[0][2]:
            return env[inputs[0][0]]  # a vector in the model's dtype, as it is
        if not inputs:
            return torch.zeros(0, dtype=self.fast.dtype, device=self.fast.device)
        parts = []
        for name, rank, classes in inputs:
            value = env[name]
            if classes:
                value, rank = nn.functional.one_hot(value.long(), classes), rank + 1
            parts.append(flatten_event(value, rank))
        return _concat(parts, self.fast.dtype)

    def sample(self, env: Env, plates) -> torch.Tensor:
        """Draw the latent into `env`; returns log q of the draw, shaped like the plates."""
        info = self.info
        support = info.support if info.support is not None else self.guide._support(info, env)
        if self.is_global:
            raw = self.family.parameters_of(info)
        else:
            raw = _split_raw(info, self.net(self.features(env)))
        q = family_distribution(info, support, raw, self.flow)
        target = plate_batch_shape(tuple(q.batch_shape), plates)
        if tuple(q.batch_shape) != target:
            q = q.expand(target)
        value = env[self.name] = q.rsample()
        return q.log_prob(value)


class _ModelSite:
    """One sample site of the model: its distribution's class and arguments, resolved once."""

    def __init__(self, fast: FastLoss, name: str, is_global: bool, enumerated: bool):
        lowered = fast.lowered
        draw = fast.draws[name]
        spec = DISTRIBUTIONS[draw.dist]
        shape = fast.variables[name].shape
        self.fast = fast
        self.name = name
        self.is_global = is_global
        self.enumerated = enumerated
        self.cls = pyro_class(draw.dist)
        self.outer = tuple(shape[: len(shape) - spec.event_rank])
        self.event_dims = len(self.outer)
        self.outer_size = math.prod(self.outer)
        self.params = [
            (pname, fast.compile_expr(expr), len(expr.shape),
             len(self.outer) + spec.param(pname).event_rank)
            for pname, expr in draw.params
        ]
        self.packed = None
        if draw.packed is not None:
            self.packed = (
                fast.compile_features(draw.packed),
                lowered.nets[lowered._net_keys[draw.packed.net]],
                [(p.name, math.prod(p.shape), p.shape, p.constraint,
                  len(self.outer) + spec.param(p.name).event_rank) for p in draw.packed_params],
                [math.prod(p.shape) for p in draw.packed_params],
                draw.packed.span,
            )
        self.constant = draw.packed is None and all(
            fast.is_constant(expr) for _, expr in draw.params)

    def distribution(self, env: Env):
        """The site's distribution before `.to_event` (`LoweredModel.base_distribution`)."""
        if self.constant:
            cached = self.fast._constants.get(("site", self.name))
            if cached is not None:
                return cached
        kwargs = {}
        if self.packed is not None:
            features, module, parts, sizes, span = self.packed
            flat = module(features(env))
            for (pname, _, pshape, constraint, rank), part in zip(parts, flat.split(sizes, dim=-1)):
                part = part.reshape(part.shape[:-1] + pshape)
                kwargs[pname] = pad_event(to_constraint(part, constraint, span=span), len(pshape), rank)
        for pname, fn, value_rank, rank in self.params:
            kwargs[pname] = pad_event(fn(env), value_rank, rank)
        base = self.cls(**kwargs)
        batch_shape = _broadcast(tuple(base.batch_shape), self.outer)
        if batch_shape != tuple(base.batch_shape):
            base = base.expand(batch_shape)
        if self.constant:
            self.fast._constants[("site", self.name)] = base
        return base

    def enumerate(self, env: Env, dims_right: int) -> None:
        """Put the latent's whole support into `env`, along the dim with `dims_right` dims to
        its right (where Pyro's parallel enumeration puts it)."""
        support = self.distribution(env).enumerate_support(expand=False).reshape(-1)
        env[self.name] = support.reshape((-1,) + (1,) * dims_right)

    def log_prob(self, env: Env, plates, per_point: bool) -> torch.Tensor:
        """log p of the site's value in `env`: summed (as Pyro sums it over the plates it
        broadcasts the site to), or per data point when `per_point`, shaped
        ``(*enumeration, *plates)``."""
        base = self.distribution(env)
        log_p = base.log_prob(env[self.name])
        batch = tuple(base.batch_shape)
        target = plate_batch_shape(batch[: len(batch) - self.event_dims], plates)
        if per_point:
            if self.event_dims:
                log_p = log_p.sum(tuple(range(-self.event_dims, 0)))
            full = _broadcast(tuple(log_p.shape), target)
            return log_p if tuple(log_p.shape) == full else log_p.expand(full)
        total = log_p.sum()
        full = math.prod(target) * self.outer_size
        return total if log_p.numel() == full else total * (full // log_p.numel())


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
          objective: str = "elbo", num_particles: int = 1) -> FastLoss | None:
    """The fast loss of `objective` ("elbo" or "iwae") for this model and guide, or None when
    the model needs Pyro's general path (see `unsupported_reason`)."""
    if unsupported_reason(ir, plan, objective=objective) is not None:
        return None
    return FastLoss(lowered, guide, objective=objective, num_particles=num_particles)
