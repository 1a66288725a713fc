"""A character-level language model, dgmlang against the same model written by hand in
PyTorch (issue 14): bits per character on the held-out tail, and wall time per step.

The model is `examples/char_lm.dgm` with the gru's state size set by ``--hidden`` (128): a
gru over one-hot characters (V = 98 codes, `dgmlang.datasets.CHARS`), a linear readout of
its state giving the next character's logits (the first character's from the zero state).
The hand-written model is `nn.GRU(98, hidden)` and `nn.Linear(hidden, 98)`, initialised by
torch's defaults as dgmlang's `GRUCell` and `Linear` are. Both train on the same sequences of
64 characters of `pydoc_data.topics` (`dgmlang.datasets.pydoc_text`: the last 5% held out),
with Adam (``--lr`` 3e-3), ``--batch`` 32 sequences per step for ``--steps`` 1,500 steps,
seed 0, each epoch a shuffled pass; one torch thread. Bits per character: minus the exact
log-likelihood of every held-out character (each sequence's first one included) over
(characters x ln 2). The time per step is the fit's wall time over its steps.

Usage: ``python benchmarks/char_lm.py [--hidden 128] [--steps 1500] [--batch 32] [--lr 3e-3]``
(about 2.5 minutes on one busy core at the defaults)
"""
from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path

import torch
from torch import nn

import dgmlang
from dgmlang.datasets import pydoc_text

MODEL = Path(__file__).resolve().parents[1] / "examples" / "char_lm.dgm"
V = 98


class HandLM(nn.Module):
    """The same model by hand: nn.GRU over the one-hot characters, a linear readout."""

    def __init__(self, hidden: int):
        super().__init__()
        self.gru = nn.GRU(V, hidden, batch_first=True)
        self.out = nn.Linear(hidden, V)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per sequence, (n,)."""
        states, _ = self.gru(nn.functional.one_hot(x[:, :-1], V).float())
        states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)  # h[0] = 0
        log_p = torch.log_softmax(self.out(states), -1)
        return log_p.gather(-1, x.unsqueeze(-1))[..., 0].sum(-1)


def batches(n: int, size: int, steps: int, seed: int):
    """Row indices of each step: shuffled passes over the n rows."""
    gen = torch.Generator().manual_seed(seed)
    done = 0
    while done < steps:
        order = torch.randperm(n, generator=gen)
        for first in range(0, n, size):
            if done == steps:
                return
            yield order[first:first + size]
            done += 1


def bits_per_char(log_p: torch.Tensor, chars: int) -> float:
    return -float(log_p.sum()) / (chars * math.log(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    text = pydoc_text(64)
    print(f"{len(text.train)} training sequences of 64 characters, {text.test.numel():,} held-out characters; "
          f"gru {args.hidden}, {args.steps} steps of {args.batch}, Adam {args.lr}, one thread")

    source = re.sub(r"const H = \d+", f"const H = {args.hidden}", MODEL.read_text())
    model = dgmlang.compile(source)
    start = time.perf_counter()
    model.fit({"x": text.train}, steps=args.steps, batch_size=args.batch, lr=args.lr, seed=args.seed,
              progress=False)
    ours_step = (time.perf_counter() - start) / args.steps
    with torch.no_grad():
        ours = bits_per_char(model.log_prob({"x": text.test}), text.test.numel())

    torch.manual_seed(args.seed)
    hand = HandLM(args.hidden)
    optimizer = torch.optim.Adam(hand.parameters(), lr=args.lr)
    start = time.perf_counter()
    for rows in batches(len(text.train), args.batch, args.steps, args.seed):
        loss = -hand.log_prob(text.train[rows]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    hand_step = (time.perf_counter() - start) / args.steps
    with torch.no_grad():
        theirs = bits_per_char(hand.log_prob(text.test), text.test.numel())

    print(f"{'':28s}{'dgmlang':>10s}{'hand GRU':>10s}")
    print(f"{'held-out bits per character':28s}{ours:10.3f}{theirs:10.3f}   (difference {ours - theirs:+.3f}; "
          f"target within 0.05)")
    print(f"{'ms per training step':28s}{ours_step * 1e3:10.1f}{hand_step * 1e3:10.1f}   "
          f"(ratio {ours_step / hand_step:.2f})")


if __name__ == "__main__":
    main()
