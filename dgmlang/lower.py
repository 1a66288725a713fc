"""Lowering: a checked `ModelIR` becomes a Pyro model, a `PyroModule` holding its networks and
`param`s.

Calling the lowered model runs the model: ``model(batch, *, batch_size=None, size=None,
mask=None)``. `batch` holds every `input` and any observed `data` variable, each shaped
``(B, *shape)``; a `data` variable absent from it is sampled. `global`s are sampled outside the
data plate, everything per data point inside ``pyro.plate("data", size=N,
subsample=arange(B))`` (plate dim -1), so the likelihood is scaled by N/B. Every site is named
after its variable and has the variable's shape as its event shape (`.to_event`). Finite
discrete latents are marked for parallel enumeration; a guide that samples one overrides it.
docs/internals.md has the tensor conventions.

>>> from dgmlang.ir import Draw, Lit, ModelIR, Ref, Variable
>>> ir = ModelIR("tiny", (Variable("z", "latent", (2,)), Variable("x", "data", (2,))),
...              (Draw("z", "Normal", (("loc", Lit(0.0, ())), ("scale", Lit(1.0, ())))),
...               Draw("x", "Normal", (("loc", Ref("z", (2,))), ("scale", Lit(0.1, ()))))))
>>> model = lower(ir, seed=0)
>>> values = model({}, batch_size=5)
>>> values["z"].shape, values["x"].shape
(torch.Size([5, 2]), torch.Size([5, 2]))
"""
from __future__ import annotations

import itertools
from typing import Any, Mapping

import torch
from torch.distributions import biject_to

import pyro
from pyro.distributions import constraints
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from pyro.nn import PyroModule, PyroParam
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, check_site_shape, check_traceenum_requirements
from torch import nn

from dgmlang import ir as irm
from dgmlang.errors import DGMDataError, DGMUsageError, did_you_mean
from dgmlang.evaluate import Evaluator
from dgmlang.facts import ModelFacts
from dgmlang.marginals import ObservedPart, redraw
from dgmlang.nets import build_net, seeded
from dgmlang.chains import ChainSite, chain_pairs
from dgmlang import statespace
from dgmlang.recurrence import SequenceSite, autoregressive_data
from dgmlang.sites import ModelSite, WholeSequenceSite, missing_site, refuse_gaps

#: The data plate is the only plate: enumeration dimensions go left of it.
MAX_PLATE_NESTING = 1
PLATE_NAME = "data"

#: `param` types and the constraints their values live in (an `int` param is a check error).
PARAM_CONSTRAINTS = {
    "real": constraints.real,
    "positive": constraints.positive,
    "unit": constraints.unit_interval,
    "simplex": constraints.simplex,
}

_instance_ids = itertools.count()


def safe_attribute(container: nn.Module, name: str) -> str:
    """`name`, or `name` with underscores appended while it would shadow a module attribute
    (a model may call a variable `training` or `eval`)."""
    key = name
    while hasattr(container, key) or hasattr(container, key + "_unconstrained"):
        key += "_"
    return key


def announce_parameters(module: PyroModule, store_name: str) -> None:
    """Under Pyro's global param store (the default), name the weights of `module`'s plain
    torch submodules (networks, references) in ``pyro.param`` statements, as
    ``pyro.module(store_name.child, ...)`` does, so a user's own `pyro.infer.SVI` loop, which
    optimizes what its traces' param statements name, trains them too. `PyroParam`s announce
    themselves. Under ``module_local_params`` (how `fit` runs) nothing is announced:
    ``elbo(model, guide).parameters()`` and `module.parameters()` already hold everything."""
    if pyro.settings.get("module_local_params"):
        return
    for name, child in module.named_children():
        if not isinstance(child, PyroModule) and any(True for _ in child.parameters()):
            pyro.module(f"{store_name}${name}", child)


class ParamBank(PyroModule):
    """The model's `param`s as `PyroParam`s, looked up by variable name with `value(name)`."""

    def __init__(self):
        super().__init__()
        self._keys: dict[str, str] = {}

    def add(self, name: str, init: torch.Tensor, constraint) -> None:
        key = safe_attribute(self, name)
        self._keys[name] = key
        setattr(self, key, PyroParam(init, constraint))

    def value(self, name: str) -> torch.Tensor:
        return getattr(self, self._keys[name])

    def __contains__(self, name: str) -> bool:
        return name in self._keys


def initial_value(shape: tuple[int, ...], constraint) -> torch.Tensor:
    """A draw through `constraint` of a standard Normal in the unconstrained space (the
    initialisation rule of every `param` and variational location; uses torch's RNG).

    >>> with seeded(0):
    ...     value = initial_value((3,), constraints.simplex)
    >>> value.shape, bool(abs(value.sum() - 1) < 1e-6)
    (torch.Size([3]), True)
    """
    transform = biject_to(constraint)
    unconstrained = torch.randn(transform.inverse_shape(torch.Size(shape)))
    return transform(unconstrained).detach()


