"""Exact marginals of joint distributions over a row with some entries missing.

A `Dirichlet` row is one value: its entries' terms cannot be dropped one by one. By the
aggregation property, when entries are missing the observed ones with the rest summed,
``(x_obs, 1 - Σ x_obs)``, are ``Dirichlet(α_obs, Σ α_mis)``, and that distribution's
density (over its first coordinates, torch's convention) is the marginal density of
``x_obs``. With exactly one entry missing the aggregated vector is the whole row, so the
term is the full density of the completed row; with none observed it is 0. Given the
observed entries, the missing ones are ``(1 - Σ x_obs) · Dirichlet(α_mis)``.

`observed_log_prob` scores rows so (the fast loss's `ModelSite.log_prob` and Pyro's path
through `ObservedPart`), `complete` draws the missing entries (`invert`), `simplex_fill`
fills a partly missing simplex row with equal shares of what its observed entries leave
(what the guide reads, and a placeholder on the support).

>>> import torch
>>> from torch.distributions import Dirichlet
>>> d = Dirichlet(torch.tensor([2.0, 3.0, 4.0]))
>>> x = torch.tensor([0.2, 0.3, 0.5])
>>> seen = torch.tensor([True, True, False])     # one missing: the full density
>>> bool(torch.isclose(observed_log_prob(d, x, seen), d.log_prob(x)))
True
>>> float(observed_log_prob(d, x, torch.zeros(3, dtype=torch.bool)))
0.0
>>> simplex_fill(torch.tensor([0.2, 0.0, 0.0]), torch.tensor([False, True, True]))
tensor([0.2000, 0.4000, 0.4000])
"""
from __future__ import annotations

import math

import torch
from torch.distributions import Dirichlet, Independent, MultivariateNormal, constraints

from pyro.distributions.torch_distribution import TorchDistribution

__all__ = ["JOINT", "MissingPart", "ObservedPart", "complete", "masked_mvn_log_prob", "observed_log_prob",
           "redraw", "simplex_fill"]

#: Distributions over a row with entries that can be missing, marginalized here.
JOINT = ("Dirichlet",)


