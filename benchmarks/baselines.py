"""Hand-written reference implementations of the benchmark models, to measure dgmlang against.

Everything a user would otherwise write by hand for the models of issue 7, in two styles:

* **plain PyTorch** — the loss written out with `torch.distributions`, one Adam step;
* **hand-written Pyro** — a model and a guide with ``pyro.plate(subsample_size=...)``, trained
  with `SVI` and ``Trace_ELBO`` / ``JitTrace_ELBO`` (``TraceEnum_ELBO`` for the mixture).

The models (networks use ReLU; a Normal fed by one network takes its loc from the first half of
the output and its scale through softplus from the second half):

* ``vae`` (``digits_vae_bench``): z[16] ~ Normal(0, 1); x[64] ~ Binomial(16, logits=mlp(z, 256-256));
  guide z ~ Normal(mlp(x, 256-256)) — the encoder sees the raw counts 0..16.
* ``hvae`` (``digits_hvae``): z2[8] ~ Normal(0, 1); z1[16] ~ Normal(mlp(z2, 128));
  x ~ Binomial(16, logits=mlp(z1, 256-256)); guide z1 ~ Normal(mlp(x, 256-256)), then
  z2 ~ Normal(mlp(z1, 128)) (the faithful inverse of z2 -> z1 -> x).
* ``gmm``: param mu[3, 2]; c ~ Categorical(logits=zeros(3)); x[2] ~ Normal(mu[c], 0.5);
  c is summed out exactly, the guide has no latents.
* ``dmm`` (``digits_dmm``, a deep Markov model): each digit is a sequence of 8 rows x[t] of 8
  pixels; z[0][8] ~ Normal(0, 1), z[t] ~ Normal(trans(z[t - 1])) with trans an mlp(64),
  x[t] ~ Binomial(16, logits=emit(z[t])) with emit an mlp(128). The guide is Krishnan et al.'s
  structured inference network in the layout of Pyro's ``examples/dmm.py``: a GRU (width 64,
  learned initial state) run over the reversed rows summarizes x[t:], a combiner
  ``0.5 * (tanh(W z[t - 1]) + h[t])`` gives q(z[t] | z[t - 1], x[t:]) through a linear loc and a
  softplus scale; z[0] has heads of its own on h[0] (dgmlang's derived guide does the same).
  The Pyro version samples step by step, ``z_t`` and ``x_t`` per t inside the plate and
  ``pyro.markov``, as dmm.py does (every row is 8 long, so no ``poutine.mask``).

**The loss of one step**, the same in every style: the single-sample reparameterized ELBO of a
minibatch of B points drawn at random from N (without replacement, as Pyro's plate draws them),
scaled by N/B, negated, and divided by N — the negative ELBO *per data point*,
``-mean_i ELBO_i``. Pyro's ``Trace_ELBO`` returns the same estimator times N (its loss is the
total over the data set), so the Pyro steps here divide it by N before returning it; the
gradient differs only by that constant, which Adam ignores. The mixture's loss is exact (no
sampling): ``-mean_i log sum_c p(c) p(x_i | c)``.

Each ``*_step`` builder returns a ``Step``: call it for one training step, it returns the loss per
data point as a float (every style syncs on it, as a user logging the loss does).

`iwae_log_likelihood` scores a test set with the importance-weighted bound (K = 1000), for any
encoder/decoder pair given as functions. ``python benchmarks/baselines.py`` trains the VAE for
200 epochs with each objective and prints the test figures that issue 4 quotes.

>>> torch.manual_seed(0) is not None
True
>>> x = torch.randint(0, 17, (300, 64)).float()
>>> step = plain_vae_step(VAENetworks(seed=0), x, batch_size=32)
>>> loss = step()
>>> 0 < loss < 1e4
True
"""
from __future__ import annotations

import argparse
import itertools
import math
import time
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn
import torch.distributions as td

import pyro
import pyro.distributions as dist
import pyro.optim
from pyro.infer import SVI, JitTrace_ELBO, JitTraceEnum_ELBO, Trace_ELBO, TraceEnum_ELBO, config_enumerate

