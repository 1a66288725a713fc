"""Syntax tree to checked model: `check(program) -> tuple[ModelIR, ...]`, or a `DGMError`.

The checker resolves every name, role, shape and type of a model, binds each distribution's
arguments to their Pyro names, infers every network's output size from the parameter it
feeds, and rejects what later stages cannot serve. Independent errors are all reported
(`DGMErrors`); a statement that depends on something already reported is skipped quietly,
so one mistake gives one message.

>>> from dgmlang.parse import parse
>>> (vae,) = check(parse('''
... model vae {
...     data   x[64]
...     latent z[16]
...     z ~ Normal(0, 1)
...     x ~ Binomial(16, logits = mlp(z, hidden = [256, 256]))
... }''', "vae.dgm"))
>>> vae.draw("x").param("logits")
NetCall(net='mlp_1', args=(Ref(name='z', shape=(16,)),), shape=(64,), constraint='real')
>>> vae.net("mlp_1").input_sizes, vae.net("mlp_1").output_size
((16,), 64)
>>> try:
...     check(parse("model m {\\n  latent z\\n  z ~ Normal(0)\\n}", "m.dgm"))
... except DGMError as err:
...     print(err)
m.dgm:3:7: Normal is missing its argument 'scale'
      z ~ Normal(0)
          ^^^^^^^^^
    hint: write Normal(loc, scale); only a network call may stand alone for all the arguments, as in Normal(mlp(z))
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import networkx as nx

from dgmlang import ast
from dgmlang import check_ranges as ranges
from dgmlang import ir
from dgmlang.check_ranges import Range, leaves, value_fits
from dgmlang.distributions import (
    ACTIVATIONS,
    BUILTINS,
    DISTRIBUTIONS,
    GUIDE_FAMILIES,
    GUIDE_OPTIONS,
    NETWORKS,
    SUPPORT_TYPES,
    DistSpec,
    ParamSpec,
)
from dgmlang.errors import (
    DGMError,
    DGMErrors,
    DGMGuideError,
    DGMModelError,
    DGMNameError,
    DGMShapeError,
    DGMTypeError,
    did_you_mean,
)
from dgmlang.parse import paused_gc
from dgmlang.printer import format_expr
from dgmlang.source import Span

__all__ = ["check"]

Shape = tuple[int, ...]


def check(program: ast.Program) -> tuple[ir.ModelIR, ...]:
    """One checked `ModelIR` per model of `program`, in file order.

    Raises the `DGMError` when there is one mistake, `DGMErrors` (sorted by position) when
    there are several independent ones.
    """
    errors: list[DGMError] = []
    models: list[ir.ModelIR] = []
    first_model: dict[str, ast.ModelDef] = {}
    for model in program.models:
        if model.name in first_model:
            errors.append(_model_declared_twice(model, first_model[model.name]))
        else:
            first_model[model.name] = model
        checker = _ModelChecker(model)
        with paused_gc():
            result = checker.run()
        errors.extend(checker.errors)
        if result is not None:
            models.append(result)
    if errors:
        raise _combine(errors)
    return tuple(models)


def _combine(errors: list[DGMError]) -> DGMError:
    unique: list[DGMError] = []
    seen: set[tuple] = set()
    for err in errors:
        key = (type(err), err.message, _position(err.span))
        if key not in seen:
            seen.add(key)
            unique.append(err)
    return unique[0] if len(unique) == 1 else DGMErrors(unique)


# ====================================================================== error constructors
# One small function per mistake (stanc3's style): what went wrong, then what was expected.


def _fmt(shape: Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


_ROLE_WORDS = {
    "data": "data variable",
    "input": "input",
    "latent": "latent",
    "global": "global",
    "param": "param",
    "const": "const",
}


def _model_declared_twice(model: ast.ModelDef, first: ast.ModelDef) -> DGMError:
    return DGMNameError(
        f"two models are named '{model.name}'",
        model.name_span or model.span,
        hint=f"the first is at line {_line(first.span)}; give each model its own name",
    )


def _unknown_name(name: str, span: Span | None, candidates: Iterable[str]) -> DGMError:
    return DGMNameError(f"unknown name '{name}'", span, hint=did_you_mean(name, candidates))


def _unknown_target(name: str, span: Span | None, undrawn: list[str]) -> DGMError:
    hint = did_you_mean(name, undrawn)
    if hint is None:
        if undrawn:
            names = ", ".join(f"'{n}'" for n in undrawn)
            hint = f"declare it first; these have no distribution yet: {names}"
        else:
            hint = f"declare it first, e.g. `latent {name}` or `data {name}`"
    return DGMNameError(f"unknown name '{name}'", span, hint=hint)


def _declared_twice(name: str, span: Span | None, first: Span | None) -> DGMError:
    return DGMNameError(
        f"'{name}' is declared twice",
        span,
        hint=f"it is first declared at line {_line(first)}; every name is declared once",
    )


def _reserved_name(name: str, span: Span | None) -> DGMError:
    if name in DISTRIBUTIONS:
        what = "a distribution"
    elif name in NETWORKS:
        what = "a network builder"
    else:
        what = "a built-in function"
    return DGMNameError(
        f"'{name}' is {what} and cannot name a variable", span, hint="choose another name"
    )


def _unknown_function(name: str, span: Span | None, candidates: Iterable[str]) -> DGMError:
    return DGMNameError(f"unknown function '{name}'", span, hint=did_you_mean(name, candidates))


def _unknown_distribution(name: str, span: Span | None) -> DGMError:
    return DGMNameError(
        f"unknown distribution '{name}'",
        span,
        hint=did_you_mean(name, DISTRIBUTIONS)
        or "the distributions are " + ", ".join(DISTRIBUTIONS),
    )


def _not_a_distribution(name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"'{name}' is not a distribution",
        span,
        hint="after '~' comes a distribution, such as Normal(0, 1)",
    )


def _distribution_as_value(name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"the distribution {name} cannot be used as a value",
        span,
        hint=f"draw a variable from it with '~' and use the variable, e.g. `v ~ {name}(...)`",
    )


def _not_callable(name: str, what: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"'{name}' is {what}, not a function or network", span, hint="only functions and networks are called"
    )


def _net_as_value(name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"network '{name}' is used without its inputs", span, hint=f"call it, e.g. {name}(z)"
    )


def _function_as_value(name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"'{name}' is a function, not a value", span, hint=f"call it, e.g. {name}(x)"
    )


def _no_distribution(var: ast.Decl) -> DGMError:
    return DGMModelError(
        f"{_ROLE_WORDS[var.role]} '{var.name}' has no distribution",
        var.name_span or var.span,
        hint=f"add a statement such as `{var.name} ~ Normal(0, 1)`; every data, latent "
        "and global variable has exactly one",
    )


def _two_distributions(name: str, span: Span | None, first: Span | None) -> DGMError:
    return DGMModelError(
        f"'{name}' has two distributions",
        span,
        hint=f"the first is at line {_line(first)}; a variable has exactly one",
    )


def _not_random(name: str, role: str, span: Span | None) -> DGMError:
    hints = {
        "input": "an input is given, never modeled; declare it `data` to model it",
        "param": "a param is a learned point estimate without a prior; declare it `global` "
        "to give it one",
        "const": "a const is a fixed value",
    }
    return DGMTypeError(
        f"{_ROLE_WORDS[role]} '{name}' cannot have a distribution", span, hint=hints[role]
    )


def _not_a_variable(name: str, what: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"'{name}' is {what}, not a variable, so it cannot have a distribution",
        span,
        hint="only data, latent and global variables are drawn with '~'",
    )


def _global_depends_on_local(name: str, dep: "_Dep", role: str) -> DGMError:
    through = f" (through let '{dep.via}')" if dep.via else ""
    return DGMModelError(
        f"global '{name}' depends on the per-data-point {_ROLE_WORDS[role]} '{dep.name}'{through}",
        dep.span,
        hint="a global is shared by all data points: its distribution may use only globals, "
        "params, consts and numbers",
    )


def _let_cycle(cycle: list[str], span: Span | None) -> DGMError:
    path = " -> ".join(cycle + [cycle[0]])
    return DGMModelError(
        f"let '{cycle[0]}' depends on itself: {path}",
        span,
        hint="a let is computed from variables and other lets, without going round in a circle",
    )


def _const_cycle(name: str, span: Span | None) -> DGMError:
    return DGMModelError(f"const '{name}' depends on itself", span)


def _unused_net(name: str, span: Span | None) -> DGMError:
    return DGMModelError(
        f"network '{name}' is never called",
        span,
        hint=f"call it on its inputs, e.g. `{name}(z)`, or remove it; its sizes come from its calls",
    )


def _too_many_args(spec: DistSpec, given: int, span: Span | None) -> DGMError:
    n = len(spec.params)
    return DGMTypeError(
        f"{spec.name} takes at most {n} argument{'s' if n > 1 else ''}, got {given}",
        span,
        hint=f"write {spec.signature()}",
    )


def _unknown_argument(spec: DistSpec, name: str, span: Span | None, missing: list[str]) -> DGMError:
    hint = did_you_mean(name, spec.param_names)
    if hint is None and missing:
        hint = f"did you mean '{missing[0]}'? {spec.name} takes {spec.signature()[len(spec.name):]}"
    return DGMTypeError(
        f"{spec.name} has no argument '{name}'",
        span,
        hint=hint or f"write {spec.signature()}",
    )


def _duplicate_argument(spec: DistSpec, name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"{spec.name}'s argument '{name}' is given twice",
        span,
        hint=f"it is already given by position; write {spec.signature()}",
    )


def _missing_argument(spec: DistSpec, name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"{spec.name} is missing its argument '{name}'",
        span,
        hint=f"write {spec.signature()}; only a network call may stand alone for all the "
        f"arguments, as in {spec.name}(mlp(z))",
    )


def _missing_alternative(spec: DistSpec, group: tuple[str, ...], span: Span | None) -> DGMError:
    return DGMTypeError(
        f"{spec.name} needs '{group[0]}' or '{group[1]}'",
        span,
        hint=f"write {spec.signature()}, e.g. {spec.name}({group[1]} = mlp(z))",
    )


def _both_alternatives(spec: DistSpec, group: tuple[str, ...], span: Span | None) -> DGMError:
    return DGMTypeError(
        f"{spec.name} takes '{group[0]}' or '{group[1]}', not both",
        span,
        hint=f"remove one of them; write {spec.signature()}",
    )


_CONSTRAINT_WORDS = {
    "positive": "positive",
    "unit": "between 0 and 1",
    "simplex": "non-negative and sum to 1 along the last dimension",
    "nonneg_int": "a non-negative integer",
}


def _bad_literal(spec: DistSpec, param: ParamSpec, value, span: Span | None) -> DGMError:
    shown = value if not isinstance(value, tuple) else _fmt_value(value)
    return DGMTypeError(
        f"{spec.name}'s {param.name} must be {_CONSTRAINT_WORDS[param.constraint]}, got {shown}",
        span,
    )


def _count_not_int(spec: DistSpec, param: ParamSpec, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"{spec.name}'s {param.name} must be a non-negative integer",
        span,
        hint="give a whole number, an int const or an `input n : int`",
    )


def _cannot_pack(spec: DistSpec, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"one network cannot produce all of {spec.name}'s arguments",
        span,
        hint=f"give them one by one: {spec.signature()}",
    )


def _net_cannot_produce(spec: DistSpec, param: ParamSpec, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"a network cannot produce {spec.name}'s {param.name}, which is a count",
        span,
        hint="give a whole number, an int const or an `input n : int`",
    )


def _deconv_packed(spec: DistSpec, span: Span | None) -> DGMError:
    return DGMShapeError(
        f"a deconv network can feed only one of {spec.name}'s arguments",
        span,
        hint=f"give the others separately, e.g. {spec.name}(deconv(z), 0.1)",
    )


def _builtin_arity(name: str, arity: tuple[int, int | None], got: int, span) -> DGMError:
    low, high = arity
    if high is None:
        wanted = f"at least {low} argument{'s' if low > 1 else ''}"
    elif low == high:
        wanted = f"{low} argument{'s' if low > 1 else ''}"
    else:
        wanted = f"{low} to {high} arguments"
    return DGMTypeError(f"{name} takes {wanted}, got {got}", span, hint=_BUILTIN_USAGE[name])


def _builtin_keyword(name: str, keyword: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"{name} takes no argument '{keyword}'", span, hint=_BUILTIN_USAGE[name]
    )


_BUILTIN_USAGE = {
    **{n: f"write {n}(x)" for n in BUILTINS},
    "dot": "write dot(a, b) for two vectors of one length",
    "matmul": "write matmul(A, b)",
    "concat": "write concat(a, b, ...)",
    "onehot": "write onehot(y, K) for an int y and K classes",
    "zeros": "write zeros(n) or zeros(n, m)",
    "ones": "write ones(n) or ones(n, m)",
}


def _not_positive_int(what: str, value, span: Span | None) -> DGMError:
    return DGMShapeError(f"{what} must be a positive integer, got {value}", span)


def _not_constant_int(what: str, detail: str, span: Span | None) -> DGMError:
    return DGMShapeError(
        f"{what} must be a constant integer, but {detail}",
        span,
        hint="write a number or the name of an int const",
    )


def _param_shape(spec: DistSpec, param: str, shape: Shape, target: str, tshape: Shape, span) -> DGMError:
    return DGMShapeError(
        f"{spec.name}'s {param} has shape {_fmt(shape)}, which does not fit "
        f"'{target}' of shape {_fmt(tshape)}",
        span,
        hint=f"an argument is a scalar or broadcasts to the shape {_fmt(tshape)} of '{target}'",
    )


def _dirichlet_event(target: str, tshape: Shape, shape: Shape, span) -> DGMError:
    if not tshape:
        return DGMShapeError(
            f"Dirichlet draws a vector, but '{target}' is a scalar",
            span,
            hint=f"declare it with a size, e.g. `{target}[3]`",
        )
    return DGMShapeError(
        f"Dirichlet's concentration has shape {_fmt(shape)}, which does not fit "
        f"'{target}' of shape {_fmt(tshape)}",
        span,
        hint=f"its last dimension is the number of categories, {tshape[-1]} here",
    )


def _needs_vector(what: str, span: Span | None) -> DGMError:
    return DGMShapeError(
        f"{what} needs at least one dimension, but it is a scalar",
        span,
        hint="it has one entry per category, e.g. zeros(3)",
    )


def _cannot_broadcast(op: str, left: Shape, right: Shape, span) -> DGMError:
    return DGMShapeError(
        f"shapes {_fmt(left)} and {_fmt(right)} do not broadcast in '{op}'",
        span,
        hint="dimensions are matched from the right and must be equal or 1 (numpy's rule)",
    )


def _list_items_differ(first: Shape, other: Shape, span) -> DGMError:
    return DGMShapeError(
        f"list items have different shapes: {_fmt(first)} and {_fmt(other)}",
        span,
        hint="every item of a list has one shape",
    )


def _empty_list(span: Span | None) -> DGMError:
    return DGMShapeError("an empty list has no shape", span, hint="write zeros(n) for an array")


def _index_scalar(span: Span | None) -> DGMError:
    return DGMShapeError("cannot index a scalar", span, hint="only arrays have entries")


def _too_many_indices(shape: Shape, count: int, span) -> DGMError:
    return DGMShapeError(
        f"{count} indices for a value of shape {_fmt(shape)}",
        span,
        hint=f"it has {len(shape)} dimension{'s' if len(shape) != 1 else ''}",
    )


def _index_out_of_range(index: int, size: int, span) -> DGMError:
    return DGMShapeError(
        f"index {index} is out of range for a dimension of size {size}",
        span,
        hint=f"indices run from 0 to {size - 1} (or from -{size} to -1)",
    )


def _bound_out_of_range(name: str, bound: int, size: int, what: str, span) -> DGMError:
    return DGMShapeError(
        f"'{name}' takes values up to {bound - 1}, but {what} has size {size}",
        span,
        hint=f"'{name}' needs {bound} entries there",
    )


def _index_not_int(detail: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"an index must be an integer, but {detail}",
        span,
        hint="index with a number, an `input y : int` or a discrete variable (Categorical, ...)",
    )


def _index_not_scalar(shape: Shape, span: Span | None) -> DGMError:
    return DGMShapeError(
        f"an index must be a scalar, but this one has shape {_fmt(shape)}", span
    )


def _empty_slice(size: int, span: Span | None) -> DGMError:
    return DGMShapeError(
        f"this slice selects nothing from a dimension of size {size}", span
    )


def _slice_step_zero(span: Span | None) -> DGMError:
    return DGMShapeError("a slice step cannot be zero", span)


def _builtin_shapes(name: str, detail: str, span: Span | None, hint: str | None = None) -> DGMError:
    return DGMShapeError(f"{name}: {detail}", span, hint=hint)


def _onehot_not_int(detail: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"onehot needs an integer value, but {detail}",
        span,
        hint="declare it `input y : int` or draw it from a discrete distribution",
    )


def _net_size_unknown(name: str, why: str | None, span: Span | None) -> DGMError:
    return DGMShapeError(
        f"cannot infer the output size of network '{name}'",
        span,
        hint=why
        or "a network's output size comes from the distribution argument it feeds "
        "(possibly through element-wise functions and arithmetic)",
    )


def _net_sizes_disagree(name: str, what: str, first, now, first_span, span) -> DGMError:
    return DGMShapeError(
        f"network '{name}' {what} {now} here but {first} at its call on line {_line(first_span)}",
        span,
        hint="every call of a named network shares its weights, so its sizes must agree; "
        "use an anonymous mlp(...) for a different network",
    )


def _deconv_not_image(shape: Shape, span: Span | None) -> DGMError:
    return DGMShapeError(
        f"deconv produces an image shaped [C, H, W], but its output must have shape {_fmt(shape)} here",
        span,
        hint="use mlp(...) for values that are not images",
    )


def _net_without_inputs(name: str, named: bool, span: Span | None) -> DGMError:
    what = f"network '{name}'" if named else name
    return DGMTypeError(f"{what} needs at least one input", span, hint=f"write {name}(z, ...)")


def _unknown_net_option(kind: str, name: str, span: Span | None) -> DGMError:
    options = list(NETWORKS[kind])
    return DGMTypeError(
        f"{kind} has no option '{name}'",
        span,
        hint=did_you_mean(name, options) or "its options are " + ", ".join(options),
    )


def _unknown_activation(name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"unknown activation '{name}'",
        span,
        hint=did_you_mean(name, ACTIVATIONS) or "the activations are " + ", ".join(ACTIVATIONS),
    )


def _bad_size_list(option: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"{option} must be a list of positive integers",
        span,
        hint=f"e.g. {option} = [256, 256]",
    )


def _net_inputs_at_definition(name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"network '{name}' gets its inputs where it is called, not where it is defined",
        span,
        hint=f"write `net {name} = mlp(hidden = [...])`, then call `{name}(z)`",
    )


def _net_definition_not_network(name: str, func: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"'{func}' does not build a network",
        span,
        hint=did_you_mean(func, NETWORKS)
        or f"write `net {name} = mlp(hidden = [...])` or `deconv(channels = [...])`",
    )


def _options_at_call(name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"options of network '{name}' belong to its definition",
        span,
        hint=f"write them in `net {name} = mlp(...)`; a call gives only inputs",
    )


def _declared_type_mismatch(name: str, declared: str, spec: DistSpec, actual: str, span) -> DGMError:
    return DGMTypeError(
        f"'{name}' is declared {declared}, but {spec.name} gives {actual} values",
        span,
        hint="a variable's type follows its distribution: remove the type or change the distribution",
    )


def _param_int(name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"param '{name}' cannot be int: params are learned by gradient steps",
        span,
        hint="use a const for a fixed integer, or an `input` given with the data",
    )


def _simplex_scalar(name: str, span: Span | None) -> DGMError:
    return DGMShapeError(
        f"'{name}' is declared simplex but is a scalar",
        span,
        hint=f"a simplex is a vector, e.g. `{name}[3] : simplex`",
    )


def _bad_const(detail: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"a const must be a number or a list of numbers, but {detail}",
        span,
        hint="e.g. `const W = [[1, 0.5], [0.2, -1]]`",
    )


def _const_type(name: str, declared: str, span: Span | None) -> DGMError:
    return DGMTypeError(f"the value of const '{name}' is not {declared}", span)


def _const_dims(name: str, declared: Shape, actual: Shape, span) -> DGMError:
    return DGMShapeError(
        f"const '{name}' is declared with shape {_fmt(declared)} but its value has shape {_fmt(actual)}",
        span,
    )


def _guide_on_role(role: str, span: Span | None) -> DGMError:
    return DGMGuideError(
        f"a {_ROLE_WORDS[role]} has no guide, so it takes no guide options",
        span,
        hint="guide(...) follows a latent or global declaration",
    )


def _unknown_guide_option(name: str, span: Span | None) -> DGMError:
    return DGMGuideError(
        f"unknown guide option '{name}'",
        span,
        hint=did_you_mean(name, GUIDE_OPTIONS) or "the options are hidden and family",
    )


def _unknown_family(name: str, span: Span | None) -> DGMError:
    return DGMGuideError(
        f"unknown guide family '{name}'",
        span,
        hint=did_you_mean(name, GUIDE_FAMILIES)
        or "the families are " + ", ".join(GUIDE_FAMILIES),
    )


def _family_on_discrete(name: str, spec: DistSpec, span: Span | None) -> DGMError:
    return DGMGuideError(
        f"'{name}' is discrete ({spec.name}), so a guide family does not apply",
        span,
        hint="a discrete latent is summed out exactly; remove `family`",
    )


def _unbounded_discrete(name: str, role: str, spec: DistSpec, span) -> DGMError:
    return DGMGuideError(
        f"{_ROLE_WORDS[role]} '{name}' cannot be inferred: {spec.name} is discrete with "
        "unbounded support (0, 1, 2, ...)",
        span,
        hint="it can be neither summed out exactly nor reparameterized; observe it as "
        "`data`, or use a finite distribution such as Binomial or Categorical",
    )


def _discrete_global(name: str, spec: DistSpec, span: Span | None) -> DGMError:
    return DGMGuideError(
        f"global '{name}' cannot be discrete ({spec.name})",
        span,
        hint="globals are inferred with continuous variational parameters; make it a "
        "latent (one per data point) or a param",
    )


def _support_depends(name: str, spec: DistSpec, param: str, dep: "_Dep", span) -> DGMError:
    return DGMGuideError(
        f"the support of '{name}' depends on the random variable '{dep.name}' "
        f"(through {spec.name}'s {param})",
        span,
        hint="a guide needs a support fixed in advance: use fixed bounds, or transform a "
        "variable with fixed support (e.g. s * u with u ~ Uniform(0, 1))",
    )


def _count_not_fixed(name: str, spec: DistSpec, span: Span | None) -> DGMError:
    return DGMGuideError(
        f"latent '{name}' needs a fixed total_count to be summed out",
        span,
        hint=f"give {spec.name} a number or an int const as its total_count",
    )


def _discrete_latent_vector(name: str, shape: Shape, span: Span | None) -> DGMError:
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


def _not_shown(spec: DistSpec, param: ParamSpec, text: str, value_range: Range, declare: list[str],
               net: bool, span: Span | None) -> DGMError:
    constraint = param.constraint
    return DGMTypeError(
        f"{spec.name}'s {param.name} must be {_CONSTRAINT_WORDS[constraint]}, but '{text}' "
        f"{ranges.problem(value_range, constraint)}",
        span,
        hint=_range_hint(constraint, text, declare, net),
    )


def _outside_domain(func: str, needs: str, text: str, why: str, declare: list[str],
                    span: Span | None) -> DGMError:
    hint = "outside it the value is NaN"
    if func == "log":
        hint = "log(0) is -inf and the log of a negative number NaN"
    return DGMTypeError(
        f"{func} needs {needs}, but '{text}' {why}",
        span,
        hint=f"{hint}; " + _range_hint("positive", text, declare),
    )


def _bounds_not_ordered(text_low: str, text_high: str, known: bool, span: Span | None) -> DGMError:
    what = "is not above" if known else "is not known to be above"
    return DGMTypeError(
        f"Uniform's high must be above its low, but '{text_high}' {what} '{text_low}'",
        span,
        hint="give bounds whose order is fixed, e.g. Uniform(0, 1) or Uniform(-1, exp(a))",
    )


def _categorical_classes_unknown(spec: DistSpec) -> str:
    return (
        f"{spec.name}'s number of classes is not written anywhere; write it into the "
        "expression, e.g. `logits = mlp(z) + zeros(K)`"
    )


# ====================================================================== small helpers


def _line(span: Span | None) -> str:
    return str(span.line) if span is not None else "?"


def _position(span: Span | None) -> tuple:
    return (span.file, span.line, span.col) if span is not None else ("", 0, 0)


def _head(span: Span | None, length: int) -> Span | None:
    """The first `length` characters of `span` (on its first line)."""
    if span is None:
        return None
    return Span(span.file, span.line, span.col, span.line, span.col + length, source=span.source)


def _name_in(span: Span | None, name: str) -> Span | None:
    """The span of the first whole-word `name` on `span`'s first line (`let NAME = ...`)."""
    if span is None or span.source is None:
        return span
    text = span.source.line(span.line)
    start = span.col - 1
    while True:
        at = text.find(name, start)
        if at < 0:
            return span
        before = text[at - 1] if at > 0 else " "
        after = text[at + len(name)] if at + len(name) < len(text) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            return Span(span.file, span.line, at + 1, span.line, at + 1 + len(name), source=span.source)
        start = at + 1


