"""User data in, checked tensors out: every array is validated against the model before use.

`prepare_data` takes what a user hands to `fit`, `log_prob` or `invert` — a dict of tensors,
numpy arrays (memmaps too) or nested lists keyed by variable name, one bare array when the
model has a single `data` variable and no inputs, or a map-style `torch.utils.data.Dataset`
whose ``dataset[i]`` is row i as a dict of variable name -> value — and returns a `Dataset`
whose rows read as tensors shaped ``(n, *shape)``: floats in torch's default dtype, class
labels and `int` inputs as int64. Rows are read and converted when a selection of them is
asked for (``dataset.rows(batch).values``), so a memmap or a torch Dataset is never loaded
whole; the checks read the data once, `CHUNK_CELLS` entries at a time, and report what
checking the whole array at once would. Anything that does not fit the model is a
`DGMDataError` naming the variable, the first bad row (and column) and what was expected,
raised before any training starts:

* unknown names (with "did you mean"), missing names, a bare array where a dict is needed;
* shapes other than ``(n, *shape)``, row counts that differ between variables, no rows;
* dtypes: complex, string or object arrays; a floating array of class labels for a
  `Categorical` or an `input ... : int` (convert with ``.long()`` / ``.astype(int)``);
* values outside the support of the variable's distribution (a count above a literal
  `total_count`, negative or fractional counts, a class >= K, a Bernoulli value other than
  0 or 1, a negative value where the support is positive, a row off the simplex, ...) or
  outside an input's declared type;
* integer values outside what every use of them takes (`dgmlang.facts.ModelFacts`): a value
  given to ``onehot(y, K)`` must lie in 0..K-1, an index ``mu[c]`` within the indexed
  dimension, a Binomial `total_count` read from an input (or other data) must be a whole
  number >= 0, and each count of that Binomial at most its row's total_count;
* support edges where a log-density is infinite or undefined: 0 for a Gamma value, 0 or 1
  for a Beta value, a 0 entry in a Dirichlet row (torch's supports include these edges, but
  the log-density there is -inf or +inf unless a concentration is exactly 1);
* NaN and infinite values, and values whose magnitude overflows the dtype the model computes
  in (float32 unless the model was moved to another: ``1e300`` is refused, not turned into
  ``inf``); in an integer array, values an int64 cannot hold. In `fit`, `log_prob` and
  `invert` (``allow_missing=True``) NaN marks a missing entry of a `data` variable (as does False in
  `mask`); infinities are never valid.

>>> from dgmlang.ir import Draw, Lit, ModelIR, Variable
>>> ir = ModelIR("counts", (Variable("x", "data", (2,)),),
...              (Draw("x", "Binomial", (("total_count", Lit(16, (), True)),
...                                      ("logits", Lit(0.0, ())))),))
>>> prepare_data(ir, [[3, 16], [0, 5]]).values["x"]
tensor([[ 3., 16.],
        [ 0.,  5.]])
>>> prepare_data(ir, {"x": [[3, 17], [0, 5]]})
Traceback (most recent call last):
...
dgmlang.errors.DGMDataError: data variable 'x' (Binomial): row 0, column 1 holds 17, outside its support
    hint: expected a whole number in 0..16
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

import pyro.distributions as pyro_dist

from dgmlang.errors import DGMDataError, DGMUsageError, did_you_mean
from dgmlang.facts import ModelFacts
from dgmlang.inverse import imputable
from dgmlang.ir import Lit, ModelIR, Ref, Variable
from dgmlang.marginals import simplex_fill
from dgmlang.source import Span
from dgmlang.supports import EDGE_HINTS, support_of


def positive_int(name: str, value: Any) -> None:
    """Refuse an argument (a count of steps, samples, rows) that is not a positive integer.

    >>> positive_int("num_samples", 0)
    Traceback (most recent call last):
    ...
    dgmlang.errors.DGMUsageError: num_samples must be a positive integer, not 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DGMUsageError(f"{name} must be a positive integer, not {value!r}")


#: Where a value is, for messages: ``locate(variable, index)`` with `index` the position in
#: the ``(n, *shape)`` array (a shorter index is a whole row, or a whole last-dim row).
Locate = Callable[[Variable, tuple[int, ...]], str]


# ---------------------------------------------------------------- integer uses


@dataclass(frozen=True)
class _Bound:
    """What one use of an integer value takes: whole numbers in ``0..high`` (no upper bound
    when `high` is None). `says` completes "row 3 holds 10, but ..."; `span` is the use."""

    high: int | None
    says: str
    span: Span | None = None

    def allows(self, values: torch.Tensor) -> torch.Tensor:
        ok = values >= 0
        if values.is_floating_point():
            ok &= values == values.round()
        if self.high is not None:
            ok &= values <= self.high
        return ok

    @property
    def expected(self) -> str:
        taken = "a whole number >= 0" if self.high is None else f"a whole number in 0..{self.high}"
        return taken + (f" (the use at {self.span})" if self.span is not None else "")


@dataclass(frozen=True)
class _TotalCount:
    """A Binomial variable `target` whose total_count is the value of variable `source`
    (an input, or other data), of shape `shape` (broadcast against the target's shape)."""

    target: str
    source: str
    shape: tuple[int, ...]
    span: Span | None = None


@dataclass(frozen=True)
class _Rules:
    """The rules the uses of integer values add to the supports, for one model."""

    bounds: Mapping[str, tuple[_Bound, ...]]
    total_counts: tuple[_TotalCount, ...]


def _variable_behind(facts: ModelFacts, expr) -> str | None:
    """The variable `expr` is, looking through lets that only rename one; None otherwise."""
    seen: set[str] = set()
    while isinstance(expr, Ref) and expr.name in facts.lets and expr.name not in seen:
        seen.add(expr.name)
        expr = facts.lets[expr.name]
    if isinstance(expr, Ref) and expr.name in facts.variables:
        return expr.name
    return None


