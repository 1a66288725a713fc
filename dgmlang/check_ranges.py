"""What the checker knows about the values of an expression: the interval its entries lie in,
and whether its last dimension sums to 1 (a simplex).

A distribution's argument constrained to be positive, between 0 and 1, or a simplex must be
*shown* to be so (docs/language.md, "Rules the checker enforces"): by a literal, by the
declared type of a param or input, by the support of the distribution a variable is drawn
from, or by what functions and arithmetic do to those (``softplus``, ``exp``, ``sigmoid``,
``softmax``, sums and products of positive values, ...). A network output feeding an
argument directly is mapped onto its constraint, so it fits by construction.

>>> POSITIVE.fits("positive"), UNIT.fits("positive"), REAL.fits("positive")
(True, True, False)
>>> add(POSITIVE, literal(0.5)).fits("positive"), sub(POSITIVE, literal(0.5)).fits("positive")
(True, False)
>>> function("softplus", REAL).fits("positive"), function("relu", REAL).fits("positive")
(True, False)
>>> literal((0.2, 0.8)).fits("simplex"), function("softmax", REAL).fits("simplex")
(True, True)
>>> function("sin", REAL), function("cos", Range(0, 1.5)).fits("positive")
(Range(low=-1.0, high=1.0, low_open=False, high_open=False, simplex=False), True)
>>> clamp(REAL, literal(0.01), literal(1)).fits("positive"), maximum(REAL, literal(0)).low
(True, 0.0)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Iterable

__all__ = [
    "Range", "REAL", "POSITIVE", "NONNEGATIVE", "UNIT", "UNIT_CLOSED", "SIMPLEX", "ONEHOT",
    "add", "sub", "neg", "mul", "div", "power", "function", "reduce", "hull", "literal",
    "minimum", "maximum", "clamp", "any_above",
    "leaves", "value_fits", "problem", "RANGE_CONSTRAINTS",
]

INF = math.inf

#: The constraints of distribution arguments that a range can show (nonneg_int is a type).
RANGE_CONSTRAINTS = ("positive", "unit", "simplex")


@dataclass(frozen=True)
class Range:
    """Every entry lies between `low` and `high` (an end is excluded when open; an infinite
    end is always open); with `simplex`, every slice along the last dimension sums to 1."""

    low: float = -INF
    high: float = INF
    low_open: bool = True
    high_open: bool = True
    simplex: bool = False

    def fits(self, constraint: str) -> bool:
        """Whether every value in the range satisfies a `CONSTRAINTS` name."""
        if constraint == "positive":
            return self.low > 0 or (self.low == 0 and self.low_open)
        if constraint == "unit":
            return self.low >= 0 and self.high <= 1
        if constraint == "simplex":
            return self.simplex
        return True

    def entries(self) -> "Range":
        """The same interval, without the simplex fact (a part of a simplex)."""
        return replace(self, simplex=False) if self.simplex else self


def _float(x) -> float:
    """A number as a float (an integer too large for one is infinite)."""
    try:
        return float(x)
    except OverflowError:
        return INF if x > 0 else -INF


def _range(low: float, high: float, low_open: bool, high_open: bool, simplex: bool = False) -> Range:
    low, high = _float(low), _float(high)  # an integer too large for a float is infinite
    return Range(low, high, low_open or math.isinf(low), high_open or math.isinf(high), simplex)


REAL = Range()
POSITIVE = _range(0, INF, True, True)
NONNEGATIVE = _range(0, INF, False, True)
#: Open at both ends: a sigmoid, a Beta draw, a unit param.
UNIT = _range(0, 1, True, True)
#: Closed at both ends: a unit input or a Bernoulli value may be exactly 0 or 1.
UNIT_CLOSED = _range(0, 1, False, False)
SIMPLEX = _range(0, 1, True, True, simplex=True)
#: A simplex whose entries may be exactly 0 or 1 (a onehot, a simplex input).
ONEHOT = _range(0, 1, False, False, simplex=True)


def leaves(value) -> Iterable:
    """The numbers of a nested tuple (or the number itself)."""
    if isinstance(value, tuple):
        for v in value:
            yield from leaves(v)
    else:
        yield value


def value_fits(value, constraint: str) -> bool:
    """Whether a literal number or nested tuple satisfies `constraint`."""
    if constraint == "positive":
        return all(v > 0 for v in leaves(value))
    if constraint == "unit":
        return all(0 <= v <= 1 for v in leaves(value))
    if constraint in ("nonneg_int", "int"):
        return all(isinstance(v, int) and (v >= 0 or constraint == "int") for v in leaves(value))
    if constraint == "simplex":
        if not isinstance(value, tuple):
            return False
        if isinstance(value[0], tuple):
            return all(value_fits(v, "simplex") for v in value)
        return all(v >= 0 for v in value) and abs(sum(value) - 1) < 1e-6
    return True


def _rank(value) -> int:
    return 1 + _rank(value[0]) if isinstance(value, tuple) else 0


def any_above(low, high) -> bool:
    """Whether an entry of the literal `low` lies above the entry of `high` it meets under
    numpy's broadcasting (both numbers or nested tuples whose shapes broadcast).

    >>> any_above((0, 2), ((1, 3), (1, 1))), any_above(0, (1, 2))
    (True, False)
    """
    rank_low, rank_high = _rank(low), _rank(high)
    if rank_low == rank_high == 0:
        return low > high
    if rank_low > rank_high:
        return any(any_above(part, high) for part in low)
    if rank_high > rank_low:
        return any(any_above(low, part) for part in high)
    count = max(len(low), len(high))
    return any(any_above(low[i if len(low) > 1 else 0], high[i if len(high) > 1 else 0])
               for i in range(count))


def literal(value) -> Range:
    """The exact range of a literal number or nested tuple of numbers."""
    numbers = [_float(v) for v in leaves(value)]
    return _range(min(numbers), max(numbers), False, False,
                  isinstance(value, tuple) and value_fits(value, "simplex"))


def neg(a: Range) -> Range:
    return _range(-a.high, -a.low, a.high_open, a.low_open)


def add(a: Range, b: Range) -> Range:
    return _range(a.low + b.low, a.high + b.high, a.low_open or b.low_open, a.high_open or b.high_open)


def sub(a: Range, b: Range) -> Range:
    return add(a, neg(b))


def _times(x: float, x_open: bool, y: float, y_open: bool) -> tuple[float, bool]:
    """One endpoint product and whether it is excluded (0 times anything is 0, attained
    when the 0 is)."""
    if x == 0 or y == 0:
        zero_open = (x == 0 and x_open) or (y == 0 and y_open)
        closed_zero = (x == 0 and not x_open) or (y == 0 and not y_open)
        return 0.0, zero_open and not closed_zero
    product = x * y
    return product, x_open or y_open or math.isinf(product)


def mul(a: Range, b: Range) -> Range:
    candidates = [
        _times(a.low, a.low_open, b.low, b.low_open),
        _times(a.low, a.low_open, b.high, b.high_open),
        _times(a.high, a.high_open, b.low, b.low_open),
        _times(a.high, a.high_open, b.high, b.high_open),
    ]
    low = min(v for v, _ in candidates)
    high = max(v for v, _ in candidates)
    return _range(low, high, all(o for v, o in candidates if v == low),
                  all(o for v, o in candidates if v == high))


def _reciprocal_positive(b: Range) -> Range:
    low = 0.0 if math.isinf(b.high) else 1 / b.high
    high = INF if b.low == 0 else 1 / b.low
    return _range(low, high, b.high_open, b.low_open)


def div(a: Range, b: Range) -> Range:
    """`a / b`; anything when `b` may be 0."""
    if b.fits("positive"):
        return mul(a, _reciprocal_positive(b))
    if neg(b).fits("positive"):
        return neg(mul(a, _reciprocal_positive(neg(b))))
    return REAL


def power(a: Range, exponent: Range, whole: bool) -> Range:
    """`a ** exponent`; `whole`: the exponent is a whole number written in the program."""
    if a.fits("positive"):
        return POSITIVE
    if a.low >= 0:
        return NONNEGATIVE
    if whole and exponent.low == exponent.high and exponent.low % 2 == 0:
        return NONNEGATIVE
    return REAL


def _monotone(f: Callable[[float], float], a: Range, low_limit: float, high_limit: float) -> Range:
    low = low_limit if a.low == -INF else f(a.low)
    high = high_limit if a.high == INF else f(a.high)
    return _range(low, high, a.low_open, a.high_open)


def _softplus(x: float) -> float:
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def _safe(f: Callable[[float], float]) -> Callable[[float], float]:
    def wrapped(x: float) -> float:
        try:
            return f(x)
        except OverflowError:
            return INF
    return wrapped


def function(name: str, a: Range) -> Range:
    """The range of an element-wise or last-dimension built-in applied to a value in `a`."""
    if name == "exp":
        return _monotone(_safe(math.exp), a, 0.0, INF)
    if name == "softplus":
        return _monotone(_safe(_softplus), a, 0.0, INF)
    if name == "sigmoid":
        return _monotone(_sigmoid, a, 0.0, 1.0)
    if name == "tanh":
        return _monotone(math.tanh, a, -1.0, 1.0)
    if name == "log":
        if not a.fits("positive"):
            return REAL
        return _monotone(lambda x: -INF if x == 0 else math.log(x), a, -INF, INF)
    if name == "sqrt":
        return _monotone(math.sqrt, a, 0.0, INF) if a.low >= 0 else REAL
    if name == "relu":
        if a.low >= 0:
            return a.entries()
        return _range(0, max(a.high, 0), False, a.high_open if a.high > 0 else False)
    if name == "abs":
        if a.low >= 0:
            return a.entries()
        if a.high <= 0:
            return neg(a)
        high, high_open = (-a.low, a.low_open) if -a.low > a.high else (a.high, a.high_open)
        return _range(0, high, False, high_open)
    if name in ("sin", "cos"):
        return _periodic(math.sin if name == "sin" else math.cos, a, 0.5 if name == "sin" else 0.0)
    if name == "softmax":
        return SIMPLEX
    if name == "log_softmax":
        return _range(-INF, 0, True, False)
    return REAL


def _periodic(f: Callable[[float], float], a: Range, peak: float) -> Range:
    """sin or cos over `a`: its values at the ends (open where the end is) and at the peaks
    and troughs inside, which lie at (`peak` + k/2) * pi; [-1, 1] over an unbounded range."""
    width = a.high - a.low
    if math.isinf(width) or width >= 2 * math.pi:
        return _range(-1, 1, False, False)
    candidates = [(f(a.low), a.low_open), (f(a.high), a.high_open)]
    k = math.ceil(a.low / math.pi - peak)
    while (k + peak) * math.pi <= a.high:
        x = (k + peak) * math.pi
        if a.low < x < a.high:
            candidates.append((f(x), False))
        k += 1
    low = min(v for v, _ in candidates)
    high = max(v for v, _ in candidates)
    return _range(max(low, -1.0), min(high, 1.0), all(o for v, o in candidates if v == low),
                  all(o for v, o in candidates if v == high))


def maximum(a: Range, b: Range) -> Range:
    """The element-wise larger of a value in `a` and one in `b`."""
    if a.low != b.low:
        low, low_open = (a.low, a.low_open) if a.low > b.low else (b.low, b.low_open)
    else:
        low, low_open = a.low, a.low_open or b.low_open
    if a.high != b.high:
        high, high_open = (a.high, a.high_open) if a.high > b.high else (b.high, b.high_open)
    else:
        high, high_open = a.high, a.high_open and b.high_open
    return _range(low, high, low_open, high_open)


def minimum(a: Range, b: Range) -> Range:
    """The element-wise smaller of a value in `a` and one in `b`."""
    return neg(maximum(neg(a), neg(b)))


def clamp(x: Range, low: Range, high: Range) -> Range:
    """``clamp(x, lo, hi)``, which is ``min(max(x, lo), hi)`` (hi wins where lo > hi)."""
    return minimum(maximum(x, low), high)


def reduce(name: str, a: Range, size: int, last: int) -> Range:
    """`sum` or `mean` of `size` entries in `a` (`last`: the length of the last dimension)."""
    if name == "mean":
        return a.entries()
    if a.simplex:
        rows = size // last
        return _range(rows, rows, False, False)
    return mul(a.entries(), _range(size, size, False, False))


def hull(ranges: Iterable[Range]) -> Range:
    """The smallest range holding every one of `ranges` (not a simplex)."""
    items = list(ranges)
    low = min(r.low for r in items)
    high = max(r.high for r in items)
    return _range(low, high, all(r.low_open for r in items if r.low == low),
                  all(r.high_open for r in items if r.high == high))


def problem(a: Range, constraint: str) -> str:
    """Why values in `a` may break `constraint`, as the end of a sentence."""
    if constraint == "simplex":
        return "is not known to sum to 1" if a.low >= 0 else "can be negative"
    if a.low == -INF and a.high == INF:
        return "can be any real number"
    if a.low < 0:
        return "can be negative"
    if constraint == "positive":
        return "can be 0"
    return "can exceed 1" if a.high > 1 else "is not known to be"
