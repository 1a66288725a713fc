"""Training a compiled model: `fit`, its objectives, one checked step, the held-out loss.

`fit` runs stochastic variational inference on shuffled minibatches: the model's data plate
is told the full size N, so a minibatch's likelihood is scaled by N/B and every step
estimates the whole data set's objective — the ELBO (`Trace_ELBO`, or `TraceEnum_ELBO` when
discrete latents are summed out) or the importance-weighted bound (``objective="iwae"``,
`dgmlang.weights.iwae_bound`). Models the fast path serves (`dgmlang.fastpath`) get the same
estimator without Pyro's per-step tracing. Every step is checked before the optimizer moves:
a NaN or infinite loss or gradient, or a distribution handed invalid parameters, stops
training with a `DGMTrainingError`, the parameters left as they were before that step.
Inside a `torch.distributed` process group the processes share each step's batch and average
their gradients (`dgmlang.distributed`; the lines marked [distributed]).

Every function takes the compiled model (`dgmlang.compiled.CompiledModel`) and reads its
public attributes only: `ir`, `plan`, `model`, `guide`, `facts`, `roles`, `history`,
`fitted`, `name`, `objective`.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Callable

import torch
from tqdm import tqdm

import pyro

from dgmlang import distributed, fastpath
from dgmlang.calibrate import calibrate
from dgmlang.data import Dataset, positive_int, prepare_data
from dgmlang.devices import to_device
from dgmlang.errors import DGMTrainingError, DGMUsageError
from dgmlang.lower import elbo_for
from dgmlang.nets import seeded
from dgmlang.diagnose import argument_check_failed, explain_failure
from dgmlang.weights import check_importance_weighting, iwae_bound

__all__ = ["DEFAULT_EPOCHS", "OBJECTIVES", "failure_hint", "fit", "held_out_loss", "named_parameters",
           "objective", "step"]

#: Training length when neither `epochs` nor `steps` is given.
DEFAULT_EPOCHS = 200
OBJECTIVES = ("elbo", "iwae")

Loss = Callable[..., torch.Tensor]


def fit(model: Any, data: Any, *, epochs: int | None = None, steps: int | None = None,
        batch_size: int = 128, lr: float = 1e-3, num_particles: int = 1, objective: str = "elbo",
        validation: Any = None, seed: int | None = None, progress: bool = True) -> list[float]:
    """Fit `model` (its Pyro model and guide) to `data`; the loss per step, per data point.
    The options are `CompiledModel.fit`'s. The loss comes from ``model.objective(...)``."""
    positive_int("batch_size", batch_size)
    positive_int("num_particles", num_particles)
    if epochs is not None and steps is not None:
        raise DGMUsageError("give epochs or steps, not both")
    if epochs is not None:
        positive_int("epochs", epochs)
    if steps is not None:
        positive_int("steps", steps)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0 or math.isinf(lr):
        raise DGMUsageError(f"lr must be a positive number, not {lr!r}")
    loss_fn = model.objective(objective, num_particles)
    dataset = prepare_data(model.ir, data, purpose="fit", facts=model.facts,
                           dtype=model.model.dtype)
    held_out = None
    if validation is not None:
        held_out = prepare_data(model.ir, validation, purpose="validation", facts=model.facts,
                                dtype=model.model.dtype)

    group = distributed.current()  # [distributed] None outside a process group
    n = dataset.n
    # [distributed] batch_size is per process: a step takes batch_size rows on each process
    rows_per_step = min(batch_size * (1 if group is None else group.size), n)
    steps_per_epoch = math.ceil(n / rows_per_step)
    total = steps if steps is not None else (epochs or DEFAULT_EPOCHS) * steps_per_epoch
    losses: list[float] = []
    if not model.fitted:
        calibrate(model, dataset)  # the guide's reference scales, from the training data
    named = named_parameters(model)
    if group is not None:  # [distributed] every process starts from rank 0's parameters
        group.share_parameters([p for _, p in named] + list(model.guide.buffers()))
    # a model with nothing to learn (fixed distributions only) is scored, not updated
    optimizer = torch.optim.Adam([p for _, p in named], lr=lr) if named else None
    show = progress and (group is None or group.writes_files)  # [distributed] rank 0's bar only
    with seeded(seed), distributed.own_random_stream(group), distributed.shared_failures(group), \
            tqdm(total=total, disable=not show, desc=f"fit {model.name}", unit="step") as bar:
        while len(losses) < total:
            # the data's order is drawn on the CPU, so it is the same on every device
            order = torch.randperm(n, device="cpu") if group is None else group.epoch_order(n)  # [distributed]
            for start in range(0, n, rows_per_step):
                if len(losses) == total:
                    break
                rows = order[start:start + rows_per_step]
                sync = None
                if group is not None:  # [distributed] this process's piece; gradients averaged
                    rows, counted = group.shard(rows)
                    sync = functools.partial(group.reduce, rows=counted)
                batch = to_device(dataset.rows(rows).values, model.model.device)
                loss = step(loss_fn, batch, n, optimizer, named, len(losses) + 1,
                            first_update=not model.fitted, model=model, rows=rows, sync=sync)
                losses.append(loss / n)
                model.history["loss"].append(loss / n)
                model.fitted = True
                bar.set_postfix(loss=f"{loss / n:.4g}", refresh=False)
                bar.update()
            if held_out is not None:
                score = held_out_loss(loss_fn, held_out, rows_per_step)
                model.history["validation"].append(score)
                bar.set_postfix(loss=f"{losses[-1]:.4g}", validation=f"{score:.4g}", refresh=False)
    return losses


