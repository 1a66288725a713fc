"""Autoregressive data sequences and recurrent lets: a fully observed sequence model is one
site of the model (`SequenceSite`), its likelihood exact.

The checker (`dgmlang.check_recur`) accepts a data sequence `x[T]` that reads no latent
chain: its steps read its own past (`x[t - 1]`), steps of inputs (`obs[t]`) and steps of
recurrent lets (`let h[t] = cell(h[t - 1], onehot(x[t - 1], V))`), which read the same. The
site computes the lets step by step (a Python loop over t: a gru's step is torch's
`nn.GRUCell`), then scores every step of the data at once, each run of steps as one batch
(the steps along a leading dimension). Sampling is ancestral: at each step the lets, then
x[t] drawn, which the next step's lets read. Steps from a row's length on (`for t in 0:n`)
are padding: not scored, and zeros when sampled; sampling stops at the longest length.

>>> import dgmlang, torch
>>> m = dgmlang.compile('''
... model walk {
...     data x[6]
...     x[0] ~ Normal(0, 1)
...     for t in 1:6 { x[t] ~ Normal(0.5 * x[t - 1], 1) }
... }''')
>>> x = m.sample(3, seed=0)["x"]
>>> x.shape
torch.Size([3, 6])
>>> exact = torch.distributions.Normal(0, 1).log_prob(x[:, 0]) + \\
...     torch.distributions.Normal(0.5 * x[:, :-1], 1).log_prob(x[:, 1:]).sum(-1)
>>> bool(torch.allclose(m.log_prob(x), exact, atol=1e-5))
True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import networkx as nx
import torch
from torch import nn

import pyro
import pyro.distributions as pdist
from pyro.distributions import constraints

from dgmlang import ir as irm
from dgmlang.evaluate import Env, broadcast_shape
from dgmlang.facts import ModelFacts
from dgmlang.sites import ModelSite, WholeSequenceSite, refuse_gaps
from dgmlang.supports import support_of

__all__ = ["SequenceLikelihood", "SequenceSite", "autoregressive_data"]


def autoregressive_data(facts: ModelFacts) -> list[str]:
    """The data sequences that read no latent chain (the checker allows no other kind
    besides a chain's emissions), in topological order."""
    out = []
    for name in facts.data_order:
        draw = facts.draws[name]
        if draw.steps and not any(isinstance(e, irm.StepRef) and e.name in facts.variables
                                  and facts.variables[e.name].role == "latent"
                                  for e in irm.walk(draw.expressions)):
            out.append(name)
    return out


def _step_refs(exprs) -> list[tuple[str, int]]:
    return sorted({(e.name, e.lag) for e in irm.walk(exprs) if isinstance(e, irm.StepRef)})


@dataclass
class _LetRuns:
    """A recurrent let: its number of steps, per run (first, stop, compiled value, the
    steps its value reads), and per run whose value is `cell(h[t - 1], input)` with a gru
    `cell` and an input reading no let (a plain recurrence), (the cell's module, the
    compiled input, the steps it reads), else None."""

    steps: int
    runs: list[tuple[int, int, Callable[[Env], torch.Tensor], list[tuple[str, int]]]]
    plain: list[tuple[nn.Module, Callable[[Env], torch.Tensor], list[tuple[str, int]]] | None]

    def run_at(self, t: int):
        return next(run for run in self.runs if run[0] <= t < run[1])


class SequenceLikelihood(pdist.TorchDistribution):
    """p(x) of an autoregressive data sequence: `log_prob(x)` is `score(x)`, exact.
    `batch_shape` is the data plate's."""

    arg_constraints: dict = {}
    support = constraints.real_vector  # validated by the data checks, not here
    has_rsample = False

    def __init__(self, score: Callable[[torch.Tensor], torch.Tensor], batch_shape, event_shape):
        self._score = score
        super().__init__(torch.Size(batch_shape), torch.Size(event_shape), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return SequenceLikelihood(self._score, batch_shape, self.event_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        total = self._score(value)
        return total.expand(broadcast_shape(tuple(total.shape), tuple(self.batch_shape)))


class SequenceSite(WholeSequenceSite):
    """The autoregressive data sequence `name` with the recurrent lets it reads: one site of
    the model, with `ModelSite`'s interface (`distribution`, `log_prob`) and `sample` (as
    `dgmlang.chains.ChainSite`). `runs` are the data's runs of steps, each a `ModelSite`
    over one step; `lets` the recurrent lets it reads (through each other too), `order`
    these lets and `name` in the order one step computes them."""

    def __init__(self, name: str, facts: ModelFacts, evaluator, net: Callable[[str], nn.Module]):
        self.name = name
        self.role = "data"
        self.dist = facts.draws[name].dist
        self.shape = facts.variables[name].shape
        #: class labels are drawn as int64, as the data they stand for is given
        self._integer = support_of(facts.ir, facts.variables[name], facts=facts).integer_dtype
        self._evaluator = evaluator
        self._variables = facts.variables
        self.runs = [(run, ModelSite(name, facts, evaluator, net, steps=run), _step_refs(run.draw.expressions))
                     for run in facts.draws[name].steps]
        self.lets: dict[str, _LetRuns] = {}
        todo = [ref for _, _, refs in self.runs for ref, _ in refs]
        while todo:
            let = facts.recurrent_lets.get(todo.pop())
            if let is None or let.name in self.lets:
                continue
            runs = [(r.first, r.stop, evaluator.compile(r.value), _step_refs([r.value])) for r in let.steps]
            plain = [_plain_recurrence(let.name, r.value, facts, evaluator, net) for r in let.steps]
            self.lets[let.name] = _LetRuns(let.steps[-1].stop, runs, plain)
            todo += [ref for *_, refs in runs for ref, _ in refs]
        same_step = nx.DiGraph()
        same_step.add_nodes_from([*self.lets, name])
        for node, refs in [(name, [r for _, _, rs in self.runs for r in rs]),
                           *((let, [r for *_, rs in info.runs for r in rs]) for let, info in self.lets.items())]:
            same_step.add_edges_from((ref, node) for ref, lag in refs if lag == 0 and ref in same_step)
        self.order = list(nx.topological_sort(same_step))  # the checker refuses circles

    # ------------------------------------------------------------------ values of steps

    def series(self, env: Env, value, rank: int) -> dict[str, Callable[[int], torch.Tensor]]:
        """Step s of every sequence a step may read, by name: inputs from `env`, the data
        from `value` (a tensor ``(*batch, T, *step)``, or the list of steps drawn so far)."""
        def steps_of(tensor):
            return lambda s: tensor.select(rank, s)

        series = {name: steps_of(v) for name, v in env.items()
                  if name in self._variables and self._variables[name].role == "input"
                  and torch.is_tensor(v) and len(self._variables[name].shape) >= 1}
        series[self.name] = value.__getitem__ if isinstance(value, list) else steps_of(value)
        return series

    def _local(self, env: Env, refs, t: int, series, lets: dict[str, list]) -> Env:
        local = dict(env)
        for ref, lag in refs:
            local[irm.step_key(ref, lag)] = lets[ref][t - lag] if ref in lets else series[ref](t - lag)
        return local

    def let_step(self, let: str, t: int, env: Env, series, lets: dict[str, list]) -> None:
        """Append step t of `let` to ``lets[let]`` (nothing past its last step), reading the
        steps before it in `lets` and `series`."""
        info = self.lets[let]
        if t < info.steps:
            _, _, fn, refs = info.run_at(t)
            lets[let].append(fn(self._local(env, refs, t, series, lets)))

    def recur(self, env: Env, value: torch.Tensor, rank: int) -> dict[str, list[torch.Tensor]]:
        """Every step of every let, given the data `value`: ``{let: [step 0, step 1, ...]}``.
        A plain gru recurrence (see `_LetRuns`) runs all its steps at once (`GRUStep.sequence`)."""
        series = self.series(env, value, rank)
        lets: dict[str, list] = {let: [] for let in self.lets}
        horizon = max((info.steps for info in self.lets.values()), default=0)
        for t in range(horizon):
            for let in self.order:
                if let not in lets or len(lets[let]) > t:
                    continue  # computed already, by a plain recurrence
                info = self.lets[let]
                index = next((i for i, (first, stop, _, _) in enumerate(info.runs) if first == t), None)
                if index is not None and info.plain[index] is not None and t > 0:
                    first, stop, _, _ = info.runs[index]
                    lets[let] += self._plain_steps(info.plain[index], first, stop - first, env, value, rank,
                                                   lets[let][-1])
                else:
                    self.let_step(let, t, env, series, lets)
        return lets

    def _plain_steps(self, plain, first: int, count: int, env: Env, value: torch.Tensor, rank: int,
                     state: torch.Tensor) -> list[torch.Tensor]:
        module, given, refs = plain
        local = dict(env)
        for ref, lag in refs:
            source = value if ref == self.name else env[ref]
            local[irm.step_key(ref, lag)] = source.narrow(rank, first - lag, count).movedim(rank, 0)
        inputs = given(local)
        if not refs:  # the same input at every step
            inputs = inputs.expand(count, *inputs.shape)
        batch = torch.broadcast_shapes(inputs.shape[1:-1], state.shape[:-1])
        flat = inputs.expand(count, *batch, inputs.shape[-1]).reshape(count, -1, inputs.shape[-1])
        start = state.expand(*batch, state.shape[-1]).reshape(-1, state.shape[-1])
        dtype = module.cell.weight_ih.dtype
        out = module.sequence(flat.to(dtype), start.to(dtype))
        return list(out.reshape(count, *batch, state.shape[-1]).unbind(0))

    def _stacked(self, steps: list[torch.Tensor]) -> torch.Tensor:
        """Steps of a let along a new leading dim (their batch dims broadcast)."""
        shape = torch.broadcast_shapes(*(s.shape for s in steps))
        return torch.stack([s.expand(shape) for s in steps])

    # ------------------------------------------------------------------ the likelihood

    def sequence_log_prob(self, env: Env, value: torch.Tensor) -> torch.Tensor:
        """log p(x) of the sequences `value` ``(*batch, T, *step)``, shaped ``(*batch,)``:
        the lets step by step, then every step of the data at once."""
        rank = value.dim() - len(self.shape)
        lets = self.recur(env, value, rank)
        series = self.series(env, value, rank)
        total = None
        for run, site, refs in self.runs:
            count = run.stop - run.first
            local = dict(env)
            for ref, lag in refs:
                start = run.first - lag
                if ref in lets:
                    local[irm.step_key(ref, lag)] = self._stacked(lets[ref][start:start + count])
                else:
                    source = value if ref == self.name else env[ref]
                    local[irm.step_key(ref, lag)] = source.narrow(rank, start, count).movedim(rank, 0)
            base = site.distribution(local)
            log_p = base.log_prob(value.narrow(rank, run.first, count).movedim(rank, 0))
            if site.event_dims:
                log_p = log_p.sum(tuple(range(-site.event_dims, 0)))
            log_p = log_p.reshape((1,) * (rank + 1 - log_p.dim()) + tuple(log_p.shape))
            if run.length is not None:  # steps from each sequence's length on are padding
                n = env[run.length]
                t = torch.arange(run.first, run.stop, dtype=n.dtype, device=n.device)
                keep = t.reshape(-1, *(1,) * n.dim()) < n
                log_p = torch.where(keep, log_p, torch.zeros((), dtype=log_p.dtype, device=log_p.device))
            part = log_p.sum(0)
            total = part if total is None else total + part
        return total

    def draw(self, env: Env, rows: int) -> torch.Tensor:
        """Sequences drawn from the model, ``(rows, T, *step)``: at each step the lets, then
        the data's step, which later steps read. Steps past a row's length are zeros."""
        steps = self.shape[0]
        dtype = torch.long if self._integer else self._evaluator.dtype
        lengths = [env[run.length] for run, _, _ in self.runs if run.length is not None]
        horizon = min(steps, int(lengths[0].max()) if lengths else steps)
        drawn: list[torch.Tensor] = []
        series = self.series(env, drawn, 1)
        lets: dict[str, list] = {let: [] for let in self.lets}
        for t in range(horizon):
            for node in self.order:
                if node in lets:
                    self.let_step(node, t, env, series, lets)
                    continue
                run, site, refs = next(r for r in self.runs if r[0].first <= t < r[0].stop)
                base = site.distribution(self._local(env, refs, t, series, lets))
                base = base.expand(broadcast_shape(tuple(base.batch_shape), (rows, *site.outer)))
                drawn.append(base.sample().to(dtype))
        zeros = torch.zeros(rows, *self.shape[1:], dtype=dtype, device=self._evaluator.device)
        value = torch.stack(drawn + [zeros] * (steps - horizon), dim=1)
        if lengths:
            t = torch.arange(steps, device=value.device).reshape(1, steps, *(1,) * (len(self.shape) - 1))
            n = lengths[0].reshape(rows, *(1,) * len(self.shape))
            value = torch.where(t < n, value, torch.zeros((), dtype=dtype, device=value.device))
        return value

    # ------------------------------------------------------------------ the model's site

    def distribution(self, env: Env) -> SequenceLikelihood:
        """p(x), exact, batch shape the plate's (before any `.to_event`)."""
        env = dict(env)
        return SequenceLikelihood(lambda value: self.sequence_log_prob(env, value), self.plate_batch(env), self.shape)

    def sample(self, env: Env, obs: torch.Tensor | None, observed: torch.Tensor | None, rows: int) -> dict:
        """The Pyro site: x observed, its exact density; else x drawn step by step (recorded
        as a deterministic site of the prior)."""
        refuse_gaps(self.name, observed)
        if obs is not None:
            return {self.name: pyro.sample(self.name, self.distribution({**env, self.name: obs}), obs=obs)}
        value = self.draw(env, rows)
        return {self.name: pyro.deterministic(self.name, value, event_dim=len(self.shape))}


def _plain_recurrence(name: str, value: irm.IRExpr, facts: ModelFacts, evaluator, net):
    """For a let's run `cell(name[t - 1], input)` (a gru, its input reading no let), the
    cell's module, the compiled input and the steps it reads; else None."""
    if not (isinstance(value, irm.NetCall) and len(value.args) == 2 and value.constraint == "real"
            and facts.ir.net(value.net).kind == "gru"):
        return None
    state, given = value.args
    refs = _step_refs([given])
    if not (isinstance(state, irm.StepRef) and state.name == name and state.lag == 1) or any(
            ref in facts.recurrent_lets for ref, _ in refs):
        return None
    return net(value.net), evaluator.compile(given), refs
