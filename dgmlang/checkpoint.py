"""Checkpoints: one file holding a fitted model's source text, metadata and parameters.

`save(model, path)` writes it atomically; `read(path)` checks and reads it back into a
`Checkpoint` (plain tensors and strings only); `restore(model, checkpoint)` puts the saved
parameters, history and fitted flag into a model compiled again from the saved source.
Compiling is not done here: ``dgmlang.load_fitted`` (`dgmlang.frontend.load_fitted`) reads,
compiles, and restores.

The file is a ``torch.save`` of a dict: ``metadata`` (JSON text: kind, format version, the
dgmlang and torch versions, the model's name and file, fitted, guide plan, history),
``source``, ``model_state``, ``guide_state``.
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, Mapping

import torch

from dgmlang.errors import DGMCheckpointError, DGMUsageError

__all__ = ["CHECKPOINT_KIND", "FORMAT_VERSION", "Checkpoint", "dgmlang_version", "read", "restore",
           "save"]

#: Version of the checkpoint layout written by `save`; `read` refuses newer ones.
FORMAT_VERSION = 1
CHECKPOINT_KIND = "dgmlang-checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds, checked: the source text and the name of the model in
    it, the file it was compiled from, the parameters of its model and guide, its history
    and whether it was fitted."""

    path: Path
    source: str
    model: str
    filename: str
    model_state: Mapping[str, torch.Tensor]
    guide_state: Mapping[str, torch.Tensor]
    history: Mapping[str, list[float]] = field(default_factory=dict)
    fitted: bool = False


def dgmlang_version() -> str:
    """The installed dgmlang's version (from the package metadata, which the build takes from
    ``dgmlang.__version__``), written into every checkpoint."""
    try:
        return package_metadata.version("dgmlang")
    except package_metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def save(model: Any, path: str | os.PathLike) -> None:
    """Write `model` (a `dgmlang.compiled.CompiledModel`) to one file: source text,
    metadata (JSON) and the parameters, atomically (a temporary file in the same folder,
    then `os.replace`)."""
    if not model.source:
        raise DGMUsageError("this model has no source text to save",
                            hint="compile it from .dgm text or a file to save it")
    metadata = {
        "kind": CHECKPOINT_KIND,
        "format_version": FORMAT_VERSION,
        "dgmlang_version": dgmlang_version(),
        "torch_version": torch.__version__,
        "model": model.ir.name,
        "filename": model.filename,
        "fitted": model.fitted,
        "guide_plan": [[n, inputs] for n, inputs in model.guide_plan],
        "history": model.history,
    }
    payload = {
        "metadata": json.dumps(metadata),
        "source": model.source,
        "model_state": model.model.state_dict(),
        "guide_state": model.guide.state_dict(),
    }
    target = Path(path)
    handle, temporary = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.",
                                         suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def read(path: str | os.PathLike) -> Checkpoint:
    """The checkpoint at `path`. Only plain tensors and strings are read (``weights_only``);
    a file holding pickled objects, another kind of file, or a newer format is a
    `DGMCheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise DGMCheckpointError(f"no checkpoint file at {path}", hint="check the path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise DGMCheckpointError(
            f"{path} holds pickled Python objects, which a dgmlang checkpoint never does; "
            "refusing to load it",
            hint=f"loading arbitrary pickles can run code ({str(err).splitlines()[0][:120]})",
        ) from None
    except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways inside torch
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DGMCheckpointError(f"{path} is not a dgmlang checkpoint ({reason})") from None
    keys = ("metadata", "source", "model_state", "guide_state")
    if not isinstance(payload, dict) or any(k not in payload for k in keys):
        raise DGMCheckpointError(f"{path} is not a dgmlang checkpoint (unexpected contents)")
    try:
        metadata = json.loads(payload["metadata"])
        kind, version = metadata["kind"], metadata["format_version"]
        name = metadata["model"]
    except (TypeError, ValueError, KeyError):
        raise DGMCheckpointError(f"{path} has unreadable metadata") from None
    if kind != CHECKPOINT_KIND or not isinstance(version, int):
        raise DGMCheckpointError(f"{path} is not a dgmlang checkpoint (kind {kind!r})")
    if version > FORMAT_VERSION:
        raise DGMCheckpointError(
            f"{path} was written in checkpoint format {version} by dgmlang "
            f"{metadata.get('dgmlang_version', '?')}; this dgmlang ({dgmlang_version()}) "
            f"reads formats up to {FORMAT_VERSION}",
            hint="upgrade dgmlang to load it",
        )
    history = metadata.get("history", {})
    return Checkpoint(
        path=path,
        source=payload["source"],
        model=name,
        filename=metadata.get("filename", str(path)),
        model_state=payload["model_state"],
        guide_state=payload["guide_state"],
        history={"loss": list(history.get("loss", [])),
                 "validation": list(history.get("validation", []))},
        fitted=bool(metadata.get("fitted", False)),
    )


def restore(model: Any, saved: Checkpoint) -> None:
    """Put the parameters, history and fitted flag of `saved` into `model`, compiled from
    ``saved.source``; parameters that do not fit it are a `DGMCheckpointError`."""
    try:
        model.model.load_state_dict(saved.model_state)
        model.guide.load_state_dict(saved.guide_state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise DGMCheckpointError(
            f"{saved.path}: the saved parameters do not fit model '{saved.model}' "
            f"({str(err).splitlines()[0]})"
        ) from None
    model.history = {name: list(values) for name, values in saved.history.items()}
    model.fitted = saved.fitted
