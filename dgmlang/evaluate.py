"""IR expressions as tensors: the one evaluator of the compiled layer.

An `Evaluator` computes the value of any `dgmlang.ir` expression from the values of the
variables in an environment (``env``: name -> tensor shaped ``(*batch, *shape)``), filling in
`let`s, `const`s and `param`s itself. ``compile(expr)`` returns a function of the environment
that does the same with the work that never changes done once: references and network calls
resolved, values that read only literals and consts computed once per dtype and device.
Every consumer — the Pyro model, the derived guide, the fast loss — evaluates through it.

>>> from dgmlang.ir import Binary, Lit, ModelIR, Ref
>>> ev = Evaluator(ModelIR("m", (), ()))
>>> ev.evaluate(Binary("*", Ref("a", (2,)), Lit(2.0, ()), (2,)), {"a": torch.ones(3, 2)}).shape
torch.Size([3, 2])
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from dgmlang import ir as irm
from dgmlang.errors import DGMDataError, DGMTypeError
from dgmlang.facts import ModelFacts
from dgmlang.nets import to_constraint

__all__ = ["Evaluator", "broadcast_shape", "concat_features", "flatten_event", "pad_event"]

Env = dict  # variable name -> value, shaped (*batch, *event)

_ELEMENTWISE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "abs": torch.abs,
    "sigmoid": torch.sigmoid,
    "softplus": nn.functional.softplus,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "sin": torch.sin,
    "cos": torch.cos,
}

_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "+": torch.add,
    "-": torch.sub,
    "*": torch.mul,
    "/": torch.true_divide,
    "**": torch.pow,
}


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


def broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """numpy broadcasting of two shapes known to be compatible (`torch.broadcast_shapes`
    costs tens of microseconds a call).

    >>> broadcast_shape((3, 1), (4,))
    (3, 4)
    """
    if a == b:
        return a
    if len(a) < len(b):
        a, b = b, a
    b = (1,) * (len(a) - len(b)) + b
    return tuple(x if y == 1 else y for x, y in zip(a, b))


def concat_features(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Flat feature tensors ``(*batch_i, n_i)`` broadcast over their batch dims and joined.

    >>> concat_features([torch.zeros(3, 1, 2), torch.ones(4, 5)], torch.float32).shape
    torch.Size([3, 4, 7])
    """
    parts = [p if p.dtype == dtype else p.to(dtype) for p in parts]
    batch: tuple[int, ...] = ()
    for p in parts:
        batch = broadcast_shape(batch, tuple(p.shape[:-1]))
    return torch.cat([p if tuple(p.shape[:-1]) == batch else p.expand(*batch, p.shape[-1])
                      for p in parts], dim=-1)


class _NoHost:
    """The host of an evaluator with no networks or params (float32 on the CPU)."""

    dtype = torch.float32
    device = torch.device("cpu")

    def net(self, name: str) -> nn.Module:
        raise KeyError(name)

    def param(self, name: str) -> torch.Tensor | None:
        return None


