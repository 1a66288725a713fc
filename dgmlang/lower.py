"""Lowering: a checked `ModelIR` becomes a Pyro model, a `PyroModule` holding its networks and
`param`s.

Calling the lowered model runs the model: ``model(batch, *, batch_size=None, size=None,
mask=None)``. `batch` holds every `input` and any observed `data` variable, each shaped
``(B, *shape)``; a `data` variable absent from it is sampled. `global`s are sampled outside the
data plate, everything per data point inside ``pyro.plate("data", size=N,
subsample=arange(B))`` (plate dim -1), so the likelihood is scaled by N/B. Every site is named
after its variable and has the variable's shape as its event shape (`.to_event`). Finite
discrete latents are marked for parallel enumeration; a guide that samples one overrides it.
docs/internals.md has the tensor conventions.

>>> from dgmlang.ir import Draw, Lit, ModelIR, Ref, Variable
>>> ir = ModelIR("tiny", (Variable("z", "latent", (2,)), Variable("x", "data", (2,))),
...              (Draw("z", "Normal", (("loc", Lit(0.0, ())), ("scale", Lit(1.0, ())))),
...               Draw("x", "Normal", (("loc", Ref("z", (2,))), ("scale", Lit(0.1, ()))))))
>>> model = lower(ir, seed=0)
>>> values = model({}, batch_size=5)
>>> values["z"].shape, values["x"].shape
(torch.Size([5, 2]), torch.Size([5, 2]))
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.distributions import biject_to

import pyro
import pyro.distributions as pdist
from pyro.distributions import constraints
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from pyro.nn import PyroModule, PyroParam
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, check_site_shape, check_traceenum_requirements

from dgmlang import ir as irm
from dgmlang.distributions import DISTRIBUTIONS
from dgmlang.errors import (
    DGMDataError, DGMGuideError, DGMTypeError, DGMUsageError, did_you_mean,
)
from dgmlang.graph import build_graph, topological_order
from dgmlang.nets import HEAD_CONSTRAINTS, build_net, seeded, to_constraint

#: The data plate is the only plate: enumeration dimensions go left of it.
MAX_PLATE_NESTING = 1
PLATE_NAME = "data"

#: `param` types and the constraints their values live in (an `int` param is a check error).
PARAM_CONSTRAINTS = {
    "real": constraints.real,
    "positive": constraints.positive,
    "unit": constraints.unit_interval,
    "simplex": constraints.simplex,
}

_instance_ids = itertools.count()

_ELEMENTWISE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "abs": torch.abs,
    "sigmoid": torch.sigmoid,
    "softplus": nn.functional.softplus,
    "tanh": torch.tanh,
    "relu": torch.relu,
}

_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "+": torch.add,
    "-": torch.sub,
    "*": torch.mul,
    "/": torch.true_divide,
    "**": torch.pow,
}


def pyro_class(dist_name: str):
    """The Pyro distribution class of a registry name (`pyro.distributions.<name>`)."""
    return getattr(pdist, dist_name)


def is_finite_discrete(draw: irm.Draw) -> bool:
    """Whether the draw's distribution has finite discrete support (can be enumerated)."""
    spec = DISTRIBUTIONS[draw.dist]
    return spec.discrete and spec.finite


def pad_event(value: torch.Tensor, event_rank: int, rank: int) -> torch.Tensor:
    """Insert size-1 dims between a value's batch dims and its `event_rank` event dims so its
    event part has `rank` dims; batch dims then line up under broadcasting.

    >>> pad_event(torch.zeros(5), 0, 1).shape   # a per-point scalar meets a vector
    torch.Size([5, 1])
    """
    missing = rank - event_rank
    if missing <= 0:
        return value
    n_batch = value.dim() - event_rank
    return value.reshape(value.shape[:n_batch] + (1,) * missing + value.shape[n_batch:])


