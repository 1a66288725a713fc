"""Hypothesis strategies for model programs and their data.

Each strategy first draws a small structure (how many variables of each role, their
families, shapes and parents) and renders it to `.dgm` text, so that hypothesis shrinks a
failing program towards fewer variables, fewer edges, scalar shapes and the first family
listed: the smallest counterexample is a program a person reads at a glance.

* `models(...)` -- random valid programs (`GeneratedModel`: `.text`, `.ir`, `.compile()`);
* `linear_gaussian_models(...)` -- linear-Gaussian networks with their exact joint;
* `discrete_models(...)` -- discrete Bayesian networks with their exact joint table;
* `data_for(model, n)` -- parameters, latents and data drawn from a model's prior.

>>> from hypothesis import find
>>> m = find(models(max_latents=2), lambda m: len(m.names("latent")) == 2)
>>> print(m.text)
model generated {
    latent z1
    latent z2
    data   x1
<BLANKLINE>
    z1 ~ Normal(0.0, 1.0)
    z2 ~ Normal(0.0, 1.0)
    x1 ~ Normal(0.0, 1.0)
}
<BLANKLINE>
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
from hypothesis import strategies as st

from dgmlang.testing.programs import (
    CONTINUOUS,
    DISCRETE,
    FINITE_DISCRETE,
    DiscreteModel,
    DiscreteNode,
    GeneratedModel,
    LinearEdge,
    LinearGaussianModel,
    LinearNode,
    Node,
)

#: Values that read well in a program; each strategy's first entry is where shrinking goes.
_WEIGHTS = (1.0, 0.5, -0.5, 2.0, -1.0, 1.5, -2.0, 0.25)
_SCALES = (1.0, 0.5, 2.0, 0.3)
_BIASES = (0.0, 1.0, -1.0, 0.5)
_LOGITS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5)
_GUIDE_FAMILIES = (None, "mvn", "flow", "delta")


def _expand_families(families: Iterable[str]) -> tuple[str, ...]:
    """Family names, with the groups "continuous" and "discrete" spelled out, in the
    canonical order (Normal first, so shrinking reaches it)."""
    wanted: set[str] = set()
    for f in families:
        if f == "continuous":
            wanted |= set(CONTINUOUS)
        elif f == "discrete":
            wanted |= set(DISCRETE)
        elif f in CONTINUOUS or f in DISCRETE:
            wanted.add(f)
        else:
            raise ValueError(
                f"unknown family {f!r}; expected 'continuous', 'discrete' or one of "
                f"{', '.join(CONTINUOUS + DISCRETE)}"
            )
    return tuple(f for f in CONTINUOUS + DISCRETE if f in wanted)


def models(
    *,
    max_latents: int = 3,
    min_latents: int = 1,
    max_data: int = 2,
    max_globals: int = 1,
    max_inputs: int = 1,
    max_params: int = 1,
    max_parents: int = 2,
    families: Iterable[str] = ("continuous", "discrete"),
    with_nets: bool = False,
    shapes: Iterable[tuple[int, ...]] = ((), (2,), (3,)),
    guide_families: Iterable[str | None] = _GUIDE_FAMILIES,
    name: str = "generated",
) -> st.SearchStrategy[GeneratedModel]:
    """Random valid model programs within bounds.

    Globals (continuous families) may depend on earlier globals; latents and data on globals,
    inputs, params and earlier latents or data; a latent's family is continuous or finite
    discrete (Bernoulli, Categorical, Binomial; scalar, as the guide sums them out), a data
    variable's any of `families` ("continuous", "discrete" or distribution names). With
    `with_nets`, a variable's parents may enter through an `mlp` (inline on one parameter,
    packed for all of them, or a named `net`). `guide_families` are drawn for continuous
    latents and globals (None: no option).

    Each role's variables are a hypothesis list and each parent a distance back to an earlier
    variable, so shrinking deletes variables and edges freely; every other choice shrinks
    to its first option: scalar, Normal, no network, no guide option.
    """
    fams = _expand_families(families)
    shapes = tuple(tuple(s) for s in shapes) or ((),)
    if () in shapes:  # scalars first: shrinking goes there
        shapes = ((),) + tuple(s for s in shapes if s != ())
    latent_fams = tuple(f for f in fams if f in CONTINUOUS or f in FINITE_DISCRETE)
    global_fams = tuple(f for f in fams if f in CONTINUOUS)
    if max_latents and not latent_fams:
        raise ValueError(f"none of the families {list(fams)} can be a latent's")
    if not 0 <= min_latents <= max_latents or max_data < 1:
        raise ValueError("need 0 <= min_latents <= max_latents and max_data >= 1")
    options = _ModelOptions(
        max_latents, min_latents, max_data, max_globals if global_fams else 0, max_inputs,
        max_params, max_parents, fams, latent_fams, global_fams, with_nets, shapes,
        tuple(guide_families), name,
    )
    return _models(options)


@dataclass(frozen=True)
class _ModelOptions:
    max_latents: int
    min_latents: int
    max_data: int
    max_globals: int
    max_inputs: int
    max_params: int
    max_parents: int
    families: tuple[str, ...]
    latent_families: tuple[str, ...]
    global_families: tuple[str, ...]
    with_nets: bool
    shapes: tuple[tuple[int, ...], ...]
    guide_families: tuple[str | None, ...]
    name: str


_PARENT_PICKS = 8  # a parent is drawn as a distance back, modulo the number of candidates


@st.composite
def _models(draw, o: _ModelOptions) -> GeneratedModel:
    def parent_picks():
        return _parent_picks(o.max_parents)

    def guide_choice():
        return st.sampled_from(o.guide_families) if o.guide_families else st.just(None)

    spec = st.tuples(st.sampled_from(o.global_families or ("Normal",)),
                     st.sampled_from(o.shapes), parent_picks(), guide_choice())
    global_specs = draw(st.lists(spec, max_size=o.max_globals))
    input_specs = draw(st.lists(st.tuples(st.sampled_from(o.shapes), st.booleans()), max_size=o.max_inputs))
    param_specs = draw(st.lists(st.tuples(st.sampled_from(o.shapes), st.sampled_from(["real", "positive"])),
                                max_size=o.max_params))
    local = st.tuples(
        st.sampled_from(["latent", "data"]), st.sampled_from(o.families), st.sampled_from(o.shapes),
        parent_picks(), st.integers(2, 3), st.sampled_from(["", "inline", "named", "packed"]),
        guide_choice(),
    )

    def counts_ok(specs):
        n_latent = sum(1 for r, *_ in specs if r == "latent")
        n_data = sum(1 for r, *_ in specs if r == "data")
        return o.min_latents <= n_latent <= o.max_latents and n_data <= o.max_data

    local_specs = draw(st.lists(local, max_size=o.max_latents + o.max_data).filter(counts_ok))
    if not any(r == "data" for r, *_ in local_specs):  # a model observes something
        local_specs.append(("data", o.families[0], (), [], 3, "", None))

    nodes: list[Node] = []
    counters: dict[str, int] = {}

    def fresh(role: str) -> str:
        prefix = {"global": "g", "input": "u", "param": "p", "latent": "z", "data": "x"}[role]
        counters[role] = counters.get(role, 0) + 1
        return f"{prefix}{counters[role]}"

    def parents_of(picks, candidates: list[Node]) -> tuple[str, ...]:
        return tuple(p.name for p in _parents(picks, candidates))

    for fam, shape, picks, guide in global_specs:
        nodes.append(Node(fresh("global"), "global", _fit_shape(fam, shape, "global"), fam,
                          parents_of(picks, [n for n in nodes if n.role == "global"]),
                          guide_family=guide))
    for shape, is_int in input_specs:
        is_int = is_int and o.with_nets  # an int input enters through onehot(u, K) in a network
        nodes.append(Node(fresh("input"), "input", () if is_int else shape,
                          type="int" if is_int else "real"))
    for shape, ptype in param_specs:
        nodes.append(Node(fresh("param"), "param", shape, type=ptype))
    for role, fam, shape, picks, classes, net, guide in local_specs:
        if role == "latent" and fam not in o.latent_families:  # e.g. Poisson: data only
            fam = o.latent_families[0]
        parents = parents_of(picks, list(nodes))
        if not o.with_nets or not parents or (net == "packed" and fam in _NO_PACKED):
            net = ""
        nodes.append(Node(
            fresh(role), role, _fit_shape(fam, shape, role), fam, parents,
            classes=classes if fam == "Categorical" else 3, net=net,
            guide_family=guide if role == "latent" and fam in CONTINUOUS else None,
        ))
    return GeneratedModel(o.name, tuple(nodes))


#: Families whose every parameter a lone network cannot stand for (a count, or a class
#: number that is written nowhere else).
_NO_PACKED = ("Binomial", "NegativeBinomial", "Categorical")


def _fit_shape(family: str, shape: tuple[int, ...], role: str) -> tuple[int, ...]:
    """The drawn shape, made valid: scalar Categoricals and discrete latents (only scalar
    discrete latents can be summed out), a vector for a Dirichlet."""
    if family == "Categorical" or (role == "latent" and family in FINITE_DISCRETE):
        return ()
    if family == "Dirichlet":
        return shape[-1:] if shape else (3,)
    return shape


@st.composite
def linear_gaussian_models(
    draw,
    *,
    max_latents: int = 3,
    min_latents: int = 1,
    max_data: int = 2,
    max_parents: int = 2,
    dims: Iterable[int] = (1, 2),
    guide_family: str | None = "mvn",
    name: str = "linear_gaussian",
) -> LinearGaussianModel:
    """Random linear-Gaussian networks: latents, then data, each `Normal` with a mean linear
    in its parents (scalars, or vectors of the `dims` sizes other than 1, through `const`
    weight arrays), with the exact joint in `.joint` and `.posterior(observed)`.

    Every latent has at least one child (otherwise its posterior is its prior and tests
    nothing); `guide_family` is set on every latent (`mvn`: the guide can be exact).
    """
    dims = tuple(dims)
    spec = st.tuples(st.sampled_from(dims), _parent_picks(max_parents),
                     st.sampled_from(_BIASES), st.sampled_from(_SCALES))
    latent_specs = draw(st.lists(spec, min_size=min_latents, max_size=max_latents))
    data_specs = draw(st.lists(spec, min_size=1, max_size=max_data))
    nodes: list[LinearNode] = []
    for role, specs in (("latent", latent_specs), ("data", data_specs)):
        for i, (dim, picks, bias, scale) in enumerate(specs, start=1):
            parents = _parents(picks, nodes)
            edges = tuple(LinearEdge(p.name, _weight(draw, p, dim)) for p in parents)
            nodes.append(LinearNode(f"{'z' if role == 'latent' else 'x'}{i}", role,
                                    (dim,) if dim > 1 else (), edges, bias, scale))
    # A latent without children would test nothing: give it the first data node as a child.
    nodes = _attach_childless_latents(draw, nodes)
    return LinearGaussianModel(name, tuple(nodes), guide_family)


def _parent_picks(max_parents: int):
    return st.lists(st.integers(0, _PARENT_PICKS - 1), max_size=max_parents)


def _parents(picks, candidates: list) -> list:
    """The candidates `picks` point at, each counted back from the newest (so deleting an
    unrelated earlier variable while shrinking leaves the edge in place), in order."""
    if not candidates:
        return []
    chosen = {candidates[-1 - i % len(candidates)].name for i in picks}
    return [c for c in candidates if c.name in chosen]


def _weight(draw, parent: LinearNode, child_dim: int) -> float | tuple:
    if parent.dim == 1 and child_dim == 1:
        return draw(st.sampled_from(_WEIGHTS))
    values = draw(st.lists(st.sampled_from(_WEIGHTS), min_size=parent.dim * child_dim,
                           max_size=parent.dim * child_dim))
    matrix = np.asarray(values).reshape(child_dim, parent.dim)
    return tuple(tuple(float(v) for v in row) for row in matrix)


def _attach_childless_latents(draw, nodes: list[LinearNode]) -> list[LinearNode]:
    out = list(nodes)
    for latent in [n for n in nodes if n.role == "latent"]:
        if any(e.parent == latent.name for n in out for e in n.edges):
            continue
        i = next(i for i, n in enumerate(out) if n.role == "data")
        child = out[i]
        edge = LinearEdge(latent.name, _weight(draw, latent, child.dim))
        out[i] = LinearNode(child.name, child.role, child.shape, child.edges + (edge,),
                            child.bias, child.scale)
    return out


@st.composite
def discrete_models(
    draw,
    *,
    max_latents: int = 3,
    min_latents: int = 1,
    max_data: int = 2,
    max_parents: int = 2,
    max_classes: int = 3,
    name: str = "discrete",
) -> DiscreteModel:
    """Random discrete Bayesian networks over scalar Bernoulli/Categorical latents, then
    data, logits given by tables indexed by the parents, with the exact joint (`.posterior`)."""
    spec = st.tuples(st.sampled_from(["Categorical", "Bernoulli"]), st.integers(2, max_classes),
                     _parent_picks(max_parents))
    latent_specs = draw(st.lists(spec, min_size=min_latents, max_size=max_latents))
    data_specs = draw(st.lists(spec, min_size=1, max_size=max_data))
    nodes: list[DiscreteNode] = []
    for role, specs in (("latent", latent_specs), ("data", data_specs)):
        for i, (family, classes, picks) in enumerate(specs, start=1):
            classes = classes if family == "Categorical" else 2
            parents = _parents(picks, nodes)
            table_shape = tuple(p.classes for p in parents) + ((classes,) if family == "Categorical" else ())
            size = int(np.prod(table_shape)) if table_shape else 1
            values = draw(st.lists(st.sampled_from(_LOGITS), min_size=size, max_size=size))
            table = np.asarray(values, dtype=float).reshape(table_shape)
            nodes.append(DiscreteNode(f"{'c' if role == 'latent' else 'x'}{i}", role, family, classes,
                                      tuple(p.name for p in parents), _nested(table)))
    return DiscreteModel(name, tuple(nodes))


def _nested(array: np.ndarray):
    return float(array) if array.ndim == 0 else tuple(_nested(a) for a in array)


# ---------------------------------------------------------------- data from the prior


@dataclass(frozen=True, eq=False)
class Simulation:
    """One draw from a model's prior: `data` (every data variable and input, `(n, *shape)`,
    what `fit` and `invert` take), `latents` (every latent `(n, *shape)` and global
    `(*shape)`), and the `seed` it came from."""

    data: dict
    latents: dict
    seed: int

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in {**self.data, **self.latents}.items()}
        return f"Simulation(seed={self.seed}, shapes={shapes})"


def data_for(model: Any, n: int, *, inputs: Mapping[str, Any] | None = None):
    """A strategy drawing globals, latents and data from `model`'s prior for `n` data points.

    `model` is a `GeneratedModel` (compiled afresh for each example, so its params and
    networks are a seeded random initialisation), a `LinearGaussianModel`/`DiscreteModel`,
    or a compiled model (its current params and networks). Inputs are drawn too: reals from
    a standard normal, ints uniformly from the classes they are used with (`onehot(u, K)`);
    pass `inputs={"u": array}` to fix them. Values are torch tensors.
    """
    return st.integers(0, 2**31 - 1).map(lambda seed: simulate(model, n, seed=seed, inputs=inputs))


def simulate(model: Any, n: int, *, seed: int = 0, inputs: Mapping[str, Any] | None = None) -> Simulation:
    """One `Simulation` of `n` data points from the model's prior (see `data_for`)."""
    import torch

    from dgmlang.testing.runtime import draw_inputs, prior_draw

    compiled = model.compile() if hasattr(model, "compile") and hasattr(model, "text") else model
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        given = draw_inputs(compiled, n, inputs)
        values = prior_draw(compiled, given, n)
    ir = compiled.ir
    data = {k: v for k, v in {**given, **values}.items() if k in ir.names("data", "input")}
    latents = {k: v for k, v in values.items() if k in ir.names("latent", "global")}
    return Simulation(data, latents, seed)


__all__ = ["models", "linear_gaussian_models", "discrete_models", "data_for", "simulate", "Simulation"]
