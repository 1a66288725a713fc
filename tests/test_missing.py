"""fit and log_prob on partly observed data: missing entries of data nothing depends on, in
a distribution that factorizes over entries, are marginalized exactly by dropping their
terms; every other pattern is refused, naming the variable."""
import math

import pyro
import pytest
import torch

import dgmlang
from dgmlang import fastpath
from dgmlang.errors import DGMDataError
from dgmlang.lower import elbo_for

WEIGHTS = torch.tensor([1.0, 2.0, -1.0])
NOISE = 1.0
TRUE_SHIFT = torch.tensor([1.5, -2.0, 0.5])
LINEAR = f"""
model linear {{
    param  shift[3]
    data   x[3]
    latent z
    z ~ Normal(0, 1)
    x ~ Normal(z * [1.0, 2.0, -1.0] + shift, {NOISE})
}}"""
MIXTURE = """
model mixture {
    const MU = [[0.0, 1.0, -1.0], [2.0, -1.0, 0.5], [-1.5, 0.5, 2.0]]
    data   x[3]
    latent c
    c ~ Categorical(logits = [0.2, -0.3, 0.1])
    x ~ Normal(MU[c], 0.7)
}"""


def linear_data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, generator=g)
    x = z * WEIGHTS + TRUE_SHIFT + NOISE * torch.randn(n, 3, generator=g)
    observed = torch.rand(n, 3, generator=g) > 0.3
    return x, observed


def exact_linear(x: torch.Tensor, observed: torch.Tensor, shift: torch.Tensor) -> float:
    """log p(x_o): x = w z + shift + noise, z ~ N(0, 1), marginally N(shift, w w' + s² I)."""
    if not observed.any():
        return 0.0
    w, k = WEIGHTS[observed], int(observed.sum())
    cov = torch.outer(w, w) + NOISE ** 2 * torch.eye(k)
    return float(torch.distributions.MultivariateNormal(shift[observed], cov).log_prob(x[observed]))


@pytest.fixture(scope="module")
def fitted_linear():
    """The linear-Gaussian model fitted on 256 rows with 30% of the entries NaN."""
    x, observed = linear_data(256, seed=0)
    with_gaps = torch.where(observed, x, torch.tensor(float("nan")))
    m = dgmlang.compile(LINEAR)
    m.fit({"x": with_gaps}, steps=200, batch_size=256, lr=0.05, seed=0, progress=False)
    return m


def test_fit_on_data_with_nan_recovers_the_parameters(fitted_linear):
    shift = fitted_linear.model.param("shift").detach()
    # (treating the gaps as zeros would pull each entry 30% towards 0: 0.45 to 0.6 off)
    assert torch.allclose(shift, TRUE_SHIFT, atol=0.35), shift


def test_log_prob_with_random_masks_is_the_exact_marginal_of_the_observed_entries(fitted_linear):
    x, observed = linear_data(30, seed=1)
    observed[0] = False  # nothing observed: log p = 0
    # Rows with gaps propose from the guide's mixture over fillings (tests/test_imputation.py);
    # over seeds 0-2 the worst row is off by 0.03-0.15 nats at 20,000 samples, 0.03 at seed 0.
    scores = fitted_linear.log_prob({"x": x}, mask={"x": observed}, num_samples=20000, seed=0,
                                    progress=False)
    shift = fitted_linear.model.param("shift").detach()
    exact = torch.tensor([exact_linear(x[i], observed[i], shift) for i in range(len(x))])
    assert (scores - exact).abs().max() < 0.06, (scores - exact)
    assert (scores - exact).abs().mean() < 0.015
    # NaN marks the same entries as the mask
    gaps = torch.where(observed, x, torch.tensor(float("nan")))
    assert torch.equal(fitted_linear.log_prob({"x": gaps}, num_samples=20000, seed=0, progress=False),
                       scores)


def test_a_summed_out_class_gives_the_exact_marginal_with_masks():
    m = dgmlang.compile(MIXTURE)
    g = torch.Generator().manual_seed(3)
    x = 2 * torch.randn(12, 3, generator=g)
    observed = torch.rand(12, 3, generator=g) > 0.4
    observed[0], observed[1] = False, True
    scores = m.log_prob({"x": x}, mask={"x": observed}, num_samples=5, seed=0, progress=False)
    mu = torch.tensor([[0.0, 1.0, -1.0], [2.0, -1.0, 0.5], [-1.5, 0.5, 2.0]])
    log_pi = torch.log_softmax(torch.tensor([0.2, -0.3, 0.1]), 0)
    terms = torch.distributions.Normal(mu, 0.7).log_prob(x.unsqueeze(1))  # (n, class, entry)
    exact = (log_pi + (terms * observed.unsqueeze(1)).sum(-1)).logsumexp(-1)
    assert torch.allclose(scores.double(), exact.double(), atol=1e-4), (scores, exact)
    assert abs(float(scores[0])) < 1e-5


