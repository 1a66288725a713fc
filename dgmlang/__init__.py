"""dgmlang: deep generative models in a small language, compiled to Pyro with derived guides.

The surface a user needs::

    import dgmlang as dg
    m = dg.load("vae.dgm")                 # or dg.compile(text), or dg.Model("vae")...compile()
    m.fit(data); m.sample(16); m.invert(partial, mask=mask); m.log_prob(data)
    m.save("vae.pt"); m = dg.load_fitted("vae.pt")

Importing dgmlang does not import torch; the compiled model does, when first asked for.
"""
from __future__ import annotations

from dgmlang.errors import DGMError
from dgmlang.frontend import compile, load

__version__ = "0.1.0"

__all__ = ["DGMError", "Model", "compile", "load", "load_fitted", "datasets", "__version__"]


def __getattr__(name: str):
    # Lazy: the fitted-model loader needs torch, and the DSL's names are many.
    if name == "load_fitted":
        from dgmlang.infer import load_fitted

        return load_fitted
    if name == "datasets":
        import dgmlang.datasets as datasets

        return datasets
    import dgmlang.dsl as dsl

    try:
        return getattr(dsl, name)
    except AttributeError:
        raise AttributeError(f"module 'dgmlang' has no attribute {name!r}") from None
