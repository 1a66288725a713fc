"""Generated model programs: a small structure (nodes and their parents) rendered to `.dgm` text.

The hypothesis strategies in `dgmlang.testing.strategies` draw these structures; keeping the
structure separate from the text is what makes shrinking give small, readable programs (fewer
nodes, fewer parents, scalar shapes, the first family listed). Three kinds:

* `GeneratedModel` -- any valid model over globals, inputs, params, latents and data;
* `LinearGaussianModel` -- Normal nodes whose means are linear in their parents, with the
  exact joint Gaussian (so every posterior is known in closed form);
* `DiscreteModel` -- Bernoulli/Categorical nodes with conditional probability tables, with
  the exact joint table (every posterior by enumeration).

Nothing here imports torch: the exact answers are numpy.

>>> m = GeneratedModel("m", (
...     Node("z", "latent", (2,), "Normal"),
...     Node("x", "data", (), "Poisson", parents=("z",)),
... ))
>>> print(m.text)
model m {
    latent z[2]
    data   x
<BLANKLINE>
    z ~ Normal(0.0, 1.0)
    x ~ Poisson(softplus(0.5 * sum(z)) + 0.5)
}
<BLANKLINE>
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property
from typing import Mapping, Sequence

import numpy as np

from dgmlang.testing.exact import DiscretePosterior, GaussianPosterior, condition_gaussian

Shape = tuple[int, ...]

#: Continuous families a generated latent, global or data variable may take.
CONTINUOUS = ("Normal", "LogNormal", "Gamma", "Beta", "HalfNormal", "Laplace", "StudentT",
              "Exponential", "Dirichlet")
#: Discrete families with finite support (a latent's guide can sum them out).
FINITE_DISCRETE = ("Bernoulli", "Categorical", "Binomial")
#: Discrete families with unbounded support: only for `data`.
UNBOUNDED_DISCRETE = ("Poisson", "Geometric", "NegativeBinomial")
DISCRETE = FINITE_DISCRETE + UNBOUNDED_DISCRETE
FAMILIES = CONTINUOUS + DISCRETE

#: Families whose value is one of `classes` integers and whose shape is a scalar.
_SCALAR_ONLY = ("Categorical",)
_BINOMIAL_COUNT = 3
_NET_HIDDEN = 8


@dataclass(frozen=True)
class Node:
    """One declared variable of a generated program.

    `role` is "global", "input", "param", "latent" or "data"; `family` the distribution name
    (None for an input or a param); `parents` the earlier nodes its distribution reads;
    `type` the declared type of an input or param ("real", "int", "positive"); `classes`
    the number of categories of a Categorical (or the range 0..classes-1 of an int input);
    `net` how the parents enter: "" (a linear signal), "inline" (a network feeding the main
    parameter), "packed" (a network feeding every parameter) or "named" (a `net` statement);
    `guide_family` a `guide(family = ...)` option on a latent or global.
    """

    name: str
    role: str
    shape: Shape = ()
    family: str | None = None
    parents: tuple[str, ...] = ()
    type: str = "real"
    classes: int = 3
    net: str = ""
    guide_family: str | None = None


def _decl_keyword(role: str) -> str:
    return f"{role:<6}"


def _dims(shape: Shape) -> str:
    return f"[{', '.join(map(str, shape))}]" if shape else ""


def _number(x: float) -> str:
    """A float literal that reads back as the same float (`1.0`, `-0.5`, `0.25`)."""
    text = repr(float(x))
    return text if "e" not in text else f"{x:.10f}".rstrip("0")


def _literal(value) -> str:
    """Nested lists of floats as `.dgm` list literals."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = float(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return _number(value)


class _Program:
    """What every generated program offers beside its `name` and `text`: the front end's
    result (`checked`: IR, graph, guide plan; `ir`) on first use, and `compile()`."""

    @cached_property
    def checked(self):
        from dgmlang.frontend import check_source

        (checked,) = check_source(self.text, f"<{self.name}>")
        return checked

    @property
    def ir(self):
        return self.checked.ir

    def compile(self):
        """A fresh compiled model (torch, Pyro) of this program."""
        from dgmlang.frontend import compile_source

        return compile_source(self.text, filename=f"<{self.name}>")


