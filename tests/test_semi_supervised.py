"""Semi-supervised learning: a label (a Categorical data variable a latent's guide reads)
missing on some rows (docs/inference.md, "Semi-supervised learning").

The bound is checked exactly against a hand computation on a model whose guide is a point
mass (so the bound is deterministic), log_prob against the exact marginal likelihood of a
linear-Gaussian mixture, in float64.
"""
from __future__ import annotations

import math

import pytest
import torch

import dgmlang
from dgmlang import checkpoint
from dgmlang.errors import DGMDataError, DGMUsageError
from dgmlang.inverse import GuideStep

MU = (-2.0, 0.0, 2.0)
LOGITS = (0.5, 0.0, -0.5)
NOISE = 0.5


def source(family: str = "normal") -> str:
    guide = f" guide(family = {family})" if family != "normal" else ""
    return f"""
model tiny {{
    const mu = [{MU[0]}, {MU[1]}, {MU[2]}]
    data   y
    latent z{guide}
    data   x
    y ~ Categorical(logits = [{LOGITS[0]}, {LOGITS[1]}, {LOGITS[2]}])
    z ~ Normal(0, 1)
    x ~ Normal(z + mu[y], {NOISE})
}}"""


def model(family: str = "normal") -> dgmlang.CompiledModel:
    return dgmlang.compile(source(family)).to(dtype="float64")