def _rules(facts: ModelFacts) -> _Rules:
    """Every bound on a `data` or `input` value from its uses: ``onehot(y, K)``, an index
    ``mu[c]``, a Binomial total_count (also through lets that rename the value)."""
    bounds: dict[str, list[_Bound]] = {}
    checked_roles = ("data", "input")
    for used, uses in facts.integer_uses.items():
        name = _variable_behind(facts, Ref(used, ()))
        if name is None or facts.variables[name].role not in checked_roles:
            continue
        for use in uses:
            if use.kind == "onehot":
                says = f"onehot({used}, {use.limit}) takes 0..{use.limit - 1}"
            elif use.kind == "length":
                says = f"it is the length of a sequence of {use.limit - 1} steps (0..{use.limit - 1})"
            else:
                says = f"it indexes a dimension of size {use.limit} (0..{use.limit - 1})"
            bounds.setdefault(name, []).append(_Bound(use.limit - 1, says, use.span))
    total_counts = []
    for target, draw in facts.draws.items():
        if draw.dist != "Binomial" or facts.variables[target].role not in checked_roles:
            continue
        count = draw.param("total_count")
        source = _variable_behind(facts, count) if count is not None else None
        if source is None or facts.variables[source].role not in checked_roles:
            continue
        says = f"it is the total_count of Binomial '{target}', a whole number >= 0"
        bounds.setdefault(source, []).append(_Bound(None, says, count.span))
        total_counts.append(_TotalCount(target, source, tuple(count.shape), count.span))
    return _Rules({k: tuple(v) for k, v in bounds.items()}, tuple(total_counts))


def _check_bounds(what: str, var: Variable, values: torch.Tensor, missing: torch.Tensor,
                  bounds: tuple[_Bound, ...], locate: Locate) -> None:
    for bound in bounds:
        ok = bound.allows(values) | missing
        if not bool(ok.all()):
            index = _first(~ok)
            raise DGMDataError(f"{what}: {locate(var, index)} holds {_shown(values[index])}, "
                               f"but {bound.says}", hint=f"expected {bound.expected}")


def _check_total_counts(ir: ModelIR, rule: _TotalCount, values: Mapping[str, torch.Tensor],
                        observed: Mapping[str, torch.Tensor], locate: Locate, offset: int = 0) -> None:
    """Each count of a Binomial whose total_count comes from another variable is at most
    that row's total_count (entries missing on either side are not compared); `values`
    may be a chunk of the rows whose row 0 is row `offset`."""
    locate = _shifted(locate, offset)
    counts, totals = values[rule.target], values[rule.source]
    extra = counts.dim() - totals.dim()  # event dims the total_count broadcasts over
    totals = totals.reshape(totals.shape[0], *(1,) * extra, *totals.shape[1:])
    ok = counts <= totals
    for name, shaped in ((rule.target, None), (rule.source, totals.shape)):
        if name in observed:
            seen = observed[name]
            ok |= ~(seen if shaped is None else seen.reshape(shaped))
    if not bool(ok.all()):
        index = _first(~ok)
        total_index = tuple(0 if size == 1 else j for j, size in zip(index, totals.shape))
        source = ir.variable(rule.source)
        owner = f"input '{source.name}'" if source.role == "input" else f"'{source.name}'"
        raise DGMDataError(
            f"{_describe(ir.variable(rule.target), ir)}: "
            f"{locate(ir.variable(rule.target), index)} holds "
            f"{_shown(counts[index])}, more than its total_count ({owner} holds "
            f"{_shown(totals[total_index])} in row {index[0] + offset})",
            hint="a Binomial count lies in 0..total_count, row by row"
                 + (f" (the total_count at {rule.span})" if rule.span is not None else ""),
        )


# ---------------------------------------------------------------- conversion


def _describe(var: Variable, ir: ModelIR) -> str:
    if var.role == "data":
        return f"data variable '{var.name}' ({ir.draw(var.name).dist})"
    return f"input '{var.name}'" + (f" ({var.type})" if var.type != "real" else "")


def _to_tensor(name: str, what: str, value: Any) -> torch.Tensor:
    """A tensor from a tensor, numpy array, number or nested list; strings/objects refused."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as err:
            raise DGMDataError(f"{what} cannot be read as an array: {err}",
                               hint="give a tensor, a numpy array or a nested list of numbers") from None
        if array.dtype.kind not in "biuf":
            raise DGMDataError(
                f"{what} holds values of dtype {array.dtype}, not numbers",
                hint="give a numeric tensor or numpy array (ragged lists are not arrays)",
            )
        tensor = torch.tensor(array)
    if tensor.is_complex():
        raise DGMDataError(f"{what} has complex dtype {tensor.dtype}", hint="give real numbers")
    return tensor.cpu()


def _position(index: tuple[int, ...]) -> str:
    """``row 3``, ``row 3, column 1`` or ``row 3, index (1, 2)``."""
    row, rest = index[0], index[1:]
    if not rest:
        return f"row {row}"
    if len(rest) == 1:
        return f"row {row}, column {rest[0]}"
    return f"row {row}, index {rest}"


def _locate_index(var: Variable, index: tuple[int, ...]) -> str:
    """The default `Locate`: positions counted from 0 in the ``(n, *shape)`` array."""
    return _position(index)


def _first(bad: torch.Tensor) -> tuple[int, ...]:
    flat = int(bad.reshape(-1).nonzero()[0, 0])
    return tuple(int(i) for i in np.unravel_index(flat, tuple(bad.shape)))


def _shown(x: torch.Tensor) -> str:
    value = x.item()
    if isinstance(value, float) and value.is_integer() and not math.isinf(value) and abs(value) < 1e16:
        return str(int(value))
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _float_dtypes(dtype: torch.dtype | None) -> list[torch.dtype]:
    """The float dtypes a value passes through: torch's default (what `prepare_data` stores)
    and the model's (what it computes in), when another."""
    dtypes = [torch.get_default_dtype()]
    if dtype is not None and dtype.is_floating_point and dtype not in dtypes:
        dtypes.append(dtype)
    return dtypes


