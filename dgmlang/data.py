"""User data in, checked tensors out: every array is validated against the model before use.

`prepare_data` takes what a user hands to `fit`, `log_prob` or `invert` — a dict of tensors,
numpy arrays or nested lists keyed by variable name (or one bare array when the model has a
single `data` variable and no inputs) — and returns a `Dataset` of tensors shaped
``(n, *shape)``: floats in torch's default dtype, class labels and `int` inputs as int64.
Anything that does not fit the model is a `DGMDataError` naming the variable, the first bad
row (and column) and what was expected, raised before any training starts:

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
  ``inf``); in an integer array, values an int64 cannot hold. In `invert`
  (``allow_missing=True``) NaN marks a missing entry of a `data` variable (as does False in
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

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

import pyro.distributions as pyro_dist

from dgmlang.errors import DGMDataError, DGMUsageError, did_you_mean
from dgmlang.facts import ModelFacts
from dgmlang.ir import Lit, ModelIR, Ref, Variable
from dgmlang.source import Span
from dgmlang.supports import EDGE_HINTS, support_of


@dataclass(frozen=True)
class Dataset:
    """Checked data: `values[name]` shaped ``(n, *shape)`` for every data and input variable
    given; `observed[name]` (bool, same shape) for each data variable with missing entries,
    whose missing entries hold a placeholder inside the support."""

    values: Mapping[str, torch.Tensor]
    observed: Mapping[str, torch.Tensor]
    n: int

    @property
    def has_missing(self) -> bool:
        return bool(self.observed)

    def rows(self, index: torch.Tensor | slice) -> "Dataset":
        """The same data restricted to `index` (a slice or a tensor of row numbers)."""
        values = {k: v[index] for k, v in self.values.items()}
        observed = {k: v[index] for k, v in self.observed.items()}
        n = next(iter(values.values())).shape[0] if values else 0
        return Dataset(values, observed, n)

    def repeated(self, times: int) -> "Dataset":
        """Every row repeated `times` times, block after block (row ``s * n + i`` is row i)."""
        values = {k: v.repeat(times, *(1,) * (v.dim() - 1)) for k, v in self.values.items()}
        observed = {k: v.repeat(times, *(1,) * (v.dim() - 1)) for k, v in self.observed.items()}
        return Dataset(values, observed, self.n * times)


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


def _check_total_counts(ir: ModelIR, rules: _Rules, values: Mapping[str, torch.Tensor],
                        observed: Mapping[str, torch.Tensor], locate: Locate) -> None:
    """Each count of a Binomial whose total_count comes from another variable is at most
    that row's total_count (entries missing on either side are not compared)."""
    for rule in rules.total_counts:
        if rule.target not in values or rule.source not in values:
            continue
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
                f"{_shown(totals[total_index])} in row {index[0]})",
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


def _check_range(what: str, var: Variable, tensor: torch.Tensor, dtype: torch.dtype | None,
                 locate: Locate) -> None:
    """Refuse finite values that a float dtype the data passes through turns into infinities
    (``1e300`` in float32), and integers an int64 cannot hold."""
    if tensor.dtype == torch.uint64:
        big = tensor.to(torch.float64) >= 2.0 ** 63  # uint64 has no comparisons
        if bool(big.any()):
            index = _first(big)
            raise DGMDataError(f"{what}: {locate(var, index)} holds {_shown(tensor[index])}, "
                               f"more than an int64 holds",
                               hint=f"values up to {torch.iinfo(torch.int64).max}")
    finite = torch.isfinite(tensor) if tensor.is_floating_point() else None
    for target in _float_dtypes(dtype):
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


