"""The checker's error catalogue (stanc3's `Semantic_error`): one small constructor per
mistake about names, roles, model structure, distribution arguments, types, guides and
constraints, saying what went wrong and then what was expected. Shapes, dimensions, indices,
functions, networks and consts are in `dgmlang.check_shape_errors`.

>>> print(unknown_distribution("Normall", None))
unknown distribution 'Normall'
    hint: did you mean 'Normal'?
"""
from __future__ import annotations

from typing import Iterable

from dgmlang import ast
from dgmlang import check_ranges as ranges
from dgmlang.check_ranges import Range
from dgmlang.check_shapes import Shape, fmt_value
from dgmlang.check_spans import line_of
from dgmlang.check_values import Dep
from dgmlang.distributions import (
    DISTRIBUTIONS,
    DistSpec,
    GUIDE_FAMILIES,
    GUIDE_OPTIONS,
    NETWORKS,
    ParamSpec,
)
from dgmlang.errors import (
    DGMError,
    DGMGuideError,
    DGMModelError,
    DGMNameError,
    DGMTypeError,
    did_you_mean,
)
from dgmlang.source import Span


ROLE_WORDS = {
    "data": "data variable",
    "input": "input",
    "latent": "latent",
    "global": "global",
    "param": "param",
    "const": "const",
}


def model_declared_twice(model: ast.ModelDef, first: ast.ModelDef) -> DGMError:
    return DGMNameError(
        f"two models are named '{model.name}'",
        model.name_span or model.span,
        hint=f"the first is at line {line_of(first.span)}; give each model its own name",
    )


def unknown_name(name: str, span: Span | None, candidates: Iterable[str]) -> DGMError:
    return DGMNameError(f"unknown name '{name}'", span, hint=did_you_mean(name, candidates))


def unknown_target(name: str, span: Span | None, undrawn: list[str]) -> DGMError:
    hint = did_you_mean(name, undrawn)
    if hint is None:
        if undrawn:
            names = ", ".join(f"'{n}'" for n in undrawn)
            hint = f"declare it first; these have no distribution yet: {names}"
        else:
            hint = f"declare it first, e.g. `latent {name}` or `data {name}`"
    return DGMNameError(f"unknown name '{name}'", span, hint=hint)


def declared_twice(name: str, span: Span | None, first: Span | None) -> DGMError:
    return DGMNameError(
        f"'{name}' is declared twice",
        span,
        hint=f"it is first declared at line {line_of(first)}; every name is declared once",
    )


def reserved_name(name: str, span: Span | None) -> DGMError:
    if name in DISTRIBUTIONS:
        what = "a distribution"
    elif name in NETWORKS:
        what = "a network builder"
    else:
        what = "a built-in function"
    return DGMNameError(
        f"'{name}' is {what} and cannot name a variable", span, hint="choose another name"
    )


def unknown_function(name: str, span: Span | None, candidates: Iterable[str]) -> DGMError:
    return DGMNameError(f"unknown function '{name}'", span, hint=did_you_mean(name, candidates))


def unknown_distribution(name: str, span: Span | None) -> DGMError:
    return DGMNameError(
        f"unknown distribution '{name}'",
        span,
        hint=did_you_mean(name, DISTRIBUTIONS)
        or "the distributions are " + ", ".join(DISTRIBUTIONS),
    )


def not_a_distribution(name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"'{name}' is not a distribution",
        span,
        hint="after '~' comes a distribution, such as Normal(0, 1)",
    )


def distribution_as_value(name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"the distribution {name} cannot be used as a value",
        span,
        hint=f"draw a variable from it with '~' and use the variable, e.g. `v ~ {name}(...)`",
    )


def not_callable(name: str, what: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"'{name}' is {what}, not a function or network", span, hint="only functions and networks are called"
    )


def net_as_value(name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"network '{name}' is used without its inputs", span, hint=f"call it, e.g. {name}(z)"
    )


