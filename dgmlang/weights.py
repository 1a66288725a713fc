"""Importance weights of a compiled model, per data point and per particle, from Pyro traces.

One pass draws the latents from the guide (vectorized over particles in a plate at dim -2),
replays them in the model (latents the model sums out are summed exactly by `poutine.enum`)
and sums the log densities site by site. The importance-weighted training bound
(`iwae_bound`), `log_prob`, sampling/importance resampling and the Metropolis-Hastings steps
of `invert` are built on it. The per-data-point log-sum-exp is ours: Pyro's `RenyiELBO` and
`vectorized_importance_weights` give no per-point bound under subsampling.

Every function takes the compiled model (`dgmlang.compiled.CompiledModel`) and reads its
public attributes only: `model`, `guide`, `ir`, `roles`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

import pyro
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

from dgmlang.errors import DGMUsageError

__all__ = ["CHUNK_CELLS", "PARTICLES", "Weights", "check_importance_weighting", "importance_weights",
           "in_particles", "iwae_bound", "site_sums"]

#: (particles x data points) evaluated at once by `log_prob` and `invert` (bounds memory).
CHUNK_CELLS = 16384
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
                       guide_values: Mapping[str, torch.Tensor] | None = None) -> Weights:
    """One importance-sampling pass: latents from the guide (vectorized over `particles`
    in a plate at dim -2, or one draw per data point when None), values in `given` held
    fixed in guide and model, and latents the model enumerates summed out exactly.

    With `guide_values`, the guide is evaluated at those values instead of drawing."""
    guide = model.guide
    fixed = {**(given or {}), **(guide_values or {})}
    if fixed:
        guide = poutine.condition(guide, data=fixed)
    guide = in_particles(guide, particles, model.model.device)
    guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(batch, size=size))
    latents = {name: site["value"] for name, site in guide_trace.nodes.items()
               if site["type"] == "sample"}
    pyro_model = in_particles(poutine.condition(model.model, data=latents), particles,
                              model.model.device)
    if model.roles.model_enumerated:
        first_dim = -3 if particles is not None else -2
        pyro_model = poutine.enum(pyro_model, first_available_dim=first_dim)
    model_trace = prune_subsample_sites(poutine.trace(pyro_model).get_trace(batch, size=size))
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


def iwae_bound(model: Any, batch: Mapping[str, torch.Tensor], size: int, particles: int) -> torch.Tensor:
    """The importance-weighted bound on log p(data), estimated from a minibatch.

    Globals are drawn once per step from the guide (their term is the ELBO's); given them,
    each data point gets its own log-mean-exp over `particles` samples of its latents,
    and the sum over the minibatch is scaled by N/B outside the log-sum-exp.
    """
    given = {}
    if model.roles.globals:
        trace = poutine.trace(model.guide).get_trace(batch, size=size)
        given = {g: trace.nodes[g]["value"] for g in model.roles.globals}
    weights = importance_weights(model, batch, particles=particles, given=given, size=size)
    rows = weights.local.shape[-1]
    per_point = weights.local.logsumexp(0) - math.log(particles)
    return per_point.sum() * (size / rows) + weights.global_.mean()
