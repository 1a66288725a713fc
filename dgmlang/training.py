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

The run's state at every step boundary — optimizer state, torch's random state, the epoch's
order and the position in it — can be written to a checkpoint during training and continued
from exactly (`resume=True`; `dgmlang.runstate` holds the state, `dgmlang.checkpoint` the
file), so a stopped or killed run ends bit-identical to an uninterrupted one on the CPU.

Every function takes the compiled model (`dgmlang.compiled.CompiledModel`) and reads its
public attributes only: `ir`, `plan`, `model`, `guide`, `facts`, `roles`, `history`,
`fitted`, `name`, `objective`.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from tqdm import tqdm

import pyro

from dgmlang import compiling, distributed, fastpath, runstate
from dgmlang.calibrate import calibrate
from dgmlang.checkpoint import save as save_checkpoint
from dgmlang.data import Dataset, check_marginalizable, positive_int, prepare_data
from dgmlang.devices import to_device
from dgmlang.errors import DGMTrainingError, DGMUsageError, DGMWarning
from dgmlang.lower import elbo_for
from dgmlang.nets import seeded
from dgmlang.runstate import named_parameters
from dgmlang.sites import Reference
from dgmlang.diagnose import argument_check_failed, explain_failure
from dgmlang.weights import check_importance_weighting, iwae_bound

__all__ = ["AUX_WEIGHT", "DEFAULT_CHECKPOINT_SECONDS", "DEFAULT_EPOCHS", "OBJECTIVES", "failure_hint", "fit", "held_out_loss", "named_parameters",
           "objective", "step"]

#: Weight of the auxiliary classification term, -log q(y | x) on labelled rows, when labels
#: are partly missing (Kingma et al. 2014 use 0.1·N; Pyro's SS-VAE tutorial 46).
AUX_WEIGHT = 46.0
#: Training length when neither `epochs` nor `steps` is given.
DEFAULT_EPOCHS = 200
#: With a `checkpoint` path, `fit` writes it at least this often (seconds) and at the end.
DEFAULT_CHECKPOINT_SECONDS = 60.0
OBJECTIVES = ("elbo", "iwae")

Loss = Callable[..., torch.Tensor]


