"""Checkpoints: one file holding a fitted model's source text, metadata and parameters.

`save(model, path)` writes it atomically; `read(path)` checks and reads it back into a
`Checkpoint` (plain tensors and strings only); `restore(model, checkpoint)` puts the saved
parameters, history and fitted flag into a model compiled again from the saved source.
Compiling is not done here: ``dgmlang.load_fitted`` (`dgmlang.frontend.load_fitted`) reads,
compiles, and restores.

The file is a ``torch.save`` of a dict: ``metadata`` (JSON text: kind, format version, the
dgmlang and torch versions, the model's name and file, fitted, guide plan, history),
``source``, ``model_state``, ``guide_state``, (format 3, after a `fit`) ``training_state``
— the optimizer state, torch's random state and the epoch's row order of
`dgmlang.runstate.TrainingState`, whose other fields are the metadata's ``training`` object —
and (format 2) ``digest``: a SHA-256 over every other entry of the dict — the metadata text, the source text, and every tensor's
name, dtype, shape and bytes (`payload_digest`). A field a later version adds is covered
without a change here. `read` recomputes it: a damaged file (one flipped byte anywhere that
changes what is loaded) is a `DGMCheckpointError`. The digest detects corruption, not
tampering: whoever can write the file can write a matching digest.

>>> import torch
>>> payload = {"metadata": "{}", "source": "model m {}", "model_state": {"w": torch.zeros(2)}}
>>> payload_digest(payload) == payload_digest(dict(payload, model_state={"w": torch.zeros(2)}))
True
>>> payload_digest(payload) == payload_digest(dict(payload, model_state={"w": torch.ones(2)}))
False
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, Mapping

import torch

from dgmlang.errors import DGMCheckpointError, DGMUsageError
from dgmlang.runstate import TrainingState, check_optimizer_fits, named_parameters
from dgmlang.runstate import decode as decode_training, encode as encode_training

__all__ = ["CHECKPOINT_KIND", "FORMAT_VERSION", "Checkpoint", "check_fits", "dgmlang_version",
           "payload_digest", "read", "restore", "save"]

#: Version of the checkpoint layout written by `save`; `read` refuses newer ones. Format 1
#: (dgmlang before issue 11) has no digest: it is still read, unverified. Format 2 has no
#: training state: it loads, and cannot be resumed.
FORMAT_VERSION = 3
CHECKPOINT_KIND = "dgmlang-checkpoint"
#: The entries every checkpoint holds, besides ``digest``.
_FIELDS = ("metadata", "source", "model_state", "guide_state")
_STATES = ("model_state", "guide_state")
#: The optional entry holding the training state's tensors (format 3).
_TRAINING = "training_state"
_DIGEST_PREFIX = "sha256:"


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds, checked: the source text and the name of the model in
    it, the file it was compiled from, the parameters of its model and guide, its history
    and whether it was fitted, the state to resume its training from (`training`, None
before format 3 or a fit); `metadata` is the whole (checked) metadata, `extra` any other
    entries a later version wrote, `format_version` the file's format and `verified` whether
    its digest was checked (format 1 files have none)."""

    path: Path
    source: str
    model: str
    filename: str
    model_state: Mapping[str, torch.Tensor]
    guide_state: Mapping[str, torch.Tensor]
    history: Mapping[str, list[float]] = field(default_factory=dict)
    fitted: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    verified: bool = True
    training: TrainingState | None = None
    #: the elimination order its guide was derived in ("nami" for files written before
    #: there was a choice)
    guide_order: str = "nami"


def dgmlang_version() -> str:
    """The installed dgmlang's version (from the package metadata, which the build takes from
    ``dgmlang.__version__``), written into every checkpoint."""
    try:
        return package_metadata.version("dgmlang")
    except package_metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


# ---------------------------------------------------------------- the digest


class _Unhashable(Exception):
    """A value in a payload that no checkpoint holds (say which, for the error)."""


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    raw = flat.view(torch.uint8) if flat.dtype != torch.uint8 else flat
    if sys.byteorder != "little" and flat.element_size() > 1:  # hash little-endian bytes
        raw = raw.reshape(-1, flat.element_size()).flip(-1).contiguous().reshape(-1)
    return memoryview(raw.numpy())


