"""The networks a model may call (`mlp`, `deconv`) and the heads that map their outputs onto a
distribution parameter's constraint.

Every network built here maps a flat input ``(*batch, sum(input_sizes))`` to a flat output
``(*batch, output_size)``; the caller flattens the arguments and reshapes the result (see
`dgmlang.lower`). Building under a seed gives identical weights every time.

>>> from dgmlang.ir import Net
>>> net = build_net(Net("dec", "mlp", (16,), 64, (64,), hidden=(32, 32)), seed=0)
>>> net(torch.zeros(5, 16)).shape
torch.Size([5, 64])
>>> same = build_net(Net("dec", "mlp", (16,), 64, (64,), hidden=(32, 32)), seed=0)
>>> all(torch.equal(a, b) for a, b in zip(net.parameters(), same.parameters()))
True
>>> to_constraint(torch.tensor([-30.0, 0.0]), "positive") > 0
tensor([True, True])
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
from torch import nn

from dgmlang import ir as irm
from dgmlang.distributions import NETWORKS
from dgmlang.errors import DGMShapeError, DGMTypeError, did_you_mean

#: torch modules for the `activation = ...` option of a network.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}

#: Added to softplus outputs so a scale never underflows to exactly zero in float32.
POSITIVE_FLOOR = 1e-6

_HEADS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "real": lambda x: x,
    "positive": lambda x: nn.functional.softplus(x) + POSITIVE_FLOOR,
    "unit": torch.sigmoid,
    "simplex": lambda x: torch.softmax(x, dim=-1),
}

#: Constraints a network output can be mapped onto (the others are integer-valued).
HEAD_CONSTRAINTS = tuple(_HEADS)


def to_constraint(x: torch.Tensor, constraint: str, *, span=None) -> torch.Tensor:
    """Map an unconstrained network output onto `constraint`: "real" identity, "positive"
    softplus (plus `POSITIVE_FLOOR`), "unit" sigmoid, "simplex" softmax over the last dim.

    >>> to_constraint(torch.zeros(3), "simplex")
    tensor([0.3333, 0.3333, 0.3333])
    """
    head = _HEADS.get(constraint)
    if head is None:
        raise DGMTypeError(
            f"a network cannot produce a value constrained to be {constraint!r}",
            span,
            hint="give integer parameters such as total_count as numbers",
        )
    return head(x)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block under torch seed `seed` without disturbing the caller's random stream
    (no-op for None).

    >>> with seeded(3):
    ...     a = torch.rand(2)
    >>> with seeded(3):
    ...     b = torch.rand(2)
    >>> torch.equal(a, b)
    True
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_initialized() else []):
        torch.manual_seed(seed)
        yield


def activation(name: str, *, span=None) -> nn.Module:
    """A fresh activation module by name (a DGMTypeError for an unknown one)."""
    make = ACTIVATIONS.get(name)
    if make is None:
        raise DGMTypeError(
            f"unknown activation '{name}'",
            span,
            hint=did_you_mean(name, ACTIVATIONS) or f"one of {', '.join(ACTIVATIONS)}",
        )
    return make()


def mlp(in_features: int, hidden: tuple[int, ...], out_features: int, act: str = "relu",
        *, span=None) -> nn.Sequential:
    """Linear layers of sizes `in_features -> *hidden -> out_features`, the activation between
    them (none after the last).

    >>> mlp(3, (8,), 2)
    Sequential(
      (0): Linear(in_features=3, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=2, bias=True)
    )
    """
    sizes = (in_features, *hidden, out_features)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(activation(act, span=span))
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class FlatMLP(nn.Module):
    """An mlp applied to inputs with any number of leading batch dimensions.

    With no inputs at all (`in_features` 0) the output is a learned constant vector: a linear
    layer of width 0 would only have a bias anyway, and torch warns when initialising it.
    """

    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int,
                 act: str = "relu", *, span=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        if in_features == 0:
            self.layers = None
            bound = 1 / math.sqrt(max(out_features, 1))
            self.constant = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        else:
            self.layers = mlp(in_features, hidden, out_features, act, span=span)

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        if self.layers is None:
            return self.constant.expand(*flat.shape[:-1], self.out_features)
        return self.layers(flat)


class Deconv(nn.Module):
    """A convolutional decoder: linear layers to a small ``(channels[0], h0, w0)`` map, then one
    transposed convolution per entry of `channels`, the last one producing the output's C
    channels at full size ``(H, W)``.

    The first layers double the spatial size (kernel 4, stride 2, padding 1); as many of them
    as `H` and `W` can be halved (at most ``len(channels)``), the rest keep it (kernel 3,
    stride 1, padding 1). So ``channels = (64, 32)`` decodes 8x8 images from a 64x2x2 map and
    16x16 images from a 64x4x4 map. An `output_shape` of rank 2 ``(H, W)`` is one channel.

    >>> net = Deconv(16, (1, 8, 8), channels=(32, 16))
    >>> net(torch.zeros(3, 16)).shape
    torch.Size([3, 64])
    """

    def __init__(self, in_features: int, output_shape: tuple[int, ...], *,
                 channels: tuple[int, ...] = (), hidden: tuple[int, ...] = (),
                 act: str = "relu", span=None):
        super().__init__()
        if len(output_shape) == 2:
            out_channels, height, width = 1, *output_shape
        elif len(output_shape) == 3:
            out_channels, height, width = output_shape
        else:
            raise DGMShapeError(
                f"deconv produces images shaped [C, H, W] or [H, W], not {list(output_shape)}",
                span,
                hint="use mlp(...) for values that are not images",
            )
        channels = tuple(channels) or tuple(NETWORKS["deconv"]["channels"])
        doublings = 0
        while (doublings < len(channels) and height % 2 ** (doublings + 1) == 0
               and width % 2 ** (doublings + 1) == 0):
            doublings += 1
        h0, w0 = height >> doublings, width >> doublings
        self.start_shape = (channels[0], h0, w0)
        self.output_size = out_channels * height * width
        self.project = FlatMLP(in_features, tuple(hidden), channels[0] * h0 * w0, act, span=span)
        layers: list[nn.Module] = [activation(act, span=span)]
        targets = channels[1:] + (out_channels,)
        for i, (c_in, c_out) in enumerate(zip(channels, targets)):
            if i < doublings:
                layers.append(nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1))
            else:
                layers.append(nn.ConvTranspose2d(c_in, c_out, kernel_size=3, stride=1, padding=1))
            if i < len(channels) - 1:
                layers.append(activation(act, span=span))
        self.layers = nn.Sequential(*layers)

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        batch = flat.shape[:-1]
        maps = self.project(flat).reshape(-1, *self.start_shape)
        return self.layers(maps).reshape(*batch, self.output_size)


class GRUStep(nn.Module):
    """One step of a gru: its flat input is the state (`hidden` values) followed by the
    step's input; its output the new state. `cell` is torch's `nn.GRUCell`, so the same
    weights run as an `nn.GRU` (`weight_ih_l0 = cell.weight_ih`, and so on).

    >>> step = GRUStep(3, 4)
    >>> step(torch.zeros(2, 5, 4 + 3)).shape
    torch.Size([2, 5, 4])
    """

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.cell = nn.GRUCell(input_size, hidden)

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        batch = flat.shape[:-1]
        flat = flat.reshape(-1, flat.shape[-1])
        state, given = flat[:, :self.hidden], flat[:, self.hidden:]
        return self.cell(given, state).reshape(*batch, self.hidden)

    def sequence(self, inputs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Many steps at once, when the inputs are known beforehand: ``(L, N, input)`` and
        the state before the first ``(N, hidden)`` give every new state ``(L, N, hidden)``,
        by an `nn.GRU` that shares the cell's weights (torch's fused loop).

        >>> step = GRUStep(3, 4)
        >>> inputs, state = torch.randn(5, 2, 3), torch.zeros(2, 4)
        >>> states = step.sequence(inputs, state)
        >>> bool(torch.allclose(states[1], step.cell(inputs[1], step.cell(inputs[0], state)), atol=1e-6))
        True
        """
        gru = self.__dict__.get("_gru")
        if gru is None or gru.weight_ih_l0 is not self.cell.weight_ih:
            gru = nn.GRU(self.cell.input_size, self.hidden)
            for mine, theirs in (("weight_ih_l0", "weight_ih"), ("weight_hh_l0", "weight_hh"),
                                 ("bias_ih_l0", "bias_ih"), ("bias_hh_l0", "bias_hh")):
                setattr(gru, mine, getattr(self.cell, theirs))
            self.__dict__["_gru"] = gru  # not a submodule: its weights are the cell's
        return gru(inputs, state.unsqueeze(0))[0]


def build_net(net: irm.Net, *, seed: int | None = None) -> nn.Module:
    """The torch module for `net` (see `FlatMLP`, `Deconv` and `GRUStep`), built under `seed`
    when given.

    Its input is every argument of a call flattened and concatenated
    (``sum(net.input_sizes)`` features); its output has ``net.output_size`` features.
    """
    in_features = sum(net.input_sizes)
    with seeded(seed):
        if net.kind == "mlp":
            return FlatMLP(in_features, tuple(net.hidden), net.output_size, net.activation,
                           span=net.span)
        if net.kind == "gru":
            return GRUStep(in_features - net.output_size, net.output_size)
        if net.kind == "deconv":
            module = Deconv(in_features, net.output_shape, channels=tuple(net.channels),
                            hidden=tuple(net.hidden), act=net.activation, span=net.span)
            if module.output_size != net.output_size:
                raise DGMShapeError(
                    f"deconv '{net.name}' makes {module.output_size} values but "
                    f"{net.output_size} are needed",
                    net.span,
                )
            return module
    raise DGMTypeError(f"unknown network kind '{net.kind}'", net.span,
                       hint=did_you_mean(net.kind, NETWORKS))
