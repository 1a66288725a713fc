"""The pytest plugin as a user meets it: a test file of their own, run by pytest with the plugin
loaded (as its entry point does), one property passing and a planted bug failing readably."""
import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

USER_TESTS = textwrap.dedent('''
    import numpy as np
    import pytest
    import dgmlang
    from dgmlang.testing import (LinearEdge, LinearGaussianModel, LinearNode,
                                 assert_guide_matches_posterior, perturb_guide)

    MODEL = LinearGaussianModel("noisy", (
        LinearNode("z", "latent", (2,)),
        LinearNode("x", "data", (2,), (LinearEdge("z", ((1.0, 0.5), (-0.5, 1.0))),), scale=0.5),
    ), guide_family="mvn")

    @pytest.fixture(scope="module")
    def model(dgm_train):
        return dgm_train(dgmlang.compile(MODEL.text), steps=400)

    def data():
        x = MODEL.sample(4, seed=0)["x"]
        return {"x": x}, MODEL.posterior({"x": x})

    def test_guide_matches(model, dgm_seed):
        observed, exact = data()
        assert_guide_matches_posterior(model, observed, posterior=exact, tol=0.25)

    def test_sbc(model, dgm_sbc):
        dgm_sbc(model, 200, 99)

    def test_planted_bug(model):
        observed, exact = data()
        assert_guide_matches_posterior(model, observed, posterior=exact, tol=0.25,
                                       guide=perturb_guide(model.guide, scale=0.5))
''')


def _plugin_installed() -> bool:
    """Whether dgmlang's pytest11 entry point is installed (then pytest loads the plugin
    itself, and naming it again with -p would register it twice)."""
    return any(ep.value == "dgmlang.pytest_plugin" for ep in entry_points(group="pytest11"))


def test_user_tests_with_the_plugin(tmp_path):
    (tmp_path / "test_user_model.py").write_text(USER_TESTS)
    env = {**os.environ, "DGM_PLOT_DIR": str(tmp_path / "plots"), "OMP_NUM_THREADS": "1"}
    load = [] if _plugin_installed() else ["-p", "dgmlang.pytest_plugin"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *load, "-q", "-p", "no:cacheprovider",
         "-o", "addopts=", "--rootdir", str(tmp_path), "test_user_model.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "1 failed, 2 passed" in out, out
    assert "FAILED test_user_model.py::test_planted_bug" in out, out
    # The failure names the model, the latent, the data point, the statistic and by how much.
    assert "GuideMismatch: the guide does not match the posterior of model 'noisy'" in out, out
    assert "z[0], data point 0: sd" in out or "z[1], data point 0: sd" in out, out
    assert "ratio 0.5" in out and "allowed" in out, out
    assert list((tmp_path / "plots").glob("test_sbc/sbc_noisy_0.png")), out
