"""The guide's structure, derived from the model graph by faithful inversion.

`invert(graph)` runs NaMI (Webb et al., NeurIPS 2018, "Faithful Inversion of Generative
Models for Effective Amortized Inference") on a graph from `dgmlang.graph.build_graph` and
says, for every latent, which values its guide conditions on and in what order the guide
samples. `naive_inverse(graph)` gives the naive reversal (each latent sees its children),
which is not faithful in general; it exists for comparison.

The rules (docs/guides.md has the worked examples):

* ``global``s come first, in declaration order, with kind "global" and no inputs. The
  per-data-point latents are then inverted with globals, data and inputs treated as given.
* The moral graph is eliminated latent by latent. The frontier holds the latents whose latent
  parents are all eliminated, starting from the latent roots; the next latent eliminated is
  the frontier latent adding the fewest fill-in edges (ties: continuous before discrete, then
  declaration order), its remaining neighbours are connected pairwise and become its guide
  inputs. The guide samples in reverse order of elimination.
* A fill-in edge between two given nodes is not added or counted: both are always known, so
  such an edge never changes any guide (and would cost quadratic work on wide data).
* A finite discrete latent (Bernoulli, Categorical, Binomial) is summed out in the model
  ("enumerated_in_model", no inputs, listed after every sampled latent, in declaration
  order) unless a continuous latent's guide needs its value, directly or through discrete
  latents that are themselves enumerated in the guide; then it gets an amortized
  q(y | inputs) that the guide enumerates ("enumerated_in_guide").

"Declaration order" is the order of the graph's nodes; each step's inputs are listed in it.

>>> import networkx as nx
>>> g = nx.DiGraph()
>>> g.add_nodes_from(["a", "b", "c"], role="latent")
>>> g.add_nodes_from(["d", "e"], role="data")
>>> g.add_edges_from([("a", "b"), ("a", "c"), ("b", "d"), ("c", "e")])
>>> invert(g).as_list()
[('c', ['d', 'e']), ('b', ['c', 'd']), ('a', ['b', 'c'])]
>>> naive_inverse(g).as_list()
[('b', ['d']), ('c', ['e']), ('a', ['b', 'c'])]
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Iterable

import networkx as nx

from dgmlang.distributions import DISTRIBUTIONS
from dgmlang.errors import DGMGuideError, DGMUsageError
from dgmlang.graph import topological_order
from dgmlang.parse import paused_gc

GLOBAL = "global"
AMORTIZED = "amortized"
ENUMERATED_IN_GUIDE = "enumerated_in_guide"
ENUMERATED_IN_MODEL = "enumerated_in_model"
IMPUTED = "imputed"
#: A continuous latent chain (a sequence drawn step by step): one guide step for all its
#: steps, q(z[t] | z[t - 1], data[t:]) with weights shared over t (`chain_description`).
STRUCTURED_CHAIN = "structured_chain"
KINDS = (GLOBAL, AMORTIZED, ENUMERATED_IN_GUIDE, ENUMERATED_IN_MODEL, IMPUTED, STRUCTURED_CHAIN)

NAMI = "nami"
MIN_FILL = "minfill"
#: The elimination orders `invert` offers. "nami": Webb et al.'s natural order, a latent
#: becomes eligible once its latent parents are eliminated (the guide samples leaves-first),
#: fewest fill-in edges first. "minfill": every latent is eligible from the start, fewest
#: new latent-latent edges first, then fewest new latent-given edges (a binary tree observed
#: at its leaves is eliminated from the leaves up: O(n log n) guide inputs instead of n²/2).
ORDERS = (NAMI, MIN_FILL)

_GIVEN_ROLES = ("data", "input", "global")
_ROLES = ("latent", *_GIVEN_ROLES)


@dataclass(frozen=True)
class GuideStep:
    """One latent of the guide: what it conditions on (`inputs`) and how it is handled (`kind`).

    >>> GuideStep("z", ("x",), "amortized")
    GuideStep(latent='z', inputs=('x',), kind='amortized')
    """

    latent: str
    inputs: tuple[str, ...]
    kind: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown guide step kind {self.kind!r}; expected one of {KINDS}")


@dataclass(frozen=True)
class GuidePlan:
    """The guide's steps in sampling order: globals, sampled local latents, then the latents
    summed out in the model.

    >>> plan = GuidePlan((GuideStep("w", (), "global"), GuideStep("c", (), "enumerated_in_model")))
    >>> plan.as_list()
    [('w', []), ('c', 'enumerated in model')]
    >>> plan.step("c").kind
    'enumerated_in_model'
    """

    steps: tuple[GuideStep, ...]
    #: "label steps": for each finite discrete ``data`` variable (Categorical or Bernoulli)
    #: that a continuous latent's guide reads, the step it would have as a latent (kind
    #: "enumerated_in_guide", inputs given values only): its q(label | inputs) is what fit
    #: uses on rows whose label is missing (semi-supervised learning, see `label_steps`).
    labels: tuple[GuideStep, ...] = ()
    #: "imputation steps": for each continuous ``data`` variable with children whose
    #: distribution is elementwise, the step of q(its missing entries | inputs) (kind
    #: "imputed", inputs given values only, the variable itself first): rows where some of
    #: its entries are missing treat them as latents (see `imputation_steps`).
    imputations: tuple[GuideStep, ...] = ()
    #: the elimination order the plan was derived with (`ORDERS`): "nami" or "minfill"
    order: str = "nami"

    def as_list(self) -> list[tuple[str, list[str] | str]]:
        """`(latent, [inputs])` per step; `(name, "enumerated in model")` for summed-out ones."""
        return [
            (s.latent, "enumerated in model")
            if s.kind == ENUMERATED_IN_MODEL
            else (s.latent, chain_description(s)) if s.kind == STRUCTURED_CHAIN
            else (s.latent, list(s.inputs))
            for s in self.steps
        ]

    def label(self, name: str) -> GuideStep | None:
        """The label step of data variable `name`, or None when it is no label."""
        for s in self.labels:
            if s.latent == name:
                return s
        return None

    def imputation(self, name: str) -> GuideStep | None:
        """The imputation step of data variable `name`, or None when it has none."""
        for s in self.imputations:
            if s.latent == name:
                return s
        return None

    def step(self, latent: str) -> GuideStep:
        """The step of `latent` (a KeyError names it when the plan has none)."""
        for s in self.steps:
            if s.latent == latent:
                return s
        raise KeyError(f"no guide step for {latent!r}")


def chain_description(step: GuideStep) -> str:
    """What the guide of a continuous latent chain reads, as the plan shows it: the step
    before, and every data sequence from the current step on, summarized by a recurrent
    network run backward in time (its inputs' other names, lengths, are read to mask).

    >>> chain_description(GuideStep("z", ("n", "x"), STRUCTURED_CHAIN))
    'structured chain: q(z[t] | z[t-1], x[t:]) via backward rnn, masked past n'
    """
    data, lengths = step.inputs[len(step.inputs) - 1:], step.inputs[:len(step.inputs) - 1]
    read = ", ".join(f"{name}[t:]" for name in data)
    text = f"structured chain: q({step.latent}[t] | {step.latent}[t-1], {read}) via backward rnn"
    return text + (f", masked past {', '.join(lengths)}" if lengths else "")


def invert(graph: nx.DiGraph, order: str = "nami") -> GuidePlan:
    """The faithful inverse of a model graph, as the guide's plan, eliminating the latents in
    `order`: "nami" (NaMI's natural order, from the roots; the default) or "minfill" (any
    latent, fewest new latent-latent edges first; see `ORDERS`). Both are faithful.

    Every node needs a `role` (data, input, latent or global); `discrete` and `finite`
    default to False, `dist` and `span` are used in error messages.

    >>> import networkx as nx
    >>> g = nx.DiGraph()
    >>> g.add_node("z", role="latent")
    >>> g.add_node("x", role="data")
    >>> g.add_node("y", role="latent", discrete=True, finite=True)
    >>> g.add_edges_from([("z", "x"), ("y", "x")])
    >>> invert(g).as_list()
    [('y', ['x']), ('z', ['x', 'y'])]
    """
    check_order(order)
    with paused_gc():
        nodes = _Nodes(graph)
        if not nx.is_directed_acyclic_graph(graph):
            topological_order(graph)  # raises the DGMModelError that names the cycle
        elimination = (_eliminate(graph, nodes) if order == NAMI
                       else _eliminate_min_fill(graph, nodes))
        sampled = [(latent, tuple(inputs)) for latent, inputs in reversed(elimination)]
        plan = _plan(nodes, sampled)
        labels = label_steps(graph, nodes)
        imputations = imputation_steps(graph, nodes)
        return GuidePlan(plan.steps, labels, imputations, order)


def check_order(order) -> None:
    """Refuse an elimination order `invert` does not offer (a `DGMUsageError`).

    >>> check_order("minfill")
    """
    if order not in ORDERS:
        raise DGMUsageError(f"unknown guide order {order!r}",
                            hint="guide_order is one of " + ", ".join(repr(o) for o in ORDERS))


#: Distributions a label (a data variable whose missing entries become latents) may have.
LABEL_DISTS = ("Categorical", "Bernoulli")


def label_steps(graph: nx.DiGraph, nodes: "_Nodes | None" = None) -> tuple[GuideStep, ...]:
    """The label steps of a model graph: every ``data`` node with a Categorical or Bernoulli
    distribution and children is inverted once more as if it were a latent; when that makes
    it a discrete latent enumerated in the guide whose inputs are all given (data, inputs,
    globals), its step is a label step. Rows where such a variable is missing then treat it
    as that latent (M2 of Kingma et al. 2014; docs/inference.md, "Semi-supervised learning").

    >>> import networkx as nx
    >>> g = nx.DiGraph([("z", "x"), ("y", "x")])
    >>> nx.set_node_attributes(g, {"z": "latent", "x": "data", "y": "data"}, "role")
    >>> nx.set_node_attributes(g, {"y": "Categorical"}, "dist")
    >>> nx.set_node_attributes(g, {"y": True}, "discrete")
    >>> nx.set_node_attributes(g, {"y": True}, "finite")
    >>> label_steps(g)
    (GuideStep(latent='y', inputs=('x',), kind='enumerated_in_guide'),)
    """
    nodes = nodes if nodes is not None else _Nodes(graph)
    candidates = [n for n in nodes.index
                  if nodes.role[n] == "data" and nodes.discrete[n] and nodes.finite[n]
                  and nodes.attrs[n].get("dist") in LABEL_DISTS
                  and any(True for _ in graph.successors(n))]
    if not candidates or not any(nodes.role[n] == "latent" for n in nodes.index):
        return ()

    def touches_a_latent(name: str) -> bool:
        """Whether a latent is a neighbour of `name` in the moral graph (parent, child or a
        child's other parent): fill-in edges only join neighbours of eliminated latents,
        so without one no latent's guide can come to read it (and no second inversion)."""
        children = list(graph.successors(name))
        near = set(graph.predecessors(name)) | set(children)
        for child in children:
            near |= set(graph.predecessors(child))
        return any(nodes.role[n] == "latent" for n in near)

    candidates = [n for n in candidates if touches_a_latent(n)]
    steps = []
    for name in candidates:
        as_latent, inputs_of = _inverted_as_latent(graph, nodes, name)
        if name not in _enumerated_in_guide(as_latent, inputs_of):
            continue
        inputs = inputs_of[name]
        if all(nodes.role[i] != "latent" for i in inputs):
            steps.append(GuideStep(name, inputs, ENUMERATED_IN_GUIDE))
    return tuple(steps)


def _inverted_as_latent(graph: nx.DiGraph, nodes: "_Nodes", name: str):
    """The graph's nodes with data node `name` made a latent, and each latent's inverse
    parents in that graph's elimination (by latent)."""
    roles = dict(nodes.role)
    roles[name] = "latent"
    relabelled = graph.copy()
    nx.set_node_attributes(relabelled, roles, "role")
    as_latent = _Nodes(relabelled)
    return as_latent, {latent: tuple(inputs) for latent, inputs in _eliminate(relabelled, as_latent)}


def imputable(graph: nx.DiGraph, name: str) -> bool:
    """Whether data node `name` gets an imputation step: continuous, with children, and an
    elementwise distribution (a Dirichlet row is one value: no q of part of it is derived).

    >>> g = nx.DiGraph([("a", "b")])
    >>> nx.set_node_attributes(g, {"a": "data", "b": "data"}, "role")
    >>> nx.set_node_attributes(g, {"a": "Normal", "b": "Normal"}, "dist")
    >>> imputable(g, "a"), imputable(g, "b")
    (True, False)
    """
    attrs = graph.nodes[name]
    dist = DISTRIBUTIONS.get(attrs.get("dist"))
    return (attrs.get("role") == "data" and not attrs.get("discrete", False) and dist is not None
            and not dist.event_rank and any(True for _ in graph.successors(name)))


def imputation_steps(graph: nx.DiGraph, nodes: "_Nodes | None" = None) -> tuple[GuideStep, ...]:
    """The imputation steps of a model graph: every continuous ``data`` node with children
    whose distribution is elementwise (its event is one number) is inverted once more as if
    it were a latent, and its step's inputs are made given values: a latent among them is
    replaced by that latent's own inputs in the same inversion, recursively (q of the
    missing entries integrates over it). The variable itself comes first: its observed
    entries are read, the missing ones filled as the guide fills any. Rows where its
    entries are missing sample them from this step before every other local step, which
    then read them filled (docs/missing-data.md, "Missing entries with children").

    >>> import networkx as nx
    >>> g = nx.DiGraph([("z", "x1"), ("x1", "x2")])
    >>> nx.set_node_attributes(g, {"z": "latent", "x1": "data", "x2": "data"}, "role")
    >>> nx.set_node_attributes(g, {"z": "Normal", "x1": "Normal", "x2": "Normal"}, "dist")
    >>> imputation_steps(g)
    (GuideStep(latent='x1', inputs=('x1', 'x2'), kind='imputed'),)
    """
    nodes = nodes if nodes is not None else _Nodes(graph)
    candidates = [n for n in nodes.index if imputable(graph, n)]
    steps = []
    for name in candidates:
        as_latent, inputs_of = _inverted_as_latent(graph, nodes, name)
        given, seen, todo = {name}, {name}, list(inputs_of[name])
        while todo:
            item = todo.pop()
            if item in seen:
                continue
            seen.add(item)
            if as_latent.role[item] == "latent":
                todo.extend(inputs_of.get(item, ()))
            else:
                given.add(item)
        rest = sorted(given - {name}, key=nodes.index.__getitem__)
        steps.append(GuideStep(name, (name, *rest), IMPUTED))
    return tuple(steps)


def naive_inverse(graph: nx.DiGraph) -> GuidePlan:
    """The naive reversal: each latent's guide sees the latent's children in the model, and
    the guide samples children before parents (ties in declaration order). Not faithful in
    general; see `invert`.

    >>> import networkx as nx
    >>> g = nx.DiGraph([("z2", "z1"), ("z1", "x")])
    >>> nx.set_node_attributes(g, {"z2": "latent", "z1": "latent", "x": "data"}, "role")
    >>> naive_inverse(g).as_list()
    [('z1', ['x']), ('z2', ['z1'])]
    """
    nodes = _Nodes(graph)
    if not nx.is_directed_acyclic_graph(graph):
        topological_order(graph)  # raises the DGMModelError that names the cycle
    order = nx.lexicographical_topological_sort(graph.reverse(copy=False), key=nodes.index.get)
    sampled = [
        (n, tuple(sorted(graph.successors(n), key=nodes.index.get)))
        for n in order
        if nodes.role[n] == "latent"
    ]
    return _plan(nodes, sampled)


# ---------------------------------------------------------------- internals


class _Nodes:
    """Per-node facts read once from the graph's attributes."""

    def __init__(self, graph: nx.DiGraph):
        self.index: dict[str, int] = {}
        self.role: dict[str, str] = {}
        self.discrete: dict[str, bool] = {}
        self.finite: dict[str, bool] = {}
        self.attrs = graph.nodes
        for i, (name, attrs) in enumerate(graph.nodes(data=True)):
            role = attrs.get("role")
            if role not in _ROLES:
                raise DGMUsageError(
                    f"graph node {name!r} has role {role!r}; expected one of {', '.join(_ROLES)}"
                )
            self.index[name] = i
            self.role[name] = role
            self.discrete[name] = bool(attrs.get("discrete", False))
            self.finite[name] = bool(attrs.get("finite", False))
        self.globals = [n for n in self.index if self.role[n] == "global"]
        self.latents = [n for n in self.index if self.role[n] == "latent"]


def _eliminate(graph: nx.DiGraph, nodes: _Nodes) -> list[tuple[str, list[str]]]:
    """NaMI's elimination on the moral graph: `(latent, its inverse parents)` in the order
    eliminated, the parents in declaration order.

    Neighbourhoods are bitsets (Python ints indexed by declaration order), so set algebra
    and counting run in C. The frontier is a heap keyed by (fill-in, discrete, index) with
    versioned entries; after an elimination only the frontier latents whose fill-in changed
    are re-keyed, and their new fill-in is derived from the change rather than recounted:

    * a neighbour s of the eliminated latent now sees the clique N, where no pair is missing,
      so only pairs touching its private neighbours B = adj(s) - N can be missing;
    * a frontier latent outside N loses exactly the fill edges added among its neighbours
      in N.

    Dense inverses (a tree's frontier becomes one big clique) thus cost O(|N|) bitset
    operations per step instead of O(|N|^2)."""
    names, latent, latent_mask, adj = _moral_bitsets(graph, nodes)
    position = nodes.index

    def partners(b: int, others: int) -> int:
        """How many nodes of `others` (not holding b) form a relevant pair with b."""
        return others.bit_count() if latent[b] else (others & latent_mask).bit_count()

    def missing_within(group: int) -> int:
        """Relevant pairs inside `group` that are not edges."""
        total = 0
        for b in _bits(group):
            rest = group & ~(1 << b)
            total += partners(b, rest) - (adj[b] & rest).bit_count()
        return total // 2

    def missing_beside(private: int, clique: int) -> int:
        """Relevant non-adjacent pairs between `private` and `clique` minus s, for a latent s
        in `clique` adjacent to all of `private`: s would be counted once on each side of
        the subtraction, so it needs no removing."""
        return sum(partners(b, clique) - (adj[b] & clique).bit_count() for b in _bits(private))

    fill: dict[int, int] = {}
    version: dict[int, int] = {}
    heap: list[tuple[int, bool, int, int]] = []
    frontier_mask = 0

    def push(i: int) -> None:
        version[i] = version.get(i, 0) + 1
        heapq.heappush(heap, (fill[i], nodes.discrete[names[i]], i, version[i]))

    latent_parents_left = {
        position[n]: sum(1 for p in graph.predecessors(n) if nodes.role[p] == "latent")
        for n in nodes.latents
    }
    for i, left in latent_parents_left.items():
        if left == 0:
            frontier_mask |= 1 << i
            fill[i] = missing_within(adj[i])
            push(i)

    elimination: list[tuple[str, list[str]]] = []
    while heap:
        *_, v, entry_version = heapq.heappop(heap)
        if entry_version != version[v] or not frontier_mask >> v & 1:
            continue
        v_bit = 1 << v
        clique = adj[v]
        members = _bits(clique)
        reach = 0
        for u in members:
            reach |= adj[u]
            adj[u] &= ~v_bit
        adj[v] = 0
        latent_mask &= ~v_bit
        frontier_mask &= ~v_bit
        # A frontier latent outside the clique loses the fill edges that are about to be
        # added among its clique neighbours: count them before the clique is filled in.
        drops = {}
        for s in _bits(reach & frontier_mask & ~clique):
            seen = adj[s] & clique
            if seen & (seen - 1):
                drops[s] = missing_within(seen)
        _join(adj, members, clique, latent, latent_mask)
        elimination.append((names[v], [names[u] for u in members]))

        for s in _bits(clique & frontier_mask):
            private = adj[s] & ~clique
            value = missing_within(private) + missing_beside(private, clique) if private else 0
            if value != fill[s]:
                fill[s] = value
                push(s)
        for s, drop in drops.items():
            if drop:
                fill[s] -= drop
                push(s)
        for child in graph.successors(names[v]):
            c = position[child]
            if latent[c]:
                latent_parents_left[c] -= 1
                if latent_parents_left[c] == 0:
                    frontier_mask |= 1 << c
                    fill[c] = missing_within(adj[c])
                    push(c)
    return elimination


def _moral_bitsets(graph: nx.DiGraph, nodes: _Nodes) -> tuple[list[str], list[bool], int, list[int]]:
    """The moral graph as bitsets (Python ints indexed by declaration order): the node
    names, which are latents, the latents' mask and each node's neighbours. An edge between
    two given nodes is left out: both are always known, so it never changes any guide."""
    names = list(nodes.index)
    latent = [nodes.role[name] == "latent" for name in names]
    position = nodes.index
    latent_mask = 0
    for i, is_latent in enumerate(latent):
        if is_latent:
            latent_mask |= 1 << i
    adj = [0] * len(names)
    skeleton = nx.DiGraph(graph.edges)  # moral_graph deep-copies attributes; none needed
    skeleton.add_nodes_from(graph)
    for a, b in nx.moral_graph(skeleton).edges():
        i, j = position[a], position[b]
        if i != j and (latent[i] or latent[j]):
            adj[i] |= 1 << j
            adj[j] |= 1 << i
    return names, latent, latent_mask, adj


def _join(adj: list[int], members: list[int], clique: int, latent: list[bool], latent_mask: int) -> None:
    """Connect the eliminated latent's neighbours pairwise (its clique), leaving out edges
    between two given nodes, as `_moral_bitsets` does."""
    for u in members:
        new = clique & ~(1 << u)
        adj[u] |= new if latent[u] else new & latent_mask


def _eliminate_min_fill(graph: nx.DiGraph, nodes: _Nodes) -> list[tuple[str, list[str]]]:
    """Min-fill elimination over the latents: `(latent, its inverse parents)` in the order
    eliminated. Every latent is eligible from the start; the next one eliminated adds the
    fewest edges between two latents among its neighbours, then the fewest between a latent
    and a given node (edges between given nodes are free), ties continuous before discrete,
    then declaration order. After an elimination the key of every latent whose neighbourhood
    changed (a neighbour of the eliminated latent's neighbours) is recounted."""
    names, latent, latent_mask, adj = _moral_bitsets(graph, nodes)

    def fill_of(s: int) -> tuple[int, int]:
        group = adj[s]
        latents, given = group & latent_mask, group & ~latent_mask
        between_latents = between_kinds = 0
        for b in _bits(latents):
            between_latents += (latents & ~(1 << b) & ~adj[b]).bit_count()
            between_kinds += (given & ~adj[b]).bit_count()
        return between_latents // 2, between_kinds

    fill: dict[int, tuple[int, int]] = {}
    version: dict[int, int] = {}
    heap: list[tuple[int, int, bool, int, int]] = []

    def push(i: int) -> None:
        version[i] = version.get(i, 0) + 1
        heapq.heappush(heap, (*fill[i], nodes.discrete[names[i]], i, version[i]))

    for i in _bits(latent_mask):
        fill[i] = fill_of(i)
        push(i)
    elimination: list[tuple[str, list[str]]] = []
    while heap:
        *_, v, entry_version = heapq.heappop(heap)
        if entry_version != version[v] or not latent_mask >> v & 1:
            continue
        v_bit = 1 << v
        clique = adj[v]
        members = _bits(clique)
        reach = clique
        for u in members:
            reach |= adj[u]
            adj[u] &= ~v_bit
        adj[v] = 0
        latent_mask &= ~v_bit
        _join(adj, members, clique, latent, latent_mask)
        elimination.append((names[v], [names[u] for u in members]))
        for s in _bits(reach & latent_mask):
            value = fill_of(s)
            if value != fill[s]:
                fill[s] = value
                push(s)
    return elimination


def _bits(mask: int) -> list[int]:
    """The positions of the set bits of `mask`, lowest first.

    >>> _bits(0b10110)
    [1, 2, 4]
    """
    if mask.bit_count() < 16:
        positions = []
        while mask:
            low = mask & -mask
            positions.append(low.bit_length() - 1)
            mask ^= low
        return positions
    # Many bits: one pass over the binary text (lowest bit first) beats peeling them off.
    text = bin(mask)[:1:-1]
    positions = []
    i = text.find("1")
    while i >= 0:
        positions.append(i)
        i = text.find("1", i + 1)
    return positions


def _plan(nodes: _Nodes, sampled: Iterable[tuple[str, tuple[str, ...]]]) -> GuidePlan:
    """Globals, then `sampled` (latent, inputs) with each discrete latent's kind decided."""
    sampled = list(sampled)
    for latent, _ in sampled:
        if nodes.discrete[latent] and not nodes.finite[latent]:
            dist = nodes.attrs[latent].get("dist") or "its distribution"
            raise DGMGuideError(
                f"latent '{latent}' is discrete with unbounded support ({dist}); "
                "a derived guide can only sum out Bernoulli, Categorical and Binomial latents",
                nodes.attrs[latent].get("span"),
                hint="make it 'data', or give it a finite distribution",
            )
    inputs_of = dict(sampled)
    in_guide = _enumerated_in_guide(nodes, inputs_of)
    steps = [GuideStep(g, (), GLOBAL) for g in nodes.globals]
    summed_out = []
    for latent, inputs in sampled:
        if not nodes.discrete[latent]:
            chain = nodes.attrs[latent].get("steps") is not None  # a continuous latent chain
            steps.append(GuideStep(latent, _chain_inputs(nodes, inputs) if chain else inputs,
                                   STRUCTURED_CHAIN if chain else AMORTIZED))
        elif latent in in_guide:
            steps.append(GuideStep(latent, inputs, ENUMERATED_IN_GUIDE))
        else:
            summed_out.append(latent)
    summed_out.sort(key=nodes.index.get)
    steps.extend(GuideStep(latent, (), ENUMERATED_IN_MODEL) for latent in summed_out)
    return GuidePlan(tuple(steps))


def _chain_inputs(nodes: _Nodes, inputs: tuple[str, ...]) -> tuple[str, ...]:
    """A continuous chain's guide inputs: the lengths (inputs) first, then the data sequence
    it emits (the checker allows one, and no globals)."""
    return (tuple(i for i in inputs if nodes.role[i] == "input")
            + tuple(i for i in inputs if nodes.role[i] != "input"))


def _enumerated_in_guide(nodes: _Nodes, inputs_of: dict[str, tuple[str, ...]]) -> set[str]:
    """The discrete latents some continuous latent's guide needs, closed under "a discrete
    latent enumerated in the guide needs the discrete latents among its own inputs"."""
    needed: set[str] = set()
    work = [
        u
        for latent, inputs in inputs_of.items()
        if not nodes.discrete[latent]
        for u in inputs
        if nodes.role[u] == "latent" and nodes.discrete[u]
    ]
    while work:
        u = work.pop()
        if u in needed:
            continue
        needed.add(u)
        work.extend(w for w in inputs_of[u] if nodes.role[w] == "latent" and nodes.discrete[w])
    return needed
