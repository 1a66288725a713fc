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
from dataclasses import replace
from typing import Any, Mapping

import torch
from torch import nn
from torch.distributions import constraints

import pyro
import pyro.distributions.transforms as ptransforms
from pyro.nn import PyroModule, PyroParam

from dgmlang import ir as irm
from dgmlang.distributions import DISTRIBUTIONS
from dgmlang import statespace
from dgmlang.facts import ModelFacts
from dgmlang.inverse import STRUCTURED_CHAIN
from dgmlang.lower import PLATE_NAME, LoweredModel, announce_parameters, safe_attribute
from dgmlang.nets import FlatMLP, seeded
from dgmlang.sites import (GuideSite, LatentShape, Reference, guide_inputs, latent_shape, missing_site,
                           raw_size)

#: Hidden sizes of a guide network whose latent feeds no network in the model.
DEFAULT_HIDDEN = (64,)
#: An imputation step's q is a full-covariance normal (mvn) over its variable's entries up to
#: this many entries (they are correlated through the latents), a diagonal one beyond.
IMPUTE_MVN_ENTRIES = 32
#: Hidden sizes of a guide network whose latent first feeds a `deconv` (the guide is an mlp).
DECONV_GUIDE_HIDDEN = (256, 256)
#: Initial standard deviation of a global's variational distribution (unconstrained space).
GLOBAL_INIT_SCALE = 0.1
#: Added to the guide's seed so its networks do not start as copies of the model's.
GUIDE_SEED_OFFSET = 104_729

_instance_ids = itertools.count()


