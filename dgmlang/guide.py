"""The derived guide: a `PyroModule` built from the guide plan (`dgmlang.inverse`).

Nobody writes it. It has the model's call signature and, per plan step:

* ``global`` — per-model variational parameters (not amortized), sampled outside the data plate;
* ``amortized`` — a network from the step's inputs (flattened and concatenated) to the
  parameters of q(latent | inputs), sampled inside the data plate with the model's subsample;
* ``enumerated_in_guide`` — an amortized Categorical / Bernoulli / Binomial q over the finite
  support, marked ``infer={"enumerate": "parallel"}`` so `TraceEnum_ELBO` sums over it exactly;
* ``enumerated_in_model`` — nothing: the model sums it out.

Continuous latents and globals have one of the families of `guide(family = ...)`:

* ``normal`` (default) — a diagonal Normal in the unconstrained space, pushed through
  ``biject_to(support)`` of the model's distribution (exp for positive, sigmoid for unit,
  stick-breaking for simplex, so the unconstrained value of a K-simplex has K-1 entries);
* ``mvn`` — a full-covariance MultivariateNormal over the flattened unconstrained value
  (amortized loc and lower-triangular scale, its diagonal through softplus);
* ``flow`` — the diagonal Normal followed by learned autoregressive transforms
  (`pyro.distributions.transforms.affine_autoregressive`, a spline for one dimension), shared
  by all data points;
* ``delta`` — a point estimate (`Delta`) through the same bijection.

docs/internals.md describes the networks' inputs, default sizes and initialisation.

>>> from dgmlang.graph import build_graph
>>> from dgmlang.inverse import invert
>>> from dgmlang.ir import Draw, Lit, ModelIR, Ref, Variable
>>> from dgmlang.lower import lower
>>> ir = ModelIR("tiny", (Variable("z", "latent", (2,)), Variable("x", "data", (2,))),
...              (Draw("z", "Normal", (("loc", Lit(0.0, ())), ("scale", Lit(1.0, ())))),
...               Draw("x", "Normal", (("loc", Ref("z", (2,))), ("scale", Lit(0.1, ()))))))
>>> plan = invert(build_graph(ir))
>>> plan.as_list()
[('z', ['x'])]
>>> guide = build_guide(ir, plan, lower(ir))
>>> guide({"x": torch.zeros(5, 2)})["z"].shape
torch.Size([5, 2])
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import ReshapeTransform

import pyro
import pyro.distributions as pdist
import pyro.distributions.transforms as ptransforms
from pyro.nn import PyroModule, PyroParam

from dgmlang import ir as irm
from dgmlang.distributions import DISTRIBUTIONS
from dgmlang.errors import DGMDataError, DGMGuideError
from dgmlang.lower import (
    PLATE_NAME, LoweredModel, all_expressions, concat_features, draw_expressions, flatten_event,
    pyro_class, safe_attribute, walk,
)
from dgmlang.nets import FlatMLP, POSITIVE_FLOOR, seeded

#: Hidden sizes of a guide network whose latent feeds no network in the model.
DEFAULT_HIDDEN = (64,)
#: Hidden sizes of a guide network whose latent first feeds a `deconv` (the guide is an mlp).
DECONV_GUIDE_HIDDEN = (256, 256)
#: Initial standard deviation of a global's variational distribution (unconstrained space).
GLOBAL_INIT_SCALE = 0.1
#: Added to the guide's seed so its networks do not start as copies of the model's.
GUIDE_SEED_OFFSET = 104_729

_instance_ids = itertools.count()


@dataclass(frozen=True)
class LatentShape:
    """What the guide needs to know about one latent or global's values.

    `support` is the model distribution's support (None when it depends on the parameters,
    as Uniform's does; it is then read from the model at each call), `unconstrained` the shape
    of the value before ``biject_to(support)``.
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


