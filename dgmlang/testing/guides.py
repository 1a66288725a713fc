"""Working with a compiled model's guide: train it on simulated data, draw from it, plant a bug
in it, measure its KL to an exact posterior, and check that its structure is a faithful inverse.

* `train_guide(model, steps=...)` fits only the guide, on fresh draws from the model's prior
  at every step (the model's params and networks stay as they are): amortized inference for
  that model, the setting SBC checks.
* `guide_samples(model, data, num_samples)` -- posterior draws from the guide for each point.
* `perturb_guide(guide, shift=..., scale=...)` -- the guide with every continuous latent's
  q moved or narrowed: a planted bug, to see a check fail.
* `gaussian_kl(model, posterior, data)` -- Monte Carlo KL(q || p) per data point against a
  `GaussianPosterior`.
* `assert_faithful_inverse(graph, plan)` -- d-separation: every latent, given what its guide
  sees, is independent in the model of every observation and earlier-sampled latent it does
  not see.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import networkx as nx
import numpy as np

from dgmlang.testing.exact import GaussianPosterior
from dgmlang.testing.plans import plan_of


def train_guide(
    model,
    *,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-2,
    final_lr: float = 1e-3,
    num_particles: int = 1,
    seed: int = 0,
    inputs: Mapping[str, Any] | None = None,
) -> list[float]:
    """Fit `model.guide` alone to the model's prior predictive: each step draws a fresh batch
    of `batch_size` points (latents and data) from the model and takes an Adam step on the
    ELBO with respect to the guide's parameters only, the learning rate decaying
    geometrically from `lr` to `final_lr`. Returns the loss per point per step.

    The model's params and networks are left untouched, so the trained guide approximates
    the posterior of *this* model, which is what SBC and `assert_guide_matches_posterior`
    then check. A guide with no parameters (every latent summed out) returns no losses. A model with globals is trained the same way (the prior draws a new global
    per batch), which amortizes the locals over the globals' prior; its globals' own
    variational parameters are best fitted with `model.fit` on one data set.
    """
    import pyro
    import torch

    from dgmlang.lower import elbo_for
    from dgmlang.testing.runtime import draw_inputs, prior_draw, seeded

    ir = model.ir
    keep = set(ir.names("data", "input"))
    elbo = elbo_for(ir, plan_of(model), num_particles=num_particles,
                    vectorize_particles=num_particles > 1)
    losses: list[float] = []
    # The batches come from the model itself, so Pyro's argument validation (a third of a
    # small model's step time) has nothing to catch.
    with seeded(seed), pyro.validation_enabled(False):

        def fresh_batch():
            given = draw_inputs(model, batch_size, inputs)
            values = prior_draw(model, given, batch_size)
            return {k: v for k, v in {**given, **values}.items() if k in keep}

        model.guide(fresh_batch())  # builds any lazily created parameters
        params = [p for p in model.guide.parameters() if p.requires_grad]
        if not params:  # every latent is summed out in the model: nothing to train
            return losses
        optimizer = torch.optim.Adam(params, lr=lr)
        decay = torch.optim.lr_scheduler.ExponentialLR(
            optimizer, gamma=(final_lr / lr) ** (1 / max(steps, 1))
        )
        for _ in range(steps):
            batch = fresh_batch()
            loss = elbo.differentiable_loss(model.model, model.guide, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            decay.step()
            value = loss.item() / batch_size
            if not np.isfinite(value):
                raise FloatingPointError(f"train_guide: loss {value} at step {len(losses)}")
            losses.append(value)
    for p in model.model.parameters():  # the ELBO's backward reached the model's too
        p.grad = None
    return losses


def guide_samples(model, data: Any, num_samples: int = 1000, *, guide: Callable | None = None,
                  seed: int | None = 0, latents: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Draws from the guide for each point of `data`: locals `(num_samples, n, *shape)`,
    globals `(num_samples, *shape)`, as float64 numpy arrays. `guide` replaces the model's."""
    from dgmlang.testing.runtime import as_batch, guide_draws, seeded, to_numpy

    batch = as_batch(model, data)
    with seeded(seed):
        draws = guide_draws(guide or model.guide, batch, num_samples,
                            names=list(latents) if latents is not None else None)
    return {k: to_numpy(v) for k, v in draws.items()}


# ---------------------------------------------------------------- planted bugs


def perturb_guide(guide: Callable, *, shift: float = 0.0, scale: float = 1.0,
                  latents: Iterable[str] | None = None) -> Callable:
    """`guide` with a planted bug in each continuous latent's q (all, or those in `latents`).

    In the unconstrained space where the guide's family lives, q's mean moves by `shift` of
    q's own standard deviations (in every coordinate) and its spread is multiplied by `scale`
    (0.5: twice too confident). A correct guide so perturbed no longer matches the posterior;
    the checks of this kit must say so.

    >>> import torch, pyro, pyro.distributions as dist
    >>> def guide():
    ...     return pyro.sample("z", dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1))
    >>> bad = perturb_guide(guide, shift=1.0, scale=0.5)
    >>> tr = pyro.poutine.trace(bad).get_trace()
    >>> fn = tr.nodes["z"]["fn"].base_dist
    >>> fn.loc.tolist(), fn.scale.tolist()
    ([1.0, 1.0], [0.5, 0.5])
    """
    from pyro.poutine.messenger import Messenger

    chosen = None if latents is None else set(latents)

    class _PlantedBug(Messenger):
        def _process_message(self, msg):
            support = getattr(msg["fn"], "support", None)  # None: a plate's subsample site
            if (msg["type"] == "sample" and not msg["is_observed"] and support is not None
                    and not support.is_discrete and (chosen is None or msg["name"] in chosen)):
                msg["fn"] = _perturbed(msg["fn"], shift, scale)

    def perturbed_guide(*args, **kwargs):
        with _PlantedBug():
            return guide(*args, **kwargs)

    perturbed_guide.__name__ = f"perturbed_{getattr(guide, '__name__', 'guide')}"
    return perturbed_guide


