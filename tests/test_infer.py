"""The user's object: fit, sample, invert, log_prob and checkpoints, as a user sees them."""
import json
import math
import os

import pyro
import pytest
import torch

import dgmlang
from corpus_models import CORPUS
from dgmlang import checkpoint, posterior, weights
from dgmlang.errors import DGMCheckpointError, DGMDataError, DGMTrainingError, DGMUsageError

TINY = """
model tiny {
    param  mu[2]
    data   x[2]
    latent z[2]
    z ~ Normal(0, 1)
    x ~ Normal(z + mu, 0.5)
}
"""
MEAN = """
model mean {
    param mu
    data  x
    x ~ Normal(mu, 1)
}
"""
COND = """
model cond {
    input  k : int
    data   x[2]
    latent z
    z ~ Normal(0, 1)
    x ~ Normal(mlp(z, onehot(k, 3), hidden = [8]), 0.5)
}
"""
LINREG = CORPUS["linreg"]
# The discrete y is a parent of x beside z, so z's guide needs it: y is enumerated in the guide.
SEMI = """
model semi {
    data   x[2]
    latent y
    latent z[2]
    y ~ Categorical(logits = zeros(3))
    z ~ Normal(0, 1)
    x ~ Normal(mlp(z, onehot(y, 3), hidden = [8]), 0.5)
}
"""


def data_of(m, n=20, seed=0):
    """`n` data points drawn from `m` (a model without inputs)."""
    drawn = m.sample(n, seed=seed)
    return {name: drawn[name] for name in m.ir.names("data")}


def state(m):
    return {k: v.clone() for k, v in {**m.model.state_dict(), **m.guide.state_dict()}.items()}


# ---------------------------------------------------------------- fit


def test_fit_counts_steps_and_handles_the_last_partial_batch(monkeypatch):
    m = dgmlang.compile(TINY)
    x = data_of(m, 10)["x"]
    rows = []
    objective = m.objective  # record the rows of every minibatch the loss sees (either path)

    def counting(*args):
        loss = objective(*args)
        return lambda batch, size: rows.append(len(batch["x"])) or loss(batch, size)

    monkeypatch.setattr(m, "objective", counting)
    losses = m.fit(x, epochs=2, batch_size=4, seed=0, progress=False)
    assert len(losses) == 6 and rows == [4, 4, 2, 4, 4, 2]
    assert m.history["loss"] == losses and m.fitted
    assert len(m.fit(x, steps=5, batch_size=4, progress=False)) == 5
    assert len(m.history["loss"]) == 11  # history accumulates over calls


def test_default_is_200_epochs():
    m = dgmlang.compile(MEAN)
    assert len(m.fit(torch.zeros(3), batch_size=2, progress=False)) == 400


def test_loss_is_per_data_point_with_the_minibatch_scaled_by_n_over_b():
    m = dgmlang.compile(MEAN)
    mu = float(m.model.params.value("mu").detach())
    x = torch.full((12,), 2.0)
    for batch_size in (3, 12):
        loss = dgmlang.compile(MEAN).fit(x, steps=1, batch_size=batch_size, lr=1e-6, progress=False)[0]
        exact = -torch.distributions.Normal(mu, 1.0).log_prob(torch.tensor(2.0))
        assert loss == pytest.approx(float(exact), rel=1e-5)


def test_fit_learns_and_is_reproducible_under_a_seed():
    x = torch.randn(64, generator=torch.Generator().manual_seed(0)) + 3.0
    first = dgmlang.compile(MEAN)
    losses = first.fit(x, steps=150, batch_size=16, lr=0.1, seed=3, progress=False)
    again = dgmlang.compile(MEAN).fit(x, steps=150, batch_size=16, lr=0.1, seed=3, progress=False)
    assert losses == again
    assert float(first.model.params.value("mu").detach()) == pytest.approx(float(x.mean()), abs=0.1)


