"""A character-level language model: a gru over the text so far, its likelihood exact.

`char_lm.dgm` reads the characters one at a time (`let h[t] = cell(h[t - 1], onehot(x[t - 1],
V))`) and predicts each next one from the gru's state through a linear readout. Every
variable is observed, so `fit` maximizes the exact likelihood and `log_prob` is one pass (no
guide, no particles). The text is `pydoc_data.topics` (the topics of Python's `help()`,
shipped with CPython), cut into sequences of 64 characters; its last 5% is held out. We
report bits per character on the held-out tail and write a few samples, drawn one
character at a time. benchmarks/char_lm.py sets the same model beside a hand-written
PyTorch GRU.

    python examples/char_lm.py            # full scale: 600 steps, about 2 minutes on one core
    python examples/char_lm.py --quick
"""
import math
import time

import torch
from _common import HERE, options

import dgmlang
from dgmlang.datasets import Text, pydoc_text


def extra(parser):
    parser.add_argument("--steps", type=int, help="training steps (default 600; 5 with --quick)")


args = options(__doc__.splitlines()[0], epochs=0, extra=extra)
steps = args.steps or (5 if args.quick else 600)
torch.set_num_threads(1)
text = pydoc_text(64)
test = text.test[:20] if args.quick else text.test
model = dgmlang.load(HERE / "char_lm.dgm")
start = time.perf_counter()
losses = model.fit({"x": text.train}, steps=steps, batch_size=32, lr=3e-3, seed=args.seed, progress=False)
print(f"fitted char_lm for {steps} steps (batch 32, Adam 3e-3) in {time.perf_counter() - start:.0f} s")
log_p = model.log_prob({"x": test})
bpc = -float(log_p.sum()) / (test.numel() * math.log(2))
print(f"held-out tail: {test.numel():,} characters, {bpc:.3f} bits per character "
      f"(uniform over 98 codes: {math.log2(98):.2f})")
for row in model.sample(3, seed=args.seed)["x"]:
    print("sample:", repr(Text.decode(row)))
