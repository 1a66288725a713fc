"""The checker's limits: how large a model may be before `dgm check` refuses it.

A model is refused before anything is allocated when it asks for more than these. Each limit
is a module-level number a user may raise, before compiling, in Python

>>> import dgmlang.limits
>>> dgmlang.limits.MAX_ELEMENTS
1000000

(``dgmlang.limits.MAX_ELEMENTS = 10**7``), or through the environment variable named beside
it (``DGM_MAX_ELEMENTS=10000000 dgm fit ...``), read when this module is first imported.
The checker reads the module's value each time it checks a model.

Two bounds are fixed by the numbers the model computes with, not by choice: an integer
constant (and every step of a const's arithmetic) lies in the 64-bit range, and every number
written in a model is representable in float32, the dtype models run in (neither infinite
there nor a nonzero number below float32's smallest normal number, 1.2e-38).
"""
from __future__ import annotations

import os

__all__ = ["MAX_ELEMENTS", "MAX_WIDTH", "MAX_CLASSES", "MAX_PARAMETERS", "MAX_INT",
           "FLOAT32_MAX", "FLOAT32_TINY"]


def _from_env(name: str, default: int) -> int:
    """The positive integer in environment variable `name`, else `default` (a value that is
    not a positive integer is ignored: the limit stays at its default)."""
    text = os.environ.get(name, "").strip().replace("_", "")
    if text.isdigit() and int(text) > 0:
        return int(text)
    return default


#: The most entries a declared value (per data point) or any value an expression computes may
#: have: `data x[1000, 1000]` is the largest square image. Env: DGM_MAX_ELEMENTS.
MAX_ELEMENTS = _from_env("DGM_MAX_ELEMENTS", 10**6)

#: The widest layer of a network: every size in `hidden = [...]` and `channels = [...]`, for
#: the model's networks and the guide's. Env: DGM_MAX_WIDTH.
MAX_WIDTH = _from_env("DGM_MAX_WIDTH", 2**14)

#: The most classes of `onehot(y, K)` and of a discrete latent the guide enumerates
#: (`Categorical` with K classes, `Binomial(n, ...)` with n + 1). Env: DGM_MAX_CLASSES.
MAX_CLASSES = _from_env("DGM_MAX_CLASSES", 10**5)

#: The most weights a model may hold: its networks and params together, and, separately, the
#: guide network of each latent (bounded as if it read every data, input and latent value).
#: Env: DGM_MAX_PARAMETERS.
MAX_PARAMETERS = _from_env("DGM_MAX_PARAMETERS", 5 * 10**7)

#: The largest integer a model may hold (int64); not a setting.
MAX_INT = 2**63 - 1

#: The largest finite float32 and its smallest positive normal value; not settings.
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38