@dataclass(frozen=True)
class GeneratedModel(_Program):
    """A random valid model program: its `nodes` (declaration order) rendered as `text`.

    `ir` (checked) and `checked` (IR, graph and guide plan) run the front end on first use;
    `compile()` gives a fresh `CompiledModel`.
    """

    name: str
    nodes: tuple[Node, ...]

    @cached_property
    def text(self) -> str:
        return _render_generated(self.name, self.nodes)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def names(self, *roles: str) -> list[str]:
        return [n.name for n in self.nodes if n.role in roles]

    def __repr__(self) -> str:
        # Hypothesis prints this for a falsifying example: the program reads best as text.
        return f"{type(self).__name__}(text='''\n{self.text}''')"

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis prints examples with this
        printer.text(repr(self))


# ---------------------------------------------------------------- rendering: generated models


def _signal_term(parent: Node, target_shape: Shape) -> str:
    """A parent's value as a real term that broadcasts to `target_shape`."""
    value = parent.name if parent.shape in ((), target_shape) else f"sum({parent.name})"
    return f"0.5 * {value}"


def _signal(parents: Sequence[Node], target_shape: Shape) -> str | None:
    if not parents:
        return None
    return " + ".join(_signal_term(p, target_shape) for p in parents)


def _positive(signal: str | None, constant: str) -> str:
    return constant if signal is None else f"softplus({signal}) + 0.5"


def _net_inputs(parents: Sequence[Node]) -> str:
    parts = []
    for p in parents:
        if p.family == "Categorical" or (p.role == "input" and p.type == "int"):
            parts.append(f"onehot({p.name}, {p.classes})")
        else:
            parts.append(p.name)
    return ", ".join(parts)


def _class_logits(classes: int) -> str:
    return _literal([0.0, 1.0, -1.0, 0.5, -0.5][:classes])


def _main_param(node: Node, parents: Sequence[Node], net_call: str | None) -> str:
    """The distribution call: the parents enter through its main parameter."""
    fam, shape = node.family, node.shape
    target = () if fam in _SCALAR_ONLY else shape
    signal = _signal(parents, target)
    if net_call is not None:
        real = positive = net_call
        logits = net_call
    else:
        real = signal or "0.0"
        positive = _positive(signal, "")
        logits = signal
    k = shape[-1] if fam == "Dirichlet" else node.classes
    calls = {
        "Normal": lambda: f"Normal({real}, 1.0)",
        "LogNormal": lambda: f"LogNormal({real}, 0.5)",
        "Laplace": lambda: f"Laplace({real}, 1.0)",
        "StudentT": lambda: f"StudentT(4.0, {real}, 1.0)",
        "HalfNormal": lambda: f"HalfNormal({positive or '1.0'})",
        "Exponential": lambda: f"Exponential({positive or '1.0'})",
        "Gamma": lambda: f"Gamma(2.0, {positive or '2.0'})",
        "Beta": lambda: f"Beta({positive or '2.0'}, 2.0)",
        "Dirichlet": lambda: (
            f"Dirichlet({net_call})" if net_call
            else f"Dirichlet(softplus({signal}) + ones({k}))" if signal
            else f"Dirichlet(ones({k}))"
        ),
        "Bernoulli": lambda: f"Bernoulli(logits = {logits})" if logits else "Bernoulli(probs = 0.5)",
        "Binomial": lambda: (
            f"Binomial({_BINOMIAL_COUNT}, logits = {logits})" if logits
            else f"Binomial({_BINOMIAL_COUNT}, probs = 0.5)"
        ),
        "Categorical": lambda: (
            f"Categorical(logits = {net_call} + zeros({k}))" if net_call
            else f"Categorical(logits = ({signal}) * {_class_logits(k)})" if signal
            else f"Categorical(logits = zeros({k}))"
        ),
        "Poisson": lambda: f"Poisson({positive or '2.0'})",
        "Geometric": lambda: f"Geometric(logits = {logits})" if logits else "Geometric(probs = 0.5)",
        "NegativeBinomial": lambda: (
            f"NegativeBinomial(2.0, logits = {logits})" if logits
            else "NegativeBinomial(2.0, probs = 0.5)"
        ),
    }
    return calls[fam]()