def flow_transforms(size: int) -> nn.ModuleList:
    """The learned transforms of the `flow` family on `size` numbers: two affine
    autoregressive layers (each with its own random order), or a rational-quadratic spline
    when there is one number."""
    if size == 1:
        return nn.ModuleList([ptransforms.spline(1)])
    return nn.ModuleList([ptransforms.affine_autoregressive(size) for _ in range(2)])


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

    Attributes: `plan`, `nets` (the amortized networks by latent name), `label_nets` and
    `label_sites` (by label: the networks of q(label | inputs) of the plan's label steps,
    read where a label is missing; see `dgmlang.inverse.label_steps`), `flows`,
    `variational` (the globals' parameters), `sites` (one `dgmlang.sites.GuideSite` per
    latent the guide samples, in sampling order), `input_encoding` (per input name: the
    number of classes it is one-hot encoded with, or None when fed as it is),
    `references` (by continuous latent or global: what its q is relative to, over its flat
    unconstrained value) and `input_references` (by input fed as it is: what standardizes
    it), each a `dgmlang.sites.Reference` set by `dgmlang.calibrate`.
    """

    def __init__(self, ir: irm.ModelIR, plan, lowered: LoweredModel, *, seed: int = 0):
        # Module-local mode at construction keeps the guide usable in both param modes (see
        # LoweredModel).
        with pyro.settings.context(module_local_params=True):
            self._build(ir, plan, lowered, seed)

    def _build(self, ir: irm.ModelIR, plan, lowered: LoweredModel, seed: int) -> None:
        #: the module's name in Pyro's param store, unique per build (``gmm.0.guide1``)
        self.store_name = f"{lowered.unique_name}.guide{next(_instance_ids)}"
        super().__init__(name=self.store_name)
        object.__setattr__(self, "_lowered", lowered)  # the model's module, not a submodule
        facts = lowered.facts
        self.ir = ir
        self.plan = plan
        self.input_encoding: dict[str, int | None] = {}
        nets, flows, variational = nn.ModuleDict(), nn.ModuleDict(), VariationalGlobals()
        references, input_references = nn.ModuleDict(), nn.ModuleDict()
        self._reference_keys: dict[str, str] = {}
        self._input_reference_keys: dict[str, str] = {}
        sites: list[GuideSite] = []
        mirrored = mirrored_networks(facts)  # one walk over the model, not one per latent
        with seeded(seed + GUIDE_SEED_OFFSET):
            for step in plan.steps:
                spec = DISTRIBUTIONS[facts.draws[step.latent].dist]
                if step.kind == "enumerated_in_model":
                    continue
                model_site = lowered.site(step.latent)
                if step.kind == STRUCTURED_CHAIN:  # a continuous latent chain (dgmlang.statespace)
                    data = step.inputs[-1]
                    self.input_encoding.setdefault(data, None)
                    site = statespace.build_guide_site(
                        step, facts, lowered,
                        self._reference(references, self._reference_keys, step.latent,
                                        (statespace.step_info(facts, step.latent).size,)),
                        {data: self._reference(input_references, self._input_reference_keys, data, ())},
                        facts.variables[step.latent].guide and facts.variables[step.latent].guide.hidden)
                    nets[safe_attribute(nets, step.latent)] = site.network
                    sites.append(site)
                    continue
                if step.kind == "global":  # continuous: the checker refuses discrete globals
                    info = latent_shape(facts, step.latent)
                    family = GlobalFamily(info)
                    variational.add(step.latent, family)
                    reference = self._reference(references, self._reference_keys, step.latent,
                                                (info.size,))
                    sites.append(GuideSite(step, model_site, info=info, inputs=[],
                                           evaluator=lowered.evaluator, variational=family,
                                           flow=family.flow, reference=reference))
                    continue
                inputs, standardized, in_features = self._network_inputs(step, facts, input_references)
                info, flow, reference = None, None, None
                if step.kind == "enumerated_in_guide":
                    out_features = facts.classes(step.latent) if spec.name == "Categorical" else 1
                else:
                    info = latent_shape(facts, step.latent)
                    out_features = raw_size(info.family, info.size)
                    reference = self._reference(references, self._reference_keys, step.latent,
                                                (info.size,))
                    if info.family == "flow":
                        key = safe_attribute(flows, step.latent)
                        flow = flows[key] = flow_transforms(info.size)
                hidden, act = guide_hidden(facts, step.latent, mirrored=mirrored)
                key = safe_attribute(nets, step.latent)
                network = nets[key] = FlatMLP(in_features, hidden, out_features, act)
                sites.append(GuideSite(step, model_site, info=info, inputs=inputs,
                                       evaluator=lowered.evaluator, network=network, flow=flow,
                                       reference=reference, input_references=standardized))
            # after every latent's network, so adding them changes no other initialisation
            label_nets = nn.ModuleDict()
            label_sites: list[GuideSite] = []
            for step in getattr(plan, "labels", ()):
                inputs, standardized, in_features = self._network_inputs(step, facts, input_references)
                dist = facts.draws[step.latent].dist
                out_features = facts.classes(step.latent) if dist == "Categorical" else 1
                hidden, act = guide_hidden(facts, step.latent, mirrored=mirrored)
                key = safe_attribute(label_nets, step.latent)
                network = label_nets[key] = FlatMLP(in_features, hidden, out_features, act)
                label_sites.append(GuideSite(step, lowered.site(step.latent), info=None,
                                             inputs=inputs, evaluator=lowered.evaluator,
                                             network=network, input_references=standardized))
            # imputation steps last, for the same reason
            imputation_nets = nn.ModuleDict()
            imputation_sites: list[GuideSite] = []
            for step in getattr(plan, "imputations", ()):
                inputs, standardized, in_features = self._network_inputs(step, facts, input_references)
                info = latent_shape(facts, step.latent)
                # correlated missing entries (through a latent) need a full covariance
                info = replace(info, family="mvn" if info.size <= IMPUTE_MVN_ENTRIES else "normal")
                reference = self._reference(references, self._reference_keys, step.latent, (info.size,))
                hidden, act = guide_hidden(facts, step.latent, mirrored=mirrored)
                key = safe_attribute(imputation_nets, step.latent)
                network = imputation_nets[key] = FlatMLP(in_features + info.size, hidden,  # + the mask
                                                         raw_size(info.family, info.size), act)
                imputation_sites.append(GuideSite(step, lowered.site(step.latent), info=info, inputs=inputs,
                                                  evaluator=lowered.evaluator, network=network,
                                                  reference=reference, input_references=standardized))
        self.imputation_nets = imputation_nets
        object.__setattr__(self, "imputation_sites", {site.name: site for site in imputation_sites})
        self.label_nets = label_nets
        object.__setattr__(self, "label_sites", {site.name: site for site in label_sites})
        self.nets = nets
        self.flows = flows
        self.variational = variational
        self.references = references
        self.input_references = input_references
        self.sites = sites
        self._sites_by_name = {site.name: site for site in sites}

    def _network_inputs(self, step, facts, input_references):
        """What the network of `step` reads: its inputs (`guide_inputs`), the reference
        scales of the real-valued ones it standardizes (by name), and its input width."""
        inputs = guide_inputs(step, facts)
        standardized = {}
        for item in inputs:
            self.input_encoding.setdefault(item.name, item.classes)
            if not item.classes:
                standardized[item.name] = self._reference(
                    input_references, self._input_reference_keys, item.name, ())
        in_features = sum(math.prod(facts.variables[i.name].shape) * (i.classes or 1) for i in inputs)
        return inputs, standardized, in_features

    @staticmethod
    def _reference(store: nn.ModuleDict, keys: dict[str, str], name: str,
                   shape: tuple[int, ...]) -> Reference:
        """The `Reference` of `name` in `store`, made (neutral) the first time."""
        if name not in keys:
            keys[name] = safe_attribute(store, name)
            store[keys[name]] = Reference(shape)
        return store[keys[name]]

    def reference(self, name: str) -> Reference:
        """The reference of continuous latent or global `name`'s q (KeyError: none)."""
        return self.references[self._reference_keys[name]]

    def input_reference(self, name: str) -> Reference:
        """The reference that standardizes input `name` (KeyError: none)."""
        return self.input_references[self._input_reference_keys[name]]

    @property
    def model(self) -> LoweredModel:
        """The lowered model this guide was derived for."""
        return self._lowered

    # ------------------------------------------------------------------ the guide

    def forward(self, batch: Mapping[str, Any] | None = None, *, batch_size: int | None = None,
                size: int | None = None, mask: Mapping[str, Any] | None = None) -> dict:
        """Sample every latent the guide handles; returns their values by name.

        `mask` (per data variable, True = observed) marks missing entries: the guide reads
        them filled by `filled`, and does not know which entries they were.
        """
        lowered = self._lowered
        lowered.evaluator.refresh()
        announce_parameters(self, self.store_name)
        batch = dict(batch or {})
        n_batch = lowered.batch_size_of(batch, batch_size)
        total = n_batch if size is None else int(size)
        env = {name: lowered.as_value(name, value, n_batch) for name, value in batch.items()}
        given = {name: env[name] for name in mask or {}}
        masks = {name: torch.as_tensor(m, device=lowered.device).bool() for name, m in (mask or {}).items()}
        if mask:
            env.update(self.filled(given, masks))
        values: dict[str, torch.Tensor] = {}
        for site in self.sites:
            if site.is_global:
                values[site.name] = env[site.name] = pyro.sample(site.name, site.distribution(env))
        subsample = torch.arange(n_batch, device=lowered.device)
        with pyro.plate(PLATE_NAME, size=total, subsample=subsample):
            for name, site in self.imputation_sites.items():  # before every local step
                if name in masks:
                    draw = pyro.sample(missing_site(name), site.missing_distribution(env, masks[name]))
                    env[name] = torch.where(masks[name], given[name], draw)
            for site in self.sites:
                if site.is_global:
                    continue
                infer = {"enumerate": "parallel"} if site.enumerated else {}
                values[site.name] = env[site.name] = pyro.sample(
                    site.name, site.distribution(env), infer=infer)
        return values

    def filled(self, values: Mapping[str, torch.Tensor],
               mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`values` of data variables with their missing entries (False in `mask`) set to what
        a guide network reads as neutral: the input reference's loc, 0 once standardized.
        A value with no reference (class labels, one-hot encoded) keeps its placeholder.

        >>> import dgmlang
        >>> m = dgmlang.compile("model t { data x[2]\\n latent z\\n z ~ Normal(0, 1)\\n x ~ Normal(z, 1) }")
        >>> m.guide.input_reference("x").set(torch.tensor(7.0), torch.tensor(2.0))
        >>> m.guide.filled({"x": torch.zeros(1, 2)}, {"x": torch.tensor([[True, False]])})["x"]
        tensor([[0., 7.]])
        """
        out = {}
        for name, value in values.items():
            out[name] = value
            if name in mask and name in self._input_reference_keys:
                loc = self.input_reference(name).loc.to(value.dtype)
                out[name] = torch.where(mask[name], value, loc.expand_as(value))
        return out

    def network_input(self, latent: str, env: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The features the guide network of `latent` reads from the values in `env`."""
        self._lowered.evaluator.refresh()
        return self._sites_by_name[latent].features(dict(env))


def mirrored_networks(facts: ModelFacts) -> dict[str, tuple[tuple[int, ...], str]]:
    """For every variable some network reads (directly or through `let`s): the mirror image
    of the first such network in the order of the model's draws — reversed hidden sizes and
    the same activation, `DECONV_GUIDE_HIDDEN` for a deconv. One walk over the model."""
    nets = {net.name: net for net in facts.ir.nets}
    mirrored: dict[str, tuple[tuple[int, ...], str]] = {}
    for draw in facts.ir.draws:
        for e in irm.walk(draw.expressions):
            if isinstance(e, irm.NetCall):
                net = nets[e.net]
                hidden = tuple(reversed(net.hidden)) if net.kind == "mlp" else DECONV_GUIDE_HIDDEN
                for name in facts.reads(e.args):
                    mirrored.setdefault(name, (hidden, net.activation))
    return mirrored


def guide_hidden(facts: ModelFacts, latent: str, *,
                 mirrored: dict[str, tuple[tuple[int, ...], str]] | None = None,
                 ) -> tuple[tuple[int, ...], str]:
    """Hidden sizes and activation of the guide network of `latent`.

    `guide(hidden = ...)` when given; otherwise the mirror image (reversed hidden sizes, same
    activation) of the first network, in the order of the model's draws, that reads the
    latent; `DECONV_GUIDE_HIDDEN` when that is a deconv; `DEFAULT_HIDDEN` when it feeds none.
    `mirrored` (`mirrored_networks(facts)`) saves walking the model again for each latent.
    """
    var = facts.variables[latent]
    if mirrored is None:
        mirrored = mirrored_networks(facts)
    hidden, act = mirrored.get(latent) or (DEFAULT_HIDDEN, "relu")
    if var.guide is not None and var.guide.hidden is not None:
        hidden = tuple(var.guide.hidden)
    return hidden, act


def build_guide(ir: irm.ModelIR, plan, lowered: LoweredModel, *, seed: int = 0) -> AmortizedGuide:
    """The derived guide of `ir` for `plan`, its networks initialised under `seed`."""
    return AmortizedGuide(ir, plan, lowered, seed=seed)
