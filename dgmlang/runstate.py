"""The resumable state of a training run: what `fit` needs, besides the parameters, to
continue exactly where it stopped.

A `TrainingState` holds the run's settings (batch size, learning rate, particles,
objective, seed, and how many processes trained it: `dgmlang.distributed`), a fingerprint of its data, how far it got (steps and epochs done, the
steps planned), the epoch's row order and the position in it, torch's random state at that
step boundary, and the Adam state of every parameter by name. `fit` keeps one on the model
(``CompiledModel.training_state``); a checkpoint stores it (format 3: `encode` gives the
JSON part and the tensors, `decode` checks and reads them back).

Every random draw of a step (the minibatch order, the guide's samples) comes from torch's
CPU generator — Pyro samples through torch, and dgmlang's training uses neither Python's
`random` nor numpy's — so that generator's state is the whole random state. In a process
group it is rank 0's state: the other processes restart their streams at every step from
the seed, their rank and the step's number (`dgmlang.distributed.own_random_stream`).

>>> import torch
>>> rows = {"x": torch.arange(6.0).reshape(3, 2)}
>>> data_fingerprint(rows, 3) == data_fingerprint({"x": rows["x"].clone()}, 3)
True
>>> data_fingerprint(rows, 3) == data_fingerprint({"x": rows["x"] + 1}, 3)
False
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import torch

from dgmlang.errors import DGMCheckpointError, DGMUsageError

__all__ = ["DEFAULTS", "FINGERPRINT_ROWS", "PROCESSES", "TrainingState", "data_fingerprint", "decode", "encode", "fingerprint_rows",
           "load_optimizer_state", "named_parameters", "optimizer_state", "settings_for"]

#: `fit`'s settings when not given.
DEFAULTS = {"batch_size": 128, "lr": 1e-3, "num_particles": 1, "objective": "elbo"}
#: The setting that says how many processes trained the run (1 when a file does not say).
PROCESSES = "processes"
#: The data fingerprint hashes at most this many rows, evenly spaced, first and last included.
FINGERPRINT_ROWS = 1024
_RNG_BYTES = torch.random.get_rng_state().numel()


@dataclass(frozen=True)
class TrainingState:
    """Where a run stands at a step boundary (see the module docstring). `order` is the
    current epoch's row order, None between epochs (the next step draws a new one);
    `position` the index in it of the next step's first row."""

    settings: Mapping[str, Any]
    data: Mapping[str, Any]
    validation: Mapping[str, Any] | None
    steps_done: int
    epochs_done: int
    planned_steps: int
    position: int
    order: torch.Tensor | None
    rng: torch.Tensor
    optimizer: Mapping[str, Mapping[str, torch.Tensor]]

    @property
    def finished(self) -> bool:
        """Whether the run took every step it planned."""
        return self.steps_done >= self.planned_steps

    def advanced(self, **changes: Any) -> "TrainingState":
        return replace(self, **changes)