class LoweredModel(PyroModule):
    """The Pyro model of a checked model; see the module docs for the call signature.

    Attributes: `ir`, `facts`, `nets` (an `nn.ModuleDict` by network name), `params` (a
    `ParamBank`), `evaluator` (`dgmlang.evaluate.Evaluator`), `sites` (one
    `dgmlang.sites.ModelSite` per random variable: globals, then the rest, each in
    topological order; a data sequence and its latent chain are one
    `dgmlang.chains.ChainSite`, also in `chains` by the chain's name; an autoregressive data
    sequence is a `dgmlang.recurrence.SequenceSite`), `max_plate_nesting`.
    """

    def __init__(self, ir: irm.ModelIR, *, seed: int = 0, facts: ModelFacts | None = None):
        # Built in module-local mode, Pyro's modules keep the state that mode needs, so the
        # model works both with the global param store and under module_local_params=True.
        with pyro.settings.context(module_local_params=True):
            self._build(ir, seed, facts if facts is not None else ModelFacts(ir))

    def _build(self, ir: irm.ModelIR, seed: int, facts: ModelFacts) -> None:
        #: the module's name in Pyro's param store, unique per build (``gmm.0``)
        self.unique_name = f"{ir.name}.{next(_instance_ids)}"
        super().__init__(name=self.unique_name)
        self.ir = ir
        self.facts = facts
        self.max_plate_nesting = MAX_PLATE_NESTING
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        self.input_names = ir.names("input")

        net_keys: dict[str, str] = {}
        nets = nn.ModuleDict()
        params = ParamBank()
        with seeded(seed):
            for net in ir.nets:
                key = safe_attribute(nets, net.name)
                net_keys[net.name] = key
                nets[key] = build_net(net)
            for var in ir.variables:
                if var.role == "param":
                    constraint = PARAM_CONSTRAINTS[var.type]  # the checker refuses others
                    params.add(var.name, initial_value(var.shape, constraint), constraint)
        self._net_keys = net_keys
        self.nets = nets
        self.params = params
        self.evaluator = Evaluator(ir, self, facts=facts)
        continuous = statespace.continuous_chains(facts)  # sites of their own, not summed out
        recurrent = autoregressive_data(facts)
        pairs = {data: chain for data, chain in chain_pairs(facts).items() if chain not in continuous}
        chains = set(pairs.values())
        #: each data sequence's site (`dgmlang.chains.ChainSite`) by its chain's name
        self.chains = {chain: ChainSite(data, chain, facts, self.evaluator, self.net)
                       for data, chain in pairs.items()}
        self.sites = [self.chains[pairs[name]] if name in pairs else
                      SequenceSite(name, facts, self.evaluator, self.net) if name in recurrent else
                      statespace.sequence_site(name, facts, self.evaluator, self.net, continuous)
                      or ModelSite(name, facts, self.evaluator, self.net)
                      for name in (*facts.global_order, *facts.local_order) if name not in chains]
        self._sites_by_name = {site.name: site for site in self.sites}

    # These run several times a training step: they read the module's own dicts, not
    # attributes, which PyroModule's __getattr__ serves at about 5 microseconds each.
    @property
    def dtype(self) -> torch.dtype:
        """The float dtype values are computed in (follows `.double()`, `.to(...)`)."""
        return self._buffers["_anchor"].dtype

    @property
    def device(self) -> torch.device:
        """The device values are computed on."""
        return self._buffers["_anchor"].device

    def net(self, name: str) -> nn.Module:
        """The module of the network called `name` in the model."""
        return self._modules["nets"][self._net_keys[name]]

    def param(self, name: str) -> torch.Tensor | None:
        """The current value of the `param` called `name` (None when there is none)."""
        params = self._modules["params"]
        return params.value(name) if name in params else None

    def site(self, name: str) -> ModelSite:
        """The description of the random variable `name`."""
        return self._sites_by_name[name]

    # ------------------------------------------------------------------ the model

    def forward(self, batch: Mapping[str, Any] | None = None, *, batch_size: int | None = None,
                size: int | None = None, mask: Mapping[str, Any] | None = None) -> dict:
        """Run the model; returns every site's value by variable name.

        `mask` optionally holds, per observed `data` variable, a boolean array shaped like it
        (True where observed): only observed entries enter the likelihood; the others may hold
        anything, NaN included.
        """
        self.evaluator.refresh()
        announce_parameters(self, self.unique_name)
        batch = dict(batch or {})
        mask = dict(mask or {})
        n_batch = self.batch_size_of(batch, batch_size)
        total = n_batch if size is None else int(size)
        if total < n_batch:
            raise DGMUsageError(f"size={total} is smaller than the batch ({n_batch} points)")
        for name in mask:
            if name not in batch or name not in self.ir.names("data"):
                raise DGMDataError(f"mask for '{name}', which is not observed data in the batch")
        env: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            if name not in batch:
                raise DGMDataError(f"input '{name}' is missing: every input must be given")
            env[name] = self.as_value(name, batch[name], n_batch)
        values: dict[str, torch.Tensor] = {}
        locals_ = [site for site in self.sites if not site.is_global]
        for site in self.sites:
            if site.is_global:
                values[site.name] = env[site.name] = self._sample(site, env, None, None)
        subsample = torch.arange(n_batch, device=self._anchor.device)
        with pyro.plate(PLATE_NAME, size=total, subsample=subsample):
            for site in locals_:
                name = site.name
                obs = observed = None
                if name in batch:
                    obs = self.as_value(name, batch[name], n_batch)
                    if name in mask:
                        observed = torch.as_tensor(mask[name], device=obs.device).bool()
                        if observed.shape != obs.shape:
                            raise DGMDataError(
                                f"the mask of '{name}' should be shaped {list(obs.shape)}, "
                                f"not {list(observed.shape)}"
                            )
                if isinstance(site, (ChainSite, SequenceSite)):  # a data sequence, scored exactly
                    drawn = site.sample(env, obs, observed, n_batch)
                    values.update(drawn)
                    env.update(drawn)
                    continue
                if observed is not None and isinstance(site, WholeSequenceSite):
                    refuse_gaps(name, observed)  # padding is no gap; gaps in a sequence are refused
                if observed is not None and site.imputed:
                    values[name] = env[name] = self._impute(site, env, obs, observed)
                else:
                    values[name] = env[name] = self._sample(site, env, obs, observed)
        return values

    def _impute(self, site: ModelSite, env: dict, obs, observed) -> torch.Tensor:
        """A data variable with children and missing entries: the missing entries are a
        latent site (`missing_site`, which the guide samples), the observed ones observed,
        and the variable's value, every entry scored once, is the two put together."""
        base = site.distribution(env)
        dims = site.event_dims
        unseen = base.mask(~observed)
        draw = pyro.sample(missing_site(site.name), unseen.to_event(dims) if dims else unseen)
        value = torch.where(observed, obs, draw)
        seen = base.mask(observed)
        pyro.sample(site.name, seen.to_event(dims) if dims else seen, obs=value)
        return value

    def batch_size_of(self, batch: Mapping[str, Any], batch_size: int | None) -> int:
        """B: the leading size shared by the tensors in `batch`, or `batch_size`. Every name
        in `batch` must be a `data` or `input` variable (a misspelt one would otherwise leave
        its variable to be sampled)."""
        allowed = self.ir.names("data", "input")
        for name in batch:
            if name not in allowed:
                raise DGMDataError(
                    f"'{name}' is not a data or input variable of model '{self.ir.name}'",
                    hint=did_you_mean(name, allowed) or f"those are: {', '.join(allowed)}",
                )
        sizes = {name: len(value) for name, value in batch.items()}
        if batch_size is not None:
            sizes["batch_size"] = int(batch_size)
        if not sizes:
            raise DGMUsageError("the batch is empty: pass batch_size= to say how many points")
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{k}: {v}" for k, v in sizes.items())
            raise DGMDataError(f"the batch's variables disagree on the number of points ({listed})")
        return next(iter(sizes.values()))

    def as_value(self, name: str, value: Any, n_batch: int) -> torch.Tensor:
        """A batch entry as a float tensor of the model's dtype, checked to be ``(B, *shape)``."""
        tensor = torch.as_tensor(value, device=self._anchor.device).to(self._anchor.dtype)
        shape = self.facts.variables[name].shape
        if tuple(tensor.shape) != (n_batch, *shape):
            raise DGMDataError(
                f"'{name}' should be shaped {[n_batch, *shape]} (points first), "
                f"not {list(tensor.shape)}"
            )
        return tensor

    def _sample(self, site: ModelSite, env: dict, obs, observed) -> torch.Tensor:
        base = site.distribution(env)
        if observed is not None:
            # The missing entries outside the support (NaN, say) are replaced by a draw from
            # the model given the observed ones, which the mask then ignores: they would
            # fail validation and poison gradients even where masked. Placeholders inside it
            # (what `prepare_data` puts there) are kept: drawing every entry costs as much
            # as the rest of the step. A row of a joint distribution (a Dirichlet) scores
            # its observed entries' exact marginal (`ObservedPart`).
            rank = site.event_rank
            outside = ~base.support.check(obs)
            replace = ~observed & (outside.unsqueeze(-1) if rank else outside)
            while replace.dim() > observed.dim():
                replace = replace.any(0)
            if bool(replace.any()):
                filler = redraw(base, obs, observed).detach()
                while filler.dim() > obs.dim():
                    filler = filler[0]
                obs = torch.where(replace, filler, obs)
            base = ObservedPart(base, observed) if rank else base.mask(observed)
        fn = base.to_event(site.event_dims) if site.event_dims else base
        infer = {"enumerate": "parallel"} if obs is None and site.enumerable else {}
        return pyro.sample(site.name, fn, obs=obs, infer=infer)

    def distribution(self, draw: irm.Draw, env: dict):
        """The draw's distribution given the values in `env`, batch shape ``(*batch,)`` and
        event shape the variable's shape."""
        site = self.site(draw.target)
        self.evaluator.refresh()
        base = site.distribution(env)
        return base.to_event(site.event_dims) if site.event_dims else base

    def evaluate(self, expr: irm.IRExpr, env: dict) -> torch.Tensor:
        """The value of an IR expression, shaped ``(*batch, *expr.shape)`` (see
        `dgmlang.evaluate.Evaluator.evaluate`)."""
        self.evaluator.refresh()
        return self.evaluator.evaluate(expr, env)