def objective(model: Any, name: str, num_particles: int) -> Loss:
    """The training loss ``loss(batch, size)`` (a differentiable scalar, the whole data
    set's negative bound estimated from the minibatch) for the objective `name`.

    Models the fast path serves (see `dgmlang.fastpath`) get the same estimator computed
    without Pyro's per-step tracing; the others, and every error, come from Pyro's path."""
    if name == "iwae":
        check_importance_weighting(model, "objective='iwae'")
    fast = fastpath.build(model.ir, model.plan, model.model, model.guide,
                          objective=name, num_particles=num_particles)
    if fast is not None:
        return fast.loss
    if name == "elbo":
        elbo = elbo_for(model.ir, model.plan, num_particles=num_particles,
                        vectorize_particles=num_particles > 1)

        def loss(batch, size):
            try:
                return elbo.differentiable_loss(model.model, model.guide, batch, size=size)
            except ValueError as err:
                # nothing the loss depends on is learned (no params, or unused ones): Pyro
                # refuses a differentiable loss, so score it plainly and skip the update
                if "cannot be differentiated" not in str(err):
                    raise
                return torch.tensor(elbo.loss(model.model, model.guide, batch, size=size),
                                    device=model.model.device)

        return loss
    if name == "iwae":
        if model.roles.guide_enumerated:
            raise DGMUsageError(
                f"objective='iwae' cannot train latent '{model.roles.guide_enumerated[0]}': it is "
                "a discrete latent enumerated in the guide, and the importance-weighted bound "
                "would need a score-function gradient for it",
                hint="use objective='elbo' for this model",
            )
        return lambda batch, size: -iwae_bound(model, batch, size, num_particles)
    raise DGMUsageError(f"unknown objective {name!r}", hint="use 'elbo' or 'iwae'")