def test_validation_is_scored_every_epoch(capsys):
    m = dgmlang.compile(TINY)
    x = data_of(m, 12)["x"]
    m.fit(x, epochs=3, batch_size=5, validation={"x": x[:4]}, seed=0, progress=True)
    assert len(m.history["validation"]) == 3 and all(math.isfinite(v) for v in m.history["validation"])
    assert "loss=" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options, message",
    [
        ({"epochs": 1, "steps": 1}, "epochs or steps, not both"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"num_particles": 1.5}, "num_particles must be a positive integer"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"objective": "elbow"}, "unknown objective 'elbow'"),
    ],
)
def test_fit_option_mistakes(options, message):
    with pytest.raises(DGMUsageError, match=message):
        dgmlang.compile(MEAN).fit(torch.zeros(4), progress=False, **options)


def test_bad_data_is_refused_before_training():
    m = dgmlang.compile(TINY)
    before = state(m)
    with pytest.raises(DGMDataError, match="row 1, column 0 is infinite"):
        m.fit(torch.tensor([[0.0, 0.0], [float("inf"), 1.0]]), steps=1, progress=False)
    assert all(torch.equal(before[k], v) for k, v in state(m).items()) and not m.fitted


COUNTS = """
model counts {
    input  n : int
    input  j : int
    data   k[2]
    latent z
    const  shift = [0.0, 1.0, -1.0]
    z ~ Normal(0, 1)
    k ~ Binomial(n, logits = z + shift[j])
}
"""
BAD_LABEL = r"input 'k' \(int\): row 1 holds 3, but onehot\(k, 3\) takes 0..2"


@pytest.mark.parametrize("entry", ["fit", "validation", "log_prob", "invert", "sample"])
def test_a_label_outside_its_onehot_is_a_data_error_in_every_entry_point(entry):
    m = dgmlang.compile(COND)
    good = {"x": torch.zeros(3, 2), "k": torch.tensor([0, 1, 2])}
    bad = {"x": torch.zeros(3, 2), "k": torch.tensor([0, 3, 2])}
    before = state(m)
    calls = {
        "fit": lambda: m.fit(bad, steps=1, progress=False),
        "validation": lambda: m.fit(good, steps=1, validation=bad, progress=False),
        "log_prob": lambda: m.log_prob(bad, num_samples=2),
        "invert": lambda: m.invert(bad, num_samples=2),
        "sample": lambda: m.sample(3, {"k": bad["k"]}),
    }
    with pytest.raises(DGMDataError, match=BAD_LABEL) as info:
        calls[entry]()
    assert "(the use at <string>:7:23)" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in state(m).items()) and not m.fitted


@pytest.mark.parametrize("entry", ["fit", "log_prob", "invert"])
def test_binomial_counts_from_an_input_total_count_and_indices_are_checked_row_by_row(entry):
    m = dgmlang.compile(COUNTS)
    good = {"n": torch.tensor([4, 2]), "j": torch.tensor([0, 2]), "k": torch.tensor([[4, 0], [1, 2]])}
    getattr(m, entry)(good, **({"steps": 1, "progress": False} if entry == "fit" else {"num_samples": 2}))
    over = {**good, "k": torch.tensor([[4, 0], [1, 3]])}
    outside = {**good, "j": torch.tensor([0, 3])}
    for data, message in ((over, "data variable 'k' (Binomial): row 1, column 1 holds 3, more than "
                                 "its total_count (input 'n' holds 2 in row 1)"),
                          (outside, "input 'j' (int): row 1 holds 3, but it indexes a dimension of size 3")):
        with pytest.raises(DGMDataError) as info:
            getattr(m, entry)(data, **({"steps": 1, "progress": False} if entry == "fit"
                                       else {"num_samples": 2}))
        assert message in str(info.value)
    with pytest.raises(DGMDataError, match="input 'n' \\(int\\): row 0 holds -1, but it is the total_count"):
        m.sample(2, {"n": -1, "j": 0})