def lower(ir: irm.ModelIR, *, seed: int = 0, facts: ModelFacts | None = None) -> LoweredModel:
    """The Pyro model of `ir` (networks and params initialised under `seed`); `facts` saves
    deriving the model's facts again."""
    return LoweredModel(ir, seed=seed, facts=facts)


def has_enumeration(plan, chains: frozenset[str] = frozenset()) -> bool:
    """Whether fitting needs `TraceEnum_ELBO`: some latent is summed out (in the model or in
    the guide) by Pyro's enumeration; latent `chains` are summed out by their data's site
    (`dgmlang.chains`) and need none."""
    return any(step.kind in ("enumerated_in_guide", "enumerated_in_model") and step.latent not in chains
               for step in plan.steps)


class GuideEnumerationELBO(pyro.infer.TraceEnum_ELBO):
    """`TraceEnum_ELBO` for guides that enumerate a discrete latent before sampling one of its
    parents in the model (``z -> y -> x`` with y discrete: the guide draws y from x, then z
    given y).

    The model then scores p(y | z) with z drawn once per value of y, so the parameters of y's
    distribution vary along y's own enumeration dim. The sum Pyro computes is the right one,
    sum_y q(y) E_q(z|y)[log p(y | z) + ...], but Pyro's shape check rejects any site whose
    parameters vary along its own enumeration dim, because for a latent enumerated *in the
    model* that would be a mistake. This class runs Pyro's trace and checks unchanged except
    that one check for model sites whose values come from the guide's enumeration.
    """

    def _get_trace(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(
            poutine.replay(model, trace=guide_trace), graph_type="flat"
        ).get_trace(*args, **kwargs)
        validating = is_validation_enabled()
        if validating:
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        model_trace.compute_log_prob()
        guide_trace.compute_score_parts()
        if validating:
            for site in guide_trace.nodes.values():
                if site["type"] == "sample":
                    check_site_shape(site, self.max_plate_nesting)
            for name, site in model_trace.nodes.items():
                if site["type"] != "sample":
                    continue
                if name in guide_trace.nodes and "_enumerate_dim" in site["infer"]:
                    infer = {k: v for k, v in site["infer"].items() if k != "_enumerate_dim"}
                    site = {**site, "infer": infer}
                check_site_shape(site, self.max_plate_nesting)
            check_traceenum_requirements(model_trace, guide_trace)
        guide_trace.pack_tensors()
        model_trace.pack_tensors(guide_trace.plate_to_symbol)
        return model_trace, guide_trace


def elbo_for(ir: irm.ModelIR, plan, *, num_particles: int = 1,
             vectorize_particles: bool = False) -> pyro.infer.ELBO:
    """The ELBO to fit `ir` with `plan`, all with ``max_plate_nesting=1``: `Trace_ELBO`
    without enumeration, `TraceEnum_ELBO` when latents are summed out in the model only, and
    `GuideEnumerationELBO` when the guide enumerates some."""
    if any(step.kind == "enumerated_in_guide" for step in plan.steps):
        cls = GuideEnumerationELBO
    elif has_enumeration(plan, frozenset(d.target for d in ir.draws if d.steps)):
        cls = pyro.infer.TraceEnum_ELBO
    else:
        cls = pyro.infer.Trace_ELBO
    return cls(max_plate_nesting=MAX_PLATE_NESTING, num_particles=num_particles,
               vectorize_particles=vectorize_particles)
