"""Alike guide networks run as one.

A model with hundreds of latents of one kind (a tree's nodes at one depth, say) has as many
small guide networks, each a few microseconds of arithmetic behind tens of microseconds of
Python and autograd overhead. `alike_runs` finds runs of consecutive guide sites (in plan
order) that read none of each other and whose networks, families and inputs match;
`draw_run` stacks their weights, runs the networks as one batched matrix product, draws
every latent of the run from one Normal and scores them at once. Values, densities and
gradients are those of the sites drawn one by one; only the random numbers are drawn in
another order (one call for the whole run), so runs are formed only where they are long
(`MIN_RUN` sites) and a model of ordinary size draws exactly as Pyro's guide does.

>>> import dgmlang
>>> text = "model wide {\\n" + "".join(f"latent z{i}\\ndata x{i}\\n" for i in range(20)) + \\
...        "".join(f"z{i} ~ Normal(0, 1)\\nx{i} ~ Normal(z{i}, 1)\\n" for i in range(20)) + "}"
>>> m = dgmlang.compile(text)
>>> [len(item) if isinstance(item, tuple) else 1 for item in alike_runs(m.guide.sites)]
[20]
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.distributions import biject_to
from torch.distributions.transforms import identity_transform

from dgmlang.nets import FlatMLP
from dgmlang.sites import GuideSite, family_distribution, plate_batch_shape, split_raw

__all__ = ["MIN_RUN", "alike_runs", "draw_run"]

#: Fewest alike sites drawn as one run.
MIN_RUN = 16


def alike_runs(sites: Sequence[GuideSite]) -> list[GuideSite | tuple[GuideSite, ...]]:
    """`sites` in order, consecutive alike ones (`_signature`) that read none of each other
    gathered in tuples of at least `MIN_RUN`."""
    items: list[GuideSite | tuple[GuideSite, ...]] = []
    run: list[GuideSite] = []

    def close() -> None:
        if len(run) >= MIN_RUN:
            items.append(tuple(run))
        else:
            items.extend(run)
        run.clear()

    names: set[str] = set()
    run_signature = None
    for site in sites:
        signature = _signature(site)
        if run and (signature is None or signature != run_signature
                    or any(item.name in names for item in site.inputs)):
            close()
            names.clear()
        if signature is None:
            items.append(site)
            continue
        run.append(site)
        run_signature = signature
        names.add(site.name)
    close()
    return items


def _signature(site: GuideSite) -> tuple | None:
    """What must match for sites to run as one, or None for a site that never does: a local
    latent of the normal family on the real line, guided by a plain mlp."""
    info = site.info
    if type(site) is not GuideSite or site.is_global or site.enumerated or info is None \
            or info.family != "normal" or site.flow is not None or info.support is None \
            or biject_to(info.support) is not identity_transform:
        return None
    network = site.network
    if not isinstance(network, FlatMLP) or network.layers is None:
        return None
    layers = []
    for layer in network.layers:
        if isinstance(layer, nn.Linear):
            if layer.bias is None:
                return None
            layers.append(("linear", layer.in_features, layer.out_features))
        elif next(layer.parameters(), None) is None and not list(layer.buffers()):
            layers.append((type(layer), repr(layer)))
        else:
            return None
    inputs = tuple((item.rank, item.classes) for item in site.inputs)
    return (tuple(layers), inputs, info.size, info.unconstrained)


def draw_run(run: tuple[GuideSite, ...], env: dict, local_plates, per_point: bool):
    """Draw every latent of `run` into `env` (reparameterized) and return their log q, per
    particle and point when `per_point`, else summed; None when the run must be drawn site
    by site (`dgmlang.refine` has offsets installed, or the inputs' shapes differ)."""
    if any(site.offset is not None for site in run):
        return None
    features = [site.features(env) for site in run]
    shape = features[0].shape
    if any(f.shape != shape for f in features):
        return None
    batch = shape[:-1]
    x = torch.stack(features).reshape(len(run), -1, shape[-1])
    for index, layer in enumerate(run[0].network.layers):
        if isinstance(layer, nn.Linear):
            weight = torch.stack([site.network.layers[index].weight for site in run])
            bias = torch.stack([site.network.layers[index].bias for site in run])
            x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        else:
            x = layer(x)
    info = run[0].info
    target = plate_batch_shape(tuple(batch), local_plates)
    # each site's batch dims right-aligned under the plates', as a site's own q broadcasts
    aligned = (len(run),) + (1,) * (len(target) - len(batch)) + tuple(batch)
    raw = split_raw(info, x.reshape(*aligned, x.shape[-1]))
    if not all(site.reference.neutral for site in run):
        view = (len(run),) + (1,) * len(target) + (info.size,)
        loc = torch.stack([site.reference.loc for site in run]).reshape(view)
        scale = torch.stack([site.reference.scale for site in run]).reshape(view)
        raw = {"loc": loc + scale * raw["loc"], "scale": scale * raw["scale"]}
    q = family_distribution(info, info.support, raw, None)
    target = (len(run), *target)
    if tuple(q.batch_shape) != target:
        q = q.expand(target)
    value = q.rsample()
    for site, drawn in zip(run, value.unbind(0)):
        env[site.name] = drawn
    log_q = q.log_prob(value)
    return log_q.sum(0) if per_point else log_q.sum()
