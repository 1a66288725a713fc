"""dgmlang: deep generative models in a small language, compiled to Pyro with derived guides.

The surface a user needs::

    import dgmlang as dg
    m = dg.load("vae.dgm")                 # or dg.compile(text), or dg.Model("vae")...compile()
    m.fit(data); m.sample(16); m.invert(partial, mask=mask); m.log_prob(data)
    m.save("vae.pt"); m = dg.load_fitted("vae.pt")

Importing dgmlang does not import torch; the compiled model does, when first asked for.
"""
from __future__ import annotations

from dgmlang.errors import DGMError, DGMWarning
from dgmlang.frontend import compile, load, load_fitted

__version__ = "0.1.0"

__all__ = ["DGMError", "DGMWarning", "CompiledModel", "Model", "compile", "load", "load_fitted", "datasets",
           "__version__"]


def __getattr__(name: str):
    # Lazy: the compiled model needs torch; submodules load on first use; the DSL's names
    # (Model, Normal, mlp, ...) come from dgmlang.dsl.
    import importlib
    import importlib.util

    if name == "CompiledModel":
        from dgmlang.compiled import CompiledModel

        return CompiledModel
    if not name.startswith("_") and importlib.util.find_spec(f"dgmlang.{name}") is not None:
        return importlib.import_module(f"dgmlang.{name}")
    import dgmlang.dsl as dsl

    if name in dsl.__all__:
        return getattr(dsl, name)
    import difflib

    close = difflib.get_close_matches(name, list(dsl.__all__) + __all__, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise AttributeError(f"module 'dgmlang' has no attribute {name!r}{hint}")
