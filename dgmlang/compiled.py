"""The user's object: a compiled model to fit, sample, invert, score and save.

`CompiledModel` holds the Pyro model (`.model`, from `dgmlang.lower`) and its derived guide
(`.guide`, from `dgmlang.guide`); their parameters live in those modules (a state dict), so
two compiled models never share parameters. Its methods are thin: each checks nothing the
modules below do not check, and hands the model to the module that owns the work
(docs/inference.md describes the algorithms):

* `fit` — `dgmlang.training`: stochastic variational inference on shuffled minibatches
  (the likelihood scaled by N/B), with the ELBO or the importance-weighted bound;
* `sample`, `log_prob`, `invert` — `dgmlang.posterior`: forward draws (globals from the
  fitted guide), the importance-weighted estimate of log p(x_i) per data point, posterior
  samples by sampling/importance resampling or, where entries are missing,
  Metropolis-within-Gibbs (`dgmlang.gibbs`); the importance weights come from
  `dgmlang.weights`;
* `save` — `dgmlang.checkpoint` (``dgmlang.load_fitted`` reads the file back).

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
>>> losses = m.fit(x, steps=300, lr=0.01, seed=0, progress=False)
>>> len(losses), m.log_prob(x[:5], num_samples=10, seed=0).shape
(300, torch.Size([5]))
>>> m.invert(x[:5], num_samples=7, seed=0)["z"].shape
torch.Size([7, 5, 2])
"""
from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from dgmlang import chains, checkpoint, devices, export, posterior, training, weights
from dgmlang.distributions import DISTRIBUTIONS
from dgmlang.facts import ModelFacts
from dgmlang.guide import build_guide
from dgmlang.inverse import GuidePlan
from dgmlang.ir import ModelIR
from dgmlang.lower import lower
from dgmlang.runstate import TrainingState

__all__ = ["CompiledModel", "SiteRoles"]