def simplex_fill(value: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """Rows of `value` on the simplex with their `missing` entries set to equal shares of
    what the observed entries leave (1/K each in a row missing whole)."""
    rest = 1 - torch.where(missing, torch.zeros_like(value), value).sum(-1, keepdim=True)
    count = missing.sum(-1, keepdim=True).clamp(min=1).to(value.dtype)
    return torch.where(missing, (rest / count).expand_as(value), value)


def observed_log_prob(base, value: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """log density of the observed entries of each row of `value` under `base` (a
    Dirichlet), shaped like its batch: the aggregated Dirichlet's (module docs). Missing
    entries of `value` are never read (they may hold anything, NaN included)."""
    alpha = base.concentration
    shape = torch.broadcast_shapes(alpha.shape, value.shape, observed.shape)
    alpha, value, observed = alpha.expand(shape), value.expand(shape), observed.expand(shape)
    zeros = torch.zeros_like(alpha)
    one = torch.ones((), dtype=alpha.dtype, device=alpha.device)
    has_missing = ~observed.all(-1)
    # every `where` keeps the unused branch finite, so no NaN reaches a gradient
    x = torch.where(observed, value, one)
    rest = torch.where(has_missing, 1 - torch.where(observed, value, zeros).sum(-1), one)
    a_missing = torch.where(has_missing, torch.where(observed, zeros, alpha).sum(-1), one)
    log_p = (torch.lgamma(alpha.sum(-1))
             + torch.where(observed, (alpha - 1) * torch.log(x) - torch.lgamma(alpha), zeros).sum(-1))
    aggregated = (a_missing - 1) * torch.log(rest) - torch.lgamma(a_missing)
    return log_p + torch.where(has_missing, aggregated, torch.zeros_like(aggregated))


def complete(base, value: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """`value` with its missing entries drawn from `base` (a Dirichlet) given the observed
    ones: ``(1 - Σ x_obs) · Dirichlet(α_mis)`` on each row."""
    alpha = base.concentration
    shape = torch.broadcast_shapes(alpha.shape, value.shape, observed.shape)
    alpha, value, observed = alpha.expand(shape), value.expand(shape), observed.expand(shape)
    gamma = torch.distributions.Gamma(alpha, torch.ones_like(alpha)).sample()
    gamma = torch.where(observed, torch.zeros_like(gamma), gamma)
    share = gamma / gamma.sum(-1, keepdim=True).clamp(min=torch.finfo(gamma.dtype).tiny)
    rest = 1 - torch.where(observed, value, torch.zeros_like(value)).sum(-1, keepdim=True)
    return torch.where(observed, value, rest * share)


def redraw(fn, value: torch.Tensor, observed: torch.Tensor,
           draw: torch.Tensor | None = None) -> torch.Tensor:
    """`value` with its missing entries (False in `observed`) drawn from `fn` (a model
    site's distribution, `.to_event` or not) given the observed ones: `complete` for a
    Dirichlet; where the distribution factorizes, the entries of `draw` (a draw of `fn`
    already made) or of a new draw."""
    base = fn
    while isinstance(base, Independent):
        base = base.base_dist
    if isinstance(base, Dirichlet):
        return complete(base, value, observed)
    draw = fn.sample() if draw is None else draw
    return torch.where(observed, value, draw.to(value.dtype))


class ObservedPart(TorchDistribution):
    """`base` (a Dirichlet) scoring only the observed entries of each row: Pyro's path's
    counterpart of ``dist.mask``, which can only drop whole rows. Samples are `base`'s."""

    arg_constraints: dict = {}
    support = constraints.real_vector  # a partly observed row is not on the simplex

    def __init__(self, base, observed: torch.Tensor):
        self.base = base
        self.observed = observed
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return ObservedPart(self.base.expand(batch_shape), self.observed)

    def sample(self, sample_shape=torch.Size()):
        return self.base.sample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return observed_log_prob(self.base, value, self.observed)


def masked_mvn_log_prob(loc: torch.Tensor, scale_tril: torch.Tensor, value: torch.Tensor,
                        keep: torch.Tensor) -> torch.Tensor:
    """log N(value[keep]; loc[keep], Σ[keep, keep]) per row, Σ = scale_tril scale_trilᵀ, each
    row with its own `keep` pattern: the dropped coordinates get unit variance, no
    correlation and a zero residual, which adds exactly their N(0; 0, 1) terms, taken off
    again (0 for a row keeping nothing).

    >>> tril = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    >>> keep = torch.tensor([False, True])
    >>> float(masked_mvn_log_prob(torch.zeros(2), tril, torch.tensor([9.0, 1.0]), keep))
    ... # doctest: +ELLIPSIS
    -1.43...
    >>> float(torch.distributions.Normal(0.0, 1.25 ** 0.5).log_prob(torch.tensor(1.0)))
    ... # doctest: +ELLIPSIS
    -1.43...
    """
    k = keep.to(loc.dtype)
    cov = scale_tril @ scale_tril.transpose(-1, -2)
    cov = cov * k.unsqueeze(-1) * k.unsqueeze(-2) + torch.diag_embed(1 - k)
    diff = torch.where(keep, value - loc, torch.zeros_like(value - loc))
    normal = MultivariateNormal(torch.zeros_like(diff), covariance_matrix=cov, validate_args=False)
    return normal.log_prob(diff) + (1 - k).sum(-1) * (0.5 * math.log(2 * math.pi))


class MissingPart(TorchDistribution):
    """q of a variable's missing entries: every entry drawn, ``x = transform(u)`` with ``u``
    over the flat entries ``(*batch, D)`` either a diagonal Normal (`scale`) or a
    MultivariateNormal (`scale_tril`), and `log_prob` the density of the missing entries
    only (False in `observed`, shaped like ``(*batch, *shape)``): the exact marginal of
    u's missing part, less the log-Jacobian of the elementwise transform there. The
    transform is cached, so scoring a draw inverts nothing."""

    arg_constraints: dict = {}
    support = constraints.real  # only the missing entries are the model's; any value passes
    has_rsample = True

    def __init__(self, loc: torch.Tensor, observed: torch.Tensor, shape: tuple[int, ...], transform, *,
                 scale: torch.Tensor | None = None, scale_tril: torch.Tensor | None = None):
        self.loc, self.scale, self.scale_tril = loc, scale, scale_tril
        self.observed, self.transform, self.entries = observed, transform, tuple(shape)
        super().__init__(loc.shape[:-1], torch.Size(shape), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        size = self.loc.shape[-1]
        return MissingPart(
            self.loc.expand(batch_shape + (size,)), self.observed, self.entries, self.transform,
            scale=None if self.scale is None else self.scale.expand(batch_shape + (size,)),
            scale_tril=None if self.scale_tril is None else self.scale_tril.expand(batch_shape + (size, size)))

    def rsample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.loc.shape
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        if self.scale_tril is not None:
            u = self.loc + (self.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
        else:
            u = self.loc + self.scale * eps
        return self.transform(u.reshape(u.shape[:-1] + self.entries))

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        u = self.transform.inv(value)
        log_jacobian = self.transform.log_abs_det_jacobian(u, value)
        rank = len(self.entries)
        flat = u.reshape(u.shape[: u.dim() - rank] + (-1,))
        keep = (~self.observed).expand(u.shape)
        keep = keep.reshape(flat.shape)
        if self.scale_tril is not None:
            log_q = masked_mvn_log_prob(self.loc, self.scale_tril, flat, keep)
        else:
            per_entry = torch.distributions.Normal(self.loc, self.scale, validate_args=False).log_prob(flat)
            log_q = torch.where(keep, per_entry, torch.zeros_like(per_entry)).sum(-1)
        if torch.is_tensor(log_jacobian):
            log_jacobian = log_jacobian.expand(u.shape).reshape(flat.shape)
            log_q = log_q - torch.where(keep, log_jacobian, torch.zeros_like(log_jacobian)).sum(-1)
        return log_q