def fit(model: Any, data: Any, *, mask: Mapping[str, Any] | None = None,
        epochs: int | None = None, steps: int | None = None,
        batch_size: int | None = None, lr: float | None = None, num_particles: int | None = None,
        objective: str | None = None, validation: Any = None, seed: int | None = None,
        progress: bool = True, resume: bool = False, fresh_optimizer: bool = False,
        checkpoint: str | os.PathLike | None = None, checkpoint_every: int | None = None,
        checkpoint_seconds: float | None = DEFAULT_CHECKPOINT_SECONDS,
        should_stop: Callable[[], bool] | None = None,
        aux_weight: float = AUX_WEIGHT, compile: Any = False) -> list[float]:
    """Fit `model` (its Pyro model and guide) to `data`; the loss per step, per data point.
    The options are `CompiledModel.fit`'s. The loss comes from ``model.objective(...)``;
    with `compile`, steps after the run's first come from `dgmlang.compiling`.
    The run's state at the last step boundary is left in ``model.training_state``."""
    check_aux_weight(aux_weight)
    backend = compiling.backend_of(compile)
    given = {"batch_size": batch_size, "lr": lr, "num_particles": num_particles,
             "objective": objective, "seed": seed}
    group = distributed.current()  # [distributed] None outside a process group
    settings = runstate.settings_for(model.training_state, given, resume=resume,
                                     processes=1 if group is None else group.size)
    _check_options(settings, epochs=epochs, steps=steps, resume=resume, fresh_optimizer=fresh_optimizer,
                   checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds)
    labels = [step.latent for step in model.plan.labels]
    dataset = prepare_data(model.ir, data, purpose="fit", allow_missing=True, mask=mask,
                           facts=model.facts, dtype=model.model.dtype)
    check_marginalizable(model.ir, dataset, purpose="fit", facts=model.facts, labels=labels)
    held_out = None
    if validation is not None:
        held_out = prepare_data(model.ir, validation, purpose="validation", allow_missing=True,
                                facts=model.facts, dtype=model.model.dtype)
        check_marginalizable(model.ir, held_out, purpose="validation", facts=model.facts,
                             labels=labels)
    semi = missing_labels(model, dataset) or (missing_labels(model, held_out) if held_out else [])
    if semi:
        check_semi_supervised(model, semi, settings["objective"], purpose="fit")
    loss_fn = (model.objective(settings["objective"], settings["num_particles"], aux_weight=aux_weight)
               if semi else model.objective(settings["objective"], settings["num_particles"]))
    compiled = None if backend is None else _compiled_loss(model, settings, backend, dataset)
    fingerprints = (_fingerprint(dataset), None if held_out is None else _fingerprint(held_out))
    previous = model.training_state
    if resume:
        runstate.check_same_data(previous, *fingerprints)

    n = dataset.n
    # [distributed] batch_size is per process: a step takes batch_size rows on each process
    rows_per_step = min(settings["batch_size"] * settings[runstate.PROCESSES], n)
    steps_per_epoch = math.ceil(n / rows_per_step)
    if steps is not None or epochs is not None or not resume:
        count = steps if steps is not None else (epochs or DEFAULT_EPOCHS) * steps_per_epoch
    else:
        count = previous.planned_steps - previous.steps_done
        if count == 0:
            raise DGMUsageError(f"the run is finished ({previous.steps_done} of {previous.planned_steps} "
                                "steps); there is nothing to resume",
                                hint="give steps= or epochs= to train it further")
    if resume:
        state = previous.advanced(planned_steps=previous.steps_done + count)
        random_state = _restored_rng(previous.rng)
    else:
        state = runstate.TrainingState(
            settings=settings, data=fingerprints[0], validation=fingerprints[1], steps_done=0,
            epochs_done=0, planned_steps=count, position=0, order=None,
            rng=torch.random.get_rng_state(), optimizer={})
        random_state = seeded(seed)
    if not model.fitted:  # never on a resumed run: its references come from its checkpoint
        calibrate(model, dataset)  # the guide's reference scales, from the training data
    named = named_parameters(model)
    if group is not None:  # [distributed] every process starts from rank 0's parameters
        group.share_parameters([p for _, p in named] + list(model.guide.buffers()))
        for module in model.guide.modules():
            if isinstance(module, Reference):
                module.refresh()  # its buffers may now hold rank 0's values
    # a model with nothing to learn (fixed distributions only) is scored, not updated
    optimizer = torch.optim.Adam([p for _, p in named], lr=settings["lr"]) if named else None
    if optimizer is not None and previous is not None and not fresh_optimizer:
        runstate.load_optimizer_state(optimizer, named, previous.optimizer)
    writes = group is None or group.writes_files  # [distributed] rank 0 alone writes checkpoints
    saver = _Checkpointer(model, checkpoint if writes else None, every=checkpoint_every,
                          seconds=checkpoint_seconds)
    losses: list[float] = []
    order, position, epochs_done = state.order, state.position, state.epochs_done
    first = state.steps_done + 1

    def boundary(rng: torch.Tensor | None = None) -> runstate.TrainingState:
        return state.advanced(steps_done=first - 1 + len(losses), epochs_done=epochs_done,
                              position=position, order=order,
                              rng=torch.random.get_rng_state() if rng is None else rng,
                              optimizer=runstate.optimizer_state(optimizer, named))

    def stopping() -> bool:
        if group is not None:  # [distributed] asked on any process, agreed at the last step's check-in
            return group.stopping
        return should_stop is not None and should_stop()

    between_steps, failed = True, None
    resident, device = dataset.resident(), model.model.device  # in-memory columns: batches by indexing
    warmed = False  # whether this fit warmed up its compiled loss
    show = progress and writes  # [distributed] rank 0's bar only
    with random_state, distributed.own_random_stream(group) as restart, distributed.shared_failures(group), \
            tqdm(total=count, disable=not show, desc=f"fit {model.name}", unit="step") as bar:
        try:
            while len(losses) < count:
                if stopping():
                    if losses:  # stopped between steps: the state there, written
                        saver.save(boundary())
                    return losses
                if order is None:  # [distributed] rank 0 draws it, every process gets it
                    # the data's order is drawn on the CPU, so it is the same on every device
                    order = torch.randperm(n, device="cpu") if group is None else group.epoch_order(n)
                    position = 0
                rows = order[position:position + rows_per_step]
                taken = len(rows)
                sync = None
                if group is not None:  # [distributed] this process's piece; gradients averaged
                    rows, counted = group.shard(rows)
                    sync = functools.partial(group.reduce, rows=counted, stop=should_stop)
                restart(first + len(losses))  # [distributed] a process other than rank 0: its draws
                before = torch.random.get_rng_state()
                if resident is not None:
                    batch, observed = {name: v[rows] for name, v in resident.items()}, None
                else:
                    picked = dataset.rows(rows)
                    observed = to_device(picked.observed, device) if dataset.has_missing else None
                    batch = picked.values
                batch = to_device(batch, device)
                between_steps = False
                number = first + len(losses)
                stepped = loss_fn
                if compiled is not None and number > 1:  # the run's first step: eager, validated
                    if not warmed:  # 0 s when an earlier fit compiled it; NaN: it fell back
                        with pyro.validation_enabled(False):  # as the steps run (see `step`)
                            seconds = compiled.warm_up(batch, n, [p for _, p in named])
                        model.history.setdefault("compile_seconds", []).append(
                            math.nan if seconds is None else seconds)
                        warmed = True
                    stepped = compiled.or_else(loss_fn)
                try:
                    loss = step(stepped, batch, n, optimizer, named, number,
                                first_update=not model.fitted, model=model, rows=rows, rng_state=before,
                                sync=sync, mask=observed)
                except DGMTrainingError:  # nothing moved: the state before the step holds
                    failed = boundary(before)
                    raise
                losses.append(loss / n)
                model.history["loss"].append(loss / n)
                model.fitted = True
                position += taken
                between_steps = True
                if show:  # formatting the postfix costs a small model's step a few percent
                    bar.set_postfix(loss=f"{loss / n:.4g}", refresh=False)
                    bar.update()
                if position >= n:
                    order, position, epochs_done = None, 0, epochs_done + 1
                if held_out is not None and (position == 0 or len(losses) == count):
                    _validate(model, loss_fn, held_out, rows_per_step, first - 1 + len(losses), bar)
                saver.after_step(boundary, first - 1 + len(losses))
            saver.save(boundary())
        except BaseException:
            # an interrupt or error inside a step (a KeyboardInterrupt, say) leaves no state to
            # continue from exactly: a later save holds none, a later fit starts Adam afresh
            model.training_state = failed or (boundary() if between_steps else None)
            raise
    return losses


