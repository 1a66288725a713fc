"""Shapes for the checker: numpy's broadcasting, sizes, how a shape or a value is written in
a message, and the arithmetic of constant values (nested tuples of numbers)."""
from __future__ import annotations

import math


Shape = tuple[int, ...]


def fmt_shape(shape: Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def broadcast_shapes(a: Shape, b: Shape) -> Shape | None:
    """numpy's broadcast of two shapes, or None."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and x != 1 and y != 1:
            return None
        out.append(max(x, y) if x != 1 and y != 1 else (y if x == 1 else x))
    return tuple(reversed(out))


def broadcasts_to(shape: Shape, target: Shape) -> bool:
    return broadcast_shapes(shape, target) == target


def flat_size(shape: Shape) -> int:
    return math.prod(shape)


def fmt_value(value) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    return repr(value)


def negate(value):
    return tuple(negate(v) for v in value) if isinstance(value, tuple) else -value


def to_float(value):
    if isinstance(value, tuple):
        return tuple(to_float(v) for v in value)
    return float(value)
