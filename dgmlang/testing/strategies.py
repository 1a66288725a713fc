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


def _shape_for(family: str, shapes: tuple[tuple[int, ...], ...]):
    if family == "Categorical":
        return st.just(())
    if family == "Dirichlet":
        return st.sampled_from([s for s in shapes if len(s) == 1] or [(3,)])
    return st.sampled_from(shapes)


@st.composite
def models(
    draw,
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
) -> GeneratedModel:
    """Random valid model programs within bounds.

    Globals (continuous families) may depend on earlier globals; latents and data on globals,
    inputs, params and earlier latents or data; a latent's family is continuous or finite
    discrete (Bernoulli, Categorical, Binomial), a data variable's any of `families`. With
    `with_nets`, a variable's parents may enter through an `mlp` (inline on one parameter,
    packed for all of them, or a named `net`). `guide_families` are drawn for continuous
    latents and globals (None: no option). The first entry of each choice is where
    shrinking goes: scalar, Normal, no parents, no network, no guide option.
    """
    fams = _expand_families(families)
    shapes = tuple(tuple(s) for s in shapes) or ((),)
    if shapes[0] != () and () in shapes:
        shapes = ((),) + tuple(s for s in shapes if s != ())
    latent_fams = [f for f in fams if f in CONTINUOUS or f in FINITE_DISCRETE]
    global_fams = [f for f in fams if f in CONTINUOUS]
    data_fams = list(fams)
    if not data_fams or (max_latents and not latent_fams):
        raise ValueError(f"no family in {fams} can serve as a latent and as data")
    guide_fams = tuple(guide_families)

    n_globals = draw(st.integers(0, max_globals)) if global_fams else 0
    n_inputs = draw(st.integers(0, max_inputs))
    n_params = draw(st.integers(0, max_params))
    n_latents = draw(st.integers(min_latents, max_latents))
    n_data = draw(st.integers(1, max_data))
    # Locals in generation order: latents first unless the permutation interleaves data.
    local_roles = draw(st.permutations(["latent"] * n_latents + ["data"] * (n_data - 1)))
    local_roles = list(local_roles) + ["data"]

    nodes: list[Node] = []
    counters: dict[str, int] = {}

    def fresh(role: str) -> str:
        prefix = {"global": "g", "input": "u", "param": "p", "latent": "z", "data": "x"}[role]
        counters[role] = counters.get(role, 0) + 1
        return f"{prefix}{counters[role]}"

    def pick_parents(candidates: list[Node]) -> tuple[str, ...]:
        if not candidates or max_parents == 0:
            return ()
        chosen = draw(
            st.lists(st.sampled_from([c.name for c in candidates]), max_size=max_parents, unique=True)
        )
        order = {c.name: i for i, c in enumerate(candidates)}
        return tuple(sorted(chosen, key=order.__getitem__))

    def pick_net(parents: tuple[str, ...], family: str) -> str:
        if not with_nets or not parents:
            return ""
        kinds = ["", "inline", "named"]
        if family not in ("Binomial", "NegativeBinomial", "Categorical"):
            kinds.append("packed")
        return draw(st.sampled_from(kinds))

    def pick_guide(family: str) -> str | None:
        if family not in CONTINUOUS or not guide_fams:
            return None
        return draw(st.sampled_from(guide_fams))

    for _ in range(n_globals):
        fam = draw(st.sampled_from(global_fams))
        parents = pick_parents([n for n in nodes if n.role == "global"])
        nodes.append(Node(fresh("global"), "global", draw(_shape_for(fam, shapes)), fam, parents,
                          guide_family=pick_guide(fam)))
    for _ in range(n_inputs):
        is_int = with_nets and draw(st.booleans())
        shape = () if is_int else draw(st.sampled_from(shapes))
        nodes.append(Node(fresh("input"), "input", shape, type="int" if is_int else "real"))
    for _ in range(n_params):
        ptype = draw(st.sampled_from(["real", "positive"]))
        nodes.append(Node(fresh("param"), "param", draw(st.sampled_from(shapes)), type=ptype))
    for role in local_roles:
        fam = draw(st.sampled_from(latent_fams if role == "latent" else data_fams))
        parents = pick_parents(list(nodes))
        classes = draw(st.integers(2, 3)) if fam == "Categorical" else 3
        nodes.append(Node(
            fresh(role), role, draw(_shape_for(fam, shapes)), fam, parents,
            classes=classes, net=pick_net(parents, fam),
            guide_family=pick_guide(fam) if role == "latent" else None,
        ))
    return GeneratedModel(name, tuple(nodes))


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
    """Random linear-Gaussian networks: latents and data, each `Normal` with a mean linear in
    its parents (scalars, or vectors of the `dims` sizes other than 1, through `const`
    weight arrays), with the exact joint in `.joint` and `.posterior(observed)`.

    Every latent has at least one child (otherwise its posterior is its prior and tests
    nothing); `guide_family` is set on every latent (`mvn`: the guide can be exact).
    """
    dims = tuple(dims)
    n_latents = draw(st.integers(min_latents, max_latents))
    n_data = draw(st.integers(1, max_data))
    roles = ["latent"] * n_latents + ["data"] * n_data
    nodes: list[LinearNode] = []
    counts = {"latent": 0, "data": 0}
    for role in roles:
        counts[role] += 1
        node_name = f"{'z' if role == 'latent' else 'x'}{counts[role]}"
        dim = draw(st.sampled_from(dims))
        shape = (dim,) if dim > 1 else ()
        candidates = [n for n in nodes]
        parents = draw(st.lists(st.sampled_from(candidates), max_size=max_parents, unique_by=lambda n: n.name)) if candidates else []
        parents.sort(key=lambda n: roles_index(nodes, n.name))
        edges = tuple(LinearEdge(p.name, _weight(draw, p, dim)) for p in parents)
        nodes.append(LinearNode(
            node_name, role, shape, edges,
            bias=draw(st.sampled_from(_BIASES)), scale=draw(st.sampled_from(_SCALES)),
        ))
    # A latent without children would test nothing: give it the first data node as a child.
    nodes = _attach_childless_latents(draw, nodes)
    return LinearGaussianModel(name, tuple(nodes), guide_family)


