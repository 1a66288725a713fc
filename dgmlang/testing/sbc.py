"""Simulation-based calibration (Talts et al. 2018, "Validating Bayesian Inference Algorithms
with Simulation-Based Calibration").

Draw a latent from the prior and data given it, draw L samples from the inferred posterior,
and count how many fall below the true value: if inference is exact, that rank is uniform on
0..L. A guide that is too narrow piles ranks at both ends (a U), a biased one at one end.

`sbc(model, ...)` runs the loop with a compiled model; `rank_statistics`, `ks_uniformity`
and `plot_rank_histograms` are the pieces, usable with ranks from anywhere.

Ranks are discrete; for the KS test each rank r is spread uniformly over its cell,
``u = (r + U(0, 1)) / (L + 1)``, which is exactly Uniform(0, 1) when inference is exact, so
`scipy.stats.kstest(u, "uniform")` has its nominal level (sbi's `check_sbc` compares the raw
ranks with a continuous uniform instead, which is slightly conservative). A latent with
several coordinates gets one KS test per coordinate and a Bonferroni-adjusted p-value.

>>> rng = np.random.default_rng(0)
>>> good = rng.integers(0, 100, size=(500, 2))          # uniform ranks, L = 99
>>> bad = np.minimum(rng.integers(0, 100, size=(500, 1)), rng.integers(0, 100, size=(500, 1)))
>>> result = SBCResult({"z": good, "w": bad}, 99)
>>> result.ks["z"].p_value > 0.01, result.ks["w"].p_value < 1e-6
(True, True)
>>> result.failures()  # doctest: +ELLIPSIS
['w: KS p = ... < 0.01 (ranks not uniform; worst coordinate w[0], statistic ...; ... of ranks in the lower half: the draws lie above the truth)']
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from scipy import stats

from dgmlang.testing.plans import plan_of, sampled_latents
from dgmlang.testing.strategies import simulate

#: The binomial band drawn on rank histograms: the central 99% of each bin's count.
BAND = 0.99


def rank_statistics(true: np.ndarray, draws: np.ndarray, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """Rank of each `true` value among `draws` (draws on axis 0): the number of draws below it,
    with ties (discrete latents) broken uniformly at random. Shapes: `true` `(*s)`, `draws`
    `(L, *s)`, result `(*s)` ints in 0..L.

    >>> rank_statistics(np.array([0.5, 2.0]), np.array([[0.0, 0.0], [1.0, 1.0], [3.0, 3.0]]))
    array([1, 2])
    """
    rng = rng or np.random.default_rng(0)
    true = np.asarray(true, dtype=float)
    draws = np.asarray(draws, dtype=float)
    below = (draws < true).sum(axis=0)
    ties = (draws == true).sum(axis=0)
    if np.any(ties):
        below = below + rng.integers(0, ties + 1)
    return below.astype(int)


@dataclass(frozen=True)
class KSResult:
    """A KS test of rank uniformity for one latent: the Bonferroni-adjusted `p_value` over its
    coordinates, and per coordinate the statistic and p-value (flattened C order)."""

    p_value: float
    statistics: tuple[float, ...]
    p_values: tuple[float, ...]

    @property
    def worst(self) -> int:
        return int(np.argmin(self.p_values))


def normalised_ranks(ranks: np.ndarray, num_posterior_samples: int, *, seed: int = 0) -> np.ndarray:
    """Ranks in 0..L spread over their cells: Uniform(0, 1) exactly when inference is exact."""
    rng = np.random.default_rng(seed)
    ranks = np.asarray(ranks, dtype=float)
    return (ranks + rng.random(ranks.shape)) / (num_posterior_samples + 1)


def ks_uniformity(ranks: np.ndarray, num_posterior_samples: int, *, seed: int = 0) -> KSResult:
    """KS test of uniformity of `ranks` `(num_simulations, *shape)`, one per coordinate."""
    u = normalised_ranks(ranks, num_posterior_samples, seed=seed).reshape(len(ranks), -1)
    tests = [stats.kstest(u[:, j], "uniform") for j in range(u.shape[1])]
    p_values = tuple(float(t.pvalue) for t in tests)
    adjusted = min(1.0, min(p_values) * len(p_values))
    return KSResult(adjusted, tuple(float(t.statistic) for t in tests), p_values)


def _coordinate_labels(name: str, shape: tuple[int, ...]) -> list[str]:
    if not shape:
        return [name]
    return [f"{name}[{', '.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


@dataclass(frozen=True, eq=False)
class SBCResult:
    """What `sbc` returns: `ranks[name]` `(num_simulations, *shape)` in 0..L for each latent,
    `num_posterior_samples` (L), and `ks[name]` (a `KSResult`, computed on construction)."""

    ranks: Mapping[str, np.ndarray]
    num_posterior_samples: int
    ks: Mapping[str, KSResult] = field(default_factory=dict)

    def __post_init__(self):
        if not self.ks:
            tests = {name: ks_uniformity(r, self.num_posterior_samples) for name, r in self.ranks.items()}
            object.__setattr__(self, "ks", tests)

    @property
    def num_simulations(self) -> int:
        return len(next(iter(self.ranks.values())))

    def failures(self, alpha: float = 0.01) -> list[str]:
        """One line per latent whose ranks are not uniform at level `alpha`."""
        lines = []
        for name, test in self.ks.items():
            if test.p_value < alpha:
                shape = self.ranks[name].shape[1:]
                label = _coordinate_labels(name, shape)[test.worst]
                lines.append(
                    f"{name}: KS p = {test.p_value:.3g} < {alpha} (ranks not uniform; worst "
                    f"coordinate {label}, statistic {test.statistics[test.worst]:.3f}; "
                    f"{self._shape_of_failure(name, test.worst)})"
                )
        return lines

    def _shape_of_failure(self, name: str, coord: int) -> str:
        """A reading of the rank histogram: biased which way, too narrow or too wide, by
        whichever departs most (in standard errors) from what exact inference gives."""
        u = normalised_ranks(self.ranks[name], self.num_posterior_samples)
        u = u.reshape(len(u), -1)[:, coord]
        n = len(u)
        mean = float(u.mean())
        tails = float(np.mean((u < 0.1) | (u > 0.9)))
        bias_z = (mean - 0.5) / (0.2887 / np.sqrt(n))  # sd of U(0, 1) is 1/sqrt(12)
        tails_z = (tails - 0.2) / np.sqrt(0.2 * 0.8 / n)
        if max(abs(bias_z), abs(tails_z)) < 3:
            return "a small departure in shape; see the rank histogram"
        if abs(bias_z) >= abs(tails_z):
            half = np.mean(u >= 0.5) if mean > 0.5 else np.mean(u < 0.5)
            where, lie = ("upper", "below") if mean > 0.5 else ("lower", "above")
            return f"{half:.0%} of ranks in the {where} half: the draws lie {lie} the truth"
        if tails_z > 0:
            return f"{tails:.0%} of ranks in the outer 20%: the posterior draws are too narrow"
        return f"{tails:.0%} of ranks in the outer 20%: the posterior draws are too wide"

    def passed(self, alpha: float = 0.01) -> bool:
        return not self.failures(alpha)

    def outside_band(self, name: str, bins: int = 20) -> tuple[int, int]:
        """How many of `name`'s histogram bars (over all coordinates, `bins` each) fall
        outside the 99% binomial band, and how many bars there are: about 1% outside when
        inference is exact. End bars outside the band are the mark of a too-narrow guide,
        which a KS test sees late."""
        u = normalised_ranks(self.ranks[name], self.num_posterior_samples)
        u = u.reshape(len(u), -1)
        lo, hi = stats.binom.ppf([(1 - BAND) / 2, (1 + BAND) / 2], len(u), 1 / bins)
        edges = np.linspace(0, 1, bins + 1)
        counts = np.stack([np.histogram(u[:, j], bins=edges)[0] for j in range(u.shape[1])])
        return int(((counts < lo) | (counts > hi)).sum()), int(counts.size)

    def summary(self) -> str:
        """A table: latent, coordinates, KS statistic (worst coordinate), adjusted p-value,
        and histogram bars outside the 99% band."""
        lines = [
            f"SBC: {self.num_simulations} simulations, {self.num_posterior_samples} posterior draws each",
            f"{'latent':<12} {'coords':>6} {'KS stat':>8} {'p-value':>9} {'bars outside 99% band':>22}",
        ]
        for name, test in self.ks.items():
            out, total = self.outside_band(name)
            lines.append(
                f"{name:<12} {len(test.p_values):>6} {max(test.statistics):>8.3f} "
                f"{test.p_value:>9.3g} {f'{out}/{total}':>22}"
            )
        return "\n".join(lines)

    def assert_calibrated(self, alpha: float = 0.01) -> None:
        """Raise AssertionError listing every latent whose ranks fail the KS test."""
        __tracebackhide__ = True
        failures = self.failures(alpha)
        if failures:
            raise AssertionError(
                "simulation-based calibration failed:\n  " + "\n  ".join(failures)
                + "\n" + self.summary()
            )

    def plot(self, path: str | Path, *, bins: int = 20, max_panels: int = 16, title: str | None = None) -> Path:
        """Write the rank histograms (PNG) with the binomial 99% band; returns the path."""
        return plot_rank_histograms(self, path, bins=bins, max_panels=max_panels, title=title)


def plot_rank_histograms(
    result: SBCResult, path: str | Path, *, bins: int = 20, max_panels: int = 16, title: str | None = None
) -> Path:
    """One histogram per latent coordinate of the normalised ranks, `bins` equal bins, with the
    central 99% band of Binomial(num_simulations, 1/bins): where each bar falls 99% of the
    time when inference is exact. Up to `max_panels` panels (the first coordinates)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = []
    for name, ranks in result.ranks.items():
        u = normalised_ranks(ranks, result.num_posterior_samples).reshape(len(ranks), -1)
        labels = _coordinate_labels(name, ranks.shape[1:])
        test = result.ks[name]
        for j, label in enumerate(labels):
            panels.append((label, u[:, j], test.p_values[j]))
    shown = panels[:max_panels]
    cols = min(4, len(shown))
    rows = int(np.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    n = result.num_simulations
    lo, hi = stats.binom.ppf([(1 - BAND) / 2, (1 + BAND) / 2], n, 1 / bins)
    edges = np.linspace(0, 1, bins + 1)
    for ax, (label, u, p) in zip(axes.flat, shown):
        ax.axhspan(lo, hi, color="0.85", zorder=0, label=f"{BAND:.0%} band")
        ax.axhline(n / bins, color="0.5", lw=0.8, zorder=1)
        ax.hist(u, bins=edges, color="#4c72b0", edgecolor="white", zorder=2)
        ax.set_title(f"{label}  (KS p={p:.2g})", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_xlabel("normalised rank", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    suptitle = title or f"SBC rank histograms ({n} simulations, L = {result.num_posterior_samples})"
    if len(panels) > len(shown):
        suptitle += f" - first {len(shown)} of {len(panels)} coordinates"
    suptitle += f"\ngrey: where each bar falls {BAND:.0%} of the time if inference is exact"
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- the SBC loop


def sbc(
    model,
    num_simulations: int = 200,
    num_posterior_samples: int = 99,
    *,
    latents: Iterable[str] | None = None,
    guide: Callable | None = None,
    fit: Mapping[str, Any] | Callable | None = None,
    data_size: int = 1,
    inputs: Mapping[str, Any] | None = None,
    seed: int = 0,
    plot: str | Path | None = None,
    missing: float = 0.0,
    posterior: Callable | None = None,
) -> SBCResult:
    """Simulation-based calibration of a compiled model's inference.

    Two modes:

    * **amortized** (`fit` None): the guide is used as it is (train it first, e.g. with
      `train_guide`). `num_simulations` data points are drawn from the model's prior (with
      its current params and networks), the guide draws `num_posterior_samples` values of
      every local latent for each, and each true value is ranked among them. One batch, no
      refitting: this is what an amortized guide promises. `guide` replaces the model's
      guide (any callable with the guide's signature, e.g. a `perturb_guide` planted bug).
      A model with `global`s needs the other mode.
    * **refit** (`fit` given: keyword arguments for `fit`, or a callable `fit(model, data)`):
      each simulation compiles a fresh copy of the model, draws its globals and `data_size`
      data points from the prior, fits, and ranks the globals (and the local latents of the
      first data point) among the fitted guide's draws.

    * **with gaps** (`missing` > 0, amortized): each entry of every data variable is hidden
      with probability `missing`, and the latents are ranked among the draws of
      ``model.invert(data, mask=...)`` — the posterior given the observed entries, which is
      what `invert` promises for every missingness pattern (docs/missing-data.md).
      `posterior` replaces that call (``posterior(data, mask, num_samples, seed)`` returning
      `invert`'s dict), e.g. a planted bug.

    Latents enumerated in the model (no guide site) are not ranked. Returns an `SBCResult`;
    with `plot`, also writes the rank histograms there.

    >>> import dgmlang
    >>> m = dgmlang.compile("model t { data x[3]; latent z; z ~ Normal(0, 1); x ~ Normal(z, 1) }")
    >>> sbc(m, 20, 9, missing=0.5).ranks["z"].shape
    (20,)
    """
    from dgmlang.testing.runtime import as_batch, guide_draws, seeded, to_numpy

    rng = np.random.default_rng(seed)
    ranked = _latents_to_rank(plan_of(model), latents)
    if not 0.0 <= missing < 1.0:
        raise ValueError(f"missing={missing!r}: a probability in [0, 1) that an entry is hidden")
    if missing and (fit is not None or guide is not None):
        raise ValueError("missing= ranks invert's draws in the amortized mode: no fit= or guide=")
    if missing:
        return _sbc_with_gaps(model, num_simulations, num_posterior_samples, ranked, missing=missing,
                              posterior=posterior, inputs=inputs, seed=seed, plot=plot, rng=rng)
    if fit is None:
        if model.ir.names("global"):
            raise ValueError(
                f"model '{model.ir.name}' has globals ({', '.join(model.ir.names('global'))}): "
                "their posterior needs a fit per simulation; pass fit={'steps': ...}"
            )
        sim = simulate(model, num_simulations, seed=seed, inputs=inputs)
        batch = as_batch(model, sim.data)
        with seeded(seed + 1):
            draws = guide_draws(guide or model.guide, batch, num_posterior_samples, names=ranked)
        ranks = {
            name: rank_statistics(to_numpy(sim.latents[name]), to_numpy(draws[name]), rng=rng)
            for name in ranked
        }
    else:
        if guide is not None:
            raise ValueError("guide= is for the amortized mode; in refit mode each fit has its own guide")
        rows: dict[str, list[np.ndarray]] = {name: [] for name in ranked}
        for s in range(num_simulations):
            fresh = _fresh_copy(model)
            sim = simulate(fresh, data_size, seed=seed + 7919 * (s + 1), inputs=inputs)
            with seeded(seed + s):
                if callable(fit):
                    fit(fresh, sim.data)
                else:
                    fresh.fit(sim.data, **{"progress": False, **dict(fit)})
                batch = as_batch(fresh, sim.data)
                draws = guide_draws(fresh.guide, batch, num_posterior_samples, names=ranked)
            for name in ranked:
                true = to_numpy(sim.latents[name])
                d = to_numpy(draws[name])
                if name in fresh.ir.names("latent"):  # the first data point's value
                    true, d = true[0], d[:, 0]
                rows[name].append(rank_statistics(true, d, rng=rng))
        ranks = {name: np.stack(r) for name, r in rows.items()}
    result = SBCResult(ranks, num_posterior_samples)
    if plot is not None:
        result.plot(plot, title=f"SBC of model '{model.ir.name}'")
    return result


def _sbc_with_gaps(model, num_simulations: int, num_posterior_samples: int, ranked: list[str], *,
                   missing: float, posterior: Callable | None, inputs, seed: int, plot, rng) -> SBCResult:
    """`sbc`'s mode with gaps: data from the prior, entries hidden at random, latents ranked
    among `invert`'s posterior draws given the observed entries."""
    import torch

    from dgmlang.testing.runtime import to_numpy

    if model.ir.names("global"):
        raise ValueError(f"model '{model.ir.name}' has globals: missing= ranks local latents only")
    sim = simulate(model, num_simulations, seed=seed, inputs=inputs)
    hide = torch.Generator().manual_seed(seed + 2)
    mask = {name: torch.rand(tuple(torch.as_tensor(sim.data[name]).shape), generator=hide) >= missing
            for name in model.ir.names("data")}
    if posterior is None:
        def posterior(data, mask, num_samples, seed):
            return model.invert(data, mask=mask, num_samples=num_samples, seed=seed, progress=False)
    draws = posterior(sim.data, mask, num_posterior_samples, seed + 1)
    ranks = {name: rank_statistics(to_numpy(sim.latents[name]), to_numpy(draws[name]), rng=rng)
             for name in ranked}
    result = SBCResult(ranks, num_posterior_samples)
    if plot is not None:
        result.plot(plot, title=f"SBC of model '{model.ir.name}', {missing:.0%} of entries hidden")
    return result


def _latents_to_rank(plan, latents) -> list[str]:
    sampled = sampled_latents(plan)
    if latents is None:
        return sampled
    latents = list(latents)
    unknown = [n for n in latents if n not in sampled]
    if unknown:
        raise ValueError(
            f"cannot rank {', '.join(unknown)}: the guide samples {', '.join(sampled) or 'nothing'}"
        )
    return latents


def _fresh_copy(model):
    """A new compiled model of the same program (same plan), parameters from the initial draw."""
    return type(model)(model.ir, plan_of(model), source=model.source, filename=model.filename)


__all__ = [
    "sbc", "SBCResult", "KSResult", "rank_statistics", "ks_uniformity", "normalised_ranks",
    "plot_rank_histograms", "BAND",
]
