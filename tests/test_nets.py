"""Networks (mlp, deconv) and the heads mapping their outputs onto constraints."""
from __future__ import annotations

import pytest
import torch
from torch.distributions import constraints

from dgmlang.distributions import ACTIVATIONS as REGISTRY_ACTIVATIONS
from dgmlang.distributions import CONSTRAINTS
from dgmlang.errors import DGMShapeError, DGMTypeError
from dgmlang.ir import Net
from dgmlang.nets import ACTIVATIONS, HEAD_CONSTRAINTS, Deconv, FlatMLP, build_net, to_constraint


def mlp_net(**overrides) -> Net:
    options = dict(name="dec", kind="mlp", input_sizes=(4, 3), output_size=10,
                   output_shape=(10,), hidden=(16, 8))
    options.update(overrides)
    return Net(**options)


def test_mlp_maps_any_leading_batch_dims():
    net = build_net(mlp_net(), seed=0)
    assert net(torch.zeros(7)).shape == (10,)
    assert net(torch.zeros(2, 5, 7)).shape == (2, 5, 10)


def test_mlp_layers_follow_hidden_sizes_and_activation():
    net = build_net(mlp_net(activation="tanh"), seed=0)
    linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(7, 16), (16, 8), (8, 10)]
    assert sum(isinstance(m, torch.nn.Tanh) for m in net.modules()) == 2


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (build_net(mlp_net(), seed=s) for s in (3, 3, 4))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_building_under_a_seed_leaves_the_global_stream_alone():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    build_net(mlp_net(), seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_a_network_with_no_inputs_is_a_learned_constant():
    net = FlatMLP(0, (8,), 5)
    out = net(torch.zeros(4, 0))
    assert out.shape == (4, 5)
    assert torch.equal(out[0], out[3])
    out.sum().backward()
    assert net.constant.grad is not None


@pytest.mark.parametrize("shape, channels", [
    ((1, 8, 8), (64, 32)),
    ((1, 16, 16), (64, 32)),
    ((3, 16, 16), (32, 16, 8)),
    ((8, 8), (16,)),
    ((1, 12, 12), (16, 8, 4)),  # 12 halves twice: the third layer keeps the size
])
def test_deconv_produces_the_image_shape(shape, channels):
    size = 1
    for d in shape:
        size *= d
    net = build_net(Net("img", "deconv", (16,), size, shape, channels=channels), seed=0)
    assert net(torch.zeros(2, 3, 16)).shape == (2, 3, size)
    assert net(torch.zeros(16)).shape == (size,)


def test_deconv_starts_from_a_small_map():
    net = Deconv(16, (1, 16, 16), channels=(64, 32))
    assert net.start_shape == (64, 4, 4)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.stride) for m in convs] == [
        (64, 32, (2, 2)), (32, 1, (2, 2))]


def test_deconv_default_channels_from_the_registry():
    net = build_net(Net("img", "deconv", (4,), 64, (1, 8, 8)), seed=0)
    assert net.start_shape[0] == 64


def test_deconv_rejects_non_image_shapes():
    with pytest.raises(DGMShapeError, match=r"images shaped \[C, H, W\]"):
        build_net(Net("img", "deconv", (4,), 64, (64,), channels=(8,)))


def test_deconv_output_size_must_agree():
    with pytest.raises(DGMShapeError, match="makes 64 values but 65"):
        build_net(Net("img", "deconv", (4,), 65, (1, 8, 8), channels=(8,)))


def test_unknown_activation_suggests_a_name():
    with pytest.raises(DGMTypeError) as err:
        build_net(mlp_net(activation="rellu"))
    assert "did you mean 'relu'" in str(err.value)


def test_every_registry_activation_has_a_module():
    assert set(REGISTRY_ACTIVATIONS) == set(ACTIVATIONS)


def test_heads_map_onto_their_constraints():
    x = torch.tensor([[-200.0, -3.0, 0.0, 4.0, 90.0]])
    assert torch.equal(to_constraint(x, "real"), x)
    positive = to_constraint(x, "positive")
    assert constraints.positive.check(positive).all()
    assert torch.allclose(positive[0, 2:4], torch.nn.functional.softplus(x[0, 2:4]), atol=1e-5)
    unit = to_constraint(x, "unit")
    assert constraints.unit_interval.check(unit).all()
    simplex = to_constraint(x, "simplex")
    assert constraints.simplex.check(simplex).all()
    assert torch.allclose(simplex, torch.softmax(x, -1))


def test_integer_constraints_have_no_head():
    integer = [c for c in CONSTRAINTS if c not in HEAD_CONSTRAINTS]
    assert integer == ["nonneg_int"]
    with pytest.raises(DGMTypeError, match="cannot produce a value constrained"):
        to_constraint(torch.zeros(2), "nonneg_int")