def roles_index(nodes: list[LinearNode], name: str) -> int:
    return next(i for i, n in enumerate(nodes) if n.name == name)


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
    """Random discrete Bayesian networks over scalar Bernoulli/Categorical latents and data,
    logits given by tables indexed by the parents, with the exact joint (`.posterior`)."""
    n_latents = draw(st.integers(min_latents, max_latents))
    n_data = draw(st.integers(1, max_data))
    nodes: list[DiscreteNode] = []
    counts = {"latent": 0, "data": 0}
    for role in ["latent"] * n_latents + ["data"] * n_data:
        counts[role] += 1
        node_name = f"{'c' if role == 'latent' else 'x'}{counts[role]}"
        family = draw(st.sampled_from(["Categorical", "Bernoulli"]))
        classes = draw(st.integers(2, max_classes)) if family == "Categorical" else 2
        parents = []
        if nodes:
            parents = draw(st.lists(st.sampled_from(nodes), max_size=max_parents,
                                    unique_by=lambda n: n.name))
            parents.sort(key=nodes.index)
        table_shape = tuple(p.classes for p in parents) + ((classes,) if family == "Categorical" else ())
        size = int(np.prod(table_shape)) if table_shape else 1
        values = draw(st.lists(st.sampled_from(_LOGITS), min_size=size, max_size=size))
        table = np.asarray(values, dtype=float).reshape(table_shape)
        nodes.append(DiscreteNode(node_name, role, family, classes,
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

    from dgmlang.testing._pyro import draw_inputs, prior_draw

    compiled = model.compile() if hasattr(model, "compile") and hasattr(model, "text") else model
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        given = draw_inputs(compiled.ir, n, inputs)
        values = prior_draw(compiled, given, n)
    ir = compiled.ir
    data = {k: v for k, v in {**given, **values}.items() if k in ir.names("data", "input")}
    latents = {k: v for k, v in values.items() if k in ir.names("latent", "global")}
    return Simulation(data, latents, seed)


__all__ = ["models", "linear_gaussian_models", "discrete_models", "data_for", "simulate", "Simulation"]
