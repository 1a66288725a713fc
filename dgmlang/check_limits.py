"""The checker's limits (`dgmlang.limits`): sizes of values, networks and class counts, the
64-bit range of integers and the float32 range of written numbers. Each check raises a
located `DGMLimitError` naming the limit and how to raise it, before anything is allocated.

>>> print(number_out_of_range(1e300, None))
1e+300 is not a float32 number (the model computes in float32, whose largest is 3.4028235e+38)
    hint: a model's numbers lie between 1.2e-38 and 3.4e38 in size (or are 0)
"""
from __future__ import annotations

import math
import struct

from dgmlang import limits
from dgmlang.check_shapes import Shape, fmt_shape
from dgmlang.errors import DGMError, DGMLimitError, DGMModelError
from dgmlang.source import Span


def _raise_hint(name: str, needed: int) -> str:
    return (f"raise the limit with `dgmlang.limits.{name} = {needed}` before compiling, "
            f"or the environment variable DGM_{name}={needed}")


# ------------------------------------------------------------------ numbers


def fits_float32(value: float) -> bool:
    """Whether `value` is a normal float32 number or 0: finite there, and not a nonzero
    smaller than float32's smallest normal number (which would round to 0 or to a
    subnormal that keeps few of its digits)."""
    try:
        rounded = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return False
    return math.isfinite(rounded) and (value == 0 or abs(value) >= limits.FLOAT32_TINY)


def number_out_of_range(value, span: Span | None) -> DGMError:
    if isinstance(value, int):
        return DGMLimitError(
            f"the integer {_short(value)} is beyond the 64-bit range (at most {limits.MAX_INT} in size)",
            span,
            hint="integers in a model are int64; write a real number such as 1e30 for a large real value",
        )
    return DGMLimitError(
        f"{value!r} is not a float32 number (the model computes in float32, whose largest is "
        f"3.4028235e+38)" if abs(value) > 1 else
        f"{value!r} is not a float32 number (the model computes in float32, whose smallest "
        f"normal number is 1.1754944e-38)",
        span,
        hint="a model's numbers lie between 1.2e-38 and 3.4e38 in size (or are 0)",
    )


def _short(value: int) -> str:
    digits = len(str(value)) if value.bit_length() < 20000 else None
    if digits is not None and digits <= 30:
        return str(value)
    return f"with {digits} digits" if digits is not None else "with thousands of digits"


def check_number(value, span: Span | None) -> None:
    """A number written in the model, or a const's value: an int in int64, a real in float32."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > limits.MAX_INT:
            raise number_out_of_range(value, span)
    elif isinstance(value, float) and not fits_float32(value):
        raise number_out_of_range(value, span)


def fits_number(value) -> bool:
    """Whether `check_number` accepts `value`."""
    try:
        check_number(value, None)
    except DGMLimitError:
        return False
    return True


def check_numbers(value, span: Span | None) -> None:
    """`check_number` on every entry of a number or nested tuple of numbers."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, tuple):
            stack.extend(v)
        else:
            check_number(v, span)


def int_power_too_large(base: int, exponent: int) -> bool:
    """Whether ``base ** exponent`` (ints, exponent >= 0) is beyond int64; computed by
    logarithms, so nothing large is ever built."""
    if exponent < 0 or abs(base) <= 1:
        return False
    return exponent * math.log2(abs(base)) >= 63


def int_result_too_large(written: str, span: Span | None) -> DGMError:
    return DGMLimitError(
        f"{written} is beyond the 64-bit integer range (at most {limits.MAX_INT} in size)",
        span,
        hint="integers in a model are int64; write a real number (e.g. 10.0 ** 30) for a large real value",
    )


# ------------------------------------------------------------------ sizes


def check_elements(shape: Shape, what: str, span: Span | None) -> None:
    """A value of `shape` has at most `limits.MAX_ELEMENTS` entries."""
    size = math.prod(shape)
    if size > limits.MAX_ELEMENTS:
        raise DGMLimitError(
            f"{what} has shape {fmt_shape(shape)}, {size} entries; the limit is "
            f"{limits.MAX_ELEMENTS}",
            span,
            hint=_raise_hint("MAX_ELEMENTS", size),
        )


def check_width(size: int, option: str, span: Span | None) -> None:
    if size > limits.MAX_WIDTH:
        raise DGMLimitError(
            f"a size in {option} is {size}; the limit is {limits.MAX_WIDTH}",
            span,
            hint=_raise_hint("MAX_WIDTH", size),
        )


def check_classes(k: int, what: str, span: Span | None) -> None:
    if k > limits.MAX_CLASSES:
        raise DGMLimitError(
            f"{what} has {k} classes; the limit is {limits.MAX_CLASSES}",
            span,
            hint=_raise_hint("MAX_CLASSES", k),
        )


def mlp_parameters(sizes: tuple[int, ...]) -> int:
    """The weights and biases of linear layers of `sizes` (in, *hidden, out)."""
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def deconv_parameters(in_size: int, hidden: tuple[int, ...], channels: tuple[int, ...],
                      shape: Shape) -> tuple[int, int]:
    """A deconv's weights and its largest layer output per data point (as `dgmlang.nets.Deconv`
    builds it: linear layers to a (channels[0], h0, w0) map, then one transposed convolution
    per channel, halving h0 and w0 as often as they divide)."""
    out_channels, height, width = (1, *shape) if len(shape) == 2 else shape
    doublings = 0
    while (doublings < len(channels) and height % 2 ** (doublings + 1) == 0
           and width % 2 ** (doublings + 1) == 0):
        doublings += 1
    h, w = height >> doublings, width >> doublings
    count = mlp_parameters((in_size, *hidden, channels[0] * h * w))
    widest = channels[0] * h * w
    for i, (c_in, c_out) in enumerate(zip(channels, channels[1:] + (out_channels,))):
        kernel = 4 if i < doublings else 3
        count += c_in * c_out * kernel * kernel + c_out
        if i < doublings:
            h, w = h * 2, w * 2
        widest = max(widest, c_out * h * w)
    return count, widest


def check_network(name: str, count: int, span: Span | None, guide: bool = False) -> None:
    if count > limits.MAX_PARAMETERS:
        what = f"the guide network of '{name}' may have" if guide else f"network '{name}' has"
        raise DGMLimitError(
            f"{what} {count} weights; the limit is {limits.MAX_PARAMETERS}",
            span,
            hint=("it may read every data, input and latent value; give it smaller sizes with "
                  "`guide(hidden = [...])`, or " if guide else "")
            + _raise_hint("MAX_PARAMETERS", count),
        )


def check_total_weights(total: int, what: str, span: Span | None) -> None:
    """The model's networks and params together within `limits.MAX_PARAMETERS`."""
    if total > limits.MAX_PARAMETERS:
        raise DGMLimitError(
            f"with {what}, the model's networks and params have {total} weights together; "
            f"the limit is {limits.MAX_PARAMETERS}",
            span,
            hint=_raise_hint("MAX_PARAMETERS", total),
        )


# ------------------------------------------------------------------ the model


def empty_model(name: str, span: Span | None) -> DGMError:
    return DGMModelError(
        f"model '{name}' has no random variable",
        span,
        hint="declare what it describes, e.g. `data x` with `x ~ Normal(0, 1)`",
    )
