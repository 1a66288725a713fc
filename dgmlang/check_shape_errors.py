"""The checker's error catalogue, second part: shapes, dimensions, indices, built-in
functions, networks and consts (the first part is `dgmlang.check_errors`)."""
from __future__ import annotations

from dgmlang.check_shapes import Shape, fmt_shape
from dgmlang.check_spans import line_of
from dgmlang.distributions import ACTIVATIONS, BUILTINS, DistSpec, NETWORKS
from dgmlang.errors import DGMError, DGMShapeError, DGMTypeError, did_you_mean
from dgmlang.source import Span


def not_positive_int(what: str, value, span: Span | None) -> DGMError:
    return DGMShapeError(f"{what} must be a positive integer, got {value}", span)


def not_constant_int(what: str, detail: str, span: Span | None) -> DGMError:
    return DGMShapeError(
        f"{what} must be a constant integer, but {detail}",
        span,
        hint="write a number or the name of an int const",
    )


def param_shape(spec: DistSpec, param: str, shape: Shape, target: str, tshape: Shape, span) -> DGMError:
    return DGMShapeError(
        f"{spec.name}'s {param} has shape {fmt_shape(shape)}, which does not fit "
        f"'{target}' of shape {fmt_shape(tshape)}",
        span,
        hint=f"an argument is a scalar or broadcasts to the shape {fmt_shape(tshape)} of '{target}'",
    )


def dirichlet_event(target: str, tshape: Shape, shape: Shape, span) -> DGMError:
    if not tshape:
        return DGMShapeError(
            f"Dirichlet draws a vector, but '{target}' is a scalar",
            span,
            hint=f"declare it with a size, e.g. `{target}[3]`",
        )
    return DGMShapeError(
        f"Dirichlet's concentration has shape {fmt_shape(shape)}, which does not fit "
        f"'{target}' of shape {fmt_shape(tshape)}",
        span,
        hint=f"its last dimension is the number of categories, {tshape[-1]} here",
    )


def needs_vector(what: str, span: Span | None) -> DGMError:
    return DGMShapeError(
        f"{what} needs at least one dimension, but it is a scalar",
        span,
        hint="it has one entry per category, e.g. zeros(3)",
    )


def cannot_broadcast(op: str, left: Shape, right: Shape, span) -> DGMError:
    return DGMShapeError(
        f"shapes {fmt_shape(left)} and {fmt_shape(right)} do not broadcast in '{op}'",
        span,
        hint="dimensions are matched from the right and must be equal or 1 (numpy's rule)",
    )


def clamp_bounds_not_ordered(low: str, high: str, constant: bool, span) -> DGMError:
    how = "is above" if constant else "is always above"
    return DGMTypeError(
        f"clamp's lower bound '{low}' {how} its upper bound '{high}'",
        span,
        hint="write clamp(x, lo, hi) with lo <= hi, e.g. clamp(x, 0.01, 1)",
    )


def list_items_differ(first: Shape, other: Shape, span) -> DGMError:
    return DGMShapeError(
        f"list items have different shapes: {fmt_shape(first)} and {fmt_shape(other)}",
        span,
        hint="every item of a list has one shape",
    )


def empty_list(span: Span | None) -> DGMError:
    return DGMShapeError("an empty list has no shape", span, hint="write zeros(n) for an array")


def index_scalar(span: Span | None) -> DGMError:
    return DGMShapeError("cannot index a scalar", span, hint="only arrays have entries")


def too_many_indices(shape: Shape, count: int, span) -> DGMError:
    return DGMShapeError(
        f"{count} indices for a value of shape {fmt_shape(shape)}",
        span,
        hint=f"it has {len(shape)} dimension{'s' if len(shape) != 1 else ''}",
    )


def index_out_of_range(index: int, size: int, span) -> DGMError:
    return DGMShapeError(
        f"index {index} is out of range for a dimension of size {size}",
        span,
        hint=f"indices run from 0 to {size - 1} (or from -{size} to -1)",
    )


def bound_out_of_range(name: str, bound: int, size: int, what: str, span) -> DGMError:
    return DGMShapeError(
        f"'{name}' takes values up to {bound - 1}, but {what} has size {size}",
        span,
        hint=f"'{name}' needs {bound} entries there",
    )


def index_not_int(detail: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"an index must be an integer, but {detail}",
        span,
        hint="index with a number, an `input y : int` or a discrete variable (Categorical, ...)",
    )


def index_not_scalar(shape: Shape, span: Span | None) -> DGMError:
    return DGMShapeError(
        f"an index must be a scalar, but this one has shape {fmt_shape(shape)}", span
    )


def empty_slice(size: int, span: Span | None) -> DGMError:
    return DGMShapeError(
        f"this slice selects nothing from a dimension of size {size}", span
    )


def slice_step_zero(span: Span | None) -> DGMError:
    return DGMShapeError("a slice step cannot be zero", span)


def builtin_shapes(name: str, detail: str, span: Span | None, hint: str | None = None) -> DGMError:
    return DGMShapeError(f"{name}: {detail}", span, hint=hint)


def onehot_not_int(detail: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"onehot needs an integer value, but {detail}",
        span,
        hint="declare it `input y : int` or draw it from a discrete distribution",
    )