def flatten_event(value: torch.Tensor, event_rank: int) -> torch.Tensor:
    """``(*batch, *event)`` -> ``(*batch, prod(event))`` (a scalar event becomes one feature).

    >>> flatten_event(torch.zeros(4, 2, 3), 2).shape
    torch.Size([4, 6])
    """
    n_batch = value.dim() - event_rank
    return value.reshape(*value.shape[:n_batch], -1) if event_rank else value.unsqueeze(-1)


def concat_features(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Flat feature tensors ``(*batch_i, n_i)`` broadcast over their batch dims and joined.

    >>> concat_features([torch.zeros(3, 1, 2), torch.ones(4, 5)], torch.float32).shape
    torch.Size([3, 4, 7])
    """
    parts = [p.to(dtype) for p in parts]
    batch = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
    return torch.cat([p.expand(*batch, p.shape[-1]) for p in parts], dim=-1)


def walk(exprs) -> Iterator[irm.IRExpr]:
    """Every sub-expression of `exprs` (depth first, iteratively)."""
    stack = list(exprs)[::-1]
    while stack:
        e = stack.pop()
        yield e
        children: list = []
        if isinstance(e, irm.Binary):
            children = [e.left, e.right]
        elif isinstance(e, irm.Unary):
            children = [e.operand]
        elif isinstance(e, irm.IndexExpr):
            children = [e.value, *(i for i in e.items if not isinstance(i, irm.SliceItem))]
        elif isinstance(e, irm.Stack):
            children = list(e.items)
        elif isinstance(e, (irm.BuiltinCall, irm.NetCall)):
            children = list(e.args)
        stack.extend(reversed(children))


def draw_expressions(draw: irm.Draw) -> list[irm.IRExpr]:
    """The argument expressions of a draw (the packed network call included)."""
    return [value for _, value in draw.params] + ([draw.packed] if draw.packed else [])


def all_expressions(ir: irm.ModelIR) -> Iterator[irm.IRExpr]:
    """Every sub-expression of every draw and let of `ir`."""
    for draw in ir.draws:
        yield from walk(draw_expressions(draw))
    for let in ir.lets:
        yield from walk([let.value])


def safe_attribute(container: nn.Module, name: str) -> str:
    """`name`, or `name` with underscores appended while it would shadow a module attribute
    (a model may call a variable `training` or `eval`)."""
    key = name
    while hasattr(container, key) or hasattr(container, key + "_unconstrained"):
        key += "_"
    return key


class ParamBank(PyroModule):
    """The model's `param`s as `PyroParam`s, looked up by variable name with `value(name)`."""

    def __init__(self):
        super().__init__()
        self._keys: dict[str, str] = {}

    def add(self, name: str, init: torch.Tensor, constraint) -> None:
        key = safe_attribute(self, name)
        self._keys[name] = key
        setattr(self, key, PyroParam(init, constraint))

    def value(self, name: str) -> torch.Tensor:
        return getattr(self, self._keys[name])

    def __contains__(self, name: str) -> bool:
        return name in self._keys


def initial_value(shape: tuple[int, ...], constraint) -> torch.Tensor:
    """A draw through `constraint` of a standard Normal in the unconstrained space (the
    initialisation rule of every `param` and variational location; uses torch's RNG).

    >>> with seeded(0):
    ...     value = initial_value((3,), constraints.simplex)
    >>> value.shape, bool(abs(value.sum() - 1) < 1e-6)
    (torch.Size([3]), True)
    """
    transform = biject_to(constraint)
    unconstrained = torch.randn(transform.inverse_shape(torch.Size(shape)))
    return transform(unconstrained).detach()


class LoweredModel(PyroModule):
    """The Pyro model of a checked model; see the module docs for the call signature.

    Attributes: `ir`, `nets` (an `nn.ModuleDict` by network name), `params` (a `ParamBank`),
    `max_plate_nesting`.
    """

    def __init__(self, ir: irm.ModelIR, *, seed: int = 0):
        # Built in module-local mode, Pyro's modules keep the state that mode needs, so the
        # model works both with the global param store and under module_local_params=True.
        with pyro.settings.context(module_local_params=True):
            self._build(ir, seed)

    def _build(self, ir: irm.ModelIR, seed: int) -> None:
        super().__init__(name=f"{ir.name}.{next(_instance_ids)}")
        self.ir = ir
        self.max_plate_nesting = MAX_PLATE_NESTING
        self._variables = {v.name: v for v in ir.variables}
        self._draws = {d.target: d for d in ir.draws}
        self._lets = {let.name: let for let in ir.lets}
        self._consts = {v.name: v for v in ir.variables if v.role == "const"}
        self._literals: dict[int, tuple[irm.IRExpr, torch.Tensor]] = {}
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        order = topological_order(build_graph(ir))
        roles = {v.name: v.role for v in ir.variables}
        self.global_order = [n for n in order if roles[n] == "global"]
        self.local_order = [n for n in order if roles[n] in ("data", "latent")]
        self.input_names = ir.names("input")
        for name in (*self.global_order, *self.local_order):
            if name not in self._draws:
                raise DGMTypeError(f"'{name}' has no distribution", self._variables[name].span)
            self._check_enumerable(name)
        _check_heads(ir)

        net_keys: dict[str, str] = {}
        nets = nn.ModuleDict()
        params = ParamBank()
        with seeded(seed):
            for net in ir.nets:
                key = safe_attribute(nets, net.name)
                net_keys[net.name] = key
                nets[key] = build_net(net)
            for var in ir.variables:
                if var.role == "param":
                    constraint = PARAM_CONSTRAINTS.get(var.type)
                    if constraint is None:
                        raise DGMTypeError(
                            f"param '{var.name}' cannot have type '{var.type}'", var.span,
                            hint="a param is a learned real, positive, unit or simplex value",
                        )
                    params.add(var.name, initial_value(var.shape, constraint), constraint)
        self._net_keys = net_keys
        self.nets = nets
        self.params = params

    @property
    def dtype(self) -> torch.dtype:
        """The float dtype values are computed in (follows `.double()`, `.to(...)`)."""
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        """The device values are computed on."""
        return self._anchor.device

    # ------------------------------------------------------------------ the model

    def forward(self, batch: Mapping[str, Any] | None = None, *, batch_size: int | None = None,
                size: int | None = None, mask: Mapping[str, Any] | None = None) -> dict:
        """Run the model; returns every site's value by variable name.

        `mask` optionally holds, per observed `data` variable, a boolean array shaped like it
        (True where observed): only observed entries enter the likelihood; the others may hold
        anything, NaN included.
        """
        batch = dict(batch or {})
        mask = dict(mask or {})
        n_batch = self.batch_size_of(batch, batch_size)
        total = n_batch if size is None else int(size)
        if total < n_batch:
            raise DGMUsageError(f"size={total} is smaller than the batch ({n_batch} points)")
        for name in mask:
            if name not in batch or name not in self.ir.names("data"):
                raise DGMDataError(f"mask for '{name}', which is not observed data in the batch")
        env: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            if name not in batch:
                raise DGMDataError(f"input '{name}' is missing: every input must be given")
            env[name] = self.as_value(name, batch[name], n_batch)
        sites: dict[str, torch.Tensor] = {}
        for name in self.global_order:
            sites[name] = env[name] = self._sample_site(name, env, None, None)
        subsample = torch.arange(n_batch, device=self._anchor.device)
        with pyro.plate(PLATE_NAME, size=total, subsample=subsample):
            for name in self.local_order:
                obs = observed = None
                if name in batch:
                    obs = self.as_value(name, batch[name], n_batch)
                    if name in mask:
                        observed = torch.as_tensor(mask[name], device=obs.device).bool()
                        if observed.shape != obs.shape:
                            raise DGMDataError(
                                f"the mask of '{name}' should be shaped {list(obs.shape)}, "
                                f"not {list(observed.shape)}"
                            )
                sites[name] = env[name] = self._sample_site(name, env, obs, observed)
        return sites

    def batch_size_of(self, batch: Mapping[str, Any], batch_size: int | None) -> int:
        """B: the leading size shared by the tensors in `batch`, or `batch_size`. Every name
        in `batch` must be a `data` or `input` variable (a misspelt one would otherwise leave
        its variable to be sampled)."""
        allowed = self.ir.names("data", "input")
        for name in batch:
            if name not in allowed:
                raise DGMDataError(
                    f"'{name}' is not a data or input variable of model '{self.ir.name}'",
                    hint=did_you_mean(name, allowed) or f"those are: {', '.join(allowed)}",
                )
        sizes = {name: len(value) for name, value in batch.items()}
        if batch_size is not None:
            sizes["batch_size"] = int(batch_size)
        if not sizes:
            raise DGMUsageError("the batch is empty: pass batch_size= to say how many points")
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{k}: {v}" for k, v in sizes.items())
            raise DGMDataError(f"the batch's variables disagree on the number of points ({listed})")
        return next(iter(sizes.values()))

    def as_value(self, name: str, value: Any, n_batch: int) -> torch.Tensor:
        """A batch entry as a float tensor of the model's dtype, checked to be ``(B, *shape)``."""
        tensor = torch.as_tensor(value, device=self._anchor.device).to(self._anchor.dtype)
        shape = self._variables[name].shape
        if tuple(tensor.shape) != (n_batch, *shape):
            raise DGMDataError(
                f"'{name}' should be shaped {[n_batch, *shape]} (points first), "
                f"not {list(tensor.shape)}"
            )
        return tensor

    def _check_enumerable(self, name: str) -> None:
        var = self._variables[name]
        if var.role == "latent" and is_finite_discrete(self._draws[name]) and var.shape:
            raise DGMGuideError(
                f"discrete latent '{name}' has shape {list(var.shape)}; only scalar discrete "
                "latents can be summed out",
                var.span,
                hint="declare one scalar latent per component",
            )

    def _sample_site(self, name: str, env: dict, obs, observed) -> torch.Tensor:
        draw = self._draws[name]
        base, event_dims = self.base_distribution(draw, env)
        if observed is not None:
            # A value with an own event (a simplex) counts as observed only as a whole. The
            # missing entries are replaced by a draw from the model, which the mask then
            # ignores: NaN would fail validation and poison gradients even where masked.
            rank = DISTRIBUTIONS[draw.dist].event_rank
            if rank:
                observed = observed.reshape(*observed.shape[: observed.dim() - rank], -1).all(-1)
            filler = base.sample().detach()
            while filler.dim() > obs.dim():
                filler = filler[0]
            observed_entries = observed.reshape(observed.shape + (1,) * rank)
            obs = torch.where(observed_entries, obs, filler)
            base = base.mask(observed)
        fn = base.to_event(event_dims) if event_dims else base
        infer = {}
        if obs is None and self._variables[name].role == "latent" and is_finite_discrete(draw):
            infer = {"enumerate": "parallel"}
        return pyro.sample(name, fn, obs=obs, infer=infer)

    def distribution(self, draw: irm.Draw, env: dict) -> pdist.TorchDistribution:
        """The draw's distribution given the values in `env`, batch shape ``(*batch,)`` and
        event shape the variable's shape."""
        base, event_dims = self.base_distribution(draw, env)
        return base.to_event(event_dims) if event_dims else base

    def base_distribution(self, draw: irm.Draw, env: dict) -> tuple[pdist.TorchDistribution, int]:
        """The draw's distribution before `.to_event`, expanded so its rightmost batch dims are
        the variable's shape less the distribution's own event dims, and how many those are."""
        spec = DISTRIBUTIONS[draw.dist]
        shape = self._variables[draw.target].shape
        outer = shape[: len(shape) - spec.event_rank]
        values: dict[str, tuple[torch.Tensor, int]] = {}
        if draw.packed is not None:
            flat = self.net_features(draw.packed, env)
            sizes = [math.prod(p.shape) for p in draw.packed_params]
            for p, part in zip(draw.packed_params, flat.split(sizes, dim=-1)):
                part = part.reshape(part.shape[:-1] + p.shape)
                values[p.name] = (to_constraint(part, p.constraint, span=draw.packed.span),
                                  len(p.shape))
        for pname, expr in draw.params:
            values[pname] = (self.evaluate(expr, env), len(expr.shape))
        kwargs = {
            pname: pad_event(value, rank, len(outer) + spec.param(pname).event_rank)
            for pname, (value, rank) in values.items()
        }
        base = pyro_class(draw.dist)(**kwargs)
        batch_shape = torch.broadcast_shapes(base.batch_shape, outer)
        if batch_shape != base.batch_shape:
            base = base.expand(batch_shape)
        return base, len(outer)

    # ------------------------------------------------------------------ expressions

    def evaluate(self, expr: irm.IRExpr, env: dict) -> torch.Tensor:
        """The value of an IR expression, shaped ``(*batch, *expr.shape)``.

        `env` maps variable names to values; `let`s, `const`s and `param`s missing from it
        are filled in (lets are cached in `env`).
        """
        return _EVALUATORS[type(expr)](self, expr, env)

    def _literal(self, expr: irm.Lit, env: dict) -> torch.Tensor:
        cached = self._literals.get(id(expr))
        anchor = self._anchor
        if cached is None or cached[0] is not expr or cached[1].dtype != anchor.dtype \
                or cached[1].device != anchor.device:
            tensor = torch.as_tensor(expr.value, dtype=anchor.dtype, device=anchor.device)
            self._literals[id(expr)] = cached = (expr, tensor)
        return cached[1]

    def _ref(self, expr: irm.Ref, env: dict) -> torch.Tensor:
        name = expr.name
        if name in env:
            return env[name]
        if name in self._lets:
            value = env[name] = self.evaluate(self._lets[name].value, env)
        elif name in self._consts:
            value = env[name] = torch.as_tensor(
                self._consts[name].value, dtype=self._anchor.dtype, device=self._anchor.device
            )
        elif name in self.params:
            value = env[name] = self.params.value(name)
        else:
            raise DGMDataError(f"no value for '{name}' here", expr.span)
        return value

    def _unary(self, expr: irm.Unary, env: dict) -> torch.Tensor:
        return -self.evaluate(expr.operand, env)

    def _binary(self, expr: irm.Binary, env: dict) -> torch.Tensor:
        rank = len(expr.shape)
        left = pad_event(self.evaluate(expr.left, env), len(expr.left.shape), rank)
        right = pad_event(self.evaluate(expr.right, env), len(expr.right.shape), rank)
        return _BINARY[expr.op](left, right)

    def _stack(self, expr: irm.Stack, env: dict) -> torch.Tensor:
        rank = len(expr.shape) - 1
        items = [
            pad_event(self.evaluate(item, env), len(item.shape), rank).to(self._anchor.dtype)
            for item in expr.items
        ]
        return torch.stack(torch.broadcast_tensors(*items), dim=-rank - 1)

    def _index(self, expr: irm.IndexExpr, env: dict) -> torch.Tensor:
        value = self.evaluate(expr.value, env)
        event = list(expr.value.shape)
        position = 0  # the event dim the next item indexes
        for item in expr.items:
            n_batch = value.dim() - len(event)
            dim = n_batch + position
            if isinstance(item, irm.SliceItem):
                kept = list(range(event[position]))[item.start:item.stop:item.step]
                value = value.index_select(dim, torch.tensor(kept, dtype=torch.long,
                                                             device=value.device))
                event[position] = len(kept)
                position += 1
                continue
            index = self.evaluate(item, env)
            if index.dim() == 0:
                value = value.select(dim, int(index))
            else:
                value = _take(value, n_batch, dim, index.long())
            del event[position]
        return value

    def _builtin(self, expr: irm.BuiltinCall, env: dict) -> torch.Tensor:
        func = expr.func
        if func in ("zeros", "ones"):
            fill = torch.zeros if func == "zeros" else torch.ones
            return fill(expr.shape, dtype=self._anchor.dtype, device=self._anchor.device)
        if func == "onehot":
            value = self.evaluate(expr.args[0], env)
            classes = int(self.evaluate(expr.args[1], env))
            index = value.long()
            if (index != value).any() or (index < 0).any() or (index >= classes).any():
                raise DGMDataError(
                    f"onehot(..., {classes}) needs integers in 0..{classes - 1}", expr.span
                )
            return nn.functional.one_hot(index, classes).to(self._anchor.dtype)
        args = [self.evaluate(a, env) for a in expr.args]
        ranks = [len(a.shape) for a in expr.args]
        if func in _ELEMENTWISE:
            return _ELEMENTWISE[func](args[0].to(self._anchor.dtype))
        if func == "softmax":
            return torch.softmax(args[0], dim=-1)
        if func == "log_softmax":
            return torch.log_softmax(args[0], dim=-1)
        if func in ("sum", "mean"):
            reduced = ranks[0] - len(expr.shape)
            if reduced == 0:
                return args[0]
            dims = tuple(range(-reduced, 0))
            value = args[0].to(self._anchor.dtype)
            return value.sum(dims) if func == "sum" else value.mean(dims)
        if func == "dot":
            rank = max(ranks)
            a, b = (pad_event(v, r, rank) for v, r in zip(args, ranks))
            return (a * b).sum(-1)
        if func == "matmul":
            return _matmul(args[0], ranks[0], args[1], ranks[1])
        if func == "concat":
            rank = len(expr.shape)
            parts = [pad_event(v, r, rank).to(self._anchor.dtype) for v, r in zip(args, ranks)]
            lead = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
            return torch.cat([p.expand(*lead, p.shape[-1]) for p in parts], dim=-1)
        raise DGMTypeError(f"unknown built-in function '{func}'", expr.span)

    def _net_call(self, expr: irm.NetCall, env: dict) -> torch.Tensor:
        flat = self.net_features(expr, env)
        value = flat.reshape(flat.shape[:-1] + expr.shape)
        return to_constraint(value, expr.constraint, span=expr.span)

    def net_features(self, call: irm.NetCall, env: dict) -> torch.Tensor:
        """The raw (flat, unconstrained) output of a network call: ``(*batch, output_size)``."""
        parts = [flatten_event(self.evaluate(a, env), len(a.shape)) for a in call.args]
        features = concat_features(parts, self._anchor.dtype)
        return self.nets[self._net_keys[call.net]](features)


def _check_heads(ir: irm.ModelIR) -> None:
    """Every network output must map onto a constraint a head exists for (not an integer)."""
    for expr in all_expressions(ir):
        if isinstance(expr, irm.NetCall) and expr.constraint not in HEAD_CONSTRAINTS:
            to_constraint(torch.zeros(()), expr.constraint, span=expr.span)
    for draw in ir.draws:
        for packed in draw.packed_params:
            if packed.constraint not in HEAD_CONSTRAINTS:
                to_constraint(torch.zeros(()), packed.constraint, span=draw.packed.span)


def _take(value: torch.Tensor, n_batch: int, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``value`` indexed along event dim `dim` by a per-point integer tensor (batch dims only):
    the result has the broadcast batch dims on the left and `dim` removed."""
    if n_batch == 0:
        return value.movedim(dim, 0)[index]
    moved = value.movedim(dim, -1)  # (*vb, *rest, n)
    rest = moved.shape[n_batch:-1]
    batch = torch.broadcast_shapes(moved.shape[:n_batch], index.shape)
    moved = moved.reshape(*(1,) * (len(batch) - n_batch), *moved.shape)
    moved = moved.expand(*batch, *moved.shape[len(batch):])
    index = index.reshape(*index.shape, *(1,) * (len(rest) + 1)).expand(*batch, *rest, 1)
    return moved.gather(-1, index).squeeze(-1)


def _matmul(a: torch.Tensor, rank_a: int, b: torch.Tensor, rank_b: int) -> torch.Tensor:
    """numpy's matmul on the event dims of batched values."""
    if rank_a == 1 and rank_b == 1:
        return (a * b).sum(-1)
    squeeze = None
    if rank_a == 1:
        a, rank_a, squeeze = a.unsqueeze(-2), 2, -2
    if rank_b == 1:
        b, rank_b, squeeze = b.unsqueeze(-1), 2, -1
    rank = max(rank_a, rank_b)
    out = torch.matmul(pad_event(a, rank_a, rank), pad_event(b, rank_b, rank))
    return out.squeeze(squeeze) if squeeze is not None else out


_EVALUATORS: dict[type, Callable[[LoweredModel, Any, dict], torch.Tensor]] = {
    irm.Lit: LoweredModel._literal,
    irm.Ref: LoweredModel._ref,
    irm.Unary: LoweredModel._unary,
    irm.Binary: LoweredModel._binary,
    irm.Stack: LoweredModel._stack,
    irm.IndexExpr: LoweredModel._index,
    irm.BuiltinCall: LoweredModel._builtin,
    irm.NetCall: LoweredModel._net_call,
}


def lower(ir: irm.ModelIR, *, seed: int = 0) -> LoweredModel:
    """The Pyro model of `ir` (networks and params initialised under `seed`)."""
    return LoweredModel(ir, seed=seed)


def has_enumeration(plan) -> bool:
    """Whether fitting needs `TraceEnum_ELBO`: some latent is summed out (in the model or in
    the guide)."""
    return any(step.kind in ("enumerated_in_guide", "enumerated_in_model") for step in plan.steps)


class GuideEnumerationELBO(pyro.infer.TraceEnum_ELBO):
    """`TraceEnum_ELBO` for guides that enumerate a discrete latent before sampling one of its
    parents in the model (``z -> y -> x`` with y discrete: the guide draws y from x, then z
    given y).

    The model then scores p(y | z) with z drawn once per value of y, so the parameters of y's
    distribution vary along y's own enumeration dim. The sum Pyro computes is the right one,
    sum_y q(y) E_q(z|y)[log p(y | z) + ...], but Pyro's shape check rejects any site whose
    parameters vary along its own enumeration dim, because for a latent enumerated *in the
    model* that would be a mistake. This class runs Pyro's trace and checks unchanged except
    that one check for model sites whose values come from the guide's enumeration.
    """

    def _get_trace(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(
            poutine.replay(model, trace=guide_trace), graph_type="flat"
        ).get_trace(*args, **kwargs)
        validating = is_validation_enabled()
        if validating:
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        model_trace.compute_log_prob()
        guide_trace.compute_score_parts()
        if validating:
            for site in guide_trace.nodes.values():
                if site["type"] == "sample":
                    check_site_shape(site, self.max_plate_nesting)
            for name, site in model_trace.nodes.items():
                if site["type"] != "sample":
                    continue
                if name in guide_trace.nodes and "_enumerate_dim" in site["infer"]:
                    infer = {k: v for k, v in site["infer"].items() if k != "_enumerate_dim"}
                    site = {**site, "infer": infer}
                check_site_shape(site, self.max_plate_nesting)
            check_traceenum_requirements(model_trace, guide_trace)
        guide_trace.pack_tensors()
        model_trace.pack_tensors(guide_trace.plate_to_symbol)
        return model_trace, guide_trace


def elbo_for(ir: irm.ModelIR, plan, *, num_particles: int = 1,
             vectorize_particles: bool = False) -> pyro.infer.ELBO:
    """The ELBO to fit `ir` with `plan`, all with ``max_plate_nesting=1``: `Trace_ELBO`
    without enumeration, `TraceEnum_ELBO` when latents are summed out in the model only, and
    `GuideEnumerationELBO` when the guide enumerates some."""
    if any(step.kind == "enumerated_in_guide" for step in plan.steps):
        cls = GuideEnumerationELBO
    elif has_enumeration(plan):
        cls = pyro.infer.TraceEnum_ELBO
    else:
        cls = pyro.infer.Trace_ELBO
    return cls(max_plate_nesting=MAX_PLATE_NESTING, num_particles=num_particles,
               vectorize_particles=vectorize_particles)