def batch_of(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.tensor(MU, dtype=torch.float64)[y] + math.sqrt(1 + NOISE ** 2) * torch.randn(
        n, generator=g, dtype=torch.float64)
    observed = torch.tensor([True, False, True, False, False, True] * (n // 6))
    # data given to the queries is read in torch's default dtype: values float32 holds
    return x.float().double(), y, observed


def exact_log_p(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x) (y None) or log p(x, y) of the model, exactly: x | y ~ N(mu_y, 1 + NOISE²)."""
    log_pi = torch.log_softmax(torch.tensor(LOGITS, dtype=torch.float64), 0)
    mu = torch.tensor(MU, dtype=torch.float64)
    sd = math.sqrt(1 + NOISE ** 2)
    joint = log_pi + torch.distributions.Normal(mu, sd).log_prob(x.unsqueeze(-1))  # (n, 3)
    if y is None:
        return joint.logsumexp(-1)
    return joint.gather(-1, y.unsqueeze(-1)).squeeze(-1)


def normal(loc, scale) -> torch.distributions.Normal:
    return torch.distributions.Normal(torch.as_tensor(loc, dtype=torch.float64),
                                      torch.as_tensor(scale, dtype=torch.float64))


def test_the_plan_has_a_label_step_and_the_guide_plan_is_unchanged():
    m = model()
    assert m.plan.labels == (GuideStep("y", ("x",), "enumerated_in_guide"),)
    assert m.guide_plan == [("z", ["y", "x"])]
    assert "label_nets.y.layers.0.weight" in m.guide.state_dict()
    # a model without a label has no label network (its checkpoints are unchanged)
    vae = dgmlang.compile("model v { data x\n latent z\n z ~ Normal(0, 1)\n x ~ Normal(z, 1) }")
    assert vae.plan.labels == () and not any("label" in k for k in vae.guide.state_dict())


def test_bound_equals_the_hand_computed_sum_over_the_missing_labels():
    """With a point-mass guide for z the bound is deterministic: Σ_k w_ik log p(x_i, k, ẑ_ik)
    + entropy of q(y | x_i) on missing rows, the observed label on the others, plus
    aux_weight · log q(y_i | x_i) on labelled rows, all scaled by N/B."""
    m = model("delta")
    x, y, observed = batch_of()
    placeholder = torch.where(observed, y, torch.zeros_like(y))
    size, aux = 10, 3.0
    loss = m.objective("elbo", 1, aux_weight=aux)({"x": x, "y": placeholder}, size, {"y": observed})

    probs = m.class_posterior({"x": x}, "y")  # q(y | x), (n, 3)
    log_pi = torch.log_softmax(torch.tensor(LOGITS, dtype=torch.float64), 0)
    site = m.guide.sites[0]
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(x)):
        f = []
        for k in range(3):
            z_hat = site.distribution({"x": x[i:i + 1], "y": torch.tensor([k])}).mean[0]
            f.append(log_pi[k] + torch.distributions.Normal(0.0, 1.0).log_prob(z_hat)
                     + torch.distributions.Normal(z_hat + MU[k], NOISE).log_prob(x[i]))
        if observed[i]:
            total += f[int(y[i])] + aux * torch.log(probs[i, y[i]])
        else:
            total += sum(probs[i, k] * (f[k] - torch.log(probs[i, k])) for k in range(3))
    assert torch.allclose(loss, -total * size / len(x), rtol=1e-12, atol=1e-10), (loss + total * size / len(x)).item()


def test_labelled_rows_are_clamped_to_their_label():
    """All rows labelled and no classification term: the bound is the supervised one, and
    q(y | x) has no say in it (no gradient)."""
    m = model("delta")
    x, y, _ = batch_of()
    everything = torch.ones(len(x), dtype=torch.bool)
    semi = m.objective("elbo", 1, aux_weight=0.0)({"x": x, "y": y}, 6, {"y": everything})
    plain = m.objective("elbo", 1)({"x": x, "y": y}, 6)
    assert torch.allclose(semi, plain, rtol=1e-12)
    semi.backward()
    for name, p in m.guide.label_nets.named_parameters():
        assert p.grad is None or not bool(p.grad.any()), name


def test_the_classification_term_changes_the_loss_by_exactly_aux_times_its_log_q():
    m = model()
    x, y, observed = batch_of(12)
    placeholder = torch.where(observed, y, torch.zeros_like(y))
    losses = []
    for aux in (0.0, 46.0):
        torch.manual_seed(1)
        losses.append(m.objective("elbo", 1, aux_weight=aux)({"x": x, "y": placeholder}, 30,
                                                               {"y": observed}))
    log_q = torch.log(m.class_posterior({"x": x}, "y")).gather(1, y.unsqueeze(1)).squeeze(1)
    expected = -46.0 * log_q[observed].sum() * 30 / len(x)
    assert torch.allclose(losses[1] - losses[0], expected, rtol=1e-10)


def test_log_prob_sums_a_missing_label_out_exactly():
    """After a short fit, log_prob of rows without their label is log Σ_k p(x, k), of rows
    with it log p(x, y), both against the exact values (importance sampling over z only)."""
    torch.manual_seed(0)
    m = model()
    x, y, observed = batch_of(240, seed=1)
    m.fit({"x": x, "y": y}, mask={"y": observed}, steps=300, lr=0.01, seed=0, progress=False)
    rows = slice(0, 12)
    scores = m.log_prob({"x": x[rows], "y": y[rows]}, mask={"y": observed[rows]},
                        num_samples=4000, seed=0)
    exact = torch.where(observed[rows], exact_log_p(x[rows], y[rows]), exact_log_p(x[rows]))
    assert torch.allclose(scores, exact, atol=0.02), (scores - exact)
    # NaN in a float array marks the same missing labels
    labels = y[rows].double().masked_fill(~observed[rows], float("nan"))
    again = m.log_prob({"x": x[rows], "y": labels}, num_samples=4000, seed=0)
    assert torch.equal(again, scores)


def test_class_posterior_is_a_distribution_per_row_and_learns_to_classify():
    torch.manual_seed(0)
    m = model()
    x, y, observed = batch_of(300, seed=2)
    probs = m.class_posterior({"x": x}, "y")
    assert probs.shape == (300, 3) and bool((probs >= 0).all())
    assert torch.allclose(probs.sum(1), torch.ones(300, dtype=torch.float64))
    m.fit({"x": x, "y": y}, mask={"y": observed}, steps=300, lr=0.01, seed=0, progress=False)
    # the Bayes classifier of this mixture is right about 75% of the time
    accuracy = (m.class_posterior({"x": x}, "y").argmax(1) == y).double().mean()
    assert accuracy > 0.65


def test_nan_labels_and_a_mask_train_the_same():
    x, y, observed = batch_of(24)
    runs = []
    for data, mask in (({"x": x, "y": y}, {"y": observed}),
                       ({"x": x, "y": y.double().masked_fill(~observed, float("nan"))}, None)):
        m = model()
        runs.append(m.fit(data, mask=mask, steps=5, seed=0, progress=False))
    assert runs[0] == runs[1]


def test_checkpoint_round_trip_keeps_the_label_network(tmp_path):
    m = model()
    x, y, observed = batch_of(24)
    m.fit({"x": x, "y": y}, mask={"y": observed}, steps=5, seed=0, progress=False)
    path = tmp_path / "ssl.dgmfit"
    m.save(path)
    back = dgmlang.load_fitted(path)
    assert torch.equal(back.class_posterior({"x": x}, "y"), m.class_posterior({"x": x}, "y"))
    # a file written before label networks existed lacks them: it loads, untouched
    payload = torch.load(path, weights_only=True)
    payload["guide_state"] = {k: v for k, v in payload["guide_state"].items()
                              if not k.startswith("label_nets.")}
    payload["digest"] = checkpoint.payload_digest(payload)
    torch.save(payload, path)
    older = dgmlang.load_fitted(path)
    assert torch.equal(older.guide.state_dict()["nets.z.layers.0.weight"],
                       m.guide.state_dict()["nets.z.layers.0.weight"])


def test_bad_inputs_are_refused():
    m = model()
    x, y, observed = batch_of()
    with pytest.raises(DGMDataError, match="outside its support"):
        m.fit({"x": x, "y": torch.where(observed, y, 3)}, steps=1, progress=False)
    with pytest.raises(DGMDataError, match="not a class label"):
        m.fit({"x": x, "y": torch.tensor([0, 1.5, float("nan"), 0, 1, 2])}, steps=1, progress=False)
    for bad in (-1.0, float("nan"), float("inf"), "46", True):
        with pytest.raises(DGMUsageError, match="aux_weight"):
            m.fit({"x": x, "y": y}, mask={"y": observed}, steps=1, aux_weight=bad, progress=False)
    with pytest.raises(DGMUsageError, match="only objective='elbo'"):
        m.fit({"x": x, "y": y}, mask={"y": observed}, steps=1, objective="iwae",
              num_particles=2, progress=False)
    with pytest.raises(DGMUsageError, match="'x' is no label"):
        m.class_posterior({"x": x}, "x")
    with pytest.raises(DGMUsageError, match="'z' is no label"):
        m.class_posterior({"x": x}, "z")
    with pytest.raises(DGMUsageError, match="no variable 'yy'"):
        m.class_posterior({"x": x}, "yy")
    vae = dgmlang.compile("model v { data x\n latent z\n z ~ Normal(0, 1)\n x ~ Normal(z, 1) }")
    with pytest.raises(DGMUsageError, match="no label"):
        vae.class_posterior({"x": x.float()}, "x")


def test_a_discrete_data_variable_no_latent_reads_is_still_refused_when_missing():
    m = dgmlang.compile("""
model m {
    const mu = [-1.0, 1.0]
    data c
    data x
    c ~ Categorical(logits = [0.0, 0.0])
    x ~ Normal(mu[c], 1)
}""")
    assert m.plan.labels == ()
    with pytest.raises(DGMDataError, match="depends on it"):
        m.fit({"c": torch.tensor([0, 1]), "x": torch.zeros(2)},
              mask={"c": torch.tensor([True, False])}, steps=1, progress=False)


@pytest.mark.filterwarnings("ignore::dgmlang.errors.DGMWarning")
def test_invert_draws_missing_labels_and_keeps_given_ones():
    torch.manual_seed(0)
    m = model()
    x, y, observed = batch_of(6)
    m.fit({"x": x, "y": y}, mask={"y": observed}, steps=20, seed=0, progress=False)
    draws = m.invert({"x": x, "y": y}, mask={"y": observed}, num_samples=50, seed=0)
    assert draws["y"].shape == (50, 6) and draws["z"].shape == (50, 6)
    assert torch.equal(draws["y"][:, observed], y[observed].expand(50, -1))
    assert bool(((draws["y"] >= 0) & (draws["y"] < 3)).all())


def test_a_bernoulli_label_works_the_same_way():
    m = dgmlang.compile("""
model b {
    data   y
    latent z
    data   x
    y ~ Bernoulli(0.3)
    z ~ Normal(0, 1)
    x ~ Normal(z + 3 * y, 0.5)
}""").to(dtype="float64")
    assert m.plan.labels == (GuideStep("y", ("x",), "enumerated_in_guide"),)
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(60, generator=g) < 0.3).double()
    x = (3 * y + math.sqrt(1.25) * torch.randn(60, generator=g, dtype=torch.float64)).float().double()
    labels = y.masked_fill(torch.arange(60) % 2 == 1, float("nan"))
    m.fit({"x": x, "y": labels}, steps=200, lr=0.01, seed=0, progress=False)
    probs = m.class_posterior({"x": x}, "y")
    assert probs.shape == (60, 2) and torch.allclose(probs.sum(1), torch.ones(60, dtype=torch.float64))
    scores = m.log_prob({"x": x[:6], "y": labels[:6]}, num_samples=4000, seed=0)
    sd = math.sqrt(1.25)
    joint = torch.stack([math.log(0.7) + normal(0.0, sd).log_prob(x[:6]),
                         math.log(0.3) + normal(3.0, sd).log_prob(x[:6])])
    exact = torch.where(torch.isnan(labels[:6]), joint.logsumexp(0),
                        joint.gather(0, y[:6].long().unsqueeze(0)).squeeze(0))
    assert torch.allclose(scores, exact, atol=0.03), scores - exact