def net_size_unknown(name: str, why: str | None, span: Span | None) -> DGMError:
    return DGMShapeError(
        f"cannot infer the output size of network '{name}'",
        span,
        hint=why
        or "a network's output size comes from the distribution argument it feeds "
        "(possibly through element-wise functions and arithmetic)",
    )


def net_sizes_disagree(name: str, what: str, first, now, first_span, span) -> DGMError:
    return DGMShapeError(
        f"network '{name}' {what} {now} here but {first} at its call on line {line_of(first_span)}",
        span,
        hint="every call of a named network shares its weights, so its sizes must agree; "
        "use an anonymous mlp(...) for a different network",
    )


def deconv_not_image(shape: Shape, span: Span | None) -> DGMError:
    return DGMShapeError(
        f"deconv produces an image shaped [C, H, W], but its output must have shape {fmt_shape(shape)} here",
        span,
        hint="use mlp(...) for values that are not images",
    )


def net_without_inputs(name: str, named: bool, span: Span | None) -> DGMError:
    what = f"network '{name}'" if named else name
    return DGMTypeError(f"{what} needs at least one input", span, hint=f"write {name}(z, ...)")


def unknown_net_option(kind: str, name: str, span: Span | None) -> DGMError:
    options = list(NETWORKS[kind])
    return DGMTypeError(
        f"{kind} has no option '{name}'",
        span,
        hint=did_you_mean(name, options) or "its options are " + ", ".join(options),
    )


def unknown_activation(name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"unknown activation '{name}'",
        span,
        hint=did_you_mean(name, ACTIVATIONS) or "the activations are " + ", ".join(ACTIVATIONS),
    )


def bad_size_list(option: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"{option} must be a list of positive integers",
        span,
        hint=f"e.g. {option} = [256, 256]",
    )


def net_inputs_at_definition(name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"network '{name}' gets its inputs where it is called, not where it is defined",
        span,
        hint=f"write `net {name} = mlp(hidden = [...])`, then call `{name}(z)`",
    )


def net_definition_not_network(name: str, func: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"'{func}' does not build a network",
        span,
        hint=did_you_mean(func, NETWORKS)
        or f"write `net {name} = mlp(hidden = [...])` or `deconv(channels = [...])`",
    )


def options_at_call(name: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"options of network '{name}' belong to its definition",
        span,
        hint=f"write them in `net {name} = mlp(...)`; a call gives only inputs",
    )


def simplex_scalar(name: str, span: Span | None) -> DGMError:
    return DGMShapeError(
        f"'{name}' is declared simplex but is a scalar",
        span,
        hint=f"a simplex is a vector, e.g. `{name}[3] : simplex`",
    )


def bad_const(detail: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"a const must be a number or a list of numbers, but {detail}",
        span,
        hint="e.g. `const W = [[1, 0.5], [0.2, -1]]`",
    )


def const_type(name: str, declared: str, span: Span | None) -> DGMError:
    return DGMTypeError(f"the value of const '{name}' is not {declared}", span)


def const_dims(name: str, declared: Shape, actual: Shape, span) -> DGMError:
    return DGMShapeError(
        f"const '{name}' is declared with shape {fmt_shape(declared)} but its value has shape {fmt_shape(actual)}",
        span,
    )


def deconv_packed(spec: DistSpec, span: Span | None) -> DGMError:
    return DGMShapeError(
        f"a deconv network can feed only one of {spec.name}'s arguments",
        span,
        hint=f"give the others separately, e.g. {spec.name}(deconv(z), 0.1)",
    )


def builtin_arity(name: str, arity: tuple[int, int | None], got: int, span) -> DGMError:
    low, high = arity
    if high is None:
        wanted = f"at least {low} argument{'s' if low > 1 else ''}"
    elif low == high:
        wanted = f"{low} argument{'s' if low > 1 else ''}"
    else:
        wanted = f"{low} to {high} arguments"
    return DGMTypeError(f"{name} takes {wanted}, got {got}", span, hint=BUILTIN_USAGE[name])


def builtin_keyword(name: str, keyword: str, span: Span | None) -> DGMError:
    return DGMTypeError(
        f"{name} takes no argument '{keyword}'", span, hint=BUILTIN_USAGE[name]
    )


BUILTIN_USAGE = {
    **{n: f"write {n}(x)" for n in BUILTINS},
    "dot": "write dot(a, b) for two vectors of one length",
    "matmul": "write matmul(A, b)",
    "concat": "write concat(a, b, ...)",
    "onehot": "write onehot(y, K) for an int y and K classes",
    "min": "write min(a, b): the smaller of a and b, entry by entry",
    "max": "write max(a, b): the larger of a and b, entry by entry",
    "clamp": "write clamp(x, lo, hi): x kept between lo and hi",
    "zeros": "write zeros(n) or zeros(n, m)",
    "ones": "write ones(n) or ones(n, m)",
}


def categorical_classes_unknown(spec: DistSpec) -> str:
    return (
        f"{spec.name}'s number of classes is not written anywhere; write it into the "
        "expression, e.g. `logits = mlp(z) + zeros(K)`"
    )
