"""The guide's reference scales, set once before a model's first fit.

A guide network's inputs are standardized, and its heads produce a latent's location and
scale relative to a reference (`dgmlang.sites.Reference`), so a model whose values are near
10,000, or near 0.001, trains as one near unit scale does. `calibrate` sets them:

* each input a guide network reads as it is: from the training rows when it is data or an
  input, from draws of the model otherwise — one location and scale per variable;
* each continuous latent and global: from draws of the model given the training rows'
  inputs (its prior, through the networks as initialised), mapped to the unconstrained space
  q lives in — one location and scale per entry.

Each is a robust estimate (median; interquartile range / 1.349) made coarse: the scale is a
power of two, the location a multiple of it. Values already within a factor of
`SCALE_BAND` of unit scale keep scale 1, and locations within `LOCATION_BAND` scales of zero
keep 0, so a model near unit scale trains exactly as without references.

>>> import dgmlang, torch
>>> m = dgmlang.compile('''
... model far {
...     data   x[2]
...     latent z
...     z ~ Normal(10000, 10)
...     x ~ Normal(z, 1)
... }''')
>>> from dgmlang.data import prepare_data
>>> data = {"x": m.sample(64, seed=0)["x"]}
>>> calibrate(m, prepare_data(m.ir, data, purpose="fit", facts=m.facts))
>>> m.guide.reference("z").loc, m.guide.reference("z").scale
(tensor([10000.]), tensor([1.]))
>>> m.guide.input_reference("x").loc, m.guide.input_reference("x").scale
(tensor(10001.), tensor(1.))
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch.distributions import biject_to

from dgmlang.data import Dataset
from dgmlang.errors import DGMError
from dgmlang.nets import seeded
from dgmlang.weights import in_particles

__all__ = ["LOCATION_BAND", "SCALE_BAND", "calibrate", "coarse_reference"]

#: Scales within this factor of 1 (either way) are left at 1.
SCALE_BAND = 16.0
#: Locations within this many scales of 0 are left at 0.
LOCATION_BAND = 16.0
#: Training rows read for the inputs' references, and rows x draws of the model.
DATA_ROWS = 256
MODEL_ROWS = 16
MODEL_DRAWS = 64
#: At most this many values enter one quantile (torch.quantile's input is bounded).
MAX_VALUES = 1 << 16
CALIBRATION_SEED = 7_919


def calibrate(model: Any, dataset: Dataset) -> None:
    """Set the references of `model`'s guide (see the module docs) from `dataset`, the
    prepared training data. Draws under a fixed seed, leaving the caller's random stream as
    it was. A model that cannot be drawn from keeps neutral references for its latents."""
    guide = model.guide
    n = dataset.n
    spread = torch.linspace(0, n - 1, steps=min(n, DATA_ROWS), device="cpu").round().long().unique()
    chosen = dataset.rows(spread)
    rows, observed = chosen.values, chosen.observed
    drawn = _model_draws(model, rows)
    sites = [*guide.sites, *getattr(guide, "imputation_sites", {}).values()]
    wanted: dict[Any, torch.Tensor] = {}  # what to estimate: (draws, entries) per key
    for site in sites:
        for name in site.input_references:
            if name in rows:
                values = rows[name]
                if name in observed and values.is_floating_point():  # missing entries ignored
                    values = torch.where(observed[name], values, torch.full_like(values, math.nan))
                wanted[name] = values.detach().reshape(-1, 1)
            elif drawn is not None and name in drawn:
                wanted[name] = drawn[name].reshape(-1, 1)
        if site.info is None or drawn is None or site.name not in drawn:
            continue
        try:
            support = site.support(drawn)
            unconstrained = biject_to(support).inv(drawn[site.name])
        except (ValueError, RuntimeError, NotImplementedError):
            continue
        if unconstrained.numel() % site.info.size == 0:
            wanted[site] = unconstrained.reshape(-1, site.info.size)
    estimates = _coarse_references(wanted)
    shared = {id(reference): (name, reference)  # sites share one reference per input
              for site in sites for name, reference in site.input_references.items()}
    for name, reference in shared.values():
        if name in estimates:
            loc, scale = estimates[name]
            reference.set(loc[0], scale[0])
    for site in sites:
        if site in estimates:
            site.reference.set(*estimates[site])


def _coarse_references(wanted: dict[Any, torch.Tensor]) -> dict[Any, tuple[torch.Tensor, torch.Tensor]]:
    """`coarse_reference` of each value of `wanted`, computed once per group of values with
    as many draws and the same dtype (its columns are independent): a model with thousands
    of variables costs a few quantiles, not one per variable."""
    groups: dict[tuple, list] = {}
    first_of: dict[tuple, Any] = {}  # a latent's values, also read as an input: one column
    same_as = {}
    for key, values in wanted.items():
        seen = first_of.setdefault((values.data_ptr(), values.shape, values.stride(), values.dtype,
                                    values.device), key)
        if seen is not key:
            same_as[key] = seen
            continue
        groups.setdefault((values.shape[0], values.dtype, values.device), []).append(key)
    estimates = {}
    for keys in groups.values():
        loc, scale = coarse_reference(torch.cat([wanted[key] for key in keys], dim=1))
        start = 0
        for key in keys:
            width = wanted[key].shape[1]
            estimates[key] = (loc[start:start + width], scale[start:start + width])
            start += width
    for key, seen in same_as.items():
        estimates[key] = estimates[seen]
    return estimates


def coarse_reference(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of `values` ``(draws, entries)``: a location and scale (see the module
    docs), in `values`' dtype. Non-finite values are ignored; a column with none left, or
    no spread, gets scale 1.

    >>> loc, scale = coarse_reference(torch.tensor([[9000.0, 1e-3], [10000.0, -1e-3], [11000.0, 0.0]]))
    >>> loc.tolist(), scale.tolist()
    ([0.0, 0.0], [1024.0, 0.0009765625])
    >>> coarse_reference(torch.tensor([[-3.0], [0.5], [9.0]]))  # near unit scale: neutral
    (tensor([0.]), tensor([1.]))
    """
    dtype = values.dtype if values.is_floating_point() else torch.get_default_dtype()
    v = values.detach().to(torch.float64)
    if v.shape[0] > MAX_VALUES:
        v = v[torch.linspace(0, v.shape[0] - 1, MAX_VALUES, device=v.device).long()]
    v = torch.where(torch.isfinite(v), v, torch.nan)
    center, low, high = _nan_quantiles(v)
    spread = (high - low) / 1.349
    sd = torch.sqrt(torch.nanmean((v - v.nanmean(0)) ** 2, 0))
    spread = torch.where(spread > 0, spread, sd)
    spread = torch.where(torch.isfinite(spread) & (spread > 0), spread, torch.ones_like(spread))
    exponent = torch.round(torch.log2(spread))
    band = math.log2(SCALE_BAND)
    scale = torch.where(exponent.abs() > band, torch.exp2(exponent.clamp(-120, 120)),
                        torch.ones_like(spread))
    center = torch.where(torch.isfinite(center), center, torch.zeros_like(center))
    loc = torch.where(center.abs() > LOCATION_BAND * scale, torch.round(center / scale) * scale,
                      torch.zeros_like(center))
    return loc.to(dtype), scale.to(dtype)


