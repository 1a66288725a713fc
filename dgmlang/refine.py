"""Semi-amortized inversion: the guide's proposal refined row by row before it is weighed.

The guide's networks map a row to q's parameters in one pass. Where the posterior is much
sharper than what they learned to hit (a renderer's picture pins a colour down to a few
thousandths), importance weights from that q are uneven and the estimate is poor.
`row_offsets` gives every local guide network an offset of its own per row, added to its
output (q's parameters in the guide's units, or a discrete latent's logits), and takes Adam
steps on those offsets alone, the networks fixed, maximizing each row's ELBO (Kim et al.
2018, "Semi-amortized variational autoencoders"; Marino et al. 2018). `invert(refine=steps)`
then draws and weighs proposals from the refined guide as usual: the draws stay importance
weighted, so they are consistent whatever the refinement found.

>>> import dgmlang, torch
>>> m = dgmlang.compile('''
... model m {
...     data   x[50]
...     latent z
...     z ~ Normal(0, 1)
...     x ~ Normal(z, 0.1)
... }''')
>>> data = {"x": m.sample(4, seed=0)["x"]}
>>> draws = m.invert(data, num_samples=20, seed=0, refine=100, progress=False)
>>> bool(((draws["z"].mean(0) - data["x"].mean(-1)).abs() < 0.05).all())
True
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping

import pyro
import torch

from dgmlang.data import Dataset
from dgmlang.devices import to_device
from dgmlang.errors import DGMUsageError

__all__ = ["REFINE_DECAY", "REFINE_LR", "REFINE_ROWS", "SETTLE", "check_refinable", "installed", "refine_lr", "row_offsets"]

#: Adam's step size on the offsets (the networks' outputs are in the guide's reference
#: units, `dgmlang.sites.Reference`, so one rate serves models of any scale) for the first
#: `1 - SETTLE` of the steps, then decayed geometrically to `REFINE_LR * REFINE_DECAY`:
#: large steps reach a row's posterior, small ones settle in it (an Adam step is about the
#: rate long, however noisy the gradient, so a fixed rate would leave q jittering).
REFINE_LR = 0.05
REFINE_DECAY = 0.01
SETTLE = 0.3
#: Rows refined together (each row's offsets move on its own ELBO alone).
REFINE_ROWS = 256


def check_refinable(model: Any, what: str = "invert") -> None:
    """Refuse a model whose local guide includes a site that takes no offset (a structured
    chain's guide: its network runs over the whole sequence)."""
    for site in model.guide.sites:
        if not site.is_global and not site.refinable:
            raise DGMUsageError(
                f"{what}: refine does not serve latent '{site.name}': its guide ({site.kind}) is "
                "not one network output per row",
                hint=f"call {what} without refine for this model")


def row_offsets(model: Any, part: Dataset, steps: int, loss_fn: Callable[[Mapping, int], torch.Tensor],
                *, on_rows: Callable[[int], Any] | None = None) -> dict[str, torch.Tensor]:
    """Per local guide site, the offsets ``(part.n, out_features)`` that `steps` Adam steps
    on each row's ELBO found for the fully observed rows of `part` (on the model's device).
    `loss_fn(batch, size)` is the model's negative ELBO (`dgmlang.training.objective`'s
    "elbo" with one particle). A row whose gradient stops being finite keeps offset 0 (the
    guide as trained). `on_rows(k)` is called after each `REFINE_ROWS` rows (a progress
    bar's update)."""
    sites = [site for site in model.guide.sites if not site.is_global]
    device = model.model.device
    offsets = {site.name: torch.zeros(part.n, site.network.out_features, dtype=model.model.dtype, device=device)
               for site in sites}
    if not sites:
        return offsets
    with torch.enable_grad():
        for start in range(0, part.n, REFINE_ROWS):
            rows = slice(start, min(start + REFINE_ROWS, part.n))
            batch = to_device(part.rows(rows).values, device)
            n = rows.stop - rows.start
            chunk = {name: torch.zeros(n, value.shape[-1], dtype=value.dtype, device=device, requires_grad=True)
                     for name, value in offsets.items()}
            diverged = torch.zeros(n, dtype=torch.bool, device=device)
            optimizer = torch.optim.Adam(list(chunk.values()), lr=REFINE_LR)
            with installed(model.guide, chunk):
                for step in range(steps):
                    optimizer.param_groups[0]["lr"] = refine_lr(step, steps)
                    # the first step checks the distributions' arguments, as fit's first does
                    with pyro.validation_enabled(False) if step else contextlib.nullcontext():
                        loss = loss_fn(batch, n)
                    grads = torch.autograd.grad(loss, list(chunk.values()), allow_unused=True)
                    for offset, grad in zip(chunk.values(), grads):
                        grad = torch.zeros_like(offset) if grad is None else grad
                        diverged |= ~torch.isfinite(grad).all(-1)
                        offset.grad = torch.where(diverged.unsqueeze(-1), 0.0, grad)
                    optimizer.step()
            for name, offset in chunk.items():
                offsets[name][rows] = torch.where(diverged.unsqueeze(-1), 0.0, offset.detach())
            if on_rows is not None:
                on_rows(n)
    return offsets


def refine_lr(step: int, steps: int) -> float:
    """The step size of step `step` (from 0) of `steps`.

    >>> [round(refine_lr(t, 10), 4) for t in (0, 6, 7, 8, 9)]
    [0.05, 0.05, 0.0108, 0.0023, 0.0005]
    """
    settle = SETTLE * steps
    start = steps - settle
    return REFINE_LR if step < start else REFINE_LR * REFINE_DECAY ** ((step - start + 1) / settle)


@contextlib.contextmanager
def installed(guide: Any, offsets: Mapping[str, torch.Tensor] | None,
              rows: slice = slice(None)) -> Iterator[None]:
    """The guide's local sites with `offsets` (by latent; their `rows`) added to their
    networks' outputs while the block runs; None installs nothing."""
    if not offsets:
        yield
        return
    sites = [site for site in guide.sites if site.name in offsets]
    try:
        for site in sites:
            site.offset = offsets[site.name][rows]
        yield
    finally:
        for site in sites:
            site.offset = None