def _perturbed(fn, shift: float, scale: float):
    import pyro.distributions as dist

    if isinstance(fn, dist.Independent):
        return dist.Independent(_perturbed(fn.base_dist, shift, scale), fn.reinterpreted_batch_ndims)
    if isinstance(fn, dist.TransformedDistribution):
        return dist.TransformedDistribution(_perturbed(fn.base_dist, shift, scale), fn.transforms)
    if isinstance(fn, dist.Normal):
        return dist.Normal(fn.loc + shift * fn.scale, fn.scale * scale)
    if isinstance(fn, dist.MultivariateNormal):
        tril = fn.scale_tril
        sd = tril.pow(2).sum(-1).sqrt()
        return dist.MultivariateNormal(fn.loc + shift * sd, scale_tril=tril * scale)
    raise TypeError(
        f"perturb_guide cannot perturb a {type(fn).__name__}: it moves Normal and "
        "MultivariateNormal families (normal, mvn, and the base of a flow)"
    )


# ---------------------------------------------------------------- KL to an exact posterior


def gaussian_kl(model, posterior: GaussianPosterior, data: Any, *, num_samples: int = 500,
                guide: Callable | None = None, seed: int = 0) -> np.ndarray:
    """Monte Carlo KL(q(z | x_i) || p(z | x_i)) for each data point, `(n,)`, in nats.

    q is the guide's joint over the latents in `posterior.names` (the product of its
    conditionals, scored with Pyro's trace log-densities); p the exact Gaussian posterior.
    """
    import pyro.poutine as poutine
    import torch

    from dgmlang.testing.runtime import as_batch, repeat_rows, seeded, to_numpy

    batch = as_batch(model, data)
    n = len(next(iter(batch.values())))
    with seeded(seed), torch.no_grad():
        trace = poutine.trace(guide or model.guide).get_trace(repeat_rows(batch, num_samples))
        trace.compute_log_prob()
    log_q = np.zeros((num_samples, n))
    values = {}
    for name in posterior.names:
        site = trace.nodes.get(name)
        if site is None:
            raise ValueError(f"the guide has no site '{name}' to compare with the posterior")
        log_q += to_numpy(site["log_prob"]).reshape(num_samples, n)
        value = to_numpy(site["value"])
        values[name] = value.reshape(num_samples, n, *value.shape[1:])
    return (log_q - posterior.log_prob(values)).mean(axis=0)


# ---------------------------------------------------------------- faithfulness


def unfaithful_steps(graph: nx.DiGraph, plan) -> list[str]:
    """Every violation of faithfulness in `plan`, as sentences (empty when faithful).

    For each local latent the guide samples (in plan order), with S the values its guide sees, and
    O the observations, inputs, globals and earlier-sampled latents it does not see: in the
    model, the latent must be d-separated from O given S. Latents summed out in the model are
    neither seen nor conditioned on.
    """
    given = [n for n, a in graph.nodes(data=True) if a.get("role") in ("data", "input")]
    sampled_before: list[str] = []
    problems = []
    for step in plan.steps:
        if step.kind == "enumerated_in_model":
            continue
        if step.kind == "global":  # fitted to the whole data set, not amortized: given
            sampled_before.append(step.latent)
            continue
        seen = set(step.inputs)
        unseen = (set(given) | set(sampled_before)) - seen - {step.latent}
        sampled_before.append(step.latent)
        if not unseen:
            continue
        if not nx.is_d_separator(graph, {step.latent}, unseen, seen):
            connected = sorted(
                u for u in unseen if not nx.is_d_separator(graph, {step.latent}, {u}, seen)
            )
            problems.append(
                f"the guide of '{step.latent}' sees {{{', '.join(step.inputs)}}} but in the model "
                f"'{step.latent}' still depends on {', '.join(map(repr, connected))} given those"
            )
    return problems


def assert_faithful_inverse(graph: nx.DiGraph, plan) -> None:
    """Raise AssertionError naming each guide step that is not a faithful inverse.

    >>> import networkx as nx
    >>> from dgmlang.inverse import invert, naive_inverse
    >>> g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "e")])
    >>> nx.set_node_attributes(g, {"a": "latent", "b": "latent", "c": "latent",
    ...                            "d": "data", "e": "data"}, "role")
    >>> assert_faithful_inverse(g, invert(g))
    >>> assert_faithful_inverse(g, naive_inverse(g))
    Traceback (most recent call last):
      ...
    AssertionError: the guide is not a faithful inverse of the model:
      the guide of 'b' sees {d} but in the model 'b' still depends on 'e' given those
      the guide of 'c' sees {e} but in the model 'c' still depends on 'b', 'd' given those
    """
    problems = unfaithful_steps(graph, plan)
    if problems:
        raise AssertionError("the guide is not a faithful inverse of the model:\n  " + "\n  ".join(problems))


__all__ = [
    "train_guide", "guide_samples", "perturb_guide", "gaussian_kl",
    "unfaithful_steps", "assert_faithful_inverse",
]
