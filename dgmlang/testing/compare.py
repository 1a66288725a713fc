"""`assert_guide_matches_posterior`: does the inferred posterior match a reference, statistic by
statistic, with a failure message that says which latent, which statistic and by how much.

The reference is, in order of preference: what you pass as `posterior` (a `GaussianPosterior`
or `DiscretePosterior` from `dgmlang.testing`, or your own draws, e.g. from Stan); exact
enumeration when every latent is finite discrete; otherwise NUTS on the model conditioned on
the data (Pyro's MCMC, discrete latents summed out; `chains` chains from prior draws, checked
to agree by split R-hat, else `ReferenceUnreliable`), with discrete latents' reference
probabilities Rao-Blackwellized over the NUTS draws.

Statistics, per latent coordinate and data point (globals: once):

* ``mean`` -- |mean_q - mean_p| in units of the reference posterior's sd;
* ``sd`` -- |log(sd_q / sd_p)| (0.1 is about 10% off);
* ``corr`` -- |corr_q - corr_p| for each pair of coordinates of a vector latent (a diagonal
  guide cannot pass this on a correlated posterior; ask for it with an `mvn` guide);
* ``probs`` -- for finite discrete latents, max_k |q(k) - p(k)| (always checked).

A statistic fails when its error exceeds ``tol`` plus 3.5 Monte Carlo standard errors of the
two estimates (zero for an exact reference), so sampling noise alone does not fail a test.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from dgmlang.testing.exact import DiscretePosterior, GaussianPosterior, enumerate_posterior
from dgmlang.testing.plans import DISCRETE_KINDS, facts_of, latent_kinds, plan_of

#: How many Monte Carlo standard errors are allowed on top of `tol`.
MC_SLACK = 3.5
STATISTICS = ("mean", "sd", "corr")


@dataclass(frozen=True)
class Mismatch:
    """One statistic of one latent coordinate (at one data point) off by more than allowed."""

    latent: str
    coordinate: str
    point: int | None  # None for a global
    statistic: str
    guide: float
    reference: float
    error: float
    allowed: float

    def describe(self) -> str:
        where = self.coordinate + ("" if self.point is None else f", data point {self.point}")
        if self.statistic == "mean":
            return (f"{where}: mean {self.guide:.4g} vs posterior {self.reference:.4g}, off by "
                    f"{self.error:.3g} posterior sd (allowed {self.allowed:.3g})")
        if self.statistic == "sd":
            return (f"{where}: sd {self.guide:.4g} vs posterior {self.reference:.4g}, ratio "
                    f"{self.guide / self.reference:.3g} (|log ratio| {self.error:.3g}, "
                    f"allowed {self.allowed:.3g})")
        if self.statistic == "corr":
            return (f"{where}: correlation {self.guide:.3f} vs posterior {self.reference:.3f}, "
                    f"off by {self.error:.3g} (allowed {self.allowed:.3g})")
        return (f"{where}: probability {self.guide:.4f} vs posterior {self.reference:.4f}, "
                f"off by {self.error:.3g} (allowed {self.allowed:.3g})")


@dataclass(frozen=True, eq=False)
class PosteriorComparison:
    """What `compare_to_posterior` found: every check made, the mismatches, the reference used."""

    model: str
    reference: str
    tol: float
    checked: int
    worst: Mapping[str, float]  # statistic -> largest error seen
    mismatches: tuple[Mismatch, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def report(self, limit: int = 10) -> str:
        head = (f"the guide {'matches' if self.ok else 'does not match'} the posterior of model "
                f"'{self.model}' (tol {self.tol:g}; reference: {self.reference})")
        ordered = sorted(self.mismatches, key=lambda m: m.allowed - m.error)
        lines = [head] + [f"  {m.describe()}" for m in ordered[:limit]]
        if len(ordered) > limit:
            lines.append(f"  ... and {len(ordered) - limit} more")
        worst = ", ".join(f"{k} {v:.3g}" for k, v in self.worst.items())
        lines.append(f"{self.checked} statistics checked; largest errors: {worst}")
        return "\n".join(lines)


class GuideMismatch(AssertionError):
    """Raised by `assert_guide_matches_posterior`; `.comparison` holds the details."""

    __module__ = "dgmlang.testing"  # how pytest names it in a failure

    def __init__(self, comparison: PosteriorComparison):
        super().__init__(comparison.report())
        self.comparison = comparison


def assert_guide_matches_posterior(model, data: Any, *, tol: float = 0.25, **options) -> PosteriorComparison:
    """Assert that `model`'s inference matches the posterior given `data`, within `tol`.

    `model` is a compiled model (fitted, or trained with `train_guide`); `data` what its
    `invert` takes (every data variable and input, `(n, *shape)`; keep n small). Options are
    those of `compare_to_posterior`. Raises `GuideMismatch` (an AssertionError) listing each
    failing latent, statistic and error; returns the comparison when everything matches.
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this one
    comparison = compare_to_posterior(model, data, tol=tol, **options)
    if not comparison.ok:
        raise GuideMismatch(comparison)
    return comparison


