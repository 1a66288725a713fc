"""Checking recurrences: recurrent lets (`let h[0] = ...`, `let h[t] = cell(h[t - 1], ...)`),
inputs read by step (`obs[t]`), and autoregressive data sequences (`x[t]` reading `x[t - 1]`
and steps of lets) — the fully observed sequence models `dgmlang.recurrence` scores exactly.

A recurrent let is a sequence of deterministic values: each run of its steps (one fixed step,
or a loop with constant bounds) is an expression over one step's shape reading steps through
`ir.StepRef`; its runs must agree on that shape and cover steps 0 to T - 1 once (T: its last
run's stop). Steps are checked in source order, so a step reads lets defined above it.

>>> from dgmlang.check import check
>>> from dgmlang.parse import parse
>>> (lm,) = check(parse('''
... model lm {
...     data x[12] : int
...     net cell = gru(hidden = 8)
...     net out = mlp(hidden = [])
...     let h[0] = zeros(8)
...     for t in 1:12 { let h[t] = cell(h[t - 1], onehot(x[t - 1], 4)) }
...     x[0] ~ Categorical(logits = zeros(4))
...     for t in 1:12 { x[t] ~ Categorical(logits = out(h[t]) + zeros(4)) }
... }''', "lm.dgm"))
>>> [(run.first, run.stop) for run in lm.lets[0].steps]
[(0, 1), (1, 12)]
>>> lm.net("cell").kind, lm.net("cell").input_sizes
('gru', (8, 4))
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from dgmlang import ast
from dgmlang import ir
from dgmlang.check_shapes import fmt_shape
from dgmlang.check_spans import head_span, line_of
from dgmlang.check_time import not_supported
from dgmlang.check_values import NO_WANT, Dep, Skip, Value
from dgmlang.errors import DGMModelError, DGMShapeError
from dgmlang.printer import format_expr

__all__ = ["RecurrenceChecker"]


@dataclass(frozen=True)
class LetTime:
    """The steps of a recurrent let being checked, as `TimeChecker` reads them while it
    checks a draw's steps: the loop's index (None for one fixed step), the first and the
    stop step, and the let defined."""

    var: str | None
    first: int
    stop: int
    target: str


def _is_step(item, var: str) -> bool:
    """Whether an index is written as a step: `t`, or `t` plus or minus something."""
    def is_var(node) -> bool:
        return isinstance(node, ast.Name) and node.name == var

    return is_var(item) or (isinstance(item, ast.BinOp) and item.op in ("+", "-")
                            and (is_var(item.left) or is_var(item.right)))


class RecurrenceChecker:
    """Recurrent lets, inputs read by step, autoregressive data sequences. A part of
    `dgmlang.check.ModelChecker` (before `TimeChecker` in its bases: it sees step reads of
    lets and inputs first)."""

    # -------------------------------------------------------------- declaring

    def let_step(self, let: ast.Let, loop: ast.For | None) -> None:
        """A let of one step or inside a loop (called while the body is flattened)."""
        if loop is not None:
            self.loop_of[id(let)] = loop
        if let.index is None:
            self.bad_lets.add(let.name)
            self.report(DGMModelError(
                f"a let inside a loop defines one step: '{let.name}' has no step index",
                head_span(let.span, 3 + 1 + len(let.name)),
                hint=f"write `let {let.name}[{loop.var}] = ...`; compute values that do not change "
                     "over time outside the loop"))
            return
        self.let_step_stmts.append(let)

    def declare_let_step(self, let: ast.Let) -> None:
        """The steps of one recurrent let share its name; any other use of it is a clash."""
        from dgmlang.check_errors import declared_twice, reserved_name
        from dgmlang.check_spans import declared_span
        from dgmlang.distributions import BUILTINS, DISTRIBUTIONS, NETWORKS

        prior = self.declared.get(let.name)
        if prior is None:
            self.declared[let.name] = let
            self.recurrent.add(let.name)
            if let.name in BUILTINS or let.name in DISTRIBUTIONS or let.name in NETWORKS:
                raise reserved_name(let.name, declared_span(let))
        elif not (isinstance(prior, ast.Let) and prior.index is not None):
            raise declared_twice(let.name, declared_span(let), declared_span(prior))

    # -------------------------------------------------------------- the lets' steps

    def check_recurrent_lets(self) -> None:
        """Every recurrent let's runs of steps and their coverage, then every step's value
        in source order."""
        self.let_runs: dict[str, list[tuple[int, int, ast.Let]]] = {}
        self.let_extent: dict[str, int] = {}
        stmts = [s for s in self.let_step_stmts if s.name in self.recurrent]
        for let in stmts:
            self.current = let.span
            bounds = self.attempt(self.let_bounds, let)
            if bounds is None:
                self.failed_lets.add(let.name)
                continue
            self.let_runs.setdefault(let.name, []).append((*bounds, let))
        for name, runs in self.let_runs.items():
            self.let_extent[name] = max(stop for _, stop, _ in runs)
            if name not in self.failed_lets:
                self.current = runs[0][2].span
                if self.attempt(self.let_coverage, name) is None:
                    self.failed_lets.add(name)  # its values would only repeat the mistake
        for let in stmts:
            if let.name in self.failed_lets:
                continue
            self.current = let.span
            first, stop, _ = next(r for r in self.let_runs[let.name] if r[2] is let)
            if self.attempt(self.let_run_value, let, first, stop) is None:
                self.failed_lets.add(let.name)

    def let_bounds(self, let: ast.Let) -> tuple[int, int]:
        loop = self.loop_of.get(id(let))
        if loop is None:
            first = self.const_int(let.index, "a step", positive=False)
            if first < 0:
                raise DGMShapeError(f"step {first} is before step 0", let.index.span,
                                    hint="steps run from 0")
            return first, first + 1
        first, stop = self.loop_range(loop)
        if isinstance(stop, str):
            raise not_supported(f"a recurrent let's loop ending at the length input '{stop}'", loop.stop.span,
                                "run the let's loop to a constant number of steps: steps past a "
                                "sequence's length are computed, but not scored")
        if not (isinstance(let.index, ast.Name) and let.index.name == loop.var):
            raise DGMModelError(f"a let inside `for {loop.var}` defines step {loop.var}", let.index.span,
                                hint=f"write `let {let.name}[{loop.var}] = ...`; read other steps in its value")
        return first, stop

    def let_run_value(self, let: ast.Let, first: int, stop: int) -> bool:
        loop = self.loop_of.get(id(let))
        self.time = LetTime(loop.var if loop is not None else None, first, stop, let.name)
        try:
            value = self.expr(let.value, NO_WANT)
        finally:
            self.time = None
        known = self.let_shapes.get(let.name)
        if known is not None and known[0] != value.shape:
            raise DGMShapeError(
                f"step {first} of '{let.name}' is shaped {fmt_shape(value.shape)}, but its steps at "
                f"line {line_of(known[1])} are shaped {fmt_shape(known[0])}", let.value.span,
                hint="every step of a recurrent let has one shape")
        if known is None:
            self.let_shapes[let.name] = (value.shape, let.span)
        self.let_values_by_step[id(let)] = value
        deps = self.let_deps.get(let.name, (None, None))
        self.let_deps[let.name] = (deps[0] or value.local, deps[1] or value.random)
        return True

    def let_coverage(self, name: str) -> bool:
        runs = sorted(self.let_runs[name], key=lambda r: (r[0], r[1]))
        covered = 0
        for first, stop, let in runs:
            if first < covered:
                earlier = next(s for f, e, s in runs if f <= first < e and s is not let)
                raise DGMModelError(f"step {first} of '{name}' is defined twice", let.span,
                                    hint=f"it is defined at line {line_of(earlier.span)} too; "
                                         "every step of a recurrent let has exactly one value")
            if first > covered:
                missing = f"step {covered}" if first == covered + 1 else f"steps {covered} to {first - 1}"
                raise DGMModelError(
                    f"{missing} of '{name}' {'is' if first == covered + 1 else 'are'} never defined", let.span,
                    hint=f"define every step from 0 on exactly once, e.g. `let {name}[{covered}] = ...`")
            covered = stop
        return True

    def recurrent_let_defs(self) -> dict[str, ir.LetDef]:
        """The IR of each recurrent let, by name."""
        defs = {}
        for name, runs in self.let_runs.items():
            steps = tuple(ir.LetSteps(first, stop, self.let_values_by_step[id(let)].expr)
                          for first, stop, let in sorted(runs, key=lambda r: r[0]))
            defs[name] = ir.LetDef(name, steps[-1].value, span=runs[0][2].span, steps=steps)
        return defs

    # -------------------------------------------------------------- reading steps

    def index(self, e: ast.Index) -> Value:
        if isinstance(e.value, ast.Name):
            name = e.value.name
            if name in self.recurrent:
                return self.let_step_read(e)
            info = self.vars.get(name)
            time = self.time
            if (time is not None and time.var is not None and info is not None and info.decl.role == "input"
                    and e.indices and _is_step(e.indices[0], time.var)):
                return self.input_step_read(e, info)
        return super().index(e)

    def name(self, e: ast.Name, want) -> Value:
        if e.name in self.recurrent:
            raise not_supported(f"reading the whole recurrent let '{e.name}'", e.span,
                                f"read one step of it inside a loop, e.g. `{e.name}[t]`")
        return super().name(e, want)

    def let_step_read(self, e: ast.Index) -> Value:
        name = e.value.name
        if name in self.failed_lets or name not in self.let_extent:
            raise Skip  # its mistakes are reported at its steps
        lag = self.read_lag(e, name, self.let_extent[name], let=True)
        known = self.let_shapes.get(name)
        if known is None:
            raise DGMModelError(f"'{name}[{format_expr(e.indices[0])}]' is read before any step of "
                                f"'{name}' is defined", e.span,
                                hint=f"define its first steps above this line, e.g. `let {name}[0] = ...`")
        if self.time.target != name:
            self.step_reads.append((self.time.target, name, lag, e.span))
        local, random = self.let_deps.get(name, (None, None))
        return Value(ir.StepRef(name, lag, known[0], span=e.span), local=local and Dep(local.name, e.span, name),
                     random=random and Dep(random.name, e.span, name))

    def input_step_read(self, e: ast.Index, info) -> Value:
        name = e.value.name
        if info.shape is None:
            raise Skip
        lag = self.read_lag(e, name, info.shape[0], let=True)
        self.step_reads.append((self.time.target, name, lag, e.span))
        dep = Dep(name, e.span)
        return Value(ir.StepRef(name, lag, info.shape[1:], span=e.span), info.type == "int",
                     self.bounds.get(name), dep, None, self.variable_range(name))

    # -------------------------------------------------------------- what is served

    def check_autoregressive(self, name: str, reads: set[tuple[str, int]], where) -> bool:
        """Whether the data sequence `name` is autoregressive (it reads no latent chain): then
        what `dgmlang.recurrence` serves is checked here. Its steps may read its own past,
        steps of inputs and of recurrent lets, which read steps of inputs, of lets and of
        `name` itself; a step of `name` and the lets it reads at one step must not read each
        other in a circle."""
        roles = {n: (self.vars[n].decl.role if n in self.vars else "let") for n, _ in reads}
        chains = sorted(n for n, role in roles.items() if role == "latent")
        if chains:
            others = sorted(n for n, role in roles.items() if role in ("let", "input"))
            if others:
                raise not_supported(f"data sequence '{name}' reading both the latent chain '{chains[0]}' "
                                    f"and steps of '{others[0]}'", where,
                                    "the steps of data emitted by a chain read the same step of the chain")
            return False
        edges, seen, todo = {}, set(), [name]
        while todo:
            node = todo.pop()
            if node in seen:
                continue
            seen.add(node)
            for target, other, lag, span in self.step_reads:
                if target != node:
                    continue
                role = self.vars[other].decl.role if other in self.vars else "let"
                if role in ("data", "latent") and other != name:
                    via = "" if node == name else f" (through the recurrent let '{node}')"
                    raise not_supported(f"the steps of data sequence '{name}' reading the {role} sequence "
                                        f"'{other}'{via}", span,
                                        f"a data sequence's steps read its own past ({name}[t - 1]), "
                                        "recurrent lets of it and inputs")
                if lag == 0 and role in ("data", "let"):
                    edges.setdefault((other, node), span)
                if role == "let":
                    todo.append(other)
            exprs = ([e for run, _ in self.step_runs[name] for e in run.draw.expressions] if node == name else
                     [self.let_values_by_step[id(let)].expr for _, _, let in self.let_runs.get(node, [])])
            for e in ir.walk(exprs):
                if isinstance(e, ir.Ref) and e.name in self.vars and self.vars[e.name].decl.role in ir.RANDOM_ROLES:
                    raise not_supported(f"a step of '{node}' reading the {self.vars[e.name].decl.role} '{e.name}'",
                                        e.span, "the steps of an autoregressive sequence and its recurrent lets "
                                                "read consts, params, inputs and steps")
        graph = nx.DiGraph(list(edges))
        if not nx.is_directed_acyclic_graph(graph):
            cycle = nx.find_cycle(graph)
            raise DGMModelError(f"{' and '.join(f'{n}[t]' for n in sorted({u for u, _ in cycle}))} read each "
                                "other at the same step", edges[cycle[0]],
                                hint="one of them must read an earlier step of the other (`t - 1`)")
        return True