def function_as_value(name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"'{name}' is a function, not a value", span, hint=f"call it, e.g. {name}(x)"
    )


def no_distribution(var: ast.Decl) -> DGMError:
    return DGMModelError(
        f"{ROLE_WORDS[var.role]} '{var.name}' has no distribution",
        var.name_span or var.span,
        hint=f"add a statement such as `{var.name} ~ Normal(0, 1)`; every data, latent "
        "and global variable has exactly one",
    )


def two_distributions(name: str, span: Span | None, first: Span | None) -> DGMError:
    return DGMModelError(
        f"'{name}' has two distributions",
        span,
        hint=f"the first is at line {line_of(first)}; a variable has exactly one",
    )


def not_random(name: str, role: str, span: Span | None) -> DGMError:
    hints = {
        "input": "an input is given, never modeled; declare it `data` to model it",
        "param": "a param is a learned point estimate without a prior; declare it `global` "
        "to give it one",
        "const": "a const is a fixed value",
    }
    return DGMTypeError(
        f"{ROLE_WORDS[role]} '{name}' cannot have a distribution", span, hint=hints[role]
    )


def not_a_variable(name: str, what: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"'{name}' is {what}, not a variable, so it cannot have a distribution",
        span,
        hint="only data, latent and global variables are drawn with '~'",
    )


def global_depends_on_local(name: str, dep: "Dep", role: str) -> DGMError:
    through = f" (through let '{dep.via}')" if dep.via else ""
    return DGMModelError(
        f"global '{name}' depends on the per-data-point {ROLE_WORDS[role]} '{dep.name}'{through}",
        dep.span,
        hint="a global is shared by all data points: its distribution may use only globals, "
        "params, consts and numbers",
    )


def let_cycle(cycle: list[str], span: Span | None) -> DGMError:
    path = " -> ".join(cycle + [cycle[0]])
    return DGMModelError(
        f"let '{cycle[0]}' depends on itself: {path}",
        span,
        hint="a let is computed from variables and other lets, without going round in a circle",
    )


def const_cycle(name: str, span: Span | None) -> DGMError:
    return DGMModelError(f"const '{name}' depends on itself", span)


def unused_net(name: str, span: Span | None) -> DGMError:
    return DGMModelError(
        f"network '{name}' is never called",
        span,
        hint=f"call it on its inputs, e.g. `{name}(z)`, or remove it; its sizes come from its calls",
    )


def too_many_args(spec: DistSpec, given: int, span: Span | None) -> DGMError:
    n = len(spec.params)
    return DGMTypeError(
        f"{spec.name} takes at most {n} argument{'s' if n > 1 else ''}, got {given}",
        span,
        hint=f"write {spec.signature()}",
    )


def unknown_argument(spec: DistSpec, name: str, span: Span | None, missing: list[str]) -> DGMError:
    hint = did_you_mean(name, spec.param_names)
    if hint is None and missing:
        hint = f"did you mean '{missing[0]}'? {spec.name} takes {spec.signature()[len(spec.name):]}"
    return DGMTypeError(
        f"{spec.name} has no argument '{name}'",
        span,
        hint=hint or f"write {spec.signature()}",
    )


def duplicate_argument(spec: DistSpec, name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"{spec.name}'s argument '{name}' is given twice",
        span,
        hint=f"it is already given by position; write {spec.signature()}",
    )


def missing_argument(spec: DistSpec, name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"{spec.name} is missing its argument '{name}'",
        span,
        hint=f"write {spec.signature()}; only a network call may stand alone for all the "
        f"arguments, as in {spec.name}(mlp(z))",
    )


def missing_alternative(spec: DistSpec, group: tuple[str, ...], span: Span | None) -> DGMError:
    return DGMTypeError(
        f"{spec.name} needs '{group[0]}' or '{group[1]}'",
        span,
        hint=f"write {spec.signature()}, e.g. {spec.name}({group[1]} = mlp(z))",
    )