def _nan_quantiles(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per column of `v`, NaNs ignored: the lower median (`nanmedian`'s) and the quartiles
    (`nanquantile`'s linear interpolation), from one sort instead of three.

    >>> v = torch.tensor([[4.0, 1.0], [1.0, math.nan], [3.0, 2.0], [2.0, math.nan]], dtype=torch.float64)
    >>> [t.tolist() for t in _nan_quantiles(v)]
    [[2.0, 1.0], [1.75, 1.25], [3.25, 1.75]]
    """
    ordered = v.sort(dim=0).values  # NaNs sort last
    count = (~v.isnan()).sum(0)
    last = (count - 1).clamp(min=0)

    def at(position: torch.Tensor) -> torch.Tensor:
        return ordered.gather(0, position.unsqueeze(0)).squeeze(0)

    def quantile(q: float) -> torch.Tensor:
        position = q * last.to(v.dtype)
        below = position.floor().long()
        above = position.ceil().long()
        return torch.lerp(at(below), at(above), position - below)

    return at(last // 2), quantile(0.25), quantile(0.75)


def _model_draws(model: Any, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """`MODEL_DRAWS` draws of every site of the model (with the inputs, by name) for its
    first `MODEL_ROWS` rows' inputs; None when the model cannot be drawn from (its
    references stay neutral). The model's own return value, not a Pyro trace: recording
    every site costs a quarter of the pass on models of thousands of sites."""
    inputs = {name: rows[name][:MODEL_ROWS] for name in model.roles.inputs if name in rows}
    n = min(MODEL_ROWS, len(next(iter(rows.values())))) if rows else MODEL_ROWS
    try:
        with seeded(CALIBRATION_SEED), torch.no_grad():
            drawn = in_particles(model.model, MODEL_DRAWS, model.model.device)(dict(inputs), batch_size=n)
    except (DGMError, ValueError):
        return None
    return {**inputs, **drawn}