class Evaluator:
    """Evaluates the expressions of one model.

    `host` supplies ``dtype`` and ``device`` (followed at every call), ``net(name)`` (the
    module of a network) and ``param(name)`` (a param's value, None when unknown); the
    lowered model is the host of its evaluator.
    """

    def __init__(self, ir: irm.ModelIR, host: Any = None, *, facts: ModelFacts | None = None):
        self.ir = ir
        self.host = host if host is not None else _NoHost()
        self.facts = facts if facts is not None else ModelFacts(ir)
        self._lets = self.facts.lets
        self._consts = {v.name: v for v in ir.variables if v.role == "const"}
        self._cache: dict[Any, Any] = {}
        self._cache_key: tuple | None = None
        self.dtype: torch.dtype = torch.float32
        self.device: torch.device = torch.device("cpu")
        self.refresh()

    # ------------------------------------------------------------------ cached constants

    def refresh(self) -> bool:
        """Read the host's dtype and device, and Pyro's validation setting, once per call of
        a consumer (the model, the guide, the fast loss); cached values made under another
        setting are dropped (a distribution keeps the setting it was built under). Returns
        whether they were."""
        self.dtype, self.device = self.host.dtype, self.host.device
        state = (self.dtype, self.device, torch.distributions.Distribution._validate_args)
        if state == self._cache_key:
            return False
        self._cache.clear()
        self._cache_key = state
        return True

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """A value that never changes for this model (a constant expression, a distribution
        with constant arguments), made once per dtype, device and validation setting (as
        read by the last `refresh`)."""
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = make()
        return value

    def _cached_for(self, kind: str, expr: irm.IRExpr, make: Callable[[], Any]) -> Any:
        """`cached` for the value of one expression object (kept with it, so an id reused
        by a later expression never finds a stale value)."""
        owner, value = self.cached((kind, id(expr)), lambda: (expr, make()))
        if owner is not expr:
            value = make()
            self._cache[(kind, id(expr))] = (expr, value)
        return value

    # ------------------------------------------------------------------ compiled form

    def compile(self, expr: irm.IRExpr) -> Callable[[Env], torch.Tensor]:
        """A function of `env` computing `expr` as `evaluate` does, with references and
        network calls resolved once and constant values computed once."""
        if isinstance(expr, irm.Ref):
            name = expr.name

            def ref(env: Env) -> torch.Tensor:
                value = env.get(name)
                return value if value is not None else self.evaluate(expr, env)

            return ref
        if isinstance(expr, irm.NetCall):
            features = self.compile_features(expr)
            module = self.host.net(expr.net)
            shape, constraint, span = expr.shape, expr.constraint, expr.span

            def net_call(env: Env) -> torch.Tensor:
                flat = module(features(env))
                return to_constraint(flat.reshape(flat.shape[:-1] + shape), constraint, span=span)

            return net_call
        if self.facts.is_constant(expr):
            return lambda env: self._cached_for("expr", expr, lambda: self.evaluate(expr, {}))
        return lambda env: self.evaluate(expr, env)

    def compile_features(self, call: irm.NetCall) -> Callable[[Env], torch.Tensor]:
        """The flat input of a network call: every argument flattened over its event dims,
        broadcast over the batch dims and concatenated."""
        args = [(self.compile(a), len(a.shape)) for a in call.args]
        if len(args) == 1:
            (arg, rank), = args

            def single(env: Env) -> torch.Tensor:
                value = arg(env)
                value = flatten_event(value, rank) if rank != 1 else value
                dtype = self.dtype
                return value if value.dtype == dtype else value.to(dtype)

            return single
        return lambda env: concat_features([flatten_event(f(env), r) for f, r in args],
                                           self.dtype)

    # ------------------------------------------------------------------ direct evaluation

    def evaluate(self, expr: irm.IRExpr, env: Env) -> torch.Tensor:
        """The value of `expr`, shaped ``(*batch, *expr.shape)``; `let`s, `const`s and
        `param`s missing from `env` are filled in (lets are cached in `env`). Values are made
        in the dtype and device of the last `refresh`."""
        return _EVALUATORS[type(expr)](self, expr, env)

    def _literal(self, expr: irm.Lit, env: Env) -> torch.Tensor:
        return self._cached_for("lit", expr, lambda: torch.as_tensor(
            expr.value, dtype=self.dtype, device=self.device))

    def _ref(self, expr: irm.Ref, env: Env) -> torch.Tensor:
        name = expr.name
        if name in env:
            return env[name]
        if name in self._lets:
            value = env[name] = self.evaluate(self._lets[name], env)
        elif name in self._consts:
            value = env[name] = self.cached(("const", name), lambda: torch.as_tensor(
                self._consts[name].value, dtype=self.dtype, device=self.device))
        else:
            value = self.host.param(name)
            if value is None:
                raise DGMDataError(f"no value for '{name}' here", expr.span)
            env[name] = value
        return value

    def _step_ref(self, expr: irm.StepRef, env: Env) -> torch.Tensor:
        key = irm.step_key(expr.name, expr.lag)
        if key not in env:
            raise DGMDataError(f"no value for '{key}' here", expr.span)
        return env[key]

    def _unary(self, expr: irm.Unary, env: Env) -> torch.Tensor:
        return -self.evaluate(expr.operand, env)

    def _binary(self, expr: irm.Binary, env: Env) -> torch.Tensor:
        rank = len(expr.shape)
        left = pad_event(self.evaluate(expr.left, env), len(expr.left.shape), rank)
        right = pad_event(self.evaluate(expr.right, env), len(expr.right.shape), rank)
        return _BINARY[expr.op](left, right)

    def _stack(self, expr: irm.Stack, env: Env) -> torch.Tensor:
        rank = len(expr.shape) - 1
        items = [pad_event(self.evaluate(item, env), len(item.shape), rank).to(self.dtype)
                 for item in expr.items]
        return torch.stack(torch.broadcast_tensors(*items), dim=-rank - 1)

    def _index(self, expr: irm.IndexExpr, env: Env) -> torch.Tensor:
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

    def _builtin(self, expr: irm.BuiltinCall, env: Env) -> torch.Tensor:
        func, dtype = expr.func, self.dtype
        if func in ("zeros", "ones"):
            fill = torch.zeros if func == "zeros" else torch.ones
            return fill(expr.shape, dtype=dtype, device=self.device)
        if func == "onehot":
            value = self.evaluate(expr.args[0], env)
            classes = int(self.evaluate(expr.args[1], env))
            index = value.long()
            if (index != value).any() or (index < 0).any() or (index >= classes).any():
                raise DGMDataError(
                    f"onehot(..., {classes}) needs integers in 0..{classes - 1}", expr.span
                )
            return nn.functional.one_hot(index, classes).to(dtype)
        args = [self.evaluate(a, env) for a in expr.args]
        ranks = [len(a.shape) for a in expr.args]
        if func in _ELEMENTWISE:
            return _ELEMENTWISE[func](args[0].to(dtype))
        if func in ("min", "max", "clamp"):
            rank = len(expr.shape)
            x, *bounds = (pad_event(v, r, rank).to(dtype) for v, r in zip(args, ranks))
            if func == "clamp":  # min(max(x, lo), hi), as torch.clamp: hi wins where lo > hi
                return torch.minimum(torch.maximum(x, bounds[0]), bounds[1])
            return (torch.minimum if func == "min" else torch.maximum)(x, bounds[0])
        if func == "softmax":
            return torch.softmax(args[0], dim=-1)
        if func == "log_softmax":
            return torch.log_softmax(args[0], dim=-1)
        if func in ("sum", "mean"):
            reduced = ranks[0] - len(expr.shape)
            if reduced == 0:
                return args[0]
            dims = tuple(range(-reduced, 0))
            value = args[0].to(dtype)
            return value.sum(dims) if func == "sum" else value.mean(dims)
        if func == "dot":
            rank = max(ranks)
            a, b = (pad_event(v, r, rank) for v, r in zip(args, ranks))
            return (a * b).sum(-1)
        if func == "matmul":
            return _matmul(args[0], ranks[0], args[1], ranks[1])
        if func == "concat":
            rank = len(expr.shape)
            parts = [pad_event(v, r, rank).to(dtype) for v, r in zip(args, ranks)]
            lead = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
            return torch.cat([p.expand(*lead, p.shape[-1]) for p in parts], dim=-1)
        raise DGMTypeError(f"unknown built-in function '{func}'", expr.span)

    def _net_call(self, expr: irm.NetCall, env: Env) -> torch.Tensor:
        flat = self.net_output(expr, env)
        return to_constraint(flat.reshape(flat.shape[:-1] + expr.shape), expr.constraint,
                             span=expr.span)

    def net_output(self, call: irm.NetCall, env: Env) -> torch.Tensor:
        """The raw (flat, unconstrained) output of a network call: ``(*batch, output_size)``."""
        parts = [flatten_event(self.evaluate(a, env), len(a.shape)) for a in call.args]
        return self.host.net(call.net)(concat_features(parts, self.dtype))


def _take(value: torch.Tensor, n_batch: int, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``value`` indexed along event dim `dim` by a per-point integer tensor (batch dims only):
    the result has the broadcast batch dims on the left and `dim` removed."""
    if n_batch == 0:  # (dim 0 needs no move: a move would cost an op and its backward)
        return (value if dim == 0 else value.movedim(dim, 0))[index]
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


_EVALUATORS: dict[type, Callable[[Evaluator, Any, Env], torch.Tensor]] = {
    irm.Lit: Evaluator._literal,
    irm.Ref: Evaluator._ref,
    irm.Unary: Evaluator._unary,
    irm.Binary: Evaluator._binary,
    irm.Stack: Evaluator._stack,
    irm.IndexExpr: Evaluator._index,
    irm.BuiltinCall: Evaluator._builtin,
    irm.NetCall: Evaluator._net_call,
    irm.StepRef: Evaluator._step_ref,
}
