"""Continuous latent chains (state-space models, deep Markov models): a latent sequence
`z[T, D]` drawn step by step from a real-valued distribution, each step reading the one
before (`z[t] ~ Normal(trans(z[t - 1]), s)`), and the data sequence it emits
(`x[t] ~ Bernoulli(logits = emit(z[t]))`).

Model side, each is one Pyro site over all its steps: `LatentChainSite` (z) and
`EmissionSite` (x). Drawing from the model goes step by step; given every step of z (from
the guide) the log-density of all steps is one evaluation of each run of steps, time laid
along a batch dim. Steps from each row's length on (`for t in 0:n`, `input n : int`) are
padding: they are masked out of model and guide alike (as Pyro's dmm.py does with
`poutine.mask`), so they are neither scored nor inferred.

Guide side (plan kind "structured_chain", `dgmlang.inverse.chain_description`): Krishnan et
al.'s structured inference network, the faithful inverse sampled forward in time,
q(z[t] | z[t - 1], x[t:]), with one set of weights for every t (`StructuredChainNet`): a
recurrent network run backward over x (within each row's length) summarizes x[t:], a
combiner reads it with z[t - 1] and gives the Normal of z[t] (relative to the latent's
reference, `dgmlang.sites.Reference`). `guide(hidden = [W])` sets its width (GRU and
combiner with tanh); `guide(hidden = [])` makes it linear (a linear recurrence and a linear
combiner), which holds the exact posterior of a linear-Gaussian model up to its scales.

>>> import dgmlang, torch
>>> m = dgmlang.compile('''
... model lgssm {
...     const T = 6
...     data   x[T]
...     latent z[T]
...     z[0] ~ Normal(0, 1)
...     for t in 1:T { z[t] ~ Normal(0.9 * z[t - 1], 0.5) }
...     for t in 0:T { x[t] ~ Normal(z[t], 0.3) }
... }''')
>>> m.guide_plan
[('z', 'structured chain: q(z[t] | z[t-1], x[t:]) via backward rnn')]
>>> draws = m.sample(4, seed=0)
>>> draws["z"].shape, draws["x"].shape
(torch.Size([4, 6]), torch.Size([4, 6]))
>>> m.guide({"x": draws["x"]})["z"].shape
torch.Size([4, 6])
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

import pyro.distributions as pdist
from pyro.distributions import constraints

from dgmlang import ir as irm
from dgmlang.chains import chain_pairs
from dgmlang.evaluate import Env, broadcast_shape
from dgmlang.facts import ModelFacts
from dgmlang.nets import POSITIVE_FLOOR
from dgmlang.sites import GuideInput, GuideSite, LatentShape, ModelSite, WholeSequenceSite

__all__ = ["ChainGuideSite", "EmissionSite", "LatentChainSite", "StructuredChainNet", "continuous_chains",
           "sequence_site", "step_info", "DEFAULT_WIDTH", "LINEAR_WIDTH"]

#: Width of a chain guide's recurrent summary and combiner when `guide(hidden = ...)` is not given.
DEFAULT_WIDTH = 64
#: Width of the linear guide (`guide(hidden = [])`).
LINEAR_WIDTH = 16


def continuous_chains(facts: ModelFacts) -> dict[str, str]:
    """Each continuous latent chain's data sequence: ``{chain: data}``."""
    return {chain: data for data, chain in chain_pairs(facts).items()
            if facts.draws[chain].dist != "Categorical"}


def chain_length(facts: ModelFacts, chain: str, data: str) -> str | None:
    """The int input the steps of `chain` and `data` end at (per-row lengths), or None."""
    return next((run.length for name in (data, chain) for run in facts.draws[name].steps
                 if run.length is not None), None)


def sequence_site(name: str, facts: ModelFacts, evaluator, net: Callable[[str], nn.Module],
                  chains: dict[str, str]):
    """The model site of `name` when it is a continuous chain or the data it emits, else None;
    `chains` is `continuous_chains(facts)`."""
    if name in chains:
        return LatentChainSite(name, facts, evaluator, net, chain_length(facts, name, chains[name]))
    emitted = {data: chain for chain, data in chains.items()}
    if name in emitted:
        return EmissionSite(name, emitted[name], facts, evaluator, net)
    return None


def _time_major(value: torch.Tensor, step_rank: int) -> torch.Tensor:
    """``(*batch, T, *step)`` -> ``(T, *batch, *step)``."""
    return value.movedim(value.dim() - 1 - step_rank, 0)


