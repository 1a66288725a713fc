"""Facts derived from a checked model, computed once: ``ModelFacts(ir)``.

Every later stage asks this object instead of walking the IR again: the model graph and its
topological order, what each `let` reads (through other lets), the number of classes of a
finite discrete site, which sites can be summed out, which expressions never change, and
every use of an integer value that bounds it (``onehot(y, K)``, ``mu[c]``). No torch here.

>>> from dgmlang.ir import BuiltinCall, Draw, Lit, ModelIR, Ref, Variable
>>> ir = ModelIR("m", (Variable("y", "input", (), "int"), Variable("x", "data", (3,))),
...              (Draw("x", "Normal", (("loc", BuiltinCall("onehot", (Ref("y", ()), Lit(3, (), True)), (3,))),)),))
>>> facts = ModelFacts(ir)
>>> facts.local_order, facts.onehot_classes
(['x'], {'y': 3})
>>> [(u.kind, u.limit) for u in facts.integer_uses["y"]]
[('onehot', 3)]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import networkx as nx

from dgmlang import ir as irm
from dgmlang.distributions import DISTRIBUTIONS
from dgmlang.graph import build_graph, topological_order
from dgmlang.source import Span

__all__ = ["IntegerUse", "ModelFacts"]


@dataclass(frozen=True)
class IntegerUse:
    """A place that reads an integer value and bounds it to ``0..limit-1``: ``onehot(y, K)``
    (`kind` "onehot"), an index into a dimension of size `limit` (`kind` "index"), or the
    length of a sequence of ``limit - 1`` steps (`kind` "length")."""

    kind: str
    limit: int
    span: Span | None = None


class ModelFacts:
    """What the compiled layer needs to know about a checked model, each fact computed once.

    Attributes: `ir`, `graph` (the DAG of `dgmlang.graph`), `order` (topological),
    `global_order`, `local_order` (data and latents), `data_order`, `variables`, `draws`,
    `lets` (by name), `recurrent_lets`, `onehot_classes` (K of the first ``onehot(name, K)`` per name) and
    `integer_uses` (every bounding use per name).
    """

    def __init__(self, ir: irm.ModelIR, graph: nx.DiGraph | None = None):
        self.ir = ir
        self.graph = graph if graph is not None else build_graph(ir)
        self.variables = {v.name: v for v in ir.variables}
        self.draws = {d.target: d for d in ir.draws}
        self.lets = {let.name: let.value for let in ir.lets if not let.steps}
        #: recurrent lets (`let h[t] = ...`) by name, served by `dgmlang.recurrence`
        self.recurrent_lets = {let.name: let for let in ir.lets if let.steps}
        self.consts = frozenset(v.name for v in ir.variables if v.role == "const")
        self.order = topological_order(self.graph)
        roles = {v.name: v.role for v in ir.variables}
        self.global_order = [n for n in self.order if roles[n] == "global"]
        self.local_order = [n for n in self.order if roles[n] in ("data", "latent")]
        self.data_order = [n for n in self.order if roles[n] == "data"]
        self._constant: dict[int, tuple[irm.IRExpr, bool]] = {}
        self.onehot_classes: dict[str, int] = {}
        self.integer_uses: dict[str, list[IntegerUse]] = {}
        self._collect_integer_uses()

    # ------------------------------------------------------------------ names read

    def let_reads(self, name: str) -> frozenset[str]:
        """Every name the let `name` reads, through other lets too (resolved once, by
        `dgmlang.graph.build_graph`)."""
        return self.graph.graph["let_reads"][name]

    def reads(self, exprs: Iterable[irm.IRExpr]) -> set[str]:
        """Every name `exprs` read, directly or through lets."""
        names: set[str] = set()
        for e in irm.walk(exprs):
            if isinstance(e, irm.StepRef):
                names.add(e.name)
            elif isinstance(e, irm.Ref):
                names.add(e.name)
                if e.name in self.lets:
                    names |= self.let_reads(e.name)
        return names

    def is_constant(self, expr: irm.IRExpr) -> bool:
        """Whether `expr` reads nothing but literals and consts (its value never changes)."""
        cached = self._constant.get(id(expr))
        if cached is not None and cached[0] is expr:  # kept with the expression: ids are reused
            return cached[1]
        constant = not any(isinstance(e, irm.NetCall) for e in irm.walk([expr])) and all(
            name in self.consts or (name in self.lets and not any(
                isinstance(e, irm.NetCall) for e in irm.walk([self.lets[name]])))
            for name in self.reads([expr])
        )
        self._constant[id(expr)] = (expr, constant)
        return constant

    # ------------------------------------------------------------------ discrete sites

    def enumerable(self, name: str) -> bool:
        """Whether the draw of `name` has finite discrete support (it can be summed out)."""
        spec = DISTRIBUTIONS[self.draws[name].dist]
        return spec.discrete and spec.finite

    def classes(self, name: str) -> int | None:
        """How many values the finite discrete site `name` takes (Categorical K, Bernoulli 2,
        Binomial with a literal count n + 1); None when that is not fixed by the model text."""
        draw = self.draws[name]
        if draw.steps:  # a sequence: one step's classes (every run agrees, the checker says)
            draw = draw.steps[0].draw
        if draw.dist == "Categorical":
            if draw.packed is not None:
                return draw.packed_params[0].shape[-1]
            expr = draw.param("logits") or draw.param("probs")
            return expr.shape[-1]
        if draw.dist == "Bernoulli":
            return 2
        if draw.dist == "Binomial":
            count = draw.param("total_count")
            if count is None:
                return 2
            if isinstance(count, irm.Lit) and not isinstance(count.value, tuple):
                return int(count.value) + 1
        return None

    # ------------------------------------------------------------------ integer uses

    def _collect_integer_uses(self) -> None:
        for draw in self.ir.draws:
            for run in draw.steps:
                if run.length is not None:  # a sequence's length: 0..T steps
                    steps = self.variables[draw.target].shape[0]
                    self.integer_uses.setdefault(run.length, []).append(IntegerUse("length", steps + 1, draw.span))
        exprs = [e for d in self.ir.draws for e in d.expressions] + list(self.lets.values()) + [
            run.value for let in self.recurrent_lets.values() for run in let.steps]
        for e in irm.walk(exprs):
            if (isinstance(e, irm.BuiltinCall) and e.func == "onehot"
                    and isinstance(e.args[0], irm.Ref) and isinstance(e.args[1], irm.Lit)):
                name, k = e.args[0].name, int(e.args[1].value)
                self.onehot_classes.setdefault(name, k)
                self.integer_uses.setdefault(name, []).append(IntegerUse("onehot", k, e.span))
            elif isinstance(e, irm.IndexExpr):
                shape = e.value.shape
                for position, item in enumerate(e.items):
                    if isinstance(item, irm.Ref) and position < len(shape):
                        self.integer_uses.setdefault(item.name, []).append(
                            IntegerUse("index", shape[position], item.span))