def compare_to_posterior(
    model,
    data: Any,
    *,
    tol: float = 0.25,
    posterior: GaussianPosterior | DiscretePosterior | Mapping[str, Any] | None = None,
    guide: Callable | None = None,
    latents: Iterable[str] | None = None,
    statistics: Iterable[str] = ("mean", "sd"),
    num_samples: int = 2000,
    reference_samples: int = 500,
    warmup_steps: int = 300,
    chains: int = 2,
    seed: int = 0,
) -> PosteriorComparison:
    """Compare the guide's posterior (or `guide`'s, e.g. a `perturb_guide` bug) with a
    reference; see the module docs. `latents` restricts the latents compared (default: every
    latent and global the reference knows). `posterior` as draws: a dict of arrays shaped
    `(S, n, *shape)` per local latent and `(S, *shape)` per global."""
    from dgmlang.testing.runtime import as_batch

    statistics = tuple(statistics)
    unknown = [s for s in statistics if s not in STATISTICS]
    if unknown:
        raise ValueError(f"unknown statistic(s) {unknown}; choose from {STATISTICS}")
    ir = model.ir
    batch = as_batch(model, data)
    kinds = latent_kinds(plan_of(model))
    discrete = {name for name, kind in kinds.items() if kind in DISCRETE_KINDS}
    wanted = list(latents) if latents is not None else list(kinds)

    reference, label = _reference(model, batch, posterior, wanted, discrete,
                                  reference_samples, warmup_steps, seed, chains)
    names = [w for w in wanted if w in reference.names]
    if not names:
        raise ValueError(f"the reference has none of the latents {wanted}")
    guide_ref = _GuideDraws(model, batch, guide, num_samples, seed + 1, kinds)

    mismatches: list[Mismatch] = []
    worst: dict[str, float] = {}
    checked = 0
    for name in names:
        is_global = name in ir.names("global")
        shape = ir.variable(name).shape
        if name in discrete:
            q = guide_ref.class_probs(name)
            p = reference.class_probs(name)
            err = np.abs(q - p)
            se = np.sqrt(p * (1 - p) * (1 / guide_ref.size + 1 / reference.size))
            checked += _collect(mismatches, worst, name, "probs", q, p, err, tol + MC_SLACK * se,
                                lambda idx: f"{name} = {idx[-1]}", is_global)
            continue
        q_draws = guide_ref.continuous(name)  # (S, n, d) or (S, 1, d)
        p_mean, p_sd, p_corr = reference.moments(name)
        q_mean, q_sd = q_draws.mean(0), q_draws.std(0)
        labels = _labels(name, shape)
        if "mean" in statistics:
            err = np.abs(q_mean - p_mean) / p_sd
            se = np.sqrt(q_sd**2 / guide_ref.size + p_sd**2 / reference.size) / p_sd
            checked += _collect(mismatches, worst, name, "mean", q_mean, p_mean, err,
                                tol + MC_SLACK * se, lambda idx: labels[idx[-1]], is_global)
        if "sd" in statistics:
            err = np.abs(np.log(q_sd / p_sd))
            se = np.sqrt(1 / (2 * guide_ref.size) + 1 / (2 * reference.size))
            checked += _collect(mismatches, worst, name, "sd", q_sd, p_sd, err,
                                tol + MC_SLACK * se, lambda idx: labels[idx[-1]], is_global)
        if "corr" in statistics and q_draws.shape[-1] > 1:
            d = q_draws.shape[-1]
            pairs = [(i, j) for i in range(d) for j in range(i + 1, d)]
            q_corr = np.stack([_corr(q_draws[..., i], q_draws[..., j]) for i, j in pairs], -1)
            pc = np.stack([p_corr[..., i, j] for i, j in pairs], -1)
            err = np.abs(q_corr - pc)
            se = (1 - pc**2) * math.sqrt(1 / guide_ref.size + 1 / reference.size) + 1e-12
            pair_labels = [f"{labels[i]}~{labels[j]}" for i, j in pairs]
            checked += _collect(mismatches, worst, name, "corr", q_corr, pc, err, tol + MC_SLACK * se,
                                lambda idx: pair_labels[idx[-1]], is_global)
    return PosteriorComparison(ir.name, label, tol, checked, worst, tuple(mismatches))


# ---------------------------------------------------------------- internals