def both_alternatives(spec: DistSpec, group: tuple[str, ...], span: Span | None) -> DGMError:
    return DGMTypeError(
        f"{spec.name} takes '{group[0]}' or '{group[1]}', not both",
        span,
        hint=f"remove one of them; write {spec.signature()}",
    )


CONSTRAINT_WORDS = {
    "positive": "positive",
    "unit": "between 0 and 1",
    "simplex": "non-negative and sum to 1 along the last dimension",
    "nonneg_int": "a non-negative integer",
}


def bad_literal(spec: DistSpec, param: ParamSpec, value, span: Span | None) -> DGMError:
    shown = value if not isinstance(value, tuple) else fmt_value(value)
    return DGMTypeError(
        f"{spec.name}'s {param.name} must be {CONSTRAINT_WORDS[param.constraint]}, got {shown}",
        span,
    )


def count_not_int(spec: DistSpec, param: ParamSpec, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"{spec.name}'s {param.name} must be a non-negative integer",
        span,
        hint="give a whole number, an int const or an `input n : int`",
    )


def cannot_pack(spec: DistSpec, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"one network cannot produce all of {spec.name}'s arguments",
        span,
        hint=f"give them one by one: {spec.signature()}",
    )


def net_cannot_produce(spec: DistSpec, param: ParamSpec, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"a network cannot produce {spec.name}'s {param.name}, which is a count",
        span,
        hint="give a whole number, an int const or an `input n : int`",
    )


def declared_type_mismatch(name: str, declared: str, spec: DistSpec, actual: str, span) -> DGMError:
    return DGMTypeError(
        f"'{name}' is declared {declared}, but {spec.name} gives {actual} values",
        span,
        hint="a variable's type follows its distribution: remove the type or change the distribution",
    )


def param_int(name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"param '{name}' cannot be int: params are learned by gradient steps",
        span,
        hint="use a const for a fixed integer, or an `input` given with the data",
    )


def guide_on_role(role: str, span: Span | None) -> DGMError:
    return DGMGuideError(
        f"a {ROLE_WORDS[role]} has no guide, so it takes no guide options",
        span,
        hint="guide(...) follows a latent or global declaration",
    )


def unknown_guide_option(name: str, span: Span | None) -> DGMError:
    return DGMGuideError(
        f"unknown guide option '{name}'",
        span,
        hint=did_you_mean(name, GUIDE_OPTIONS) or "the options are hidden and family",
    )


def unknown_family(name: str, span: Span | None) -> DGMError:
    return DGMGuideError(
        f"unknown guide family '{name}'",
        span,
        hint=did_you_mean(name, GUIDE_FAMILIES)
        or "the families are " + ", ".join(GUIDE_FAMILIES),
    )


def family_on_discrete(name: str, spec: DistSpec, span: Span | None) -> DGMError:
    return DGMGuideError(
        f"'{name}' is discrete ({spec.name}), so a guide family does not apply",
        span,
        hint="a discrete latent is summed out exactly; remove `family`",
    )


def unbounded_discrete(name: str, role: str, spec: DistSpec, span) -> DGMError:
    return DGMGuideError(
        f"{ROLE_WORDS[role]} '{name}' cannot be inferred: {spec.name} is discrete with "
        "unbounded support (0, 1, 2, ...)",
        span,
        hint="it can be neither summed out exactly nor reparameterized; observe it as "
        "`data`, or use a finite distribution such as Binomial or Categorical",
    )


def discrete_global(name: str, spec: DistSpec, span: Span | None) -> DGMError:
    return DGMGuideError(
        f"global '{name}' cannot be discrete ({spec.name})",
        span,
        hint="globals are inferred with continuous variational parameters; make it a "
        "latent (one per data point) or a param",
    )