def _range_checks(what: str, var: Variable, tensor: torch.Tensor, dtype: torch.dtype | None,
                  locate: Locate):
    """Refuse finite values that a float dtype the data passes through turns into infinities
    (``1e300`` in float32), and integers an int64 cannot hold. A generator of checks: each
    `yield` starts the next one (see `_run_checks`)."""
    yield
    if tensor.dtype == torch.uint64:
        big = tensor.to(torch.float64) >= 2.0 ** 63  # uint64 has no comparisons
        if bool(big.any()):
            index = _first(big)
            raise DGMDataError(f"{what}: {locate(var, index)} holds {_shown(tensor[index])}, "
                               f"more than an int64 holds",
                               hint=f"values up to {torch.iinfo(torch.int64).max}")
    finite = torch.isfinite(tensor) if tensor.is_floating_point() else None
    for target in _float_dtypes(dtype):
        yield
        if tensor.dtype == target:
            continue
        converted = tensor.to(target)
        over = torch.isinf(converted)
        if finite is not None:
            over &= finite
        if bool(over.any()):
            index = _first(over)
            largest = torch.finfo(target).max
            name = str(target).replace("torch.", "")
            raise DGMDataError(
                f"{what}: {locate(var, index)} holds {_shown(tensor[index])}, beyond the range "
                f"of {name} (largest {largest:.4g}), the dtype the model computes in",
                hint="rescale the data (e.g. divide by a constant, or model its logarithm)")


def _value_checks(ir: ModelIR, var: Variable, tensor: torch.Tensor, *, allow_missing: bool,
                  observed: torch.Tensor | None, support, bounds: tuple[_Bound, ...],
                  dtype: torch.dtype | None, locate: Locate):
    """The checks of one variable's rows `tensor` (all of them, or a chunk), as a generator:
    each `yield` starts the next check, a failed one raises its `DGMDataError`, and the
    generator returns the converted rows and their missing entries (`_run_checks` runs it).
    Checks run in a fixed order, so over chunks the first failure of the earliest check is
    the one the whole array would report."""
    what = _describe(var, ir)
    yield
    is_float = tensor.is_floating_point()
    if support.integer_dtype and is_float:
        # class labels with missing entries may come as floats, NaN marking the missing
        # ones (a column of labels read with gaps is float): whole numbers elsewhere
        labels_with_gaps = var.role == "data" and allow_missing
        if not labels_with_gaps:
            kind = "class labels" if var.role == "data" else "whole numbers"
            raise DGMDataError(
                f"{what} holds {kind} but has floating dtype {tensor.dtype}",
                hint="give an integer array (convert with .long() or .astype(int)); in fit, "
                     "log_prob and invert NaN may mark a missing label",
            )
        fraction = ~torch.isnan(tensor) & ~torch.isinf(tensor) & (tensor != torch.floor(tensor))
        if bool(fraction.any()):
            raise DGMDataError(
                f"{what}: {locate(var, _first(fraction))} holds {_shown(tensor[_first(fraction)])}, "
                "not a class label", hint="class labels are whole numbers; NaN marks a missing one")
    yield
    if var.role == "data" and allow_missing:
        missing = torch.isnan(tensor) if is_float else torch.zeros(tensor.shape, dtype=torch.bool)
    else:
        missing = torch.zeros(tensor.shape, dtype=torch.bool)
        if is_float and torch.isnan(tensor).any():
            hint = ("NaN marks a missing entry only where missing entries are allowed: the data given to "
                    "fit, log_prob and invert (dgm fit, score and invert), never a model's inputs"
                    if var.role == "data" else "an input is never missing; give every value")
            raise DGMDataError(f"{what}: {locate(var, _first(torch.isnan(tensor)))} is NaN", hint=hint)
    yield
    if is_float and torch.isinf(tensor).any():
        raise DGMDataError(f"{what}: {locate(var, _first(torch.isinf(tensor)))} is infinite",
                           hint=f"expected {support.description}")
    yield from _range_checks(what, var, tensor, dtype, locate)
    if observed is not None:
        missing = missing | ~observed

    yield
    if support.event_rank and missing.any():
        # a partly missing row: its observed entries, positive, must leave a positive rest
        partial = missing.any(-1) & ~missing.all(-1)
        rest = 1 - torch.where(missing, torch.zeros_like(tensor), tensor).sum(-1)
        full = partial & ~(rest > 0)
        if bool(full.any()):
            row = _first(full)
            raise DGMDataError(
                f"{what}: {locate(var, row)} is partly missing, but its observed entries sum to "
                f"{_shown(1 - rest[row])}, leaving nothing for the missing ones",
                hint="a Dirichlet row's entries are positive and sum to 1; mark the row's "
                     "entries missing or give them all")
    yield
    original = tensor
    tensor = tensor.long() if support.integer_dtype else tensor.to(torch.get_default_dtype())
    checkable = torch.where(missing, torch.full_like(tensor, support.placeholder), tensor)
    if support.event_rank and missing.any():  # partly missing rows filled onto the simplex
        checkable = simplex_fill(checkable, missing)
    ok = support.constraint.check(checkable)
    if not bool(ok.all()):
        index = _first(~ok)
        if support.event_rank:
            shown = f"{original[index].tolist()}"
        else:  # as given, and as converted when that moved it (1 - 1e-9 is 1 in float32)
            shown = _shown(original[index])
            if original.is_floating_point() and float(original[index]) != float(tensor[index]):
                name = str(tensor.dtype).replace("torch.", "")
                shown = f"{float(original[index])!r} ({_shown(tensor[index])} in {name})"
        hint = f"expected {support.description}"
        dist = ir.draw(var.name).dist if var.role == "data" else None
        if dist in EDGE_HINTS and bool(getattr(pyro_dist, dist).support.check(checkable)[index]):
            hint += f"; {EDGE_HINTS[dist]}"  # an edge torch's support admits
        raise DGMDataError(f"{what}: {locate(var, index)} holds {shown}, outside its support",
                           hint=hint)
    for bound in bounds:
        yield
        _check_bounds(what, var, checkable, missing, (bound,), locate)
    return checkable, missing


def _run_checks(checks, before: float = math.inf) -> tuple[int | None, Any]:
    """Run a generator of checks (`_value_checks`) up to, not including, check number
    `before`: ``(None, its result)`` when all ran and passed, ``(None, None)`` when it
    stopped at `before`, ``(k, error)`` when check number k failed."""
    number = -1
    try:
        while True:
            next(checks)
            number += 1
            if number >= before:
                checks.close()
                return None, None
    except StopIteration as done:
        return None, done.value
    except DGMDataError as err:
        return number, err


