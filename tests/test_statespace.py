"""Continuous latent chains: a linear-Gaussian state-space model against its exact posterior
and marginal likelihood (a joint Gaussian, computed here by hand in float64), the derived
structured guide against the mean-field one, masking past each row's length, and the
checker's refusals."""
import math

import numpy as np
import pytest
import torch

import dgmlang
from dgmlang import statespace
from dgmlang.errors import DGMError

A, Q, R, STEPS = 0.9, 0.5, 0.4, 25


def lgssm_text(steps: int = STEPS, guide: str = "guide(hidden = [])", length: str | None = None) -> str:
    inputs = f"input n : int\n    " if length else ""
    stop = length or "T"
    return f"""
model lgssm {{
    const T = {steps}
    {inputs}data   x[T]
    latent z[T] {guide}
    z[0] ~ Normal(0, 1)
    for t in 1:T {{ z[t] ~ Normal({A} * z[t - 1], {Q}) }}
    for t in 0:{stop} {{ x[t] ~ Normal(z[t], {R}) }}
}}
"""


def prior_covariance(steps: int) -> np.ndarray:
    """Cov(z) of the chain z[0] ~ N(0, 1), z[t] = A z[t - 1] + N(0, Q^2), float64."""
    var = np.zeros(steps)
    var[0] = 1.0
    for t in range(1, steps):
        var[t] = A * A * var[t - 1] + Q * Q
    i, j = np.meshgrid(np.arange(steps), np.arange(steps), indexing="ij")
    return A ** np.abs(i - j) * var[np.minimum(i, j)]


def exact(x: np.ndarray):
    """log p(x) per row, and the posterior mean (n, T) and covariance (T, T) of z given x."""
    steps = x.shape[-1]
    cz = prior_covariance(steps)
    cx = cz + R * R * np.eye(steps)
    sign, logdet = np.linalg.slogdet(cx)
    solve = np.linalg.solve(cx, x.T).T
    log_px = -0.5 * (x * solve).sum(-1) - 0.5 * logdet - 0.5 * steps * math.log(2 * math.pi)
    cov = np.linalg.inv(np.linalg.inv(cz) + np.eye(steps) / (R * R))
    mean = x @ cov.T / (R * R)
    return log_px, mean, cov


def kl_per_step(model, x: torch.Tensor, draws: int = 2000) -> float:
    """KL(q(z | x) || p(z | x)) per step, averaged over rows: a Monte Carlo average of
    log q - log p(z | x) over the guide's draws, p(z | x) the exact Gaussian."""
    _, mean, cov = exact(x.double().numpy())
    site = model.guide.sites[0]
    with torch.no_grad():
        q = site.distribution({"x": x.float()})
        z = q.sample((draws,))
        log_q = q.log_prob(z).double()
        post = torch.distributions.MultivariateNormal(torch.as_tensor(mean), torch.as_tensor(cov))
        log_post = post.log_prob(z.double())
    return float((log_q - log_post).mean()) / x.shape[-1]


@pytest.fixture(scope="module")
def lgssm_data():
    truth = dgmlang.compile(lgssm_text())
    return truth.sample(TRAIN + 64, seed=0)["x"]


TRAIN = 1000


def fitted(data: torch.Tensor, *, naive: bool = False) -> dgmlang.CompiledModel:
    """Fitted on the first `TRAIN` sequences: 1,500 steps at lr 0.02, then 500 at 0.004
    (the naive guide, far from the posterior at any length, 600 steps at 0.02)."""
    m = dgmlang.compile(lgssm_text())
    if naive:
        statespace.mean_field(m)
    for steps, lr in ((600, 0.02),) if naive else ((1500, 0.02), (500, 0.004)):
        m.fit({"x": data[:TRAIN]}, steps=steps, lr=lr, batch_size=100, progress=False, seed=0)
    return m


@pytest.fixture(scope="module")
def structured(lgssm_data):
    return fitted(lgssm_data)