def support_depends(name: str, spec: DistSpec, param: str, dep: "Dep", span) -> DGMError:
    return DGMGuideError(
        f"the support of '{name}' depends on the random variable '{dep.name}' "
        f"(through {spec.name}'s {param})",
        span,
        hint="a guide needs a support fixed in advance: use fixed bounds, or transform a "
        "variable with fixed support (e.g. s * u with u ~ Uniform(0, 1))",
    )


def data_support_depends(name: str, spec: DistSpec, param: str, dep: Dep, role: str) -> DGMError:
    through = f", through let '{dep.via}'" if dep.via else ""
    return DGMGuideError(
        f"the support of data variable '{name}' depends on the {ROLE_WORDS[role]} '{dep.name}' "
        f"(through {spec.name}'s {param}{through})",
        dep.span,
        hint=f"values of '{dep.name}' that the guide draws or sums over can leave observed values "
        f"of '{name}' outside the support (the data would be impossible); use bounds that do not "
        "move with a latent or global (numbers, consts, params, inputs)",
    )


def count_not_fixed(name: str, spec: DistSpec, span: Span | None) -> DGMError:
    return DGMGuideError(
        f"latent '{name}' needs a fixed total_count to be summed out",
        span,
        hint=f"give {spec.name} a number or an int const as its total_count",
    )


def discrete_latent_vector(name: str, shape: Shape, span: Span | None) -> DGMError:
    return DGMGuideError(
        f"discrete latent '{name}' has shape {list(shape)}; only scalar discrete latents can "
        "be summed out",
        span,
        hint="declare one scalar latent per component",
    )


_TYPE_FOR = {"positive": "positive", "unit": "unit", "simplex": "simplex"}


def _range_hint(constraint: str, text: str, declare: list[str], net: bool = False) -> str:
    """How to make a value fit `constraint`: declare the params or inputs it reads with a
    type (`declare`: their declarations), let a network map its output (`net`: the value
    is computed from one), else map it."""
    if net:
        onto = {"positive": "positive values", "unit": "(0, 1)", "simplex": "a simplex"}[constraint]
        return (f"a network call that is the whole argument is mapped onto {onto} by itself; "
                "arithmetic on its output is not")
    if declare:
        typed = " and ".join(f"`{d} : {_TYPE_FOR[constraint]}`" for d in declare)
        return f"declare it {typed}" if len(declare) == 1 else f"declare {typed}"
    shown = text if len(text) <= 24 else "..."
    if constraint == "positive":
        return f"map it onto positive values, e.g. softplus({shown}) or exp({shown})"
    if constraint == "unit":
        return f"map it into (0, 1) with sigmoid({shown}), or give it as logits instead of probs"
    return f"map it onto a simplex with softmax({shown}), or give it as logits instead of probs"


def not_shown(spec: DistSpec, param: ParamSpec, text: str, value_range: Range, declare: list[str],
               net: bool, span: Span | None) -> DGMError:
    constraint = param.constraint
    return DGMTypeError(
        f"{spec.name}'s {param.name} must be {CONSTRAINT_WORDS[constraint]}, but '{text}' "
        f"{ranges.problem(value_range, constraint)}",
        span,
        hint=_range_hint(constraint, text, declare, net),
    )


def outside_domain(func: str, needs: str, text: str, why: str, declare: list[str],
                    span: Span | None) -> DGMError:
    hint = "outside it the value is NaN"
    if func == "log":
        hint = "log(0) is -inf and the log of a negative number NaN"
    return DGMTypeError(
        f"{func} needs {needs}, but '{text}' {why}",
        span,
        hint=f"{hint}; " + _range_hint("positive", text, declare),
    )


def bounds_not_ordered(text_low: str, text_high: str, known: bool, span: Span | None) -> DGMError:
    what = "is not above" if known else "is not known to be above"
    return DGMTypeError(
        f"Uniform's high must be above its low, but '{text_high}' {what} '{text_low}'",
        span,
        hint="give bounds whose order is fixed, e.g. Uniform(0, 1) or Uniform(-1, exp(a))",
    )
