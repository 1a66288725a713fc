"""The distributions, built-in functions and network options a model may use: names only.

Every later stage reads this table: the checker binds arguments and checks shapes with it,
the graph and inversion read supports (which latents are discrete, which are finite), and
the lowering looks the Pyro class up by `DistSpec.name` and maps network outputs onto each
parameter's `constraint`. Nothing here imports torch or pyro.

Parameters are listed in Pyro's positional order; `alternatives` are groups of which exactly
one must be given (``probs`` / ``logits``); a parameter with a `default` may be left out.

>>> spec = DISTRIBUTIONS["Binomial"]
>>> [p.name for p in spec.params]
['total_count', 'probs', 'logits']
>>> spec.param("total_count").default, spec.alternatives, spec.support, spec.finite
(1, (('probs', 'logits'),), 'finite_int', True)
>>> [p.name for p in DISTRIBUTIONS["Normal"].packed_params()]
['loc', 'scale']
>>> DISTRIBUTIONS["Categorical"].param("logits").event_rank
1
>>> BUILTINS["exp"].shape_rule, BUILTINS["onehot"].arity, BUILTINS["clamp"].shape_rule
('elementwise', (2, 2), 'broadcast')
"""
from __future__ import annotations

from dataclasses import dataclass

#: Constraints of parameters (and supports of values) a network output can be mapped onto:
#: "real" identity, "positive" softplus, "unit" sigmoid, "simplex" softmax over the last
#: dimension. "nonneg_int" (Binomial's total_count) cannot come from a network.
CONSTRAINTS = ("real", "positive", "unit", "simplex", "nonneg_int")

#: Supports of distributions. "boolean" is {0, 1}; "finite_int" is {0..K-1} (Categorical) or
#: {0..n} (Binomial); "nonneg_int" is {0, 1, 2, ...}; "interval" depends on the parameters.
SUPPORTS = ("real", "positive", "unit", "simplex", "boolean", "finite_int", "nonneg_int", "interval")

#: The value type (a `dgmlang.ast.TYPES` name) of a variable drawn from each support.
SUPPORT_TYPES = {
    "real": "real",
    "positive": "positive",
    "unit": "unit",
    "simplex": "simplex",
    "boolean": "int",
    "finite_int": "int",
    "nonneg_int": "int",
    "interval": "real",
}


@dataclass(frozen=True)
class ParamSpec:
    """One distribution parameter: its Pyro name, its constraint (a `CONSTRAINTS` name), its
    default when it may be left out, and how many of its rightmost dimensions are one event
    (1 for Dirichlet's concentration and Categorical's probs/logits)."""

    name: str
    constraint: str
    default: float | int | None = None
    required: bool = True
    event_rank: int = 0


@dataclass(frozen=True)
class DistSpec:
    """A distribution: parameters in Pyro's order, its support and event rank.

    `support_depends_on` names the parameters that move the support (Uniform's bounds,
    Binomial's total_count). `packed` names the parameters one network call fills when it
    stands alone as the only argument (``Normal(mlp(z))``); empty when that is not allowed.
    """

    name: str
    params: tuple[ParamSpec, ...]
    support: str
    alternatives: tuple[tuple[str, ...], ...] = ()
    discrete: bool = False
    finite: bool = False
    event_rank: int = 0
    support_depends_on: tuple[str, ...] = ()
    packed: tuple[str, ...] = ()

    def param(self, name: str) -> ParamSpec:
        """The parameter called `name` (KeyError if there is none)."""
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def alternative_group(self, name: str) -> tuple[str, ...] | None:
        """The group of alternatives `name` belongs to, if any."""
        for group in self.alternatives:
            if name in group:
                return group
        return None

    def packed_params(self) -> tuple[ParamSpec, ...]:
        """The parameters a lone network call produces, in Pyro order."""
        return tuple(self.param(n) for n in self.packed)

    def signature(self) -> str:
        """How a user calls it, for error hints.

        >>> DISTRIBUTIONS["Binomial"].signature()
        'Binomial(total_count=1, probs= or logits=)'
        """
        parts: list[str] = []
        for p in self.params:
            group = self.alternative_group(p.name)
            if group and p.name != group[0]:
                continue
            if group:
                parts.append(" or ".join(f"{n}=" for n in group))
            elif p.default is not None:
                parts.append(f"{p.name}={p.default}")
            else:
                parts.append(p.name)
        return f"{self.name}({', '.join(parts)})"


def _p(name: str, constraint: str, default=None, event_rank: int = 0) -> ParamSpec:
    return ParamSpec(name, constraint, default, default is None, event_rank)


def _probs_logits(event_rank: int = 0, probs: str = "unit") -> tuple[ParamSpec, ParamSpec]:
    return (
        ParamSpec("probs", probs, None, False, event_rank),
        ParamSpec("logits", "real", None, False, event_rank),
    )


_PL = (("probs", "logits"),)