def _draw_line(node: Node, by_name: Mapping[str, Node], nets: list[str]) -> str:
    parents = [by_name[p] for p in node.parents]
    if node.net and parents:
        inputs = _net_inputs(parents)
        if node.net == "named":
            net_name = f"f_{node.name}"
            nets.append(f"net {net_name} = mlp(hidden = [{_NET_HIDDEN}])")
            call = f"{net_name}({inputs})"
        else:
            call = f"mlp({inputs}, hidden = [{_NET_HIDDEN}])"
        if node.net == "packed":
            return f"{node.name} ~ {node.family}({call})"
        return f"{node.name} ~ {_main_param(node, parents, call)}"
    return f"{node.name} ~ {_main_param(node, parents, None)}"


def _declaration(node: Node) -> str:
    text = f"{_decl_keyword(node.role)} {node.name}{_dims(node.shape)}"
    if node.role in ("input", "param") and node.type != "real":
        text += f" : {node.type}"
    if node.guide_family:
        text += f" guide(family = {node.guide_family})"
    return text


def _render_generated(name: str, nodes: Sequence[Node]) -> str:
    by_name = {n.name: n for n in nodes}
    nets: list[str] = []
    draws = [_draw_line(n, by_name, nets) for n in nodes if n.family is not None]
    lines = [f"model {name} {{"]
    lines += [f"    {_declaration(n)}" for n in nodes]
    lines.append("")
    lines += [f"    {line}" for line in nets]
    lines += [f"    {line}" for line in draws]
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- linear-Gaussian models


@dataclass(frozen=True)
class LinearEdge:
    """`child` reads `weight @ parent` (a float for scalar-to-scalar, else nested lists
    shaped (child dim, parent dim), a column for a scalar parent, a row for a scalar child)."""

    parent: str
    weight: float | tuple


