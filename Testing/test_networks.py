"""The 3D U-Net keeps the input size, learns (gradients everywhere) and rejects bad settings clearly."""

from __future__ import annotations

import pytest
import torch

from SegDeepLogic.errors import ModelPackageError
from SegDeepLogic.networks import ARCHITECTURES, UNet3D, build_network, network_size_divisor


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machines are shared; tiny networks gain nothing from more threads.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


CONFIGS = [
    pytest.param({"channels": (4,)}, (4, 6, 5), id="depth1-no-downsampling"),
    pytest.param({"channels": (4, 8)}, (4, 6, 8), id="depth2-instance"),
    pytest.param({"channels": (2, 4, 8), "residual": True}, (8, 4, 12), id="depth3-residual"),
    pytest.param({"channels": (2, 4, 8, 8), "norm": "batch"}, (8, 8, 16), id="depth4-batch"),
    pytest.param({"channels": (4, 8, 8), "norm": "group", "residual": True, "dropout": 0.2}, (4, 8, 4), id="group-dropout"),
    pytest.param({"channels": (2, 4, 8), "norm": None, "act": "relu"}, (4, 4, 4), id="no-norm-relu"),
    pytest.param({"channels": 2, "depth": 3, "strides": [(1, 2, 2), 2]}, (2, 8, 12), id="anisotropic-strides"),
    pytest.param({"channels": (2, 4), "kernel_size": 5, "act": "gelu"}, (4, 4, 6), id="kernel5-gelu"),
]


@pytest.mark.parametrize(("params", "size"), CONFIGS)
def test_output_has_one_logit_channel_per_class_at_the_input_size(params, size):
    net = UNet3D(in_channels=1, out_channels=3, **params).eval()
    out = net(torch.randn(2, 1, *size))
    assert out.shape == (2, 3, *size)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("params", "size"), CONFIGS)
def test_gradients_reach_every_parameter(params, size):
    torch.manual_seed(0)
    net = UNet3D(in_channels=2, out_channels=2, **params).train()
    target = torch.randint(0, 2, (2, *size))
    loss = torch.nn.functional.cross_entropy(net(torch.randn(2, 2, *size)), target)
    loss.backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_a_few_optimiser_steps_reduce_the_loss():
    torch.manual_seed(0)
    net = UNet3D(1, 2, channels=(4, 8), residual=True)
    x = torch.randn(2, 1, 8, 8, 8)
    y = (x[:, 0] > 0.5).long()  # learnable from intensity alone
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_size_divisor_is_the_product_of_the_strides_per_axis():
    assert UNet3D(1, 2, channels=(2, 4, 8, 16)).size_divisor == (8, 8, 8)
    assert UNet3D(1, 2, channels=(2,)).size_divisor == (1, 1, 1)
    assert UNet3D(1, 2, channels=(2, 4, 8), strides=[(1, 2, 2), (2, 2, 1)]).size_divisor == (2, 4, 2)
    assert UNet3D.required_divisor({"channels": [2, 4, 8], "strides": [[1, 2, 2], [2, 2, 1]]}) == (2, 4, 2)


def test_input_not_divisible_by_the_size_divisor_is_rejected_with_the_divisor_in_the_message():
    net = UNet3D(1, 2, channels=(2, 4, 8))
    with pytest.raises(ValueError, match=r"\(6, 8, 8\).*divisible by \(4, 4, 4\)"):
        net(torch.zeros(1, 1, 6, 8, 8))


def test_input_with_the_wrong_channel_count_is_rejected():
    with pytest.raises(ValueError, match=r"expected input \(N, 1, D, H, W\), got \(1, 2, 4, 4, 4\)"):
        UNet3D(1, 2, channels=(2, 4))(torch.zeros(1, 2, 4, 4, 4))


def test_channels_given_as_one_int_double_at_each_level():
    net = UNet3D(1, 2, channels=8, depth=4)
    assert net.channels == (8, 16, 32, 64)
    assert net.depth == 4


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"norm": "layer"}, "norm must be one of"),
        ({"act": "swish"}, "act must be one of"),
        ({"dropout": 1.0}, "dropout must be a probability"),
        ({"channels": []}, "non-empty list"),
        ({"channels": [4, 0]}, "positive ints"),
        ({"channels": 4}, "needs depth"),
        ({"channels": [4, 8], "depth": 3}, "depth=3 but channels has 2 levels"),
        ({"channels": [4, 8, 16], "strides": [2]}, "strides must have depth - 1 = 2 entries"),
        ({"channels": [4, 8], "strides": [(1, 2)]}, "each stride must be"),
        ({"kernel_size": 4}, "kernel_size must be a positive odd integer"),
        ({"out_channels": 0}, "out_channels must be a positive integer"),
        ({"residual": "yes"}, "residual must be true or false"),
    ],
)
def test_invalid_settings_are_rejected_with_the_reason(params, message):
    with pytest.raises(ValueError, match=message):
        UNet3D(**{"in_channels": 1, "out_channels": 2, **params})


def test_dropout_changes_outputs_in_training_only():
    torch.manual_seed(0)
    net = UNet3D(1, 2, channels=(4, 8), dropout=0.5)
    x = torch.randn(1, 1, 8, 8, 8)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))


@pytest.mark.parametrize("norm", ["instance", "group", "batch", None])
def test_eval_output_of_a_window_does_not_depend_on_the_rest_of_the_batch(norm):
    # The sliding-window inferer batches windows: each window's logits must be its own.
    torch.manual_seed(0)
    net = UNet3D(1, 2, channels=(2, 4), norm=norm).eval()
    x = torch.randn(3, 1, 8, 8, 8)
    with torch.no_grad():
        together = net(x)
        alone = torch.cat([net(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_registry_names_unet3d():
    assert ARCHITECTURES["unet3d"] is UNet3D


def test_build_network_returns_the_configured_architecture():
    net = build_network("unet3d", {"in_channels": 1, "out_channels": 4, "channels": [2, 4, 8], "norm": "group"})
    assert isinstance(net, UNet3D)
    assert (net.out_channels, net.channels, net.norm) == (4, (2, 4, 8), "group")


def test_build_network_with_an_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ModelPackageError, match=r"unknown architecture 'vnet'; known architectures: .*unet3d"):
        build_network("vnet", {})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"channels": "many"}, "channels must be"),
        ({"colour": 3}, "unexpected keyword"),
        ({"norm": "layer"}, "norm must be one of"),
    ],
)
def test_build_network_with_invalid_parameters_raises_a_model_package_error(params, message):
    with pytest.raises(ModelPackageError, match=rf"invalid architecture_params for 'unet3d': .*{message}"):
        build_network("unet3d", params)


def test_network_size_divisor_agrees_with_the_built_network():
    params = {"out_channels": 2, "channels": [2, 4, 8, 16], "strides": [2, [1, 2, 2], 2]}
    assert network_size_divisor("unet3d", params) == build_network("unet3d", params).size_divisor == (4, 8, 8)
    with pytest.raises(ModelPackageError, match="unknown architecture"):
        network_size_divisor("resnet", params)