def _convert(ir: ModelIR, var: Variable, value: Any, *, allow_missing: bool,
             observed: torch.Tensor | None, facts: ModelFacts, rules: _Rules,
             dtype: torch.dtype | None = None,
             locate: Locate = _locate_index) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check one variable held in memory; its tensor and (for data with missing entries)
    its observed mask."""
    what = _describe(var, ir)
    tensor = _to_tensor(var.name, what, value)
    _check_shape(what, var, tuple(tensor.shape))
    _, result = _run_checks(_value_checks(
        ir, var, tensor, allow_missing=allow_missing, observed=observed,
        support=support_of(ir, var, facts=facts), bounds=rules.bounds.get(var.name, ()),
        dtype=dtype, locate=locate))
    if isinstance(result, DGMDataError):
        raise result
    checkable, missing = result
    return checkable, (~missing if bool(missing.any()) else None)


def _check_shape(what: str, var: Variable, shape: tuple[int, ...]) -> None:
    """Refuse a shape other than ``(n, *var.shape)`` with n > 0."""
    expected = "(n" + "".join(f", {d}" for d in var.shape) + ")"
    if len(shape) != len(var.shape) + 1 or tuple(shape[1:]) != var.shape:
        hint = f"one row per data point, each of shape {var.shape}"
        if len(shape) == len(var.shape) + 2 and shape[-1] == 1 and tuple(shape[1:-1]) == var.shape:
            hint = "drop the trailing dimension of size 1 (e.g. x.squeeze(-1))"
        raise DGMDataError(f"{what} has shape {shape}; expected {expected}", hint=hint)
    if shape[0] == 0:
        raise DGMDataError(f"{what} has no rows", hint="give at least one data point")


def _shifted(locate: Locate, offset: int) -> Locate:
    """`locate` for a chunk whose row 0 is row `offset` of the data."""
    if offset == 0:
        return locate
    return lambda var, index: locate(var, (index[0] + offset, *index[1:]))


#: How many entries (rows x entries per row) are read, checked or converted at a time:
#: validation streams through the data in pieces of this size, and so does converting a
#: large selection of rows, so neither holds a second full copy of the data.
CHUNK_CELLS = 2 ** 20


def chunk_rows(row_shape: tuple[int, ...]) -> int:
    """How many rows of shape `row_shape` make one `CHUNK_CELLS`-entry piece (at least one).

    >>> chunk_rows((64,)), chunk_rows(())
    (16384, 1048576)
    """
    return max(1, CHUNK_CELLS // max(1, math.prod(row_shape)))


# ---------------------------------------------------------------- row sources

def _normal_rows(index: Any, n: int) -> slice | np.ndarray:
    """`index` (a slice, or row numbers as a tensor, array or list; a boolean tensor picks
    the rows where it is True) as a concrete forward slice or an int64 array."""
    if isinstance(index, slice):
        start, stop, step = index.indices(n)
        # a backward slice becomes row numbers: its concrete stop may be -1, which a slice reads as the last row
        return slice(start, stop, step) if step > 0 else np.arange(start, stop, step, dtype=np.int64)
    if isinstance(index, torch.Tensor):
        if index.dtype == torch.int64 and index.device.type == "cpu" and not index.requires_grad:
            return index.numpy()  # a batch's row numbers: the common case, kept cheap
        index = index.detach().cpu()
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        return index.numpy().astype(np.int64, copy=False)
    index = np.asarray(index)
    if index.dtype == np.bool_:
        return np.flatnonzero(index)
    return index.astype(np.int64, copy=False)


def _count(rows: slice | np.ndarray) -> int:
    return len(range(rows.start, rows.stop, rows.step)) if isinstance(rows, slice) else len(rows)


def _compose(outer: slice | np.ndarray, inner: slice | np.ndarray) -> slice | np.ndarray:
    """The rows `inner` picks out of the rows `outer` picks (both normal, see `_normal_rows`)."""
    if isinstance(outer, np.ndarray):
        return outer[inner]
    picked = range(outer.start, outer.stop, outer.step)
    if isinstance(inner, np.ndarray) and outer.start == 0 and outer.step == 1:
        return inner  # rows of all rows: indexing a column checks the row numbers itself
    if isinstance(inner, slice):
        picked = picked[inner]
        if picked.step > 0:
            return slice(picked.start, picked.stop, picked.step)
        return np.arange(picked.start, picked.stop, picked.step, dtype=np.int64)
    inner = np.where(inner < 0, inner + len(picked), inner)
    if inner.size and (inner.min() < 0 or inner.max() >= len(picked)):
        raise IndexError(f"row numbers out of range for {len(picked)} rows")
    return picked.start + inner * picked.step


def _pieces(rows: slice | np.ndarray, per_piece: int):
    """`rows` in pieces of at most `per_piece` rows: (position of the piece's first row
    within `rows`, the piece)."""
    total = _count(rows)
    for start in range(0, total, per_piece):
        yield start, _compose(rows, slice(start, min(start + per_piece, total), 1))


class _Column(Protocol):
    """The raw rows of one variable, read on demand: `shape` is ``(n, *row shape)``,
    `dtype` the dtype its rows come in, `take(rows)` the rows as a CPU tensor, unconverted."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def take(self, rows: slice | np.ndarray) -> torch.Tensor: ...