#: compiled losses kept per model, so later fits reuse what an earlier one compiled
_COMPILED: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _compiled_loss(model: Any, settings: Mapping[str, Any], backend: Any,
                   dataset: Dataset) -> "compiling.CompiledLoss | None":
    """The model's compiled fast loss for these settings (made once per model), or None
    with a `DGMWarning` where the step cannot be compiled: a model the fast path does not
    serve, or data with missing entries."""
    name, particles = settings["objective"], settings["num_particles"]
    reason = fastpath.unsupported_reason(model.ir, model.plan, objective=name)
    if reason is None and dataset.has_missing:
        reason = "the data has missing entries"
    fast = None if reason else fastpath.build(model.ir, model.plan, model.model, model.guide,
                                              objective=name, num_particles=particles)
    if fast is None:
        warnings.warn(f"compile=True: the compiled step does not serve this fit "
                      f"({reason or 'the fast path does not serve the model'}); training eagerly",
                      DGMWarning, stacklevel=4)
        return None
    cache = _COMPILED.setdefault(model, {})
    key = (name, particles, backend)
    if key not in cache:
        fast.per_point_terms = True  # one compiled graph for every batch size
        cache[key] = compiling.CompiledLoss(fast.loss, backend, prepare=fast.lowered.evaluator.refresh)
    compiled = cache[key]
    if compiled.failure is not None:
        warnings.warn(f"compile=True: torch.compile could not compile the training step "
                      f"({compiled.failure}); training eagerly", DGMWarning, stacklevel=4)
    return compiled


def _fingerprint(dataset: Dataset) -> dict[str, Any]:
    """The data's fingerprint: its values and which entries are missing, read from the
    sampled rows only (a memory-mapped data set is not read whole)."""
    sample = dataset.rows(runstate.fingerprint_rows(dataset.n))
    masks = {f"{name}:observed": mask for name, mask in sample.observed.items()}
    return runstate.data_fingerprint({**sample.values, **masks}, dataset.n, sampled=True)


def _check_options(settings: dict[str, Any], *, epochs: int | None, steps: int | None, resume: bool,
                   fresh_optimizer: bool, checkpoint_every: int | None,
                   checkpoint_seconds: float | None) -> None:
    positive_int("batch_size", settings["batch_size"])
    positive_int("num_particles", settings["num_particles"])
    if epochs is not None and steps is not None:
        raise DGMUsageError("give epochs or steps, not both")
    if epochs is not None:
        positive_int("epochs", epochs)
    if steps is not None:
        positive_int("steps", steps)
    lr = settings["lr"]
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0 or math.isinf(lr):
        raise DGMUsageError(f"lr must be a positive number, not {lr!r}")
    if resume and fresh_optimizer:
        raise DGMUsageError("resume=True continues the run's optimizer; fresh_optimizer=True "
                            "cannot go with it", hint="leave one of them out")
    if checkpoint_every is not None:
        positive_int("checkpoint_every", checkpoint_every)
    if checkpoint_seconds is not None and (
            not isinstance(checkpoint_seconds, (int, float)) or isinstance(checkpoint_seconds, bool)
            or not checkpoint_seconds > 0 or math.isinf(checkpoint_seconds)):
        raise DGMUsageError(f"checkpoint_seconds must be a positive number or None, not {checkpoint_seconds!r}")


