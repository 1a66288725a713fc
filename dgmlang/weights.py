"""Importance weights of a compiled model, per data point and per particle, from Pyro traces.

One pass draws the latents from the guide (vectorized over particles in a plate at dim -2),
replays them in the model (latents the model sums out are summed exactly by `poutine.enum`)
and sums the log densities site by site. The importance-weighted training bound
(`iwae_bound`), `log_prob`, sampling/importance resampling and the Metropolis-Hastings steps
of `invert` are built on it. The per-data-point log-sum-exp is ours: Pyro's `RenyiELBO` and
`vectorized_importance_weights` give no per-point bound under subsampling. `chunk_plan`
sizes the chunks the queries weigh at once (`CHUNK_CELLS`, `CHUNK_VALUES`); `pareto_k` tells
how far a set of weights can be trusted.

Every function takes the compiled model (`dgmlang.compiled.CompiledModel`) and reads its
public attributes only: `model`, `guide`, `ir`, `roles`, `facts`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

import pyro
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

from dgmlang.errors import DGMUsageError, DGMWarning

__all__ = ["CHUNK_CELLS", "CHUNK_VALUES", "PARTICLES", "Weights", "check_importance_weighting",
           "chunk_plan", "importance_weights", "in_particles", "iwae_bound", "pareto_k", "site_sums",
           "unreliable_points", "values_per_row", "warn_if_unreliable"]

#: (particles x data points) evaluated at once by `log_prob` and `invert` (bounds memory).
CHUNK_CELLS = 16384
#: Entries of the data points' variables evaluated at once by `log_prob` and `invert`:
#: (particles x data points x `values_per_row`), so a big data point (``data x[65536]``)
#: gets fewer particles at a time.
CHUNK_VALUES = 2 ** 24
#: The plate of vectorized particles; the data plate is dim -1, so particles go at -2 and
#: enumerated discrete latents from -3 leftwards.
PARTICLES = "particles"


@dataclass(frozen=True)
class Weights:
    """Traces of one importance-sampling pass and its log weights.

    `local` is ``log p(x_i, z_i | g) - log q(z_i | x_i, g)`` per particle and data point
    ``(K, B)`` (``(B,)`` without a particle plate), with latents the model sums out already
    summed, `log_p` its first term; `global_` is ``log p(g) - log q(g)`` per particle
    ``(K,)`` (a scalar without).
    """

    guide_trace: poutine.Trace
    local: torch.Tensor
    log_p: torch.Tensor
    global_: torch.Tensor


def in_particles(fn: Callable, particles: int | None, device: torch.device | None = None) -> Callable:
    """`fn` run inside the particle plate (dim -2), or `fn` itself when `particles` is None;
    the plate's indices are made on `device` (the model's)."""
    if particles is None:
        return fn

    def vectorized(*args, **kwargs):
        with pyro.plate(PARTICLES, particles, dim=-2, device=device):
            return fn(*args, **kwargs)

    return vectorized


def values_per_row(model: Any) -> int:
    """How many values one data point under one particle holds: the entries of every data,
    input and latent variable, times the classes of each latent the model sums out (its
    enumeration multiplies what every site downstream of it holds). At least 1."""
    values = sum(math.prod(v.shape) for v in model.ir.variables if v.role in ("data", "input", "latent"))
    for name in model.roles.model_enumerated:
        values *= model.facts.classes(name) or 1
    return max(1, values)


def chunk_plan(rows: int, particles: int, values: int, *, cells: int | None = None) -> tuple[int, int]:
    """(data points, particles) to evaluate at once for `rows` points of `particles` particles,
    each (point, particle) cell holding `values` values (`values_per_row`): as many points as
    fit with all their particles, else one point and as many particles as fit. A chunk holds
    at most `cells` cells (`CHUNK_CELLS` by default) and `CHUNK_VALUES` values, and never
    less than one point and one particle.

    >>> chunk_plan(100, 1000, 3)      # small points: 16 points with all their particles
    (16, 1000)
    >>> chunk_plan(4, 1000, 65536)    # one big point: 256 of its particles at a time
    (1, 256)
    """
    cells = CHUNK_CELLS if cells is None else cells
    budget = max(1, min(cells, CHUNK_VALUES // max(1, values)))
    points = max(1, min(rows, budget // particles))
    return points, max(1, min(particles, budget // points))


def check_importance_weighting(model: Any, what: str) -> None:
    """Refuse a model whose guide has no density to weight draws with: a latent or global
    with ``guide(family = delta)`` is a point estimate, and log p(x, z) at one point is not
    an estimate of log p(x) (it can land above it)."""
    for var in model.ir.variables:
        if var.guide is not None and var.guide.family == "delta":
            raise DGMUsageError(
                f"{what} cannot serve this model: {var.role} '{var.name}' has a delta guide "
                "(a point estimate), which has no density to weight samples with",
                hint=f"give '{var.name}' a guide family with a density (normal, mvn or flow) "
                     "to score or invert; with delta, fit finds a point estimate of it",
            )


def importance_weights(model: Any, batch: Mapping[str, torch.Tensor], *, particles: int | None,
                       given: Mapping[str, torch.Tensor] | None = None, size: int | None = None,
                       guide_values: Mapping[str, torch.Tensor] | None = None,
                       mask: Mapping[str, torch.Tensor] | None = None,
                       guide_batch: Mapping[str, torch.Tensor] | None = None) -> Weights:
    """One importance-sampling pass: latents from the guide (vectorized over `particles`
    in a plate at dim -2, or one draw per data point when None), values in `given` held
    fixed in guide and model, and latents the model enumerates summed out exactly.

    With `guide_values`, the guide is evaluated at those values instead of drawing. `mask`
    (per data variable, True = observed) leaves missing entries out of the model's density
    and shows them to the guide filled (`AmortizedGuide.filled`), or as they are in
    `guide_batch` when given (the batch with its missing entries filled by the caller: any
    values the guide reads give a proper proposal, the weights stay exact)."""
    guide = model.guide
    fixed = {**(given or {}), **(guide_values or {})}
    if fixed:
        guide = poutine.condition(guide, data=fixed)
    guide = in_particles(guide, particles, model.model.device)
    if guide_batch is not None:
        guide_trace = poutine.trace(guide).get_trace(guide_batch, size=size)
    else:
        guide_trace = poutine.trace(guide).get_trace(batch, size=size, mask=mask)
    guide_trace = prune_subsample_sites(guide_trace)
    latents = {name: site["value"] for name, site in guide_trace.nodes.items()
               if site["type"] == "sample"}
    pyro_model = in_particles(poutine.condition(model.model, data=latents), particles,
                              model.model.device)
    if model.roles.model_enumerated:
        first_dim = -3 if particles is not None else -2
        pyro_model = poutine.enum(pyro_model, first_available_dim=first_dim)
    model_trace = prune_subsample_sites(poutine.trace(pyro_model).get_trace(batch, size=size, mask=mask))
    rows = next(iter(batch.values())).shape[0]
    plate_shape = (particles, rows) if particles is not None else (rows,)
    globals_ = frozenset(model.roles.globals)
    device = model.model.device
    p_local, p_global = site_sums(model_trace, plate_shape, globals_, device)
    q_local, q_global = site_sums(guide_trace, plate_shape, globals_, device)
    return Weights(guide_trace, p_local - q_local, p_local, p_global - q_global)


def site_sums(trace: poutine.Trace, plate_shape: tuple[int, ...], globals_: frozenset[str],
              device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per data point and per particle: the summed log densities of the local sites
    (enumeration dims summed out by log-sum-exp), and of the sites named in `globals_`
    (zeros on `device`, the model's, where there are none)."""
    local: torch.Tensor | float = 0.0
    global_: torch.Tensor | float = 0.0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["infer"].get("_deterministic"):
            continue
        log_p = site["fn"].log_prob(site["value"])
        log_p = scale_and_mask(log_p, mask=site["mask"])
        if name in globals_:
            global_ = global_ + log_p
        else:
            local = local + log_p
    local = local if torch.is_tensor(local) else torch.zeros((), device=device)
    local = local.reshape((1,) * max(0, len(plate_shape) - local.dim()) + tuple(local.shape))
    enum_shape = tuple(local.shape[: local.dim() - len(plate_shape)])
    local = local.expand(*enum_shape, *plate_shape)
    if enum_shape:
        local = local.reshape(-1, *plate_shape).logsumexp(0)
    global_ = global_ if torch.is_tensor(global_) else torch.zeros((), device=device)
    if len(plate_shape) == 2:  # globals sit outside the data plate: (K, 1) -> (K,)
        global_ = global_.expand(plate_shape[0], 1).reshape(plate_shape[0])
    return local, global_


