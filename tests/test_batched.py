"""Alike guide networks run as one (dgmlang.batched): the same loss and gradients as site by
site, and runs formed only where they may be."""
from __future__ import annotations

import pytest
import torch

import dgmlang
from dgmlang import batched, fastpath
from dgmlang.calibrate import calibrate
from dgmlang.data import prepare_data


def wide(latents: int, *, mean: float = 0.0, hidden: str = "") -> str:
    """`latents` independent latents, each observed twice."""
    lines = [f"model wide {{"]
    for i in range(latents):
        lines += [f"    latent z{i}{hidden}", f"    data   x{i}[2]"]
    for i in range(latents):
        lines += [f"    z{i} ~ Normal({mean}, 1)", f"    x{i} ~ Normal(z{i}, 0.5)"]
    return "\n".join(lines + ["}"]) + "\n"


def losses_and_grads(model, batch, monkeypatch, *, runs: bool, objective: str = "elbo",
                     particles: int = 1):
    monkeypatch.setattr(batched, "MIN_RUN", 16 if runs else 10**9)
    fast = fastpath.build(model.ir, model.plan, model.model, model.guide, objective=objective,
                          num_particles=particles)
    assert any(isinstance(item, tuple) for item in fast._guide_items) == runs
    torch.manual_seed(0)
    loss = fast.loss(batch, 100)
    params = [p for p in model.guide.parameters() if p.requires_grad]
    return loss.detach(), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("mean, objective, particles", [(0.0, "elbo", 1), (5000.0, "elbo", 1),
                                                        (0.0, "iwae", 3), (0.0, "elbo", 2)])
def test_a_run_gives_the_loss_and_gradients_of_its_sites_one_by_one(mean, objective, particles, monkeypatch):
    """Batches of 32 rows: one draw of (sites x 32) normals is the same random numbers as one
    draw of 32 per site in turn (torch fills 16 at a time), so the two paths agree exactly
    up to the rounding of a batched matrix product. A mean of 5,000 makes the references
    non-neutral."""
    model = dgmlang.compile(wide(20, mean=mean))
    sample = model.sample(32, seed=1)
    batch = {name: sample[name] for name in model.ir.names("data")}
    calibrate(model, prepare_data(model.ir, batch, purpose="fit", facts=model.facts))
    assert any(not site.reference.neutral for site in model.guide.sites) == (mean != 0)
    loss, grads = losses_and_grads(model, batch, monkeypatch, runs=True, objective=objective, particles=particles)
    loss_one, grads_one = losses_and_grads(model, batch, monkeypatch, runs=False, objective=objective,
                                           particles=particles)
    torch.testing.assert_close(loss, loss_one, rtol=1e-5, atol=1e-3)
    for grad, grad_one in zip(grads, grads_one):
        torch.testing.assert_close(grad, grad_one, rtol=1e-4, atol=1e-4)


def test_vector_latents_in_a_run(monkeypatch):
    text = wide(20).replace("[2]", "[2, 3]")
    for i in range(20):
        text = text.replace(f"latent z{i}\n", f"latent z{i}[3]\n")
    model = dgmlang.compile(text)
    sample = model.sample(32, seed=1)
    batch = {name: sample[name] for name in model.ir.names("data")}
    loss, grads = losses_and_grads(model, batch, monkeypatch, runs=True)
    loss_one, grads_one = losses_and_grads(model, batch, monkeypatch, runs=False)
    torch.testing.assert_close(loss, loss_one, rtol=1e-5, atol=1e-3)
    for grad, grad_one in zip(grads, grads_one):
        torch.testing.assert_close(grad, grad_one, rtol=1e-4, atol=1e-4)


def test_runs_form_only_where_sites_are_alike_and_independent():
    model = dgmlang.compile(wide(20))
    assert [len(item) for item in batched.alike_runs(model.guide.sites)] == [20]
    # a different hidden width splits the run; fewer than MIN_RUN sites stay one by one
    odd = dgmlang.compile(wide(20).replace("latent z10\n", "latent z10 guide(hidden = [8])\n"))
    items = batched.alike_runs(odd.guide.sites)
    assert [len(item) if isinstance(item, tuple) else 1 for item in items] == [1] * 20
    # a chain: each latent reads the one before, so no two are drawn together
    chain = "model chain {\n" + "".join(f"latent z{i}\ndata x{i}\n" for i in range(20)) + "z0 ~ Normal(0, 1)\n" \
        + "".join(f"z{i} ~ Normal(z{i - 1}, 1)\n" for i in range(1, 20)) \
        + "".join(f"x{i} ~ Normal(z{i}, 1)\n" for i in range(20)) + "}"
    assert not any(isinstance(item, tuple) for item in batched.alike_runs(dgmlang.compile(chain).guide.sites))
    # positive latents (a transform to their support) and other families are not batched
    positive = dgmlang.compile(wide(20).replace("Normal(0.0, 1)", "LogNormal(0.0, 1)"))
    assert not any(isinstance(item, tuple) for item in batched.alike_runs(positive.guide.sites))


def test_fitting_a_wide_model_with_runs_learns_each_posterior():
    """20 latents, each seen through 2 observations of sd 0.5: the exact posterior mean is
    8/9 of their mean (sd 1/3); the fitted guide (drawn as one run) finds it for every latent."""
    model = dgmlang.compile(wide(20))
    sample = model.sample(500, seed=2)
    data = {name: sample[name] for name in model.ir.names("data")}
    model.fit(data, steps=1500, batch_size=100, lr=0.02, seed=0, progress=False)
    probe = {name: value[:50] for name, value in data.items()}
    draws = model.invert(probe, num_samples=200, seed=0, progress=False)
    for i in range(20):
        exact = 8 / 9 * probe[f"x{i}"].mean(-1)
        assert float((draws[f"z{i}"].mean(0) - exact).abs().max()) < 0.12, i


def test_refine_draws_a_run_site_by_site_with_its_offsets():
    model = dgmlang.compile(wide(20))
    sample = model.sample(8, seed=3)
    data = {name: sample[name] for name in model.ir.names("data")}
    draws = model.invert(data, num_samples=50, seed=0, progress=False, refine=150)
    for i in range(20):
        exact = 8 / 9 * data[f"x{i}"].mean(-1)  # posterior sd 1/3
        assert float((draws[f"z{i}"].mean(0) - exact).abs().max()) < 0.25, i
