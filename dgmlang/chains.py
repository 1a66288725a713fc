"""Discrete Markov chains summed out exactly: a latent Categorical sequence and the data
sequence it emits, one site of the model (`ChainSite`), scored by the forward algorithm in
O(T K^2) per sequence.

The checker (`dgmlang.check_time`) accepts a chain `s[T]` drawn from Categoricals, each step
reading only the step before (`s[t] ~ Categorical(probs = trans[s[t - 1]])`), and one data
sequence `x[T]` whose step t reads `s[t]`. Each run of steps is a `ModelSite` over one
step's shape; evaluated with every state in the place of `s[t - 1]` (or `s[t]`), it gives
the tables the algorithms here work on:

* ``init`` ``(*batch, K)``: log p(s[0]);
* ``trans[t]`` ``(*batch, K, K)``: log p(s[t] = j | s[t - 1] = i), for t >= 1;
* ``emit`` ``(*batch, T, K)``: log p(x[t] | s[t] = k).

`forward` gives log p(x) (the site's log-density, s summed out), `smoothing` the exact
marginals p(s[t] = k | x) (forward-backward), `sample_path` draws s from p(s | x) by forward
filtering, backward sampling. All run in the model's dtype and device.

>>> import torch
>>> init = torch.log(torch.tensor([0.5, 0.5]))
>>> trans = torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
>>> emit = torch.log(torch.tensor([[0.7, 0.1], [0.6, 0.2]]))        # T = 2 steps
>>> tables = Tables(init, [(1, 2, trans)], emit)
>>> round(float(forward(tables).exp()), 6)                           # the sum over 4 paths
0.21
>>> smoothing(tables).sum(-1)
tensor([1., 1.])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

import pyro
import pyro.distributions as pdist
from pyro.distributions import constraints

from dgmlang import ir as irm
from dgmlang.evaluate import Env, broadcast_shape
from dgmlang.facts import ModelFacts
from dgmlang.sites import ModelSite, WholeSequenceSite, refuse_gaps

__all__ = ["ChainLikelihood", "ChainSite", "Tables", "chain_pairs", "forward", "marginals",
           "posterior_paths", "sample_path", "smoothing"]


def chain_pairs(facts: ModelFacts) -> dict[str, str]:
    """Each data sequence's latent chain: ``{data name: chain name}`` (the checker makes each
    chain emit exactly one data sequence). Sequences that read no latent chain (autoregressive
    data, `dgmlang.recurrence`) have none."""
    pairs = {}
    for name in facts.data_order:
        draw = facts.draws[name]
        if not draw.steps:
            continue
        chain = next((e.name for e in irm.walk(draw.expressions) if isinstance(e, irm.StepRef)
                      and e.name in facts.variables and facts.variables[e.name].role == "latent"), None)
        if chain is not None:
            pairs[name] = chain
    return pairs


@dataclass
class Tables:
    """The log-probability tables of one chain (see the module docs); `runs` holds
    ``(first, stop, trans)`` for the transition tables of steps first, ..., stop - 1."""

    init: torch.Tensor
    runs: list[tuple[int, int, torch.Tensor]]
    emit: torch.Tensor | None

    def trans(self, t: int) -> torch.Tensor:
        return next(table for first, stop, table in self.runs if first <= t < stop)


def forward(tables: Tables, *, keep: bool = False):
    """log p(x), shaped like the batch; with `keep`, also every step's forward messages
    ``(*batch, T, K)`` (log p(x[0..t], s[t] = k))."""
    emit = tables.emit
    alpha = tables.init + emit[..., 0, :]
    alphas = [alpha]
    for first, stop, table in tables.runs:
        for t in range(first, stop):
            alpha = torch.logsumexp(alpha.unsqueeze(-1) + table, dim=-2) + emit[..., t, :]
            if keep:
                alphas.append(alpha)
    total = torch.logsumexp(alpha, dim=-1)
    if keep:
        shape = torch.broadcast_shapes(*(a.shape for a in alphas))
        return total, torch.stack([a.expand(shape) for a in alphas], dim=-2)
    return total


def smoothing(tables: Tables) -> torch.Tensor:
    """p(s[t] = k | x) for every step, ``(*batch, T, K)``: forward-backward in log space."""
    _, alphas = forward(tables, keep=True)
    steps = alphas.shape[-2]
    beta = torch.zeros_like(alphas[..., -1, :])
    betas = [beta]
    for t in range(steps - 1, 0, -1):
        beta = torch.logsumexp(tables.trans(t) + (tables.emit[..., t, :] + beta).unsqueeze(-2), dim=-1)
        betas.append(beta)
    betas = torch.stack([b.expand(alphas.shape[:-2] + alphas.shape[-1:]) for b in betas[::-1]], dim=-2)
    return torch.softmax(alphas + betas, dim=-1)


def sample_path(tables: Tables, draws: int) -> torch.Tensor:
    """`draws` paths from p(s | x), ``(draws, *batch, T)`` (long): forward filtering,
    backward sampling."""
    _, alphas = forward(tables, keep=True)
    steps = alphas.shape[-2]
    alphas = alphas.expand(draws, *alphas.shape)
    state = torch.distributions.Categorical(logits=alphas[..., -1, :]).sample()
    path = [state]
    for t in range(steps - 1, 0, -1):
        table = tables.trans(t).expand(*alphas.shape[:-2], -1, -1)  # (draws, *batch, K, K)
        column = table.gather(-1, state[..., None, None].expand(*state.shape, table.shape[-2], 1))[..., 0]
        state = torch.distributions.Categorical(logits=alphas[..., t - 1, :] + column).sample()
        path.append(state)
    return torch.stack(path[::-1], dim=-1)


def posterior_paths(site: "ChainSite", batch: Env, globals_: dict[str, torch.Tensor], draws: int) -> torch.Tensor:
    """`draws` paths of the chain of `site` from p(chain | data, globals), ``(draws, rows,
    T)`` (`sample_path`); with globals (each ``(draws, *shape)``), each draw under its own."""
    if not globals_:
        return sample_path(site.tables(dict(batch), batch[site.name]), draws)
    return torch.stack([sample_path(site.tables({**batch, **{g: v[i] for g, v in globals_.items()}},
                                                batch[site.name]), 1)[0] for i in range(draws)])


class ChainLikelihood(pdist.TorchDistribution):
    """p(x) of a data sequence with its latent chain summed out: `log_prob(x)` is the forward
    algorithm over the tables `make(x)` builds. `batch_shape` is the data plate's."""

    arg_constraints: dict = {}
    support = constraints.real_vector  # validated by the data checks, not here
    has_rsample = False

    def __init__(self, make: Callable[[torch.Tensor], Tables], batch_shape, event_shape):
        self._make = make
        super().__init__(torch.Size(batch_shape), torch.Size(event_shape), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return ChainLikelihood(self._make, batch_shape, self.event_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        total = forward(self._make(value))
        return total.expand(broadcast_shape(tuple(total.shape), tuple(self.batch_shape)))


class ChainSite(WholeSequenceSite):
    """The data sequence `name` with its latent chain `chain` summed out: one site of the
    model, with `ModelSite`'s interface (`distribution`, `log_prob`), and `tables`, `sample`
    for the queries. `runs` are the chain's runs of steps, `emissions` the data's, each a
    `ModelSite` over one step."""

    def __init__(self, name: str, chain: str, facts: ModelFacts, evaluator, net: Callable[[str], nn.Module]):
        self.name = name
        self.chain = chain
        self.role = "data"
        self.dist = facts.draws[name].dist
        self.shape = facts.variables[name].shape
        self.classes = facts.classes(chain)
        self._evaluator = evaluator
        self._variables = facts.variables
        self.runs = [(run, ModelSite(chain, facts, evaluator, net, steps=run)) for run in facts.draws[chain].steps]
        self.emissions = [(run, ModelSite(name, facts, evaluator, net, steps=run))
                          for run in facts.draws[name].steps]

    # ------------------------------------------------------------------ tables

    def _rank(self, env: Env, value: torch.Tensor | None) -> int:
        """How many batch dims the values in `env` and the data carry (at least 1)."""
        rank = 1 if value is None else value.dim() - len(self.shape)
        for key, v in env.items():
            var = self._variables.get(key)
            if var is not None and torch.is_tensor(v):
                rank = max(rank, v.dim() - len(var.shape))
        return max(rank, 1)

    def _states(self, rank: int) -> torch.Tensor:
        # in the model's dtype, as every value an expression reads (an index casts it back)
        return torch.arange(self.classes, dtype=self._evaluator.dtype,
                            device=self._evaluator.device).reshape(self.classes, *(1,) * rank)

    def tables(self, env: Env, value: torch.Tensor | None) -> Tables:
        """The chain's tables given the values in `env` and the data sequence `value` (no
        emission table when it is None)."""
        rank = self._rank(env, value)
        states = self._states(rank)
        init, runs = None, []
        for run, site in self.runs:
            local = {**env, irm.step_key(self.chain, 1): states}
            logits = site.distribution(local).logits
            logits = logits.reshape((1,) * (rank + 2 - logits.dim()) + tuple(logits.shape))
            if run.first == 0:
                init = logits[0]
                if run.stop > 1:
                    runs.append((1, run.stop, logits.movedim(0, -2)))
            else:
                runs.append((run.first, run.stop, logits.movedim(0, -2)))
        return Tables(init, runs, None if value is None else self._emission(env, value, rank, states))

    def _emission(self, env: Env, value: torch.Tensor, rank: int, states: torch.Tensor) -> torch.Tensor:
        ev = len(self.shape) - 1
        value = value.reshape((1,) * (rank + 1 + ev - value.dim()) + tuple(value.shape))
        parts = []
        for run, site in self.emissions:
            local = {**env, irm.step_key(self.chain, 0): states}
            base = site.distribution(local)
            piece = value.narrow(rank, run.first, run.stop - run.first).movedim(rank, 0).unsqueeze(1)
            log_p = base.log_prob(piece)  # (L, K, *batch, *outer)
            if site.event_dims:
                log_p = log_p.sum(tuple(range(-site.event_dims, 0)))
            log_p = log_p.reshape((1,) * (rank + 2 - log_p.dim()) + tuple(log_p.shape))
            part = log_p.movedim((0, 1), (-2, -1))  # (*batch, L, K)
            if run.length is not None:  # steps from each sequence's length on are padding
                n = env[run.length]
                n = n.reshape((1,) * (rank - n.dim()) + tuple(n.shape))
                t = torch.arange(run.first, run.stop, dtype=n.dtype, device=n.device)
                part = part.masked_fill(~(t < n.unsqueeze(-1)).unsqueeze(-1), 0.0)
            parts.append(part)
        shape = torch.broadcast_shapes(*(p.shape[:-2] for p in parts))
        return torch.cat([p.expand(*shape, p.shape[-2], self.classes) for p in parts], dim=-2)

    # ------------------------------------------------------------------ the model's site

    def distribution(self, env: Env) -> ChainLikelihood:
        """p(x) with the chain summed out, batch shape the plate's (before any `.to_event`)."""
        env = dict(env)
        return ChainLikelihood(lambda value: self.tables(env, value), self.plate_batch(env), self.shape)

    def sequence_log_prob(self, env: Env, value: torch.Tensor) -> torch.Tensor:
        """log p(x) per row, the chain summed out (the forward algorithm)."""
        return forward(self.tables(env, value))

    def sample(self, env: Env, obs: torch.Tensor | None, observed: torch.Tensor | None, rows: int) -> dict:
        """The Pyro site(s): x observed, its density with the chain summed out; else the chain
        and then x drawn forward (recorded as deterministic sites of the prior)."""
        refuse_gaps(self.name, observed)
        if obs is not None:
            return {self.name: pyro.sample(self.name, self.distribution({**env, self.name: obs}), obs=obs)}
        path, value = self.draw_prior(env, rows)
        return {self.chain: pyro.deterministic(self.chain, path, event_dim=1),
                self.name: pyro.deterministic(self.name, value, event_dim=len(self.shape))}

    def draw_prior(self, env: Env, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A chain ``(*batch, T)`` and its data ``(*batch, *shape)`` drawn from the model
        (`batch` is ``(rows,)``, with particle dims left of it where `env` has them)."""
        steps, k = self.shape[0], self.classes
        tables = self.tables(env, None)
        given = [v.shape[:v.dim() - len(self._variables[key].shape)] for key, v in env.items()
                 if key in self._variables and torch.is_tensor(v)]
        batch = torch.broadcast_shapes(tables.init.shape[:-1], (rows,), *given,
                                       *(table.shape[:-2] for _, _, table in tables.runs))
        state = torch.distributions.Categorical(logits=tables.init.expand(*batch, k)).sample()
        path = [state]
        for t in range(1, steps):
            table = tables.trans(t).expand(*batch, k, k)
            row = table.gather(-2, state[..., None, None].expand(*batch, 1, k))[..., 0, :]
            state = torch.distributions.Categorical(logits=row).sample()
            path.append(state)
        path = torch.stack(path, dim=-1)
        pieces = []
        for run, site in self.emissions:
            here = path[..., run.first:run.stop].movedim(-1, 0)  # (L, *batch)
            here = here.to(self._evaluator.dtype)
            value = site.distribution({**env, irm.step_key(self.chain, 0): here}).sample()
            value = value.expand(run.stop - run.first, *batch, *self.shape[1:])
            pieces.append(value.movedim(0, len(batch)))
        return path, torch.cat(pieces, dim=len(batch))


#: Rows `marginals` computes at once.
MARGINAL_ROWS = 1024


def marginals(model, data, name: str) -> torch.Tensor:
    """Exact smoothing marginals p(`name`[t] = k | data) of a latent chain, ``(n, T, K)``
    probabilities (forward-backward); see `CompiledModel.marginals`."""
    from dgmlang.data import prepare_data
    from dgmlang.devices import to_device
    from dgmlang.errors import DGMUsageError, did_you_mean

    chains = model.model.chains
    if name not in chains:
        raise DGMUsageError(f"marginals: {name!r} is not a latent chain of model '{model.name}'",
                            hint=did_you_mean(str(name), list(chains)) or
                            f"its chains: {', '.join(map(repr, chains)) or 'none'}")
    if model.roles.globals:
        raise DGMUsageError("marginals: not supported yet for a model with globals",
                            hint="make the globals params (point estimates) to read exact marginals")
    site = chains[name]
    dataset = prepare_data(model.ir, data, purpose="marginals", allow_missing=True,
                           facts=model.facts, dtype=model.model.dtype)
    out = []
    model.model.evaluator.refresh()
    with torch.no_grad():
        for start in range(0, dataset.n, MARGINAL_ROWS):
            chunk = dataset.rows(slice(start, start + MARGINAL_ROWS))
            refuse_gaps(site.name, chunk.observed.get(site.name))
            batch = to_device(chunk.values, model.model.device)
            out.append(smoothing(site.tables(dict(batch), batch[site.name])))
    steps = site.shape[0]
    return torch.cat(out) if out else torch.zeros(0, steps, site.classes)