DISTRIBUTIONS: dict[str, DistSpec] = {
    d.name: d
    for d in (
        DistSpec("Normal", (_p("loc", "real"), _p("scale", "positive")), "real",
                 packed=("loc", "scale")),
        DistSpec("LogNormal", (_p("loc", "real"), _p("scale", "positive")), "positive",
                 packed=("loc", "scale")),
        DistSpec("HalfNormal", (_p("scale", "positive"),), "positive", packed=("scale",)),
        DistSpec("Laplace", (_p("loc", "real"), _p("scale", "positive")), "real",
                 packed=("loc", "scale")),
        # loc and scale have defaults in Pyro, but a network standing in for all of
        # StudentT's parameters is expected to produce them too.
        DistSpec("StudentT", (_p("df", "positive"), _p("loc", "real", 0.0),
                              _p("scale", "positive", 1.0)), "real",
                 packed=("df", "loc", "scale")),
        DistSpec("Cauchy", (_p("loc", "real"), _p("scale", "positive")), "real",
                 packed=("loc", "scale")),
        DistSpec("HalfCauchy", (_p("scale", "positive"),), "positive", packed=("scale",)),
        DistSpec("Gamma", (_p("concentration", "positive"), _p("rate", "positive")), "positive",
                 packed=("concentration", "rate")),
        DistSpec("Beta", (_p("concentration1", "positive"), _p("concentration0", "positive")),
                 "unit", packed=("concentration1", "concentration0")),
        DistSpec("Exponential", (_p("rate", "positive"),), "positive", packed=("rate",)),
        # One network cannot produce both bounds: nothing would keep high above low.
        DistSpec("Uniform", (_p("low", "real"), _p("high", "real")), "interval",
                 support_depends_on=("low", "high")),
        DistSpec("Dirichlet", (_p("concentration", "positive", event_rank=1),), "simplex",
                 event_rank=1, packed=("concentration",)),
        DistSpec("Bernoulli", _probs_logits(), "boolean", _PL, discrete=True, finite=True,
                 packed=("logits",)),
        DistSpec("ContinuousBernoulli", _probs_logits(), "unit", _PL, packed=("logits",)),
        DistSpec("Categorical", _probs_logits(1, "simplex"), "finite_int", _PL, discrete=True,
                 finite=True, packed=("logits",)),
        DistSpec("Binomial", (_p("total_count", "nonneg_int", 1),) + _probs_logits(),
                 "finite_int", _PL, discrete=True, finite=True,
                 support_depends_on=("total_count",), packed=("logits",)),
        DistSpec("Poisson", (_p("rate", "positive"),), "nonneg_int", discrete=True,
                 packed=("rate",)),
        DistSpec("NegativeBinomial", (_p("total_count", "positive"),) + _probs_logits(),
                 "nonneg_int", _PL, discrete=True, packed=("total_count", "logits")),
        DistSpec("Geometric", _probs_logits(), "nonneg_int", _PL, discrete=True,
                 packed=("logits",)),
    )
}


@dataclass(frozen=True)
class BuiltinSpec:
    """A built-in function: how many positional arguments it takes (min, max; None = any)
    and its shape rule, one of:

    * "elementwise" — one argument, same shape (exp, log, sin, ...);
    * "broadcast" — element-wise on several arguments, numpy-broadcast to one shape (min,
      max, clamp);
    * "last_dim" — one argument of at least one dimension, same shape, acts on the last
      dimension (softmax, log_softmax);
    * "reduce" — one argument, reduced over all its event dimensions to a scalar (sum, mean);
    * "dot" — two vectors of one length, a scalar;
    * "matmul" — numpy's matmul on event shapes;
    * "concat" — arrays of one rank >= 1 joined along the last dimension;
    * "onehot" — an int value and a constant class count K: the value's shape plus (K,);
    * "fill" — constant positive integer dimensions: an array of that shape (zeros, ones).
    """

    name: str
    arity: tuple[int, int | None]
    shape_rule: str


BUILTINS: dict[str, BuiltinSpec] = {
    b.name: b
    for b in (
        *(BuiltinSpec(n, (1, 1), "elementwise")
          for n in ("exp", "log", "sqrt", "abs", "sigmoid", "softplus", "tanh", "relu", "sin", "cos")),
        BuiltinSpec("min", (2, 2), "broadcast"),
        BuiltinSpec("max", (2, 2), "broadcast"),
        BuiltinSpec("clamp", (3, 3), "broadcast"),
        BuiltinSpec("softmax", (1, 1), "last_dim"),
        BuiltinSpec("log_softmax", (1, 1), "last_dim"),
        BuiltinSpec("sum", (1, 1), "reduce"),
        BuiltinSpec("mean", (1, 1), "reduce"),
        BuiltinSpec("dot", (2, 2), "dot"),
        BuiltinSpec("matmul", (2, 2), "matmul"),
        BuiltinSpec("concat", (1, None), "concat"),
        BuiltinSpec("onehot", (2, 2), "onehot"),
        BuiltinSpec("zeros", (1, None), "fill"),
        BuiltinSpec("ones", (1, None), "fill"),
    )
}

#: Network builders and their options (with defaults). `hidden` is the hidden layer sizes,
#: `channels` the channel counts of a deconv's transposed-convolution layers.
NETWORKS: dict[str, dict[str, object]] = {
    "mlp": {"hidden": (256,), "activation": "relu"},
    "deconv": {"channels": (64, 32), "activation": "relu"},
    # a recurrent cell: `cell(state, input)` is the new state (torch's GRUCell); hidden, the
    # state's size, is read from the state when not given
    "gru": {"hidden": ()},
}

#: Activation names a network may use (`activation = tanh`); torch.nn has a module for each.
ACTIVATIONS = ("relu", "tanh", "sigmoid", "softplus", "elu", "leaky_relu", "gelu", "silu")

#: Guide families of `guide(family = ...)`.
GUIDE_FAMILIES = ("normal", "mvn", "flow", "delta")

#: Options of `guide(...)` on a latent or global declaration.
GUIDE_OPTIONS = ("hidden", "family")

#: Every name a variable may not take.
RESERVED = frozenset(DISTRIBUTIONS) | frozenset(BUILTINS) | frozenset(NETWORKS)
