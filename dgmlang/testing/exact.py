"""Exact posteriors: Gaussian conditioning in closed form, finite discrete latents by enumeration.

`GaussianPosterior` and `DiscretePosterior` are the reference answers the checks in
`dgmlang.testing` compare a guide against. `LinearGaussianModel.posterior` and
`DiscreteModel.posterior` (dgmlang.testing.programs) build them from a generated model's
structure; `enumerate_posterior(compiled, data)` builds a `DiscretePosterior` for any
compiled model whose latents are all finite discrete, by scoring every joint configuration
with Pyro traces (brute force, independent of the model's own enumeration machinery).

>>> mean, cov = np.zeros(2), np.array([[1.0, 0.8], [0.8, 1.0]])
>>> m, c = condition_gaussian(mean, cov, np.array([1]), np.array([0]), np.array([[1.0]]))
>>> m.round(3).tolist(), c.round(3).tolist()
([[0.8]], [[0.36]])
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Mapping

import numpy as np

Shape = tuple[int, ...]


def condition_gaussian(
    mean: np.ndarray, cov: np.ndarray, observed: np.ndarray, unknown: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean `(n, len(unknown))` and covariance of ``x[unknown] | x[observed] = values[i]``.

    ``mu_u + S_uo S_oo^-1 (x_o - mu_o)`` and ``S_uu - S_uo S_oo^-1 S_ou``, solved through a
    Cholesky factor of ``S_oo`` (never an explicit inverse).
    """
    mean = np.asarray(mean, dtype=float)
    cov = np.asarray(cov, dtype=float)
    values = np.atleast_2d(np.asarray(values, dtype=float))
    s_uu = cov[np.ix_(unknown, unknown)]
    if len(observed) == 0:
        return np.broadcast_to(mean[unknown], (len(values), len(unknown))).copy(), s_uu
    s_uo = cov[np.ix_(unknown, observed)]
    chol = np.linalg.cholesky(cov[np.ix_(observed, observed)])
    # gain = S_uo S_oo^-1, via two triangular solves
    tmp = np.linalg.solve(chol, s_uo.T)
    gain = np.linalg.solve(chol.T, tmp).T
    post_mean = mean[unknown] + (values - mean[observed]) @ gain.T
    post_cov = s_uu - gain @ s_uo.T
    return post_mean, (post_cov + post_cov.T) / 2