class _ArrayColumn:
    """A numpy array or memmap, read a selection at a time (a memmap stays on disk)."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype

    def take(self, rows: slice | np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(self.array[rows]))


class _TensorColumn:
    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor.detach()
        self.shape = tuple(tensor.shape)
        self.dtype = tensor.dtype

    def take(self, rows: slice | np.ndarray) -> torch.Tensor:
        if isinstance(rows, np.ndarray):
            rows = torch.from_numpy(rows)
            if self.tensor.device.type != "cpu":
                rows = rows.to(self.tensor.device)
        taken = self.tensor[rows]
        return taken if taken.device.type == "cpu" else taken.cpu()


class _DatasetRows:
    """A map-style `torch.utils.data.Dataset` whose ``__getitem__(i)`` returns one row as a
    dict of variable name -> tensor, number or array; `read(rows)` stacks the rows asked for
    into one tensor per name (the last selection is kept, so the columns of one batch read
    each row once)."""

    def __init__(self, dataset: Any, purpose: str):
        if isinstance(dataset, torch.utils.data.IterableDataset):
            raise DGMDataError(f"{purpose}: an IterableDataset has no rows to pick by number",
                               hint="give a map-style Dataset (__len__ and __getitem__(i) -> dict of "
                                    "variable -> value), or numpy arrays (np.load(..., mmap_mode='r'))")
        try:
            self.n = len(dataset)
        except TypeError:
            raise DGMDataError(f"{purpose}: the torch Dataset has no len()",
                               hint="a map-style Dataset defines __len__ (the number of rows) "
                                    "and __getitem__") from None
        if self.n == 0:
            raise DGMDataError(f"{purpose}: the torch Dataset has no rows",
                               hint="give at least one data point")
        self.dataset = dataset
        first = self.row(0)
        self.names = list(first)
        self.first = {name: _row_tensor(0, name, value) for name, value in first.items()}
        self.last: tuple[Any, dict[str, torch.Tensor]] | None = None

    def row(self, i: int) -> Mapping:
        row = self.dataset[i]
        if not isinstance(row, Mapping):
            raise DGMDataError(
                f"the torch Dataset's row {i} is a {type(row).__name__}, not a dict",
                hint="__getitem__(i) returns a dict of variable name -> tensor for row i")
        return row

    def read(self, rows: slice | np.ndarray) -> dict[str, torch.Tensor]:
        key = (rows.start, rows.stop, rows.step) if isinstance(rows, slice) else rows
        if self.last is not None and (self.last[0] is key or (isinstance(key, tuple) and self.last[0] == key)):
            return self.last[1]
        numbers = range(rows.start, rows.stop, rows.step) if isinstance(rows, slice) else rows.tolist()
        read: dict[str, list[torch.Tensor]] = {name: [] for name in self.names}
        for i in numbers:
            row = self.row(int(i))
            for name, parts in read.items():
                if name not in row:
                    raise DGMDataError(f"the torch Dataset's row {i} has no value for '{name}'",
                                       hint="every row holds the same variables as row 0")
                tensor = _row_tensor(i, name, row[name])
                if tensor.shape != self.first[name].shape:
                    raise DGMDataError(
                        f"the torch Dataset's row {i}: '{name}' has shape {tuple(tensor.shape)}, "
                        f"but row 0's has {tuple(self.first[name].shape)}",
                        hint="every row's value of a variable has the same shape")
                parts.append(tensor)
        out = {}
        for name, parts in read.items():
            dtype = parts[0].dtype
            for part in parts[1:]:
                dtype = torch.promote_types(dtype, part.dtype)
            out[name] = (torch.stack([p.to(dtype) for p in parts]) if parts
                         else self.first[name].new_empty((0, *self.first[name].shape)))
        self.last = (key, out)
        return out


def _row_tensor(i: int, name: str, value: Any) -> torch.Tensor:
    """One row's value from a torch Dataset as a CPU tensor (numbers only)."""
    return _to_tensor(name, f"the torch Dataset's row {i}: '{name}'", value)


class _DatasetColumn:
    def __init__(self, rows: _DatasetRows, name: str):
        self.rows, self.name = rows, name
        first = rows.first[name]
        self.shape = (rows.n, *first.shape)
        self.dtype = first.dtype

    def take(self, rows: slice | np.ndarray) -> torch.Tensor:
        return self.rows.read(rows)[self.name]


def _column(what: str, value: Any) -> _Column:
    """A row source for one variable's value: arrays (memmaps too) and tensors are read a
    selection at a time; anything else (nested lists, numbers) is converted now."""
    if isinstance(value, _DatasetColumn):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise DGMDataError(
                f"{what} holds values of dtype {value.dtype}, not numbers",
                hint="give a numeric tensor or numpy array (ragged lists are not arrays)",
            )
        return _ArrayColumn(value)
    return _TensorColumn(_to_tensor("", what, value))


@dataclass(frozen=True)
class _Prepared:
    """One checked variable, converted a selection at a time: `raw` its rows as given (None
    for a data variable missing everywhere), `integer` whether it becomes int64 (else
    `float_dtype`), `placeholder` the value a missing entry gets (None: none is missing
    that is not filled already), `nan_missing` whether NaN marks a missing entry, `mask`
    the user's mask (True = observed), `has_missing` whether any entry is missing, `simplex`
    whether rows lie on the simplex (a partly missing one is filled onto it)."""

    raw: _Column | None
    row_shape: tuple[int, ...]
    integer: bool
    float_dtype: torch.dtype
    placeholder: float | None = None
    nan_missing: bool = False
    mask: _Column | None = None
    has_missing: bool = False
    simplex: bool = False

    def _missing(self, raw: torch.Tensor, rows: slice | np.ndarray) -> torch.Tensor | None:
        missing = torch.isnan(raw) if self.nan_missing and raw.is_floating_point() else None
        if self.mask is not None:
            unseen = ~self.mask.take(rows)
            missing = unseen if missing is None else missing | unseen
        return missing

    def value(self, rows: slice | np.ndarray) -> torch.Tensor:
        dtype = torch.long if self.integer else self.float_dtype
        if self.raw is None:
            return torch.full((_count(rows), *self.row_shape), self.placeholder, dtype=dtype)
        raw = self.raw.take(rows)
        missing = self._missing(raw, rows) if self.has_missing and self.placeholder is not None else None
        tensor = raw.to(dtype)
        if missing is not None:
            tensor = torch.where(missing, torch.full_like(tensor, self.placeholder), tensor)
            if self.simplex:  # a partly missing row, filled onto the simplex
                tensor = simplex_fill(tensor, missing)
        return tensor

    def observed(self, rows: slice | np.ndarray) -> torch.Tensor:
        if self.raw is None:
            return torch.zeros((_count(rows), *self.row_shape), dtype=torch.bool)
        missing = self._missing(self.raw.take(rows), rows)
        if missing is None:
            return torch.ones((_count(rows), *self.row_shape), dtype=torch.bool)
        return ~missing


