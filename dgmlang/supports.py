"""The support of a variable: what values its data or input may take, for messages and checks.

`support_of(ir, var)` reads it from the variable's distribution (a `data` variable: with the
edges torch includes but the log-density does not, such as 0 for a Gamma, left out) or from
its declared type (an `input`). `dgmlang.data` checks every value against it; the
example is in `support_of`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.distributions import constraints

import pyro.distributions as pyro_dist

from dgmlang.facts import ModelFacts
from dgmlang.ir import Lit, ModelIR, Variable

__all__ = ["EDGE_HINTS", "Support", "support_of"]

@dataclass(frozen=True)
class Support:
    """What values a variable may take: a torch constraint (checked element-wise, or per
    last-dim row when `event_rank` is 1), the dtype family it is stored in, a placeholder
    inside the support (written into missing entries), and a description for messages."""

    constraint: constraints.Constraint
    description: str
    integer_dtype: bool = False  # stored as int64 (class labels, int inputs)
    event_rank: int = 0
    placeholder: float = 0.0


class _OpenInterval(constraints.Constraint):
    """Values strictly between `lower_bound` and `upper_bound` (Beta's support without its
    edges, where the density is 0 or infinite unless a concentration is 1)."""

    def __init__(self, lower_bound: float, upper_bound: float):
        self.lower_bound, self.upper_bound = lower_bound, upper_bound
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return (self.lower_bound < value) & (value < self.upper_bound)


class _PositiveSimplex(constraints.Constraint):
    """Rows of positive numbers summing to 1 (torch's simplex check, entries > 0: a
    Dirichlet's log-density at a 0 entry is infinite unless its concentration is 1)."""

    event_dim = 1

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return constraints.simplex.check(value) & (value > 0).all(-1)


#: Supports narrower than torch's, by distribution: the edges torch admits (``Gamma``'s 0,
#: ``Beta``'s 0 and 1, a ``Dirichlet`` entry 0) give a log-density of -inf or +inf for
#: every concentration but exactly 1 (Exponential, HalfNormal and HalfCauchy are finite at 0).
_STRICT_SUPPORTS: dict[str, constraints.Constraint] = {
    "Gamma": constraints.positive,
    "Beta": _OpenInterval(0.0, 1.0),
    "Dirichlet": _PositiveSimplex(),
}
EDGE_HINTS = {
    "Gamma": "a Gamma density at 0 is 0 or infinite unless its concentration is 1; "
             "shift or clip the data above 0 (e.g. x.clip(min=1e-6))",
    "Beta": "a Beta density at 0 and 1 is 0 or infinite unless its concentrations are 1; "
            "clip the data into (0, 1) (e.g. x.clip(1e-6, 1 - 1e-6))",
    "Dirichlet": "a Dirichlet density at a 0 entry is 0 or infinite unless its concentration "
                 "is 1; add a small amount to every entry and renormalize the row",
}


_REAL = Support(constraints.real, "a finite real number")
_DESCRIPTIONS = {
    "Real": "a finite real number",
    "GreaterThan": "a number > {lower_bound}",
    "GreaterThanEq": "a number >= {lower_bound}",
    "IntegerGreaterThan": "a whole number >= {lower_bound}",
    "Interval": "a number in [{lower_bound}, {upper_bound}]",
    "HalfOpenInterval": "a number in [{lower_bound}, {upper_bound})",
    "IntegerInterval": "a whole number in {lower_bound}..{upper_bound}",
    "Boolean": "0 or 1",
    "Integer": "a whole number",
    "Simplex": "a row of non-negative numbers summing to 1",
    "OpenInterval": "a number in ({lower_bound}, {upper_bound}), its ends excluded",
    "PositiveSimplex": "a row of numbers > 0 summing to 1",
}
_PLACEHOLDERS = {"GreaterThan": 1.0, "Interval": 0.5, "HalfOpenInterval": 0.5, "OpenInterval": 0.5}


def _support_of_constraint(constraint, *, integer_dtype: bool = False, event_rank: int = 0,
                           placeholder: float | None = None) -> Support:
    kind = type(constraint).__name__.lstrip("_")
    fields = {k: _number(v) for k, v in vars(constraint).items()}
    description = _DESCRIPTIONS.get(kind, "a value in the distribution's support").format(**fields)
    if placeholder is None:
        placeholder = _PLACEHOLDERS.get(kind, 0.0)
        if kind in ("GreaterThan", "GreaterThanEq", "IntegerGreaterThan"):
            # not on the boundary: some densities are infinite or undefined there (Gamma at 0)
            placeholder = float(fields["lower_bound"]) + (kind != "IntegerGreaterThan")
        elif kind in ("Interval", "HalfOpenInterval", "IntegerInterval"):
            lo, hi = float(fields["lower_bound"]), float(fields["upper_bound"])
            placeholder = lo if kind == "IntegerInterval" else (lo + hi) / 2
    return Support(constraint, description, integer_dtype, event_rank, placeholder)


def _number(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _literal(expr) -> float | int | None:
    """The number a scalar literal argument holds, None for anything else."""
    if isinstance(expr, Lit) and isinstance(expr.value, (int, float)):
        return expr.value
    return None


def support_of(ir: ModelIR, var: Variable, *, facts: ModelFacts | None = None) -> Support:
    """The support a value of `var` must lie in: from its distribution for `data`, from its
    declared type for an `input`. `facts` (the model's `ModelFacts`, e.g.
    ``CheckedModel.facts``) saves building them again; the bounds that the *uses* of an
    integer value add (onehot, indices) are not part of the support (see `prepare_data`).

    >>> from dgmlang.ir import Draw, Lit, ModelIR, Variable
    >>> ir = ModelIR("m", (Variable("c", "data", ()),),
    ...              (Draw("c", "Categorical", (("logits", Lit((0.0, 0.0, 0.0), (3,))),)),))
    >>> support_of(ir, ir.variable("c")).description
    'a whole number in 0..2'
    """
    if var.role == "input":
        return _input_support(var)
    draw = ir.draw(var.name)
    params = dict(draw.params)
    if draw.steps:  # a sequence: its steps' arguments, where every run of steps agrees
        agreed = len({run.draw.params for run in draw.steps}) == 1
        params = dict(draw.steps[0].draw.params) if agreed else {}
        if not agreed and draw.dist in ("Binomial", "Uniform"):
            return _support_of_constraint(constraints.nonnegative_integer) if draw.dist == "Binomial" else _REAL
    if draw.dist == "Categorical":
        classes = (facts if facts is not None else ModelFacts(ir)).classes(var.name)
        return _support_of_constraint(constraints.integer_interval(0, classes - 1),
                                      integer_dtype=True)
    if draw.dist == "Binomial":
        total = _literal(params["total_count"]) if "total_count" in params else 1
        if total is None:
            return _support_of_constraint(constraints.nonnegative_integer)
        return _support_of_constraint(constraints.integer_interval(0, int(total)))
    if draw.dist == "Uniform":
        low, high = _literal(params.get("low")), _literal(params.get("high"))
        if low is None or high is None:
            return _REAL
        return _support_of_constraint(constraints.half_open_interval(low, high))
    support = _STRICT_SUPPORTS.get(draw.dist) or getattr(pyro_dist, draw.dist).support
    if isinstance(support, constraints.Constraint) and not constraints.is_dependent(support):
        event_rank = support.event_dim
        placeholder = None
        if isinstance(support, (type(constraints.simplex), _PositiveSimplex)):
            placeholder = 1.0 / var.shape[-1] if var.shape else 1.0
        return _support_of_constraint(support, event_rank=event_rank, placeholder=placeholder)
    return _REAL


def _input_support(var: Variable) -> Support:
    if var.type == "int":
        return _support_of_constraint(pyro_dist.constraints.integer, integer_dtype=True)
    if var.type == "positive":
        return _support_of_constraint(constraints.positive)
    if var.type == "unit":
        return _support_of_constraint(constraints.unit_interval)
    if var.type == "simplex":
        placeholder = 1.0 / var.shape[-1] if var.shape else 1.0
        return _support_of_constraint(constraints.simplex, event_rank=1, placeholder=placeholder)
    return _REAL
