"""Recurrent lets and autoregressive data sequences (dgmlang.recurrence): exact log-densities
against the same model written by hand in torch with the same weights (nn.GRU), sampling
shapes and lengths, fitting, the checker's errors, and the DSL."""
import math

import pytest
import torch
from torch import nn

import dgmlang
import dgmlang.dsl as dg
from dgmlang.errors import DGMError

LM = """
model lm {
    const T = 10
    const V = 5
    input  n : int
    data   x[T] : int
    net cell = gru(hidden = 6)
    net out  = mlp(hidden = [])
    let h[0] = zeros(6)
    for t in 1:T { let h[t] = cell(h[t - 1], onehot(x[t - 1], V)) }
    x[0] ~ Categorical(logits = zeros(V))
    for t in 1:n { x[t] ~ Categorical(logits = out(h[t]) + zeros(V)) }
}
"""


def hand_lm(m, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """log p(x) of LM by hand: nn.GRU with the cell's weights, a linear readout."""
    cell = m.model.net("cell").cell
    gru = nn.GRU(5, 6, batch_first=True).double()
    with torch.no_grad():
        gru.weight_ih_l0.copy_(cell.weight_ih)
        gru.weight_hh_l0.copy_(cell.weight_hh)
        gru.bias_ih_l0.copy_(cell.bias_ih)
        gru.bias_hh_l0.copy_(cell.bias_hh)
    readout = m.model.net("out").layers[0]
    inputs = nn.functional.one_hot(x[:, :-1].long(), 5).double()
    states, _ = gru(inputs)  # h[1..T-1]
    logits = readout(states)
    log_p = torch.log_softmax(logits, -1).gather(-1, x[:, 1:].long().unsqueeze(-1))[..., 0]
    steps = torch.arange(1, x.shape[1])
    log_p = torch.where(steps < n.unsqueeze(-1), log_p, torch.zeros(()).double())
    return log_p.sum(-1) - math.log(5)


def test_log_prob_is_the_hand_written_gru():
    m = dgmlang.compile(LM).to(dtype="float64")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (7, 10), generator=gen)
    n = torch.tensor([10, 1, 4, 9, 10, 2, 7])
    got = m.log_prob({"x": x, "n": n})
    want = hand_lm(m, x, n)
    assert torch.allclose(got, want.detach(), rtol=1e-10, atol=1e-10)
    # steps from a row's length on are padding: changing them changes nothing
    padded = torch.where(torch.arange(10) < n.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype))
    assert torch.allclose(m.log_prob({"x": padded, "n": n}), got)


def test_sampling_shapes_lengths_and_fit():
    m = dgmlang.compile(LM)
    n = torch.tensor([10, 3, 1, 6])
    draws = m.sample(4, {"n": n}, seed=0)["x"]
    assert draws.shape == (4, 10) and draws.dtype == torch.long  # class labels, as data is given
    assert bool(((draws >= 0) & (draws < 5)).all())
    assert bool((draws[1, 3:] == 0).all()) and bool((draws[2, 1:] == 0).all())
    # ancestral: a model that copies its last symbol samples a constant sequence
    copy = dgmlang.compile("""
    model copy {
        data x[8] : int
        x[0] ~ Categorical(logits = zeros(3))
        for t in 1:8 { x[t] ~ Categorical(logits = onehot(x[t - 1], 3) * 30) }
    }""")
    path = copy.sample(6, seed=1)["x"]
    assert bool((path == path[:, :1]).all())
    # fitting maximizes the exact likelihood: it learns to copy
    fitted = dgmlang.compile(LM)
    data = {"x": path[:, :1].repeat(10, 10).long() % 5, "n": torch.full((60,), 10)}
    before = fitted.log_prob(data).mean()
    fitted.fit(data, steps=150, lr=0.05, batch_size=60, seed=0, progress=False)
    assert fitted.log_prob(data).mean() > before + 5


IMITATION = """
model policy {
    const T = 6
    input  obs[T, 3]
    data   act[T, 2]
    param  w[2, 3]
    let g[0] = obs[0]
    for t in 1:T { let g[t] = 0.5 * g[t - 1] + obs[t] }
    for t in 0:T { act[t] ~ Normal(matmul(w, g[t]), 0.3) }
}
"""


def test_inputs_read_by_step_and_lets_of_lets():
    m = dgmlang.compile(IMITATION).to(dtype="float64")
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(4, 6, 3, generator=gen, dtype=torch.float64)
    act = torch.randn(4, 6, 2, generator=gen, dtype=torch.float64)
    w = m.model.param("w")
    g, states = obs[:, 0], [obs[:, 0]]
    for t in range(1, 6):
        g = 0.5 * g + obs[:, t]
        states.append(g)
    loc = torch.einsum("ij,ntj->nti", w, torch.stack(states, 1))
    want = torch.distributions.Normal(loc, 0.3).log_prob(act).sum((-1, -2))
    assert torch.allclose(m.log_prob({"obs": obs, "act": act}), want.detach(), atol=1e-10)
    assert m.sample(3, {"obs": obs[:3]}, seed=0)["act"].shape == (3, 6, 2)


def errors_of(text: str) -> str:
    with pytest.raises(DGMError) as err:
        dgmlang.compile(text)
    return str(err.value)