class Dataset:
    """Checked data, read and converted only when asked for: `n` rows; `values[name]`
    shaped ``(n, *shape)`` for every data and input variable given (floats in torch's
    default dtype, class labels and `int` inputs as int64); `observed[name]` (bool, same
    shape) for each data variable with missing entries, whose missing entries hold a
    placeholder inside the support. `rows(index)` selects rows without reading them, so
    ``dataset.rows(batch).values`` reads and converts just that batch: a memmap, or a torch
    Dataset, is never loaded whole unless `values` of all rows is asked for.

    >>> d = Dataset.of({"x": torch.arange(6.0).reshape(3, 2)})
    >>> d.rows(torch.tensor([2, 0])).values["x"]
    tensor([[4., 5.],
            [0., 1.]])
    """

    def __init__(self, columns: Mapping[str, _Prepared], n: int,
                 rows: slice | np.ndarray | None = None):
        self.columns = dict(columns)
        self.selected = rows if rows is not None else slice(0, n, 1)
        self.n = _count(self.selected)

    @classmethod
    def of(cls, values: Mapping[str, torch.Tensor],
           observed: Mapping[str, torch.Tensor] | None = None) -> "Dataset":
        """Data already checked and converted, held in memory (missing entries filled)."""
        observed = observed or {}
        columns = {name: _Prepared(_TensorColumn(v), tuple(v.shape[1:]), not v.is_floating_point(),
                                   v.dtype if v.is_floating_point() else torch.get_default_dtype(),
                                   mask=_TensorColumn(observed[name]) if name in observed else None,
                                   has_missing=name in observed)
                   for name, v in values.items()}
        return cls(columns, next(iter(values.values())).shape[0] if values else 0)

    @property
    def has_missing(self) -> bool:
        return any(column.has_missing for column in self.columns.values())

    def rows(self, index: torch.Tensor | np.ndarray | slice) -> "Dataset":
        """The same data restricted to `index` (a slice or row numbers); nothing is read yet."""
        picked = _compose(self.selected, _normal_rows(index, self.n))
        return Dataset(self.columns, self.n, picked)

    def resident(self) -> dict[str, torch.Tensor] | None:
        """Every column as the in-memory tensor it is read from, when each already is one in
        its batch dtype with nothing missing (then ``tensor[rows]`` is ``rows(rows).values``,
        without the selection's bookkeeping, which a small model's training step notices);
        None otherwise (memmaps, torch Datasets, conversions, missing entries, a selection).

        >>> d = Dataset.of({"x": torch.arange(6.0).reshape(3, 2)})
        >>> d.resident()["x"][torch.tensor([2, 0])].tolist()
        [[4.0, 5.0], [0.0, 1.0]]
        """
        if self.selected != slice(0, self.n, 1):
            return None
        tensors = {}
        for name, column in self.columns.items():
            dtype = torch.long if column.integer else column.float_dtype
            if (column.has_missing or not isinstance(column.raw, _TensorColumn)
                    or column.raw.tensor.dtype != dtype or column.raw.tensor.device.type != "cpu"):
                return None
            tensors[name] = column.raw.tensor
        return tensors

    def _read(self, read: Callable[[_Prepared, Any], torch.Tensor], column: _Prepared) -> torch.Tensor:
        """`read(column, rows)` for the selected rows, a `CHUNK_CELLS` piece at a time into one
        tensor when the selection is large (no second full-size copy on the way)."""
        per_piece = chunk_rows(column.row_shape)
        if self.n <= per_piece:
            return read(column, self.selected)
        out = None
        for start, piece in _pieces(self.selected, per_piece):
            part = read(column, piece)
            if out is None:
                out = part.new_empty((self.n, *part.shape[1:]))
            out[start:start + part.shape[0]] = part
        return out

    @functools.cached_property
    def values(self) -> dict[str, torch.Tensor]:
        return {name: self._read(_Prepared.value, column) for name, column in self.columns.items()}

    @functools.cached_property
    def observed(self) -> dict[str, torch.Tensor]:
        return {name: self._read(_Prepared.observed, column)
                for name, column in self.columns.items() if column.has_missing}

    def repeated(self, times: int) -> "Dataset":
        """Every row repeated `times` times, block after block (row ``s * n + i`` is row i)."""
        values = {k: v.repeat(times, *(1,) * (v.dim() - 1)) for k, v in self.values.items()}
        observed = {k: v.repeat(times, *(1,) * (v.dim() - 1)) for k, v in self.observed.items()}
        return Dataset.of(values, observed)


def _as_dict(ir: ModelIR, data: Any, purpose: str) -> dict[str, Any]:
    data_names, input_names = ir.names("data"), ir.names("input")
    if isinstance(data, Mapping):
        return dict(data)
    if isinstance(data, TorchDataset):
        rows = _DatasetRows(data, purpose)
        return {name: _DatasetColumn(rows, name) for name in rows.names}
    if len(data_names) == 1 and not input_names:
        return {data_names[0]: data}
    names = ", ".join(repr(n) for n in data_names + input_names)
    raise DGMDataError(
        f"{purpose} needs a dict of arrays keyed by variable name ({names}), not a bare array",
        hint="a bare array is accepted only for a model with one data variable and no inputs",
    )


def _check_names(given, allowed: list[str], purpose: str, kind: str = "variable") -> None:
    for name in given:
        if not isinstance(name, str) or name not in allowed:
            raise DGMDataError(
                f"{purpose}: the model has no {kind} {name!r}; it has {', '.join(map(repr, allowed))}",
                hint=did_you_mean(str(name), allowed),
            )


def _row_count(counts: dict[str, int]) -> int:
    first = next(iter(counts))
    for name, count in counts.items():
        if count != counts[first]:
            raise DGMDataError(
                f"'{name}' has {count} rows but '{first}' has {counts[first]}",
                hint="every variable needs one row per data point",
            )
    return counts[first]