def _labels(name: str, shape) -> list[str]:
    if not shape:
        return [name]
    return [f"{name}[{', '.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    return (a * b).mean(0) / np.sqrt((a**2).mean(0) * (b**2).mean(0))


def _collect(out: list, worst: dict, name: str, statistic: str, q, p, err, allowed, label, is_global) -> int:
    """Record the entries of `err` (shaped (points, k)) above `allowed`; count the checks."""
    err, q, p = np.atleast_2d(err), np.atleast_2d(q), np.atleast_2d(p)
    allowed = np.broadcast_to(allowed, err.shape)
    worst[statistic] = max(worst.get(statistic, 0.0), float(np.nanmax(err)))
    bad = ~(err <= allowed)  # NaN counts as a failure
    for point, k in zip(*np.nonzero(bad)):
        out.append(Mismatch(name, label((point, k)), None if is_global else int(point), statistic,
                            float(q[point, k]), float(p[point, k]), float(err[point, k]),
                            float(allowed[point, k])))
    return int(err.size)


class _GuideDraws:
    """Posterior draws from the guide (continuous latents, guide-enumerated ones) and class
    probabilities of model-enumerated latents (the model's exact sum, averaged over the
    guide's draws of everything else)."""

    def __init__(self, model, batch, guide, num_samples, seed, kinds):
        from dgmlang.testing.runtime import guide_draws, seeded, to_numpy

        self.model, self.batch, self.kinds, self.size = model, batch, kinds, num_samples
        self.guide = guide or model.guide
        self.seed = seed
        self.n = len(next(iter(batch.values())))
        sampled = [k for k, kind in kinds.items() if kind != "enumerated_in_model"]
        with seeded(seed):
            draws = guide_draws(self.guide, batch, num_samples, names=sampled) if sampled else {}
        self.draws = {k: to_numpy(v) for k, v in draws.items()}
        self.globals = set(model.ir.names("global"))

    def continuous(self, name: str) -> np.ndarray:
        x = self.draws[name]
        if name in self.globals:
            x = x[:, None]
        return x.reshape(x.shape[0], x.shape[1], -1)

    def class_probs(self, name: str) -> np.ndarray:
        from dgmlang.testing.runtime import model_marginals, support_size

        k = support_size(facts_of(self.model), name)
        if self.kinds[name] == "enumerated_in_model":
            return model_marginals(self.model, self.batch, self.guide, name, k, self.size, self.seed,
                                   bool(self.globals))
        x = self.draws[name].astype(int)
        if name in self.globals:
            x = x[:, None]
        return np.stack([(x == c).mean(0) for c in range(k)], -1)


class _Reference:
    """A reference posterior: per latent moments `(mean, sd, corr)` shaped (points, d) /
    (points, d, d), and class probabilities (points, k); `size` its effective sample size
    (inf when exact)."""

    def __init__(self, names, moments=None, probs=None, size=math.inf):
        self.names = list(names)
        self._moments = moments or {}
        self._probs = probs or {}
        self.size = size

    def moments(self, name):
        return self._moments[name]

    def class_probs(self, name):
        return self._probs[name]


def _moments_from_draws(x: np.ndarray):
    """(S, points, d) -> mean, sd (points, d), corr (points, d, d)."""
    mean = x.mean(0)
    sd = x.std(0)
    centred = x - mean
    cov = np.einsum("spi,spj->pij", centred, centred) / len(x)
    corr = cov / np.maximum(sd[..., :, None] * sd[..., None, :], 1e-300)
    return mean, sd, corr


def _reference(model, batch, posterior, wanted, discrete, reference_samples, warmup_steps, seed,
               chains):
    ir = model.ir
    if isinstance(posterior, GaussianPosterior):
        moments = {}
        for name in posterior.names:
            cov = posterior.cov_of(name)
            sd = np.sqrt(np.diag(cov))
            mean = posterior.mean_of(name).reshape(len(posterior.mean), -1)
            moments[name] = (mean, np.broadcast_to(sd, mean.shape),
                             np.broadcast_to(cov / np.outer(sd, sd), (len(mean), *cov.shape)))
        return _Reference(posterior.names, moments=moments), "exact (Gaussian)"
    if isinstance(posterior, DiscretePosterior):
        return _Reference(posterior.names, probs={n: posterior.marginal(n) for n in posterior.names}), \
            "exact (enumeration)"
    if posterior is not None:
        return _reference_from_draws(ir, posterior, discrete, model), "the given draws"
    continuous = [n for n in ir.names("latent", "global") if n not in discrete]
    if not continuous:
        exact = enumerate_posterior(model, batch)
        return _Reference(exact.names, probs={n: exact.marginal(n) for n in exact.names}), \
            "exact (enumeration)"
    draws = _nuts(model, batch, reference_samples, warmup_steps, seed, chains)
    ref = _reference_from_draws(ir, draws, discrete, model, ess=True)
    disc_wanted = [n for n in wanted if n in discrete]
    if disc_wanted:
        ref._probs.update(_rao_blackwell(model, batch, draws, disc_wanted, seed))
        ref.names += disc_wanted
    return ref, (f"NUTS, {chains} chains, {reference_samples} draws after {warmup_steps} "
                 "warm-up steps each")


def _reference_from_draws(ir, draws: Mapping[str, Any], discrete, model, ess: bool = False) -> _Reference:
    from dgmlang.testing.runtime import support_size, to_numpy

    moments, probs, sizes = {}, {}, []
    for name, value in draws.items():
        x = to_numpy(value)
        if name in ir.names("global"):
            x = x[:, None]
        if name in discrete:
            k = support_size(facts_of(model), name)
            probs[name] = np.stack([(x.reshape(len(x), x.shape[1]) == c).mean(0) for c in range(k)], -1)
        else:
            x = x.reshape(x.shape[0], x.shape[1], -1)
            moments[name] = _moments_from_draws(x)
        sizes.append(_ess(x) if ess else len(x))
    return _Reference(list(draws), moments=moments, probs=probs, size=float(min(sizes)))


def _ess(x: np.ndarray) -> float:
    """The smallest effective sample size over coordinates of one chain `(S, ...)`."""
    import torch
    from pyro.ops.stats import effective_sample_size

    flat = torch.as_tensor(x.reshape(len(x), -1))
    value = effective_sample_size(flat.unsqueeze(0), chain_dim=0, sample_dim=1)
    return float(torch.nan_to_num(value, nan=len(x)).clamp(1, len(x)).min())


class ReferenceUnreliable(ValueError):
    """NUTS chains started apart disagree: the reference posterior cannot be trusted."""


#: Above this split R-hat, the NUTS chains have not mixed.
MAX_RHAT = 1.1


def _nuts(model, batch, num_samples, warmup_steps, seed, chains: int = 2) -> dict:
    """`chains` NUTS chains (run one after another, each from a draw of the prior), pooled:
    `num_samples` draws in all. Raises `ReferenceUnreliable` when their split R-hat says
    they explore different regions (a multimodal posterior that one chain cannot cross)."""
    import torch
    from pyro.infer import MCMC, NUTS
    from pyro.infer.autoguide.initialization import init_to_sample
    from pyro.ops.stats import split_gelman_rubin

    from dgmlang.testing.runtime import seeded

    def conditioned():
        return model.model(batch)

    runs = []
    per_chain = max(1, num_samples // chains)
    for chain in range(chains):
        kernel = NUTS(conditioned, max_plate_nesting=model.model.max_plate_nesting,
                      jit_compile=False, target_accept_prob=0.9, init_strategy=init_to_sample)
        mcmc = MCMC(kernel, num_samples=per_chain, warmup_steps=warmup_steps, disable_progbar=True)
        with seeded(seed + 7919 * chain):
            mcmc.run()
        runs.append({k: v.detach() for k, v in mcmc.get_samples().items()
                     if k in model.ir.names("latent", "global") and isinstance(v, torch.Tensor)})
    if chains > 1:
        for name in runs[0]:
            stacked = torch.stack([r[name] for r in runs])  # (chains, draws, ...)
            rhat = split_gelman_rubin(stacked.double(), chain_dim=0, sample_dim=1)
            worst = float(torch.nan_to_num(rhat, nan=1.0).max())
            if worst > MAX_RHAT:
                raise ReferenceUnreliable(
                    f"the NUTS reference did not mix for '{name}' (split R-hat {worst:.2f} over "
                    f"{chains} chains): the posterior may be multimodal, and a chain stays in "
                    "one mode; pass posterior= with exact draws (or an exact posterior), or "
                    "compare on data where the posterior has one mode"
                )
    return {name: torch.cat([r[name] for r in runs]) for name in runs[0]}


def _rao_blackwell(model, batch, draws, names, seed) -> dict[str, np.ndarray]:
    """p(y | x) = E_{z ~ NUTS} p(y | z, x), exact in y, for model-enumerated latents."""
    import pyro.poutine as poutine

    from dgmlang.testing.runtime import model_marginals, support_size

    probs = {}
    for name in names:
        k = support_size(facts_of(model), name)
        total, count = 0.0, 0
        step = max(1, len(next(iter(draws.values()))) // 100)
        for s in range(0, len(next(iter(draws.values()))), step):
            values = {v: draws[v][s] for v in draws}
            conditioned = poutine.condition(model.model, data=values)
            total = total + model_marginals(model, batch, _empty_guide, name, k, 1, seed,
                                            has_globals=False, conditioned=conditioned)
            count += 1
        probs[name] = total / count
    return probs


def _empty_guide(*args, **kwargs):
    return None


__all__ = [
    "assert_guide_matches_posterior", "compare_to_posterior", "PosteriorComparison",
    "GuideMismatch", "Mismatch", "MC_SLACK", "ReferenceUnreliable",
]