def _broadcast(a: Shape, b: Shape) -> Shape | None:
    """numpy's broadcast of two shapes, or None."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and x != 1 and y != 1:
            return None
        out.append(max(x, y) if x != 1 and y != 1 else (y if x == 1 else x))
    return tuple(reversed(out))


def _broadcasts_to(shape: Shape, target: Shape) -> bool:
    return _broadcast(shape, target) == target


def _flat(shape: Shape) -> int:
    return math.prod(shape)


def _fmt_value(value) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_fmt_value(v) for v in value) + "]"
    return repr(value)


def _walk(expr) -> Iterator:
    """Every node of an expression, in source order (pre-order, left to right), iteratively."""
    stack = [expr]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        yield node
        if isinstance(node, ast.Call):
            children = [*node.args, *(k.value for k in node.kwargs)]
        elif isinstance(node, ast.BinOp):
            children = [node.left, node.right]
        elif isinstance(node, ast.UnaryOp):
            children = [node.operand]
        elif isinstance(node, ast.ListExpr):
            children = list(node.items)
        elif isinstance(node, ast.Index):
            children = [node.value, *node.indices]
        elif isinstance(node, ast.Slice):
            children = [node.start, node.stop, node.step]
        elif isinstance(node, ast.Keyword):
            children = [node.value]
        else:
            children = []
        stack.extend(reversed(children))


# ====================================================================== internal values


class _Skip(Exception):
    """Stop checking this statement: its cause was reported already (no cascades)."""


@dataclass(frozen=True)
class _Dep:
    """A variable an expression reads: where (the reference in this expression) and through
    which let, if any."""

    name: str
    span: Span | None
    via: str | None = None


@dataclass(frozen=True)
class _Value:
    """A checked expression: its IR, whether it is integer-valued (and then, when known, an
    exclusive upper bound of its values), the first per-data-point and first random
    variable it reads, and the range its values are known to lie in."""

    expr: ir.IRExpr
    is_int: bool = False
    bound: int | None = None
    local: _Dep | None = None
    random: _Dep | None = None
    range: Range = ranges.REAL

    @property
    def shape(self) -> Shape:
        return self.expr.shape


@dataclass(frozen=True)
class _Want:
    """What the consumer of an expression expects: the shape a network output must take
    (None when unknown, with `why`), and the constraint a network feeding it directly is
    mapped onto."""

    shape: Shape | None = None
    constraint: str = "real"
    why: str | None = None

    def inner(self) -> "_Want":
        """The same shape, seen through an element-wise function or arithmetic."""
        return _Want(self.shape, "real", self.why)


_NONE = _Want()


def _merge(a: _Dep | None, b: _Dep | None) -> _Dep | None:
    return a if a is not None else b


#: What a network output is mapped onto, by the constraint of what it feeds.
_NET_RANGES = {
    "real": ranges.REAL,
    "positive": ranges.POSITIVE,
    "unit": ranges.UNIT,
    "simplex": ranges.SIMPLEX,
    "nonneg_int": ranges.NONNEGATIVE,
}

#: The values a param or input of each declared type takes (a param is kept inside its
#: constraint by a bijection, so never on its edge; an input may be exactly 0 or 1).
_PARAM_RANGES = {"positive": ranges.POSITIVE, "unit": ranges.UNIT, "simplex": ranges.SIMPLEX}
_INPUT_RANGES = {"positive": ranges.POSITIVE, "unit": ranges.UNIT_CLOSED, "simplex": ranges.ONEHOT}

#: The values a random variable takes, by its distribution's support (a continuous draw
#: lies inside its support; a count may be 0).
_SUPPORT_RANGES = {
    "positive": ranges.POSITIVE,
    "unit": ranges.UNIT,
    "simplex": ranges.SIMPLEX,
    "boolean": ranges.UNIT_CLOSED,
    "finite_int": ranges.NONNEGATIVE,
    "nonneg_int": ranges.NONNEGATIVE,
}


def _builtin_range(func: str, rule: str, values: list) -> Range:
    first = values[0]
    if rule in ("elementwise", "last_dim"):
        return ranges.function(func, first.range)
    if rule == "reduce":
        shape = first.shape
        return ranges.reduce(func, first.range, _flat(shape), shape[-1] if shape else 1)
    if rule in ("dot", "matmul"):
        inner = first.shape[-1]
        product = ranges.mul(first.range.entries(), values[1].range.entries())
        return ranges.reduce("sum", product, inner, inner)
    return ranges.hull(v.range for v in values)


@dataclass
class _VarInfo:
    decl: ast.Decl
    shape: Shape | None  # None: its declaration failed (skip whatever uses it)
    type: str
    value: object = None
    guide: ir.GuideOptions | None = None
    family_span: Span | None = None


@dataclass
class _NetInfo:
    """A named network: its options and what its first call fixed."""

    definition: ast.NetDef
    kind: str
    options: dict | None  # None: its definition failed
    input_sizes: tuple[int, ...] | None = None
    output_shape: Shape | None = None
    first_call: Span | None = None
    called: bool = False


# ====================================================================== the checker


class _ModelChecker:
    """Checks one model; `run()` returns its IR, or None with `errors` filled."""

    def __init__(self, model: ast.ModelDef):
        self.model = model
        self.errors: list[DGMError] = []
        # name -> the statement that declares it (a Decl, Let or NetDef)
        self.declared: dict[str, ast.Decl | ast.Let | ast.NetDef] = {}
        self.vars: dict[str, _VarInfo] = {}
        self.lets: dict[str, ast.Let] = {}
        self.let_values: dict[str, _Value] = {}
        self.bad_lets: set[str] = set()
        self.free_lets: dict[str, bool] = {}
        self.waiting_lets: set[str] = set()
        self.netinfo: dict[str, _NetInfo] = {}
        self.draws: dict[str, list[ast.Draw]] = {}
        self.consts_in_progress: set[str] = set()
        self.bad_consts: set[str] = set()
        self.anon_names: dict[int, str] = {}
        self.nets: list[ir.Net] = []
        self.anon_nets: dict[str, ir.Net] = {}
        self.bounds: dict[str, int] = {}
        self.pending_bounds: list[tuple[str, int, str, Span | None]] = []
        self.draw_irs: dict[int, ir.Draw] = {}
        self.unknown_targets = False

    def report(self, err: DGMError) -> None:
        self.errors.append(err)

    def attempt(self, fn: Callable, *args):
        """Run one independent check: report its error, swallow a skip; None on failure."""
        try:
            return fn(*args)
        except _Skip:
            return None
        except DGMError as err:
            self.report(err)
            return None
        except RecursionError:
            self.report(DGMModelError("this statement is nested too deeply to check", self.current))
            return None

    # -------------------------------------------------------------- driver

    def run(self) -> ir.ModelIR | None:
        body = self.model.body
        self.current = self.model.span
        for stmt in body:
            self.current = stmt.span
            self.attempt(self.declare, stmt)
        self.name_anonymous_nets(body)
        for decl in [s for s in body if isinstance(s, ast.Decl)]:
            if self.declared.get(decl.name) is decl:
                self.current = decl.span
                self.attempt(self.check_declaration, decl)
        for stmt in body:
            if isinstance(stmt, ast.NetDef) and self.declared.get(stmt.name) is stmt:
                self.current = stmt.span
                self.attempt(self.check_net_definition, stmt)
        ordered_lets = self.order_lets()
        self.check_lets(ordered_lets, waiting=False)
        for stmt in body:
            if isinstance(stmt, ast.Draw):
                self.current = stmt.span
                self.attempt(self.check_draw, stmt)
        self.check_lets(ordered_lets, waiting=True)
        self.check_completeness()
        if self.errors:
            return None
        return self.build()

    def build(self) -> ir.ModelIR:
        variables = []
        for stmt in self.model.body:
            if isinstance(stmt, ast.Decl):
                info = self.vars[stmt.name]
                variables.append(
                    ir.Variable(
                        stmt.name, stmt.role, info.shape, info.type, info.guide, info.value,
                        span=stmt.name_span or stmt.span,
                    )
                )
        draws = [self.draw_irs[id(s)] for s in self.model.body if isinstance(s, ast.Draw)]
        lets = [
            ir.LetDef(s.name, self.let_values[s.name].expr, span=s.span)
            for s in self.model.body
            if isinstance(s, ast.Let)
        ]
        nets = sorted(self.nets, key=lambda n: _position(n.span))
        return ir.ModelIR(
            self.model.name, tuple(variables), tuple(draws), tuple(lets), tuple(nets),
            span=self.model.span,
        )

    # -------------------------------------------------------------- names

    def declare(self, stmt) -> None:
        if isinstance(stmt, ast.Draw):
            self.draws.setdefault(stmt.target, []).append(stmt)
            return
        if stmt.name in self.declared:
            raise _declared_twice(stmt.name, _declared_span(stmt), _declared_span(self.declared[stmt.name]))
        self.declared[stmt.name] = stmt
        if isinstance(stmt, ast.Let):
            self.lets[stmt.name] = stmt
        elif isinstance(stmt, ast.NetDef):
            kind = stmt.call.func
            self.netinfo[stmt.name] = _NetInfo(stmt, kind, None)
        else:
            self.vars[stmt.name] = _VarInfo(stmt, None, "real")
        if stmt.name in BUILTINS or stmt.name in DISTRIBUTIONS or stmt.name in NETWORKS:
            raise _reserved_name(stmt.name, _declared_span(stmt))

    def name_anonymous_nets(self, body) -> None:
        """`mlp_1`, `mlp_2`, `deconv_1`, ... in source order, skipping names a named net
        already has."""
        counters = {kind: 0 for kind in NETWORKS}
        for stmt in body:
            if isinstance(stmt, ast.Draw):
                roots = [stmt.dist]
            elif isinstance(stmt, ast.Let):
                roots = [stmt.value]
            elif isinstance(stmt, ast.Decl) and stmt.value is not None:
                roots = [stmt.value]
            else:
                continue
            for root in roots:
                for node in _walk(root):
                    if isinstance(node, ast.Call) and node.func in NETWORKS:
                        if id(node) in self.anon_names:
                            continue  # one node reached twice (an AST built in Python)
                        while True:
                            counters[node.func] += 1
                            name = f"{node.func}_{counters[node.func]}"
                            if name not in self.netinfo:
                                break
                        self.anon_names[id(node)] = name

    def symbol_names(self) -> list[str]:
        return list(self.declared)

    # -------------------------------------------------------------- declarations

    def check_declaration(self, decl: ast.Decl) -> None:
        info = self.vars[decl.name]
        if decl.role == "const":
            self.const_value(decl.name)
            return
        dims = []
        failed = False
        for dim in decl.dims:
            try:
                dims.append(self.const_int(dim, "a dimension", positive=True))
            except DGMError as err:
                self.report(err)
                failed = True
        declared_type = decl.type or "real"
        if decl.role == "param" and declared_type == "int":
            self.report(_param_int(decl.name, decl.name_span))
            failed = True
        if declared_type == "simplex" and not dims and not failed:
            self.report(_simplex_scalar(decl.name, decl.name_span))
            failed = True
        if decl.guide is not None:
            if decl.role not in ("latent", "global"):
                self.report(_guide_on_role(decl.role, decl.guide[0].span if decl.guide else decl.span))
            else:
                info.guide, info.family_span = self.guide_options(decl.guide)
        info.type = self.random_type(decl) if decl.role in ir.RANDOM_ROLES else declared_type
        if not failed:
            info.shape = tuple(dims)

    def random_type(self, decl: ast.Decl) -> str:
        """A random variable's type follows its distribution's support (order-free: read
        from the draw's syntax)."""
        draws = self.draws.get(decl.name)
        if draws:
            spec = DISTRIBUTIONS.get(draws[0].dist.func)
            if spec is not None:
                return SUPPORT_TYPES[spec.support]
        return decl.type or "real"

    def guide_options(self, options: tuple[ast.Keyword, ...]) -> tuple[ir.GuideOptions, Span | None]:
        hidden = None
        family = "normal"
        family_span = None
        for option in options:
            name_span = _head(option.span, len(option.name))
            if option.name == "hidden":
                hidden = self.attempt(self.size_list, option.value, "hidden", True)
            elif option.name == "family":
                value = option.value
                if not isinstance(value, ast.Name):
                    self.report(_unknown_family(_source_text(value), value.span))
                elif value.name not in GUIDE_FAMILIES:
                    self.report(_unknown_family(value.name, value.span))
                else:
                    family = value.name
                    family_span = option.span
            else:
                self.report(_unknown_guide_option(option.name, name_span))
        return ir.GuideOptions(hidden, family), family_span

    def size_list(self, expr: ast.Expr, option: str, allow_empty: bool) -> tuple[int, ...]:
        """A list of positive integers (`hidden = [256, 256]`), or a const holding one."""
        if isinstance(expr, ast.Name) and expr.name in self.vars and self.vars[expr.name].decl.role == "const":
            value = self.const_value(expr.name)
            items = value if isinstance(value, tuple) else None
            if items is None or not all(isinstance(v, int) and v > 0 for v in items):
                raise _bad_size_list(option, expr.span)
            return items
        if not isinstance(expr, ast.ListExpr) or (not expr.items and not allow_empty):
            raise _bad_size_list(option, expr.span)
        return tuple(self.const_int(item, f"a size in {option}", positive=True) for item in expr.items)

    # -------------------------------------------------------------- constants

    def const_value(self, name: str):
        """The value of const `name` (numbers and nested tuples), evaluated once."""
        info = self.vars[name]
        if info.shape is not None:
            return info.value
        if name in self.bad_consts:
            raise _Skip
        if name in self.consts_in_progress:
            raise _const_cycle(name, info.decl.name_span)
        self.consts_in_progress.add(name)
        try:
            return self.evaluate_const(info)
        except (DGMError, _Skip):
            self.bad_consts.add(name)
            raise
        finally:
            self.consts_in_progress.discard(name)

    def evaluate_const(self, info: _VarInfo):
        decl, name = info.decl, info.decl.name
        value, shape = self.literal(decl.value)
        if decl.dims:
            dims = tuple(self.const_int(d, "a dimension", positive=True) for d in decl.dims)
            if dims != shape:
                raise _const_dims(name, dims, shape, decl.name_span)
        is_int = all(isinstance(v, int) for v in leaves(value))
        info.type = "int" if is_int else "real"
        if decl.type is not None and decl.type != "real":
            if not value_fits(value, decl.type):
                raise _const_type(name, decl.type, decl.value.span)
            info.type = decl.type
        info.value, info.shape = value, shape
        return value

    def literal(self, expr: ast.Expr) -> tuple[object, Shape]:
        """A const's value: a number, a (rectangular) nested list, or another const."""
        if isinstance(expr, ast.Num):
            return expr.value, ()
        if isinstance(expr, ast.UnaryOp):
            value, shape = self.literal(expr.operand)
            return _negate(value), shape
        if isinstance(expr, ast.BinOp):
            (left, lshape), (right, rshape) = self.literal(expr.left), self.literal(expr.right)
            if lshape or rshape:
                raise _bad_const("arithmetic in a const works on single numbers only", expr.span)
            return _arithmetic(expr.op, left, right, expr.span), ()
        if isinstance(expr, ast.Name):
            info = self.vars.get(expr.name)
            if info is None:
                if expr.name in self.declared:
                    raise _bad_const(f"'{expr.name}' is not a const", expr.span)
                raise _unknown_name(expr.name, expr.span, self.symbol_names())
            if info.decl.role != "const":
                raise _bad_const(f"'{expr.name}' is a {_ROLE_WORDS[info.decl.role]}", expr.span)
            value = self.const_value(expr.name)
            return value, info.shape
        if isinstance(expr, ast.ListExpr):
            if not expr.items:
                raise _empty_list(expr.span)
            items = [self.literal(item) for item in expr.items]
            first = items[0][1]
            for item, (_, shape) in zip(expr.items, items):
                if shape != first:
                    raise _list_items_differ(first, shape, item.span)
            values = tuple(v for v, _ in items)
            if not all(isinstance(v, int) for v in leaves(values)):
                values = _to_float(values)
            return values, (len(items),) + first
        raise _bad_const(f"'{_source_text(expr)}' is not", expr.span)

    def const_int(self, expr: ast.Expr, what: str, positive: bool) -> int:
        """A compile-time integer: a number, an int const, or + - * of those."""
        if isinstance(expr, ast.Num):
            value = expr.value
        elif isinstance(expr, ast.UnaryOp):
            value = -self.const_int(expr.operand, what, positive=False)
        elif isinstance(expr, ast.Name):
            info = self.vars.get(expr.name)
            if info is None:
                if expr.name in self.declared:
                    raise _not_constant_int(what, f"'{expr.name}' is not a const", expr.span)
                raise _unknown_name(expr.name, expr.span, self.symbol_names())
            if info.decl.role != "const":
                raise _not_constant_int(
                    what, f"'{expr.name}' is a {_ROLE_WORDS[info.decl.role]}", expr.span
                )
            value = self.const_value(expr.name)
            if isinstance(value, tuple):
                raise _not_constant_int(what, f"const '{expr.name}' is an array", expr.span)
        elif isinstance(expr, ast.BinOp) and expr.op in ("+", "-", "*"):
            left = self.const_int(expr.left, what, positive=False)
            right = self.const_int(expr.right, what, positive=False)
            value = {"+": left + right, "-": left - right, "*": left * right}[expr.op]
        else:
            raise _not_constant_int(what, f"'{_source_text(expr)}' is not", expr.span)
        if not isinstance(value, int):
            if positive:
                raise _not_positive_int(what, value, expr.span)
            raise _not_constant_int(what, f"{value} is not an integer", expr.span)
        if positive and value <= 0:
            raise _not_positive_int(what, value, expr.span)
        return value

    # -------------------------------------------------------------- networks

    def net_options(self, call: ast.Call, kind: str) -> dict:
        options = dict(NETWORKS[kind])
        failed = False
        for kw in call.kwargs:
            name_span = _head(kw.span, len(kw.name))
            try:
                if kw.name not in options:
                    raise _unknown_net_option(kind, kw.name, name_span)
                if kw.name in ("hidden", "channels"):
                    options[kw.name] = self.size_list(kw.value, kw.name, kw.name == "hidden")
                elif kw.name == "activation":
                    if not isinstance(kw.value, ast.Name):
                        raise _unknown_activation(_source_text(kw.value), kw.value.span)
                    if kw.value.name not in ACTIVATIONS:
                        raise _unknown_activation(kw.value.name, kw.value.span)
                    options["activation"] = kw.value.name
            except DGMError as err:
                self.report(err)
                failed = True
        if failed:
            raise _Skip
        return options

    def check_net_definition(self, definition: ast.NetDef) -> None:
        info = self.netinfo[definition.name]
        call = definition.call
        if call.func not in NETWORKS:
            raise _net_definition_not_network(definition.name, call.func, _head(call.span, len(call.func)))
        if call.args:
            self.report(_net_inputs_at_definition(definition.name, call.args[0].span))
            self.attempt(self.net_options, call, call.func)
            raise _Skip
        info.options = self.net_options(call, call.func)

    def net_call(self, call: ast.Call, want: _Want) -> _Value:
        """An anonymous `mlp(...)`/`deconv(...)` or a call of a named network."""
        named = self.netinfo.get(call.func)
        if named is not None:
            named.called = True
            if named.options is None:
                raise _Skip
            if call.kwargs:
                raise _options_at_call(call.func, call.kwargs[0].span)
            kind, options, name = named.kind, named.options, call.func
        else:
            kind, name = call.func, self.anon_names[id(call)]
            options = self.net_options(call, kind)
        if not call.args:
            raise _net_without_inputs(call.func, named is not None, call.span)
        args = [self.expr(arg, _Want(None, why="it is a network's input")) for arg in call.args]
        sizes = tuple(_flat(a.shape) for a in args)
        shape = want.shape
        if named is not None and named.output_shape is not None:
            if shape is None:
                shape = named.output_shape
            elif shape != named.output_shape:
                raise _net_sizes_disagree(
                    name, "must produce shape", _fmt(named.output_shape), _fmt(shape),
                    named.first_call, call.span,
                )
            if sizes != named.input_sizes:
                raise _net_sizes_disagree(
                    name, "gets inputs of sizes", list(named.input_sizes), list(sizes),
                    named.first_call, call.span,
                )
        if shape is None:
            raise _net_size_unknown(name, want.why, call.span)
        if kind == "deconv" and len(shape) != 3:
            raise _deconv_not_image(shape, call.span)
        if named is not None:
            if named.output_shape is None:
                named.output_shape, named.input_sizes, named.first_call = shape, sizes, call.span
                self.nets.append(self.make_net(name, kind, options, sizes, shape, named.definition.span, False))
        elif name in self.anon_nets:
            # The same call node used twice (the Python front end can share one): one network.
            net = self.anon_nets[name]
            if net.output_shape != shape or net.input_sizes != sizes:
                raise _net_sizes_disagree(
                    name, "must produce shape", _fmt(net.output_shape), _fmt(shape), net.span, call.span
                )
        else:
            net = self.make_net(name, kind, options, sizes, shape, call.span, True)
            self.anon_nets[name] = net
            self.nets.append(net)
        local = random = None
        for a in args:
            local, random = _merge(local, a.local), _merge(random, a.random)
        expr = ir.NetCall(name, tuple(a.expr for a in args), shape, want.constraint, span=call.span)
        return _Value(expr, local=local, random=random, range=_NET_RANGES[want.constraint])

    @staticmethod
    def make_net(name, kind, options, sizes, shape, span, anonymous) -> ir.Net:
        return ir.Net(
            name,
            kind,
            sizes,
            _flat(shape),
            shape,
            hidden=tuple(options.get("hidden", ())),
            activation=options["activation"],
            channels=tuple(options.get("channels", ())),
            anonymous=anonymous,
            span=span,
        )

    def fixed_int(self, value: _Value) -> int | None:
        """The integer a value always has (a literal or an int const), else None."""
        expr = value.expr
        if isinstance(expr, ir.Lit) and isinstance(expr.value, int):
            return expr.value
        if isinstance(expr, ir.Ref) and expr.name in self.vars:
            info = self.vars[expr.name]
            if info.decl.role == "const" and isinstance(info.value, int):
                return info.value
        return None

    def is_net_call(self, expr: ast.Expr) -> bool:
        return isinstance(expr, ast.Call) and (expr.func in NETWORKS or expr.func in self.netinfo)

    # -------------------------------------------------------------- lets

    def order_lets(self) -> list[str]:
        """The lets in dependency order; a cycle among lets is
        reported once, naming it, and its lets are left out."""
        graph = nx.DiGraph()
        order = {name: i for i, name in enumerate(self.lets)}
        for name, let in self.lets.items():
            graph.add_node(name)
            for node in _walk(let.value):
                if isinstance(node, ast.Name) and node.name in self.lets:
                    graph.add_edge(node.name, name)
        for component in nx.strongly_connected_components(graph):
            if len(component) > 1 or any(graph.has_edge(n, n) for n in component):
                first = min(component, key=order.__getitem__)
                # Edges run from what a let reads to the let; the message follows "reads".
                reads = graph.subgraph(component).reverse()
                cycle = [u for u, _ in nx.find_cycle(reads, source=first)]
                self.report(_let_cycle(cycle, _name_in(self.lets[first].span, first)))
                self.bad_lets |= component
        graph.remove_nodes_from(self.bad_lets)
        ordered = list(nx.topological_sort(graph))
        # Whether each let waits on its use to fix a network's size, directly or through
        # the lets it reads; computed in dependency order, so without deep recursion.
        self.waiting_lets = set()
        for name in ordered:
            try:
                self.free_lets[name] = self.is_free(self.lets[name].value)
            except RecursionError:  # reported when the let itself is checked
                self.free_lets[name] = False
            if self.free_lets[name] or any(p in self.waiting_lets for p in graph.predecessors(name)):
                self.waiting_lets.add(name)
        return ordered

    def check_lets(self, ordered: list[str], waiting: bool) -> None:
        """Check the lets that do not wait on a use (`waiting` False: before the draws, so
        long chains of lets are checked without recursion), or all that are left."""
        for name in ordered:
            if name not in self.let_values and (waiting or name not in self.waiting_lets):
                self.current = self.lets[name].span
                self.attempt(self.let_value, name, _NONE)

    def let_value(self, name: str, want: _Want) -> _Value:
        """The checked value of let `name`; the first use of a let whose shape waits on a
        network fixes it with what that use expects."""
        if name in self.let_values:
            return self.let_values[name]
        if name in self.bad_lets:
            raise _Skip
        self.bad_lets.add(name)  # until it succeeds, so an error is reported once
        value = self.expr(self.lets[name].value, want)
        self.bad_lets.discard(name)
        self.let_values[name] = value
        return value

    def is_free(self, expr: ast.Expr) -> bool:
        """Whether the shape of `expr` waits on what its consumer expects (a network whose
        output size is not known yet)."""
        if isinstance(expr, ast.Call):
            if expr.func in NETWORKS:
                return True
            named = self.netinfo.get(expr.func)
            if named is not None:
                return named.output_shape is None
            spec = BUILTINS.get(expr.func)
            if spec is not None and spec.shape_rule in ("elementwise", "last_dim") and expr.args:
                return self.is_free(expr.args[0])
            return False
        if isinstance(expr, ast.BinOp):
            # A scalar on the other side broadcasts to anything, so it tells no size.
            left, right = self.is_free(expr.left), self.is_free(expr.right)
            return (left and (right or self.is_scalar(expr.right))) or (
                right and self.is_scalar(expr.left)
            )
        if isinstance(expr, ast.UnaryOp):
            return self.is_free(expr.operand)
        if isinstance(expr, ast.ListExpr):
            return bool(expr.items) and all(self.is_free(i) for i in expr.items)
        if isinstance(expr, ast.Name) and expr.name in self.lets:
            if expr.name in self.let_values or expr.name in self.bad_lets:
                return False
            if expr.name not in self.free_lets:
                self.free_lets[expr.name] = False  # guards against cycles (reported elsewhere)
                self.free_lets[expr.name] = self.is_free(self.lets[expr.name].value)
            return self.free_lets[expr.name]
        return False

    def is_scalar(self, expr: ast.Expr) -> bool:
        """Whether `expr` is known to be a scalar without checking it (numbers, scalar
        variables and checked lets, and arithmetic of those)."""
        if isinstance(expr, ast.Num):
            return True
        if isinstance(expr, ast.UnaryOp):
            return self.is_scalar(expr.operand)
        if isinstance(expr, ast.BinOp):
            return self.is_scalar(expr.left) and self.is_scalar(expr.right)
        if isinstance(expr, ast.Name):
            if expr.name in self.vars:
                return self.vars[expr.name].shape == ()
            value = self.let_values.get(expr.name)
            return value is not None and value.shape == ()
        return False

    # -------------------------------------------------------------- ranges

    def variable_range(self, name: str) -> Range:
        """The values variable `name` takes: a const's own, a param's or input's by its
        declared type, a random variable's by its distribution's support (read from the
        draw's syntax, so in any order; Uniform's from literal bounds)."""
        info = self.vars[name]
        role = info.decl.role
        if role == "const":
            return ranges.literal(info.value)
        if role == "param":
            return _PARAM_RANGES.get(info.type, ranges.REAL)
        if role == "input":
            return _INPUT_RANGES.get(info.type, ranges.REAL)
        draws = self.draws.get(name)
        spec = DISTRIBUTIONS.get(draws[0].dist.func) if draws else None
        if spec is None:
            return ranges.REAL
        if spec.name == "Uniform":
            return self.uniform_range(draws[0].dist)
        return _SUPPORT_RANGES.get(spec.support, ranges.REAL)

    def uniform_range(self, call: ast.Call) -> Range:
        given = dict(zip(("low", "high"), call.args))
        given.update((k.name, k.value) for k in call.kwargs)
        low, high = self.written_number(given.get("low")), self.written_number(given.get("high"))
        if low is None or high is None or not low < high:
            return ranges.REAL
        return Range(low, high, True, True)

    def written_number(self, expr) -> float | None:
        """The number an expression is written as: a literal, maybe negated, or a scalar const."""
        if isinstance(expr, ast.Num):
            return expr.value
        if isinstance(expr, ast.UnaryOp):
            inner = self.written_number(expr.operand)
            return None if inner is None else -inner
        if isinstance(expr, ast.Name):
            info = self.vars.get(expr.name)
            if info is not None and info.decl.role == "const" and info.shape == ():
                return info.value
        return None

    def binop_range(self, e: ast.BinOp, left: _Value, right: _Value) -> Range:
        if e.op == "+":
            return ranges.add(left.range, right.range)
        if e.op == "-":
            return ranges.sub(left.range, right.range)
        if e.op == "*":
            return ranges.mul(left.range, right.range)
        if e.op == "/":
            return ranges.div(left.range, right.range)
        exponent = right.expr.value if isinstance(right.expr, ir.Lit) else None
        whole = isinstance(exponent, (int, float)) and float(exponent).is_integer()
        if left.range.low < 0 and not whole:
            raise _outside_domain(
                "**", "a non-negative base unless its exponent is a whole number",
                format_expr(e.left), "can be negative",
                self.declarations_to_type(e.left, "positive"), e.left.span,
            )
        return ranges.power(left.range, right.range, whole)

    def check_domain(self, func: str, arg_expr: ast.Expr, arg: _Value) -> None:
        """log and sqrt of a value that may be negative (or 0, for log) are NaN or -inf."""
        if func == "log" and not arg.range.fits("positive"):
            needs = "a positive argument"
        elif func == "sqrt" and arg.range.low < 0:
            needs = "a non-negative argument"
        else:
            return
        why = ranges.problem(arg.range, "positive")
        declare = self.declarations_to_type(arg_expr, "positive")
        raise _outside_domain(func, needs, format_expr(arg_expr), why, declare, arg_expr.span)

    def declarations_to_type(self, expr: ast.Expr, constraint: str) -> list[str]:
        """The params and inputs `expr` reads whose declared type does not show `constraint`
        (as `param sigma` or `input s[3]`, for a hint)."""
        found: list[str] = []
        for node in _walk(expr):
            if isinstance(node, ast.Name) and node.name in self.vars:
                info = self.vars[node.name]
                if info.decl.role in ("param", "input") and info.shape is not None \
                        and info.type != "int" and (info.shape or constraint != "simplex") \
                        and not self.variable_range(node.name).fits(constraint):
                    dims = _fmt(info.shape) if info.shape else ""
                    text = f"{info.decl.role} {node.name}{dims}"
                    if text not in found:
                        found.append(text)
        return found

    # -------------------------------------------------------------- expressions

    def expr(self, e: ast.Expr, want: _Want = _NONE) -> _Value:
        if isinstance(e, ast.Num):
            bound = e.value + 1 if isinstance(e.value, int) and e.value >= 0 else None
            return _Value(ir.Lit(e.value, (), isinstance(e.value, int), span=e.span),
                          isinstance(e.value, int), bound, range=ranges.literal(e.value))
        if isinstance(e, ast.Name):
            return self.name(e, want)
        if isinstance(e, ast.UnaryOp):
            inner = self.expr(e.operand, want.inner())
            if isinstance(inner.expr, ir.Lit) and not isinstance(inner.expr.value, tuple):
                lit = inner.expr
                return _Value(ir.Lit(-lit.value, (), lit.is_int, span=e.span), inner.is_int,
                              range=ranges.literal(-lit.value))
            return _Value(ir.Unary("-", inner.expr, inner.shape, span=e.span), inner.is_int,
                          None, inner.local, inner.random, ranges.neg(inner.range))
        if isinstance(e, ast.BinOp):
            return self.binop(e, want)
        if isinstance(e, ast.ListExpr):
            return self.list_expr(e, want)
        if isinstance(e, ast.Index):
            return self.index(e)
        if isinstance(e, ast.Call):
            return self.call(e, want)
        raise _bad_const("this is not an expression", getattr(e, "span", None))

    def name(self, e: ast.Name, want: _Want) -> _Value:
        info = self.vars.get(e.name)
        if info is not None:
            role = info.decl.role
            if info.shape is None:
                raise _Skip
            is_int = info.type == "int"
            local = _Dep(e.name, e.span) if role in ir.LOCAL_ROLES else None
            random = _Dep(e.name, e.span) if role in ir.RANDOM_ROLES else None
            if role == "const" and is_int and not info.shape:
                bound = info.value + 1 if info.value >= 0 else None
            else:
                bound = self.bounds.get(e.name)
            return _Value(ir.Ref(e.name, info.shape, span=e.span), is_int, bound, local, random,
                          self.variable_range(e.name))
        if e.name in self.lets:
            value = self.let_value(e.name, want)
            local = _Dep(value.local.name, e.span, e.name) if value.local else None
            random = _Dep(value.random.name, e.span, e.name) if value.random else None
            return _Value(ir.Ref(e.name, value.shape, span=e.span), value.is_int, value.bound, local, random,
                          value.range)
        if e.name in self.netinfo:
            self.netinfo[e.name].called = True  # used, wrongly: one error, not two
            raise _net_as_value(e.name, e.span)
        if e.name in BUILTINS:
            raise _function_as_value(e.name, e.span)
        if e.name in DISTRIBUTIONS:
            raise _distribution_as_value(e.name, e.span)
        raise _unknown_name(e.name, e.span, self.symbol_names())

    def binop(self, e: ast.BinOp, want: _Want) -> _Value:
        inner = want.inner()
        if want.shape is None and not self.is_free(e) and self.is_free(e.left) != self.is_free(e.right):
            if self.is_free(e.left):
                right = self.expr(e.right, inner)
                left = self.expr(e.left, _Want(right.shape))
            else:
                left = self.expr(e.left, inner)
                right = self.expr(e.right, _Want(left.shape))
        else:
            left = self.expr(e.left, inner)
            right = self.expr(e.right, inner)
        shape = _broadcast(left.shape, right.shape)
        if shape is None:
            raise _cannot_broadcast(e.op, left.shape, right.shape, _op_span(e))
        is_int = left.is_int and right.is_int and e.op in ("+", "-", "*")
        return _Value(
            ir.Binary(e.op, left.expr, right.expr, shape, span=e.span),
            is_int,
            None,
            _merge(left.local, right.local),
            _merge(left.random, right.random),
            self.binop_range(e, left, right),
        )

    def list_expr(self, e: ast.ListExpr, want: _Want) -> _Value:
        if not e.items:
            raise _empty_list(e.span)
        item_want = _Want(want.shape[1:], "real", want.why) if want.shape else _Want(None, why=want.why)
        if item_want.shape is None:
            known = next((i for i in e.items if not self.is_free(i)), None)
            values = {}
            if known is not None:
                values[id(known)] = self.expr(known, _NONE)
                item_want = _Want(values[id(known)].shape)
            items = [values.get(id(i)) or self.expr(i, item_want) for i in e.items]
        else:
            items = [self.expr(i, item_want) for i in e.items]
        first = items[0].shape
        for node, item in zip(e.items, items):
            if item.shape != first:
                raise _list_items_differ(first, item.shape, node.span)
        shape = (len(items),) + first
        is_int = all(i.is_int for i in items)
        if all(isinstance(i.expr, ir.Lit) for i in items):
            value = tuple(i.expr.value for i in items)
            if not is_int:
                value = _to_float(value)
            return _Value(ir.Lit(value, shape, is_int, span=e.span), is_int, range=ranges.literal(value))
        local = random = None
        for i in items:
            local, random = _merge(local, i.local), _merge(random, i.random)
        return _Value(ir.Stack(tuple(i.expr for i in items), shape, span=e.span), is_int, None, local, random,
                      ranges.hull(i.range for i in items))

    def index(self, e: ast.Index) -> _Value:
        value = self.expr(e.value, _Want(None, why="its value is indexed, which does not tell its size"))
        shape = value.shape
        if not shape:
            raise _index_scalar(e.value.span)
        if len(e.indices) > len(shape):
            raise _too_many_indices(shape, len(e.indices), e.span)
        items: list = []
        out: list[int] = []
        local, random = value.local, value.random
        for dim, (item, size) in enumerate(zip(e.indices, shape)):
            if isinstance(item, ast.Slice):
                parts = [
                    None if p is None else self.const_int(p, "a slice bound", positive=False)
                    for p in (item.start, item.stop, item.step)
                ]
                if parts[2] == 0:
                    raise _slice_step_zero(item.span)
                length = len(range(*slice(*parts).indices(size)))
                if length == 0:
                    raise _empty_slice(size, item.span)
                items.append(ir.SliceItem(*parts))
                out.append(length)
                continue
            index = self.expr(item, _NONE)
            if not index.is_int:
                detail = f"'{item.name}' is real" if isinstance(item, ast.Name) else "this value is real"
                raise _index_not_int(detail, item.span)
            if index.shape:
                raise _index_not_scalar(index.shape, item.span)
            fixed = self.fixed_int(index)
            if fixed is not None:
                if not -size <= fixed < size:
                    raise _index_out_of_range(fixed, size, item.span)
            elif index.bound is not None:
                if index.bound > size:
                    raise _bound_out_of_range(_source_text(item), index.bound, size, "the indexed dimension", item.span)
            elif isinstance(item, ast.Name) and item.name in self.vars:
                self.pending_bounds.append((item.name, size, "the indexed dimension", item.span))
            items.append(index.expr)
            local, random = _merge(local, index.local), _merge(random, index.random)
        out.extend(shape[len(e.indices):])
        # indexing leading dimensions keeps whole rows of a simplex
        kept = value.range if len(e.indices) < len(shape) else value.range.entries()
        return _Value(
            ir.IndexExpr(value.expr, tuple(items), tuple(out), span=e.span),
            value.is_int,
            None,
            local,
            random,
            kept,
        )

    def call(self, e: ast.Call, want: _Want) -> _Value:
        if self.is_net_call(e):
            return self.net_call(e, want)
        spec = BUILTINS.get(e.func)
        if spec is not None:
            return self.builtin(e, spec, want)
        fspan = _head(e.span, len(e.func))
        if e.func in DISTRIBUTIONS:
            raise _distribution_as_value(e.func, fspan)
        if e.func in self.vars:
            raise _not_callable(e.func, f"a {_ROLE_WORDS[self.vars[e.func].decl.role]}", fspan)
        if e.func in self.lets:
            raise _not_callable(e.func, "a let", fspan)
        raise _unknown_function(e.func, fspan, [*BUILTINS, *NETWORKS, *self.netinfo])

    def builtin(self, e: ast.Call, spec, want: _Want) -> _Value:
        if e.kwargs:
            kw = e.kwargs[0]
            raise _builtin_keyword(e.func, kw.name, _head(kw.span, len(kw.name)))
        low, high = spec.arity
        if len(e.args) < low or (high is not None and len(e.args) > high):
            raise _builtin_arity(e.func, spec.arity, len(e.args), e.span)
        rule = spec.shape_rule
        if rule == "fill":
            dims = tuple(self.const_int(a, f"a dimension of {e.func}", positive=True) for a in e.args)
            args = tuple(ir.Lit(d, (), True, span=a.span) for d, a in zip(dims, e.args))
            fill = ranges.literal(0 if e.func == "zeros" else 1)
            return _Value(ir.BuiltinCall(e.func, args, dims, span=e.span), range=fill)
        if rule == "onehot":
            y = self.expr(e.args[0], _Want(None, why="it is onehot's value"))
            if not y.is_int:
                detail = f"'{e.args[0].name}' is real" if isinstance(e.args[0], ast.Name) else "this value is real"
                raise _onehot_not_int(detail, e.args[0].span)
            k = self.const_int(e.args[1], "onehot's number of classes", positive=True)
            if y.bound is not None and y.bound > k:
                raise _bound_out_of_range(_source_text(e.args[0]), y.bound, k, f"onehot(..., {k})", e.args[0].span)
            if y.bound is None and isinstance(e.args[0], ast.Name) and e.args[0].name in self.vars:
                self.pending_bounds.append((e.args[0].name, k, f"onehot(..., {k})", e.args[0].span))
            args = (y.expr, ir.Lit(k, (), True, span=e.args[1].span))
            return _Value(ir.BuiltinCall(e.func, args, y.shape + (k,), span=e.span), False, None, y.local, y.random,
                          ranges.ONEHOT)
        if rule in ("elementwise", "last_dim"):
            arg = self.expr(e.args[0], want.inner())
            if rule == "last_dim" and not arg.shape:
                raise _needs_vector(e.func, e.args[0].span)
            self.check_domain(e.func, e.args[0], arg)
            shape = arg.shape
            values = [arg]
        else:
            why = f"it is an argument of {e.func}, which does not tell its size"
            values = [self.expr(a, _Want(None, why=why)) for a in e.args]
            shape = self.builtin_shape(e, [v.shape for v in values])
        local = random = None
        for v in values:
            local, random = _merge(local, v.local), _merge(random, v.random)
        is_int = rule in ("reduce", "concat") and e.func != "mean" and all(v.is_int for v in values)
        return _Value(
            ir.BuiltinCall(e.func, tuple(v.expr for v in values), shape, span=e.span),
            is_int,
            None,
            local,
            random,
            _builtin_range(e.func, rule, values),
        )

    def builtin_shape(self, e: ast.Call, shapes: list[Shape]) -> Shape:
        rule, name = BUILTINS[e.func].shape_rule, e.func
        if rule == "reduce":
            return ()
        if rule == "dot":
            a, b = shapes
            if len(a) != 1 or len(b) != 1 or a != b:
                raise _builtin_shapes(name, f"needs two vectors of one length, got shapes {_fmt(a)} and {_fmt(b)}", e.span)
            return ()
        if rule == "matmul":
            a, b = shapes
            if not a or not b:
                raise _builtin_shapes(
                    name, f"needs arrays, got shapes {_fmt(a)} and {_fmt(b)}", e.span,
                    "multiply by a scalar with *",
                )
            inner_a = a[-1]
            inner_b = b[-2] if len(b) > 1 else b[0]
            batch = _broadcast(a[:-2], b[:-2])
            if inner_a != inner_b or batch is None:
                raise _builtin_shapes(
                    name,
                    f"shapes {_fmt(a)} and {_fmt(b)} do not fit",
                    e.span,
                    f"the first's last dimension ({inner_a}) must equal the second's "
                    f"{'second-to-last dimension' if len(b) > 1 else 'length'} ({inner_b})",
                )
            return batch + (a[-2:-1] if len(a) > 1 else ()) + (b[-1:] if len(b) > 1 else ())
        if rule == "concat":
            first = shapes[0]
            for arg, shape in zip(e.args, shapes):
                if not shape:
                    raise _builtin_shapes(
                    name, "cannot join a scalar", arg.span, "write [x] for a vector of one entry"
                )
                if len(shape) != len(first) or shape[:-1] != first[:-1]:
                    raise _builtin_shapes(
                        name,
                        f"shapes {_fmt(first)} and {_fmt(shape)} differ in more than their last dimension",
                        arg.span,
                        "concat joins arrays along their last dimension; the others must agree",
                    )
            return first[:-1] + (sum(s[-1] for s in shapes),)
        raise AssertionError(rule)  # every rule is handled above

    # -------------------------------------------------------------- draws

    def check_draw(self, d: ast.Draw) -> None:
        target_span = _head(d.span, len(d.target))
        draws = self.draws.get(d.target, [])
        if len(draws) > 1 and draws[0] is not d:
            raise _two_distributions(d.target, target_span, draws[0].span)
        info = self.vars.get(d.target)
        if info is None:
            if d.target in self.lets:
                raise _not_a_variable(d.target, "a let", target_span)
            if d.target in self.netinfo:
                raise _not_a_variable(d.target, "a network", target_span)
            self.unknown_targets = True
            raise _unknown_target(d.target, target_span, self.undrawn())
        role = info.decl.role
        if role not in ir.RANDOM_ROLES:
            raise _not_random(d.target, role, target_span)
        call = d.dist
        fspan = _head(call.span, len(call.func))
        spec = DISTRIBUTIONS.get(call.func)
        if spec is None:
            if call.func in self.netinfo:
                self.netinfo[call.func].called = True
            if call.func in BUILTINS or call.func in NETWORKS or call.func in self.declared:
                raise _not_a_distribution(call.func, fspan)
            raise _unknown_distribution(call.func, fspan)
        if info.shape is None:
            self.check_arguments_quietly(call)
            raise _Skip
        draw = self.bind(d, spec, info.shape)
        self.check_role(d, spec, info, draw)
        self.draw_irs[id(d)] = draw.ir
        if spec.name == "Categorical":
            self.bounds[d.target] = draw.classes
        elif spec.name == "Bernoulli":
            self.bounds[d.target] = 2
        elif spec.name == "Binomial":
            count = draw.values.get("total_count")
            fixed = 1 if count is None else self.fixed_int(count)
            if fixed is not None:
                self.bounds[d.target] = fixed + 1

    def check_arguments_quietly(self, call: ast.Call) -> None:
        """Check the arguments of a draw whose target failed, for their own errors."""
        for arg in [*call.args, *(k.value for k in call.kwargs)]:
            if not self.is_free(arg):
                self.attempt(self.expr, arg, _NONE)

    def bind(self, d: ast.Draw, spec: DistSpec, tshape: Shape) -> "_BoundDraw":
        call = d.dist
        if len(call.args) == 1 and not call.kwargs and self.is_net_call(call.args[0]):
            packed = spec.packed_params()
            if not packed:
                raise _cannot_pack(spec, call.args[0].span)
            if len(packed) > 1:
                return self.bind_packed(d, spec, packed, tshape)
            given, failed = {packed[0].name: (call.args[0], call.args[0].span)}, False
        else:
            given, failed = self.match_arguments(spec, call)
        values: dict[str, _Value] = {}
        for param in spec.params:
            if param.name not in given:
                continue
            expr, _ = given[param.name]
            try:
                values[param.name] = self.argument(d, spec, param, expr, tshape)
            except _Skip:
                failed = True
            except DGMError as err:
                self.report(err)
                failed = True
        if failed:
            raise _Skip
        params = tuple((p.name, values[p.name].expr) for p in spec.params if p.name in values)
        classes = None
        if spec.name == "Categorical":
            (value,) = [values[n] for n in ("probs", "logits") if n in values]
            classes = value.shape[-1]
        return _BoundDraw(ir.Draw(d.target, spec.name, params, span=d.span), values, classes)

    def match_arguments(self, spec: DistSpec, call: ast.Call) -> tuple[dict, bool]:
        """Positional and keyword arguments by parameter name (with their spans), and
        whether a mistake was reported (the arguments themselves are still checked)."""
        given: dict = {}
        names = spec.param_names
        failed = False
        for i, arg in enumerate(call.args):
            if i >= len(names):
                self.report(_too_many_args(spec, len(call.args), arg.span))
                failed = True
                break
            given[names[i]] = (arg, arg.span)
        unknown = [kw for kw in call.kwargs if kw.name not in names]
        missing = [
            p.name
            for p in spec.params
            if p.required and p.name not in given and p.name not in (k.name for k in call.kwargs)
        ]
        for kw in call.kwargs:
            kspan = _head(kw.span, len(kw.name))
            if kw.name not in names:
                self.report(_unknown_argument(spec, kw.name, kspan, missing))
                failed = True
                continue
            if kw.name in given:
                self.report(_duplicate_argument(spec, kw.name, kspan))
                failed = True
                continue
            given[kw.name] = (kw.value, kw.span)
        for group in spec.alternatives:
            present = [n for n in group if n in given]
            if len(present) > 1:
                self.report(_both_alternatives(spec, group, given[present[1]][1]))
                failed = True
            elif not present and not unknown:
                self.report(_missing_alternative(spec, group, call.span))
                failed = True
        if not unknown:  # a misspelled keyword is the missing argument: say it once
            for name in missing:
                self.report(_missing_argument(spec, name, call.span))
                failed = True
        return given, failed

    def param_want(self, spec: DistSpec, param: ParamSpec, tshape: Shape, target: str, span) -> _Want:
        if spec.event_rank == 1:
            if not tshape:
                raise _dirichlet_event(target, tshape, (), span)
            return _Want(tshape, param.constraint)
        if param.event_rank == 1:
            return _Want(None, param.constraint, _categorical_classes_unknown(spec))
        return _Want(tshape, param.constraint)

    def argument(self, d: ast.Draw, spec: DistSpec, param: ParamSpec, expr: ast.Expr, tshape: Shape) -> _Value:
        if param.constraint == "nonneg_int" and self.is_net_call(expr):
            raise _net_cannot_produce(spec, param, expr.span)
        want = self.param_want(spec, param, tshape, d.target, expr.span)
        value = self.expr(expr, want)
        shape = value.shape
        if spec.event_rank == 1:
            if not shape or shape[-1] != tshape[-1] or not _broadcasts_to(shape[:-1], tshape[:-1]):
                raise _dirichlet_event(d.target, tshape, shape, expr.span)
        elif param.event_rank == 1:
            if not shape:
                raise _needs_vector(f"{spec.name}'s {param.name}", expr.span)
            if not _broadcasts_to(shape[:-1], tshape):
                raise _param_shape(spec, param.name, shape, d.target, tshape, expr.span)
        elif not _broadcasts_to(shape, tshape):
            raise _param_shape(spec, param.name, shape, d.target, tshape, expr.span)
        if isinstance(value.expr, ir.Lit):
            if not value_fits(value.expr.value, param.constraint):
                raise _bad_literal(spec, param, value.expr.value, expr.span)
        elif param.constraint in ranges.RANGE_CONSTRAINTS and not value.range.fits(param.constraint):
            declare = self.declarations_to_type(expr, param.constraint)
            net = any(self.is_net_call(node) for node in _walk(expr))
            raise _not_shown(spec, param, format_expr(expr), value.range, declare, net, expr.span)
        if param.constraint == "nonneg_int" and not value.is_int:
            raise _count_not_int(spec, param, expr.span)
        return value

    def bind_packed(self, d: ast.Draw, spec: DistSpec, packed, tshape: Shape) -> "_BoundDraw":
        call = d.dist.args[0]
        kind = self.netinfo[call.func].kind if call.func in self.netinfo else call.func
        if kind == "deconv":
            raise _deconv_packed(spec, call.span)
        shapes = []
        for param in packed:
            want = self.param_want(spec, param, tshape, d.target, call.span)
            if want.shape is None:
                name = call.func if call.func in self.netinfo else self.anon_names[id(call)]
                raise _net_size_unknown(name, want.why, call.span)
            shapes.append(want.shape)
        total = sum(_flat(s) for s in shapes)
        value = self.net_call(call, _Want((total,)))
        packed_params = tuple(ir.PackedParam(p.name, s, p.constraint) for p, s in zip(packed, shapes))
        draw = ir.Draw(d.target, spec.name, packed=value.expr, packed_params=packed_params, span=d.span)
        return _BoundDraw(draw, {"__packed__": value}, None)

    def check_role(self, d: ast.Draw, spec: DistSpec, info: _VarInfo, draw: "_BoundDraw") -> None:
        """What a latent, global or data variable may not be drawn from."""
        role, decl = info.decl.role, info.decl
        fspan = _head(d.dist.span, len(d.dist.func))
        moving = False  # the support moves with a random variable (reported)
        declared = decl.type
        actual = SUPPORT_TYPES[spec.support]
        if declared not in (None, "real", actual):
            self.report(_declared_type_mismatch(d.target, declared, spec, actual, fspan))
        if role == "global":
            for value in draw.values.values():
                if value.local is not None:
                    dep_role = self.vars[value.local.name].decl.role
                    self.report(_global_depends_on_local(d.target, value.local, dep_role))
                    break
        if role in ("latent", "global"):
            if spec.discrete and not spec.finite:
                self.report(_unbounded_discrete(d.target, role, spec, fspan))
            elif spec.discrete and role == "global":
                self.report(_discrete_global(d.target, spec, fspan))
            else:
                for param in spec.support_depends_on:
                    value = draw.values.get(param)
                    if value is None:
                        continue
                    if value.random is not None:
                        self.report(_support_depends(d.target, spec, param, value.random, value.random.span))
                        moving = True
                        break
                    if spec.discrete and self.fixed_int(value) is None:
                        self.report(_count_not_fixed(d.target, spec, value.expr.span))
                        break
            if spec.discrete and spec.finite and role == "latent" and info.shape:
                self.report(_discrete_latent_vector(d.target, info.shape, decl.name_span or decl.span))
            if spec.discrete and info.family_span is not None:
                self.report(_family_on_discrete(d.target, spec, info.family_span))
        if spec.name == "Uniform" and not moving and "low" in draw.values and "high" in draw.values:
            self.check_bounds(d, draw)

    def check_bounds(self, d: ast.Draw, draw: "_BoundDraw") -> None:
        """Uniform's high must be shown to lie above its low."""
        low, high = draw.values["low"], draw.values["high"]
        a, b = low.range, high.range
        if b.low > a.high or (b.low == a.high and (b.low_open or a.high_open)):
            return
        call = d.dist
        given = dict(zip(("low", "high"), call.args))
        given.update((k.name, k.value) for k in call.kwargs)
        known = isinstance(low.expr, ir.Lit) and isinstance(high.expr, ir.Lit)
        self.report(_bounds_not_ordered(format_expr(given["low"]), format_expr(given["high"]), known,
                                        given["high"].span))

    # -------------------------------------------------------------- the end

    def undrawn(self) -> list[str]:
        """Random variables without a distribution, in declaration order."""
        return [
            name
            for name, info in self.vars.items()
            if info.decl.role in ir.RANDOM_ROLES and name not in self.draws
        ]

    def check_completeness(self) -> None:
        # A draw of an unknown name is most likely the missing draw, misspelled: one error.
        if not self.unknown_targets:
            for name in self.undrawn():
                self.report(_no_distribution(self.vars[name].decl))
        for name, info in self.netinfo.items():
            if info.options is not None and not info.called:
                self.report(_unused_net(name, _name_in(info.definition.span, name)))
        for name, size, what, span in self.pending_bounds:
            bound = self.bounds.get(name)
            if bound is not None and bound > size:
                self.report(_bound_out_of_range(name, bound, size, what, span))


@dataclass(frozen=True)
class _BoundDraw:
    ir: ir.Draw
    values: dict
    classes: int | None


def _negate(value):
    return tuple(_negate(v) for v in value) if isinstance(value, tuple) else -value


def _arithmetic(op: str, left, right, span: Span | None):
    """`left op right` on two numbers, as Python computes it (an int for + - * of ints)."""
    written = f"{left} {op} {right}"
    try:
        if op == "+":
            result = left + right
        elif op == "-":
            result = left - right
        elif op == "*":
            result = left * right
        elif op == "/":
            result = left / right
        else:
            if isinstance(right, int) and abs(right) > 1024:
                left, right = float(left), float(right)  # no thousand-digit integers
            result = left**right
            if isinstance(result, complex):
                raise ValueError
    except (ZeroDivisionError, OverflowError, ValueError):
        raise _bad_const(f"{written} has no finite value", span) from None
    if isinstance(result, float) and not math.isfinite(result):
        raise _bad_const(f"{written} has no finite value", span)
    return result


def _to_float(value):
    if isinstance(value, tuple):
        return tuple(_to_float(v) for v in value)
    return float(value)


def _declared_span(stmt) -> Span | None:
    """Where a declaration, let or net statement names what it declares."""
    if isinstance(stmt, ast.Decl):
        return stmt.name_span or stmt.span
    return _name_in(stmt.span, stmt.name)


def _op_span(e: ast.BinOp) -> Span | None:
    """The operator of a binary operation: the text between its operands when it sits on
    one line, else the whole expression."""
    left, right = e.left.span, e.right.span
    if left is None or right is None or left.end_line != right.line or left.source is None:
        return e.span
    text = left.source.line(left.line)
    at = text.find(e.op, left.end_col - 1, right.col - 1)
    if at < 0:
        return e.span
    return Span(left.file, left.line, at + 1, left.line, at + 1 + len(e.op), source=left.source)


def _source_text(expr) -> str:
    """The text of an expression as the user wrote it (when on one line), for messages."""
    span = getattr(expr, "span", None)
    if span is not None and span.source is not None and span.line == span.end_line:
        return span.source.line(span.line)[span.col - 1 : span.end_col - 1]
    if isinstance(expr, ast.Name):
        return expr.name
    if isinstance(expr, ast.Num):
        return repr(expr.value)
    return "this expression"
