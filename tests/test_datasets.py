"""The built-in digits, and the hand-written baselines the benchmarks compare dgmlang with."""
from __future__ import annotations

import doctest
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from dgmlang.datasets import Digits, digits
from dgmlang.errors import DGMDataError

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data() -> Digits:
    return digits()


@pytest.fixture(scope="module")
def baselines():
    spec = importlib.util.spec_from_file_location("benchmark_baselines", ROOT / "benchmarks" / "baselines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_shapes_and_dtypes(data):
    assert data.train_x.shape == (1437, 64) and data.test_x.shape == (360, 64)
    assert data.train_y.shape == (1437,) and data.test_y.shape == (360,)
    assert data.train_x.dtype == data.test_x.dtype == torch.float32
    assert data.train_y.dtype == data.test_y.dtype == torch.int64


def test_digits_are_whole_counts_from_0_to_16_with_labels_0_to_9(data):
    x = torch.cat([data.train_x, data.test_x])
    assert x.min() == 0 and x.max() == 16
    assert torch.equal(x, x.round())
    y = torch.cat([data.train_y, data.test_y])
    assert sorted(y.unique().tolist()) == list(range(10))


def test_split_puts_every_fifth_image_in_the_test_set(data):
    bunch = load_digits()
    index = np.arange(len(bunch.target))
    test_rows, train_rows = index[index % 5 == 0], index[index % 5 != 0]
    assert torch.equal(data.test_x, torch.tensor(bunch.data[test_rows], dtype=torch.float32))
    assert torch.equal(data.test_y, torch.tensor(bunch.target[test_rows]))
    assert torch.equal(data.train_x, torch.tensor(bunch.data[train_rows], dtype=torch.float32))
    assert torch.equal(data.train_y, torch.tensor(bunch.target[train_rows]))


def test_each_call_returns_fresh_tensors(data):
    mine = digits()
    mine.train_x.zero_()
    assert data.train_x.max() == 16 and digits().train_x.max() == 16


def test_as_dict_serves_fit_and_rejects_unknown_splits(data):
    train, test = data.as_dict("train"), data.as_dict("test")
    assert train["x"] is data.train_x and train["y"] is data.train_y
    assert test["x"] is data.test_x and test["y"] is data.test_y
    with pytest.raises(DGMDataError, match="unknown split 'valid'"):
        data.as_dict("valid")


def test_importing_the_module_loads_neither_torch_nor_sklearn():
    code = (
        "import sys, dgmlang\n"
        "before = {m for m in ('torch', 'sklearn') if m in sys.modules}\n"
        "import dgmlang.datasets\n"
        "after = {m for m in ('torch', 'sklearn') if m in sys.modules}\n"
        "assert after == before, after - before\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_baselines_examples_run(baselines):
    assert doctest.testmod(baselines).failed == 0


def _gradients(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


def test_plain_and_pyro_vae_give_the_same_loss_and_gradients_with_the_same_noise(baselines, data):
    """The two baselines compute one estimator: equal loss per data point, gradients equal up to N."""
    from pyro.infer import Trace_ELBO

    nets = baselines.VAENetworks(seed=3)
    batch = torch.arange(7, 7 + 32)
    num_data = len(data.train_x)

    torch.manual_seed(11)  # the encoder's rsample draws the only noise in both
    plain = baselines.vae_elbo_loss(nets, data.train_x[batch])
    plain.backward()
    plain_grads = _gradients(nets)
    nets.zero_grad()

    vae = baselines.PyroVAE(nets, batch_size=32)
    torch.manual_seed(11)
    total = Trace_ELBO().differentiable_loss(vae.model, vae.guide, data.train_x, subsample=batch)
    total.backward()

    assert plain.item() == pytest.approx(total.item() / num_data, rel=1e-5)
    for g_plain, p in zip(plain_grads, nets.parameters()):
        torch.testing.assert_close(p.grad / num_data, g_plain, rtol=1e-4, atol=1e-6)

    torch.manual_seed(12)  # other noise, other value: the agreement above is not a coincidence
    assert baselines.vae_elbo_loss(nets, data.train_x[batch]).item() != pytest.approx(plain.item(), rel=1e-5)


def test_plain_and_pyro_hvae_give_the_same_loss_with_the_same_noise(baselines, data):
    from pyro.infer import Trace_ELBO

    nets = baselines.HVAENetworks(seed=4)
    batch = torch.arange(100, 116)
    torch.manual_seed(5)
    plain = baselines.hvae_elbo_loss(nets, data.train_x[batch]).item()
    hvae = baselines.PyroHVAE(nets, batch_size=16)
    torch.manual_seed(5)
    total = Trace_ELBO().loss(hvae.model, hvae.guide, data.train_x, subsample=batch)
    assert plain == pytest.approx(total / len(data.train_x), rel=1e-5)


def test_plain_and_pyro_gmm_give_the_same_exact_loss(baselines):
    from pyro.infer import TraceEnum_ELBO

    x = baselines.gmm_data(200, seed=1)
    mu = baselines.gmm_initial_means(seed=2)
    batch = torch.arange(50)
    gmm = baselines.PyroGMM(mu, batch_size=50)
    total = TraceEnum_ELBO(max_plate_nesting=1).loss(gmm.model, gmm.guide, x, subsample=batch)
    assert baselines.gmm_loss(mu, x[batch]).item() == pytest.approx(total / len(x), rel=1e-5)


def test_plain_and_pyro_dmm_give_the_same_loss_and_gradients_with_the_same_noise(baselines, data):
    from pyro.infer import Trace_ELBO

    nets = baselines.DMMNetworks(seed=5)
    x = baselines.dmm_data(data.train_x)
    batch = torch.arange(20, 52)
    torch.manual_seed(6)  # the guide's draws, one step after the other, are the only noise
    plain = baselines.dmm_elbo_loss(nets, x[batch])
    plain.backward()
    plain_grads = _gradients(nets)
    nets.zero_grad()
    dmm = baselines.PyroDMM(nets, batch_size=32)
    torch.manual_seed(6)
    total = Trace_ELBO().differentiable_loss(dmm.model, dmm.guide, x, subsample=batch)
    total.backward()
    assert plain.item() == pytest.approx(total.item() / len(x), rel=1e-5)
    for g_plain, p in zip(plain_grads, nets.parameters()):
        torch.testing.assert_close(p.grad / len(x), g_plain, rtol=1e-4, atol=1e-6)


def test_the_dmm_baselines_compute_dgmlangs_densities_on_its_weights(baselines, data):
    """`DMMNetworks.copy_from` a compiled `DMM_TEXT`: for any z, the same log p(x, z) as
    dgmlang's model and the same log q(z | x) as its derived guide."""
    import dgmlang

    m = dgmlang.compile(baselines.DMM_TEXT)
    nets = baselines.DMMNetworks().copy_from(m)
    x = baselines.dmm_data(data.train_x[:16])
    torch.manual_seed(0)
    z = torch.randn(16, baselines.DMM_STEPS, baselines.DMM_LATENT)
    with torch.no_grad():
        sites = {site.name: site for site in m.model.sites}
        env = {"x": x, "z": z}
        log_p = sites["z"].sequence_log_prob(env, z) + sites["x"].sequence_log_prob(env, x)
        log_q = m.guide.sites[0].distribution({"x": x}).log_prob(z)
        h = nets.summary(x)
        params = [nets.first(h[:, 0])] + [nets.combine(z[:, t - 1], h[:, t]) for t in range(1, baselines.DMM_STEPS)]
        hand_q = sum(torch.distributions.Normal(*p).log_prob(z[:, t]).sum(-1) for t, p in enumerate(params))
        torch.testing.assert_close(log_p, baselines.dmm_log_joint(nets, x, z), rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(log_q, hand_q, rtol=1e-5, atol=1e-3)


def test_training_steps_lower_the_loss(baselines, data):
    torch.manual_seed(0)
    x = data.train_x[:256]
    steps = {
        "plain": baselines.plain_vae_step(baselines.VAENetworks(seed=0), x, batch_size=64),
        "iwae": baselines.plain_vae_step(baselines.VAENetworks(seed=0), x, batch_size=64,
                                         objective="iwae", num_particles=3),
        "pyro": baselines.pyro_vae_step(baselines.VAENetworks(seed=0), x, batch_size=64),
        "pyro-jit": baselines.pyro_vae_step(baselines.VAENetworks(seed=0), x, batch_size=64, jit=True),
    }
    for name, step in steps.items():
        first = [step() for _ in range(5)]
        for _ in range(30):
            step()
        last = [step() for _ in range(5)]
        assert sum(last) < 0.8 * sum(first), name


def test_iwae_estimate_is_exact_when_the_proposal_is_the_posterior_whatever_the_chunks(baselines):
    """z ~ N(0, 1), x | z ~ N(z, 1): with q = p(z | x) every weight is p(x), so any chunking gives log p(x)."""
    import torch.distributions as td

    x = torch.linspace(-2.0, 2.0, 5).unsqueeze(-1)
    encode = lambda xb: td.Independent(td.Normal(xb / 2, 0.5**0.5), 1)  # noqa: E731
    decode = lambda z: td.Independent(td.Normal(z, 1.0), 1)  # noqa: E731
    exact = td.Normal(0.0, 2**0.5).log_prob(x).squeeze(-1)
    for points, samples in [(5, 10), (2, 3), (1, 7)]:
        estimate = baselines.iwae_log_likelihood(encode, decode, x, num_samples=10,
                                                 points_per_chunk=points, samples_per_chunk=samples)
        torch.testing.assert_close(estimate, exact)


def test_iwae_test_log_likelihood_is_the_mean_of_the_per_point_estimates(baselines, data):
    import torch.distributions as td

    nets = baselines.VAENetworks(seed=0)
    x = data.test_x[:7]
    torch.manual_seed(0)
    mean = baselines.vae_test_log_likelihood(nets, x, num_samples=60)
    encode = lambda xb: td.Independent(td.Normal(*nets.encoder(xb)), 1)  # noqa: E731
    decode = lambda z: td.Independent(td.Binomial(16, logits=nets.decoder(z)), 1)  # noqa: E731
    torch.manual_seed(0)
    per_point = baselines.iwae_log_likelihood(encode, decode, x, num_samples=60)
    assert per_point.shape == (7,)
    assert mean == pytest.approx(per_point.mean().item(), rel=1e-6)
    # An importance-weighted estimate is at most log p(x) <= 0 for counts, and above the ELBO on average.
    assert (per_point < 0).all()
    torch.manual_seed(0)
    elbo = -baselines.vae_elbo_loss(nets, x).item()
    assert mean > elbo