def bomb(m, monkeypatch, make_value, after_calls: int):
    """Make the training loss subtract `make_value()` (as a `pyro.factor` of that value in the
    model would) from call `after_calls` on, on the fast and the general path alike."""
    calls = []
    objective = m.objective

    def patched(*args):
        loss = objective(*args)

        def bombed(batch, size):
            value = loss(batch, size)
            calls.append(1)
            return value - make_value() if len(calls) > after_calls else value

        return bombed

    monkeypatch.setattr(m, "objective", patched)


def test_an_infinite_loss_stops_training_naming_the_step_and_keeps_the_last_good_parameters(monkeypatch):
    m = dgmlang.compile(TINY)
    x = data_of(m, 8)["x"]
    bomb(m, monkeypatch, lambda: torch.tensor(-math.inf), after_calls=3)
    losses = m.fit(x, steps=3, batch_size=4, seed=0, progress=False)
    good = state(m)
    with pytest.raises(DGMTrainingError, match="training stopped at step 1: the loss is (nan|inf)") as info:
        m.fit(x, steps=5, batch_size=4, seed=0, progress=False)
    assert "keeps the parameters from before this step" in str(info.value)
    assert all(torch.equal(good[k], v) for k, v in state(m).items())
    assert m.history["loss"] == losses


def test_a_nan_gradient_stops_training_too(monkeypatch):
    m = dgmlang.compile(TINY)
    x = data_of(m, 8)["x"]
    good = state(m)
    bomb(m, monkeypatch, lambda: (m.model.params.value("mu") * 0.0).sqrt().sum(), after_calls=1)
    with pytest.raises(DGMTrainingError, match="step 2: the gradient of model.params.mu_unconstrained is not finite"):
        m.fit(x, steps=3, batch_size=8, seed=0, progress=False)
    assert not all(torch.equal(good[k], v) for k, v in state(m).items())  # step 1 did update
    assert all(torch.isfinite(v).all() for v in state(m).values())


@pytest.mark.parametrize("bad", ["loss", "gradient"])
def test_a_failure_on_the_first_update_blames_the_model_or_the_data_not_the_lr(monkeypatch, bad):
    m = dgmlang.compile(TINY)
    x = data_of(m, 8)["x"]
    if bad == "loss":
        bomb(m, monkeypatch, lambda: torch.tensor(-math.inf), after_calls=0)
    else:
        bomb(m, monkeypatch, lambda: (m.model.params.value("mu") * 0.0).sqrt().sum(), after_calls=0)
    with pytest.raises(DGMTrainingError, match="training stopped at step 1") as info:
        m.fit(x, steps=3, batch_size=8, seed=0, progress=False)
    text = str(info.value)
    assert "it failed on the first step, before any update: check the model's parameters" in text
    assert "and the data" in text and "lr" not in text and not m.fitted
    # once the model has been updated, a later failure may be the step size
    monkeypatch.undo()
    m.fit(x, steps=1, batch_size=8, seed=0, progress=False)
    bomb(m, monkeypatch, lambda: torch.tensor(-math.inf), after_calls=0)
    with pytest.raises(DGMTrainingError, match="step 1: the loss") as info:
        m.fit(x, steps=1, batch_size=8, seed=0, progress=False)
    assert "try a smaller lr" in str(info.value)

def test_iwae_objective_trains_and_refuses_a_model_it_cannot_serve():
    m = dgmlang.compile(TINY)
    losses = m.fit(data_of(m, 16)["x"], steps=5, batch_size=8, num_particles=4, objective="iwae",
                   seed=0, progress=False)
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
    semi = dgmlang.compile(SEMI)
    with pytest.raises(DGMUsageError, match="latent 'y': it is a discrete latent enumerated in the guide"):
        semi.fit(data_of(semi, 8)["x"], steps=1, objective="iwae", progress=False)