TOTAL_COUNT = 16
DATA_DIM = 64
LATENT_DIM = 16
HIDDEN = (256, 256)
HVAE_TOP_DIM = 8
HVAE_TOP_HIDDEN = (128,)
GMM_COMPONENTS = 3
GMM_SCALE = 0.5
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
# The deep Markov model (``dmm``): each digit read as DMM_STEPS rows of DMM_FEATURES pixels.
DMM_STEPS = 8
DMM_FEATURES = 8
DMM_LATENT = 8
DMM_TRANS_HIDDEN = (64,)
DMM_EMIT_HIDDEN = (128,)
DMM_RNN = 64

Step = Callable[[], float]
_instance_ids = itertools.count()


# --------------------------------------------------------------------------- networks


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one), for benchmark headers."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mlp(in_features: int, hidden: tuple[int, ...], out_features: int) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    sizes = (in_features, *hidden, out_features)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class NormalHead(nn.Module):
    """An mlp whose output is split into a Normal's loc and its scale (through softplus)."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int):
        super().__init__()
        self.net = mlp(in_features, hidden, 2 * out_features)
        self.out_features = out_features

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.net(inputs).split(self.out_features, dim=-1)
        return loc, nn.functional.softplus(raw_scale)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for the block without disturbing the caller's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class VAENetworks(nn.Module):
    """The VAE's encoder x -> (loc, scale) of z and decoder z -> logits of x, seeded."""

    def __init__(self, *, seed: int = 0):
        super().__init__()
        with _seeded(seed):
            self.encoder = NormalHead(DATA_DIM, HIDDEN, LATENT_DIM)
            self.decoder = mlp(LATENT_DIM, HIDDEN, DATA_DIM)


class HVAENetworks(nn.Module):
    """The two-level VAE: prior net z2 -> z1, decoder z1 -> x, guide nets x -> z1 and z1 -> z2."""

    def __init__(self, *, seed: int = 0):
        super().__init__()
        with _seeded(seed):
            self.prior_z1 = NormalHead(HVAE_TOP_DIM, HVAE_TOP_HIDDEN, LATENT_DIM)
            self.decoder = mlp(LATENT_DIM, HIDDEN, DATA_DIM)
            self.encoder_z1 = NormalHead(DATA_DIM, HIDDEN, LATENT_DIM)
            self.encoder_z2 = NormalHead(LATENT_DIM, HVAE_TOP_HIDDEN, HVAE_TOP_DIM)