class _Checkpointer:
    """Writes the model with its training state to `path` (when given) every `every` steps
    of the run and whenever `seconds` have passed since the last write; `save` also keeps
    the state on the model."""

    def __init__(self, model: Any, path: str | os.PathLike | None, *, every: int | None,
                 seconds: float | None):
        if path is not None:
            if not isinstance(path, (str, os.PathLike)):
                raise DGMUsageError(f"checkpoint must be a file path, not a {type(path).__name__}")
            folder = Path(path).parent
            if not folder.is_dir():
                raise DGMUsageError(f"cannot write the checkpoint {path}: no folder {folder}",
                                    hint="create the folder first")
        self.model, self.path, self.every, self.seconds = model, path, every, seconds
        self.last = time.monotonic()

    def after_step(self, boundary: Callable[[], "runstate.TrainingState"], steps_done: int) -> None:
        if self.path is None:
            return
        if (self.every is not None and steps_done % self.every == 0) or (
                self.seconds is not None and time.monotonic() - self.last >= self.seconds):
            self.save(boundary())

    def save(self, state: "runstate.TrainingState") -> None:
        self.model.training_state = state
        if self.path is not None:
            try:
                save_checkpoint(self.model, self.path)
            except OSError as err:
                raise DGMUsageError(f"cannot write the checkpoint {self.path}: {err.strerror or err}",
                                    hint="check the disk's free space and the folder's permissions") from None
            self.last = time.monotonic()