def test_pyro_param_store_plays_no_part():
    m = dgmlang.compile(TINY)
    x = data_of(m, 8)["x"]
    m.fit(x, steps=2, progress=False)
    other = dgmlang.compile(TINY)
    before = state(m)
    pyro.clear_param_store()
    other.fit(x, steps=3, lr=0.1, progress=False)
    m.fit(x, steps=1, lr=1e-9, progress=False)
    assert all(torch.allclose(before[k], v, atol=1e-6) for k, v in state(m).items())


# ---------------------------------------------------------------- sample


def test_sample_shapes_inputs_and_seeds():
    m = dgmlang.compile(COND)
    out = m.sample(5, {"k": 2}, seed=1)
    assert set(out) == {"x", "z"} and out["x"].shape == (5, 2) and out["z"].shape == (5,)
    assert torch.equal(out["x"], m.sample(5, {"k": torch.full((5,), 2)}, seed=1)["x"])
    assert not torch.equal(out["x"], m.sample(5, {"k": 2}, seed=2)["x"])
    state_before = torch.random.get_rng_state()
    m.sample(5, {"k": 2}, seed=1)
    assert torch.equal(state_before, torch.random.get_rng_state())  # a seed leaves the global stream alone
    with pytest.raises(DGMDataError, match="no values for the input"):
        m.sample(5)
    with pytest.raises(DGMUsageError, match="n must be a positive integer"):
        m.sample(0, {"k": 1})


def test_sample_draws_globals_from_the_prior_before_fitting_and_the_guide_after():
    m = dgmlang.compile(LINREG)
    u = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    prior = torch.stack([m.sample(1, {"u": u[:1]}, seed=s)["b"] for s in range(200)])
    assert 6.0 < float(prior.std()) < 14.0  # b ~ Normal(0, 10)
    y = u @ torch.tensor([1.0, -1.0, 0.5]) + 2.0
    m.fit({"u": u, "y": y}, steps=300, batch_size=200, lr=0.05, seed=0, progress=False)
    out = m.sample(4, {"u": u[:4]}, seed=0)
    assert out["w"].shape == (3,) and out["b"].shape == () and out["y"].shape == (4,)
    posterior = torch.stack([m.sample(1, {"u": u[:1]}, seed=s)["b"] for s in range(50)])
    assert float(posterior.std()) < 1.0 and abs(float(posterior.mean()) - 2.0) < 0.5


# ---------------------------------------------------------------- invert and log_prob


def test_invert_shapes_and_observed_entries_kept():
    m = dgmlang.compile(TINY)
    x = data_of(m, 6)["x"]
    out = m.invert(x, num_samples=7, seed=0)
    assert out["z"].shape == (7, 6, 2) and out["x"].shape == (7, 6, 2)
    assert torch.equal(out["x"], x.expand(7, 6, 2))
    partial = x.clone()
    partial[1, 0] = float("nan")
    mask = {"x": torch.ones(6, 2, dtype=torch.bool)}
    mask["x"][4, 1] = False
    out = m.invert(partial, mask=mask, num_samples=7, seed=0)
    filled = out["x"]
    assert torch.isfinite(filled).all() and filled[:, 1, 0].std() > 0 and filled[:, 4, 1].std() > 0
    keep = torch.ones(6, 2, dtype=torch.bool)
    keep[1, 0] = keep[4, 1] = False
    assert torch.equal(filled[:, keep], x[keep].expand(7, -1))
    assert torch.equal(filled, m.invert(partial, mask=mask, num_samples=7, seed=0)["x"])


def test_invert_with_globals_and_inputs():
    m = dgmlang.compile(LINREG)
    u = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1.0, float("nan"), 0.0, 2.0, float("nan")])
    out = m.invert({"u": u, "y": y}, num_samples=4, seed=0)
    assert out["w"].shape == (4, 3) and out["b"].shape == (4,) and out["y"].shape == (4, 5)
    assert torch.isfinite(out["y"]).all() and torch.equal(out["y"][:, 0], torch.ones(4))