def iwae_bound(model: Any, batch: Mapping[str, torch.Tensor], size: int, particles: int, *,
               mask: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The importance-weighted bound on log p(data), estimated from a minibatch.

    Globals are drawn once per step from the guide (their term is the ELBO's); given them,
    each data point gets its own log-mean-exp over `particles` samples of its latents,
    and the sum over the minibatch is scaled by N/B outside the log-sum-exp.
    """
    given = {}
    if model.roles.globals:
        trace = poutine.trace(model.guide).get_trace(batch, size=size, mask=mask)
        given = {g: trace.nodes[g]["value"] for g in model.roles.globals}
    weights = importance_weights(model, batch, particles=particles, given=given, size=size, mask=mask)
    rows = weights.local.shape[-1]
    per_point = weights.local.logsumexp(0) - math.log(particles)
    return per_point.sum() * (size / rows) + weights.global_.mean()


def pareto_k(log_weights: torch.Tensor) -> torch.Tensor:
    """The Pareto k̂ of each row's importance weights, as PSIS computes it (Vehtari et al.,
    "Pareto Smoothed Importance Sampling", 2015/2024; arviz's `psislw`): a generalized Pareto
    distribution fitted, by Zhang & Stephens' (2009) empirical Bayes estimate with the weak
    prior ``k = (n k + 10 * 0.5) / (n + 10)``, to how far the M = ceil(min(S / 5, 3 sqrt(S)))
    largest of the S weights exceed the (M+1)-th largest. Above 0.7 the estimate the weights
    make is unreliable; below 0.5, fine.

    `log_weights` is ``(particles, rows)``; the result is ``(rows,)`` float64. As in arviz, a
    row with 4 or fewer weights above the cutoff (S < 21, or weights that underflow next to
    the largest) gets inf; a row whose weights are all equal (exact importance sampling,
    which arviz calls inf for want of a tail) gets -inf; a row holding NaN, NaN.

    >>> from torch.distributions import Normal
    >>> z = 2 * torch.randn(1000, 3, generator=torch.Generator().manual_seed(0))  # q = N(0, 2²)
    >>> log_w = Normal(0, 1).log_prob(z) - Normal(0, 2).log_prob(z)            # p = N(0, 1)
    >>> bool((pareto_k(log_w) < 0.5).all())
    True
    """
    if not torch.is_tensor(log_weights) or log_weights.dim() != 2 or not log_weights.is_floating_point():
        what = (f"a {log_weights.dim()}-dim tensor" if torch.is_tensor(log_weights)
                else type(log_weights).__name__)
        raise DGMUsageError(f"pareto_k takes log weights shaped (particles, rows), got {what}",
                            hint="pass a 2-dim float tensor, one column per data point")
    log_w = log_weights.detach().to(torch.float64).T  # (rows, S)
    rows, samples = log_w.shape
    equal = log_w.amax(1) == log_w.amin(1)
    tail_size = math.ceil(min(samples / 5, 3 * math.sqrt(samples)))
    if tail_size <= 4 or samples < 2:
        k = torch.full((rows,), math.inf, dtype=torch.float64, device=log_w.device)
    else:
        top = log_w.topk(tail_size + 1, dim=1).values  # descending
        top = top - top[:, :1]
        cutoff = top[:, tail_size].clamp(min=math.log(torch.finfo(torch.float64).tiny))
        tail = top[:, :tail_size]
        in_tail = tail > cutoff[:, None]  # a prefix of each row: the tail, largest first
        exceed = torch.where(in_tail, tail.exp() - cutoff.exp()[:, None], torch.zeros_like(tail))
        k = _gpd_shape(exceed, in_tail)
    k = torch.where(equal, -math.inf, k)
    return torch.where(torch.isnan(log_w).any(1), math.nan, k)


def _gpd_shape(exceed: torch.Tensor, in_tail: torch.Tensor) -> torch.Tensor:
    """The generalized Pareto shape k̂ per row of `exceed` ``(rows, M)`` (descending; the first
    ``in_tail.sum(1)`` entries of a row are its sample) by Zhang & Stephens' empirical Bayes
    estimate, with PSIS's prior towards 0.5 and its 30 + sqrt(n) grid points; inf where the
    sample has 4 values or fewer."""
    n = in_tail.sum(1)  # (rows,)
    nf = n.to(torch.float64)
    safe_n = n.clamp(min=1)
    largest = exceed[:, 0]
    quarter_at = (safe_n - torch.floor(nf / 4 + 0.5).long()).clamp(min=0, max=exceed.shape[1] - 1)
    quarter = exceed.gather(1, quarter_at[:, None]).squeeze(1)  # the ascending int(n/4 + 0.5)-th
    grid = 30 + torch.floor(nf.sqrt()).long()  # (rows,)
    j = torch.arange(1, int(grid.max()) + 1, dtype=torch.float64, device=grid.device)
    on_grid = j[None, :] <= grid[:, None]
    b = 1 - torch.sqrt(grid[:, None].to(torch.float64) / (j[None, :] - 0.5))
    b = b / (3 * quarter[:, None]) + 1 / largest[:, None]  # (rows, grid)
    terms = torch.log1p(-b[:, :, None] * exceed[:, None, :])
    k_b = torch.where(in_tail[:, None, :], terms, torch.zeros_like(terms)).sum(-1) / safe_n[:, None]
    profile = nf[:, None] * (torch.log(-(b / k_b)) - k_b - 1)
    profile = torch.where(on_grid, profile, -math.inf)
    w = 1 / (profile[:, None, :] - profile[:, :, None]).exp().sum(-1)  # [r, j] = 1 / sum_i e^(L_i - L_j)
    w = torch.where(on_grid & (w >= 10 * torch.finfo(torch.float64).eps), w, torch.zeros_like(w))
    w = w / w.sum(1, keepdim=True)
    b_post = torch.where(on_grid, b * w, torch.zeros_like(b)).sum(1)
    terms = torch.log1p(-b_post[:, None] * exceed)
    k = torch.where(in_tail, terms, torch.zeros_like(terms)).sum(1) / safe_n
    k = (nf * k + 10 * 0.5) / (nf + 10)
    return torch.where(n > 4, k, math.inf)


#: A point's importance weights are untrustworthy when their Pareto k̂ exceeds this. Well
#: fitted VAEs with a diagonal guide over 16 latents sit between 1 and 2 (digits_vae: median
#: 1.45, 90% below 2.1, at any length of training) while their K-sample estimate is still the
#: usual IWAE bound; a guide that misses the posterior's location or scale by several of its
#: sds gives 4 and more. Theory's 0.7 would flag every image model.
UNRELIABLE_K = 2.0
#: A call warns when at least this share of its points are untrustworthy.
UNRELIABLE_SHARE = 0.5
#: With fewer proposals per point than this, k̂ says too little to warn on.
DIAGNOSTIC_MIN_PROPOSALS = 100


def unreliable_points(log_weights: torch.Tensor, *, guide_draws_latents: bool) -> torch.Tensor:
    """Per point (``log_weights`` is ``(proposals, points)``): whether its importance weights
    are too uneven to trust — Pareto k̂ above `UNRELIABLE_K`, or, when the guide draws local
    latents, every weight equal (the guide has collapsed to a point: all its draws are one).
    All False below `DIAGNOSTIC_MIN_PROPOSALS` proposals.

    >>> from torch.distributions import Normal
    >>> z = 2 * torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))  # q = N(0, 2²)
    >>> unreliable_points(Normal(0, 1).log_prob(z) - Normal(0, 2).log_prob(z), guide_draws_latents=True)
    tensor([False, False])
    >>> unreliable_points(torch.full((1000, 2), -3.0), guide_draws_latents=True)  # q collapsed
    tensor([True, True])
    """
    if log_weights.shape[0] < DIAGNOSTIC_MIN_PROPOSALS:
        return torch.zeros(log_weights.shape[1], dtype=torch.bool, device=log_weights.device)
    k = pareto_k(log_weights)
    collapsed = (k == -math.inf) if guide_draws_latents else torch.zeros_like(k, dtype=torch.bool)
    return (k > UNRELIABLE_K) | collapsed


def warn_if_unreliable(what: str, unreliable: torch.Tensor) -> None:
    """One `DGMWarning` for the call `what` when at least `UNRELIABLE_SHARE` of its points'
    weights are untrustworthy (`unreliable_points`)."""
    count, total = int(unreliable.sum()), unreliable.numel()
    if total == 0 or count < UNRELIABLE_SHARE * total:
        return
    warnings.warn(DGMWarning(
        f"{what}: the importance weights of {count} of {total} points are too uneven to trust "
        f"(Pareto k-hat above {UNRELIABLE_K:g}, or a guide that draws the same value every time): "
        "the guide misses those points' posteriors, so the result may be far off. Fit longer or "
        "with a smaller lr; a guide family with more freedom (mvn, flow) can help (see "
        "docs/inference.md, 'Is the estimate reliable?')"), stacklevel=3)