class DMMNetworks(nn.Module):
    """The deep Markov model's networks: model ``trans`` (z[t - 1] -> loc, scale of z[t]) and
    ``emit`` (z[t] -> logits of x[t]); guide ``rnn`` (backward over the rows, initial state
    ``h_0``), the combiner (``from_latent``, ``to_loc``, ``to_scale``) and the first step's
    heads (``first_loc``, ``first_scale``). Sizes as dgmlang's ``digits_dmm`` and its guide."""

    def __init__(self, *, seed: int = 0):
        super().__init__()
        with _seeded(seed):
            self.trans = NormalHead(DMM_LATENT, DMM_TRANS_HIDDEN, DMM_LATENT)
            self.emit = mlp(DMM_LATENT, DMM_EMIT_HIDDEN, DMM_FEATURES)
            self.rnn = nn.GRU(DMM_FEATURES, DMM_RNN, batch_first=True)
            self.h_0 = nn.Parameter(torch.zeros(DMM_RNN))
            self.from_latent = nn.Linear(DMM_LATENT, DMM_RNN)
            self.to_loc = nn.Linear(DMM_RNN, DMM_LATENT)
            self.to_scale = nn.Linear(DMM_RNN, DMM_LATENT)
            self.first_loc = nn.Linear(DMM_RNN, DMM_LATENT)
            self.first_scale = nn.Linear(DMM_RNN, DMM_LATENT)

    def summary(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, F)`` -> ``(B, T, W)``: the GRU run over the reversed rows, put back in order
        (at t it has read x[T - 1], ..., x[t]), as dmm.py's ``rnn`` and ``pad_and_reverse``."""
        h_0 = self.h_0.expand(1, x.shape[0], DMM_RNN).contiguous()
        out, _ = self.rnn(x.flip(1), h_0)
        return out.flip(1)

    def first(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """loc and scale of q(z[0] | x[0:]) from the summary at 0."""
        return self.first_loc(h), nn.functional.softplus(self.first_scale(h))

    def combine(self, z_prev: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """loc and scale of q(z[t] | z[t - 1], x[t:]): dmm.py's ``Combiner``."""
        hidden = 0.5 * (torch.tanh(self.from_latent(z_prev)) + h)
        return self.to_loc(hidden), nn.functional.softplus(self.to_scale(hidden))

    def copy_from(self, compiled) -> "DMMNetworks":
        """Take every weight from dgmlang's compiled ``digits_dmm`` (`DMM_TEXT`), whose
        references must be neutral (loc 0, scale 1, as calibration leaves them on the digits):
        then this and dgmlang compute one loss (used to compare the two estimates)."""
        nets, guide = compiled.model.nets, compiled.guide.nets["z"]
        for reference in (compiled.guide.reference("z"), compiled.guide.input_reference("x")):
            if bool((reference.loc != 0).any() or (reference.scale != 1).any()):
                raise ValueError("dgmlang's guide references are not neutral: the weights alone do not give its loss")
        pairs = [(self.trans.net, nets["trans"].layers), (self.emit, nets["emit"].layers),
                 (self.rnn, guide.rnn)]
        pairs += [(getattr(self, name), getattr(guide, name))
                  for name in ("from_latent", "to_loc", "to_scale", "first_loc", "first_scale")]
        with torch.no_grad():
            for mine, theirs in pairs:
                for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
                    a.copy_(b)
            self.h_0.copy_(guide.start)
        return self


#: The same model in dgmlang (`step_time.py`'s dmm row; the data: digits as (N, 8, 8)).
DMM_TEXT = f"""
model digits_dmm {{
    data   x[{DMM_STEPS}, {DMM_FEATURES}]
    latent z[{DMM_STEPS}, {DMM_LATENT}] guide(hidden = [{DMM_RNN}])
    net trans = mlp(hidden = [{", ".join(map(str, DMM_TRANS_HIDDEN))}])
    net emit  = mlp(hidden = [{", ".join(map(str, DMM_EMIT_HIDDEN))}])

    z[0] ~ Normal(0, 1)
    for t in 1:{DMM_STEPS} {{ z[t] ~ Normal(trans(z[t - 1])) }}
    for t in 0:{DMM_STEPS} {{ x[t] ~ Binomial({TOTAL_COUNT}, logits = emit(z[t])) }}
}}
"""


def dmm_data(x: torch.Tensor) -> torch.Tensor:
    """Digits ``(N, 64)`` as sequences of rows ``(N, DMM_STEPS, DMM_FEATURES)``."""
    return x.reshape(len(x), DMM_STEPS, DMM_FEATURES)


def gmm_initial_means(*, seed: int = 0) -> torch.Tensor:
    """A seeded standard-Normal draw for the mixture's means (zeros could not separate)."""
    with _seeded(seed):
        return torch.randn(GMM_COMPONENTS, 2)


def gmm_data(n: int = 1000, *, seed: int = 0) -> torch.Tensor:
    """``n`` 2-D points from three well-separated Normal clusters with scale 0.5."""
    centers = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    with _seeded(seed):
        labels = torch.randint(0, GMM_COMPONENTS, (n,))
        return centers[labels] + GMM_SCALE * torch.randn(n, 2)


def _standard_normal(dim: int, batch_shape: tuple[int, ...] = (), device=None) -> td.Distribution:
    shape = (*batch_shape, dim)
    return td.Independent(td.Normal(torch.zeros(shape, device=device), torch.ones(shape, device=device)), 1)


def _random_batch(num_data: int, batch_size: int, device=None) -> torch.Tensor:
    """Indices of a minibatch, drawn exactly as ``pyro.plate(subsample_size=...)`` draws them."""
    return torch.randperm(num_data, device=device)[:batch_size]


# --------------------------------------------------------------------------- plain PyTorch losses


def vae_log_weights(nets: VAENetworks, x: torch.Tensor, num_particles: int = 1) -> torch.Tensor:
    """log p(x, z) - log q(z | x) for ``num_particles`` reparameterized z per point: (K, B)."""
    loc, scale = nets.encoder(x)
    q = td.Independent(td.Normal(loc, scale), 1)
    z = q.rsample((num_particles,)) if num_particles > 1 else q.rsample().unsqueeze(0)
    likelihood = td.Independent(td.Binomial(TOTAL_COUNT, logits=nets.decoder(z)), 1)
    return likelihood.log_prob(x) + _standard_normal(LATENT_DIM, device=z.device).log_prob(z) - q.log_prob(z)


def vae_elbo_loss(nets: VAENetworks, x_batch: torch.Tensor) -> torch.Tensor:
    """The negative single-sample ELBO per data point of a minibatch (see the module docs)."""
    return -vae_log_weights(nets, x_batch).mean()


def vae_iwae_loss(nets: VAENetworks, x_batch: torch.Tensor, num_particles: int) -> torch.Tensor:
    """The negative importance-weighted bound per data point, K particles per point."""
    log_w = vae_log_weights(nets, x_batch, num_particles)
    return -(torch.logsumexp(log_w, dim=0) - math.log(num_particles)).mean()


def hvae_elbo_loss(nets: HVAENetworks, x_batch: torch.Tensor) -> torch.Tensor:
    """The negative single-sample ELBO per data point of the two-level VAE."""
    q_z1 = td.Independent(td.Normal(*nets.encoder_z1(x_batch)), 1)
    z1 = q_z1.rsample()
    q_z2 = td.Independent(td.Normal(*nets.encoder_z2(z1)), 1)
    z2 = q_z2.rsample()
    p_z1 = td.Independent(td.Normal(*nets.prior_z1(z2)), 1)
    p_x = td.Independent(td.Binomial(TOTAL_COUNT, logits=nets.decoder(z1)), 1)
    elbo = (
        _standard_normal(HVAE_TOP_DIM, device=z2.device).log_prob(z2)
        + p_z1.log_prob(z1)
        + p_x.log_prob(x_batch)
        - q_z1.log_prob(z1)
        - q_z2.log_prob(z2)
    )
    return -elbo.mean()


def dmm_elbo_loss(nets: DMMNetworks, x_batch: torch.Tensor) -> torch.Tensor:
    """The negative single-sample ELBO per data point of the deep Markov model: the guide
    drawn step by step (the same draws, in the same order, as the Pyro version), the model's
    terms of all steps at once."""
    h = nets.summary(x_batch)
    zs, log_q = [], 0.0
    for t in range(DMM_STEPS):
        loc, scale = nets.first(h[:, 0]) if t == 0 else nets.combine(zs[-1], h[:, t])
        q = td.Normal(loc, scale)
        zs.append(q.rsample())
        log_q = log_q + q.log_prob(zs[-1]).sum(-1)
    return -(dmm_log_joint(nets, x_batch, torch.stack(zs, dim=1)) - log_q).mean()


def dmm_log_joint(nets: DMMNetworks, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x, z) per row of the deep Markov model, x ``(B, T, F)``, z ``(B, T, D)``: the
    terms of all steps at once."""
    p_rest = td.Normal(*nets.trans(z[:, :-1]))
    return (td.Normal(0.0, 1.0).log_prob(z[:, 0]).sum(-1) + p_rest.log_prob(z[:, 1:]).sum((-2, -1))
            + td.Binomial(TOTAL_COUNT, logits=nets.emit(z)).log_prob(x).sum((-2, -1)))


def gmm_loss(mu: torch.Tensor, x_batch: torch.Tensor) -> torch.Tensor:
    """The exact negative log-likelihood per data point, the component summed out."""
    component_log_prob = td.Normal(mu, GMM_SCALE).log_prob(x_batch.unsqueeze(-2)).sum(-1)  # (B, 3)
    return -(torch.logsumexp(component_log_prob, dim=-1) - math.log(GMM_COMPONENTS)).mean()


def _plain_step(loss_fn: Callable[[torch.Tensor], torch.Tensor], params, x: torch.Tensor,
                batch_size: int, lr: float) -> Step:
    optimizer = torch.optim.Adam(params, lr=lr)

    def step() -> float:
        x_batch = x[_random_batch(len(x), batch_size, x.device)]
        loss = loss_fn(x_batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def plain_vae_step(nets: VAENetworks, x: torch.Tensor, *, batch_size: int = BATCH_SIZE,
                   lr: float = LEARNING_RATE, num_particles: int = 1, objective: str = "elbo") -> Step:
    """A plain-PyTorch training step of the VAE: ``objective`` is ``"elbo"`` or ``"iwae"``."""
    if objective == "elbo":
        loss_fn = lambda xb: vae_elbo_loss(nets, xb)  # noqa: E731
    elif objective == "iwae":
        loss_fn = lambda xb: vae_iwae_loss(nets, xb, num_particles)  # noqa: E731
    else:
        raise ValueError(f"objective must be 'elbo' or 'iwae', not {objective!r}")
    return _plain_step(loss_fn, nets.parameters(), x, batch_size, lr)


def plain_hvae_step(nets: HVAENetworks, x: torch.Tensor, *, batch_size: int = BATCH_SIZE,
                    lr: float = LEARNING_RATE) -> Step:
    """A plain-PyTorch training step of the two-level VAE."""
    return _plain_step(lambda xb: hvae_elbo_loss(nets, xb), nets.parameters(), x, batch_size, lr)


def plain_dmm_step(nets: DMMNetworks, x: torch.Tensor, *, batch_size: int = BATCH_SIZE,
                   lr: float = LEARNING_RATE) -> Step:
    """A plain-PyTorch training step of the deep Markov model; `x` is ``(N, T, F)``."""
    return _plain_step(lambda xb: dmm_elbo_loss(nets, xb), nets.parameters(), x, batch_size, lr)


def plain_gmm_step(mu_init: torch.Tensor, x: torch.Tensor, *, batch_size: int = BATCH_SIZE,
                   lr: float = LEARNING_RATE) -> Step:
    """A plain-PyTorch training step of the mixture's means (maximum likelihood)."""
    mu = nn.Parameter(mu_init.clone())
    return _plain_step(lambda xb: gmm_loss(mu, xb), [mu], x, batch_size, lr)


# --------------------------------------------------------------------------- hand-written Pyro


class PyroVAE:
    """The VAE as a Pyro user writes it: ``pyro.module`` plus a subsampled ``pyro.plate``.

    ``model(x)`` and ``guide(x)`` take the whole data set; the plate picks the minibatch.
    ``subsample`` fixes the minibatch's indices (for tests).
    """

    def __init__(self, nets: VAENetworks, *, batch_size: int = BATCH_SIZE):
        self.nets = nets
        self.batch_size = batch_size
        self.prefix = f"vae{next(_instance_ids)}"  # keeps two instances apart in the param store
        self.device = next(nets.parameters()).device
        self.prior_loc = torch.zeros(LATENT_DIM, device=self.device)
        self.prior_scale = torch.ones(LATENT_DIM, device=self.device)

    def model(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        pyro.module(f"{self.prefix}.decoder", self.nets.decoder)
        with pyro.plate("data", x.shape[0], subsample_size=self.batch_size, subsample=subsample,
                        device=self.device) as idx:
            z = pyro.sample("z", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            logits = self.nets.decoder(z)
            pyro.sample("x", dist.Binomial(TOTAL_COUNT, logits=logits).to_event(1), obs=x[idx])

    def guide(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        pyro.module(f"{self.prefix}.encoder", self.nets.encoder)
        with pyro.plate("data", x.shape[0], subsample_size=self.batch_size, subsample=subsample,
                        device=self.device) as idx:
            loc, scale = self.nets.encoder(x[idx])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class PyroHVAE:
    """The two-level VAE in hand-written Pyro; the guide draws z1 from x, then z2 from z1."""

    def __init__(self, nets: HVAENetworks, *, batch_size: int = BATCH_SIZE):
        self.nets = nets
        self.batch_size = batch_size
        self.prefix = f"hvae{next(_instance_ids)}"
        self.device = next(nets.parameters()).device
        self.prior_loc = torch.zeros(HVAE_TOP_DIM, device=self.device)
        self.prior_scale = torch.ones(HVAE_TOP_DIM, device=self.device)

    def model(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        pyro.module(f"{self.prefix}.prior_z1", self.nets.prior_z1)
        pyro.module(f"{self.prefix}.decoder", self.nets.decoder)
        with pyro.plate("data", x.shape[0], subsample_size=self.batch_size, subsample=subsample,
                        device=self.device) as idx:
            z2 = pyro.sample("z2", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(*self.nets.prior_z1(z2)).to_event(1))
            pyro.sample("x", dist.Binomial(TOTAL_COUNT, logits=self.nets.decoder(z1)).to_event(1), obs=x[idx])

    def guide(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        pyro.module(f"{self.prefix}.encoder_z1", self.nets.encoder_z1)
        pyro.module(f"{self.prefix}.encoder_z2", self.nets.encoder_z2)
        with pyro.plate("data", x.shape[0], subsample_size=self.batch_size, subsample=subsample,
                        device=self.device) as idx:
            z1 = pyro.sample("z1", dist.Normal(*self.nets.encoder_z1(x[idx])).to_event(1))
            pyro.sample("z2", dist.Normal(*self.nets.encoder_z2(z1)).to_event(1))


class PyroDMM:
    """The deep Markov model in hand-written Pyro, laid out as Pyro's ``examples/dmm.py``: one
    ``pyro.module`` for every network, a subsampled plate, and a ``pyro.markov`` loop over t
    with one ``pyro.sample`` per step for z (model and guide) and for x (model)."""

    def __init__(self, nets: DMMNetworks, *, batch_size: int = BATCH_SIZE):
        self.nets = nets
        self.batch_size = batch_size
        self.prefix = f"dmm{next(_instance_ids)}"
        self.device = next(nets.parameters()).device
        self.prior_loc = torch.zeros(DMM_LATENT, device=self.device)
        self.prior_scale = torch.ones(DMM_LATENT, device=self.device)

    def model(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        pyro.module(self.prefix, self.nets)
        with pyro.plate("data", x.shape[0], subsample_size=self.batch_size, subsample=subsample,
                        device=self.device) as idx:
            x_batch = x[idx]
            z_prev = None
            for t in pyro.markov(range(DMM_STEPS)):
                loc, scale = ((self.prior_loc, self.prior_scale) if z_prev is None
                              else self.nets.trans(z_prev))
                z_t = pyro.sample(f"z_{t}", dist.Normal(loc, scale).to_event(1))
                pyro.sample(f"x_{t}", dist.Binomial(TOTAL_COUNT, logits=self.nets.emit(z_t)).to_event(1),
                            obs=x_batch[:, t])
                z_prev = z_t

    def guide(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        pyro.module(self.prefix, self.nets)
        with pyro.plate("data", x.shape[0], subsample_size=self.batch_size, subsample=subsample,
                        device=self.device) as idx:
            h = self.nets.summary(x[idx])
            z_prev = None
            for t in pyro.markov(range(DMM_STEPS)):
                loc, scale = (self.nets.first(h[:, 0]) if z_prev is None
                              else self.nets.combine(z_prev, h[:, t]))
                z_prev = pyro.sample(f"z_{t}", dist.Normal(loc, scale).to_event(1))


class PyroGMM:
    """The mixture in hand-written Pyro: ``c`` enumerated in the model, an empty guide."""

    def __init__(self, mu_init: torch.Tensor, *, batch_size: int = BATCH_SIZE):
        self.mu_init = mu_init.clone()
        self.batch_size = batch_size
        self.mu_name = f"gmm{next(_instance_ids)}.mu"
        self.device = mu_init.device
        self.component_logits = torch.zeros(GMM_COMPONENTS, device=self.device)
        self.model = config_enumerate(self._model)

    def _model(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        mu = pyro.param(self.mu_name, self.mu_init)
        with pyro.plate("data", x.shape[0], subsample_size=self.batch_size, subsample=subsample,
                        device=self.device) as idx:
            c = pyro.sample("c", dist.Categorical(logits=self.component_logits))
            pyro.sample("x", dist.Normal(mu[c], GMM_SCALE).to_event(1), obs=x[idx])

    def guide(self, x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
        pass


@contextmanager
def jit_warnings_filtered() -> Iterator[None]:
    """Silence only torch 2.13's deprecation of ``torch.jit.trace``, which Pyro's JIT ELBOs call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.*is deprecated", category=DeprecationWarning)
        yield


def _svi_step(model, guide, elbo, x: torch.Tensor, lr: float, *, jit: bool) -> Step:
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss=elbo)
    num_data = len(x)

    def step() -> float:
        if jit:
            with jit_warnings_filtered():
                return svi.step(x) / num_data
        return svi.step(x) / num_data

    return step


def _trace_elbo(jit: bool) -> Trace_ELBO:
    # ignore_jit_warnings drops the tracer's notes on constants (such as total_count = 16), as
    # Pyro's own examples do; the torch.jit.trace deprecation is filtered in the step itself.
    return JitTrace_ELBO(ignore_jit_warnings=True) if jit else Trace_ELBO()


def pyro_vae_step(nets: VAENetworks, x: torch.Tensor, *, batch_size: int = BATCH_SIZE,
                  lr: float = LEARNING_RATE, jit: bool = False) -> Step:
    """A hand-written Pyro training step of the VAE with ``Trace_ELBO`` (``JitTrace_ELBO`` if ``jit``)."""
    vae = PyroVAE(nets, batch_size=batch_size)
    return _svi_step(vae.model, vae.guide, _trace_elbo(jit), x, lr, jit=jit)


def pyro_hvae_step(nets: HVAENetworks, x: torch.Tensor, *, batch_size: int = BATCH_SIZE,
                   lr: float = LEARNING_RATE, jit: bool = False) -> Step:
    """A hand-written Pyro training step of the two-level VAE."""
    hvae = PyroHVAE(nets, batch_size=batch_size)
    return _svi_step(hvae.model, hvae.guide, _trace_elbo(jit), x, lr, jit=jit)


def pyro_dmm_step(nets: DMMNetworks, x: torch.Tensor, *, batch_size: int = BATCH_SIZE,
                  lr: float = LEARNING_RATE, jit: bool = False) -> Step:
    """A hand-written Pyro training step of the deep Markov model (`PyroDMM`); `x` is ``(N, T, F)``."""
    dmm = PyroDMM(nets, batch_size=batch_size)
    return _svi_step(dmm.model, dmm.guide, _trace_elbo(jit), x, lr, jit=jit)


def pyro_gmm_step(mu_init: torch.Tensor, x: torch.Tensor, *, batch_size: int = BATCH_SIZE,
                  lr: float = LEARNING_RATE, jit: bool = False) -> Step:
    """A hand-written Pyro training step of the mixture with ``TraceEnum_ELBO`` (or its JIT twin)."""
    gmm = PyroGMM(mu_init, batch_size=batch_size)
    elbo = JitTraceEnum_ELBO(max_plate_nesting=1, ignore_jit_warnings=True) if jit else TraceEnum_ELBO(max_plate_nesting=1)
    return _svi_step(gmm.model, gmm.guide, elbo, x, lr, jit=jit)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def iwae_log_likelihood(
    encode: Callable[[torch.Tensor], td.Distribution],
    decode: Callable[[torch.Tensor], td.Distribution],
    x: torch.Tensor,
    *,
    num_samples: int = 1000,
    prior: td.Distribution | None = None,
    points_per_chunk: int = 20,
    samples_per_chunk: int = 250,
) -> torch.Tensor:
    """The importance-weighted estimate of log p(x_i) per data point, shape ``(n,)``.

    ``encode(x_chunk)`` returns q(z | x) with batch shape ``(b,)`` and one event dimension,
    ``decode(z)`` for z shaped ``(k, b, d)`` returns p(x | z) whose ``log_prob(x_chunk)`` is
    ``(k, b)``; ``prior`` defaults to a standard Normal over z. Work is done in chunks of points
    and samples so K = 1000 fits in memory; the chunks' weights are joined before the
    log-sum-exp, so chunking does not change the estimate.

    >>> normal = lambda loc: td.Independent(td.Normal(loc, 1.0), 1)
    >>> x = torch.zeros(3, 2)   # z ~ N(0, I), x | z ~ N(z, I): p(x) = N(0, 2I), q = p(z | x) exactly
    >>> ll = iwae_log_likelihood(lambda x: td.Independent(td.Normal(x / 2, 0.5 ** 0.5), 1), normal, x)
    >>> torch.allclose(ll, td.Normal(0.0, 2 ** 0.5).log_prob(x).sum(-1))
    True
    """
    results = []
    for x_chunk in x.split(points_per_chunk):
        q = encode(x_chunk)
        p_z = prior if prior is not None else _standard_normal(q.event_shape[-1], device=x.device)
        log_weights = []
        for k in _chunk_sizes(num_samples, samples_per_chunk):
            z = q.sample((k,))
            log_weights.append(decode(z).log_prob(x_chunk) + p_z.log_prob(z) - q.log_prob(z))
        results.append(torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(num_samples))
    return torch.cat(results)


def _chunk_sizes(total: int, chunk: int) -> list[int]:
    return [chunk] * (total // chunk) + ([total % chunk] if total % chunk else [])


def vae_test_log_likelihood(nets: VAENetworks, x: torch.Tensor, *, num_samples: int = 1000) -> float:
    """Mean IWAE (K = ``num_samples``) log-likelihood per image of the VAE on ``x``, in nats."""
    encode = lambda xb: td.Independent(td.Normal(*nets.encoder(xb)), 1)  # noqa: E731
    decode = lambda z: td.Independent(td.Binomial(TOTAL_COUNT, logits=nets.decoder(z)), 1)  # noqa: E731
    return iwae_log_likelihood(encode, decode, x, num_samples=num_samples).mean().item()


def independent_binomial_log_likelihood(train_x: torch.Tensor, test_x: torch.Tensor) -> float:
    """Mean test log-likelihood per image of one Binomial per pixel, fitted to the training set.

    Each pixel's probability is its training mean count over 16 with add-one smoothing, so a
    pixel never lit in training still gives a finite test likelihood.
    """
    probs = (train_x.sum(0) + 1) / (TOTAL_COUNT * len(train_x) + 2)
    return td.Independent(td.Binomial(TOTAL_COUNT, probs=probs), 1).log_prob(test_x).mean().item()


# --------------------------------------------------------------------------- reference figures


def _train(step: Step, num_steps: int) -> float:
    losses = [step() for _ in range(num_steps)]
    return sum(losses[-50:]) / len(losses[-50:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Train the hand-written digits VAE baselines and print their test log-likelihoods."
    )
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--num-samples", type=int, default=1000, help="K of the IWAE evaluation")
    parser.add_argument("--iwae-particles", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from dgmlang.datasets import digits

    data = digits()
    num_steps = args.epochs * math.ceil(len(data.train_x) / BATCH_SIZE)
    print(f"digits: {len(data.train_x)} train / {len(data.test_x)} test images; "
          f"{args.epochs} epochs = {num_steps} steps of batch {BATCH_SIZE}, Adam {LEARNING_RATE}")
    print(f"independent Binomial per pixel: {independent_binomial_log_likelihood(data.train_x, data.test_x):.1f} nats")

    runs = {
        "plain PyTorch, ELBO": lambda nets: plain_vae_step(nets, data.train_x),
        f"plain PyTorch, IWAE K={args.iwae_particles}": lambda nets: plain_vae_step(
            nets, data.train_x, objective="iwae", num_particles=args.iwae_particles),
        "hand-written Pyro, Trace_ELBO": lambda nets: pyro_vae_step(nets, data.train_x),
    }
    for name, make_step in runs.items():
        torch.manual_seed(args.seed)
        nets = VAENetworks(seed=args.seed)
        start = time.perf_counter()
        train_loss = _train(make_step(nets), num_steps)
        seconds = time.perf_counter() - start
        torch.manual_seed(args.seed + 1)
        test_ll = vae_test_log_likelihood(nets, data.test_x, num_samples=args.num_samples)
        print(f"{name:36s} test log p(x) {test_ll:8.2f} nats (IWAE K={args.num_samples}); "
              f"final train loss {train_loss:.2f}; {seconds:.0f} s")


if __name__ == "__main__":
    main()