@dataclass(frozen=True)
class LinearNode:
    """`name ~ Normal(sum of weight @ parent + bias, scale)`; role "latent" or "data"."""

    name: str
    role: str
    shape: Shape
    edges: tuple[LinearEdge, ...] = ()
    bias: float = 0.0
    scale: float = 1.0

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass(frozen=True)
class LinearGaussianModel(_Program):
    """A linear-Gaussian network: its program `text` and its exact joint Gaussian.

    Every node is a `Normal` whose mean is linear in its parents, so the joint over all nodes
    (flattened in declaration order) is Gaussian: ``x = B x + b + S eps`` gives
    ``mean = (I - B)^-1 b`` and ``cov = A S^2 A^T`` with ``A = (I - B)^-1``. Any subset
    observed, the posterior of the rest follows by Gaussian conditioning (`posterior`).

    >>> m = LinearGaussianModel("lg", (
    ...     LinearNode("z", "latent", ()),
    ...     LinearNode("x", "data", (), (LinearEdge("z", 2.0),), scale=1.0),
    ... ))
    >>> print(m.text)
    model lg {
        latent z
        data   x
    <BLANKLINE>
        z ~ Normal(0.0, 1.0)
        x ~ Normal(2.0 * z, 1.0)
    }
    <BLANKLINE>
    >>> post = m.posterior({"x": np.array([1.0])})
    >>> round(float(post.mean_of("z")[0]), 12), round(float(post.cov_of("z")[0, 0]), 12)  # 2/5, 1/5
    (0.4, 0.2)
    """

    name: str
    nodes: tuple[LinearNode, ...]
    guide_family: str | None = None

    @cached_property
    def text(self) -> str:
        return _render_linear(self)

    def node(self, name: str) -> LinearNode:
        return next(n for n in self.nodes if n.name == name)

    def names(self, *roles: str) -> list[str]:
        return [n.name for n in self.nodes if n.role in roles]

    @cached_property
    def slices(self) -> dict[str, slice]:
        """Where each node's flattened value sits in the joint vector."""
        out, start = {}, 0
        for n in self.nodes:
            out[n.name] = slice(start, start + n.dim)
            start += n.dim
        return out

    @cached_property
    def joint(self) -> tuple[np.ndarray, np.ndarray]:
        """`(mean, cov)` of every node, flattened in declaration order (float64)."""
        dim = sum(n.dim for n in self.nodes)
        b_mat = np.zeros((dim, dim))
        bias = np.zeros(dim)
        scale = np.zeros(dim)
        for n in self.nodes:
            rows = self.slices[n.name]
            bias[rows] = n.bias
            scale[rows] = n.scale
            for e in n.edges:
                cols = self.slices[e.parent]
                b_mat[rows, cols] += np.asarray(e.weight, dtype=float).reshape(
                    rows.stop - rows.start, cols.stop - cols.start
                )
        a_mat = np.linalg.inv(np.eye(dim) - b_mat)
        return a_mat @ bias, a_mat @ np.diag(scale**2) @ a_mat.T

    def posterior(self, observed: Mapping[str, np.ndarray]) -> GaussianPosterior:
        """The exact posterior of every node not in `observed` (each value shaped (n, *shape))."""
        mean, cov = self.joint
        obs_names = [n.name for n in self.nodes if n.name in observed]
        unknown = [n for n in self.nodes if n.name not in observed]
        if not unknown:
            raise ValueError("every node is observed: there is no posterior")
        positions = np.arange(len(mean))
        obs_idx = np.concatenate([positions[self.slices[k]] for k in obs_names] or [[]]).astype(int)
        lat_idx = np.concatenate([positions[self.slices[n.name]] for n in unknown])
        if obs_names:
            n_points = len(np.asarray(observed[obs_names[0]]))
            values = np.concatenate(
                [np.asarray(observed[k], dtype=float).reshape(n_points, -1) for k in obs_names],
                axis=1,
            )
        else:
            values = np.zeros((1, 0))
        post_mean, post_cov = condition_gaussian(mean, cov, obs_idx, lat_idx, values)
        return GaussianPosterior(
            tuple(n.name for n in unknown), tuple(n.shape for n in unknown), post_mean, post_cov
        )

    def sample(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        """`n` joint draws of every node, each shaped (n, *shape), from the exact joint."""
        mean, cov = self.joint
        rng = np.random.default_rng(seed)
        flat = rng.multivariate_normal(mean, cov, size=n, method="cholesky")
        return {
            node.name: flat[:, self.slices[node.name]].reshape((n, *node.shape))
            for node in self.nodes
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(text='''\n{self.text}''')"

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis prints examples with this
        printer.text(repr(self))


def _linear_term(edge: LinearEdge, parent: LinearNode, child: LinearNode, consts: list[str]) -> str:
    if not parent.shape and not child.shape:
        return f"{_number(edge.weight)} * {parent.name}"
    weight = np.asarray(edge.weight, dtype=float).reshape(child.dim, parent.dim)
    const = f"W_{parent.name}_{child.name}"
    if not parent.shape:  # a column: a vector times a scalar
        consts.append(f"const {const} = {_literal(weight[:, 0])}")
        return f"{const} * {parent.name}"
    if not child.shape:  # a row: a dot product
        consts.append(f"const {const} = {_literal(weight[0])}")
        return f"dot({const}, {parent.name})"
    consts.append(f"const {const} = {_literal(weight)}")
    return f"matmul({const}, {parent.name})"


def _render_linear(model: LinearGaussianModel) -> str:
    by_name = {n.name: n for n in model.nodes}
    consts: list[str] = []
    draws = []
    for n in model.nodes:
        mean = " + ".join(_linear_term(e, by_name[e.parent], n, consts) for e in n.edges)
        if not mean:
            mean = _number(n.bias)
        elif n.bias:
            mean += f" {'-' if n.bias < 0 else '+'} {_number(abs(n.bias))}"
        draws.append(f"{n.name} ~ Normal({mean}, {_number(n.scale)})")
    lines = [f"model {model.name} {{"]
    lines += [f"    {line}" for line in consts]
    for n in model.nodes:
        decl = f"{_decl_keyword(n.role)} {n.name}{_dims(n.shape)}"
        if n.role == "latent" and model.guide_family:
            decl += f" guide(family = {model.guide_family})"
        lines.append(f"    {decl}")
    lines.append("")
    lines += [f"    {line}" for line in draws]
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- discrete networks


@dataclass(frozen=True)
class DiscreteNode:
    """A Categorical (`classes` > 2 or `family` "Categorical") or Bernoulli node whose logits
    are a table indexed by its parents' values: `table` is nested lists shaped
    (*parent classes, classes) for a Categorical, (*parent classes) for a Bernoulli."""

    name: str
    role: str
    family: str  # "Bernoulli" | "Categorical"
    classes: int
    parents: tuple[str, ...] = ()
    table: float | tuple = 0.0


@dataclass(frozen=True)
class DiscreteModel(_Program):
    """A discrete Bayesian network over scalar Bernoulli/Categorical nodes, with its exact
    joint probability table (so every posterior is known by enumeration).

    >>> m = DiscreteModel("d", (
    ...     DiscreteNode("c", "latent", "Categorical", 2, table=(0.0, 0.0)),
    ...     DiscreteNode("x", "data", "Bernoulli", 2, ("c",), table=(-2.0, 2.0)),
    ... ))
    >>> print(m.text)
    model d {
        const T_x = [-2.0, 2.0]
        latent c
        data   x
    <BLANKLINE>
        c ~ Categorical(logits = [0.0, 0.0])
        x ~ Bernoulli(logits = T_x[c])
    }
    <BLANKLINE>
    >>> post = m.posterior({"x": np.array([1])})
    >>> np.round(post.marginal("c")[0], 4)   # sigmoid(2) vs sigmoid(-2), normalised
    array([0.1192, 0.8808])
    """

    name: str
    nodes: tuple[DiscreteNode, ...]

    @cached_property
    def text(self) -> str:
        return _render_discrete(self)

    def names(self, *roles: str) -> list[str]:
        return [n.name for n in self.nodes if n.role in roles]

    @cached_property
    def log_joint(self) -> np.ndarray:
        """log p(all nodes), an array with one axis per node (declaration order)."""
        sizes = [n.classes for n in self.nodes]
        index = {n.name: i for i, n in enumerate(self.nodes)}
        out = np.zeros(sizes)
        for config in itertools.product(*(range(k) for k in sizes)):
            total = 0.0
            for i, n in enumerate(self.nodes):
                table = np.asarray(n.table, dtype=float)
                logits = table[tuple(config[index[p]] for p in n.parents)]
                value = config[i]
                if n.family == "Bernoulli":
                    total += -np.logaddexp(0.0, -logits) if value == 1 else -np.logaddexp(0.0, logits)
                else:
                    total += logits[value] - np.logaddexp.reduce(logits)
            out[config] = total
        return out

    def posterior(self, observed: Mapping[str, np.ndarray]) -> DiscretePosterior:
        """The exact posterior over the nodes not in `observed` (each value shaped (n,))."""
        obs = [(i, np.asarray(observed[n.name]).astype(int).reshape(-1))
               for i, n in enumerate(self.nodes) if n.name in observed]
        n_points = len(obs[0][1]) if obs else 1
        unknown = [n for n in self.nodes if n.name not in observed]
        tables = []
        for row in range(n_points):
            index = [slice(None)] * len(self.nodes)
            for i, values in obs:
                index[i] = values[row]
            tables.append(self.log_joint[tuple(index)])
        return DiscretePosterior.from_log_joint(
            tuple(n.name for n in unknown), np.stack(tables)
        )

    def sample(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        """`n` ancestral draws of every node, each shaped (n,)."""
        flat = np.exp(self.log_joint).reshape(-1)
        rng = np.random.default_rng(seed)
        draws = rng.choice(len(flat), size=n, p=flat / flat.sum())
        unravelled = np.unravel_index(draws, self.log_joint.shape)
        return {node.name: unravelled[i] for i, node in enumerate(self.nodes)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(text='''\n{self.text}''')"

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis prints examples with this
        printer.text(repr(self))


def _render_discrete(model: DiscreteModel) -> str:
    consts, draws = [], []
    for n in model.nodes:
        table = np.asarray(n.table, dtype=float)
        if n.parents:
            const = f"T_{n.name}"
            consts.append(f"const {const} = {_literal(table)}")
            logits = f"{const}[{', '.join(n.parents)}]"
        else:
            logits = _literal(table)
        draws.append(f"{n.name} ~ {n.family}(logits = {logits})")
    lines = [f"model {model.name} {{"]
    lines += [f"    {line}" for line in consts]
    lines += [f"    {_decl_keyword(n.role)} {n.name}" for n in model.nodes]
    lines.append("")
    lines += [f"    {line}" for line in draws]
    lines.append("}")
    return "\n".join(lines) + "\n"


__all__ = [
    "CONTINUOUS", "DISCRETE", "FAMILIES", "FINITE_DISCRETE", "UNBOUNDED_DISCRETE",
    "Node", "GeneratedModel", "LinearEdge", "LinearNode", "LinearGaussianModel",
    "DiscreteNode", "DiscreteModel",
]