@dataclass(frozen=True, eq=False)
class GaussianPosterior:
    """A Gaussian posterior over several variables for each of `n` data points.

    `mean` is `(n, D)` (variables flattened and concatenated in `names` order), `cov` the
    `(D, D)` covariance (the same for every point, as in any linear-Gaussian model).

    >>> post = GaussianPosterior(("a", "b"), ((), (2,)), np.zeros((1, 3)), np.eye(3))
    >>> post.mean_of("b").shape, post.cov_of("b").shape, post.std_of("b").tolist()
    ((1, 2), (2, 2), [1.0, 1.0])
    """

    names: tuple[str, ...]
    shapes: tuple[Shape, ...]
    mean: np.ndarray
    cov: np.ndarray

    def _slice(self, name: str) -> slice:
        start = 0
        for n, shape in zip(self.names, self.shapes):
            size = int(np.prod(shape)) if shape else 1
            if n == name:
                return slice(start, start + size)
            start += size
        raise KeyError(f"the posterior has no variable {name!r}; it has {', '.join(self.names)}")

    def shape_of(self, name: str) -> Shape:
        return self.shapes[self.names.index(name)]

    def mean_of(self, name: str) -> np.ndarray:
        """Posterior mean of `name`, `(n, *shape)`."""
        return self.mean[:, self._slice(name)].reshape((len(self.mean), *self.shape_of(name)))

    def cov_of(self, name: str) -> np.ndarray:
        """Posterior covariance of `name`'s flattened value, `(d, d)`."""
        s = self._slice(name)
        return self.cov[s, s]

    def std_of(self, name: str) -> np.ndarray:
        """Posterior standard deviation of each coordinate of `name`, `(*shape)`."""
        return np.sqrt(np.diag(self.cov_of(name))).reshape(self.shape_of(name))

    def flatten(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """`values[name]` shaped `(..., n, *shape)` concatenated into `(..., n, D)`."""
        parts = []
        for name, shape in zip(self.names, self.shapes):
            v = np.asarray(values[name], dtype=float)
            parts.append(v.reshape(v.shape[: v.ndim - len(shape)] + (-1,)))
        return np.concatenate(parts, axis=-1)

    def log_prob(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """log density of the joint posterior at `values` (each `(..., n, *shape)`): `(..., n)`."""
        x = self.flatten(values) - self.mean
        chol = np.linalg.cholesky(self.cov)
        z = np.linalg.solve(chol, np.moveaxis(x, -1, 0).reshape(len(self.cov), -1))
        z = np.moveaxis(z.reshape((len(self.cov), *x.shape[:-1])), 0, -1)
        half_logdet = np.log(np.diag(chol)).sum()
        return -0.5 * (z**2).sum(-1) - half_logdet - 0.5 * len(self.cov) * np.log(2 * np.pi)

    def sample(self, num_samples: int, seed: int = 0) -> dict[str, np.ndarray]:
        """`num_samples` draws per data point: each variable `(num_samples, n, *shape)`."""
        rng = np.random.default_rng(seed)
        chol = np.linalg.cholesky(self.cov)
        eps = rng.standard_normal((num_samples, len(self.mean), len(self.cov)))
        flat = self.mean + eps @ chol.T
        return {
            name: flat[..., self._slice(name)].reshape((num_samples, len(self.mean), *shape))
            for name, shape in zip(self.names, self.shapes)
        }


@dataclass(frozen=True, eq=False)
class DiscretePosterior:
    """The exact posterior over scalar finite discrete variables for each of `n` data points.

    `log_probs` is `(n, K_1, ..., K_m)`, normalised over the variables' joint configurations;
    `log_evidence` is `(n,)`, the log of the normalising constant (log p(observed)).

    >>> post = DiscretePosterior.from_log_joint(("c",), np.log(np.array([[1.0, 3.0]])))
    >>> post.marginal("c").round(6).tolist(), post.log_evidence.round(4).tolist()
    ([[0.25, 0.75]], [1.3863])
    """

    names: tuple[str, ...]
    log_probs: np.ndarray
    log_evidence: np.ndarray

    @classmethod
    def from_log_joint(cls, names: tuple[str, ...], log_joint: np.ndarray) -> "DiscretePosterior":
        """From unnormalised log p(config, observed), shaped `(n, K_1, ..., K_m)`."""
        flat = log_joint.reshape(len(log_joint), -1)
        log_z = np.logaddexp.reduce(flat, axis=1)
        return cls(names, log_joint - log_z.reshape((-1,) + (1,) * len(names)), log_z)

    @property
    def probs(self) -> np.ndarray:
        return np.exp(self.log_probs)

    def marginal(self, name: str) -> np.ndarray:
        """Posterior probabilities of each class of `name`, `(n, K)`."""
        axis = 1 + self.names.index(name)
        others = tuple(a for a in range(1, self.probs.ndim) if a != axis)
        return self.probs.sum(axis=others)


def enumerate_posterior(compiled, data: Mapping, *, latents=None) -> DiscretePosterior:
    """The exact posterior of a compiled model's finite discrete latents, by brute force.

    Every joint configuration of the latents (each a scalar or small array) is scored with a
    trace of the model conditioned on it; the log joints are normalised per data point. The
    model must have no continuous latents or globals (they would be sampled, not summed).
    Multi-dimensional latents are enumerated coordinate by coordinate, so keep them small.
    Returns a `DiscretePosterior` whose names are the latents' coordinates: ``"z"`` for a
    scalar, ``"z[0]"``, ``"z[1]"``... for arrays.
    """
    import torch
    import pyro.poutine as poutine

    from dgmlang.testing.plans import facts_of
    from dgmlang.testing.runtime import as_batch, point_log_prob, support_size

    ir = compiled.ir
    facts = facts_of(compiled)
    names = list(latents) if latents is not None else ir.names("latent")
    continuous = [n for n in ir.names("latent", "global") if n not in names]
    if continuous:
        raise ValueError(
            f"enumerate_posterior sums out finite discrete latents only; {', '.join(continuous)} "
            "would be sampled"
        )
    batch = as_batch(compiled, data)
    n = next(iter(batch.values())).shape[0]
    coords = []  # (latent, index within its shape, number of classes)
    for name in names:
        shape = ir.variable(name).shape
        k = support_size(facts, name)
        for idx in itertools.product(*(range(d) for d in shape)):
            coords.append((name, idx, k))
    labels = tuple(f"{name}[{', '.join(map(str, idx))}]" if idx else name for name, idx, _ in coords)
    sizes = [k for *_, k in coords]
    log_joint = np.empty((n, *sizes))
    for config in itertools.product(*(range(k) for k in sizes)):
        values = {name: torch.zeros((n, *ir.variable(name).shape)) for name in names}
        for (name, idx, _), value in zip(coords, config):
            values[name][(slice(None), *idx)] = float(value)
        conditioned = poutine.condition(compiled.model, data=values)
        trace = poutine.trace(conditioned).get_trace(batch)
        log_joint[(slice(None), *config)] = point_log_prob(trace, n).detach().double().numpy()
    return DiscretePosterior.from_log_joint(labels, log_joint)


def enumerated_marginals(compiled, data: Mapping, *, latents=None, num_samples: int = 1,
                         guide=None, seed: int = 0) -> dict[str, np.ndarray]:
    """The model's own posterior class probabilities of its latents summed out in the model,
    `(n, K)` each: Pyro's `TraceEnum_ELBO.compute_marginals`, given the guide's draws of
    everything else and averaged over `num_samples` of them (exact when the guide samples
    nothing). Compare with `enumerate_posterior` or a `DiscreteModel.posterior`.
    """
    from dgmlang.testing.plans import facts_of, plan_of, summed_out_latents
    from dgmlang.testing.runtime import as_batch, model_marginals, support_size

    summed = summed_out_latents(plan_of(compiled))
    names = summed if latents is None else list(latents)
    unknown = [n for n in names if n not in summed]
    if unknown:
        raise ValueError(f"{', '.join(unknown)} not summed out in the model; it sums out {summed}")
    batch = as_batch(compiled, data)
    has_globals = bool(compiled.ir.names("global"))
    return {
        name: model_marginals(compiled, batch, guide or compiled.guide, name,
                              support_size(facts_of(compiled), name), num_samples, seed, has_globals)
        for name in names
    }


__all__ = [
    "condition_gaussian", "GaussianPosterior", "DiscretePosterior", "enumerate_posterior",
    "enumerated_marginals",
]