def test_invert_and_log_prob_with_a_latent_enumerated_in_the_guide():
    m = dgmlang.compile(SEMI)
    x = data_of(m, 4)["x"]
    m.fit(x, steps=2, progress=False)
    out = m.invert(x, num_samples=6, seed=0)
    assert out["y"].shape == (6, 4) and out["z"].shape == (6, 4, 2)
    assert set(out["y"].unique().tolist()) <= {0, 1, 2}
    assert torch.isfinite(m.log_prob(x, num_samples=20, seed=0)).all()


def test_log_prob_is_per_point_reproducible_and_scores_outliers_low():
    m = dgmlang.compile(TINY)
    x = data_of(m, 50)["x"]
    m.fit(x, steps=100, batch_size=50, lr=0.05, seed=0, progress=False)
    scores = m.log_prob(torch.cat([x[:3], torch.tensor([[40.0, -40.0]])]), num_samples=100, seed=0)
    assert scores.shape == (4,) and torch.isfinite(scores).all()
    assert float(scores[3]) < float(scores[:3].min()) - 100
    assert torch.equal(m.log_prob(x[:3], num_samples=100, seed=0), m.log_prob(x[:3], num_samples=100, seed=0))


def test_log_prob_refuses_infinite_entries():
    # NaN is a missing entry, marginalized here (tests/test_missing.py); infinity never valid
    m = dgmlang.compile(TINY)
    with pytest.raises(DGMDataError, match="is infinite"):
        m.log_prob(torch.tensor([[0.0, float("inf")]]))


def test_log_prob_matches_the_exact_marginal_whatever_the_chunks(monkeypatch):
    m = dgmlang.compile(TINY)
    x = data_of(m, 64)["x"]
    m.fit(x, steps=300, batch_size=64, lr=0.03, seed=0, progress=False)
    x = x[:6]
    mu = m.model.params.value("mu").detach()
    exact = torch.distributions.Normal(mu, math.sqrt(1.25)).log_prob(x).sum(-1)  # x = z + mu + noise
    assert torch.allclose(m.log_prob(x, num_samples=2000, seed=0), exact, atol=0.05)
    monkeypatch.setattr(weights, "CHUNK_CELLS", 700)  # 1 point and 700 particles at a time
    assert torch.allclose(m.log_prob(x, num_samples=2000, seed=0), exact, atol=0.05)


BIG = """
model big {
    data   x[65536]
    latent z
    z ~ Normal(0, 1)
    x ~ Normal(z, 1)
}
"""


def record_weighing(monkeypatch):
    """Every importance-weighting pass posterior.py makes, as (particles, batch, Weights)."""
    calls = []
    real = posterior.importance_weights

    def recorded(model, batch, *, particles, **options):
        result = real(model, batch, particles=particles, **options)
        calls.append((particles, batch, result))
        return result

    monkeypatch.setattr(posterior, "importance_weights", recorded)
    return calls


def cells(calls):
    """(particles, rows) of each recorded pass."""
    return [(p, next(iter(batch.values())).shape[0]) for p, batch, _ in calls]


@pytest.mark.filterwarnings("ignore::dgmlang.errors.DGMWarning")  # an untrained guide: it may say so
def test_invert_and_log_prob_weigh_a_big_data_point_a_chunk_of_particles_at_a_time(monkeypatch):
    # 1,000 proposals of 65,536 values each were weighed at once: 4 rows took ~4.5 GB
    m = dgmlang.compile(BIG)
    values = weights.values_per_row(m)
    assert values == 65537 and weights.chunk_plan(2, posterior.SIR_PROPOSALS, values) == (1, 255)
    x = m.sample(2, seed=0)["x"]
    calls = record_weighing(monkeypatch)
    out = m.invert(x, num_samples=5, seed=0)
    assert out["z"].shape == (5, 2) and torch.isfinite(out["z"]).all()
    assert max(p * r for p, r in cells(calls)) * values <= weights.CHUNK_VALUES
    assert sum(p * r for p, r in cells(calls)) == 2 * posterior.SIR_PROPOSALS  # each proposal once
    calls.clear()
    assert torch.isfinite(m.log_prob(x, num_samples=300, seed=0)).all()
    assert cells(calls) == [(255, 1), (45, 1), (255, 1), (45, 1)]