def test_fast_path_and_pyro_give_the_same_loss_on_a_masked_batch():
    for source in (LINEAR, MIXTURE):
        m = dgmlang.compile(source)
        x, observed = linear_data(8, seed=2)
        batch = {"x": torch.where(observed, x, torch.zeros(()))}  # placeholders, as fit hands them
        mask = {"x": observed}
        fast = fastpath.build(m.ir, m.plan, m.model, m.guide)
        assert fast is not None
        torch.manual_seed(0)
        a = fast.loss(batch, 20, mask)
        torch.manual_seed(0)
        elbo = elbo_for(m.ir, m.plan)
        if source is LINEAR:
            b = elbo.differentiable_loss(m.model, m.guide, batch, size=20, mask=mask)
        else:  # nothing to learn: Pyro scores it plainly
            b = torch.tensor(elbo.loss(m.model, m.guide, batch, size=20, mask=mask))
        assert torch.allclose(a, b, rtol=1e-5), (source, a, b)
        torch.manual_seed(0)
        complete = fast.loss(batch, 20)
        assert not torch.allclose(a, complete)  # the mask changed the loss


def test_the_guide_reads_missing_entries_as_its_reference_loc():
    m = dgmlang.compile(LINEAR)
    m.guide.input_reference("x").set(torch.tensor(3.0), torch.tensor(2.0))
    filled = m.guide.filled({"x": torch.zeros(2, 3)}, {"x": torch.tensor([[True, False, True]] * 2)})
    assert filled["x"].tolist() == [[0.0, 3.0, 0.0]] * 2


def test_complete_data_fits_exactly_as_without_a_mask():
    x, _ = linear_data(32, seed=4)
    runs = []
    for mask in (None, {"x": torch.ones(32, 3, dtype=torch.bool)}):
        m = dgmlang.compile(LINEAR)
        losses = m.fit({"x": x}, mask=mask, steps=5, batch_size=16, seed=0, progress=False)
        runs.append((losses, {k: v.detach().clone() for k, v in m.model.state_dict().items()},
                     m.log_prob({"x": x[:4]}, mask=mask and {"x": mask["x"][:4]}, num_samples=10,
                                seed=0, progress=False)))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    assert torch.equal(runs[0][2], runs[1][2])


CHAIN = """
model chain {
    data   y
    data   x
    latent z
    z ~ Normal(0, 1)
    y ~ Normal(z, 1)
    x ~ Normal(y, 1)
}"""
SIMPLEX = """
model simplex {
    data   p[3]
    p ~ Dirichlet([1.0, 2.0, 3.0])
}"""
WITH_INPUT = """
model regression {
    input  u
    data   y
    y ~ Normal(2 * u, 1)
}"""


def test_missing_patterns_that_cannot_be_marginalized_are_refused_by_name():
    nan = float("nan")
    # a count others depend on: its gaps would be discrete latents, and it is no label
    counts = dgmlang.compile(CHAIN.replace("y ~ Normal(z, 1)", "y ~ Poisson(exp(z))"))
    with pytest.raises(DGMDataError, match=r"data 'y' has missing entries, but 'x' depends on it") as err:
        counts.fit({"y": torch.tensor([0.0, nan]), "x": torch.zeros(2)}, steps=1, progress=False)
    assert "invert" in err.value.hint
    with pytest.raises(DGMDataError, match="log_prob: data 'y'"):
        counts.log_prob({"y": torch.zeros(2), "x": torch.zeros(2)},
                        mask={"y": torch.tensor([True, False])}, progress=False)
    # x has no children: its gaps are fine; y's continuous gaps are imputed
    chain = dgmlang.compile(CHAIN)
    chain.log_prob({"y": torch.zeros(2), "x": torch.tensor([0.0, nan])}, num_samples=5, progress=False)
    chain.log_prob({"y": torch.tensor([0.0, nan]), "x": torch.zeros(2)}, num_samples=5, progress=False)
    simplex = dgmlang.compile(SIMPLEX)
    rows = torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    # a Dirichlet's gaps are marginalized exactly (tests/test_missing_joint.py); a row whose
    # observed entries leave nothing for the missing ones is off the simplex
    scores = simplex.log_prob(rows, mask={"p": torch.tensor([[True] * 3, [False] * 3])}, progress=False)
    assert scores[1] == 0
    with pytest.raises(DGMDataError, match="'p'.*partly missing, but its observed entries sum to 1.2"):
        simplex.fit(torch.tensor([[0.7, nan, 0.5]]), steps=1, progress=False)
    regression = dgmlang.compile(WITH_INPUT)
    with pytest.raises(DGMDataError, match="input 'u'.*is NaN"):
        regression.fit({"u": torch.tensor([0.0, nan]), "y": torch.zeros(2)}, steps=1, progress=False)
    with pytest.raises(DGMDataError, match="no values for 'y'"):
        regression.log_prob({"u": torch.zeros(2)}, progress=False)