def latent_shape(ir: irm.ModelIR, name: str) -> LatentShape:
    """The `LatentShape` of a continuous latent or global of `ir`."""
    var = ir.variable(name)
    support = pyro_class(ir.draw(name).dist).support
    if constraints.is_dependent(support):
        support, unconstrained = None, var.shape
    else:
        unconstrained = tuple(biject_to(support).inverse_shape(torch.Size(var.shape)))
    family = var.guide.family if var.guide is not None else "normal"
    return LatentShape(name, var.shape, unconstrained, support, family)


def flow_transforms(size: int) -> nn.ModuleList:
    """The learned transforms of the `flow` family on `size` numbers: two affine
    autoregressive layers (each with its own random order), or a rational-quadratic spline
    when there is one number."""
    if size == 1:
        return nn.ModuleList([ptransforms.spline(1)])
    return nn.ModuleList([ptransforms.affine_autoregressive(size) for _ in range(2)])


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


def to_support(info: LatentShape, support) -> list:
    """The transforms from the flat unconstrained value to the latent's support."""
    result = []
    if info.family in ("mvn", "flow") and info.unconstrained != (info.size,):
        result.append(ReshapeTransform((info.size,), info.unconstrained))
    bijection = biject_to(support)
    if bijection is not torch.distributions.transforms.identity_transform:
        result.append(bijection)
    return result


def family_distribution(info: LatentShape, support, raw: dict[str, torch.Tensor],
                        flow: nn.ModuleList | None) -> pdist.TorchDistribution:
    """q for one continuous latent from its parameters `raw`, each over the flattened
    unconstrained value, ``(*batch, info.size)``: "loc" and "scale" (normal, flow), "loc" and
    "scale_tril" (mvn), or "loc" (delta)."""
    loc = raw["loc"]
    if info.family == "delta":
        value = loc.reshape(loc.shape[:-1] + info.unconstrained)
        value = biject_to(support)(value)
        return pdist.Delta(value, event_dim=len(info.shape))
    if info.family == "mvn":
        base = pdist.MultivariateNormal(loc, scale_tril=raw["scale_tril"])
        transforms = to_support(info, support)
    elif info.family == "flow":
        base = pdist.Normal(loc, raw["scale"]).to_event(1)
        transforms = [*flow, *to_support(info, support)]
    else:
        shape = (*loc.shape[:-1], *info.unconstrained)
        base = pdist.Normal(loc.reshape(shape), raw["scale"].reshape(shape))
        base = base.to_event(len(info.unconstrained)) if info.unconstrained else base
        transforms = to_support(info, support)
    return pdist.TransformedDistribution(base, transforms) if transforms else base


class GlobalFamily(PyroModule):
    """The variational parameters of one global, all over its flattened unconstrained value:
    `loc` (a standard Normal draw), then `scale` (0.1) or `scale_tril` (0.1 I), and its flow."""

    def __init__(self, info: LatentShape):
        super().__init__()
        self.loc = PyroParam(torch.randn(info.size))
        if info.family == "mvn":
            self.scale_tril = PyroParam(GLOBAL_INIT_SCALE * torch.eye(info.size),
                                        constraints.lower_cholesky)
        elif info.family != "delta":
            self.scale = PyroParam(torch.full((info.size,), GLOBAL_INIT_SCALE),
                                   constraints.positive)
        self.flow = flow_transforms(info.size) if info.family == "flow" else None

    def parameters_of(self, info: LatentShape) -> dict[str, torch.Tensor]:
        raw = {"loc": self.loc}
        if info.family == "mvn":
            raw["scale_tril"] = self.scale_tril
        elif info.family != "delta":
            raw["scale"] = self.scale
        return raw


class VariationalGlobals(PyroModule):
    """One `GlobalFamily` per global, by variable name (`family(name)`)."""

    def __init__(self):
        super().__init__()
        self._keys: dict[str, str] = {}

    def add(self, name: str, family: GlobalFamily) -> None:
        key = safe_attribute(self, name)
        self._keys[name] = key
        setattr(self, key, family)

    def family(self, name: str) -> GlobalFamily:
        return getattr(self, self._keys[name])


