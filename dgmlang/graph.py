"""The model as a graph of random variables: `build_graph(ir)` and `topological_order(graph)`.

Nodes are the `data`, `latent` and `global` variables and the `input`s, in declaration
order (params and consts are fixed or learned points, not nodes). Each node carries

* `role` -- "data", "input", "latent" or "global";
* `shape` -- the event shape, a tuple of ints;
* `dist` -- the distribution's name, None for an input;
* `discrete`, `finite` -- from the distribution registry (False for an input);
* `span` -- where the variable is declared;
* `steps` -- for a sequence (a variable drawn step by step, `s[t] ~ ...`), its number of
  steps T (its leading dimension); absent otherwise.

A sequence is one node, all its steps together: its edges are the union of what its steps
read (`s[t - 1]` of another sequence is an edge from it; a sequence reading its own earlier
steps adds no edge), so the graph stays a DAG of whole variables.

There is an edge parent -> child whenever the child's distribution arguments (a network
that feeds all of them included) refer to the parent, directly or through `let`s. The
graph's attribute ``graph.graph["let_reads"]`` keeps, per `let`, every name it reads
through other lets (resolved once here; `dgmlang.facts` serves it).

>>> from dgmlang.ir import Draw, ModelIR, Ref, Variable
>>> variables = (Variable("x", "data", (4,)), Variable("z2", "latent", (2,)),
...              Variable("z1", "latent", (3,)))
>>> ir = ModelIR("hvae", variables, draws=(
...     Draw("z2", "Normal", ()), Draw("z1", "Normal", (("loc", Ref("z2", (2,))),)),
...     Draw("x", "Normal", (("loc", Ref("z1", (3,))),))))
>>> g = build_graph(ir)
>>> sorted(g.edges), g.nodes["z1"]["role"], g.nodes["z1"]["shape"], g.nodes["z1"]["dist"]
([('z1', 'x'), ('z2', 'z1')], 'latent', (3,), 'Normal')
>>> topological_order(g)
['z2', 'z1', 'x']
>>> cyclic = ModelIR("loop", variables, draws=(
...     Draw("z2", "Normal", (("loc", Ref("z1", (3,))),)), ir.draws[1], ir.draws[2]))
>>> try:
...     build_graph(cyclic)
... except DGMModelError as err:
...     print(err.message)
cycle among random variables: z2 -> z1 -> z2
"""
from __future__ import annotations

from typing import Iterator

import networkx as nx

import dgmlang.ir as irm
from dgmlang.distributions import DISTRIBUTIONS
from dgmlang.errors import DGMModelError, DGMNameError
from dgmlang.parse import paused_gc

_NODE_ROLES = ("data", "input", "latent", "global")


def build_graph(ir: irm.ModelIR) -> nx.DiGraph:
    """The DAG of `ir`'s random variables and inputs; a cycle raises `DGMModelError` naming
    it in order, pointing at the draw of its first-declared variable."""
    with paused_gc():
        return _build_graph(ir)


def _build_graph(ir: irm.ModelIR) -> nx.DiGraph:
    graph = nx.DiGraph(model=ir.name)
    for var in ir.variables:
        if var.role in _NODE_ROLES:
            graph.add_node(
                var.name, role=var.role, shape=var.shape, dist=None,
                discrete=False, finite=False, span=var.span,
            )
    roles = {var.name: var.role for var in ir.variables}
    let_reads = graph.graph["let_reads"] = _let_references(ir, roles)
    refs_of_let = {name: frozenset(n for n in reads if n in graph)
                   for name, reads in let_reads.items()}
    draws = {}
    for draw in ir.draws:
        if roles.get(draw.target) not in irm.RANDOM_ROLES:
            continue  # a draw on an input/param/const is the checker's error to report
        draws[draw.target] = draw
        spec = DISTRIBUTIONS.get(draw.dist)
        graph.add_node(
            draw.target,
            dist=draw.dist,
            discrete=bool(spec and spec.discrete),
            finite=bool(spec and spec.finite),
        )
        parents: set[str] = set()
        if draw.steps:
            graph.add_node(draw.target, steps=graph.nodes[draw.target]["shape"][0])
            parents |= {run.length for run in draw.steps if run.length is not None}
        for ref in _refs(draw.expressions):
            if isinstance(ref, irm.StepRef) and ref.name == draw.target:  # its own earlier steps
                continue
            if ref.name in refs_of_let:
                parents |= refs_of_let[ref.name]
            elif ref.name in graph:
                parents.add(ref.name)
            elif ref.name not in roles:
                raise DGMNameError(f"unknown name '{ref.name}'", ref.span)
        if draw.steps:
            parents.discard(draw.target)  # a sequence reading its own past through a recurrent let
        graph.add_edges_from((p, draw.target) for p in parents)
    cycle = _find_cycle(graph)
    if cycle:
        draw = draws.get(cycle[0])
        raise _cycle_error(cycle, draw.span if draw else graph.nodes[cycle[0]]["span"])
    return graph


