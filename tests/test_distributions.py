"""The distribution registry agrees with torch/Pyro: parameter names and order, constraints,
supports, event ranks; the built-in and network tables cover the language."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
import torch.distributions as td
from torch.distributions import constraints

from dgmlang.distributions import (
    ACTIVATIONS,
    BUILTINS,
    CONSTRAINTS,
    DISTRIBUTIONS,
    GUIDE_FAMILIES,
    NETWORKS,
    RESERVED,
    SUPPORT_TYPES,
    SUPPORTS,
)

LANGUAGE = Path("/work/shared/LANGUAGE.md")
NAMES = [
    "Normal", "LogNormal", "HalfNormal", "Laplace", "StudentT", "Cauchy", "HalfCauchy", "Gamma",
    "Beta", "Exponential", "Uniform", "Dirichlet", "Bernoulli", "ContinuousBernoulli",
    "Categorical", "Binomial", "Poisson", "NegativeBinomial", "Geometric",
]


def test_every_distribution_of_the_language_is_registered():
    assert sorted(DISTRIBUTIONS) == sorted(NAMES)


def _example(spec) -> td.Distribution:
    """An instance of the torch class with a valid value for each parameter we give."""
    values = {"real": 0.3, "positive": 2.0, "unit": 0.4, "nonneg_int": 3}
    kwargs = {}
    for p in spec.params:
        group = spec.alternative_group(p.name)
        if group and p.name != group[-1]:
            continue  # give logits, the last of probs/logits
        if spec.name == "Uniform":
            kwargs = {"low": torch.tensor(0.0), "high": torch.tensor(1.0)}
            break
        value = torch.tensor(values[p.constraint])
        if p.event_rank == 1:
            value = value.expand(3).clone()
        kwargs[p.name] = value
    return getattr(td, spec.name)(**kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_parameters_are_in_pyros_positional_order(name):
    spec = DISTRIBUTIONS[name]
    signature = inspect.signature(getattr(td, name).__init__)
    torch_params = [p for p in signature.parameters if p not in ("self", "validate_args", "lims")]
    assert list(spec.param_names) == torch_params
    for p in spec.params:
        default = signature.parameters[p.name].default
        if p.default is not None:
            assert p.default == default
        assert p.required == (default is inspect.Parameter.empty)


# The torch constraint classes each of our constraint names stands for.
_TORCH_CONSTRAINT = {
    "real": {"_Real"},
    "positive": {"_GreaterThan", "_GreaterThanEq"},
    "unit": {"_Interval", "_HalfOpenInterval"},
    "simplex": {"_Simplex"},
    "nonneg_int": {"_IntegerGreaterThan"},
}


@pytest.mark.parametrize("name", NAMES)
def test_parameter_constraints_match_torch(name):
    spec = DISTRIBUTIONS[name]
    arg_constraints = getattr(td, name).arg_constraints
    if isinstance(arg_constraints, property):  # Uniform's depend on its values
        assert [p.constraint for p in spec.params] == ["real", "real"]
        return
    for p in spec.params:
        assert p.constraint in CONSTRAINTS
        theirs = arg_constraints[p.name]
        base = theirs.base_constraint if isinstance(theirs, constraints.independent) else theirs
        assert type(base).__name__ in _TORCH_CONSTRAINT[p.constraint], (p.name, theirs)
        assert p.event_rank == theirs.event_dim, p.name


@pytest.mark.parametrize("name", NAMES)
def test_support_event_rank_and_discreteness_match_torch(name):
    spec = DISTRIBUTIONS[name]
    instance = _example(spec)
    assert spec.support in SUPPORTS and SUPPORT_TYPES[spec.support] in ("real", "int", "positive", "unit", "simplex")
    assert spec.event_rank == len(instance.event_shape)
    assert spec.discrete == instance.support.is_discrete
    assert spec.finite == bool(instance.has_enumerate_support)
    sample = instance.sample()
    assert bool(instance.support.check(sample).all())
    if spec.support == "positive":
        assert bool((sample >= 0).all())
    if spec.support in ("unit", "boolean"):
        assert bool(((sample >= 0) & (sample <= 1)).all())


@pytest.mark.parametrize("name", NAMES)
def test_packed_parameters_exist_and_can_come_from_a_network(name):
    spec = DISTRIBUTIONS[name]
    for p in spec.packed_params():
        assert p.constraint != "nonneg_int"
    assert all(n in spec.param_names for n in spec.packed)
    for group in spec.alternatives:
        assert sum(n in group for n in spec.packed) <= 1


def test_support_dependencies():
    assert DISTRIBUTIONS["Uniform"].support_depends_on == ("low", "high")
    assert DISTRIBUTIONS["Binomial"].support_depends_on == ("total_count",)
    assert not DISTRIBUTIONS["Normal"].support_depends_on


def test_builtins_are_the_languages():
    text = LANGUAGE.read_text() if LANGUAGE.exists() else ""
    listed = "exp log sqrt abs sigmoid softplus tanh relu softmax log_softmax sum mean dot matmul concat onehot zeros ones"
    if text:
        match = re.search(r"Built-in functions: `([^`]*)`", text.replace("\n", " "))
        assert match is not None
        listed = re.sub(r"\([^)]*\)", "", match.group(1))
    # the seed's spec lists the first built-ins; the language may add more (issue 16: sin cos
    # min max clamp), each listed in docs/language.md's table of built-in functions
    assert set(listed.split()) <= set(BUILTINS)
    table = (Path(__file__).parents[1] / "docs" / "language.md").read_text()
    assert all(f"`{name}" in table or f" {name}" in table for name in BUILTINS)


def test_activations_exist_in_torch():
    for name in ACTIVATIONS:
        assert callable(getattr(torch.nn.functional, name))
    assert NETWORKS["mlp"]["activation"] in ACTIVATIONS
    assert GUIDE_FAMILIES == ("normal", "mvn", "flow", "delta")


def test_reserved_names_cover_distributions_builtins_and_networks():
    assert set(DISTRIBUTIONS) | set(BUILTINS) | {"mlp", "deconv", "gru"} == RESERVED


def test_signature_for_hints():
    assert DISTRIBUTIONS["Normal"].signature() == "Normal(loc, scale)"
    assert DISTRIBUTIONS["StudentT"].signature() == "StudentT(df, loc=0.0, scale=1.0)"
    assert DISTRIBUTIONS["Categorical"].signature() == "Categorical(probs= or logits=)"
