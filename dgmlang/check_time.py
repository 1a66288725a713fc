"""Checking time: `for t in a:b { ... }` loops and the draws of one step (`s[t] ~ ...`).

A variable drawn step by step is a *sequence*: its leading dimension is time, each run of
steps (a loop, or one fixed step such as `s[0]`) is bound like an ordinary draw over one
step's shape, and its arguments read steps through `ir.StepRef` (`s[t - 1]`: lag 1). At the
end every step must be drawn exactly once, and what the compiled layer sums out is checked
here, so later stages never judge (see docs/language.md, "Time").

>>> from dgmlang.check import check
>>> from dgmlang.parse import parse
>>> (hmm,) = check(parse('''
... model hmm {
...     param  trans[3, 3] : simplex
...     data   x[20]
...     latent s[20]
...     s[0] ~ Categorical(logits = zeros(3))
...     for t in 1:20 { s[t] ~ Categorical(probs = trans[s[t - 1]]) }
...     for t in 0:20 { x[t] ~ Normal(s[t], 1) }
... }''', "hmm.dgm"))
>>> [(run.first, run.stop) for run in hmm.draw("s").steps]
[(0, 1), (1, 20)]
>>> hmm.draw("s").steps[1].draw.param("probs").items
(StepRef(name='s', lag=1, shape=()),)
"""
from __future__ import annotations

from dataclasses import dataclass

from dgmlang import ast
from dgmlang import check_limits
from dgmlang import ir
from dgmlang.check_spans import head_span, line_of, walk_ast
from dgmlang.check_values import Dep, Skip, Value, VarInfo
from dgmlang.distributions import DISTRIBUTIONS
from dgmlang.errors import DGMError, DGMModelError, DGMShapeError
from dgmlang.printer import format_expr

__all__ = ["TimeChecker"]


@dataclass(frozen=True)
class _Time:
    """The steps being checked: the loop's index (None for one fixed step), the first and
    the stop step, and the sequence drawn."""

    var: str | None
    first: int
    stop: int
    target: str