def prepare_data(ir: ModelIR, data: Any, *, purpose: str = "fit", allow_missing: bool = False,
                 mask: Mapping[str, Any] | None = None, facts: ModelFacts | None = None,
                 dtype: torch.dtype | None = None, locate: Locate | None = None) -> Dataset:
    """Check and convert `data` (every `data` and `input` variable) for `purpose`: shapes,
    dtypes, supports, and every use of an integer value (see the module's docstring).

    With `allow_missing` (invert), NaN entries and False entries of `mask` are missing, and a
    `data` variable left out entirely is missing everywhere. `facts` (the model's
    `ModelFacts`) saves building them again. `dtype` is the float dtype the model computes
    in (``model.model.dtype``; torch's default when None): values it cannot hold are refused.
    `locate` writes positions in messages (the command line names a file's lines and
    columns); by default ``row 3, column 1``, counted from 0.

    >>> from dgmlang.ir import Draw, Lit, ModelIR, Variable
    >>> ir = ModelIR("m", (Variable("x", "data", (2,)),),
    ...              (Draw("x", "Normal", (("loc", Lit(0.0, ())), ("scale", Lit(1.0, ())))),))
    >>> d = prepare_data(ir, {"x": [[0.5, float("nan")]]}, allow_missing=True)
    >>> d.values["x"], d.observed["x"]
    (tensor([[0.5000, 0.0000]]), tensor([[ True, False]]))
    """
    given = _as_dict(ir, data, purpose)
    locate = locate if locate is not None else _locate_index
    facts = facts if facts is not None else ModelFacts(ir)
    rules = _rules(facts)
    data_names, input_names = ir.names("data"), ir.names("input")
    declared = ir.names("data", "input")
    _check_names(given, declared, purpose)
    absent = [n for n in declared if n not in given]
    absent_inputs = [n for n in absent if n in input_names]
    if absent_inputs or (absent and not allow_missing):
        raise DGMDataError(
            f"{purpose}: no values for {', '.join(map(repr, absent))}",
            hint="give every data and input variable, each shaped (n, *shape)",
        )
    masks: dict[str, _Column] = {}
    if mask is not None:
        if not allow_missing:
            raise DGMDataError(f"{purpose} takes no mask",
                               hint="fit, log_prob and invert take a mask (allow_missing=True here)")
        if not isinstance(mask, Mapping):
            raise DGMDataError("mask must be a dict of boolean arrays keyed by data variable")
        _check_names(mask, data_names, "mask", kind="data variable")
        masks = {name: _mask_column(ir.variable(name), m) for name, m in mask.items()}

    variables = [ir.variable(name) for name in declared if name in given]
    columns, first_error = _stream_checks(ir, variables, given, masks, allow_missing=allow_missing,
                                          facts=facts, rules=rules, dtype=dtype, locate=locate)
    if first_error is not None:
        raise first_error
    n = _row_count({name: column.raw.shape[0] for name, column in columns.items()})
    for rule in rules.total_counts:
        if rule.target in columns and rule.source in columns:
            pair = Dataset({name: columns[name] for name in (rule.target, rule.source)}, n)
            for start, piece in _pieces(slice(0, n, 1), min(chunk_rows(c.row_shape) for c in pair.columns.values())):
                part = pair.rows(piece)
                _check_total_counts(ir, rule, part.values, part.observed, locate, offset=start)
    for name in data_names:
        if name not in columns:  # missing everywhere: a placeholder row per data point
            var = ir.variable(name)
            support = support_of(ir, var, facts=facts)
            columns[name] = _Prepared(None, var.shape, support.integer_dtype, torch.get_default_dtype(),
                                      support.placeholder, has_missing=True)
    for name, column in columns.items():
        if column.has_missing and name in facts.draws and facts.draws[name].steps:
            raise DGMDataError(
                f"{purpose}: the sequence '{name}' has missing entries (NaN, False in the mask, "
                "or not given): missing steps of a sequence are not supported yet",
                hint="give every step of every sequence; pad one shorter than its length input with "
                     "any valid value (such as 0): steps past the length are ignored")
    return Dataset(columns, n)


def _stream_checks(ir: ModelIR, variables: list[Variable], given: Mapping[str, Any],
                   masks: Mapping[str, _Column], *, allow_missing: bool, facts: ModelFacts,
                   rules: _Rules, dtype: torch.dtype | None,
                   locate: Locate) -> tuple[dict[str, _Prepared], DGMDataError | None]:
    """Check every variable's rows, a `CHUNK_CELLS` piece at a time; the checked variables
    and the first error, the one checking whole arrays reports: the first variable in
    `variables` that fails, its earliest failing check (shape, dtype, NaN, ..., support,
    uses), at its first row."""
    columns: dict[str, _Column] = {}
    first: tuple[int, int] | None = None  # (variable's position, check number); -1: shape
    first_error = None
    for position, var in enumerate(variables):
        what = _describe(var, ir)
        try:
            columns[var.name] = column = _column(what, given[var.name])
            m = masks.get(var.name)
            if m is not None and tuple(m.shape) != tuple(column.shape):
                raise DGMDataError(
                    f"mask for '{var.name}' has shape {tuple(m.shape)} but the data has {tuple(column.shape)}",
                    hint="the mask is shaped like the data, True where observed",
                )
            _check_shape(what, var, tuple(column.shape))
        except DGMDataError as err:
            first, first_error = (position, -1), err
            break
    checked = [var for var in variables if var.name in columns][:first[0] if first else None]
    supports = {var.name: support_of(ir, var, facts=facts) for var in checked}
    missing_seen = {var.name: False for var in checked}
    total = max((columns[var.name].shape[0] for var in checked), default=0)
    per_piece = min((chunk_rows(var.shape) for var in checked), default=1)
    for start in range(0, total, per_piece):
        for position, var in enumerate(checked):
            if first is not None and (position, 0) >= first:
                break
            column = columns[var.name]
            rows = slice(start, min(start + per_piece, column.shape[0]), 1)
            if rows.start >= rows.stop:
                continue
            m = masks.get(var.name)
            checks = _value_checks(ir, var, column.take(rows), allow_missing=allow_missing,
                                   observed=m.take(rows) if m is not None else None,
                                   support=supports[var.name], bounds=rules.bounds.get(var.name, ()),
                                   dtype=dtype, locate=_shifted(locate, start))
            number, result = _run_checks(checks, first[1] if first and first[0] == position else math.inf)
            if number is not None:
                first, first_error = (position, number), result
            elif result is not None:
                missing_seen[var.name] |= bool(result[1].any())
    prepared = {}
    for var in checked:
        support = supports[var.name]
        prepared[var.name] = _Prepared(
            columns[var.name], var.shape, support.integer_dtype, torch.get_default_dtype(),
            support.placeholder, nan_missing=var.role == "data" and allow_missing,
            mask=masks.get(var.name), has_missing=missing_seen[var.name],
            simplex=bool(support.event_rank) and not support.integer_dtype)
    return prepared, first_error