def _convert(ir: ModelIR, var: Variable, value: Any, *, allow_missing: bool,
             observed: torch.Tensor | None, facts: ModelFacts, rules: _Rules,
             dtype: torch.dtype | None = None,
             locate: Locate = _locate_index) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check one variable; its tensor and (for data with missing entries) its observed mask."""
    what = _describe(var, ir)
    support = support_of(ir, var, facts=facts)
    tensor = _to_tensor(var.name, what, value)
    expected = "(n" + "".join(f", {d}" for d in var.shape) + ")"
    if tensor.dim() != len(var.shape) + 1 or tuple(tensor.shape[1:]) != var.shape:
        hint = f"one row per data point, each of shape {var.shape}"
        if tensor.dim() == len(var.shape) + 2 and tensor.shape[-1] == 1 and tuple(tensor.shape[1:-1]) == var.shape:
            hint = "drop the trailing dimension of size 1 (e.g. x.squeeze(-1))"
        raise DGMDataError(f"{what} has shape {tuple(tensor.shape)}; expected {expected}", hint=hint)
    if tensor.shape[0] == 0:
        raise DGMDataError(f"{what} has no rows", hint="give at least one data point")

    is_float = tensor.is_floating_point()
    if support.integer_dtype and is_float:
        kind = "class labels" if var.role == "data" else "whole numbers"
        raise DGMDataError(
            f"{what} holds {kind} but has floating dtype {tensor.dtype}",
            hint="give an integer array (convert with .long() or .astype(int))",
        )
    if var.role == "data" and allow_missing:
        missing = torch.isnan(tensor) if is_float else torch.zeros(tensor.shape, dtype=torch.bool)
    else:
        missing = torch.zeros(tensor.shape, dtype=torch.bool)
        if is_float and torch.isnan(tensor).any():
            hint = ("NaN marks a missing entry only in invert" if var.role == "data"
                    else "an input is never missing; give every value")
            raise DGMDataError(f"{what}: {locate(var, _first(torch.isnan(tensor)))} is NaN", hint=hint)
    if is_float and torch.isinf(tensor).any():
        raise DGMDataError(f"{what}: {locate(var, _first(torch.isinf(tensor)))} is infinite",
                           hint=f"expected {support.description}")
    _check_range(what, var, tensor, dtype, locate)
    if observed is not None:
        missing = missing | ~observed

    if support.event_rank and missing.any():
        partial = missing.any(-1) & ~missing.all(-1)
        if bool(partial.any()):
            raise DGMDataError(
                f"{what}: {locate(var, _first(partial))} is partly missing, but a "
                f"{ir.draw(var.name).dist} row is one value",
                hint="mark a whole row missing or none of it",
            )
    original = tensor
    tensor = tensor.long() if support.integer_dtype else tensor.to(torch.get_default_dtype())
    checkable = torch.where(missing, torch.full_like(tensor, support.placeholder), tensor)
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
    _check_bounds(what, var, checkable, missing, rules.bounds.get(var.name, ()), locate)
    return checkable, (~missing if bool(missing.any()) else None)


def _as_dict(ir: ModelIR, data: Any, purpose: str) -> dict[str, Any]:
    data_names, input_names = ir.names("data"), ir.names("input")
    if isinstance(data, Mapping):
        return dict(data)
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


def _row_count(converted: dict[str, torch.Tensor]) -> int:
    counts = {name: t.shape[0] for name, t in converted.items()}
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
    masks = {}
    if mask is not None:
        if not allow_missing:
            raise DGMDataError(f"{purpose} takes no mask", hint="only invert handles missing entries")
        if not isinstance(mask, Mapping):
            raise DGMDataError("mask must be a dict of boolean arrays keyed by data variable")
        _check_names(mask, data_names, "mask", kind="data variable")
        masks = {name: _mask_tensor(ir.variable(name), m) for name, m in mask.items()}

    values: dict[str, torch.Tensor] = {}
    observed: dict[str, torch.Tensor] = {}
    for name in declared:
        if name not in given:
            continue
        var = ir.variable(name)
        m = masks.get(name)
        if m is not None:
            tensor = _to_tensor(name, _describe(var, ir), given[name])
            if tuple(m.shape) != tuple(tensor.shape):
                raise DGMDataError(
                    f"mask for '{name}' has shape {tuple(m.shape)} but the data has {tuple(tensor.shape)}",
                    hint="the mask is shaped like the data, True where observed",
                )
        values[name], obs = _convert(ir, var, given[name], allow_missing=allow_missing, observed=m,
                                     facts=facts, rules=rules, dtype=dtype, locate=locate)
        if obs is not None:
            observed[name] = obs
    n = _row_count(values)
    _check_total_counts(ir, rules, values, observed, locate)
    for name in data_names:
        if name not in values:  # missing everywhere: a placeholder row per data point
            var = ir.variable(name)
            support = support_of(ir, var, facts=facts)
            dtype = torch.long if support.integer_dtype else torch.get_default_dtype()
            values[name] = torch.full((n, *var.shape), support.placeholder, dtype=dtype)
            observed[name] = torch.zeros((n, *var.shape), dtype=torch.bool)
    return Dataset(values, observed, n)


def _mask_tensor(var: Variable, mask: Any) -> torch.Tensor:
    tensor = _to_tensor(var.name, f"mask for '{var.name}'", mask)
    if tensor.dtype != torch.bool:
        raise DGMDataError(
            f"mask for '{var.name}' has dtype {tensor.dtype}; expected booleans (True = observed)",
            hint="build it with a comparison, e.g. ~np.isnan(x) or x != 0",
        )
    return tensor


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
