"""The one driver of the pipeline: text -> AST -> checked IR -> graph -> guide plan -> compiled model.

Everything up to the guide plan runs without torch, so `dgm check` starts fast; the
compiled model (`dgmlang.compiled`, torch and Pyro) is imported only when a user asks for
one. `load_fitted` drives the same road from a checkpoint (`dgmlang.checkpoint` reads the
file, this module compiles its source, the checkpoint's parameters are put back).

>>> models = check_source('''
... model ppca {
...     const W = [[1.0, 0.5], [0.2, -1.0], [0.7, 0.7]]
...     data   x[3]
...     latent z[2]
...     z ~ Normal(0, 1)
...     x ~ Normal(matmul(W, z), 0.1)
... }''')
>>> [m.ir.name for m in models]
['ppca']
>>> models[0].plan.as_list()
[('z', ['x'])]
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx

from dgmlang.errors import DGMError, DGMErrors, DGMUsageError, did_you_mean
from dgmlang.facts import ModelFacts
from dgmlang.ir import ModelIR
from dgmlang.inverse import GuidePlan

if TYPE_CHECKING:  # pragma: no cover - imported lazily at run time (torch)
    from dgmlang.compiled import CompiledModel


@dataclass(frozen=True, eq=False)
class CheckedModel:
    """A model that passed every front-end stage: its IR, its graph and its guide plan, and
    the facts derived from them (`dgmlang.facts.ModelFacts`, built once)."""

    ir: ModelIR
    graph: nx.DiGraph
    plan: GuidePlan
    facts: ModelFacts


def check_source(text: str, filename: str = "<string>", *,
                 guide_order: str = "nami") -> tuple[CheckedModel, ...]:
    """Parse and check `text`; every model's graph and guide plan, derived in `guide_order`
    (`dgmlang.inverse.ORDERS`). Raises a DGMError."""
    from dgmlang.check import check
    from dgmlang.inverse import check_order
    from dgmlang.parse import parse

    check_order(guide_order)  # before a long parse
    return check_irs(check(parse(text, filename)), guide_order=guide_order)


def check_irs(irs, *, guide_order: str = "nami") -> tuple[CheckedModel, ...]:
    """Graph and guide plan for already-checked IRs (the Python DSL enters here)."""
    from dgmlang.graph import build_graph
    from dgmlang.inverse import invert

    checked, errors = [], []
    for ir in irs:
        try:
            graph = build_graph(ir)
            checked.append(CheckedModel(ir, graph, invert(graph, guide_order),
                                        ModelFacts(ir, graph)))
        except DGMErrors as err:
            errors.extend(err.errors)
        except DGMError as err:
            errors.append(err)
    if errors:
        raise errors[0] if len(errors) == 1 else DGMErrors(errors)
    return tuple(checked)


def read_source(path: str | Path) -> str:
    """The text of a model file, or a DGMUsageError saying why it cannot be read."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DGMUsageError(f"no such model file: {path}", hint="check the path") from None
    except IsADirectoryError:
        raise DGMUsageError(f"{path} is a directory, not a model file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DGMUsageError(f"cannot read model file {path}: {err}") from None


def select(models: tuple[CheckedModel, ...], name: str | None, where: str) -> CheckedModel:
    """The model called `name`, or the only model when `name` is None."""
    names = [m.ir.name for m in models]
    if name is None:
        if len(models) == 1:
            return models[0]
        raise DGMUsageError(
            f"{where} holds {len(models)} models: {', '.join(names)}",
            hint="pick one with model=NAME (--model NAME on the command line)",
        )
    for m in models:
        if m.ir.name == name:
            return m
    raise DGMUsageError(
        f"{where} has no model '{name}'; it holds: {', '.join(names)}",
        hint=did_you_mean(name, names),
    )


def compile_checked(checked: CheckedModel, *, source: str, filename: str,
                    device=None, dtype=None) -> "CompiledModel":
    """A compiled model (Pyro model + derived guide) from a checked one, with its facts, on
    `device` in `dtype` (see `CompiledModel.to`; None: the CPU, float32)."""
    from dgmlang.compiled import CompiledModel

    compiled = CompiledModel(checked.ir, checked.plan, source=source, filename=filename,
                             facts=checked.facts)
    return compiled.to(device, dtype) if device is not None or dtype is not None else compiled


def compile_source(text: str, *, model: str | None = None, filename: str = "<string>",
                   device=None, dtype=None, guide_order: str = "nami") -> "CompiledModel":
    """Compile one model of `text` (see `select` for `model`) on `device` in `dtype`, its
    guide derived in `guide_order`."""
    check_placement(device, dtype)
    checked = select(check_source(text, filename, guide_order=guide_order), model, filename)
    return compile_checked(checked, source=text, filename=filename, device=device, dtype=dtype)


def compile(text: str, model: str | None = None, *, device=None, dtype=None,  # noqa: A001 - the public name
            guide_order: str = "nami") -> "CompiledModel":
    """Compile a model from `.dgm` text: ``dgmlang.compile(text).fit(data)``. `device`
    ("cpu" by default, "cuda", "cuda:N", "mps") and `dtype` ("float32" by default,
    "float64") say where and in what the model computes (`CompiledModel.to`);
    `guide_order` ("nami" by default, or "minfill") in what order the guide is derived
    (docs/guides.md, "Elimination orders")."""
    return compile_source(text, model=model, filename="<string>", device=device, dtype=dtype,
                          guide_order=guide_order)


def load(path: str | Path, model: str | None = None, *, device=None, dtype=None,
         guide_order: str = "nami") -> "CompiledModel":
    """Compile a model from a `.dgm` file: ``dgmlang.load("vae.dgm", device="cuda").fit(data)``
    (`device`, `dtype` and `guide_order` as in `compile`)."""
    check_placement(device, dtype)
    return compile_source(read_source(path), model=model, filename=str(path), device=device,
                          dtype=dtype, guide_order=guide_order)


def check_placement(device, dtype) -> None:
    """Refuse a device or dtype that cannot be used before any work is done."""
    if device is None and dtype is None:
        return
    from dgmlang import devices

    target = devices.device_of(device)
    if dtype is not None:
        devices.check_pair(target, devices.dtype_of(dtype))


def load_fitted(path: str | Path, *, device=None, dtype=None) -> "CompiledModel":
    """A model saved with `CompiledModel.save`: the saved source is compiled again and the
    parameters restored, then moved to `device` (the CPU by default; "cuda", "cuda:N", "mps")
    and, when given, converted to `dtype` (by default the dtype it was saved in). Only plain tensors and strings are read; a file holding pickled
    objects, another kind of file, a newer format, a damaged file (its digest does not
    match), a field of the wrong type or a non-finite parameter is a `DGMCheckpointError`
    (see `dgmlang.checkpoint`).

    Nothing is allocated for the model before its text passes the checker and the saved
    tensors' names, shapes and dtypes match those of the model built on the meta device
    (no memory): a checkpoint cannot make this allocate more than the tensors it holds.
    (A `flow` guide cannot be built there; such a model is compared after the real build,
    which the checker's limits bound.)"""
    from dgmlang import checkpoint
    from dgmlang.errors import DGMCheckpointError

    check_placement(device, dtype)
    saved = checkpoint.read(path)
    saved_dtype = _saved_dtype(saved)
    try:
        checked = select(check_source(saved.source, saved.filename,
                                      guide_order=saved.guide_order), saved.model, saved.filename)
    except DGMError as err:
        raise DGMCheckpointError(
            f"{saved.path}: the model text saved in it does not pass this dgmlang's checks:\n{err}"
        ) from None
    _check_fits_before_building(checked, saved, saved_dtype)
    compiled = compile_checked(checked, source=saved.source, filename=saved.filename,
                               dtype=saved_dtype)
    checkpoint.restore(compiled, saved)
    return compiled.to(device, dtype) if device is not None or dtype is not None else compiled


def _saved_dtype(saved):
    """The float dtype the saved model computed in: that of all its floating tensors when
    they agree on float32 or float64. Otherwise (none, or a mix) None: the model is built in
    float32 and a tensor of another dtype is refused by name when the tensors are compared."""
    import torch

    dtypes = {tensor.dtype for state in (saved.model_state, saved.guide_state)
              for tensor in state.values() if tensor.is_floating_point()}
    if len(dtypes) == 1 and next(iter(dtypes)) in (torch.float32, torch.float64):
        return next(iter(dtypes))
    return None


def _check_fits_before_building(checked: CheckedModel, saved, dtype=None) -> None:
    """Build `checked` on the meta device (shapes only, no memory) and compare the saved
    tensors with it. A model that cannot be built on the meta device is compared after
    the real build instead (`checkpoint.restore` does that in any case)."""
    import torch

    from dgmlang import checkpoint

    try:
        with torch.device("meta"):
            shapes = compile_checked(checked, source=saved.source, filename=saved.filename,
                                     dtype=dtype)
    except Exception:  # noqa: BLE001 - only a pre-check; the real build reports its own errors
        return
    checkpoint.check_fits(shapes, saved)
