"""Property-test that inference is correct: strategies, exact posteriors, SBC, guide checks.

A user checks that the guide the compiler derived approximates the posterior of *their* model::

    import dgmlang
    from dgmlang.testing import assert_guide_matches_posterior, sbc, train_guide

    m = dgmlang.compile(text)
    train_guide(m, steps=2000)                 # or m.fit(data)
    assert_guide_matches_posterior(m, data[:5], tol=0.2)
    sbc(m, 500, 99, plot="ranks.png").assert_calibrated()

and generates models and data with hypothesis::

    from hypothesis import given
    from dgmlang.testing import models, linear_gaussian_models, data_for

    @given(models(max_latents=3, families=["continuous"]))
    def test_compiles(m): m.compile()

Pieces (docs/testing.md has the whole story):

* strategies -- `models`, `linear_gaussian_models`, `discrete_models`, `data_for`, `simulate`;
* exact answers -- `LinearGaussianModel.posterior`, `DiscreteModel.posterior` (numpy),
  `condition_gaussian`, `enumerate_posterior(compiled, data)` (brute force),
  `enumerated_marginals(compiled, data)` (the model's own enumeration);
* SBC -- `sbc`, `SBCResult` (ranks, KS per latent, `plot`, `assert_calibrated`);
* guides -- `train_guide`, `guide_samples`, `perturb_guide` (planted bugs), `gaussian_kl`,
  `assert_faithful_inverse`;
* comparison -- `assert_guide_matches_posterior`, `compare_to_posterior`.

Underneath, `dgmlang.testing.plans` answers what the kit asks of a compiled model (its guide
plan and IR facts, which latents the guide samples) and `dgmlang.testing.runtime` holds the
torch/Pyro helpers (batches, prior and guide draws, the model's own enumeration); the modules
above import them, and none reads another's private names.

The pytest plugin `dgmlang.pytest_plugin` adds fixtures (`dgm_sbc_dir`, `dgm_seed`, ...).
"""
from dgmlang.testing.compare import (
    GuideMismatch,
    Mismatch,
    PosteriorComparison,
    ReferenceUnreliable,
    assert_guide_matches_posterior,
    compare_to_posterior,
)
from dgmlang.testing.exact import (
    DiscretePosterior,
    GaussianPosterior,
    condition_gaussian,
    enumerate_posterior,
    enumerated_marginals,
)
from dgmlang.testing.guides import (
    assert_faithful_inverse,
    gaussian_kl,
    guide_samples,
    perturb_guide,
    train_guide,
    unfaithful_steps,
)
from dgmlang.testing.programs import (
    DiscreteModel,
    DiscreteNode,
    GeneratedModel,
    LinearEdge,
    LinearGaussianModel,
    LinearNode,
    Node,
)
from dgmlang.testing.sbc import (
    KSResult,
    SBCResult,
    ks_uniformity,
    plot_rank_histograms,
    rank_statistics,
    sbc,
)
from dgmlang.testing.strategies import (
    Simulation,
    data_for,
    discrete_models,
    linear_gaussian_models,
    models,
    simulate,
)

__all__ = [
    "models", "linear_gaussian_models", "discrete_models", "data_for", "simulate", "Simulation",
    "Node", "GeneratedModel", "LinearEdge", "LinearNode", "LinearGaussianModel",
    "DiscreteNode", "DiscreteModel",
    "GaussianPosterior", "DiscretePosterior", "condition_gaussian", "enumerate_posterior",
    "enumerated_marginals",
    "sbc", "SBCResult", "KSResult", "rank_statistics", "ks_uniformity", "plot_rank_histograms",
    "train_guide", "guide_samples", "perturb_guide", "gaussian_kl",
    "unfaithful_steps", "assert_faithful_inverse",
    "assert_guide_matches_posterior", "compare_to_posterior", "PosteriorComparison",
    "GuideMismatch", "Mismatch", "ReferenceUnreliable",
]