@contextlib.contextmanager
def _collector_paused():
    """Python's cycle collector off while the model's modules are built: a model with
    thousands of sites creates hundreds of thousands of objects, none of them garbage, and
    the full collections their number sets off cost more than building them (0.2 s each with
    torch and pyro loaded; a 1,023-latent tree ran three)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(frozen=True)
class SiteRoles:
    """Which variables play which part in training and the posterior queries, from the
    model's facts and its guide plan (computed once per compiled model).

    `globals` (declaration order), `data` (topological order), `inputs`, `latents`;
    `model_enumerated` / `guide_enumerated`: discrete latents summed out in the model or
    enumerated in the guide; `guide_locals`: the latents the guide draws (all but the
    model-enumerated ones); `real_locals`: those of them with real support;
    `has_children[name]`: whether any variable depends on the data variable `name`.
    """

    globals: tuple[str, ...]
    data: tuple[str, ...]
    inputs: tuple[str, ...]
    latents: tuple[str, ...]
    model_enumerated: tuple[str, ...]
    guide_enumerated: tuple[str, ...]
    guide_locals: tuple[str, ...]
    real_locals: tuple[str, ...]
    has_children: Mapping[str, bool]

    @classmethod
    def of(cls, facts: ModelFacts, plan: GuidePlan) -> "SiteRoles":
        ir = facts.ir
        kinds = {step.latent: step.kind for step in plan.steps}
        model_enumerated = tuple(n for n, k in kinds.items() if k == "enumerated_in_model")
        guide_locals = tuple(n for n in ir.names("latent") if n not in model_enumerated)
        return cls(
            globals=tuple(ir.names("global")),
            data=tuple(facts.data_order),
            inputs=tuple(ir.names("input")),
            latents=tuple(ir.names("latent")),
            model_enumerated=model_enumerated,
            guide_enumerated=tuple(n for n, k in kinds.items() if k == "enumerated_in_guide"),
            guide_locals=guide_locals,
            real_locals=tuple(n for n in guide_locals
                              if DISTRIBUTIONS[facts.draws[n].dist].support == "real"),
            has_children={n: any(True for _ in facts.graph.successors(n)) for n in facts.data_order},
        )


class CompiledModel:
    """A checked model compiled to a Pyro model and a derived amortized guide.

    Build one with `dgmlang.compile`, `dgmlang.load` or the DSL's ``m.compile()``. Attributes:
    `model` and `guide` (plain Pyro callables ``f(batch, *, batch_size=None, size=None)``),
    `guide_plan`, `history` (``{"loss": [...per step], "validation": [...per epoch]}``),
    `fitted`, `ir`, `plan`, `facts` (`dgmlang.facts.ModelFacts`), `roles` (`SiteRoles`),
    `source`, `filename`.

    `facts` are the checked model's (``CheckedModel.facts``); without them they are derived
    here from `ir`.
    """

    def __init__(self, ir: ModelIR, plan: GuidePlan, *, source: str, filename: str,
                 facts: ModelFacts | None = None):
        self.ir = ir
        self.plan = plan
        self.source = source
        self.filename = filename
        self.facts = facts if facts is not None else ModelFacts(ir)
        self.roles = SiteRoles.of(self.facts, plan)
        with _collector_paused():
            self.model = lower(ir, facts=self.facts)
            self.guide = build_guide(ir, plan, self.model)
        self.history: dict[str, list[float]] = {"loss": [], "validation": []}
        self.fitted = False
        #: where the last `fit` stopped (`dgmlang.runstate.TrainingState`), None before any
        self.training_state: TrainingState | None = None

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return f"<CompiledModel {self.ir.name!r} ({state})>"

    @property
    def name(self) -> str:
        return self.ir.name

    # ------------------------------------------------------------------ device and dtype

    @property
    def device(self) -> torch.device:
        """The device the model computes on (the CPU unless moved with `to`)."""
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        """The float dtype the model computes in (float32 unless changed with `to`)."""
        return self.model.dtype

    def to(self, device: Any = None, dtype: Any = None) -> "CompiledModel":
        """Move the model and its guide — networks, params, buffers — to `device` ("cpu",
        "cuda", "cuda:N", "mps" or a `torch.device`; None keeps the current one) and/or
        convert them to `dtype` ("float32", "float64" or the torch dtype; None keeps it).
        Returns the model itself, as `torch.nn.Module.to` does. Constants the evaluator
        made are remade on the new device and dtype at the next call. From then on `fit`,
        `sample`, `log_prob` and `invert` compute there and return tensors there; data given
        on the CPU is moved a batch at a time. A GPU this torch cannot use, an unknown name,
        or float64 on mps is a `DGMUsageError`.

        >>> import dgmlang
        >>> m = dgmlang.compile("model m { data x\\n latent z\\n z ~ Normal(0, 1)\\n x ~ Normal(z, 1) }")
        >>> m.to(dtype="float64").dtype, m.device
        (torch.float64, device(type='cpu'))
        """
        target = self.device if device is None else devices.device_of(device)
        kind = self.dtype if dtype is None else devices.dtype_of(dtype)
        devices.check_pair(target, kind)
        for module in (self.model, self.guide):
            module.to(device=target, dtype=kind)
        return self

    @property
    def guide_plan(self) -> list[tuple[str, list[str] | str]]:
        """The guide's sampling order: ``(latent, [inputs])``, globals first; a latent summed
        out in the model appears as ``(name, "enumerated in model")``."""
        return self.plan.as_list()

    # ------------------------------------------------------------------ training

    def fit(self, data: Any, *, mask: Mapping[str, Any] | None = None,
            epochs: int | None = None, steps: int | None = None,
            batch_size: int | None = None, lr: float | None = None,
            num_particles: int | None = None, objective: str | None = None,
            validation: Any = None, seed: int | None = None, progress: bool = True,
            resume: bool = False, fresh_optimizer: bool = False,
            checkpoint: str | os.PathLike | None = None, checkpoint_every: int | None = None,
            checkpoint_seconds: float | None = training.DEFAULT_CHECKPOINT_SECONDS,
            should_stop: Callable[[], bool] | None = None,
            aux_weight: float = training.AUX_WEIGHT, compile: Any = False) -> list[float]:
        """Fit the model and guide to `data`; returns the loss per step, per data point.

        `data` holds every data and input variable shaped ``(n, *shape)``. With neither
        `epochs` nor `steps`, 200 epochs. `batch_size` (128), `lr` (1e-3, Adam),
        `num_particles` (1) and `objective` ("elbo", or "iwae": the importance-weighted
        bound with `num_particles` samples per data point) take those defaults when None.
        `validation` (data of the same form) is scored after every epoch into
        ``history["validation"]``. A NaN or infinite loss or gradient raises
        `DGMTrainingError`; the parameters are then those from before the failing step.

        Missing entries (NaN, or False in `mask`: per data variable, booleans shaped like it,
        True = observed), assumed missing at random, are marginalized exactly where nothing
        else depends on them: their terms are dropped (a Dirichlet row's observed part is
        scored by its marginal). Where others depend on them they are latents of their row:
        a continuous variable's drawn by the guide's imputation step (``plan.imputations``),
        a label's summed out (below); other patterns (discrete non-labels, Dirichlet rows)
        are a `DGMDataError` (invert handles them). The latents' guides read missing entries
        filled with the input reference's loc (0 once standardized), or by the imputation
        step. See docs/missing-data.md.

        A label (a Categorical or Bernoulli `data` variable a latent's guide reads, listed in
        ``plan.labels``) may be missing on some rows: semi-supervised learning. Those rows
        sum it out exactly under the derived q(label | x), labelled rows condition on it,
        and `aux_weight` (46) times -log q(label | x) of the labelled rows is added to the
        loss (the classification term of Kingma et al. 2014; 0 leaves it out).
        ``class_posterior`` reads q. See docs/inference.md, "Semi-supervised learning".

        A later `fit` keeps the optimizer's state (Adam's moments) from the last one, or from
        the loaded checkpoint, unless `fresh_optimizer`. `resume=True` continues the stored
        run exactly (its settings, data order position, random state and optimizer): to
        its planned end, or `steps`/`epochs` more; `fit(steps=20)` then
        ``fit(steps=20, resume=True)`` equals ``fit(steps=40)`` bit for bit on the CPU.
        With `checkpoint` (a file path) the model and its training state are written there
        atomically every `checkpoint_every` steps, every `checkpoint_seconds` seconds (60;
        None: not by time) and at the end. `should_stop` (called before every step) ends
        the fit early when it returns True, the checkpoint written.

        Inside a `torch.distributed` process group it trains data-parallel, `batch_size`
        rows per process (`dgmlang.distributed`); rank 0 alone writes the checkpoint, a
        `should_stop` on any process stops all after the same step, and a run resumes in
        as many processes as it was trained by. See `dgmlang.training.fit` and
        docs/inference.md.

        `compile=True` runs the training step through `torch.compile` (inductor; or give a
        backend name such as "aot_eager", or a backend function) from the run's second step
        on: one graph serves every batch size, the warm-up's seconds are appended to
        ``history["compile_seconds"]``, and where it cannot compile (no C++ compiler, a
        model the fast path does not serve, missing entries) a `DGMWarning` says so and the
        step runs eagerly. Compiled random draws differ from eager ones, so a compiled run is
        not bit-identical to an eager one. See `dgmlang.compiling`.
        """
        return training.fit(self, data, mask=mask, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr,
                            num_particles=num_particles, objective=objective,
                            validation=validation, seed=seed, progress=progress, resume=resume,
                            fresh_optimizer=fresh_optimizer, checkpoint=checkpoint,
                            checkpoint_every=checkpoint_every,
                            checkpoint_seconds=checkpoint_seconds, should_stop=should_stop,
                            aux_weight=aux_weight, compile=compile)

    def objective(self, objective: str, num_particles: int, *,
                  aux_weight: float = 0.0) -> Callable[..., torch.Tensor]:
        """The training loss ``loss(batch, size)`` that `fit` steps on (a differentiable
        scalar: the whole data set's negative bound estimated from the minibatch);
        `aux_weight` is `fit`'s, used where a batch's label is partly missing."""
        return training.objective(self, objective, num_particles, aux_weight=aux_weight)

    def iwae_bound(self, batch: Mapping[str, torch.Tensor], size: int, particles: int) -> torch.Tensor:
        """The importance-weighted bound on log p(data) estimated from a minibatch, built
        from Pyro traces (`dgmlang.weights.iwae_bound`)."""
        return weights.iwae_bound(self, batch, size, particles)

    # ------------------------------------------------------------------ posterior queries

    def sample(self, n: int, inputs: Mapping[str, Any] | None = None, *,
               seed: int | None = None) -> dict[str, torch.Tensor]:
        """Draw `n` data points from the model: every data variable and latent ``(n, *shape)``;
        globals (one draw: from the fitted guide, from the prior before fitting) ``(*shape)``.

        `inputs` holds every input variable, ``(n, *shape)`` or one value for all n.
        """
        return posterior.sample(self, n, inputs, seed=seed)

    def log_prob(self, data: Any, *, mask: Mapping[str, Any] | None = None,
                 num_samples: int = 1000, seed: int | None = None,
                 progress: bool = True, refine: int = 0) -> torch.Tensor:
        """Importance-weighted estimate of log p(x_i | inputs_i) per data point, shape (n,).

        The guide is the proposal (`num_samples` draws per point); latents the model sums
        out are summed exactly; with globals, each draw takes its own globals from the guide,
        so the estimate is the posterior predictive density. A lower bound in expectation
        that tightens as `num_samples` grows; usable as an outlier score.

        With missing entries (NaN, or False in `mask`, as in `fit`, under the same rules) it
        estimates the log-likelihood of the observed entries. `refine` > 0 (complete data
        only) refines the guide row by row first, as in `invert`: a tighter estimate where
        the posterior is sharper than the amortized guide. `progress` shows a bar once the
        call has run a few seconds.
        """
        refine_loss = training.objective(self, "elbo", 1) if refine else None
        return posterior.log_prob(self, data, mask=mask, num_samples=num_samples, seed=seed,
                                  progress=progress, refine=refine, refine_loss=refine_loss)

    def class_posterior(self, data: Any, name: str, *,
                        mask: Mapping[str, Any] | None = None) -> torch.Tensor:
        """q(`name` | x) per row of `data`, ``(n, K)`` probabilities: the derived classifier
        of a label (a Categorical or Bernoulli data variable in ``plan.labels``), trained by
        `fit` where the label is partly missing; ``argmax(1)`` classifies. Anything else
        is a `DGMUsageError`. See docs/inference.md, "Semi-supervised learning"."""
        return posterior.class_posterior(self, data, name, mask=mask)

    def marginals(self, data: Any, name: str) -> torch.Tensor:
        """Exact smoothing marginals of the latent chain `name`: p(name[t] = k | x) for every
        row of `data` and step t, ``(n, T, K)`` probabilities, by forward-backward (the chain
        is summed out exactly: nothing is estimated). See docs/inference.md, "Sequences".

        >>> import dgmlang, torch
        >>> m = dgmlang.compile('''
        ... model hmm {
        ...     param  trans[2, 2] : simplex
        ...     data   x[5]
        ...     latent s[5]
        ...     s[0] ~ Categorical(logits = zeros(2))
        ...     for t in 1:5 { s[t] ~ Categorical(probs = trans[s[t - 1]]) }
        ...     for t in 0:5 { x[t] ~ Normal(4 * s[t], 1) }
        ... }''')
        >>> p = m.marginals({"x": torch.tensor([[0.0, 0.1, 4.2, 3.9, -0.3]])}, "s")
        >>> p.shape, p[0].argmax(-1).tolist()
        (torch.Size([1, 5, 2]), [0, 0, 1, 1, 0])
        """
        return chains.marginals(self, data, name)

    def invert(self, data: Any, *, mask: Mapping[str, Any] | None = None,
               num_samples: int = 100, seed: int | None = None,
               progress: bool = True, method: str = "resample", refine: int = 0) -> dict[str, torch.Tensor]:
        """Posterior samples given `data`: every latent ``(num_samples, n, *shape)``, every
        global ``(num_samples, *shape)``, every data variable ``(num_samples, n, *shape)`` with
        its missing entries filled in.

        `mask` holds, per data variable, booleans shaped like it (True = observed); NaN
        entries, and data variables left out, are missing too. The latents come from
        sampling/importance resampling with the guide as proposal, and missing entries that
        nothing depends on from the model given them; points whose missing entries other
        variables depend on (or all points with missing entries, ``method="gibbs"``) run
        Metropolis-within-Gibbs chains (see docs/missing-data.md). `refine` > 0 first takes
        that many Adam steps per fully observed row on offsets to the guide networks' outputs,
        the networks fixed (semi-amortized inference, `dgmlang.refine`): for posteriors
        sharper than the amortized guide hits, at the cost of the steps.
        `progress` shows a bar over the rows once the call has run a few seconds.
        """
        refine_loss = training.objective(self, "elbo", 1) if refine else None
        return posterior.invert(self, data, mask=mask, num_samples=num_samples, seed=seed,
                                progress=progress, method=method, refine=refine, refine_loss=refine_loss)

    def to_arviz(self, data: Any, *, draws: Mapping[str, torch.Tensor] | None = None,
                 mask: Mapping[str, Any] | None = None, num_samples: int = 100,
                 seed: int | None = None) -> Any:
        """The posterior given `data` as an `arviz.InferenceData` (posterior, observed_data and
        log_likelihood groups; one chain); `draws` are `invert`'s for the same data, or
        `invert` is called. Needs ``pip install 'dgmlang[arviz]'``; see `dgmlang.export`."""
        return export.to_inference_data(self, data, draws=draws, mask=mask,
                                        num_samples=num_samples, seed=seed)

    # ------------------------------------------------------------------ checkpoints

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model to one file: source text, metadata (JSON) and the
        parameters, atomically; ``dgmlang.load_fitted(path)`` reads it back.

        >>> import dgmlang, tempfile, os
        >>> m = dgmlang.compile("model m { data x\\n x ~ Normal(0, 1) }")
        >>> path = os.path.join(tempfile.mkdtemp(), "m.pt")
        >>> m.save(path)
        >>> dgmlang.load_fitted(path).name
        'm'
        """
        checkpoint.save(self, path)
