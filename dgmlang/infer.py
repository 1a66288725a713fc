"""Inference on a compiled model, by its older single-module name: `CompiledModel`,
`load_fitted` and the tuning constants, as they were importable from here before the split
by concern.

The work lives in one module per concern: `dgmlang.compiled` (the user's object),
`dgmlang.training` (fit), `dgmlang.posterior` (sample, log_prob, invert),
`dgmlang.weights` (importance weights), `dgmlang.gibbs` (Metropolis-within-Gibbs) and
`dgmlang.checkpoint` (save, read); `dgmlang.load_fitted` compiles a checkpoint's source
(`dgmlang.frontend`). Nothing in the package imports this module.

The tuning constants read and set here are those of the modules that use them:

>>> from dgmlang import gibbs, infer
>>> infer.GIBBS_SWEEPS == gibbs.GIBBS_SWEEPS
True
"""
from __future__ import annotations

import sys
import types
from typing import Any

from dgmlang import gibbs, posterior, training, weights
from dgmlang.checkpoint import FORMAT_VERSION
from dgmlang.compiled import CompiledModel
from dgmlang.frontend import load_fitted

__all__ = ["CompiledModel", "load_fitted", "FORMAT_VERSION", "CHUNK_CELLS", "DEFAULT_EPOCHS",
           "GIBBS_SWEEPS", "SIR_PROPOSALS", "SIR_PROPOSALS_PER_GLOBAL", "WARMUP_SWEEPS"]

#: Each constant and the modules that read it (setting it here sets it in all of them).
TUNING = {
    "CHUNK_CELLS": (weights, posterior, gibbs),
    "DEFAULT_EPOCHS": (training,),
    "GIBBS_SWEEPS": (gibbs,),
    "SIR_PROPOSALS": (posterior,),
    "SIR_PROPOSALS_PER_GLOBAL": (posterior,),
    "WARMUP_SWEEPS": (gibbs,),
}


def _forwarded(name: str) -> property:
    def get(module: types.ModuleType) -> Any:
        return getattr(TUNING[name][0], name)

    def set_(module: types.ModuleType, value: Any) -> None:
        for owner in TUNING[name]:
            setattr(owner, name, value)

    return property(get, set_, doc=f"`{name}` of {', '.join(m.__name__ for m in TUNING[name])}")


class _Forwarding(types.ModuleType):
    """This module, with the constants of `TUNING` read from and written to their owners."""


for _name in TUNING:
    setattr(_Forwarding, _name, _forwarded(_name))
del _name
sys.modules[__name__].__class__ = _Forwarding
