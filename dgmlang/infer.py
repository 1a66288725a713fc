"""The user's object: a compiled model to fit, sample, invert, score and save.

`CompiledModel` holds the Pyro model (`.model`, from `dgmlang.lower`) and its derived guide
(`.guide`, from `dgmlang.guide`); their parameters live in those modules (a state dict), so
two compiled models never share parameters. docs/inference.md describes the algorithms:

* `fit` — stochastic variational inference on shuffled minibatches (the likelihood scaled by
  N/B), with the ELBO (`Trace_ELBO`, or `TraceEnum_ELBO` when discrete latents are summed out)
  or the importance-weighted bound (``objective="iwae"``, per data point, built from traces);
* `sample` — forward draws from the model (globals from the fitted guide);
* `invert` — posterior samples given data, missing entries included: sampling/importance
  resampling with the guide as proposal, or Metropolis-within-Gibbs when entries are missing;
* `log_prob` — the importance-weighted estimate of log p(x_i) per data point;
* `save` / `load_fitted` — a single checkpoint file (source text, JSON metadata, tensors).

>>> import dgmlang, torch
>>> m = dgmlang.compile('''
... model ppca {
...     const W = [[1.0, 0.5], [0.2, -1.0], [0.7, 0.7]]
...     data   x[3]
...     latent z[2]
...     z ~ Normal(0, 1)
...     x ~ Normal(matmul(W, z), 0.1)
... }''')
>>> x = m.sample(64, seed=0)["x"]
>>> losses = m.fit(x, steps=3, seed=0, progress=False)
>>> len(losses), m.log_prob(x[:5], num_samples=10, seed=0).shape
(3, torch.Size([5]))
>>> m.invert(x[:5], num_samples=7, seed=0)["z"].shape
torch.Size([7, 5, 2])
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from tqdm import tqdm

import pyro
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import infer_discrete
from pyro.poutine.util import prune_subsample_sites

from dgmlang.data import Dataset, prepare_data, prepare_inputs, support_of
from dgmlang.distributions import DISTRIBUTIONS
from dgmlang.errors import DGMCheckpointError, DGMTrainingError, DGMUsageError
from dgmlang.facts import ModelFacts
from dgmlang.graph import build_graph, topological_order
from dgmlang.ir import ModelIR
from dgmlang.nets import seeded

__all__ = ["CompiledModel", "load_fitted", "FORMAT_VERSION"]

#: Version of the checkpoint layout written by `save`; `load_fitted` refuses newer ones.
FORMAT_VERSION = 1
CHECKPOINT_KIND = "dgmlang-checkpoint"
#: Training length when neither `epochs` nor `steps` is given.
DEFAULT_EPOCHS = 200
#: Proposals per data point for sampling/importance resampling in `invert`.
SIR_PROPOSALS = 1000
#: With globals: proposals per data point for each posterior draw of the globals.
SIR_PROPOSALS_PER_GLOBAL = 32
#: Warm-up sweeps of each `invert` chain that accept every guide proposal (pseudo-Gibbs,
#: Rezende et al. 2014): they only move the chains near the posterior before the exact sweeps.
WARMUP_SWEEPS = 20
#: Metropolis-within-Gibbs sweeps per chain when `invert` fills missing entries.
GIBBS_SWEEPS = 100
#: (particles x data points) evaluated at once by `log_prob` and `invert` (bounds memory).
CHUNK_CELLS = 16384
#: The plate of vectorized particles; the data plate is dim -1, so particles go at -2 and
#: enumerated discrete latents from -3 leftwards.
PARTICLES = "particles"
OBJECTIVES = ("elbo", "iwae")


@dataclass(frozen=True)
class _Weights:
    """Traces of one importance-sampling pass and its log weights.

    `local` is ``log p(x_i, z_i | g) - log q(z_i | x_i, g)`` per particle and data point
    ``(K, B)`` (``(B,)`` without a particle plate), with latents the model sums out already
    summed, `log_p` its first term; `global_` is ``log p(g) - log q(g)`` per particle
    ``(K,)`` (a scalar without).
    """

    guide_trace: poutine.Trace
    local: torch.Tensor
    log_p: torch.Tensor
    global_: torch.Tensor


class CompiledModel:
    """A checked model compiled to a Pyro model and a derived amortized guide.

    Build one with `dgmlang.compile`, `dgmlang.load` or the DSL's ``m.compile()``. Attributes:
    `model` and `guide` (plain Pyro callables ``f(batch, *, batch_size=None, size=None)``),
    `guide_plan`, `history` (``{"loss": [...per step], "validation": [...per epoch]}``),
    `fitted`, `ir`, `source`, `filename`.
    """

    def __init__(self, ir: ModelIR, plan, *, source: str, filename: str):
        from dgmlang.guide import build_guide
        from dgmlang.lower import lower

        self.ir = ir
        self.plan = plan
        self.source = source
        self.filename = filename
        self.model = lower(ir)
        self.guide = build_guide(ir, plan, self.model)
        self.history: dict[str, list[float]] = {"loss": [], "validation": []}
        self.fitted = False
        kinds = {step.latent: step.kind for step in plan.steps}
        graph = build_graph(ir)
        self.facts = ModelFacts(ir, graph)
        self._globals = ir.names("global")
        self._data = [n for n in topological_order(graph) if n in ir.names("data")]
        self._inputs = ir.names("input")
        self._model_enumerated = [n for n, k in kinds.items() if k == "enumerated_in_model"]
        self._guide_enumerated = [n for n, k in kinds.items() if k == "enumerated_in_guide"]
        self._guide_locals = [n for n in ir.names("latent") if n not in self._model_enumerated]
        self._real_locals = [n for n in self._guide_locals
                             if DISTRIBUTIONS[ir.draw(n).dist].support == "real"]
        self._has_children = {name: any(True for _ in graph.successors(name)) for name in self._data}

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return f"<CompiledModel {self.ir.name!r} ({state})>"

    @property
    def name(self) -> str:
        return self.ir.name

    @property
    def guide_plan(self) -> list[tuple[str, list[str] | str]]:
        """The guide's sampling order: ``(latent, [inputs])``, globals first; a latent summed
        out in the model appears as ``(name, "enumerated in model")``."""
        return self.plan.as_list()

    # ------------------------------------------------------------------ fit

    def fit(self, data: Any, *, epochs: int | None = None, steps: int | None = None,
            batch_size: int = 128, lr: float = 1e-3, num_particles: int = 1,
            objective: str = "elbo", validation: Any = None, seed: int | None = None,
            progress: bool = True) -> list[float]:
        """Fit the model and guide to `data`; returns the loss per step, per data point.

        `data` holds every data and input variable shaped ``(n, *shape)``. With neither
        `epochs` nor `steps`, 200 epochs. `objective` is "elbo" or "iwae" (the
        importance-weighted bound with `num_particles` samples per data point). `validation`
        (data of the same form) is scored after every epoch into ``history["validation"]``.
        A NaN or infinite loss or gradient raises `DGMTrainingError`; the parameters are then
        those from before the failing step.
        """
        _positive_int("batch_size", batch_size)
        _positive_int("num_particles", num_particles)
        if epochs is not None and steps is not None:
            raise DGMUsageError("give epochs or steps, not both")
        if epochs is not None:
            _positive_int("epochs", epochs)
        if steps is not None:
            _positive_int("steps", steps)
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0 or math.isinf(lr):
            raise DGMUsageError(f"lr must be a positive number, not {lr!r}")
        loss_fn = self._objective(objective, num_particles)
        dataset = prepare_data(self.ir, data, purpose="fit", facts=self.facts)
        held_out = prepare_data(self.ir, validation, purpose="validation",
                                facts=self.facts) if validation is not None else None

        n = dataset.n
        rows_per_step = min(batch_size, n)
        steps_per_epoch = math.ceil(n / rows_per_step)
        total = steps if steps is not None else (epochs or DEFAULT_EPOCHS) * steps_per_epoch
        losses: list[float] = []
        named = self._named_parameters()
        # a model with nothing to learn (fixed distributions only) is scored, not updated
        optimizer = torch.optim.Adam([p for _, p in named], lr=lr) if named else None
        with seeded(seed), tqdm(total=total, disable=not progress, desc=f"fit {self.name}",
                                unit="step") as bar:
            while len(losses) < total:
                order = torch.randperm(n)
                for start in range(0, n, rows_per_step):
                    if len(losses) == total:
                        break
                    batch = dataset.rows(order[start:start + rows_per_step]).values
                    loss = self._step(loss_fn, batch, n, optimizer, named, len(losses) + 1)
                    losses.append(loss / n)
                    self.history["loss"].append(loss / n)
                    self.fitted = True
                    bar.set_postfix(loss=f"{loss / n:.4g}", refresh=False)
                    bar.update()
                if held_out is not None:
                    score = self._held_out_loss(loss_fn, held_out, rows_per_step)
                    self.history["validation"].append(score)
                    bar.set_postfix(loss=f"{losses[-1]:.4g}", validation=f"{score:.4g}", refresh=False)
        return losses

    def _objective(self, objective: str, num_particles: int) -> Callable[..., torch.Tensor]:
        """The training loss ``loss(batch, size)`` (a differentiable scalar, the whole data
        set's negative bound estimated from the minibatch).

        Models the fast path serves (see `dgmlang.fastpath`) get the same estimator computed
        without Pyro's per-step tracing; the others, and every error, come from Pyro's path."""
        from dgmlang import fastpath

        fast = fastpath.build(self.ir, self.plan, self.model, self.guide,
                              objective=objective, num_particles=num_particles)
        if fast is not None:
            return fast.loss
        if objective == "elbo":
            from dgmlang.lower import elbo_for

            elbo = elbo_for(self.ir, self.plan, num_particles=num_particles,
                            vectorize_particles=num_particles > 1)

            def loss(batch, size):
                try:
                    return elbo.differentiable_loss(self.model, self.guide, batch, size=size)
                except ValueError as err:
                    # nothing the loss depends on is learned (no params, or unused ones): Pyro
                    # refuses a differentiable loss, so score it plainly and skip the update
                    if "cannot be differentiated" not in str(err):
                        raise
                    return torch.tensor(elbo.loss(self.model, self.guide, batch, size=size))

            return loss
        if objective == "iwae":
            self._check_importance_weighting("objective='iwae'")
            if self._guide_enumerated:
                raise DGMUsageError(
                    f"objective='iwae' cannot train latent '{self._guide_enumerated[0]}': it is a "
                    "discrete latent enumerated in the guide, and the importance-weighted bound "
                    "would need a score-function gradient for it",
                    hint="use objective='elbo' for this model",
                )
            return lambda batch, size: -self._iwae_bound(batch, size, num_particles)
        raise DGMUsageError(f"unknown objective {objective!r}", hint="use 'elbo' or 'iwae'")

    def _step(self, loss_fn, batch, size, optimizer, named, step: int) -> float:
        try:
            # Pyro's argument validation finds a model's mistakes on the first step; later
            # steps skip it (it costs up to a fifth of a step) and rely on the finiteness
            # checks below, the data having been validated before training.
            with pyro.validation_enabled(False) if step > 1 else contextlib.nullcontext():
                loss = loss_fn(batch, size)
        except ValueError as err:
            if "Expected parameter" not in str(err) and "Expected value" not in str(err):
                raise
            raise DGMTrainingError(
                f"training stopped at step {step}: a distribution got invalid parameters "
                f"({str(err).splitlines()[0]})",
                hint=_failure_hint(first_update=not self.fitted),
            ) from None
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DGMTrainingError(
                f"training stopped at step {step}: the loss is {value}",
                hint=_failure_hint(first_update=not self.fitted),
            )
        if optimizer is None or not loss.requires_grad:
            return value
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not _gradients_finite(named):
            for name, param in named:
                if param.grad is not None and not bool(torch.isfinite(param.grad).all()):
                    optimizer.zero_grad(set_to_none=True)
                    raise DGMTrainingError(
                        f"training stopped at step {step}: the gradient of {name} is not finite",
                        hint=_failure_hint(first_update=not self.fitted),
                    )
        optimizer.step()
        return value

    def _held_out_loss(self, loss_fn, held_out: Dataset, rows: int) -> float:
        """The objective on held-out data per data point: each chunk estimates the whole
        set's loss (scaled by N/B), averaged with the chunks' sizes as weights."""
        total = 0.0
        with torch.no_grad():
            for start in range(0, held_out.n, rows):
                chunk = held_out.rows(slice(start, start + rows))
                total += float(loss_fn(chunk.values, held_out.n)) * chunk.n / held_out.n
        return total / held_out.n

    def _named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The parameters of the model and the guide (each once)."""
        seen: dict[int, tuple[str, torch.nn.Parameter]] = {}
        for prefix, module in (("model", self.model), ("guide", self.guide)):
            for name, param in module.named_parameters():
                seen.setdefault(id(param), (f"{prefix}.{name}", param))
        return list(seen.values())

    # ------------------------------------------------------------------ importance weights

    def _check_importance_weighting(self, what: str) -> None:
        discrete = [g for g in self._globals if DISTRIBUTIONS[self.ir.draw(g).dist].discrete]
        if discrete:
            raise DGMUsageError(
                f"{what} cannot serve this model: global '{discrete[0]}' is discrete and summed "
                "out over the whole data set, so the weights do not split into data points",
                hint="declare it per data point (latent) or make it continuous",
            )

    def _weights(self, batch: Mapping[str, torch.Tensor], *, particles: int | None,
                 given: Mapping[str, torch.Tensor] | None = None, size: int | None = None,
                 guide_values: Mapping[str, torch.Tensor] | None = None) -> _Weights:
        """One importance-sampling pass: latents from the guide (vectorized over `particles`
        in a plate at dim -2, or one draw per data point when None), values in `given` held
        fixed in guide and model, and latents the model enumerates summed out exactly.

        With `guide_values`, the guide is evaluated at those values instead of drawing."""
        guide = self.guide
        fixed = {**(given or {}), **(guide_values or {})}
        if fixed:
            guide = poutine.condition(guide, data=fixed)
        guide = _in_particles(guide, particles)
        guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(batch, size=size))
        latents = {name: site["value"] for name, site in guide_trace.nodes.items()
                   if site["type"] == "sample"}
        model = _in_particles(poutine.condition(self.model, data=latents), particles)
        if self._model_enumerated:
            first_dim = -3 if particles is not None else -2
            model = poutine.enum(model, first_available_dim=first_dim)
        model_trace = prune_subsample_sites(poutine.trace(model).get_trace(batch, size=size))
        rows = next(iter(batch.values())).shape[0]
        plate_shape = (particles, rows) if particles is not None else (rows,)
        p_local, p_global = self._site_sums(model_trace, plate_shape)
        q_local, q_global = self._site_sums(guide_trace, plate_shape)
        return _Weights(guide_trace, p_local - q_local, p_local, p_global - q_global)

    def _site_sums(self, trace: poutine.Trace, plate_shape: tuple[int, ...]):
        """Per data point and per particle: the summed log densities of the local sites
        (enumeration dims summed out by log-sum-exp), and of the global sites."""
        local: torch.Tensor | float = 0.0
        global_: torch.Tensor | float = 0.0
        globals_ = set(self._globals)
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["infer"].get("_deterministic"):
                continue
            log_p = site["fn"].log_prob(site["value"])
            log_p = scale_and_mask(log_p, mask=site["mask"])
            if name in globals_:
                global_ = global_ + log_p
            else:
                local = local + log_p
        local = torch.as_tensor(local)
        local = local.reshape((1,) * max(0, len(plate_shape) - local.dim()) + tuple(local.shape))
        enum_shape = tuple(local.shape[: local.dim() - len(plate_shape)])
        local = local.expand(*enum_shape, *plate_shape)
        if enum_shape:
            local = local.reshape(-1, *plate_shape).logsumexp(0)
        global_ = torch.as_tensor(global_)
        if len(plate_shape) == 2:  # globals sit outside the data plate: (K, 1) -> (K,)
            global_ = global_.expand(plate_shape[0], 1).reshape(plate_shape[0])
        return local, global_

    def _iwae_bound(self, batch: Mapping[str, torch.Tensor], size: int, particles: int) -> torch.Tensor:
        """The importance-weighted bound on log p(data), estimated from a minibatch.

        Globals are drawn once per step from the guide (their term is the ELBO's); given them,
        each data point gets its own log-mean-exp over `particles` samples of its latents,
        and the sum over the minibatch is scaled by N/B outside the log-sum-exp.
        """
        given = {}
        if self._globals:
            trace = poutine.trace(self.guide).get_trace(batch, size=size)
            given = {g: trace.nodes[g]["value"] for g in self._globals}
        weights = self._weights(batch, particles=particles, given=given, size=size)
        rows = weights.local.shape[-1]
        per_point = weights.local.logsumexp(0) - math.log(particles)
        return per_point.sum() * (size / rows) + weights.global_.mean()

    # ------------------------------------------------------------------ sample

    def sample(self, n: int, inputs: Mapping[str, Any] | None = None, *,
               seed: int | None = None) -> dict[str, torch.Tensor]:
        """Draw `n` data points from the model: every data variable and latent ``(n, *shape)``;
        globals (one draw: from the fitted guide, from the prior before fitting) ``(*shape)``.

        `inputs` holds every input variable, ``(n, *shape)`` or one value for all n.
        """
        _positive_int("n", n)
        given_inputs = prepare_inputs(self.ir, inputs, n, facts=self.facts)
        with seeded(seed), torch.no_grad():
            model = self.model
            if self._globals and self.fitted:
                draws = self._guide_globals(1)
                model = poutine.condition(model, data={g: v[0] for g, v in draws.items()})
            trace = poutine.trace(model).get_trace(given_inputs, batch_size=n)
        names = self.ir.names("data", "latent", "global")
        return {name: trace.nodes[name]["value"].detach() for name in names}

    def _guide_globals(self, draws: int) -> dict[str, torch.Tensor]:
        """`draws` samples of every global from the guide, each ``(draws, *shape)``."""
        if not self._globals:
            return {}
        batch = self._placeholder_batch()
        trace = poutine.trace(_in_particles(self.guide, draws)).get_trace(batch)
        return {g: trace.nodes[g]["value"].reshape(draws, *self.ir.variable(g).shape)
                for g in self._globals if g in trace.nodes}

    def _placeholder_batch(self) -> dict[str, torch.Tensor]:
        """One data point of valid placeholder values (inputs and data), for running the guide
        where only its globals are wanted."""
        batch = {}
        for name in self._inputs + self._data:
            var = self.ir.variable(name)
            support = support_of(self.ir, var, facts=self.facts)
            dtype = torch.long if support.integer_dtype else torch.get_default_dtype()
            batch[name] = torch.full((1, *var.shape), support.placeholder, dtype=dtype)
        return batch

    # ------------------------------------------------------------------ log_prob

    def log_prob(self, data: Any, *, num_samples: int = 1000, seed: int | None = None) -> torch.Tensor:
        """Importance-weighted estimate of log p(x_i | inputs_i) per data point, shape (n,).

        The guide is the proposal (`num_samples` draws per point); latents the model sums
        out are summed exactly; with globals, each draw takes its own globals from the guide,
        so the estimate is the posterior predictive density. A lower bound in expectation
        that tightens as `num_samples` grows; usable as an outlier score.
        """
        _positive_int("num_samples", num_samples)
        self._check_importance_weighting("log_prob")
        dataset = prepare_data(self.ir, data, purpose="log_prob", facts=self.facts)
        points = max(1, min(dataset.n, CHUNK_CELLS // num_samples))
        particles = max(1, min(num_samples, CHUNK_CELLS // points))
        result = []
        with seeded(seed), torch.no_grad():
            for start in range(0, dataset.n, points):
                batch = dataset.rows(slice(start, start + points)).values
                total = None
                for done in range(0, num_samples, particles):
                    k = min(particles, num_samples - done)
                    lse = self._weights(batch, particles=k).local.logsumexp(0)
                    total = lse if total is None else torch.logaddexp(total, lse)
                result.append(total - math.log(num_samples))
        return torch.cat(result)

    # ------------------------------------------------------------------ invert

    def invert(self, data: Any, *, mask: Mapping[str, Any] | None = None,
               num_samples: int = 100, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Posterior samples given `data`: every latent ``(num_samples, n, *shape)``, every
        global ``(num_samples, *shape)``, every data variable ``(num_samples, n, *shape)`` with
        its missing entries filled in.

        `mask` holds, per data variable, booleans shaped like it (True = observed); NaN
        entries, and data variables left out, are missing too. Without missing entries the
        latents come from sampling/importance resampling with the guide as proposal; points
        with missing entries run Metropolis-within-Gibbs chains (see docs/inference.md).
        """
        _positive_int("num_samples", num_samples)
        self._check_importance_weighting("invert")
        dataset = prepare_data(self.ir, data, purpose="invert", allow_missing=True, mask=mask,
                               facts=self.facts)
        with seeded(seed), torch.no_grad():
            globals_ = self._guide_globals(num_samples)
            complete = torch.ones(dataset.n, dtype=torch.bool)
            for name, observed in dataset.observed.items():
                complete &= observed.reshape(dataset.n, -1).all(-1)
            pieces: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
            for rows in (complete.nonzero().squeeze(-1), (~complete).nonzero().squeeze(-1)):
                if len(rows) == 0:
                    continue
                part = dataset.rows(rows)
                sampler = self._resample if bool(complete[rows[0]]) else self._gibbs
                pieces.append((rows, sampler(part, globals_, num_samples)))
        out: dict[str, torch.Tensor] = {}
        for name in self._data + self.ir.names("latent"):
            first = pieces[0][1][name]
            value = first.new_empty(num_samples, dataset.n, *first.shape[2:])
            for rows, samples in pieces:
                value[:, rows] = samples[name]
            out[name] = value
        out.update(globals_)
        return out

    def _resample(self, part: Dataset, globals_: dict[str, torch.Tensor], draws: int) -> dict:
        """Sampling/importance resampling for fully observed points: proposals from the guide,
        one resampled per posterior draw in proportion to p(x, z | g) / q(z | x, g).

        Without globals each point has `SIR_PROPOSALS` proposals and `draws` are resampled
        from them; with globals, each posterior draw of the globals gets its own
        `SIR_PROPOSALS_PER_GLOBAL` proposals and one of them is kept."""
        per_group = SIR_PROPOSALS_PER_GLOBAL if globals_ else SIR_PROPOSALS
        if not self._guide_locals:
            per_group = 1
        groups = draws if globals_ else 1
        particles = groups * per_group
        points = max(1, min(part.n, CHUNK_CELLS // particles))
        out: dict[str, list[torch.Tensor]] = {}
        for start in range(0, part.n, points):
            batch = part.rows(slice(start, start + points)).values
            rows = next(iter(batch.values())).shape[0]
            given = {g: v.repeat_interleave(per_group, 0).unsqueeze(1) for g, v in globals_.items()}
            weights = self._weights(batch, particles=particles, given=given)
            log_w = weights.local.reshape(groups, per_group, rows).permute(0, 2, 1)
            if globals_:  # one kept proposal per draw of the globals: (draws, rows)
                index = torch.distributions.Categorical(logits=log_w).sample()
                index = index + per_group * torch.arange(groups).unsqueeze(1)
            else:  # `draws` resampled proposals per point: (draws, rows)
                index = torch.distributions.Categorical(logits=log_w[0]).sample((draws,))
            point = torch.arange(rows)
            chosen = {name: weights.guide_trace.nodes[name]["value"][index, point]
                      for name in self._guide_locals}
            chosen.update(self._sample_enumerated(batch, chosen, globals_, draws))
            for name in self._data:
                chosen[name] = batch[name].expand(draws, *batch[name].shape)
            for name, value in chosen.items():
                out.setdefault(name, []).append(value)
        return {name: torch.cat(values, dim=1) for name, values in out.items()}

    def _sample_enumerated(self, batch, latents, globals_, draws: int) -> dict[str, torch.Tensor]:
        """Latents the model sums out, drawn from their exact conditional posterior given the
        data and the other latents (`infer_discrete`), ``(draws, rows)``."""
        if not self._model_enumerated:
            return {}
        given = {**latents, **{g: v.unsqueeze(1) for g, v in globals_.items()}}
        model = _in_particles(poutine.condition(self.model, data=given), draws)
        model = infer_discrete(model, first_available_dim=-3, temperature=1)
        trace = poutine.trace(model).get_trace(batch)
        rows = next(iter(batch.values())).shape[0]
        return {name: trace.nodes[name]["value"].expand(draws, rows) for name in self._model_enumerated}

    def _gibbs(self, part: Dataset, globals_: dict[str, torch.Tensor], draws: int) -> dict:
        """Metropolis-within-Gibbs for points with missing entries (Mattei & Frellsen 2018),
        one chain per posterior draw and data point (see `_run_chains`). Without globals the
        chains of a chunk of points run side by side as rows; with globals, one batch of
        chains per posterior draw of the globals, which stay fixed in it."""
        if globals_:
            runs = [self._run_chains(part, {g: v[s] for g, v in globals_.items()})
                    for s in range(draws)]
            return {name: torch.stack([run[name] for run in runs]) for name in runs[0]}
        points = max(1, min(part.n, CHUNK_CELLS // draws))
        out: dict[str, list[torch.Tensor]] = {}
        for start in range(0, part.n, points):
            chunk = part.rows(slice(start, start + points))
            chains = self._run_chains(_repeat_rows(chunk, draws), {})
            for name, value in chains.items():
                out.setdefault(name, []).append(value.reshape(draws, chunk.n, *value.shape[1:]))
        return {name: torch.cat(values, dim=1) for name, values in out.items()}

    def _run_chains(self, part: Dataset, given: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One chain per row of `part`, targeting p(latents, missing entries | observed ones,
        `given`). A sweep updates the latents (`_update_locals`), draws the latents the model
        sums out from their exact conditional, then redraws the missing entries
        (`_redraw_missing`). Chains start from the prior predictive, run `WARMUP_SWEEPS`
        sweeps that accept every guide proposal, then `GIBBS_SWEEPS` exact sweeps; the last
        state is returned (data, latents, summed-out latents by name, one row per chain)."""
        rows = part.n
        inputs = {name: part.values[name] for name in self._inputs}
        model = poutine.condition(self.model, data=given) if given else self.model
        prior = poutine.trace(model).get_trace(inputs, batch_size=rows)
        data = {}
        for name in self._data:
            value = part.values[name]
            if name in part.observed:
                draw = prior.nodes[name]["value"].to(value.dtype)
                value = torch.where(part.observed[name], value, draw)
            data[name] = value
        # Missing entries of a variable nothing depends on are summed out when the discrete
        # latents are drawn (the model's mask), so those and the entries are drawn jointly.
        leaves = {n: m for n, m in part.observed.items() if not self._has_children[n]}
        exact = not self._guide_locals and len(leaves) == len(part.observed)
        latents: dict[str, torch.Tensor] = {}
        enumerated: dict[str, torch.Tensor] = {}
        for sweep in range(1 if exact else WARMUP_SWEEPS + GIBBS_SWEEPS):
            batch = {**inputs, **data}
            # as in fit: argument validation on the first sweep only (the values it would
            # check later come from the same distributions)
            with pyro.validation_enabled(False) if sweep else contextlib.nullcontext():
                if self._guide_locals:
                    latents = self._update_locals(batch, given, latents,
                                                  warmup=sweep < WARMUP_SWEEPS)
                enumerated = self._sample_enumerated_rows(batch, {**latents, **given}, leaves)
                data = self._redraw_missing(part, inputs, data, {**latents, **enumerated, **given})
        return {**data, **latents, **enumerated}

    def _update_locals(self, batch, given, latents, *, warmup: bool) -> dict[str, torch.Tensor]:
        """The latents' Gibbs block: an independent Metropolis-Hastings step with the guide
        q(z | completed data) as proposal, then a random-walk step (during warm-up, the
        proposal is taken as it is)."""
        proposal = self._weights(batch, particles=None, given=given)
        proposed = {n: proposal.guide_trace.nodes[n]["value"] for n in self._guide_locals}
        if warmup:
            return proposed
        current = self._weights(batch, particles=None, given=given, guide_values=latents)
        accept = torch.rand(proposal.local.shape[0]).log() < proposal.local - current.local
        latents = {n: _where_rows(accept, proposed[n], latents[n]) for n in latents}
        log_p = torch.where(accept, proposal.log_p, current.log_p)
        return self._random_walk(batch, given, latents, log_p)

    def _random_walk(self, batch, given, latents, log_p) -> dict[str, torch.Tensor]:
        """A random-walk Metropolis step on the real-valued latents, the increment the
        difference of two independent guide draws over sqrt(2): symmetric and scaled like the
        posterior, it keeps chains moving where the guide is too narrow for the independent
        proposal to be accepted."""
        if not self._real_locals:
            return latents
        guide = poutine.condition(self.guide, data=given) if given else self.guide
        first, second = (poutine.trace(guide).get_trace(batch) for _ in range(2))
        moved = dict(latents)
        for name in self._real_locals:
            step = first.nodes[name]["value"] - second.nodes[name]["value"]
            moved[name] = latents[name] + step / math.sqrt(2)
        new = self._weights(batch, particles=None, given=given, guide_values=moved)
        accept = torch.rand(log_p.shape[0]).log() < new.log_p - log_p
        return {n: _where_rows(accept, moved[n], latents[n]) for n in latents}

    def _sample_enumerated_rows(self, batch, fixed, mask) -> dict[str, torch.Tensor]:
        """`_sample_enumerated` for chains laid out as rows (no particle plate); entries
        False in `mask` are left out of the likelihood (marginalized)."""
        if not self._model_enumerated:
            return {}
        model = infer_discrete(poutine.condition(self.model, data=fixed),
                               first_available_dim=-2, temperature=1)
        trace = poutine.trace(model).get_trace(batch, mask=mask)
        return {name: trace.nodes[name]["value"] for name in self._model_enumerated}

    def _redraw_missing(self, part: Dataset, inputs, data, fixed) -> dict[str, torch.Tensor]:
        """One Gibbs sweep over the missing entries, data variable by data variable in
        topological order: propose them from the model given their parents; a variable that
        other variables depend on is accepted with the Metropolis-Hastings ratio of those."""
        model = poutine.condition(self.model, data=fixed)
        data = dict(data)
        for name in self._data:
            if name not in part.observed:
                continue
            trace = poutine.trace(model).get_trace({**inputs, **data})
            value = data[name]
            draw = trace.nodes[name]["fn"].sample().to(value.dtype)
            proposed = torch.where(part.observed[name], value, draw)
            if self._has_children[name]:
                new_trace = poutine.trace(model).get_trace({**inputs, **data, name: proposed})
                gain = _others_log_prob(new_trace, name) - _others_log_prob(trace, name)
                accept = torch.rand(part.n).log() < gain
                proposed = _where_rows(accept, proposed, value)
            data[name] = proposed
        return data

    # ------------------------------------------------------------------ checkpoints

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model to one file: source text, metadata (JSON) and the
        parameters, atomically (a temporary file in the same folder, then `os.replace`).

        >>> import dgmlang, tempfile, os
        >>> m = dgmlang.compile("model m { data x\\n x ~ Normal(0, 1) }")
        >>> path = os.path.join(tempfile.mkdtemp(), "m.pt")
        >>> m.save(path)
        >>> dgmlang.load_fitted(path).name
        'm'
        """
        if not self.source:
            raise DGMUsageError("this model has no source text to save",
                                hint="compile it from .dgm text or a file to save it")
        import dgmlang

        metadata = {
            "kind": CHECKPOINT_KIND,
            "format_version": FORMAT_VERSION,
            "dgmlang_version": dgmlang.__version__,
            "torch_version": torch.__version__,
            "model": self.ir.name,
            "filename": self.filename,
            "fitted": self.fitted,
            "guide_plan": [[n, inputs] for n, inputs in self.guide_plan],
            "history": self.history,
        }
        payload = {
            "metadata": json.dumps(metadata),
            "source": self.source,
            "model_state": self.model.state_dict(),
            "guide_state": self.guide.state_dict(),
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


def load_fitted(path: str | os.PathLike) -> CompiledModel:
    """A model saved with `CompiledModel.save`: the source is compiled again and the
    parameters restored. Only plain tensors and strings are read (``weights_only``); a file
    holding pickled objects, another kind of file, or a newer format is a `DGMCheckpointError`.
    """
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
        import dgmlang

        raise DGMCheckpointError(
            f"{path} was written in checkpoint format {version} by dgmlang "
            f"{metadata.get('dgmlang_version', '?')}; this dgmlang ({dgmlang.__version__}) "
            f"reads formats up to {FORMAT_VERSION}",
            hint="upgrade dgmlang to load it",
        )
    from dgmlang.frontend import compile_source

    compiled = compile_source(payload["source"], model=name,
                              filename=metadata.get("filename", str(path)))
    try:
        compiled.model.load_state_dict(payload["model_state"])
        compiled.guide.load_state_dict(payload["guide_state"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise DGMCheckpointError(
            f"{path}: the saved parameters do not fit model '{name}' ({str(err).splitlines()[0]})"
        ) from None
    history = metadata.get("history", {})
    compiled.history = {"loss": list(history.get("loss", [])),
                        "validation": list(history.get("validation", []))}
    compiled.fitted = bool(metadata.get("fitted", False))
    return compiled


# ---------------------------------------------------------------- helpers


def _gradients_finite(named: list[tuple[str, torch.nn.Parameter]]) -> bool:
    """Whether every gradient is finite, in one cheap test (a tenth of checking each entry):
    a gradient holding NaN or an infinity has a non-finite sum. A finite gradient whose sum
    overflows fails it too, so the caller confirms entry by entry before stopping."""
    sums = [param.grad.sum() for _, param in named if param.grad is not None]
    return not sums or bool(torch.stack(sums).isfinite().all())


def _failure_hint(*, first_update: bool) -> str:
    """What to try when training fails. On the model's first update
    nothing has been learned yet, so the learning rate cannot be the cause: the model or the
    data is; after updates, they may have gone too far."""
    if first_update:
        return ("it failed on the first step, before any update: check the model's parameters "
                "(their initial values, an unconstrained param where a positive one is needed) "
                "and the data")
    return ("the model keeps the parameters from before this step; try a smaller lr "
            "or check the data")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DGMUsageError(f"{name} must be a positive integer, not {value!r}")


def _in_particles(fn: Callable, particles: int | None) -> Callable:
    """`fn` run inside the particle plate (dim -2), or `fn` itself when `particles` is None."""
    if particles is None:
        return fn

    def vectorized(*args, **kwargs):
        with pyro.plate(PARTICLES, particles, dim=-2):
            return fn(*args, **kwargs)

    return vectorized


def _where_rows(accept: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """`new` in the rows (leading dim) where `accept`, else `old`."""
    return torch.where(accept.reshape(-1, *(1,) * (new.dim() - 1)), new, old)


def _repeat_rows(part: Dataset, times: int) -> Dataset:
    """Every row repeated `times` times, block after block (row ``s * n + i`` is row i)."""
    values = {k: v.repeat(times, *(1,) * (v.dim() - 1)) for k, v in part.values.items()}
    observed = {k: v.repeat(times, *(1,) * (v.dim() - 1)) for k, v in part.observed.items()}
    return Dataset(values, observed, part.n * times)


def _others_log_prob(trace: poutine.Trace, name: str) -> torch.Tensor:
    """Per row: the log density of every site in `trace` but `name` (rows = data plate)."""
    total: torch.Tensor | float = 0.0
    for site_name, site in prune_subsample_sites(trace).nodes.items():
        if site["type"] != "sample" or site_name == name:
            continue
        log_p = scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"])
        total = total + log_p
    return torch.as_tensor(total)