def topological_order(graph: nx.DiGraph) -> list[str]:
    """Parents before children, ties broken by declaration (node) order.

    >>> g = nx.DiGraph([("b", "x"), ("a", "x")])
    >>> topological_order(g)
    ['b', 'a', 'x']
    """
    cycle = _find_cycle(graph)
    if cycle:
        raise _cycle_error(cycle, graph.nodes[cycle[0]].get("span"))
    index = {n: i for i, n in enumerate(graph.nodes)}
    return list(nx.lexicographical_topological_sort(graph, key=index.__getitem__))


# ---------------------------------------------------------------- internals


def _find_cycle(graph: nx.DiGraph) -> list[str] | None:
    """A directed cycle's nodes in edge order, starting at its first-declared node."""
    if nx.is_directed_acyclic_graph(graph):
        return None
    cycle = [u for u, _ in nx.find_cycle(graph)]
    index = {n: i for i, n in enumerate(graph.nodes)}
    first = min(range(len(cycle)), key=lambda i: index[cycle[i]])
    return cycle[first:] + cycle[:first]


def _cycle_error(cycle: list[str], span) -> DGMModelError:
    return DGMModelError(
        "cycle among random variables: " + " -> ".join([*cycle, cycle[0]]),
        span,
        hint="a variable's distribution may not depend on itself, directly or through others",
    )


def _refs(exprs: list[irm.IRExpr]) -> Iterator[irm.Ref | irm.StepRef]:
    """Every `Ref` and `StepRef` inside `exprs`."""
    return (e for e in irm.walk(exprs) if isinstance(e, (irm.Ref, irm.StepRef)))


def _let_references(ir: irm.ModelIR, roles: dict[str, str]) -> dict[str, frozenset[str]]:
    """For every `let`, every name its value reads (variables, params, consts and lets),
    through other lets too.

    Each let is resolved once (memoized, iteratively: a chain of thousands of lets must not
    hit the recursion limit)."""
    lets = {let.name: let for let in ir.lets}
    # a recurrent let reads what all its steps read, less its own earlier steps
    direct = {name: [r for r in _refs([run.value for run in let.steps] or [let.value])
                     if not (let.steps and r.name == name)] for name, let in lets.items()}
    resolved: dict[str, frozenset[str]] = {}
    for root in lets:
        if root in resolved:
            continue
        on_path = {root}
        stack = [(root, iter(direct[root]))]
        while stack:
            name, refs = stack[-1]
            for r in refs:  # resumes where it stopped: each reference is looked at once
                if r.name in lets and r.name not in resolved:
                    if r.name in on_path:
                        raise DGMModelError(
                            f"let '{name}' depends on itself through '{r.name}'", lets[name].span
                        )
                    on_path.add(r.name)
                    stack.append((r.name, iter(direct[r.name])))
                    break
            else:
                names: set[str] = set()
                for r in direct[name]:
                    if r.name in lets:
                        names |= resolved[r.name]
                    elif r.name not in roles:
                        raise DGMNameError(f"unknown name '{r.name}'", r.span)
                    names.add(r.name)
                resolved[name] = frozenset(names)
                on_path.discard(name)
                stack.pop()
    return resolved