def test_the_plan_is_a_structured_chain(structured):
    assert structured.guide_plan == [("z", "structured chain: q(z[t] | z[t-1], x[t:]) via backward rnn")]
    assert [s.name for s in structured.model.sites] == ["z", "x"]


def test_structured_guide_is_close_to_the_kalman_smoother(structured, lgssm_data):
    kl = kl_per_step(structured, lgssm_data[TRAIN:], draws=4000)
    assert kl < 0.01, kl  # issue 14's bar; 0.008 measured (0.017 before z[0] had a head of its own)


def test_structured_guide_beats_mean_field(structured, lgssm_data):
    naive = fitted(lgssm_data, naive=True)
    held_out = lgssm_data[TRAIN:]
    kl_structured, kl_naive = kl_per_step(structured, held_out), kl_per_step(naive, held_out)
    assert kl_naive > 0.05 and kl_naive > 4 * kl_structured, (kl_naive, kl_structured)


def test_log_prob_matches_the_exact_marginal_likelihood(structured, lgssm_data):
    """Importance sampling from the fitted guide (KL ~0.6 nats over the sequence) estimates
    log p(x) without bias: each row's estimate at K = 4,000 is within its Monte Carlo noise
    (~0.1 nats) of the exact value, and their mean within 0.04."""
    x = lgssm_data[TRAIN:TRAIN + 16]
    got = structured.log_prob({"x": x}, num_samples=4000, seed=0, progress=False).double().numpy()
    want, _, _ = exact(x.double().numpy())
    assert abs((got - want).mean()) < 0.04, got - want
    np.testing.assert_allclose(got, want, atol=0.25)