def _feed(hasher: Any, value: Any) -> None:
    """Feed one value into `hasher`, tagged by type and length-prefixed (so no two payloads
    give the same stream); plain values, lists, str-keyed dicts (keys sorted) and dense
    tensors only."""
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.is_quantized or value.is_complex() and value.is_conj():
            raise _Unhashable(f"a {value.layout} tensor")
        hasher.update(b"T" + _text(str(value.dtype)) + struct.pack("<Q", value.dim()))
        hasher.update(struct.pack(f"<{value.dim()}q", *value.shape))
        data = _tensor_bytes(value)
        hasher.update(struct.pack("<Q", data.nbytes))
        hasher.update(data)
    elif isinstance(value, str):
        hasher.update(b"S" + _text(value))
    elif isinstance(value, bool) or value is None:
        hasher.update({True: b"B1", False: b"B0", None: b"N"}[value])
    elif isinstance(value, int):
        hasher.update(b"I" + _text(value.to_bytes((value.bit_length() + 8) // 8, "little",
                                                  signed=True).hex()))
    elif isinstance(value, float):
        hasher.update(b"F" + struct.pack("<d", value))
    elif isinstance(value, (list, tuple)):
        hasher.update(b"L" + struct.pack("<Q", len(value)))
        for item in value:
            _feed(hasher, item)
    elif isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise _Unhashable("a dict with a key that is not a string")
        hasher.update(b"D" + struct.pack("<Q", len(value)))
        for key in sorted(value):
            hasher.update(_text(key))
            _feed(hasher, value[key])
    else:
        raise _Unhashable(f"a {type(value).__name__}")


def _text(value: str) -> bytes:
    data = value.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(data)) + data


def payload_digest(payload: Mapping[str, Any]) -> str:
    """``"sha256:HEX"`` over every entry of `payload` but ``digest``: the metadata text as
    stored, the source text, and each tensor's name, dtype, shape and bytes."""
    hasher = hashlib.sha256(b"dgmlang-checkpoint-digest\x00")
    _feed(hasher, {key: value for key, value in payload.items() if key != "digest"})
    return _DIGEST_PREFIX + hasher.hexdigest()


# ---------------------------------------------------------------- save


def save(model: Any, path: str | os.PathLike) -> None:
    """Write `model` (a `dgmlang.compiled.CompiledModel`) to one file: source text,
    metadata (JSON), the parameters, the training state when it has one, and the digest over
    them, atomically: a temporary file in the same folder, flushed to the disk (fsync), then
    `os.replace` — a crash at any moment leaves the old file or the new one, whole."""
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
        "guide_order": model.plan.order,
        "history": model.history,
    }
    payload = {
        "source": model.source,
        "model_state": model.model.state_dict(),
        "guide_state": model.guide.state_dict(),
    }
    training = getattr(model, "training_state", None)
    if training is not None:
        metadata["training"], payload[_TRAINING] = encode_training(training)
    payload["metadata"] = json.dumps(metadata)
    payload["digest"] = payload_digest(payload)
    target = Path(path)
    handle, temporary = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.",
                                         suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
        _sync_folder(target.parent)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _sync_folder(folder: Path) -> None:
    """Flush the folder's entry for a renamed file to the disk (POSIX; a no-op elsewhere)."""
    try:
        descriptor = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------- read


def read(path: str | os.PathLike) -> Checkpoint:
    """The checkpoint at `path`, checked. Only plain tensors and strings are read
    (``weights_only``); a file holding pickled objects, another kind of file, a newer format,
    a digest that does not match (a damaged file), a field of the wrong type, or a
    non-finite parameter is a `DGMCheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DGMCheckpointError(f"no checkpoint file at {path}", hint="check the path")
    _check_container(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise DGMCheckpointError(
            f"{path} holds pickled Python objects, which a dgmlang checkpoint never does "
            "(or it is damaged); refusing to load it",
            hint=f"loading arbitrary pickles can run code ({str(err).splitlines()[0][:120]})",
        ) from None
    except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways inside torch
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise DGMCheckpointError(f"{path} is not a dgmlang checkpoint, or is damaged ({reason})") from None
    if not isinstance(payload, dict) or any(k not in payload for k in _FIELDS):
        raise DGMCheckpointError(f"{path} is not a dgmlang checkpoint (unexpected contents)")
    metadata = _metadata(path, payload["metadata"])
    version = metadata["format_version"]
    digest = payload.get("digest")
    if version >= 2 and digest is None:
        raise DGMCheckpointError(f"{path} is damaged: its digest is missing")
    if digest is not None:  # a format 1 file has none; one that has one is checked anyway
        if not isinstance(digest, str):
            raise DGMCheckpointError(f"{path} is damaged: its digest is not text")
        try:
            actual = payload_digest(payload)
        except (_Unhashable, RecursionError) as err:
            raise DGMCheckpointError(f"{path} is not a dgmlang checkpoint (it holds {err})") from None
        if actual != digest:
            raise DGMCheckpointError(
                f"{path} is damaged: its contents do not match the digest stored in it",
                hint="the file was changed after it was saved (a disk or transfer error?); "
                     "save or copy it again",
            )
    source = payload["source"]
    if not isinstance(source, str) or not source:
        raise DGMCheckpointError(f"{path} is damaged: its model text is not text")
    states = {name: _state(path, name, payload[name]) for name in _STATES}
    training = None
    if ("training" in metadata) != (_TRAINING in payload):
        raise DGMCheckpointError(f"{path} is damaged: its training state is incomplete")
    if _TRAINING in payload:
        training = decode_training(path, metadata["training"], payload[_TRAINING])
    extra = {key: value for key, value in payload.items() if key not in (*_FIELDS, _TRAINING, "digest")}
    if any(not isinstance(key, str) for key in extra):
        raise DGMCheckpointError(f"{path} is not a dgmlang checkpoint (unexpected contents)")
    return Checkpoint(
        path=path,
        source=source,
        model=metadata["model"],
        filename=metadata.get("filename", str(path)),
        model_state=states["model_state"],
        guide_state=states["guide_state"],
        history=metadata["history"],
        fitted=metadata.get("fitted", False),
        metadata=metadata,
        extra=extra,
        format_version=version,
        verified=digest is not None,
        training=training,
        guide_order=_guide_order(path, metadata),
    )


def _check_container(path: Path) -> None:
    """The file is a zip archive whose entries are stored uncompressed and fit in the file
    (what ``torch.save`` writes), so loading it allocates no more than the file's size."""
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError,
            NotImplementedError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise DGMCheckpointError(f"{path} is not a dgmlang checkpoint, or is damaged ({reason})") from None
    stored = 0
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED or entry.file_size != entry.compress_size:
            raise DGMCheckpointError(f"{path} is not a dgmlang checkpoint (a compressed entry)")
        stored += entry.file_size
    if stored > size:
        raise DGMCheckpointError(f"{path} is damaged: its entries are larger than the file")