class TimeChecker:
    """Loops, step draws and step reads. A part of `dgmlang.check.ModelChecker` (before
    `ExpressionChecker` in its bases: it sees indexing and names first)."""

    time: _Time | None = None

    # -------------------------------------------------------------- the flat body

    def flatten_body(self) -> list:
        """The model's statements with every loop's body in its place; each step draw of a
        loop remembers its loop (`loop_of`). Loop bodies hold draws and lets of one step only."""
        self.loop_of: dict[int, ast.For] = {}
        self.loop_ranges: dict[int, tuple[int, int] | None] = {}
        self.step_runs: dict[str, list[tuple[ir.Steps, ast.Draw]]] = {}
        self.step_reads: list[tuple[str, str, int, object]] = []
        self.misplaced: set[int] = set()
        flat = []
        for stmt in self.model.body:
            if not isinstance(stmt, ast.For):
                if isinstance(stmt, ast.Let) and stmt.index is not None:
                    self.let_step(stmt, None)  # a step of a recurrent let (dgmlang.check_recur)
                flat.append(stmt)
                continue
            for inner in stmt.body:
                if isinstance(inner, ast.For):
                    self.report(not_supported("a loop inside a loop", inner.span,
                                              "write the steps of each sequence in one loop over time"))
                    continue
                if isinstance(inner, ast.Draw):
                    if inner.index is None:
                        self.report(DGMModelError(
                            f"a draw inside a loop draws one step: '{inner.target}' has no step index",
                            head_span(inner.span, len(inner.target)),
                            hint=f"write `{inner.target}[{stmt.var}] ~ ...`, and declare "
                                 f"'{inner.target}' with time as its first dimension"))
                        self.misplaced.add(id(inner))  # it counts as drawn, unchecked
                    if inner.index is not None:
                        self.loop_of[id(inner)] = stmt
                elif isinstance(inner, ast.Let):
                    self.let_step(inner, stmt)
                else:
                    self.report(DGMModelError(
                        "a loop holds draws; declarations and networks go outside it",
                        inner.span, hint="move it above the loop"))
                flat.append(inner)
        self.sequences = {s.target for s in flat if isinstance(s, ast.Draw) and s.index is not None}
        return flat

    def loop_range(self, loop: ast.For) -> tuple[int, int | str]:
        """The loop's first step and its stop: a constant, or the name of the int input
        holding each sequence's length (checked once; Skip after its error)."""
        if id(loop) not in self.loop_ranges:
            self.loop_ranges[id(loop)] = None
            if loop.var in self.declared:
                raise DGMModelError(
                    f"the loop index '{loop.var}' is already declared", loop.var_span,
                    hint="give the loop index a name of its own, such as t")
            first = self.const_int(loop.start, "a loop bound", positive=False)
            stop = self.length_input(loop.stop)
            if stop is None:
                stop = self.const_int(loop.stop, "a loop bound", positive=False)
            if not 0 <= first < (stop if isinstance(stop, int) else first + 1):
                raise DGMShapeError(
                    f"the loop {first}:{stop} has no steps" if first >= 0 else
                    f"the loop starts at {first}, before step 0",
                    loop.start.span if first < 0 else loop.stop.span,
                    hint="`for t in a:b` runs t = a, ..., b - 1 with 0 <= a < b")
            self.loop_ranges[id(loop)] = (first, stop)
        if self.loop_ranges[id(loop)] is None:
            raise Skip
        return self.loop_ranges[id(loop)]

    def length_input(self, stop: ast.Expr) -> str | None:
        """The name of the `input n : int` a loop ends at (per-sequence lengths), or None."""
        info = self.vars.get(stop.name) if isinstance(stop, ast.Name) else None
        if info is None or info.decl.role != "input":
            return None
        if info.type != "int" or info.shape != ():
            raise DGMShapeError(
                f"a loop ending at input '{stop.name}' runs to each sequence's length, which is "
                f"one whole number per data point, but '{stop.name}' is "
                + ("not declared int" if info.type != "int" else f"shaped {list(info.shape or ())}"),
                stop.span, hint=f"declare it `input {stop.name} : int`")
        return stop.name

    # -------------------------------------------------------------- step draws

    def check_step_draw(self, d: ast.Draw, spec, info: VarInfo) -> None:
        """One run of steps of a sequence: bound over one step's shape, reads through
        `StepRef`."""
        target_span = head_span(d.span, len(d.target))
        if d.index is None:
            first = next(s for s in self.draws[d.target] if s.index is not None)
            raise DGMModelError(
                f"'{d.target}' is drawn whole here and step by step at line {line_of(first.span)}",
                target_span, hint="a sequence is drawn one step at a time: `s[t] ~ ...`")
        if not info.shape:
            raise DGMShapeError(f"'{d.target}' is a scalar, so it has no steps", target_span,
                                hint=f"declare it with time first, e.g. `{info.decl.role} {d.target}[T]`")
        steps = info.shape[0]
        loop = self.loop_of.get(id(d))
        length = None
        if loop is not None:
            first, stop = self.loop_range(loop)
            if isinstance(stop, str):  # up to each sequence's length, padding after it
                length, stop = stop, steps
            if not (isinstance(d.index, ast.Name) and d.index.name == loop.var):
                raise DGMModelError(
                    f"a draw inside `for {loop.var}` draws step {loop.var}", d.index.span,
                    hint=f"write `{d.target}[{loop.var}] ~ ...`; read other steps in its arguments")
            if stop > steps:
                raise DGMShapeError(
                    f"the loop runs to step {stop - 1}, but '{d.target}' has {steps} steps",
                    loop.stop.span, hint=f"steps run from 0 to {steps - 1}: end the loop at {steps}")
        else:
            first = self.const_int(d.index, "a step", positive=False)
            if not 0 <= first < steps:
                raise DGMShapeError(f"step {first} is out of range: '{d.target}' has {steps} steps",
                                    d.index.span, hint=f"steps run from 0 to {steps - 1}")
            stop = first + 1
        step_shape = info.shape[1:]
        self.time = _Time(loop.var if loop is not None else None, first, stop, d.target)
        try:
            draw = self.bind(d, spec, step_shape)
        finally:
            self.time = None
        step_info = VarInfo(info.decl, step_shape, info.type, info.value, info.guide, info.family_span)
        self.check_role(d, spec, step_info, draw)
        self.step_runs.setdefault(d.target, []).append((ir.Steps(first, stop, draw.ir, length), d))
        if spec.name == "Categorical":
            self.bounds[d.target] = draw.classes
            if info.decl.role == "latent":  # summed out: one value per class
                check_limits.check_classes(draw.classes, f"'{d.target}[...]' ~ Categorical(...)", d.span)
                check_limits.check_elements((draw.classes, draw.classes), f"the transition table of '{d.target}'",
                                            d.span)

    # -------------------------------------------------------------- reading steps

    def index(self, e: ast.Index) -> Value:
        if isinstance(e.value, ast.Name) and e.value.name in self.sequences:
            if e.value.name not in self.vars:
                raise Skip  # drawn but never declared: reported at its draws
            return self.step_read(e)
        if self.time is not None and self.time.var is not None and isinstance(e.value, ast.Name) and any(
                _steps_by(item, self.time.var) for item in e.indices):
            raise not_supported(f"indexing '{e.value.name}' by the loop index: only sequences drawn step by "
                                "step have steps", e.span, "an input or param that varies over time is not served yet")
        return super().index(e)

    def name(self, e: ast.Name, want) -> Value:
        if e.name in self.sequences and e.name in self.vars:
            raise not_supported(f"reading the whole sequence '{e.name}'", e.span,
                                f"read one step of it inside a loop, e.g. `{e.name}[t]`")
        if self.time is not None and e.name == self.time.var:
            raise not_supported(f"the loop index '{e.name}' as a value", e.span,
                                f"use it to index a sequence's steps: `s[{e.name}]`, `s[{e.name} - 1]`")
        return super().name(e, want)

    def step_read(self, e: ast.Index) -> Value:
        """`v[t - k]` (or `v[c]` in one fixed step) as the `StepRef` of lag k."""
        name = e.value.name
        info = self.vars[name]
        if not info.shape:  # unknown, or a scalar declared twice: reported at its declarations
            raise Skip
        lag = self.read_lag(e, name, info.shape[0])
        time = self.time
        self.step_reads.append((time.target, name, lag, e.span))
        dep = Dep(name, e.span)
        return Value(ir.StepRef(name, lag, info.shape[1:], span=e.span), info.type == "int",
                     self.bounds.get(name), dep, dep, self.variable_range(name))

    def read_lag(self, e: ast.Index, name: str, steps: int, *, let: bool = False) -> int:
        """The lag k of `v[t - k]` (or of a fixed step) read in the current step, checked
        against the future, the step being drawn, and both ends of `name`'s `steps` steps.
        `let`: read by recurrent lets' wording (steps defined, `v[0] = ...`), which inputs'
        steps share."""
        time = self.time
        if time is None:
            if let:
                raise not_supported(f"reading a step of '{name}' outside the steps of a sequence", e.span,
                                    "read steps only in the steps of other sequences and recurrent lets")
            raise not_supported(f"reading a step of the sequence '{name}' outside its steps", e.span,
                                "read steps only in the draws of other steps (`x[t] ~ ...(s[t])`)")
        item = e.indices[0]
        if len(e.indices) != 1 or isinstance(item, ast.Slice):
            then = f", then index the step: `{name}[t][0]`" if let else ""
            raise not_supported(f"indexing '{name}' other than by one step", e.span,
                                f"write `{name}[t]` or `{name}[t - k]`{then}")
        if time.var is not None and any(isinstance(n, ast.Name) and n.name == time.var
                                        for n in walk_ast(item)):
            lag = -self.time_offset(item, time.var)
        else:
            fixed = self.const_int(item, "a step", positive=False)
            if time.first + 1 != time.stop:
                raise not_supported(f"a fixed step '{name}[{fixed}]' inside a loop", item.span,
                                    f"read steps relative to the loop index: `{name}[{time.var} - k]`")
            lag = time.first - fixed
        written = f"{name}[{format_expr(item)}]"
        verb, first_step = ("define", f"`{name}[0] = ...`") if let else ("draw", f"`{name}[0] ~ ...`")
        if lag < 0:
            raise DGMModelError(
                f"'{written}' reads the future: step {time.first - lag} comes after step {time.first}",
                item.span, hint="a step may read only the same or earlier steps of other variables "
                                "and earlier steps of its own (t - 1, t - k)")
        if lag == 0 and name == time.target:
            raise DGMModelError(f"'{written}' reads the step it {verb}s", item.span,
                                hint=f"read an earlier step: `{name}[t - 1]`")
        if time.first - lag < 0:
            raise DGMShapeError(
                f"'{written}' is step {time.first - lag} at the first step {time.first}: "
                "before the sequence starts", item.span,
                hint=f"start the loop at {lag} and {verb} the steps before it on their own ({first_step})")
        if time.stop - 1 - lag >= steps:
            raise DGMShapeError(
                f"'{written}' is step {time.stop - 1 - lag} at the last step {time.stop - 1}, "
                f"but '{name}' has {steps} steps", item.span, hint=f"steps run from 0 to {steps - 1}")
        return lag

    def time_offset(self, item: ast.Expr, var: str) -> int:
        """k for a step index `t`, `t + k`, `t - k` or `k + t` (k a constant integer)."""
        if isinstance(item, ast.Name) and item.name == var:
            return 0
        if isinstance(item, ast.BinOp) and item.op in ("+", "-"):
            if isinstance(item.left, ast.Name) and item.left.name == var:
                k = self.const_int(item.right, "a step offset", positive=False)
                return k if item.op == "+" else -k
            if item.op == "+" and isinstance(item.right, ast.Name) and item.right.name == var:
                return self.const_int(item.left, "a step offset", positive=False)
        raise DGMModelError(f"'{format_expr(item)}' is not a step index", item.span,
                            hint=f"a step is read as `{var}`, `{var} - k` or `{var} + k` with k a constant")

    # -------------------------------------------------------------- whole sequences

    def check_sequences(self) -> None:
        """Every step drawn exactly once; what the compiled layer can sum out."""
        counts = {name: sum(1 for s in self.draws[name] if s.index is not None) for name in self.sequences}
        complete = []
        for name in sorted(self.sequences, key=lambda n: self.position(n)):
            info = self.vars.get(name)
            runs = sorted(self.step_runs.get(name, []), key=lambda r: (r[0].first, r[0].stop))
            if info is None or info.shape is None or len(runs) != counts[name]:
                continue  # its mistakes are reported
            before = len(self.errors)
            self.attempt(self.check_coverage, name, info, runs)
            if len(self.errors) == before:
                complete.append(name)
        if len(complete) == len(self.sequences) and not self.errors:
            self.attempt(self.check_summable, complete)

    def position(self, name: str) -> tuple:
        span = self.vars[name].decl.span if name in self.vars else None
        return (span.line, span.col) if span is not None else (0, 0)

    def check_coverage(self, name: str, info: VarInfo, runs) -> None:
        steps = info.shape[0]
        covered = 0
        for run, stmt in runs:
            if run.first < covered:
                earlier = next(s for r, s in runs if r.first <= run.first < r.stop and s is not stmt)
                self.report(DGMModelError(
                    f"step {run.first} of '{name}' is drawn twice",
                    head_span(stmt.span, len(name)),
                    hint=f"it is drawn at line {line_of(earlier.span)} too; every step has exactly one distribution"))
            elif run.first > covered:
                self.report(_never_drawn(name, covered, run.first, info))
            covered = max(covered, run.stop)
        if covered < steps:
            self.report(_never_drawn(name, covered, steps, info))
        classes = [(_classes(run.draw), stmt) for run, stmt in runs if run.draw.dist == "Categorical"]
        for count, stmt in classes[1:]:
            if count != classes[0][0]:
                self.report(DGMShapeError(
                    f"'{name}' takes {count} classes in these steps but {classes[0][0]} in the steps at "
                    f"line {line_of(classes[0][1].span)}", head_span(stmt.dist.span, len(stmt.dist.func)),
                    hint="every step of a sequence takes the same values: give each step's probs or logits one length"))
                break
        dists = {run.draw.dist for run, _ in runs}
        if len(dists) > 1:
            self.report(not_supported(f"steps of '{name}' from different distributions ({', '.join(sorted(dists))})",
                                      runs[-1][1].span, "draw every step from one distribution"))

    def check_summable(self, names: list[str]) -> None:
        """What the compiled layer serves: first-order Categorical chains, each emitting one
        data sequence step by step, and autoregressive data sequences."""
        runs = {n: self.step_runs[n] for n in names}
        reads: dict[str, set[tuple[str, int]]] = {n: set() for n in names}
        for target, name, lag, span in self.step_reads:
            if target in reads:
                reads[target].add((name, lag))
        chains = [n for n in names if self.vars[n].decl.role == "latent"]
        emitted: dict[str, list[str]] = {n: [] for n in chains}
        for name in names:
            role = self.vars[name].decl.role
            first_stmt = runs[name][0][1]
            where = head_span(first_stmt.span, len(name))
            for run, stmt in runs[name]:
                for e in ir.walk(run.draw.expressions):
                    if isinstance(e, ir.Ref) and e.name in self.vars and \
                            self.vars[e.name].decl.role in ("data", "latent"):
                        raise not_supported(f"a step of '{name}' reading the {self.vars[e.name].decl.role} "
                                            f"'{e.name}', which has no steps", e.span,
                                            "the steps of a sequence read consts, params, globals, inputs and steps")
            if role == "global":
                raise not_supported(f"global sequence '{name}'", where, "declare it latent")
            if role == "latent":
                dist = runs[name][0][0].draw.dist
                if dist != "Categorical":
                    self.check_continuous_chain(name, dist, where)
                for other, lag in sorted(reads[name]):
                    if other != name:
                        raise not_supported(f"latent sequence '{name}' reading the sequence '{other}'",
                                            where, f"a chain's steps read only its previous step, {name}[t - 1]")
                    if lag > 1:
                        raise not_supported(f"'{name}' reads {name}[t - {lag}]: a chain of order {lag}",
                                            where, f"a chain's steps read only its previous step, {name}[t - 1]")
                continue
            if self.check_autoregressive(name, reads[name], where):
                continue  # it reads no chain: dgmlang.recurrence scores it (dgmlang.check_recur)
            latents = {other for other, _ in reads[name] if self.vars[other].decl.role == "latent"}
            lagged = sorted((o, lag) for o, lag in reads[name] if lag != 0 or o not in latents)
            if lagged:
                other, lag = lagged[0]
                written = f"{other}[t - {lag}]" if lag else f"{other}[t]"
                raise not_supported(f"data sequence '{name}' reading {written}", where,
                                    "the steps of data read the same step of one latent chain")
            if len(latents) != 1:
                raise not_supported(
                    f"data sequence '{name}' reading {'no latent chain' if not latents else 'two latent chains'}",
                    where, "each step of data is emitted by the same step of one latent chain, `x[t] ~ ...(s[t])`")
            (chain,) = latents
            bounded = {run.length for run, _ in runs[chain] if run.length is not None}
            if bounded and runs[name][-1][0].length not in bounded:
                raise not_supported(
                    f"data sequence '{name}' reading steps of '{chain}' past its length "
                    f"'{sorted(bounded)[0]}'", where,
                    f"end the loop of '{name}' at the same length: `for t in 0:{sorted(bounded)[0]}`")
            if self.vars[chain].shape[0] != self.vars[name].shape[0]:
                raise not_supported(f"data sequence '{name}' and its chain '{chain}' of different lengths",
                                    where, "declare both with the same number of steps")
            emitted[chain].append(name)
        for chain, data in emitted.items():
            if len(data) != 1:
                where = head_span(runs[chain][0][1].span, len(chain))
                raise not_supported(
                    f"latent chain '{chain}' emitting {'no data sequence' if not data else 'several data sequences'}",
                    where, "a chain emits exactly one data sequence (a vector per step may hold several values)")

    def check_continuous_chain(self, name: str, dist: str, where) -> None:
        """A continuous latent chain (`z[t] ~ Normal(f(z[t - 1]), s)`): steps on the real line,
        one value per entry, in a model without globals; its guide is a structured chain
        (docs/guides.md, "Continuous chains") with one width."""
        spec = DISTRIBUTIONS[dist]
        if spec.discrete or spec.support != "real" or spec.event_rank:
            raise not_supported(f"a latent sequence drawn from {dist}", where,
                                "a latent sequence is a Categorical chain (summed out exactly) or a chain of "
                                "real-valued steps such as Normal (guided by a structured chain)")
        globals_ = [n for n, v in self.vars.items() if v.decl.role == "global"]
        if globals_:
            raise not_supported(f"global '{globals_[0]}' in a model with the continuous latent chain '{name}'",
                                self.vars[globals_[0]].decl.name_span or self.vars[globals_[0]].decl.span,
                                "make it a param (a point estimate)")
        options = self.vars[name].guide
        if options is not None and options.family != "normal":
            raise not_supported(f"guide family {options.family} on the continuous latent chain '{name}'",
                                self.vars[name].family_span or where,
                                "a chain's guide draws each step from a Normal given the step before")
        if options is not None and options.hidden is not None and len(options.hidden) > 1:
            raise not_supported(f"{len(options.hidden)} hidden sizes for the guide of the chain '{name}'", where,
                                "a chain's guide has one width, that of its recurrent summary and combiner "
                                "(`guide(hidden = [64])`), or `guide(hidden = [])` for a linear guide")

    def sequence_draw(self, name: str) -> ir.Draw:
        """The IR of a sequence: its runs of steps in time order."""
        runs = sorted((run for run, _ in self.step_runs[name]), key=lambda r: r.first)
        first = min((stmt for _, stmt in self.step_runs[name]), key=lambda s: (s.span.line, s.span.col)
                    if s.span is not None else (0, 0))
        return ir.Draw(name, runs[0].draw.dist, span=first.span, steps=tuple(runs))