def _mask_column(var: Variable, mask: Any) -> _Column:
    column = _column(f"mask for '{var.name}'", mask)
    if column.dtype != torch.bool:
        raise DGMDataError(
            f"mask for '{var.name}' has dtype {column.dtype}; expected booleans (True = observed)",
            hint="build it with a comparison, e.g. ~np.isnan(x) or x != 0",
        )
    return column


def prepare_inputs(ir: ModelIR, inputs: Mapping[str, Any] | None, n: int, *,
                   facts: ModelFacts | None = None, dtype: torch.dtype | None = None,
                   locate: Locate | None = None) -> dict[str, torch.Tensor]:
    """Check the `input` variables for drawing `n` samples, as `prepare_data` checks them
    (every use of an integer value included); a value shaped like one data point (a scalar
    for a scalar input) is repeated for all n. `dtype` and `locate` as in `prepare_data`.

    >>> from dgmlang.ir import ModelIR, Variable
    >>> ir = ModelIR("m", (Variable("y", "input", (), type="int"),), ())
    >>> prepare_inputs(ir, {"y": 3}, 2)
    {'y': tensor([3, 3])}
    """
    input_names = ir.names("input")
    given = dict(inputs or {})
    if inputs is not None and not isinstance(inputs, Mapping):
        raise DGMDataError("inputs must be a dict of arrays keyed by input name")
    _check_names(given, input_names, "sample", kind="input")
    absent = [name for name in input_names if name not in given]
    if absent:
        raise DGMDataError(
            f"sample: no values for the input(s) {', '.join(map(repr, absent))}",
            hint="pass inputs={name: array shaped (n, *shape) or one value for all}",
        )
    facts = facts if facts is not None else ModelFacts(ir)
    rules = _rules(facts)
    values = {}
    for name in input_names:
        var = ir.variable(name)
        tensor = _to_tensor(name, _describe(var, ir), given[name])
        if tensor.dim() == len(var.shape) and tuple(tensor.shape) == var.shape:
            tensor = tensor.expand(n, *var.shape)
        elif tensor.dim() >= 1 and tensor.shape[0] != n and tuple(tensor.shape[1:]) == var.shape:
            raise DGMDataError(f"input '{name}' has {tensor.shape[0]} rows but {n} samples were asked for",
                               hint="give one row per sample, or one value for all")
        values[name], _ = _convert(ir, var, tensor, allow_missing=False, observed=None,
                                   facts=facts, rules=rules, dtype=dtype,
                                   locate=locate if locate is not None else _locate_index)
    return values


def check_marginalizable(ir: ModelIR, dataset: Dataset, *, purpose: str,
                         facts: ModelFacts | None = None, labels: Iterable[str] = ()) -> None:
    """Refuse missing entries `purpose` (fit, validation, log_prob; invert asks whether it
    can resample) cannot handle exactly, and a data variable not given at all. Entries are
    assumed missing at random. Accepted: gaps of a variable nothing depends on (their terms
    are dropped; a Dirichlet row's observed part scored by its marginal); `labels` (the plan's
    label steps, `dgmlang.inverse.label_steps`), latents of their rows summed out
    (semi-supervised learning); and, except for invert, gaps of a continuous elementwise
    variable others depend on (`dgmlang.inverse.imputable`): latents of their rows, drawn by
    the guide's imputation step. Refused: gaps that others depend on in a discrete variable
    other than a label, or in a Dirichlet row.

    >>> from dgmlang.ir import Draw, Lit, ModelIR, Variable
    >>> ir = ModelIR("m", (Variable("x", "data", (2,)),),
    ...              (Draw("x", "Normal", (("loc", Lit(0.0, ())), ("scale", Lit(1.0, ())))),))
    >>> d = prepare_data(ir, {"x": [[0.5, float("nan")]]}, allow_missing=True)
    >>> check_marginalizable(ir, d, purpose="fit")   # nothing depends on x: accepted
    """
    facts = facts if facts is not None else ModelFacts(ir)
    for name, column in dataset.columns.items():
        if not column.has_missing:
            continue
        hint = ("invert(data, mask=...) handles every missing pattern; here fill or drop the "
                "rows with missing entries")
        if column.raw is None and purpose != "invert":  # invert fills a variable left out
            raise DGMDataError(f"{purpose}: no values for '{name}'",
                               hint="give every data and input variable, each shaped (n, *shape)")
        children = sorted(facts.graph.successors(name)) if name in facts.graph else []
        if not children or name in set(labels):
            continue
        depend = (f"{purpose}: data '{name}' has missing entries, but {', '.join(map(repr, children))} "
                  f"depend{'s' if len(children) == 1 else ''} on it, so its missing entries are latents")
        if purpose == "invert":
            raise DGMDataError(f"{depend} that invert cannot draw from the model given the rest",
                               hint="invert's Gibbs chains handle them")
        if imputable(facts.graph, name):
            continue
        dist = facts.draws[name].dist
        if support_of(ir, ir.variable(name), facts=facts).event_rank:
            raise DGMDataError(
                f"{depend}, and a {dist} row with gaps has no guide: no q of part of a simplex row "
                "is derived", hint=hint)
        raise DGMDataError(
            f"{depend}, discrete ones ({dist}) that {purpose} sums out only for a label, a "
            "Categorical or Bernoulli data variable a latent's guide reads (semi-supervised "
            "learning)", hint=hint)
