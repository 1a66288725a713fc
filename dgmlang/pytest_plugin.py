"""pytest plugin of dgmlang's testing kit: fixtures and hypothesis profiles for testing inference.

Installed with dgmlang (entry point ``pytest11``: ``dgmlang = "dgmlang.pytest_plugin"``), so a
user's tests can simply ask for the fixtures::

    from hypothesis import given
    from dgmlang.testing import assert_guide_matches_posterior, linear_gaussian_models

    @given(linear_gaussian_models(max_latents=2))
    def test_guide_is_close(dgm_train, lg):
        model = dgm_train(lg.compile(), steps=500)
        ...

Fixtures:

* ``dgm_seed`` -- torch's RNG seeded (0, or env ``DGM_SEED``) for the test and restored
  afterwards; the value is returned.
* ``dgm_single_thread`` -- torch on one thread for the test (small models run several
  times faster than with two threads fighting over two cores); restored afterwards.
* ``dgm_plot_dir`` -- where SBC rank histograms go: env ``DGM_PLOT_DIR`` (kept after the
  run, one sub-folder per test) or pytest's ``tmp_path``.
* ``dgm_train`` -- ``dgm_train(model, steps=..., **options)`` trains the guide on the model's
  prior predictive (`dgmlang.testing.train_guide`) and returns the model.
* ``dgm_sbc`` -- ``dgm_sbc(model, num_simulations, ...)`` runs `dgmlang.testing.sbc` with the
  plot written under ``dgm_plot_dir``, and fails the test with the KS report when the ranks
  are not uniform (``alpha=0.01``; ``check=False`` returns the result instead).

Hypothesis profiles (``--hypothesis-profile NAME``): ``dgm-ci`` (5 examples, no deadline: each
example may compile and fit a model) and ``dgm-thorough`` (100 examples).

Importing this module costs nothing: torch and dgmlang.testing load when a fixture is used.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

#: Hypothesis profiles for property tests that compile and fit models.
PROFILES = {
    "dgm-ci": dict(max_examples=5, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]),
    "dgm-thorough": dict(max_examples=100, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]),
}
for _name, _options in PROFILES.items():
    settings.register_profile(_name, **_options)


@pytest.fixture
def dgm_seed():
    """Seed torch's RNG for this test (env DGM_SEED, default 0); restored afterwards."""
    import torch

    seed = int(os.environ.get("DGM_SEED", "0"))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield seed


@pytest.fixture
def dgm_single_thread():
    """Run torch on one thread for this test; the previous setting is restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def dgm_plot_dir(request, tmp_path) -> Path:
    """A folder for this test's pictures: $DGM_PLOT_DIR/<test name>, or `tmp_path`."""
    root = os.environ.get("DGM_PLOT_DIR")
    if not root:
        return tmp_path
    folder = Path(root) / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def dgm_train():
    """``dgm_train(model, **options)``: `dgmlang.testing.train_guide`, returning the model."""
    from dgmlang.testing import train_guide

    def train(model, **options):
        train_guide(model, **options)
        return model

    return train


@pytest.fixture
def dgm_sbc(dgm_plot_dir):
    """``dgm_sbc(model, num_simulations, num_posterior_samples, *, alpha=0.01, check=True,
    **options)``: SBC with the rank histograms in `dgm_plot_dir`; fails the test (with the
    KS report and the plot's path) when a latent's ranks are not uniform."""
    from dgmlang.testing import sbc

    counter = iter(range(1_000_000))

    def run(model, num_simulations=200, num_posterior_samples=99, *, alpha=0.01, check=True, **options):
        path = dgm_plot_dir / f"sbc_{model.ir.name}_{next(counter)}.png"
        result = sbc(model, num_simulations, num_posterior_samples, plot=path, **options)
        if check and not result.passed(alpha):
            pytest.fail(
                "simulation-based calibration failed:\n  " + "\n  ".join(result.failures(alpha))
                + f"\n{result.summary()}\nrank histograms: {path}",
                pytrace=False,
            )
        return result

    return run


def pytest_report_header(config):
    root = os.environ.get("DGM_PLOT_DIR")
    return f"dgmlang testing kit: SBC plots in {root}" if root else None
