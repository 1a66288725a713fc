"""Posterior draws to ArviZ: `to_inference_data` builds an `arviz.InferenceData` from
`invert`'s draws (the optional extra ``pip install dgmlang[arviz]``).

Groups: ``posterior`` (every global, shaped ``(chain, draw, *shape)``, and every latent with
a ``point`` dimension, ``(chain, draw, point, *shape)``), ``observed_data`` (the data given;
missing entries NaN), ``log_likelihood`` (per data variable, ``log p(x_i | draw)`` over the
observed entries of row i, ``(chain, draw, point)``). There is one chain: `invert`'s draws are
importance-resampled, not a Markov chain, so ArviZ's r-hat and ESS say little about them
(repeated draws of one proposal look like a stuck chain; see docs/inference.md, "ArviZ").

>>> import dgmlang, torch
>>> m = dgmlang.compile("model m { data x\\n latent z\\n z ~ Normal(0, 1)\\n x ~ Normal(z, 1) }")
>>> idata = to_inference_data(m, {"x": torch.randn(4)}, num_samples=10, seed=0)  # doctest: +SKIP
>>> idata.posterior["z"].shape                                                    # doctest: +SKIP
(1, 10, 4)
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

import torch

from pyro import poutine

from dgmlang.data import prepare_data
from dgmlang.errors import DGMUsageError
from dgmlang.sites import missing_site

__all__ = ["to_inference_data"]

#: the name of the data-point dimension in every per-point variable
POINT = "point"


def _arviz():
    try:
        return importlib.import_module("arviz")
    except ImportError as err:
        raise DGMUsageError("exporting to ArviZ needs the arviz package, which is not installed",
                            hint="pip install 'dgmlang[arviz]'") from err


def to_inference_data(model: Any, data: Any, *, draws: Mapping[str, torch.Tensor] | None = None,
                      mask: Mapping[str, Any] | None = None, num_samples: int = 100,
                      seed: int | None = None) -> Any:
    """An `arviz.InferenceData` of the posterior given `data` (see the module docs).

    `draws` are `invert`'s result for the same `data` and `mask`; without them, `invert` is
    called with `num_samples` and `seed`. The log-likelihood costs one run of the model per
    draw.
    """
    az = _arviz()
    dataset = prepare_data(model.ir, data, purpose="invert", allow_missing=True, mask=mask,
                           facts=model.facts, dtype=model.dtype)
    if draws is None:
        draws = model.invert(data, mask=mask, num_samples=num_samples, seed=seed, progress=False)
    values, observed = dataset.values, dataset.observed
    n = dataset.n
    globals_ = set(model.ir.names("global"))
    latents = [name for name in (*model.ir.names("global"), *model.ir.names("latent")) if name in draws]
    data_names = [name for name in model.ir.names("data") if name in values]
    count = next(iter(draws.values())).shape[0] if draws else num_samples

    posterior, dims = {}, {}
    for name in latents:
        value = draws[name].detach().cpu()
        posterior[name] = value.unsqueeze(0).numpy()
        extra = [f"{name}_dim_{i}" for i in range(value.dim() - (1 if name in globals_ else 2))]
        dims[name] = extra if name in globals_ else [POINT, *extra]
    observed_data = {}
    for name in data_names:
        value = values[name].detach().cpu().to(torch.get_default_dtype()).clone()
        if name in observed:
            value[~observed[name].cpu()] = float("nan")
        observed_data[name] = value.numpy()
        dims[name] = [POINT, *[f"{name}_dim_{i}" for i in range(value.dim() - 1)]]
    log_likelihood = _log_likelihood(model, values, observed, draws, latents, data_names, count)
    return az.from_dict(posterior=posterior, observed_data=observed_data,
                        log_likelihood={k: v.unsqueeze(0).numpy() for k, v in log_likelihood.items()},
                        coords={POINT: list(range(n))}, dims=dims)


def _log_likelihood(model, values, observed, draws, latents, data_names, count) -> dict[str, torch.Tensor]:
    """``(draws, n)`` log p(x_i | draw) per data variable: the model run with every latent
    fixed at one draw, each data site's log-density summed over the row's observed entries."""
    device = model.device
    batch = {name: value.to(device) for name, value in values.items()}
    mask = {name: m.to(device) for name, m in observed.items() if name in data_names}
    out = {name: [] for name in data_names}
    with torch.no_grad():
        for d in range(count):
            fixed = {name: draws[name][d].to(device) for name in latents}
            # entries missing in data that others read are a latent site of their own
            fixed.update({missing_site(name): draws[name][d].to(device) for name in mask})
            trace = poutine.trace(poutine.condition(model.model, data=fixed)).get_trace(batch, mask=mask)
            trace.compute_log_prob()
            for name in data_names:
                site = trace.nodes[name]
                out[name].append(site["log_prob"].reshape(-1).detach().cpu())
    return {name: torch.stack(rows) for name, rows in out.items()}