def _pad_batch(value: torch.Tensor, dims: int) -> torch.Tensor:
    """`value` with leading singleton dims up to `dims` dims (batch dims line up before time
    is moved to the front)."""
    return value.reshape((1,) * (dims - value.dim()) + tuple(value.shape))


def _step_mask(env: Env, length: str | None, steps: int, device) -> torch.Tensor | None:
    """True at each row's steps before its length, ``(*batch, T)``; None without lengths."""
    if length is None:
        return None
    n = env[length]
    return torch.arange(steps, device=device) < n.unsqueeze(-1)


class _SequenceSite(WholeSequenceSite):
    """What a model site of all the steps of one sequence shares (`ModelSite`'s interface)."""

    def __init__(self, name: str, facts: ModelFacts, evaluator, net):
        self.name = name
        self.role = facts.variables[name].role
        self.dist = facts.draws[name].dist
        self.shape = facts.variables[name].shape
        self.step_rank = len(self.shape) - 1
        self._variables = facts.variables
        self._evaluator = evaluator
        self.runs = [(run, ModelSite(name, facts, evaluator, net, steps=run)) for run in facts.draws[name].steps]

    def _run_log_prob(self, site: ModelSite, local: Env, value: torch.Tensor) -> torch.Tensor:
        """log p of `value` ``(L, *batch, *step)`` under one run's distribution, ``(L, *batch)``."""
        log_p = site.distribution(local).log_prob(value)
        if site.event_dims:
            log_p = log_p.sum(tuple(range(-site.event_dims, 0)))
        return log_p

    def _total(self, parts: list[torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
        """The per-step terms of every run (each ``(L, *batch)``, in time order) summed over
        time, padding dropped; without padding each run is summed on its own."""
        if mask is None:
            total = None
            for part in parts:
                total = part.sum(0) if total is None else total + part.sum(0)
            return total
        shape = torch.broadcast_shapes(*(p.shape[1:] for p in parts))
        steps = torch.cat([p.expand(p.shape[0], *shape) for p in parts], dim=0).movedim(0, -1)
        steps = torch.where(mask, steps, torch.zeros((), dtype=steps.dtype, device=steps.device))
        return steps.sum(-1)

    def distribution(self, env: Env) -> "_WholeSequence":
        """The distribution of the whole sequence given the values in `env`."""
        return _WholeSequence(self, dict(env), self.plate_batch(env))


class LatentChainSite(_SequenceSite):
    """The continuous latent chain `name`, all its steps one site; `length` is the int input
    its steps end at (that of its data), or None."""

    def __init__(self, name: str, facts: ModelFacts, evaluator, net, length: str | None):
        super().__init__(name, facts, evaluator, net)
        self.length = length
        self._previous = irm.step_key(name, 1)

    def sequence_log_prob(self, env: Env, value: torch.Tensor) -> torch.Tensor:
        """log p(z) ``(*batch,)``: every run's steps at once, given the step before each."""
        steps = _time_major(value, self.step_rank)
        parts = []
        for run, site in self.runs:
            local = dict(env)
            if run.first > 0:
                local[self._previous] = steps[run.first - 1:run.stop - 1]
            parts.append(self._run_log_prob(site, local, steps[run.first:run.stop]))
        return self._total(parts, _step_mask(env, self.length, self.shape[0], value.device))

    def draw(self, env: Env, shape: tuple[int, ...], reparameterized: bool) -> torch.Tensor:
        """Steps drawn one after the other, ``(*shape, T, *step)``."""
        full = torch.Size(shape) + torch.Size(self.shape[1:])
        values, previous = [], None
        for run, site in self.runs:
            for _ in range(run.first, run.stop):
                local = dict(env) if previous is None else {**env, self._previous: previous}
                base = site.distribution(local)
                base = base.expand(torch.broadcast_shapes(tuple(base.batch_shape), full))
                previous = base.rsample() if reparameterized else base.sample()
                values.append(previous)
        return torch.stack(values, dim=len(shape))


class EmissionSite(_SequenceSite):
    """The data sequence `name` emitted step by step by the continuous chain `chain`."""

    def __init__(self, name: str, chain: str, facts: ModelFacts, evaluator, net):
        super().__init__(name, facts, evaluator, net)
        self.chain = chain
        self._chain_rank = len(facts.variables[chain].shape) - 1
        self._same = irm.step_key(chain, 0)

    def sequence_log_prob(self, env: Env, value: torch.Tensor) -> torch.Tensor:
        """log p(x | z) ``(*batch,)``, every step at once."""
        chain, value = env[self.chain], value
        rank = max(chain.dim() - 1 - self._chain_rank, value.dim() - 1 - self.step_rank)
        chain = _time_major(_pad_batch(chain, rank + 1 + self._chain_rank), self._chain_rank)
        steps = _time_major(_pad_batch(value, rank + 1 + self.step_rank), self.step_rank)
        parts = [self._run_log_prob(site, {**env, self._same: chain[run.first:run.stop]},
                                    steps[run.first:run.stop]) for run, site in self.runs]
        mask = _step_mask(env, self.runs[-1][0].length, self.shape[0], value.device)
        return self._total(parts, mask)

    def draw(self, env: Env, shape: tuple[int, ...], reparameterized: bool) -> torch.Tensor:
        """Every step given the chain, ``(*shape, T, *step)``, contiguous (as every other
        site's draw is: a caller's ``.view`` or a mask made by ``ones_like`` and written
        through ``.reshape`` would otherwise miss it)."""
        chain = _time_major(env[self.chain], self._chain_rank)
        pieces = []
        for run, site in self.runs:
            base = site.distribution({**env, self._same: chain[run.first:run.stop]})
            full = (run.stop - run.first, *shape, *self.shape[1:])
            base = base.expand(torch.broadcast_shapes(tuple(base.batch_shape), full))
            pieces.append(base.rsample() if reparameterized else base.sample())
        return torch.cat(pieces).movedim(0, len(shape)).contiguous()



class _WholeSequence(pdist.TorchDistribution):
    """A sequence site's distribution: event shape the whole sequence's, `sample` step by step
    (`draw`), `log_prob` every step at once (`sequence_log_prob`)."""

    arg_constraints: dict = {}

    def __init__(self, site: _SequenceSite, env: Env, batch_shape):
        self._site = site
        self._env = env
        super().__init__(torch.Size(batch_shape), torch.Size(site.shape), validate_args=False)

    @property
    def support(self):
        return constraints.independent(constraints.real, len(self._site.shape))

    @property
    def has_rsample(self) -> bool:
        return self._site.runs[0][1].cls.has_rsample

    def expand(self, batch_shape, _instance=None):
        return _WholeSequence(self._site, self._env, batch_shape)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self._site.draw(self._env, tuple(sample_shape) + tuple(self.batch_shape), False)

    def rsample(self, sample_shape=torch.Size()):
        return self._site.draw(self._env, tuple(sample_shape) + tuple(self.batch_shape), True)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        total = self._site.sequence_log_prob(self._env, value)
        return total.expand(broadcast_shape(tuple(total.shape), tuple(self.batch_shape)))


# ---------------------------------------------------------------- the structured guide


def step_info(facts: ModelFacts, chain: str) -> LatentShape:
    """The `LatentShape` of one step of a continuous chain (real values, family normal)."""
    step = facts.variables[chain].shape[1:]
    return LatentShape(chain, step, step, constraints.real, "normal")


class StructuredChainNet(nn.Module):
    """The weights of a chain's guide, shared over time: `summary` runs backward over the
    data, `combine` maps z[t - 1] (in reference units) and the summary at t to the Normal of
    z[t] (in reference units); `begin` maps the summary at 0 to the Normal of z[0], which
    the model draws from its own distribution, not the transition (the faithful inverse
    q(z[0] | x[0:]) reads no earlier step). Linear when `linear`."""

    def __init__(self, data_size: int, latent_size: int, width: int, linear: bool, *, mean_field: bool = False):
        super().__init__()
        self.linear = linear
        #: the naive guide: q(z[t] | x[t]) alone, no recurrence, z[t - 1] ignored (`mean_field`)
        self.mean_field = mean_field
        if mean_field:
            self.read = nn.Linear(data_size, width)
        elif linear:
            self.read = nn.Linear(data_size, width)
            self.carry = nn.Linear(width, width, bias=False)
        else:
            self.rnn = nn.GRU(data_size, width, batch_first=True)
        self.start = nn.Parameter(torch.zeros(width))  # the summary past the last step
        self.from_latent = nn.Linear(latent_size, width)
        self.to_loc = nn.Linear(width, latent_size)
        self.to_scale = nn.Linear(width, latent_size)
        self.first_loc = nn.Linear(width, latent_size)
        self.first_scale = nn.Linear(width, latent_size)

    def summary(self, data: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, F)`` -> ``(B, T, W)``: at t, a summary of data[t:length] (each row's steps
        reversed within its length, run forward, put back in place)."""
        rows, steps, _ = data.shape
        if self.mean_field:
            hidden = self.read(data)
            return hidden if self.linear else torch.tanh(hidden)
        if lengths is None:  # every row reversed whole: a flip (cheaper than a gather, both ways)
            backward, order = data.flip(1), None
        else:
            t = torch.arange(steps, device=data.device)
            n = lengths.long().unsqueeze(-1)
            order = torch.where(t < n, n - 1 - t, t)
            backward = data.gather(1, order.unsqueeze(-1).expand_as(data))
        if self.linear:
            state, states = self.start.expand(rows, -1), []
            inputs = self.read(backward)
            for s in range(steps):
                state = inputs[:, s] + self.carry(state)
                states.append(state)
            out = torch.stack(states, dim=1)
        else:
            out, _ = self.rnn(backward, self.start.expand(1, rows, -1).contiguous())
        if order is None:
            return out.flip(1)
        return out.gather(1, order.unsqueeze(-1).expand(rows, steps, out.shape[-1]))

    def combine(self, previous: torch.Tensor, summary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """loc and scale of z[t] from z[t - 1] and the summary at t (reference units)."""
        if self.mean_field:
            hidden = summary.expand(*torch.broadcast_shapes(previous.shape[:-1], summary.shape[:-1]), -1)
        elif self.linear:
            hidden = self.from_latent(previous) + summary
        else:
            hidden = 0.5 * (torch.tanh(self.from_latent(previous)) + summary)
        return self.to_loc(hidden), nn.functional.softplus(self.to_scale(hidden)) + POSITIVE_FLOOR

    def begin(self, summary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """loc and scale of z[0] from the summary at 0 (reference units)."""
        return self.first_loc(summary), nn.functional.softplus(self.first_scale(summary)) + POSITIVE_FLOOR


class ChainGuideSite(GuideSite):
    """The guide of a continuous chain (plan kind "structured_chain"): `distribution(env)` is
    q(z | x) over all steps, drawn forward step by step, scored every step at once. Its
    `inputs` are the data sequence; `length` the int input that masks its padding."""

    refinable = False

    def __init__(self, step, model_site, *, info: LatentShape, evaluator, network: StructuredChainNet,
                 reference, input_references, facts: ModelFacts):
        data = step.inputs[-1]
        super().__init__(step, model_site, info=info, inputs=[GuideInput(data, len(facts.variables[data].shape), None)],
                         evaluator=evaluator, network=network, reference=reference,
                         input_references=input_references)
        self.data = data
        self.length = model_site.length
        self.steps = facts.variables[step.latent].shape[0]

    def distribution(self, env: Env) -> "_ChainPosterior":
        value = self.input_references[self.data].standardize(env[self.data])
        rows = value.shape[0]
        lengths = env[self.length] if self.length is not None else None
        summary = self.network.summary(value.reshape(rows, self.steps, -1), lengths)
        mask = _step_mask(env, self.length, self.steps, value.device)
        return _ChainPosterior(self, summary, mask, (rows,))


class _ChainPosterior(pdist.TorchDistribution):
    """q(z | x) of a `ChainGuideSite`: batch ``(*batch,)``, event the chain's shape.

    `rsample` draws in the reference's units (each step's combiner reads the step before as
    drawn, which is what standardizing the rescaled value gives back) and rescales the whole
    path once. It keeps each step's scale and standard-normal noise: `log_prob` of the very
    tensor it returned is then ``-noise² / 2 - log scale - log √(2π)`` summed, the same
    function of the parameters as scoring the value afresh (so the same gradient), without
    running the combiner over the path a second time. Any other value is scored afresh."""

    arg_constraints: dict = {}
    support = constraints.real  # every step's entries are real (validation is off)
    has_rsample = True

    def __init__(self, site: ChainGuideSite, summary: torch.Tensor, mask, batch_shape):
        self._site = site
        self._summary = summary
        self._mask = mask
        self._drawn = None  # (value, noise, scales, made with grad) of the last rsample
        shape = site.model_site.shape
        super().__init__(torch.Size(batch_shape), torch.Size(shape), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return _ChainPosterior(self._site, self._summary, self._mask, batch_shape)

    def _parameters(self, previous: torch.Tensor | None, summary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """loc and scale of a step given the one before (None: step 0) and its summary."""
        site = self._site
        loc, scale = (site.network.begin(summary) if previous is None
                      else site.network.combine(site.reference.standardize(previous), summary))
        out = site.reference.rescale({"loc": loc, "scale": scale})
        return out["loc"], out["scale"]

    def rsample(self, sample_shape=torch.Size()):
        site = self._site
        network, summary = site.network, self._summary
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        noise = torch.randn(*shape, site.steps, site.info.size, dtype=summary.dtype, device=summary.device)
        steps, scales, raw = [], [], None
        for t in range(site.steps):  # in reference units throughout
            loc, scale = network.begin(summary[:, 0]) if t == 0 else network.combine(raw, summary[:, t])
            raw = loc + scale * noise[..., t, :]
            steps.append(raw)
            scales.append(scale if scale.shape == raw.shape else scale.expand(raw.shape))
        reference = site.reference
        value = (reference.loc + reference.scale * torch.stack(steps, dim=-2)).reshape(*shape, *self.event_shape)
        self._drawn = (value, noise, scales, torch.is_grad_enabled())
        return value

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        site = self._site
        drawn = self._drawn
        if drawn is not None and value is drawn[0] and (drawn[3] or not torch.is_grad_enabled()):
            _, noise, scales, _ = drawn
            scale = torch.stack(scales, dim=-2) * site.reference.scale
            log_q = (-0.5 * noise.square() - _HALF_LOG_TWO_PI) - scale.log()
            log_q = log_q.sum(-1)
        else:
            flat = value.reshape(*value.shape[:value.dim() - len(self.event_shape)], site.steps, site.info.size)
            first_loc, first_scale = self._parameters(None, self._summary[:, :1])
            loc, scale = self._parameters(flat[..., :-1, :], self._summary[:, 1:])
            log_q = torch.cat([torch.distributions.Normal(first_loc, first_scale).log_prob(flat[..., :1, :]),
                               torch.distributions.Normal(loc, scale).log_prob(flat[..., 1:, :])], dim=-2).sum(-1)
        if self._mask is not None:
            log_q = torch.where(self._mask, log_q, torch.zeros((), dtype=log_q.dtype, device=log_q.device))
        total = log_q.sum(-1)
        return total.expand(broadcast_shape(tuple(total.shape), tuple(self.batch_shape)))


_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


def build_guide_site(step, facts: ModelFacts, lowered, reference, input_references, hidden) -> ChainGuideSite:
    """The guide site of a "structured_chain" plan step; `hidden` is the latent's
    `guide(hidden = ...)` (None: `DEFAULT_WIDTH`; ``()``: linear, `LINEAR_WIDTH`)."""
    info = step_info(facts, step.latent)
    data_shape = facts.variables[step.inputs[-1]].shape
    linear = hidden is not None and len(hidden) == 0
    width = LINEAR_WIDTH if linear else (hidden[0] if hidden else DEFAULT_WIDTH)
    network = StructuredChainNet(math.prod(data_shape[1:]), info.size, width, linear)
    return ChainGuideSite(step, lowered.site(step.latent), info=info, evaluator=lowered.evaluator,
                          network=network, reference=reference, input_references=input_references, facts=facts)


def mean_field(model, *, seed: int = 0) -> None:
    """Give every continuous chain of compiled `model` the naive guide, in place, before
    fitting: q(z[t] | x[t]) for each step apart (no summary of other steps, z[t - 1] not
    read), with the width of its structured guide. For comparisons (tests, examples,
    benchmarks): it is not a faithful inverse.

    >>> import dgmlang
    >>> m = dgmlang.compile("model c { data x[5]\\n latent z[5]\\n z[0] ~ Normal(0, 1)\\n "
    ...                     "for t in 1:5 { z[t] ~ Normal(z[t - 1], 1) }\\n for t in 0:5 { x[t] ~ Normal(z[t], 1) } }")
    >>> mean_field(m)
    >>> m.guide.sites[0].network.mean_field
    True
    """
    from dgmlang.nets import seeded

    for key, network in model.guide.nets.items():
        if isinstance(network, StructuredChainNet):
            site = next(s for s in model.guide.sites if s.network is network)
            with seeded(seed):
                fresh = StructuredChainNet(_data_size(model.facts, site.data), site.info.size,
                                           network.to_loc.in_features, network.linear, mean_field=True)
            fresh.to(device=model.device, dtype=model.dtype)
            model.guide.nets[key] = site.network = fresh


def _data_size(facts: ModelFacts, data: str) -> int:
    return math.prod(facts.variables[data].shape[1:])