def _joint_terms(model, env: dict, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(z, x) from the model's sites and log q(z | x) from the guide's, per row."""
    sites = {site.name: site for site in model.model.sites}
    env = {**env, "z": z}
    log_p = sites["z"].sequence_log_prob(env, z) + sites["x"].sequence_log_prob(env, env["x"])
    return log_p, model.guide.sites[0].distribution(env).log_prob(z)


def test_padding_is_masked_in_model_and_guide():
    """Rows of length n score as the model of n steps, in model and guide alike: the same
    log p(z, x) and log q(z | x) for a given z, whatever the padding holds."""
    ragged = dgmlang.compile(lgssm_text(length="n"))
    short = dgmlang.compile(lgssm_text(steps=10))
    short.guide.load_state_dict(ragged.guide.state_dict())
    x = dgmlang.compile(lgssm_text()).sample(3, seed=2)["x"]
    n = torch.tensor([10, 10, 10])
    with torch.no_grad():
        z = ragged.guide.sites[0].distribution({"x": x, "n": n}).sample()
        log_p, log_q = _joint_terms(ragged, {"x": x, "n": n}, z)
        noisy_x, noisy_z = x.clone(), z.clone()
        noisy_x[:, 10:], noisy_z[:, 10:] = 100.0, -50.0  # padding: any value
        padded_p, padded_q = _joint_terms(ragged, {"x": noisy_x, "n": n}, noisy_z)
        cut_p, cut_q = _joint_terms(short, {"x": x[:, :10]}, z[:, :10])
    torch.testing.assert_close((padded_p, padded_q), (log_p, log_q))
    torch.testing.assert_close((cut_p, cut_q), (log_p, log_q))
    # the estimate log_prob gives is blind to padding too (same seed, same draws)
    full = ragged.log_prob({"x": x, "n": n}, num_samples=50, seed=0, progress=False)
    padded = ragged.log_prob({"x": noisy_x, "n": n}, num_samples=50, seed=0, progress=False)
    torch.testing.assert_close(full, padded)


def test_a_drawn_path_scores_as_scoring_it_afresh():
    """log q of the very path `rsample` returned (from its own scales and noise) has the value
    and the gradients of scoring a copy of the path afresh (the combiner run over it), here
    with references away from neutral, particles and padding; a path drawn without gradients
    and scored with them is scored afresh, so its log q has gradients."""
    m = dgmlang.compile(lgssm_text(length="n", guide="guide(hidden = [8])")).to(dtype=torch.float64)
    m.guide.reference("z").set(torch.tensor([3.0]), torch.tensor([4.0]))
    m.guide.input_reference("x").set(torch.tensor(1.0), torch.tensor(2.0))
    x = dgmlang.compile(lgssm_text()).sample(4, seed=1)["x"].double()
    q = m.guide.sites[0].distribution({"x": x, "n": torch.tensor([STEPS, 10, 3, 1])}).expand((3, 4))
    torch.manual_seed(0)
    z = q.rsample()
    drawn, fresh = q.log_prob(z), q.log_prob(z.clone())
    torch.testing.assert_close(drawn, fresh, rtol=1e-10, atol=1e-10)
    params = [p for p in m.guide.parameters() if p.requires_grad]
    by_draw = torch.autograd.grad(drawn.sum(), params, retain_graph=True, allow_unused=True)
    afresh = torch.autograd.grad(fresh.sum(), params, allow_unused=True)
    for a, b in zip(by_draw, afresh):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert q.log_prob(q.sample()).requires_grad


def test_invert_and_sample_shapes(structured, lgssm_data):
    draws = structured.invert({"x": lgssm_data[:2]}, num_samples=20, seed=0, progress=False)
    assert draws["z"].shape == (20, 2, STEPS)
    assert structured.sample(3, seed=0)["z"].shape == (3, STEPS)


def test_samples_are_contiguous():
    """The emitted sequence was drawn time-first and moved behind the batch dim: its draws
    came back non-contiguous, so a mask made with ``ones_like`` and written through
    ``.reshape(n, -1)`` (a copy) stayed all True, and ``.view`` failed."""
    m = dgmlang.compile('''
model vec {
    data   x[5, 3]
    latent z[5, 2]
    z[0] ~ Normal(0, 1)
    for t in 1:5 { z[t] ~ Normal(z[t - 1], 0.5) }
    for t in 0:5 { x[t] ~ Normal(mlp(z[t], hidden = [4]), 0.3) }
}''')
    draws = m.sample(4, seed=0)
    assert all(v.is_contiguous() for v in draws.values())
    assert draws["x"].view(4, -1).shape == (4, 15)


@pytest.mark.parametrize("body, message", [
    ("latent z[T] guide(family = mvn)\n z[0] ~ Normal(0, 1)\n for t in 1:T { z[t] ~ Normal(z[t - 1], 1) }",
     "not supported yet: guide family mvn on the continuous latent chain 'z'"),
    ("latent z[T] guide(hidden = [8, 8])\n z[0] ~ Normal(0, 1)\n for t in 1:T { z[t] ~ Normal(z[t - 1], 1) }",
     "not supported yet: 2 hidden sizes for the guide of the chain 'z'"),
    ("latent z[T] : positive\n z[0] ~ Gamma(1, 1)\n for t in 1:T { z[t] ~ Gamma(z[t - 1], 1) }",
     "not supported yet: a latent sequence drawn from Gamma"),
    ("latent z[T]\n z[0] ~ Normal(0, 1)\n z[1] ~ Normal(z[0], 1)\n for t in 2:T { z[t] ~ Normal(z[t - 2], 1) }",
     "a chain of order 2"),
    ("latent z[T]\n global g\n g ~ Normal(0, 1)\n z[0] ~ Normal(g, 1)\n for t in 1:T { z[t] ~ Normal(z[t - 1], 1) }",
     "not supported yet: global 'g' in a model with the continuous latent chain 'z'"),
])
def test_checker_refuses(body, message):
    text = f"model c {{\n const T = 6\n data x[T]\n {body}\n for t in 0:T {{ x[t] ~ Normal(z[t], 1) }}\n}}"
    with pytest.raises(DGMError, match=message.replace("(", r"\(").replace("[", r"\[")):
        dgmlang.compile(text)


def test_gaps_in_a_sequence_are_refused(structured):
    x = torch.zeros(2, STEPS)
    x[0, 3] = float("nan")
    with pytest.raises(DGMError, match="missing entries"):
        structured.log_prob({"x": x}, num_samples=5, progress=False)
