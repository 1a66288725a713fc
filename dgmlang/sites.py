"""One compiled description per site, from which every consumer is generated.

A `ModelSite` says everything about one random variable of the model: its distribution
class, its arguments compiled once (`dgmlang.evaluate`), how its value splits into the
distribution's batch and event dims, whether it is global and whether it can be summed out.
A `GuideSite` says the same about one latent the guide samples: its family (or its discrete
q), the network or variational parameters behind it, and the inputs it reads with their
encodings. The Pyro model (`dgmlang.lower`) and the Pyro guide (`dgmlang.guide`) are thin
loops of ``pyro.sample`` over these; the fast loss (`dgmlang.fastpath`) is the ELBO's
arithmetic over the very same objects, so a new distribution, family or rule is written once.

>>> import dgmlang
>>> m = dgmlang.compile('''
... model tiny {
...     data   x[2]
...     latent z[2]
...     z ~ Normal(0, 1)
...     x ~ Normal(z, 0.5)
... }''')
>>> [(s.name, s.event_dims, s.is_global) for s in m.model.sites]
[('z', 1, False), ('x', 1, False)]
>>> [(s.name, s.kind, [i.name for i in s.inputs]) for s in m.guide.sites]
[('z', 'amortized', ['x'])]
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import AffineTransform, ReshapeTransform, identity_transform

import pyro.distributions as pdist

from dgmlang import ir as irm
from dgmlang.distributions import DISTRIBUTIONS
from dgmlang.errors import DGMDataError
from dgmlang.evaluate import Env, Evaluator, broadcast_shape, concat_features, flatten_event, pad_event
from dgmlang.facts import ModelFacts
from dgmlang.inverse import imputable
from dgmlang.marginals import MissingPart, observed_log_prob
from dgmlang.nets import POSITIVE_FLOOR, to_constraint

__all__ = [
    "GuideInput", "GuideSite", "LatentShape", "ModelSite", "Reference", "family_distribution",
    "latent_shape", "lower_triangular", "missing_site", "plate_batch_shape", "pyro_class",
    "raw_size", "refuse_gaps", "split_raw", "WholeSequenceSite",
]


def pyro_class(dist_name: str):
    """The Pyro distribution class of a registry name (`pyro.distributions.<name>`)."""
    return getattr(pdist, dist_name)


def missing_site(name: str) -> str:
    """The Pyro site of the missing entries of imputed data variable `name` (no variable
    can be named so).

    >>> missing_site("x1")
    'x1/missing'
    """
    return f"{name}/missing"


@functools.lru_cache(maxsize=4096)  # a pure function of a few shapes, asked every step
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


# ---------------------------------------------------------------- the model's sites


class WholeSequenceSite:
    """What a model site of all the steps of one sequence (`dgmlang.chains.ChainSite`,
    `dgmlang.recurrence.SequenceSite`, `dgmlang.statespace`'s sites) answers where
    `ModelSite` is asked: a local site, never enumerated in the model, imputed or
    constant, with no dims beside the data plate's; `log_prob` from the subclass's
    `sequence_log_prob(env, value)` (per row). Subclasses set `name`, `shape` and
    `_variables` (the model's variables by name)."""

    is_global = False
    enumerable = False
    imputed = False
    constant = False
    event_rank = 0
    event_dims = 0
    outer: tuple[int, ...] = ()
    outer_size = 1

    def sequence_log_prob(self, env: Env, value: torch.Tensor) -> torch.Tensor:
        """log p of the whole sequence `value` per row, ``(*batch,)``: each kind of sequence
        site computes it its own way (forward algorithm, recurrence, chain of steps)."""
        raise NotImplementedError(f"{type(self).__name__} does not define sequence_log_prob")

    def plate_batch(self, env: Env) -> tuple[int, ...]:
        """The batch dims of the local values in `env` (the plate's, with any particle dims)."""
        return next((tuple(v.shape[:v.dim() - len(self._variables[k].shape)]) for k, v in env.items()
                     if k in self._variables and self._variables[k].role != "global" and torch.is_tensor(v)), ())

    def log_prob(self, env: Env, plates, per_point: bool, observed: torch.Tensor | None = None) -> torch.Tensor:
        """log p of the sequence's value in `env` (as `ModelSite.log_prob`: summed over the
        plates, or per data point when `per_point`)."""
        refuse_gaps(self.name, observed)
        total = self.sequence_log_prob(env, env[self.name])
        target = plate_batch_shape((), plates)
        if per_point:
            return total.expand(broadcast_shape(tuple(total.shape), target))
        return total.sum() * (math.prod(target) / max(1, total.numel()))


def refuse_gaps(name: str, observed: torch.Tensor | None) -> None:
    """Missing entries (NaN, or False in a mask) in a data sequence are refused, padding
    past a sequence's length included: padding is not missing data."""
    if observed is not None and not bool(observed.all()):
        raise DGMDataError(f"'{name}' has missing entries: missing steps of a sequence are not supported yet",
                           hint="give every step of every sequence; pad a sequence shorter than its "
                                "length input with any valid value (such as 0): steps past the length are ignored")


class ModelSite:
    """One random variable of the model, its distribution's class and arguments resolved
    once. `distribution(env)` is the distribution before ``.to_event(event_dims)``, its
    rightmost batch dims the variable's shape less the distribution's own event dims."""

    def __init__(self, name: str, facts: ModelFacts, evaluator: Evaluator, net: Callable[[str], nn.Module],
                 *, steps: irm.Steps | None = None):
        # `steps`: one run of steps of a sequence, described over one step's shape
        draw = facts.draws[name] if steps is None else steps.draw
        var = facts.variables[name]
        shape = var.shape if steps is None else var.shape[1:]
        self._key = ("site", name) if steps is None else ("site", name, steps.first)
        spec = DISTRIBUTIONS[draw.dist]
        self.name = name
        self.role = var.role
        self.is_global = var.role == "global"
        #: a latent with finite discrete support, summed out unless the guide samples it
        self.enumerable = var.role == "latent" and facts.enumerable(name)
        #: data whose missing entries are latents of their row (`dgmlang.inverse.imputable`)
        self.imputed = imputable(facts.graph, name)
        self.dist = draw.dist
        self.event_rank = spec.event_rank  # the distribution's own event dims
        self.cls = pyro_class(draw.dist)
        self.outer = tuple(shape[: len(shape) - spec.event_rank])
        self.event_dims = len(self.outer)
        self._event_axes = tuple(range(-self.event_dims, 0))  # summed for a per-point term
        self.outer_size = math.prod(self.outer)
        self._evaluator = evaluator
        self._params = [
            (pname, evaluator.compile(expr), len(expr.shape),
             len(self.outer) + spec.param(pname).event_rank)
            for pname, expr in draw.params
        ]
        self._packed = None
        if draw.packed is not None:
            self._packed = (
                evaluator.compile_features(draw.packed), net(draw.packed.net),
                [(p.name, p.shape, p.constraint, len(self.outer) + spec.param(p.name).event_rank)
                 for p in draw.packed_params],
                [math.prod(p.shape) for p in draw.packed_params],
                draw.packed.span,
            )
        self.constant = draw.packed is None and all(
            facts.is_constant(expr) for _, expr in draw.params)
        self._total_count = draw.param("total_count")

    def distribution(self, env: Env) -> pdist.TorchDistribution:
        """The site's distribution given the values in `env` (before `.to_event`)."""
        if self.constant:
            return self._evaluator.cached(self._key, lambda: self._build({}))
        return self._build(env)

    def _build(self, env: Env) -> pdist.TorchDistribution:
        kwargs = {}
        if self._packed is not None:
            features, module, parts, sizes, span = self._packed
            flat = module(features(env))
            for (pname, pshape, constraint, rank), part in zip(parts, flat.split(sizes, dim=-1)):
                part = part.reshape(part.shape[:-1] + pshape)
                kwargs[pname] = pad_event(to_constraint(part, constraint, span=span), len(pshape), rank)
        for pname, fn, value_rank, rank in self._params:
            kwargs[pname] = pad_event(fn(env), value_rank, rank)
        base = self.cls(**kwargs)
        batch_shape = broadcast_shape(tuple(base.batch_shape), self.outer)
        if batch_shape != tuple(base.batch_shape):
            base = base.expand(batch_shape)
        return base

    def total_count(self, env: Env) -> torch.Tensor | float:
        """A Binomial's count given the values in `env` (1 when the model leaves it out)."""
        if self._total_count is None:
            return 1.0
        return self._evaluator.evaluate(self._total_count, dict(env))

    def enumerate(self, env: Env, dims_right: int) -> None:
        """Put the latent's whole support into `env`, along the dim with `dims_right` dims to
        its right (where Pyro's parallel enumeration puts it)."""
        support = self.distribution(env).enumerate_support(expand=False).reshape(-1)
        env[self.name] = support.reshape((-1,) + (1,) * dims_right)

    def log_prob(self, env: Env, plates, per_point: bool,
                 observed: torch.Tensor | None = None) -> torch.Tensor:
        """log p of the site's value in `env`: summed (as Pyro sums it over the plates it
        broadcasts the site to), or per data point when `per_point`, shaped
        ``(*enumeration, *plates)``. `observed` (booleans shaped like the value) drops the
        terms of the missing entries: they are marginalized exactly, as ``base.mask(observed)``
        does on Pyro's path; a row of a joint distribution (Dirichlet) with entries missing
        scores its observed entries' marginal (`dgmlang.marginals`, `ObservedPart` there)."""
        base = self.distribution(env)
        if observed is not None and self.event_rank:
            log_p = observed_log_prob(base, env[self.name], observed)
        else:
            log_p = base.log_prob(env[self.name])
        if observed is not None and not self.event_rank:
            log_p = torch.where(observed, log_p, torch.zeros((), dtype=log_p.dtype, device=log_p.device))
        batch = tuple(base.batch_shape)
        target = plate_batch_shape(batch[: len(batch) - self.event_dims], plates)
        if per_point:
            if self.event_dims:
                log_p = log_p.sum(self._event_axes)
            full = broadcast_shape(tuple(log_p.shape), target)
            return log_p if tuple(log_p.shape) == full else log_p.expand(full)
        total = log_p.sum()
        full = math.prod(target) * self.outer_size
        return total if log_p.numel() == full else total * (full // log_p.numel())


# ---------------------------------------------------------------- guide families


@dataclass(frozen=True)
class LatentShape:
    """What the guide needs to know about one continuous latent or global's values.

    `support` is the model distribution's support (None when it depends on the parameters,
    as Uniform's does; it is then read from the model site at each call), `unconstrained`
    the shape of the value before ``biject_to(support)``.
    """

    name: str
    shape: tuple[int, ...]
    unconstrained: tuple[int, ...]
    support: Any
    family: str

    @property
    def size(self) -> int:
        """How many numbers the unconstrained value has."""
        return math.prod(self.unconstrained)


def latent_shape(facts: ModelFacts, name: str) -> LatentShape:
    """The `LatentShape` of a continuous latent or global."""
    var = facts.variables[name]
    support = pyro_class(facts.draws[name].dist).support
    if constraints.is_dependent(support):
        support, unconstrained = None, var.shape
    else:
        unconstrained = tuple(biject_to(support).inverse_shape(torch.Size(var.shape)))
    family = var.guide.family if var.guide is not None else "normal"
    return LatentShape(name, var.shape, unconstrained, support, family)


def raw_size(family: str, size: int) -> int:
    """How many numbers a network produces for a `family` distribution on `size` numbers."""
    if family == "mvn":
        return size + size * (size + 1) // 2
    if family == "delta":
        return size
    return 2 * size


def lower_triangular(entries: torch.Tensor, size: int) -> torch.Tensor:
    """``(*batch, size*(size+1)/2)`` numbers as lower-triangular ``(*batch, size, size)``
    matrices with a positive diagonal (softplus).

    >>> lower_triangular(torch.zeros(3), 2)
    tensor([[0.6931, 0.0000],
            [0.0000, 0.6931]])
    """
    rows, cols = torch.tril_indices(size, size, device=entries.device)
    on_diagonal = rows == cols
    entries = torch.where(on_diagonal, nn.functional.softplus(entries) + POSITIVE_FLOOR, entries)
    matrix = entries.new_zeros(*entries.shape[:-1], size, size)
    matrix[..., rows, cols] = entries
    return matrix


def split_raw(info: LatentShape, raw: torch.Tensor) -> dict[str, torch.Tensor]:
    """A guide network's output split into the family's parameters."""
    size = info.size
    if info.family == "delta":
        return {"loc": raw}
    if info.family == "mvn":
        loc, tril = raw.split([size, raw.shape[-1] - size], dim=-1)
        return {"loc": loc, "scale_tril": lower_triangular(tril, size)}
    loc, scale = raw.split([size, size], dim=-1)
    return {"loc": loc, "scale": nn.functional.softplus(scale) + POSITIVE_FLOOR}


class Reference(nn.Module):
    """A reference location and scale (buffers `loc` and `scale`, each shaped `shape`): what
    a guide head's outputs are relative to, or what a guide network's input is standardized
    by. Neutral (0 and 1, the arithmetic then exact) until `set`; `dgmlang.calibrate` sets
    them before the first fit, and checkpoints keep them.

    >>> ref = Reference((2,))
    >>> ref.set(torch.tensor([100.0, 0.0]), torch.tensor([8.0, 1.0]))
    >>> ref.rescale({"loc": torch.zeros(2), "scale": torch.ones(2)})
    {'loc': tensor([100.,   0.]), 'scale': tensor([8., 1.])}
    >>> ref.standardize(torch.tensor([108.0, 1.0]))
    tensor([1., 1.])
    """

    def __init__(self, shape: tuple[int, ...] = ()):
        super().__init__()
        self.register_buffer("loc", torch.zeros(shape))
        self.register_buffer("scale", torch.ones(shape))
        #: loc 0 and scale 1 everywhere: `standardize` is then the identity, and skipped
        #: (a guide with thousands of inputs near unit scale builds no graph for them)
        self.neutral = True

    def set(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        """Make `loc` and `scale` (broadcastable to the buffers' shape) the reference. A
        neutral reference given 0 and 1 (what calibration gives most of them) is left as it is."""
        loc = torch.as_tensor(loc, device=self.loc.device)
        scale = torch.as_tensor(scale, device=self.scale.device)
        if self.neutral and bool((loc == 0).all() and (scale == 1).all()):
            return
        with torch.no_grad():
            self.loc.copy_(loc.expand_as(self.loc))
            self.scale.copy_(scale.expand_as(self.scale))
        self.refresh()

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh()

    def refresh(self) -> None:
        """Re-read whether the reference is neutral: `set` and loading a state dict do it;
        whoever writes the buffers in place otherwise (a broadcast from another process)
        calls it after."""
        self.neutral = bool((self.loc == 0).all() and (self.scale == 1).all())

    def standardize(self, value: torch.Tensor) -> torch.Tensor:
        """`value` in reference units: ``(value - loc) / scale``."""
        if self.neutral:
            return value
        return (value - self.loc) / self.scale

    def rescale(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A family's parameters in reference units (over the flat unconstrained value) as
        parameters of the value itself: ``loc + scale * raw_loc``, ``scale * raw_scale``,
        ``diag(scale) @ raw_scale_tril``."""
        if self.neutral:
            return raw
        out = {"loc": self.loc + self.scale * raw["loc"]}
        if "scale" in raw:
            out["scale"] = self.scale * raw["scale"]
        if "scale_tril" in raw:
            out["scale_tril"] = self.scale.unsqueeze(-1) * raw["scale_tril"]
        return out


def _to_support(info: LatentShape, support) -> list:
    """The transforms from the flat unconstrained value to the latent's support."""
    result = []
    if info.family in ("mvn", "flow") and info.unconstrained != (info.size,):
        result.append(ReshapeTransform((info.size,), info.unconstrained))
    bijection = biject_to(support)
    if bijection is not identity_transform:
        # Cached, so log q of a draw inverts nothing: the flow before it finds its own
        # output again (an autoregressive flow's inverse is sequential, and Pyro's builds
        # it in float32 whatever the model's dtype).
        result.append(bijection.with_cache(1))
    return result


def family_distribution(info: LatentShape, support, raw: dict[str, torch.Tensor],
                        flow: nn.ModuleList | None,
                        reference: Reference | None = None) -> pdist.TorchDistribution:
    """q for one continuous latent from its parameters `raw`, each over the flattened
    unconstrained value, ``(*batch, info.size)``: "loc" and "scale" (normal, flow), "loc" and
    "scale_tril" (mvn), or "loc" (delta). With a `reference`, `raw` is in its units: the
    parameters are rescaled (normal, mvn, delta), or the flow's output is (flow: the flow
    itself works in reference units)."""
    if reference is not None and info.family != "flow":
        raw = reference.rescale(raw)
    loc = raw["loc"]
    if info.family == "delta":
        value = loc.reshape(loc.shape[:-1] + info.unconstrained)
        value = biject_to(support)(value)
        return pdist.Delta(value, event_dim=len(info.shape))
    if info.family == "mvn":
        base = pdist.MultivariateNormal(loc, scale_tril=raw["scale_tril"])
        transforms = _to_support(info, support)
    elif info.family == "flow":
        base = pdist.Normal(loc, raw["scale"]).to_event(1)
        transforms = [*flow, *_to_support(info, support)]
        if reference is not None:  # cached like the support's bijection, for the same reason
            affine = AffineTransform(reference.loc, reference.scale, event_dim=1, cache_size=1)
            transforms.insert(len(flow), affine)
    else:
        shape = (*loc.shape[:-1], *info.unconstrained)
        base = pdist.Normal(loc.reshape(shape), raw["scale"].reshape(shape))
        base = base.to_event(len(info.unconstrained)) if info.unconstrained else base
        transforms = _to_support(info, support)
    return pdist.TransformedDistribution(base, transforms) if transforms else base


# ---------------------------------------------------------------- the guide's sites


@dataclass(frozen=True)
class GuideInput:
    """A value a guide network reads: its event rank, and the number of classes it is
    one-hot encoded with (None when fed as it is)."""

    name: str
    rank: int
    classes: int | None


class GuideSite:
    """One latent the guide samples (plan kinds "global", "amortized" and
    "enumerated_in_guide"). `distribution(env)` is q given the values in `env`, before any
    plate broadcasting.

    `network` is the amortized network (None for a global), `variational` a global's
    parameters (an object with ``parameters_of(info)``), `flow` the family's learned
    transforms, `model_site` the model's description of the same variable, `evaluator` the
    model's (its ``dtype`` and ``device`` are those values are computed in). `reference` is
    what a continuous latent's q is relative to, `input_references` (by input name) what the
    network's inputs are standardized by (`Reference`; inputs one-hot encoded have none).
    `offset`, while `dgmlang.refine` installs one (rows of ``(n, out_features)``), is added to
    the network's output: a row's q refined on its own.
    """

    #: whether `offset` applies (a site whose network is not one output per row says False)
    refinable = True
    offset: torch.Tensor | None = None

    def __init__(self, step, model_site: ModelSite, *, info: LatentShape | None,
                 inputs: list[GuideInput], evaluator: Evaluator,
                 network: nn.Module | None = None, variational: Any = None,
                 flow: nn.ModuleList | None = None, reference: Reference | None = None,
                 input_references: dict[str, Reference] | None = None):
        self.name = step.latent
        self.kind = step.kind
        self.is_global = step.kind == "global"
        self.enumerated = step.kind == "enumerated_in_guide"
        self.info = info
        self.inputs = inputs
        self.network = network
        self.variational = variational
        self.flow = flow
        self.model_site = model_site
        self.reference = reference
        self.input_references = dict(input_references or {})
        self._evaluator = evaluator
        self._plain = len(inputs) == 1 and inputs[0].rank == 1 and not inputs[0].classes

    def features(self, env: Env) -> torch.Tensor:
        """The guide network's input: each input standardized by its reference, or one-hot
        encoded where the guide encodes it, flattened, broadcast and concatenated."""
        if self._plain:
            value = env.get(self.inputs[0].name)
            if value is not None:  # a vector in the model's dtype
                return self.input_references[self.inputs[0].name].standardize(value)
        if not self.inputs:
            return torch.zeros(0, dtype=self._evaluator.dtype, device=self._evaluator.device)
        values, ranks = [], []
        for item in self.inputs:
            value = env.get(item.name)
            if value is None:
                raise DGMDataError(
                    f"the guide of '{self.name}' reads '{item.name}', which is missing from the batch"
                )
            rank = item.rank
            if item.classes:
                value, rank = nn.functional.one_hot(value.long(), item.classes), rank + 1
            else:
                value = self.input_references[item.name].standardize(value)
            values.append(value)
            ranks.append(rank)
        dtype = self._evaluator.dtype
        first = values[0].shape
        if not any(ranks) and all(v.shape == first and v.dtype == dtype for v in values):
            return torch.stack(values, dim=-1)  # scalars alike: one op, not one per input
        return concat_features([flatten_event(v, r) for v, r in zip(values, ranks)], dtype)

    def support(self, env: Env):
        """The support the latent's values lie in (read from the model when it depends on
        the model's arguments, as Uniform's does)."""
        if self.info.support is not None:
            return self.info.support
        # the checker lets such bounds read only consts, params and inputs: all given here
        return self.model_site.distribution(dict(env)).support

    def distribution(self, env: Env) -> pdist.TorchDistribution:
        """q of the latent given the values in `env`."""
        if self.is_global:
            raw = self.variational.parameters_of(self.info)
            return family_distribution(self.info, self.support(env), raw, self.flow, self.reference)
        out = self.network(self.features(env))
        if self.offset is not None:
            out = out + self.offset
        if self.enumerated:
            return self._discrete(out, env)
        return family_distribution(self.info, self.support(env), split_raw(self.info, out),
                                   self.flow, self.reference)

    def missing_distribution(self, env: Env, observed: torch.Tensor) -> pdist.TorchDistribution:
        """q of the missing entries of an imputed data variable (plan kind "imputed"): the
        site's family (mvn up to `IMPUTE_MVN_ENTRIES` entries, else normal) over the flat
        entries, relative to the site's reference, pushed through ``biject_to(support)``;
        every entry drawn, the log density that of the entries False in `observed`
        (`dgmlang.marginals.MissingPart`). The network reads its inputs and then `observed`
        (1 observed, 0 missing): where an entry is missing is what it is asked about."""
        seen = flatten_event(observed.to(self._evaluator.dtype), len(self.info.shape))
        features = concat_features([self.features(env), seen], self._evaluator.dtype)
        raw = self.reference.rescale(split_raw(self.info, self.network(features)))
        transform = biject_to(self.support(env)).with_cache(1)
        return MissingPart(raw["loc"], observed, self.info.shape, transform,
                           scale=raw.get("scale"), scale_tril=raw.get("scale_tril"))

    def _discrete(self, out: torch.Tensor, env: Env) -> pdist.TorchDistribution:
        dist = self.model_site.dist
        if dist == "Categorical":
            return pdist.Categorical(logits=out)
        if dist == "Bernoulli":
            return pdist.Bernoulli(logits=out.squeeze(-1))
        return pdist.Binomial(total_count=self.model_site.total_count(env), logits=out.squeeze(-1))


def guide_inputs(step, facts: ModelFacts) -> list[GuideInput]:
    """The inputs of a plan step with their encodings: a value holding class labels (a
    Categorical draw, or a value the model passes to ``onehot(name, K)``) is one-hot encoded."""
    return [GuideInput(name, len(facts.variables[name].shape), input_classes(facts, name))
            for name in step.inputs]


def input_classes(facts: ModelFacts, name: str) -> int | None:
    """K when `name` holds class labels a guide network one-hot encodes; None otherwise."""
    if facts.variables[name].role in irm.RANDOM_ROLES and facts.draws[name].dist == "Categorical":
        return facts.classes(name)
    return facts.onehot_classes.get(name)