def named_parameters(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters of the model and the guide (each once), named ``model.NAME`` and
    ``guide.NAME``: the names the optimizer state is stored under."""
    seen: dict[int, tuple[str, torch.nn.Parameter]] = {}
    for prefix, module in (("model", model.model), ("guide", model.guide)):
        for name, param in module.named_parameters():
            seen.setdefault(id(param), (f"{prefix}.{name}", param))
    return list(seen.values())


def fingerprint_rows(n: int) -> torch.Tensor:
    """The rows a fingerprint of `n` rows reads: up to `FINGERPRINT_ROWS`, evenly spaced,
    first and last included."""
    if not n:
        return torch.zeros(0, dtype=torch.int64, device="cpu")
    return torch.linspace(0, n - 1, min(n, FINGERPRINT_ROWS), device="cpu").round().long().unique()


def data_fingerprint(values: Mapping[str, torch.Tensor], n: int, *, sampled: bool = False) -> dict[str, Any]:
    """A cheap fingerprint of data (variable -> tensor, n rows): the row count, and a SHA-256
    over every variable's name, dtype and shape and the bytes of the `fingerprint_rows`
    (all rows of a smaller data set). With `sampled`, `values` hold those rows only (data
    read a batch at a time is never read whole). Resuming with other data is refused; a
    change confined to rows outside the sample goes unnoticed."""
    rows = fingerprint_rows(n)
    hasher = hashlib.sha256(b"dgmlang-data\x00")
    for name in sorted(values):
        tensor = values[name]
        hasher.update(f"{name}|{tensor.dtype}|{(int(n), *tensor.shape[1:])}|".encode())
        sample = (tensor if sampled else tensor[rows]).detach().cpu().contiguous()
        hasher.update(sample.reshape(-1).view(torch.uint8).numpy().tobytes()
                      if sample.dtype != torch.bool else sample.numpy().tobytes())
    return {"rows": int(n), "sample_sha256": hasher.hexdigest()}


def settings_for(previous: TrainingState | None, given: Mapping[str, Any], *, resume: bool,
                 processes: int = 1) -> dict[str, Any]:
    """The settings of a fit by `processes` processes: the given ones (None = the default),
    or with `resume` the stored run's, where a given one, and the number of processes, must
    agree with it."""
    if not resume:
        settings = {key: DEFAULTS[key] if given.get(key) is None else given[key] for key in DEFAULTS}
        settings["seed"] = given.get("seed")
        settings[PROCESSES] = processes
        return settings
    if previous is None:
        raise DGMUsageError(
            "resume=True needs a model with a training state, and this one has none",
            hint="resume a model loaded with dgmlang.load_fitted from a checkpoint that fit wrote "
                 "(format 3 or later), or fit without resume=True")
    for key, value in given.items():
        if value is not None and value != previous.settings[key]:
            raise DGMUsageError(
                f"resume=True continues the run with its own {key} ({previous.settings[key]!r}), "
                f"not {value!r}",
                hint=f"leave {key} out to resume, or fit without resume=True to start over")
    stored = previous.settings[PROCESSES]
    if processes != stored:
        raise DGMUsageError(
            f"cannot resume: the run was trained by {stored} process{'es' if stored > 1 else ''}, "
            f"and this fit runs in {processes}",
            hint=f"resume it in {stored} process{'es' if stored > 1 else ''} (dgm fit --resume RUN "
                 f"--nproc {stored}, or a torch.distributed group of {stored}), which continues it exactly")
    return dict(previous.settings)


def check_same_data(previous: TrainingState, data: Mapping[str, Any],
                    validation: Mapping[str, Any] | None) -> None:
    """Resuming needs the run's data (and validation data): compare the fingerprints."""
    for what, stored, now in (("data", previous.data, data), ("validation data", previous.validation, validation)):
        if stored == now:
            continue
        if stored is None or now is None:
            given = "was" if stored is not None else "was not"
            raise DGMUsageError(f"cannot resume: the run {given} fitted with validation data, "
                                f"and this fit {'was not' if now is None else 'was'} given any",
                                hint="resume with the validation data the run was started with")
        detail = (f"{stored['rows']} rows, now {now['rows']}" if stored["rows"] != now["rows"]
                  else "the same number of rows, different values")
        raise DGMUsageError(f"cannot resume: the {what} differ from the run's ({detail})",
                            hint=f"resume with the {what} the run was started with, or fit anew")


# ---------------------------------------------------------------- the optimizer


def optimizer_state(optimizer: torch.optim.Optimizer | None,
                    named: list[tuple[str, torch.nn.Parameter]]) -> dict[str, dict[str, torch.Tensor]]:
    """The optimizer's per-parameter state by parameter name (the tensors themselves)."""
    if optimizer is None:
        return {}
    by_param = optimizer.state
    return {name: dict(by_param[param]) for name, param in named if by_param.get(param)}


def load_optimizer_state(optimizer: torch.optim.Optimizer, named: list[tuple[str, torch.nn.Parameter]],
                         state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Put a stored per-parameter state (by name, copied) into `optimizer`, keeping its
    hyperparameters."""
    template = optimizer.state_dict()
    template["state"] = {index: {key: tensor.clone() for key, tensor in state[name].items()}
                         for index, (name, _) in enumerate(named) if name in state}
    optimizer.load_state_dict(template)


def check_optimizer_fits(path: Path, state: TrainingState,
                         named: list[tuple[str, torch.nn.Parameter]]) -> None:
    """Every stored optimizer entry belongs to a parameter of the model, shaped like it."""
    shapes = {name: param.shape for name, param in named}
    for name, entries in state.optimizer.items():
        if name not in shapes:
            raise DGMCheckpointError(f"{path}: the training state holds optimizer state for "
                                     f"'{name[:80]}', which the model does not have")
        for key, tensor in entries.items():
            if key != "step" and tensor.shape != shapes[name]:
                raise DGMCheckpointError(
                    f"{path}: the optimizer's '{key[:40]}' for '{name}' is shaped "
                    f"{list(tensor.shape)}, the parameter {list(shapes[name])}")


# ---------------------------------------------------------------- in a checkpoint


def encode(state: TrainingState) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON metadata and the tensors of `state`, for a checkpoint."""
    metadata = {
        "settings": dict(state.settings),
        "data": dict(state.data),
        "validation": None if state.validation is None else dict(state.validation),
        "steps_done": state.steps_done,
        "epochs_done": state.epochs_done,
        "planned_steps": state.planned_steps,
        "position": state.position,
        "optimizer": "adam",
    }
    tensors = {
        "rng": state.rng,
        "order": state.order if state.order is not None else torch.zeros(0, dtype=torch.int64),
        "optimizer": {name: dict(entries) for name, entries in state.optimizer.items()},
    }
    return metadata, tensors


def decode(path: Path, metadata: Any, tensors: Any) -> TrainingState:
    """The `TrainingState` a checkpoint stores, every field type-checked: a field of the
    wrong type or out of range is a `DGMCheckpointError` naming `path`."""
    def bad(what: str) -> DGMCheckpointError:
        return DGMCheckpointError(f"{path} has a damaged training state: {what}",
                                  hint="load it without resuming (the parameters are checked "
                                       "apart), or fit again")

    if not isinstance(metadata, dict):
        raise bad("'training' is not a JSON object")
    if not isinstance(tensors, dict):
        raise bad("'training_state' is not a dict of tensors")
    whole = {name: _whole(metadata.get(name)) for name in
             ("steps_done", "epochs_done", "planned_steps", "position")}
    for name, value in whole.items():
        if value is None:
            raise bad(f"'{name}' should be a whole number >= 0")
    if whole["planned_steps"] < whole["steps_done"]:
        raise bad("'planned_steps' is below 'steps_done'")
    settings = metadata.get("settings")
    if not isinstance(settings, dict) or set(settings) - {PROCESSES} != {*DEFAULTS, "seed"}:
        raise bad("'settings' should hold batch_size, lr, num_particles, objective, seed and processes")
    settings = {PROCESSES: 1, **settings}
    if not (_whole(settings[PROCESSES]) or 0) >= 1:
        raise bad("'processes' should be a whole number >= 1")
    if not (_whole(settings["batch_size"]) or 0) >= 1 or not (_whole(settings["num_particles"]) or 0) >= 1:
        raise bad("'batch_size' and 'num_particles' should be whole numbers >= 1")
    lr = settings["lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise bad("'lr' should be a positive number")
    if settings["objective"] not in ("elbo", "iwae"):
        raise bad("'objective' should be 'elbo' or 'iwae'")
    if settings["seed"] is not None and _whole(settings["seed"]) is None:
        raise bad("'seed' should be a whole number or null")
    data = _fingerprint(metadata.get("data"))
    if data is None:
        raise bad("'data' should hold rows and sample_sha256")
    validation = metadata.get("validation")
    if validation is not None and _fingerprint(validation) is None:
        raise bad("'validation' should be null or hold rows and sample_sha256")
    if metadata.get("optimizer") != "adam":
        raise bad("'optimizer' should be 'adam'")
    rng, order, optimizer = (tensors.get(key) for key in ("rng", "order", "optimizer"))
    if set(tensors) != {"rng", "order", "optimizer"}:
        raise bad("'training_state' should hold rng, order and optimizer")
    if not _plain(rng) or rng.dtype != torch.uint8 or rng.shape != (_RNG_BYTES,):
        raise bad(f"'rng' should be {_RNG_BYTES} bytes (torch's generator state)")
    rows = data["rows"]
    if not _plain(order) or order.dtype != torch.int64 or order.dim() != 1 or order.numel() not in (0, rows):
        raise bad(f"'order' should be empty or a permutation of the {rows} rows")
    if order.numel() and not torch.equal(torch.sort(order).values, torch.arange(rows)):
        raise bad(f"'order' is not a permutation of the {rows} rows")
    if whole["position"] > (rows if order.numel() else 0):
        raise bad("'position' lies beyond the epoch's order")
    if not isinstance(optimizer, dict):
        raise bad("'optimizer' should be a dict of parameter name -> state")
    for name, entries in optimizer.items():
        if not isinstance(name, str) or not isinstance(entries, dict) or not all(
                isinstance(k, str) and _plain(t) and t.is_floating_point()
                and bool(torch.isfinite(t).all()) for k, t in entries.items()):
            raise bad(f"the optimizer state of '{str(name)[:80]}' should be finite float tensors")
    return TrainingState(settings=settings, data=data, validation=validation,
                         steps_done=whole["steps_done"], epochs_done=whole["epochs_done"],
                         planned_steps=whole["planned_steps"], position=whole["position"],
                         order=order if order.numel() else None, rng=rng, optimizer=optimizer)


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _fingerprint(value: Any) -> dict[str, Any] | None:
    if (isinstance(value, dict) and set(value) == {"rows", "sample_sha256"} and (_whole(value["rows"]) or 0) >= 1
            and isinstance(value["sample_sha256"], str) and len(value["sample_sha256"]) == 64):
        return value
    return None


def _plain(tensor: Any) -> bool:
    return (isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided
            and not tensor.is_quantized and not tensor.is_complex())