class AmortizedGuide(PyroModule):
    """The guide derived from a plan; call it like the model. See the module docs.

    Attributes: `plan`, `nets` (the amortized networks by latent name), `flows`,
    `variational` (the globals' parameters), `input_encoding` (per input name: the number of
    classes it is one-hot encoded with, or None when fed as it is).
    """

    def __init__(self, ir: irm.ModelIR, plan, lowered: LoweredModel, *, seed: int = 0):
        # Module-local mode at construction keeps the guide usable in both param modes (see
        # LoweredModel).
        with pyro.settings.context(module_local_params=True):
            self._build(ir, plan, lowered, seed)

    def _build(self, ir: irm.ModelIR, plan, lowered: LoweredModel, seed: int) -> None:
        super().__init__(name=f"{lowered._pyro_name}.guide{next(_instance_ids)}")
        object.__setattr__(self, "_lowered", lowered)  # the model's module, not a submodule
        self.ir = ir
        self.plan = plan
        self.input_encoding: dict[str, int | None] = {}
        self._infos: dict[str, LatentShape] = {}
        self._net_keys: dict[str, str] = {}
        self._flow_keys: dict[str, str] = {}
        self._global_steps, self._local_steps = [], []
        nets, flows, variational = nn.ModuleDict(), nn.ModuleDict(), VariationalGlobals()
        # Whole-model walks done once (a model may have thousands of latents).
        mirrored = mirrored_networks(ir)
        self._onehot_classes = _onehot_classes(ir)
        with seeded(seed + GUIDE_SEED_OFFSET):
            for step in plan.steps:
                draw = ir.draw(step.latent)
                spec = DISTRIBUTIONS[draw.dist]
                if step.kind == "enumerated_in_model":
                    continue
                if step.kind == "global":
                    if spec.discrete:
                        raise DGMGuideError(
                            f"global '{step.latent}' is discrete ({spec.name}); the guide of a "
                            "global has continuous variational parameters",
                            ir.variable(step.latent).span,
                            hint="make it a latent (one per data point) or a param",
                        )
                    info = self._infos[step.latent] = latent_shape(ir, step.latent)
                    variational.add(step.latent, GlobalFamily(info))
                    self._global_steps.append(step)
                    continue
                in_features = sum(self._feature_size(name) for name in step.inputs)
                if step.kind == "enumerated_in_guide":
                    out_features = self._classes(draw) if draw.dist == "Categorical" else 1
                else:
                    info = self._infos[step.latent] = latent_shape(ir, step.latent)
                    out_features = raw_size(info.family, info.size)
                    if info.family == "flow":
                        key = self._flow_keys[step.latent] = safe_attribute(flows, step.latent)
                        flows[key] = flow_transforms(info.size)
                hidden, act = guide_hidden(ir, step.latent, mirrored=mirrored)
                key = self._net_keys[step.latent] = safe_attribute(nets, step.latent)
                nets[key] = FlatMLP(in_features, hidden, out_features, act)
                self._local_steps.append(step)
        self.nets = nets
        self.flows = flows
        self.variational = variational

    # ------------------------------------------------------------------ building

    def _classes(self, draw: irm.Draw) -> int:
        """K of a Categorical draw (the last dim of its probs or logits)."""
        if draw.packed is not None:
            return draw.packed_params[0].shape[-1]
        expr = draw.param("logits") or draw.param("probs")
        return expr.shape[-1]

    def _feature_size(self, name: str) -> int:
        """How many numbers `name` contributes to a guide network's input."""
        if name not in self.input_encoding:
            self.input_encoding[name] = self._one_hot_classes(name)
        classes = self.input_encoding[name]
        return math.prod(self.ir.variable(name).shape) * (classes or 1)

    def _one_hot_classes(self, name: str) -> int | None:
        """K when `name` holds class labels: a Categorical draw, or a value the model itself
        passes to ``onehot(name, K)``; None otherwise."""
        if self.ir.variable(name).role in ("data", "latent", "global"):
            draw = self.ir.draw(name)
            if draw.dist == "Categorical":
                return self._classes(draw)
        return self._onehot_classes.get(name)

    # ------------------------------------------------------------------ the guide

    def forward(self, batch: Mapping[str, Any] | None = None, *, batch_size: int | None = None,
                size: int | None = None, mask: Mapping[str, Any] | None = None) -> dict:
        """Sample every latent the guide handles; returns their values by name.

        `mask` is accepted for the model's signature and not used: the guide reads the data
        as given, so a caller fills missing entries before calling it.
        """
        lowered = self._lowered
        batch = dict(batch or {})
        n_batch = lowered.batch_size_of(batch, batch_size)
        total = n_batch if size is None else int(size)
        env = {name: lowered.as_value(name, value, n_batch) for name, value in batch.items()}
        sites: dict[str, torch.Tensor] = {}
        for step in self._global_steps:
            info = self._infos[step.latent]
            family = self.variational.family(step.latent)
            q = family_distribution(info, self._support(info, env), family.parameters_of(info),
                                    family.flow)
            sites[step.latent] = env[step.latent] = pyro.sample(step.latent, q)
        subsample = torch.arange(n_batch, device=lowered.device)
        with pyro.plate(PLATE_NAME, size=total, subsample=subsample):
            for step in self._local_steps:
                raw = self.nets[self._net_keys[step.latent]](self._features(step, env))
                if step.kind == "enumerated_in_guide":
                    q = self._discrete_q(step.latent, raw, env)
                    value = pyro.sample(step.latent, q, infer={"enumerate": "parallel"})
                else:
                    info = self._infos[step.latent]
                    q = family_distribution(info, self._support(info, env),
                                            _split_raw(info, raw), self._flow(step.latent))
                    value = pyro.sample(step.latent, q)
                sites[step.latent] = env[step.latent] = value
        return sites

    def network_input(self, latent: str, env: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The features the guide network of `latent` reads from the values in `env`."""
        return self._features(self.plan.step(latent), env)

    def _features(self, step, env: Mapping[str, torch.Tensor]) -> torch.Tensor:
        dtype = self._lowered.dtype
        if not step.inputs:
            return torch.zeros(0, dtype=dtype, device=self._lowered.device)
        parts = []
        for name in step.inputs:
            if name not in env:
                raise DGMDataError(
                    f"the guide of '{step.latent}' reads '{name}', which is missing from the batch"
                )
            value, rank = env[name], len(self.ir.variable(name).shape)
            classes = self.input_encoding[name]
            if classes:
                value, rank = nn.functional.one_hot(value.long(), classes), rank + 1
            parts.append(flatten_event(value, rank))
        return concat_features(parts, dtype)

    def _flow(self, latent: str) -> nn.ModuleList | None:
        key = self._flow_keys.get(latent)
        return None if key is None else self.flows[key]

    def _support(self, info: LatentShape, env: dict):
        if info.support is not None:
            return info.support
        draw = self.ir.draw(info.name)
        try:
            return self._lowered.base_distribution(draw, dict(env))[0].support
        except DGMDataError as err:
            raise DGMGuideError(
                f"the support of '{info.name}' depends on a value its guide does not see",
                draw.span,
            ) from err

    def _discrete_q(self, latent: str, raw: torch.Tensor, env: dict) -> pdist.TorchDistribution:
        draw = self.ir.draw(latent)
        if draw.dist == "Categorical":
            return pdist.Categorical(logits=raw)
        if draw.dist == "Bernoulli":
            return pdist.Bernoulli(logits=raw.squeeze(-1))
        total = draw.param("total_count")
        count = self._lowered.evaluate(total, dict(env)) if total is not None else 1.0
        return pdist.Binomial(total_count=count, logits=raw.squeeze(-1))


def _split_raw(info: LatentShape, raw: torch.Tensor) -> dict[str, torch.Tensor]:
    """A network's output split into the family's parameters."""
    size = info.size
    if info.family == "delta":
        return {"loc": raw}
    if info.family == "mvn":
        loc, tril = raw.split([size, raw.shape[-1] - size], dim=-1)
        return {"loc": loc, "scale_tril": lower_triangular(tril, size)}
    loc, scale = raw.split([size, size], dim=-1)
    return {"loc": loc, "scale": nn.functional.softplus(scale) + POSITIVE_FLOOR}


def mirrored_networks(ir: irm.ModelIR) -> dict[str, tuple[tuple[int, ...], str]]:
    """For every variable some network reads (directly or through `let`s): the mirror image
    of the first such network in the order of the model's draws — reversed hidden sizes and
    the same activation, `DECONV_GUIDE_HIDDEN` for a deconv. One walk over the model."""
    lets = {let.name: let.value for let in ir.lets}
    nets = {net.name: net for net in ir.nets}
    let_reads: dict[str, frozenset[str]] = {}

    def through_let(name: str) -> frozenset[str]:
        """Every name the let `name` reads, through other lets too (memoized, no recursion)."""
        if name not in let_reads:
            names: set[str] = set()
            pending, seen = [lets[name]], {name}
            while pending:
                for e in walk([pending.pop()]):
                    if isinstance(e, irm.Ref):
                        names.add(e.name)
                        if e.name in let_reads:
                            names |= let_reads[e.name]
                        elif e.name in lets and e.name not in seen:
                            seen.add(e.name)
                            pending.append(lets[e.name])
            let_reads[name] = frozenset(names)
        return let_reads[name]

    def reads(exprs) -> set[str]:
        names: set[str] = set()
        for e in walk(exprs):
            if isinstance(e, irm.Ref):
                names.add(e.name)
                if e.name in lets:
                    names |= through_let(e.name)
        return names

    mirrored: dict[str, tuple[tuple[int, ...], str]] = {}
    for draw in ir.draws:
        for e in walk(draw_expressions(draw)):
            if isinstance(e, irm.NetCall):
                net = nets[e.net]
                hidden = tuple(reversed(net.hidden)) if net.kind == "mlp" else DECONV_GUIDE_HIDDEN
                for name in reads(e.args):
                    mirrored.setdefault(name, (hidden, net.activation))
    return mirrored


def guide_hidden(ir: irm.ModelIR, latent: str, *,
                 mirrored: dict[str, tuple[tuple[int, ...], str]] | None = None,
                 ) -> tuple[tuple[int, ...], str]:
    """Hidden sizes and activation of the guide network of `latent`.

    `guide(hidden = ...)` when given; otherwise the mirror image (reversed hidden sizes, same
    activation) of the first network, in the order of the model's draws, that reads the
    latent; `DECONV_GUIDE_HIDDEN` when that is a deconv; `DEFAULT_HIDDEN` when it feeds none.
    `mirrored` (`mirrored_networks(ir)`) saves walking the model again for each latent.
    """
    var = ir.variable(latent)
    if mirrored is None:
        mirrored = mirrored_networks(ir)
    hidden, act = mirrored.get(latent) or (DEFAULT_HIDDEN, "relu")
    if var.guide is not None and var.guide.hidden is not None:
        hidden = tuple(var.guide.hidden)
    return hidden, act


def _onehot_classes(ir: irm.ModelIR) -> dict[str, int]:
    """K for every variable the model passes to ``onehot(name, K)`` (the first such call)."""
    classes: dict[str, int] = {}
    for expr in all_expressions(ir):
        if (isinstance(expr, irm.BuiltinCall) and expr.func == "onehot"
                and isinstance(expr.args[0], irm.Ref) and isinstance(expr.args[1], irm.Lit)):
            classes.setdefault(expr.args[0].name, int(expr.args[1].value))
    return classes


def build_guide(ir: irm.ModelIR, plan, lowered: LoweredModel, *, seed: int = 0) -> AmortizedGuide:
    """The derived guide of `ir` for `plan`, its networks initialised under `seed`."""
    return AmortizedGuide(ir, plan, lowered, seed=seed)