#: The metadata fields and their JSON types (format 1 files may lack the optional ones).
_REQUIRED = {"kind": str, "format_version": int, "model": str}
_OPTIONAL = {"dgmlang_version": str, "torch_version": str, "filename": str, "fitted": bool,
             "guide_plan": list, "history": dict, "training": dict, "guide_order": str}


def _guide_order(path: Path, metadata: Mapping[str, Any]) -> str:
    """The order the saved guide was derived in: "nami" when the file does not say."""
    from dgmlang.inverse import ORDERS

    order = metadata.get("guide_order", "nami")
    if order not in ORDERS:
        raise DGMCheckpointError(f"{path} was saved with an unknown guide order {order!r}",
                                 hint="a newer dgmlang wrote it? load it there")
    return order


def _metadata(path: Path, text: Any) -> dict[str, Any]:
    """The metadata JSON, every known field of its type; the format version checked."""
    if not isinstance(text, str):
        raise DGMCheckpointError(f"{path} has unreadable metadata (not text)")
    try:
        metadata = json.loads(text)
    except (ValueError, RecursionError):
        raise DGMCheckpointError(f"{path} has unreadable metadata") from None
    if not isinstance(metadata, dict) or any(k not in metadata for k in _REQUIRED):
        raise DGMCheckpointError(f"{path} has unreadable metadata")
    kind, version = metadata["kind"], metadata["format_version"]
    if kind != CHECKPOINT_KIND or not _is(version, int):
        raise DGMCheckpointError(f"{path} is not a dgmlang checkpoint (kind {str(kind)[:80]!r})")
    if version > FORMAT_VERSION:
        found = metadata.get("dgmlang_version", "?")
        raise DGMCheckpointError(
            f"{path} was written in checkpoint format {version} by dgmlang "
            f"{found if isinstance(found, str) else '?'}; this dgmlang ({dgmlang_version()}) "
            f"reads formats up to {FORMAT_VERSION}",
            hint="upgrade dgmlang to load it",
        )
    if version < 1:
        raise DGMCheckpointError(f"{path} is damaged: checkpoint format {version} does not exist")
    for name, kind_of in {**_REQUIRED, **_OPTIONAL}.items():
        if name in metadata and not _is(metadata[name], kind_of):
            raise DGMCheckpointError(
                f"{path} has damaged metadata: '{name}' should be a {_JSON_NAMES[kind_of]}, "
                f"not {_json_type(metadata[name])}")
    plan = metadata.get("guide_plan", [])
    if not all(isinstance(step, list) and len(step) == 2 and isinstance(step[0], str)
               and (isinstance(step[1], str) or _is(step[1], list)
                    and all(isinstance(i, str) for i in step[1])) for step in plan):
        raise DGMCheckpointError(f"{path} has damaged metadata: 'guide_plan' is not a guide plan")
    history = {"loss": [], "validation": [], **metadata.get("history", {})}
    for name, values in history.items():
        if not _is(values, list) or not all(_is(v, float) for v in values):
            raise DGMCheckpointError(
                f"{path} has damaged metadata: history '{name}' should be a list of numbers")
    metadata["history"] = {name: [float(v) for v in values] for name, values in history.items()}
    return metadata