def test_progress_bars_stay_silent_on_fast_calls(capfd):
    m = dgmlang.compile(MIXTURE)
    x = torch.zeros(4, 3)
    for progress in (False, True):
        m.log_prob(x, num_samples=5, seed=0, progress=progress)
        m.invert(x, num_samples=5, seed=0, progress=progress)
        m.invert(x, mask={"x": torch.tensor([[True, False, True]] * 4)}, num_samples=3, seed=0,
                 progress=progress)
    assert capfd.readouterr().err == ""


GLOBAL_FULL = """
model full {
    const A = [1.0, 2.0, -1.0]
    param  shift[3]
    global w
    data   x[3]
    w ~ Normal(0, 1)
    x ~ Normal(w * A + shift, 0.8)
}"""
#: The same model on the observed entries only: one row per entry, its column as an input.
GLOBAL_FLAT = """
model flat {
    const A = [1.0, 2.0, -1.0]
    param  shift[3]
    global w
    input  j : int
    data   v
    w ~ Normal(0, 1)
    v ~ Normal(w * A[j] + shift[j], 0.8)
}"""


@pytest.mark.parametrize("num_particles", [1, 3])
def test_the_masked_loss_is_the_loss_of_the_model_of_the_observed_entries_alone(num_particles):
    """In float64, the masked training loss (and its gradients) equals that of the sub-model
    holding only the observed entries: dropping the missing entries' terms is marginalizing
    them, with nothing else changed (the same parameters, the same draw of the global)."""
    full = dgmlang.compile(GLOBAL_FULL).to("cpu", torch.float64)
    flat = dgmlang.compile(GLOBAL_FLAT).to("cpu", torch.float64)
    g = torch.Generator().manual_seed(0)
    pairs = list(zip([*full.model.parameters(), *full.guide.parameters()],
                     [*flat.model.parameters(), *flat.guide.parameters()]))
    assert len(pairs) == 3  # shift; the global's loc and scale
    with torch.no_grad():
        for a, b in pairs:
            a.copy_(torch.randn(a.shape, generator=g, dtype=a.dtype))
            b.copy_(a)
    n = 40
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    observed = torch.rand(n, 3, generator=g) > 0.4
    rows, cols = observed.nonzero(as_tuple=True)
    torch.manual_seed(1)
    masked = full.objective("elbo", num_particles)({"x": torch.where(observed, x, 0.0)}, n, {"x": observed})
    torch.manual_seed(1)
    alone = flat.objective("elbo", num_particles)({"j": cols, "v": x[rows, cols]}, len(rows))
    assert masked.dtype == torch.float64
    assert torch.allclose(masked, alone, rtol=1e-14, atol=0), (masked, alone)
    masked.backward()
    alone.backward()
    for a, b in pairs:
        assert torch.allclose(a.grad, b.grad, rtol=1e-12, atol=1e-12), (a.grad, b.grad)
    # and the complete data's loss is another number: the mask is what made them agree
    torch.manual_seed(1)
    assert not torch.allclose(full.objective("elbo", num_particles)({"x": x}, n), alone)


def test_invert_resamples_a_data_variable_left_out_that_nothing_reads(monkeypatch):
    """A data variable not given at all (super-resolution's x, colourisation's rgb) is
    missing everywhere; nothing depends on it, so invert resamples (draws it from the model
    given the latents) instead of running Gibbs chains."""
    import dgmlang
    from dgmlang import posterior

    def no_gibbs(*args, **kwargs):
        raise AssertionError("Gibbs chains for a variable nothing depends on")

    monkeypatch.setattr(posterior, "gibbs", no_gibbs)
    m = dgmlang.compile("model m { data x\n data lo\n latent z\n z ~ Normal(0, 1)\n"
                        " x ~ Normal(z, 0.5)\n lo ~ Normal(z, 0.5) }")
    out = m.invert({"lo": torch.tensor([0.0, 2.0])}, num_samples=200, seed=0, progress=False)
    assert out["x"].shape == (200, 2) and torch.isfinite(out["x"]).all()
    # x given lo: z | lo ~ N(0.8 lo, 0.2), x = z + N(0, 0.25): mean 0.8 lo
    assert abs(float(out["x"][:, 1].mean()) - 1.6) < 0.2
