"""Sequences: exact discrete chains against a forward-backward written here, separately
(float64 numpy), FFBS draws against the marginals, sampling, fitting, and the front end."""
import numpy as np
import pytest
import torch

import dgmlang
from dgmlang.errors import DGMError

TRANS = np.array([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.25, 0.05, 0.7]])
MU = np.array([-2.0, 0.0, 2.5])
INIT = np.array([0.5, 0.3, 0.2])


def hmm_text(steps: int, *, fixed: bool = True) -> str:
    params = (f"const TRANS = {TRANS.tolist()}\n    const MU = {MU.tolist()}\n    const INIT = {INIT.tolist()}"
              if fixed else "param TRANS[3, 3] : simplex\n    param MU[3]\n    const INIT = [0.3333, 0.3333, 0.3334]")
    return f"""
model hmm {{
    const T = {steps}
    {params}
    data   x[T]
    latent s[T]

    s[0] ~ Categorical(probs = INIT)
    for t in 1:T {{ s[t] ~ Categorical(probs = TRANS[s[t - 1]]) }}
    for t in 0:T {{ x[t] ~ Normal(MU[s[t]], 1) }}
}}
"""


def emissions(x: np.ndarray) -> np.ndarray:
    """log N(x[t]; MU[k], 1), (n, T, K)."""
    return -0.5 * (x[..., None] - MU) ** 2 - 0.5 * np.log(2 * np.pi)


