"""SBC with gaps: latents ranked among `invert`'s draws given randomly hidden entries."""
import pytest
import torch

import dgmlang
from dgmlang.testing import sbc

FACTOR = """
model factor {
    data   x[6]
    latent z[2]
    z ~ Normal(0, 1)
    x ~ Normal(z[0] * [1.0, 0.5, -1.0, 0.0, 2.0, 1.0] + z[1] * [0.0, 1.0, 1.0, -1.5, 0.5, 0.0], 0.5)
}"""


@pytest.fixture(scope="module")
def fitted():
    m = dgmlang.compile(FACTOR)
    data = dgmlang.testing.simulate(m, 512, seed=5).data
    m.fit(data, steps=300, batch_size=256, lr=0.03, seed=0, progress=False)
    return m


def test_invert_given_random_gaps_is_calibrated(fitted):
    result = sbc(fitted, 300, 49, missing=0.5, seed=0)
    assert result.ranks["z"].shape == (300, 2)
    result.assert_calibrated()


def test_zero_filling_the_gaps_fails_sbc(fitted):
    def zero_filled(data, mask, num_samples, seed):  # the planted bug: gaps read as zeros
        x = torch.where(mask["x"], torch.as_tensor(data["x"]), torch.zeros(()))
        return fitted.invert({"x": x}, num_samples=num_samples, seed=seed, progress=False)

    result = sbc(fitted, 300, 49, missing=0.5, seed=0, posterior=zero_filled)
    # (over seeds 0-7: calibrated p >= 0.05; zero-filled p <= 2e-12, "too narrow" every time)
    assert not result.passed()
    assert "the posterior draws are too narrow" in result.failures()[0]


def test_missing_is_a_probability_and_excludes_refits(fitted):
    with pytest.raises(ValueError, match="a probability"):
        sbc(fitted, 10, 9, missing=1.0)
    with pytest.raises(ValueError, match="no fit="):
        sbc(fitted, 10, 9, missing=0.5, fit={"steps": 1})