def test_resampling_in_chunks_draws_each_proposal_in_proportion_to_its_weight(monkeypatch):
    m = dgmlang.compile(TINY)  # unfitted, and x far from the prior: very uneven weights
    monkeypatch.setattr(weights, "CHUNK_VALUES", 100 * weights.values_per_row(m))  # 10 chunks
    calls = record_weighing(monkeypatch)
    z = m.invert(torch.tensor([[3.0, -3.0]]), num_samples=20000, seed=0)["z"][:, 0]
    assert cells(calls) == [(100, 1)] * 10
    log_w = torch.cat([w.local[:, 0] for _, _, w in calls])
    proposals = torch.cat([w.guide_trace.nodes["z"]["value"][:, 0] for _, _, w in calls])
    which = (z[:, None, :] == proposals[None]).all(-1).float().argmax(1)  # each draw's proposal
    assert torch.equal(proposals[which], z)
    chunk_share = torch.bincount(which // 100, minlength=10) / len(z)
    expected = log_w.reshape(10, 100).logsumexp(1).softmax(0)
    assert (chunk_share - expected).abs().max() < 0.02
    assert (expected - 0.1).abs().max() > 0.1  # the check can fail: the chunks weigh unevenly


@pytest.mark.parametrize("per_chunk", [8, 64])  # within one draw's 32 proposals; two draws' at once
def test_resampling_in_chunks_with_globals_keeps_each_draw_to_its_own_proposals(per_chunk, monkeypatch):
    m = dgmlang.compile("""
model hier {
    data   x[3]
    global g
    latent z
    g ~ Normal(0, 1)
    z ~ Normal(g, 1)
    x ~ Normal(z, 0.5)
}""")
    monkeypatch.setattr(weights, "CHUNK_VALUES", per_chunk * weights.values_per_row(m))
    calls = record_weighing(monkeypatch)
    x = torch.tensor([[0.0, 1.0, 2.0], [-1.0, 0.0, -2.0]])
    out = m.invert(x, num_samples=3, seed=0)
    assert cells(calls) == ([(8, 1)] * 12 if per_chunk == 8 else [(64, 1), (32, 1)]) * 2
    for d in range(3):
        for row in range(2):  # draw d's proposals at this row: 32, and its z is one of them
            own = [w.guide_trace.nodes["z"]["value"].flatten()[w.guide_trace.nodes["g"]["value"].flatten() == out["g"][d]]
                   for _, batch, w in calls if torch.equal(batch["x"][0], x[row])]
            own = torch.cat(own)
            assert len(own) == 32 and (own == out["z"][d, row]).any()


# ---------------------------------------------------------------- checkpoints


def test_save_is_atomic_and_keeps_history(tmp_path):
    m = dgmlang.compile(TINY)
    m.fit(data_of(m, 8)["x"], steps=3, progress=False)
    path = tmp_path / "tiny.pt"
    m.save(path)
    m.save(path)  # overwriting works too
    assert os.listdir(tmp_path) == ["tiny.pt"]
    loaded = dgmlang.load_fitted(path)
    assert loaded.fitted and loaded.history == m.history and loaded.guide_plan == m.guide_plan
    assert loaded.source == TINY
    assert not dgmlang.load_fitted(_saved(dgmlang.compile(TINY), tmp_path / "new.pt")).fitted


def _saved(m, path):
    m.save(path)
    return path


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(DGMCheckpointError, match="no checkpoint file"):
        dgmlang.load_fitted(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(DGMCheckpointError, match="is not a dgmlang checkpoint"):
        dgmlang.load_fitted(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(DGMCheckpointError, match="unexpected contents"):
        dgmlang.load_fitted(tmp_path / "other.pt")


def _rewrite(path, change):
    """Change a saved payload and store it with a matching digest (as a tamperer could)."""
    payload = torch.load(path, weights_only=True)
    change(payload)
    payload["digest"] = checkpoint.payload_digest(payload)
    torch.save(payload, path)


def test_a_newer_format_is_refused_clearly(tmp_path):
    path = _saved(dgmlang.compile(TINY), tmp_path / "m.pt")

    def newer(payload):
        meta = json.loads(payload["metadata"])
        meta["format_version"] = checkpoint.FORMAT_VERSION + 1
        payload["metadata"] = json.dumps(meta)

    _rewrite(path, newer)
    with pytest.raises(DGMCheckpointError, match=f"format {checkpoint.FORMAT_VERSION + 1}") as info:
        dgmlang.load_fitted(path)
    assert "upgrade dgmlang" in str(info.value)


def test_parameters_that_do_not_fit_the_source_are_refused(tmp_path):
    path = _saved(dgmlang.compile(TINY), tmp_path / "m.pt")
    _rewrite(path, lambda p: p.__setitem__("source", TINY.replace("mu", "nu")))
    with pytest.raises(DGMCheckpointError, match="do not fit model 'tiny'"):
        dgmlang.load_fitted(path)


def test_a_checkpoint_records_the_versions_and_reads_back_without_compiling(tmp_path):
    m = dgmlang.compile(TINY)
    path = _saved(m, tmp_path / "m.pt")
    meta = json.loads(torch.load(path, weights_only=True)["metadata"])
    assert meta["dgmlang_version"] == dgmlang.__version__ and meta["torch_version"] == torch.__version__
    saved = checkpoint.read(path)
    assert saved.source == TINY and saved.model == "tiny" and not saved.fitted
    assert set(saved.model_state) == set(m.model.state_dict())


# ---------------------------------------------------------------- the layout


def test_the_compiled_model_takes_the_checked_models_facts_and_the_graph_is_built_once(monkeypatch):
    import dgmlang.facts
    import dgmlang.graph
    from dgmlang.frontend import check_source, compile_checked

    calls = []
    build = dgmlang.graph.build_graph

    def counting(ir):
        calls.append(ir.name)
        return build(ir)

    monkeypatch.setattr(dgmlang.graph, "build_graph", counting)
    monkeypatch.setattr(dgmlang.facts, "build_graph", counting)
    m = dgmlang.compile(SEMI)
    assert calls == ["semi"]
    checked = check_source(SEMI)[0]
    compiled = compile_checked(checked, source=SEMI, filename="<semi>")
    assert compiled.facts is checked.facts and compiled.facts.graph is checked.graph
    assert m.roles.model_enumerated == () and m.roles.guide_enumerated == ("y",)
    assert m.roles.data == ("x",) and m.roles.guide_locals == ("y", "z")




# ---------------------------------------------------------------- issue 11: data beyond the model

POSITIVE = """
model positive {
    data   g[2]
    latent z
    z ~ Normal(0, 1)
    g ~ Gamma(2, exp(z))
}
"""


def entry_call(m, entry, data):
    if entry == "fit":
        return m.fit(data, steps=1, progress=False)
    return getattr(m, entry)(data, num_samples=2)


@pytest.mark.parametrize("entry", ["fit", "log_prob", "invert"])
def test_values_beyond_float32_are_refused_naming_variable_row_and_column(entry):
    import numpy as np

    m = dgmlang.compile(TINY)
    data = {"x": np.array([[0.0, 1.0], [1e300, 0.0]])}
    with pytest.raises(DGMDataError, match=r"data variable 'x' \(Normal\): row 1, column 0 holds 1e\+300, "
                                           r"beyond the range of float32"):
        entry_call(m, entry, data)
    assert not m.fitted


def test_sample_refuses_inputs_beyond_float32():
    m = dgmlang.compile(LINREG)
    inputs = {name: torch.full((2, *m.ir.variable(name).shape), 1e300, dtype=torch.float64)
              for name in m.ir.names("input")}
    with pytest.raises(DGMDataError, match="row 0.* holds 1e\\+300, beyond the range of float32"):
        m.sample(2, inputs)


@pytest.mark.parametrize("entry", ["fit", "log_prob", "invert"])
def test_gamma_data_at_zero_is_refused_before_it_scores_minus_inf(entry):
    m = dgmlang.compile(POSITIVE)
    entry_call(m, entry, {"g": torch.tensor([[1.0, 2.0], [0.5, 0.1]])})
    with pytest.raises(DGMDataError, match=r"data variable 'g' \(Gamma\): row 1, column 1 holds 0, "
                                           r"outside its support\n    hint: expected a number > 0"):
        entry_call(m, entry, {"g": torch.tensor([[1.0, 2.0], [0.5, 0.0]])})


def test_binomial_count_above_its_input_total_count_is_named_in_invert_with_missing_entries():
    m = dgmlang.compile(COUNTS)
    nan = float("nan")
    base = {"n": torch.tensor([4, 2]), "j": torch.tensor([0, 2])}
    # a missing entry is not compared; an observed one in the same row is
    m.invert({**base, "k": torch.tensor([[4.0, 0.0], [nan, 2.0]])}, num_samples=2)
    with pytest.raises(DGMDataError, match=r"data variable 'k' \(Binomial\): row 1, column 1 holds 3, more "
                                           r"than its total_count \(input 'n' holds 2 in row 1\)"):
        m.invert({**base, "k": torch.tensor([[4.0, 0.0], [nan, 3.0]])}, num_samples=2)
    with pytest.raises(DGMDataError, match="row 1, column 1 holds 3, more than its total_count"):
        m.invert({**base, "k": torch.tensor([[4.0, 0.0], [1.0, 3.0]])},
                 mask={"k": torch.tensor([[True, True], [False, True]])}, num_samples=2)


def test_log_prob_is_never_silently_minus_inf():
    m = dgmlang.compile(MEAN)
    scores = m.log_prob(torch.tensor([0.0, 1e3]), num_samples=4)
    assert torch.isfinite(scores).all()
    with pytest.raises(DGMDataError) as info:
        m.log_prob(torch.tensor([0.0, 1e20, 2.0, -1e20]), num_samples=4)
    text = str(info.value)
    assert text.startswith("log_prob: the log-likelihood of rows 1, 3 is "), text
    assert "log p of 'x' is not finite at data rows 1, 3" in text and "hint:" in text
    assert info.value.rows == [1, 3]


def test_log_prob_names_the_rows_where_a_distribution_argument_overflows():
    import numpy as np

    m = dgmlang.compile("""
model scaled {
    input  s : positive
    data   g
    latent z
    z ~ Normal(0, 1)
    g ~ Gamma(2, exp(z) * s)
}""")
    assert torch.isfinite(m.log_prob({"s": np.ones(3), "g": np.ones(3)}, num_samples=4)).all()
    with pytest.raises(DGMDataError) as info:
        m.log_prob({"s": np.array([1.0, 1e19, 1.0]), "g": np.ones(3)}, num_samples=4)
    assert str(info.value).startswith("log_prob: the log-likelihood of row 1 is ") and info.value.rows == [1]


def test_compiling_leaves_the_cycle_collector_as_it_found_it():
    """The collector is paused while a model's modules are built, and restored after."""
    import gc
    source = "model m { data x\n latent z\n z ~ Normal(0, 1)\n x ~ Normal(z, 1) }"
    assert gc.isenabled()
    dgmlang.compile(source)
    assert gc.isenabled()
    gc.disable()
    try:
        dgmlang.compile(source)
        assert not gc.isenabled()
    finally:
        gc.enable()