def lm_with(let_lines: str, draw_lines: str = "for t in 1:8 { x[t] ~ Categorical(logits = out(h[t]) + zeros(3)) }",
            nets: str = "net cell = gru(hidden = 4)") -> str:
    return f"""model m {{
    data x[8] : int
    {nets}
    net out = mlp(hidden = [])
    {let_lines}
    x[0] ~ Categorical(logits = zeros(3))
    {draw_lines}
}}"""


@pytest.mark.parametrize("lets, draws, nets, message", [
    ("let h[0] = zeros(4)\n for t in 1:8 { let h[t] = cell(h[t - 1], onehot(x[t], 3)) }", None, None,
     "read each other at the same step"),
    ("let h[0] = zeros(4)\n for t in 1:8 { let h[t] = cell(h[t - 1], onehot(x[t + 1], 3)) }", None, None,
     "'x[t + 1]' reads the future: step 2 comes after step 1"),
    ("let h[0] = zeros(4)\n for t in 0:8 { let h[t] = cell(h[t - 1], onehot(x[t - 1], 3)) }", None, None,
     "step 0 of 'h' is defined twice"),
    ("for t in 1:8 { let h[t] = cell(h[t - 1], onehot(x[t - 1], 3)) }", None, None,
     "step 0 of 'h' is never defined"),
    ("for t in 0:8 { let h[t] = cell(h[t - 1], onehot(x[t - 1], 3)) }", None, None,
     "'h[t - 1]' is step -1 at the first step 0: before the sequence starts"),
    ("let h[0] = zeros(4)\n for t in 2:8 { let h[t] = cell(h[t - 1], onehot(x[t - 1], 3)) }", None, None,
     "step 1 of 'h' is never defined"),
    ("let h[0] = zeros(4)\n for t in 1:6 { let h[t] = cell(h[t - 1], onehot(x[t - 1], 3)) }", None, None,
     "'h[t]' is step 7 at the last step 7, but 'h' has 6 steps"),
    ("let h[0] = zeros(4)\n for t in 1:8 { let h[t] = cell(h[t - 1]) }", None, None,
     "gru 'cell' takes 2 arguments, the state and the input, but 1 is given"),
    ("let h[0] = zeros(5)\n for t in 1:8 { let h[t] = cell(h[t - 1], onehot(x[t - 1], 3)) }", None, None,
     "gru 'cell' has hidden = 4, but its state 'h[t - 1]' has 5 values"),
    ("let h[0] = zeros(4)\n for t in 1:8 { let h[t] = cell(h[t - 1], onehot(x[t - 1], 3)) + zeros(2, 4) }",
     None, None, "step 1 of 'h' is shaped [2, 4], but its steps at line 5 are shaped [4]"),
    ("let h[0] = zeros(4)\n for t in 1:8 { let h[t] = cell(h[t - 1], onehot(x[t - 1], 3)) }",
     "for t in 1:8 { x[t] ~ Categorical(logits = out(h) + zeros(3)) }", None,
     "not supported yet: reading the whole recurrent let 'h'"),
    ("let h[0] = zeros(4)\n for t in 1:8 { let h = cell(h[t - 1], onehot(x[t - 1], 3)) }", None, None,
     "a let inside a loop defines one step: 'h' has no step index"),
])
def test_checker_errors(lets, draws, nets, message):
    text = lm_with(lets, *([draws] if draws else []), **({"nets": nets} if nets else {}))
    assert message in errors_of(text)


def test_dsl_builds_the_same_model():
    m = dg.Model("lm")
    T, V = m.const("T", 10), m.const("V", 5)
    n = m.input("n", type="int")
    x = m.data("x", [T], type="int")
    cell = m.net("cell", dg.gru(hidden=6))
    out = m.net("out", dg.mlp(hidden=[]))
    h = m.let("h", dg.zeros(6), step=0)
    with m.loop("t", 1, T) as t:
        m.let(h[t], cell(h[t - 1], dg.onehot(x[t - 1], V)))
    m.draw(x[0], dg.Categorical(logits=dg.zeros(V)))
    with m.loop("t", 1, n) as t:
        m.draw(x[t], dg.Categorical(logits=out(h[t]) + dg.zeros(V)))
    from dgmlang.check import check
    from dgmlang.parse import parse
    (text_ir,) = check(parse(LM, "lm.dgm"))
    assert m.ir() == text_ir


def test_a_plain_gru_recurrence_runs_fused_and_step_by_step_alike():
    """`score` runs cell(h[t - 1], input) as one nn.GRU call; `draw`, which cannot, steps the
    cell: both must give the same states (here through log_prob against a forced step loop)."""
    m = dgmlang.compile(LM).to(dtype="float64")
    site = m.model.site("x")
    m.model.evaluator.refresh()
    x = torch.randint(0, 5, (3, 10), generator=torch.Generator().manual_seed(2)).double()
    fused = site.recur({}, x, 1)["h"]
    series = site.series({}, x, 1)
    stepped = {"h": []}
    for t in range(10):
        site.let_step("h", t, {}, series, stepped)
    for a, b in zip(fused, stepped["h"]):
        assert torch.allclose(a.expand_as(b), b, atol=1e-12)