_JSON_NAMES = {str: "string", int: "integer", bool: "true or false", list: "list",
               dict: "JSON object", float: "number"}


def _is(value: Any, kind: type) -> bool:
    """Whether a JSON value is of `kind` (bool is not a number; an int is a float)."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _json_type(value: Any) -> str:
    for kind in (bool, int, float, str, list, dict):
        if _is(value, kind):
            return "a " + _JSON_NAMES[kind]
    return "null"


#: The dtypes a state may hold (what a model's parameters and buffers can be).
_DTYPES = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64,
                     torch.complex64, torch.complex128, torch.bool, torch.uint8, torch.int8,
                     torch.int16, torch.int32, torch.int64))


def _state(path: Path, name: str, state: Any) -> dict[str, torch.Tensor]:
    """A state dict: str -> dense, finite tensor."""
    if not isinstance(state, dict):
        raise DGMCheckpointError(f"{path} is damaged: '{name}' is not a dict of tensors")
    for key, tensor in state.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise DGMCheckpointError(f"{path} is damaged: '{name}' is not a dict of tensors "
                                     f"(entry {str(key)[:80]!r})")
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.dtype not in _DTYPES:
            raise DGMCheckpointError(f"{path} is damaged: {name} '{key[:80]}' is a "
                                     f"{tensor.layout} {tensor.dtype} tensor")
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            raise DGMCheckpointError(
                f"{path}: parameter '{key[:80]}' ({name}) holds non-finite values (NaN or infinity)",
                hint="a model whose training diverged cannot be loaded; fit it again",
            )
    return dict(state)


# ---------------------------------------------------------------- restore


def check_fits(model: Any, saved: Checkpoint) -> None:
    """Every saved tensor has the name, shape and dtype `model` (compiled from the saved
    source, perhaps on the meta device) expects, and no expected one is missing; else a
    `DGMCheckpointError`. Nothing is copied."""
    for name, module, state in (("model", model.model, saved.model_state),
                                ("guide", model.guide, saved.guide_state)):
        expected = module.state_dict()
        problem = None
        missing = sorted(set(expected) - set(state) - set(optional_keys(expected)))
        unexpected = sorted(set(state) - set(expected))
        if missing:
            problem = f"the {name}'s '{missing[0]}' is missing"
        elif unexpected:
            problem = f"the file holds '{unexpected[0][:80]}', which the {name} does not have"
        else:
            for key, want in expected.items():
                got = state.get(key, want)
                if got.shape != want.shape or got.dtype != want.dtype:
                    problem = (f"the {name}'s '{key}' is {_describe(got)} in the file, "
                               f"the model expects {_describe(want)}")
                    break
        if problem:
            raise DGMCheckpointError(
                f"{saved.path}: the saved parameters do not fit model '{saved.model}' ({problem})")


def optional_keys(state: dict) -> list[str]:
    """Keys a checkpoint may lack: the guide's reference scales, which files written before
    they existed do not hold; a model restored from such a file keeps them neutral (0 and
    1), which is exactly how it was trained. Likewise the networks of q(label | x)
    (`label_nets`, semi-supervised learning) and of the imputation steps (`imputation_nets`,
    missing entries others depend on), which a file written before them lacks: they keep
    their initial values, untrained, as they were in that model."""
    return [key for key in state
            if key.startswith(("references.", "input_references.", "label_nets.", "imputation_nets."))]


def _describe(tensor: torch.Tensor) -> str:
    return f"{list(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"


def restore(model: Any, saved: Checkpoint) -> None:
    """Put the parameters, history, fitted flag and training state of `saved` into `model`,
    compiled from ``saved.source``; parameters or optimizer state that do not fit it (names,
    shapes, dtypes: checked before anything is copied) are a `DGMCheckpointError`."""
    check_fits(model, saved)
    if saved.training is not None:
        check_optimizer_fits(saved.path, saved.training, named_parameters(model))
    try:
        model.model.load_state_dict(saved.model_state)
        guide_state = {**{key: value for key, value in model.guide.state_dict().items()
                          if key in optional_keys(model.guide.state_dict())},
                       **saved.guide_state}
        model.guide.load_state_dict(guide_state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise DGMCheckpointError(
            f"{saved.path}: the saved parameters do not fit model '{saved.model}' "
            f"({str(err).splitlines()[0]})"
        ) from None
    model.history = {name: list(values) for name, values in saved.history.items()}
    model.fitted = saved.fitted
    model.training_state = saved.training