def _steps_by(item, var: str) -> bool:
    """Whether an index is written as a step: `t`, or `t` plus or minus something."""
    def is_var(node) -> bool:
        return isinstance(node, ast.Name) and node.name == var

    return is_var(item) or (isinstance(item, ast.BinOp) and item.op in ("+", "-")
                            and (is_var(item.left) or is_var(item.right)))


def _classes(draw: ir.Draw) -> int:
    """The number of classes of a Categorical draw (its probs or logits' last dimension)."""
    if draw.packed is not None:
        return draw.packed_params[0].shape[-1]
    return (draw.param("logits") or draw.param("probs")).shape[-1]


def not_supported(what: str, span, hint: str | None = None) -> DGMError:
    """A construct of the language the compiler does not serve yet."""
    return DGMModelError(f"not supported yet: {what}", span, hint=hint)


def _never_drawn(name: str, first: int, stop: int, info: VarInfo) -> DGMError:
    steps = f"step {first}" if stop == first + 1 else f"steps {first} to {stop - 1}"
    return DGMModelError(
        f"{steps} of '{name}' {'is' if stop == first + 1 else 'are'} never drawn",
        info.decl.name_span or info.decl.span,
        hint="draw every step exactly once, e.g. " + (f"`{name}[{first}] ~ ...`" if stop == first + 1 else
                                                      f"`for t in {first}:{stop} {{ {name}[t] ~ ... }}`"))


