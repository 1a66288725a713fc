"""`fit(compile=True)`: the fast path's training loss run through `torch.compile`.

The fast loss (`dgmlang.fastpath`) is plain tensor arithmetic over the model's networks and
sites, so TorchDynamo captures it whole and a backend (inductor by default) compiles its
forward and backward graphs; the optimizer step stays eager. `CompiledLoss` holds the compiled
function and the eager one it falls back to:

* **One graph for every batch size.** The batch dim of every batch tensor is marked dynamic,
  and the loss keeps its local terms per data point (``FastLoss.per_point_terms``), so no
  reduction spans the batch and event dims at once (inductor's CPU code picks its summation
  by a reduction's length, which would tie the code to the batch size). The ragged last
  batch of an epoch runs the same code: no recompile.
* **Warm-up.** `warm_up` compiles by running one step's loss and gradient on the first batch
  the compiled step will see, under a forked random state with the gradients discarded, so
  training's random stream and parameters are untouched; its seconds are the warm-up time
  (`fit` records them in ``history["compile_seconds"]``).
* **Fallback.** Where it cannot compile — no C++ compiler, a backend error, anything the
  warm-up raises — `warm_up` issues a `DGMWarning` saying why and the loss runs eagerly;
  models the fast path does not serve, and batches with missing entries, run eagerly too
  (`fit` warns before training).

The compiled step may draw its random numbers with the backend's generator (which may differ
from eager torch's), so a compiled run is not bit-identical to an eager one, and resuming
one is exact only up to those draws; its estimator is the same.

>>> import dgmlang, torch
>>> m = dgmlang.compile("model m { data x[2]\\n latent z[2]\\n z ~ Normal(0, 1)\\n x ~ Normal(z, 0.5) }")
>>> losses = m.fit(torch.zeros(10, 2), steps=3, batch_size=4, compile="eager", progress=False, seed=0)
>>> len(losses), len(m.history["compile_seconds"])
(3, 1)
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Mapping

import torch

from dgmlang.errors import DGMUsageError, DGMWarning

__all__ = ["BACKEND", "CompiledLoss", "backend_of"]

#: `torch.compile`'s backend for ``compile=True``.
BACKEND = "inductor"


def backend_of(compile: Any) -> Any:
    """The `torch.compile` backend `fit`'s `compile` option names: True is `BACKEND`, a
    string a registered backend ("inductor", "aot_eager", "eager"), a callable a custom
    backend; None or False is no compiling (None returned).

    >>> backend_of(True), backend_of("aot_eager"), backend_of(False)
    ('inductor', 'aot_eager', None)
    """
    if compile is None or compile is False:
        return None
    if compile is True:
        return BACKEND
    if isinstance(compile, str):
        import torch._dynamo

        if compile not in torch._dynamo.list_backends(exclude_tags=()):
            raise DGMUsageError(f"compile={compile!r} is not a torch.compile backend",
                                hint="use True (inductor), 'aot_eager' or 'eager'")
        return compile
    if callable(compile):
        return compile
    raise DGMUsageError(f"compile must be True, False, a backend name or a backend function, "
                        f"not {compile!r}")


class CompiledLoss:
    """The fast loss `eager` (a ``FastLoss.loss``) compiled with `backend`; call it as the
    loss (``loss(batch, size, mask=None)``). Until `warm_up` succeeds, and after it fails,
    it is the eager loss."""

    def __init__(self, eager: Callable[..., torch.Tensor], backend: Any,
                 prepare: Callable[[], None] | None = None):
        self.eager = eager
        self.backend = backend
        #: run eagerly before each compiled call (the evaluator's `refresh`, True when it
        #: dropped its cached constants): the caches are then refilled by one eager loss
        #: without gradients, so the graph's guards always find the same cached values and
        #: an eager, validated step between compiled ones never causes a recompile
        self.prepare = prepare
        self.compiled = torch.compile(eager, backend=backend)
        #: seconds the warm-up took (None before it ran); `failure`: why it fell back
        self.warmup_seconds: float | None = None
        self.failure: str | None = None

    @property
    def active(self) -> bool:
        """Whether calls run the compiled function (warmed up, not fallen back)."""
        return self.warmup_seconds is not None and self.failure is None

    def __call__(self, batch: Mapping[str, torch.Tensor], size: int, mask=None) -> torch.Tensor:
        if mask or not self.active:
            return self.eager(batch, size, mask) if mask else self.eager(batch, size)
        self._prime(batch, size)
        return self.compiled(_dynamic_batch(batch), size)

    def _prime(self, batch: Mapping[str, torch.Tensor], size: int) -> None:
        """Refill the caches `prepare` dropped (an eager loss: no gradients, random state kept)."""
        if self.prepare is not None and self.prepare():
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                self.eager(batch, size)

    def or_else(self, loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """Itself when active, else `loss` (`fit`'s eager loss, which sums its terms as
        the uncompiled fit does, so a fallen-back run equals an eager one)."""
        return self if self.active else loss

    def warm_up(self, batch: Mapping[str, torch.Tensor], size: int,
                parameters: list[torch.nn.Parameter]) -> float | None:
        """Compile: one loss and gradient on `batch`, random state forked, the gradients
        of `parameters` cleared after. Returns the seconds it took, or None when compiling
        failed (a `DGMWarning` says why; the loss stays eager)."""
        if self.warmup_seconds is not None:
            return 0.0  # compiled by an earlier fit
        if self.failure is not None:
            return None
        start = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                # tracing's own notes (lru_cache wrappers, .grad reads inside torch) are not
                # the user's business; the model's warnings came from the eager first step
                warnings.simplefilter("ignore")
                self._prime(batch, size)
                loss = self.compiled(_dynamic_batch(batch), size)
                if loss.requires_grad:
                    loss.backward()
        except Exception as error:  # no compiler, a backend error: train eagerly
            cause = getattr(error, "inner_exception", None) or error  # a backend's own error
            self.failure = f"{type(cause).__name__}: {_first_line(cause)}"
            warnings.warn(f"compile=True: torch.compile could not compile the training step "
                          f"({self.failure}); training eagerly", DGMWarning, stacklevel=4)
            return None
        finally:
            for param in parameters:
                param.grad = None
        self.warmup_seconds = time.perf_counter() - start
        return self.warmup_seconds


def _dynamic_batch(batch: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """`batch` with each tensor's batch dim marked dynamic (one graph for every size)."""
    import torch._dynamo

    for value in batch.values():
        if value.dim() and value.shape[0] > 1:
            torch._dynamo.mark_dynamic(value, 0)
    return batch


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else "no message"