def forward_backward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log p(x) (n,) and p(s[t] = k | x) (n, T, K), scaled forward-backward in float64."""
    like = np.exp(emissions(x))
    n, steps, k = like.shape
    alpha = np.zeros((n, steps, k))
    scale = np.zeros((n, steps))
    a = INIT * like[:, 0]
    for t in range(steps):
        if t:
            a = (alpha[:, t - 1] @ TRANS) * like[:, t]
        scale[:, t] = a.sum(-1)
        alpha[:, t] = a / scale[:, t, None]
    beta = np.ones((n, steps, k))
    for t in range(steps - 2, -1, -1):
        beta[:, t] = (TRANS @ (like[:, t + 1] * beta[:, t + 1])[..., None])[..., 0] / scale[:, t + 1, None]
    post = alpha * beta
    return np.log(scale).sum(-1), post / post.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def hmm():
    return dgmlang.compile(hmm_text(40))


@pytest.fixture(scope="module")
def sequences(hmm):
    return hmm.sample(6, seed=1)


def test_sample_shapes_and_states(sequences):
    assert sequences["x"].shape == (6, 40) and sequences["s"].shape == (6, 40)
    assert set(sequences["s"].unique().tolist()) <= {0, 1, 2}


def in_dtype(model, dtype: str, query):
    """`query()` with `model` moved to `dtype`, then back to float32."""
    model.to(dtype=dtype)
    try:
        return query()
    finally:
        model.to(dtype="float32")


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-6), ("float32", 1e-4)])
def test_log_prob_is_the_forward_algorithm(hmm, sequences, dtype, rtol):
    x = sequences["x"].double().numpy()
    exact, _ = forward_backward(x)
    got = in_dtype(hmm, dtype, lambda: hmm.log_prob({"x": torch.as_tensor(x)}, progress=False))
    np.testing.assert_allclose(got.double().numpy(), exact, rtol=rtol)


@pytest.mark.parametrize("dtype, atol", [("float64", 1e-6), ("float32", 1e-4)])
def test_marginals_are_forward_backward(hmm, sequences, dtype, atol):
    x = sequences["x"].double().numpy()
    _, exact = forward_backward(x)
    got = in_dtype(hmm, dtype, lambda: hmm.marginals({"x": torch.as_tensor(x)}, "s"))
    assert got.shape == (6, 40, 3)
    np.testing.assert_allclose(got.double().numpy(), exact, atol=atol)


def test_invert_draws_follow_the_marginals(hmm, sequences):
    x = sequences["x"][:2]
    draws = hmm.invert({"x": x}, num_samples=4000, seed=0, progress=False)["s"]
    assert draws.shape == (4000, 2, 40)
    freq = torch.nn.functional.one_hot(draws, 3).double().mean(0)
    _, exact = forward_backward(x.double().numpy())
    # 4000 draws: a frequency's standard error is at most 0.008
    np.testing.assert_allclose(freq.numpy(), exact, atol=0.04)


def test_invert_draws_pairs_from_the_joint_posterior(hmm, sequences):
    """Consecutive states drawn together (FFBS draws paths, not independent steps)."""
    x = sequences["x"][:1].double()
    draws = hmm.invert({"x": x}, num_samples=4000, seed=1, progress=False)["s"][:, 0]
    like = np.exp(emissions(x.numpy()))[0]
    _, post = forward_backward(x.numpy())
    # p(s[t], s[t+1] | x) from the separate forward-backward, at t = 10
    t = 10
    alpha = np.zeros(3)
    a = INIT * like[0]
    for u in range(1, t + 1):
        a = (a / a.sum() @ TRANS) * like[u]
    alpha = a / a.sum()
    beta_next = post[0, t + 1] / (alpha @ TRANS * like[t + 1] / (alpha @ TRANS * like[t + 1]).sum())
    joint = alpha[:, None] * TRANS * (like[t + 1] * beta_next)[None, :]
    joint /= joint.sum()
    freq = np.zeros((3, 3))
    np.add.at(freq, (draws[:, t].numpy(), draws[:, t + 1].numpy()), 1)
    np.testing.assert_allclose(freq / len(draws), joint, atol=0.04)


def test_fit_recovers_the_parameters_up_to_a_permutation():
    truth = dgmlang.compile(hmm_text(60))
    data = truth.sample(150, seed=3)
    m = dgmlang.compile(hmm_text(60, fixed=False))
    m.fit({"x": data["x"]}, steps=300, lr=0.05, batch_size=150, progress=False, seed=0)
    mu = m.model.param("MU").detach().double().numpy()
    order = np.argsort(mu)
    np.testing.assert_allclose(mu[order], MU, atol=0.15)
    trans = m.model.param("TRANS").detach().double().numpy()[np.ix_(order, order)]
    np.testing.assert_allclose(trans, TRANS, atol=0.06)


def test_the_chain_is_summed_out_in_the_model(hmm):
    assert hmm.guide_plan == [("s", "enumerated in model")]
    assert [s.name for s in hmm.model.sites] == ["x"]


def test_marginals_refuses_what_is_no_chain(hmm):
    with pytest.raises(DGMError, match="'x' is not a latent chain"):
        hmm.marginals({"x": torch.zeros(1, 40)}, "x")


@pytest.mark.parametrize("body, message", [
    ("s[0] ~ Categorical(logits = zeros(3))\n s[1] ~ Categorical(logits = zeros(3))\n"
     " for t in 2:T { s[t] ~ Categorical(probs = P[s[t - 2]]) }\n for t in 0:T { x[t] ~ Normal(s[t], 1) }",
     "not supported yet: 's' reads s[t - 2]: a chain of order 2"),
    ("s[0] ~ Categorical(logits = zeros(3))\n for t in 1:T { s[t] ~ Categorical(probs = P[s[t - 1]]) }\n"
     " let h[0] = 1\n for t in 1:T { let h[t] = h[t - 1] + 1 }\n x[0] ~ Normal(s[0], 1)\n"
     " for t in 1:T { x[t] ~ Normal(s[t] + h[t], 1) }",
     "not supported yet: data sequence 'x' reading both the latent chain 's' and steps of 'h'"),
    ("s[0] ~ Categorical(logits = zeros(3))\n for t in 1:n { s[t] ~ Categorical(probs = P[s[t - 1]]) }\n"
     " for t in 0:T { x[t] ~ Normal(s[t], 1) }",
     "not supported yet: data sequence 'x' reading steps of 's' past its length 'n'"),
])
def test_what_is_refused(body, message):
    text = f"model m {{\n const T = 5\n input n : int\n param P[3, 3] : simplex\n data x[T]\n latent s[T]\n {body}\n}}"
    with pytest.raises(DGMError, match=message.replace("[", r"\[").replace("]", r"\]")):
        dgmlang.compile(text)


def test_vector_steps_and_inputs_against_every_path():
    """Steps of shape [2] reading an input, a time-varying first step: log p(x) equals the
    sum over all 3^4 paths, computed here by brute force."""
    text = """
model vec {
    const MU = [[-1.0, 0.0], [1.0, 1.0], [0.0, -2.0]]
    const A = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]]
    input  u
    data   x[4, 2]
    latent s[4]
    s[0] ~ Categorical(probs = [0.2, 0.5, 0.3])
    s[1] ~ Categorical(probs = A[s[0]])
    for t in 2:4 { s[t] ~ Categorical(probs = A[2 - s[t - 1]]) }
    x[0] ~ Normal(MU[s[0]] + u, 0.5)
    for t in 1:4 { x[t] ~ Normal(MU[s[t]] * 2 + u, 0.5) }
}
"""
    m = dgmlang.compile(text).to(dtype="float64")
    rng = np.random.default_rng(0)
    x, u = rng.normal(size=(3, 4, 2)), rng.normal(size=3)
    mu = np.array([[-1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    a = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])
    exact = np.zeros(3)
    for path in np.ndindex(3, 3, 3, 3):
        p = np.array([0.2, 0.5, 0.3])[path[0]] * a[path[0], path[1]]
        p = p * a[2 - path[1], path[2]] * a[2 - path[2], path[3]]
        loc = np.stack([mu[path[0]]] + [2 * mu[s] for s in path[1:]])[None] + u[:, None, None]
        dens = np.exp(-0.5 * ((x - loc) / 0.5) ** 2).prod((-1, -2)) / (0.5 * np.sqrt(2 * np.pi)) ** 8
        exact += p * dens
    got = m.log_prob({"x": torch.as_tensor(x), "u": torch.as_tensor(u)}, progress=False)
    # the model's numbers are float32 numbers (0.2 is not exactly 0.2 there): rtol 1e-6
    np.testing.assert_allclose(got.numpy(), np.log(exact), rtol=1e-6)


def test_a_chain_beside_a_global_and_another_latent_samples_fits_and_inverts():
    text = """
