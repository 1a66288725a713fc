"""Runs that survive (issue 12, item 4): a fit continued from its checkpoint — after a
finished part, a stop request, or a load — takes exactly the steps of the uninterrupted
run, bit for bit; a later plain `fit` keeps the optimizer's state unless told otherwise;
resuming with other settings or data is refused."""
import pytest
import torch

import dgmlang
from dgmlang.errors import DGMUsageError

TEXT = """
model tiny {
    param  mu[2]
    data   x[2]
    latent z[2]
    z ~ Normal(0, 1)
    x ~ Normal(mlp(z, hidden = [4]) + mu, 0.5)
}
"""
# 50 rows in batches of 8: 7 steps an epoch, so step 20 stops mid-epoch
X = {"x": torch.randn(50, 2, generator=torch.Generator().manual_seed(0))}
HELD_OUT = {"x": torch.randn(10, 2, generator=torch.Generator().manual_seed(1))}
OPTIONS = dict(batch_size=8, lr=0.01, progress=False, validation=HELD_OUT)


pytestmark = pytest.mark.usefixtures("one_thread")


def parameters(m):
    return {**m.model.state_dict(), **m.guide.state_dict()}


def assert_identical(a, b):
    pa, pb = parameters(a), parameters(b)
    assert pa.keys() == pb.keys()
    different = [k for k in pa if not torch.equal(pa[k], pb[k])]
    assert not different, f"not bit-identical: {different}"
    assert a.history["loss"] == b.history["loss"]


@pytest.fixture(scope="module")
def straight():
    m = dgmlang.compile(TEXT)
    m.fit(X, steps=40, seed=3, **OPTIONS)
    return m


def test_fit_save_load_resume_equals_one_straight_fit(straight, tmp_path):
    first = dgmlang.compile(TEXT)
    first.fit(X, steps=20, seed=3, **OPTIONS)
    first.save(tmp_path / "m.dgmfit")
    resumed = dgmlang.load_fitted(tmp_path / "m.dgmfit")
    resumed.fit(X, steps=20, resume=True, progress=False, validation=HELD_OUT)
    assert_identical(resumed, straight)
    assert resumed.training_state.steps_done == 40 and resumed.training_state.finished


def test_a_stopped_fit_writes_its_checkpoint_and_resumes_to_its_planned_end(straight, tmp_path):
    calls = []
    stopped = dgmlang.compile(TEXT)
    losses = stopped.fit(X, steps=40, seed=3, checkpoint=tmp_path / "run.dgmfit", checkpoint_every=6,
                         should_stop=lambda: calls.append(1) or len(calls) > 13, **OPTIONS)
    assert len(losses) == 13
    resumed = dgmlang.load_fitted(tmp_path / "run.dgmfit")
    assert resumed.training_state.steps_done == 13 and not resumed.training_state.finished
    assert resumed.fit(X, resume=True, progress=False, validation=HELD_OUT)  # the 27 steps left
    assert_identical(resumed, straight)


def test_a_later_fit_keeps_the_optimizer_state_unless_told_otherwise():
    def adam_steps(m):
        return {float(entries["step"]) for entries in m.training_state.optimizer.values()}

    m = dgmlang.compile(TEXT)
    m.fit(X, steps=5, seed=0, **OPTIONS)
    m.fit(X, steps=5, seed=0, **OPTIONS)
    assert adam_steps(m) == {10.0}
    m.fit(X, steps=5, seed=0, fresh_optimizer=True, **OPTIONS)
    assert adam_steps(m) == {5.0}


@pytest.mark.parametrize("change, match", [
    (dict(batch_size=16), "its own batch_size"),
    (dict(fresh_optimizer=True), "fresh_optimizer=True cannot go with it"),
    (dict(data={"x": X["x"] + 1}), "the data differ from the run's"),
    (dict(data={"x": X["x"][:40]}), r"50 rows, now 40"),
    (dict(validation=None), "fitted with validation data"),
    (dict(steps=None), "the run is finished"),
])
def test_resuming_with_other_settings_or_data_is_refused(straight, change, match):
    arguments = {**dict(data=X, steps=1, resume=True, progress=False, validation=HELD_OUT), **change}
    with pytest.raises(DGMUsageError, match=match):
        straight.fit(arguments.pop("data"), **arguments)


def test_resume_needs_a_training_state():
    with pytest.raises(DGMUsageError, match="has none"):
        dgmlang.compile(TEXT).fit(X, steps=1, resume=True, progress=False)


def test_a_resumed_fit_keeps_the_references_of_its_checkpoint_and_never_recalibrates(tmp_path, monkeypatch):
    from dgmlang import training

    far = dgmlang.compile("""
    model far {
        data   x[2]
        latent z
        z ~ Normal(10000, 10)
        x ~ Normal(z, 1)
    }""")
    data = {"x": far.sample(64, seed=0)["x"]}
    far.fit(data, steps=3, seed=1, batch_size=16, progress=False, checkpoint=tmp_path / "far.dgmfit")
    assert float(far.guide.reference("z").loc) == 10000.0  # calibrated before the first step
    loaded = dgmlang.load_fitted(tmp_path / "far.dgmfit")
    assert torch.equal(loaded.guide.reference("z").loc, far.guide.reference("z").loc)
    assert torch.equal(loaded.guide.input_reference("x").loc, far.guide.input_reference("x").loc)

    def recalibrates(*args):
        raise AssertionError("a resumed fit recalibrated")

    monkeypatch.setattr(training, "calibrate", recalibrates)
    loaded.fit(data, steps=2, resume=True, progress=False)
    assert loaded.training_state.steps_done == 5