def step(loss_fn: Loss, batch, size: int, optimizer: torch.optim.Optimizer | None,
         named: list[tuple[str, torch.nn.Parameter]], number: int, *, first_update: bool,
         model: Any = None, rows: torch.Tensor | None = None, sync: Callable | None = None) -> float:
    """Step `number` of a fit: the loss on `batch`, checked, then one optimizer update
    (none when there is nothing to learn). `first_update` says whether the model has never
    been updated, which decides the hint of a failure. The loss's value is returned.

    A non-finite loss or gradient stops the fit; with `model` and the batch's data set
    `rows`, the message names the site that went non-finite first and its rows, found by
    recomputing the step after the failure (`dgmlang.diagnose`), never on a healthy step.

    In a process group, `sync` (`dgmlang.distributed.ProcessGroup.reduce`) runs after the
    backward pass: it averages the gradients over the processes and returns the global loss."""
    rng_state = torch.random.get_rng_state()  # the step's draws, to recompute a failure

    def stop(what: str, *, gradient: bool = False) -> DGMTrainingError:
        cause = None
        if model is not None and rows is not None:
            cause = explain_failure(model, batch, rows=rows.tolist(), rng_state=rng_state,
                                    parameters=named if gradient else ())
        message = f"training stopped at step {number}: {what}"
        return DGMTrainingError(message + (f"; {cause}" if cause else ""),
                                hint=failure_hint(first_update=first_update))

    try:
        # Pyro's argument validation finds a model's mistakes on the first step; later
        # steps skip it (it costs up to a fifth of a step) and rely on the finiteness
        # checks below, the data having been validated before training.
        with pyro.validation_enabled(False) if number > 1 else contextlib.nullcontext():
            loss = loss_fn(batch, size)
    except ValueError as err:
        if not argument_check_failed(err):
            raise
        raise DGMTrainingError(
            f"training stopped at step {number}: a distribution got invalid parameters "
            f"({str(err).splitlines()[0]})",
            hint=failure_hint(first_update=first_update),
        ) from None
    value = float(loss.detach())
    if not math.isfinite(value):
        raise stop(f"the loss is {value}")
    learns = optimizer is not None and loss.requires_grad
    if learns:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    if sync is not None:  # [distributed] every process reaches this, learning or not
        value = sync(named if learns else [], value)
    if not learns:
        return value
    if not _gradients_finite(named):
        for name, param in named:
            if param.grad is not None and not bool(torch.isfinite(param.grad).all()):
                optimizer.zero_grad(set_to_none=True)
                raise stop(f"the gradient of {name} is not finite", gradient=True)
    optimizer.step()
    return value


def failure_hint(*, first_update: bool) -> str:
    """What to try when training fails. Before the model's first update nothing has been
    learned yet, so the learning rate cannot be the cause: the model or the data is; after
    updates, they may have gone too far."""
    if first_update:
        return ("it failed on the first step, before any update: check the model's parameters "
                "(their initial values, an unconstrained param where a positive one is needed) "
                "and the data")
    return ("the model keeps the parameters from before this step; try a smaller lr "
            "or check the data")


def held_out_loss(loss_fn: Loss, held_out: Dataset, rows: int) -> float:
    """The objective on held-out data per data point: each chunk estimates the whole
    set's loss (scaled by N/B), averaged with the chunks' sizes as weights."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, held_out.n, rows):
            chunk = held_out.rows(slice(start, start + rows))
            try:
                value = float(loss_fn(chunk.values, held_out.n))
            except ValueError as err:
                if not argument_check_failed(err):
                    raise
                value = math.nan
            if not math.isfinite(value):
                raise DGMTrainingError(
                    f"training stopped: the validation loss is not finite at validation rows "
                    f"{start}..{start + chunk.n - 1} (the last update moved the parameters to "
                    "values the model's distributions cannot take)",
                    hint="try a smaller lr, or check the validation data",
                )
            total += value * chunk.n / held_out.n
    return total / held_out.n


def named_parameters(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters of the model and the guide (each once)."""
    seen: dict[int, tuple[str, torch.nn.Parameter]] = {}
    for prefix, module in (("model", model.model), ("guide", model.guide)):
        for name, param in module.named_parameters():
            seen.setdefault(id(param), (f"{prefix}.{name}", param))
    return list(seen.values())


def _gradients_finite(named: list[tuple[str, torch.nn.Parameter]]) -> bool:
    """Whether every gradient is finite, in one cheap test (a tenth of checking each entry):
    a gradient holding NaN or an infinity has a non-finite sum. A finite gradient whose sum
    overflows fails it too, so the caller confirms entry by entry before stopping."""
    sums = [param.grad.sum() for _, param in named if param.grad is not None]
    return not sums or bool(torch.stack(sums).isfinite().all())