model mixed {
    param  trans[2, 2] : simplex
    global mu[2]
    data   x[12]
    data   y
    latent z
    latent s[12]
    mu ~ Normal(0, 3)
    z ~ Normal(0, 1)
    y ~ Normal(z, 1)
    s[0] ~ Categorical(logits = zeros(2))
    for t in 1:12 { s[t] ~ Categorical(probs = trans[s[t - 1]]) }
    for t in 0:12 { x[t] ~ Normal(mu[s[t]], 1) }
}
"""
    m = dgmlang.compile(text)
    data = m.sample(16, seed=0)
    assert data["s"].shape == (16, 12) and data["x"].shape == (16, 12)
    m.fit({"x": data["x"], "y": data["y"]}, steps=5, progress=False)
    draws = m.invert({"x": data["x"], "y": data["y"]}, num_samples=3, progress=False)
    assert draws["s"].shape == (3, 16, 12) and draws["mu"].shape == (3, 2)
    assert torch.isfinite(m.log_prob({"x": data["x"], "y": data["y"]}, num_samples=20, progress=False)).all()


@pytest.mark.parametrize("decl, body", [
    ("data x[6]", "s[0] ~ Categorical(logits = zeros(3))\n for t in 1:6 { s[t] ~ Categorical(logits = [0.1, 0.2, 0.3]) }\n"
                  " x[0] ~ Normal(0, 1)\n for t in 1:6 { x[t] ~ Normal(s[t], 1) }"),
    ("data x[6]", "for t in 0:6 { s[t] ~ Categorical(logits = [0.1, 0.2, 0.3]) }\n"
                  " for t in 0:6 { x[t] ~ Categorical(probs = softmax(onehot(s[t], 3) * 2)) }"),
    ("data x[6, 3]", "for t in 0:6 { s[t] ~ Categorical(logits = zeros(3)) }\n"
                     " for t in 0:6 { x[t] ~ Dirichlet(exp(onehot(s[t], 3))) }"),
], ids=["a-step-reading-no-state", "categorical-data-iid-chain", "simplex-steps"])
def test_chains_of_other_shapes_run_end_to_end(decl, body):
    m = dgmlang.compile(f"model m {{\n latent s[6]\n {decl}\n {body}\n}}")
    d = m.sample(5, seed=0)
    assert torch.isfinite(m.log_prob({"x": d["x"]}, progress=False)).all()
    assert torch.allclose(m.marginals({"x": d["x"]}, "s").sum(-1), torch.ones(5, 6))
    assert m.invert({"x": d["x"]}, num_samples=3, progress=False)["s"].shape == (3, 5, 6)
    m.fit({"x": d["x"]}, steps=2, progress=False)


def test_sequences_of_different_lengths_score_only_their_steps():
    """`for t in 0:n` with `input n : int`: each row's log p and marginals are those of its
    first n steps (the separate forward-backward on the truncated rows); padding is ignored."""
    text = hmm_text(12).replace("    data   x[T]", "    input  n : int\n    data   x[T]")
    m = dgmlang.compile(text.replace("for t in 0:T { x[t]", "for t in 0:n { x[t]")).to(dtype="float64")
    rng = np.random.default_rng(5)
    x, n = rng.normal(size=(4, 12)) * 2, np.array([12, 7, 3, 1])
    padded = x.copy()
    for row, k in enumerate(n):
        padded[row, k:] = 100.0 * (row + 1)  # far from every level: it would dominate if scored
    data = {"x": torch.as_tensor(padded), "n": torch.as_tensor(n)}
    got = m.log_prob(data, progress=False).numpy()
    marginals = m.marginals(data, "s").numpy()
    for row, k in enumerate(n):
        exact, post = forward_backward(x[row:row + 1, :k])
        np.testing.assert_allclose(got[row], exact[0], rtol=1e-6)
        np.testing.assert_allclose(marginals[row, :k], post[0], atol=1e-6)


def test_a_length_beyond_the_steps_is_a_data_error():
    text = hmm_text(5).replace("    data   x[T]", "    input  n : int\n    data   x[T]")
    m = dgmlang.compile(text.replace("for t in 0:T { x[t]", "for t in 0:n { x[t]"))
    with pytest.raises(DGMError, match=r"row 1 holds 6, but it is the length of a sequence of 5 steps"):
        m.log_prob({"x": torch.zeros(2, 5), "n": torch.tensor([5, 6])}, progress=False)