@contextlib.contextmanager
def _restored_rng(state: torch.Tensor):
    """Run the block from torch's random state `state`, leaving the caller's stream as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.random.set_rng_state(state)
        yield


def _validate(model: Any, loss_fn: Loss, held_out: Dataset, rows: int, steps_done: int, bar: Any) -> None:
    """Score the validation data into ``history["validation"]``, with random draws of its
    own (seeded by the step count): the training's random stream is not touched, so a run
    takes the same steps with or without validation data, and after a resume."""
    with seeded(steps_done):
        score = held_out_loss(loss_fn, held_out, rows)
    model.history["validation"].append(score)
    bar.set_postfix(loss=f"{model.history['loss'][-1]:.4g}", validation=f"{score:.4g}", refresh=False)


def check_aux_weight(aux_weight: Any) -> None:
    """`aux_weight` must be a finite number >= 0 (a `DGMUsageError` otherwise)."""
    if (not isinstance(aux_weight, (int, float)) or isinstance(aux_weight, bool)
            or not aux_weight >= 0 or math.isinf(aux_weight)):
        raise DGMUsageError(f"aux_weight must be a finite number >= 0, not {aux_weight!r}",
                            hint=f"the default, {AUX_WEIGHT:g}, suits labels missing on most rows; "
                                 "0 leaves the classification term out")


def missing_labels(model: Any, dataset: Dataset) -> list[str]:
    """The labels (`GuidePlan.labels`) with missing entries in `dataset`."""
    return [step.latent for step in model.plan.labels
            if step.latent in dataset.columns and dataset.columns[step.latent].has_missing]


def check_semi_supervised(model: Any, labels: list[str], objective_name: str, *, purpose: str) -> None:
    """Refuse what the semi-supervised bound does not serve (a `DGMUsageError` saying why):
    more than one label with missing entries, a bound other than the ELBO, a model the
    fast path does not serve (it computes the bound, `dgmlang.fastpath`), or discrete
    latents summed out in the model beside the label."""
    if len(labels) > 1:
        raise DGMUsageError(
            f"{purpose}: labels {', '.join(map(repr, labels))} all have missing entries; "
            "semi-supervised training sums out one label at a time",
            hint="give all but one of them in full")
    if objective_name != "elbo":
        raise DGMUsageError(
            f"{purpose}: label '{labels[0]}' has missing entries, which only objective='elbo' "
            "serves (the label is summed out exactly under q)", hint="use objective='elbo'")
    reason = fastpath.unsupported_reason(model.ir, model.plan, objective="elbo")
    if reason is None and model.roles.model_enumerated:
        reason = f"latent '{model.roles.model_enumerated[0]}' is summed out in the model"
    if reason is not None:
        raise DGMUsageError(
            f"{purpose}: label '{labels[0]}' has missing entries, but semi-supervised training "
            f"does not serve this model ({reason})",
            hint="give the label on every row, or drop the rows without one")


def objective(model: Any, name: str, num_particles: int, *, aux_weight: float = 0.0) -> Loss:
    """The training loss ``loss(batch, size)`` (a differentiable scalar, the whole data
    set's negative bound estimated from the minibatch) for the objective `name`.

    Models the fast path serves (see `dgmlang.fastpath`) get the same estimator computed
    without Pyro's per-step tracing; the others, and every error, come from Pyro's path.
    `aux_weight` weighs the classification term of rows whose label is given where a
    batch's labels are partly missing (semi-supervised training; fast path only)."""
    if name == "iwae":
        check_importance_weighting(model, "objective='iwae'")
    fast = fastpath.build(model.ir, model.plan, model.model, model.guide,
                          objective=name, num_particles=num_particles, aux_weight=aux_weight)
    if fast is not None:
        return fast.loss
    if name == "elbo":
        elbo = elbo_for(model.ir, model.plan, num_particles=num_particles,
                        vectorize_particles=num_particles > 1)

        def loss(batch, size, mask=None):
            try:
                return elbo.differentiable_loss(model.model, model.guide, batch, size=size, mask=mask)
            except ValueError as err:
                # nothing the loss depends on is learned (no params, or unused ones): Pyro
                # refuses a differentiable loss, so score it plainly and skip the update
                if "cannot be differentiated" not in str(err):
                    raise
                return torch.tensor(elbo.loss(model.model, model.guide, batch, size=size, mask=mask),
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
        return lambda batch, size, mask=None: -iwae_bound(model, batch, size, num_particles, mask=mask)
    raise DGMUsageError(f"unknown objective {name!r}", hint="use 'elbo' or 'iwae'")


def step(loss_fn: Loss, batch, size: int, optimizer: torch.optim.Optimizer | None,
         named: list[tuple[str, torch.nn.Parameter]], number: int, *, first_update: bool,
         model: Any = None, rows: torch.Tensor | None = None,
         rng_state: torch.Tensor | None = None, sync: Callable | None = None,
         mask: Mapping[str, torch.Tensor] | None = None) -> float:
    """Step `number` of a fit: the loss on `batch`, checked, then one optimizer update
    (none when there is nothing to learn). `first_update` says whether the model has never
    been updated, which decides the hint of a failure. The loss's value is returned.

    A non-finite loss or gradient stops the fit; with `model` and the batch's data set
    `rows`, the message names the site that went non-finite first and its rows, found by
    recomputing the step after the failure (`dgmlang.diagnose`), never on a healthy step.

    In a process group, `sync` (`dgmlang.distributed.ProcessGroup.reduce`) runs after the
    backward pass: it averages the gradients over the processes and returns the global loss.
    `mask` (per data variable, True = observed) marks the batch's missing entries."""
    if rng_state is None:  # the random state the step starts from, to recompute a failure
        rng_state = torch.random.get_rng_state()

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
            loss = loss_fn(batch, size, mask) if mask else loss_fn(batch, size)
    except ValueError as err:
        if not argument_check_failed(err):
            raise
        raise DGMTrainingError(
            f"training stopped at step {number}: a distribution got invalid parameters "
            f"({str(err).splitlines()[0]})",
            hint=failure_hint(first_update=first_update),
        ) from None
    value = loss.item()  # (no `detach` op first: `item` reads the value alone)
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
                observed = chunk.observed
                value = float(loss_fn(chunk.values, held_out.n, observed) if observed
                              else loss_fn(chunk.values, held_out.n))
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


def _gradients_finite(named: list[tuple[str, torch.nn.Parameter]]) -> bool:
    """Whether every gradient is finite, in one cheap test (a tenth of checking each entry):
    a gradient holding NaN or an infinity has a non-finite sum. A finite gradient whose sum
    overflows fails it too, so the caller confirms entry by entry before stopping."""
    sums = [param.grad.sum() for _, param in named if param.grad is not None]
    if not sums:
        return True
    # the sum of the sums is NaN or infinite when any is (or when it overflows: see above);
    # one op and a Python test, where `isfinite` is four ops
    return math.isfinite(float(sums[0] if len(sums) == 1 else torch.stack(sums).sum()))
