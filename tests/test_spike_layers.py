"""Layers fed by spikes (Conv2d, Linear of the spiking twin) against SpikingJelly's stock layers: the same outputs and
gradients to the bit, with no input kept for the input gradient and 1-byte spikes kept for the weight gradient."""
import pytest
import torch
from spikingjelly.activation_based import layer

from snn_adv.models import spiking_twin, vgg5
from snn_adv.models.spiking import Conv2d, Linear, compact_spikes

INPUTS = {
    "spikes": lambda g, shape: (torch.rand(shape, generator=g) < 0.3).double(),
    "signed spikes": lambda g, shape: torch.randint(-1, 2, shape, generator=g).double(),
    "pooled spikes": lambda g, shape: torch.randint(0, 5, shape, generator=g).double() / 4,
    "currents": lambda g, shape: torch.randn(shape, generator=g, dtype=torch.float64),
}


def pair(kind: str, dtype):
    torch.manual_seed(0)
    if kind == "conv":
        stock = layer.Conv2d(3, 4, 3, stride=2, padding=1, step_mode="m")
        ours = Conv2d(3, 4, 3, stride=2, padding=1, step_mode="m")
        return stock.to(dtype), ours.to(dtype), (5, 2, 3, 9, 9)
    return layer.Linear(6, 3, step_mode="m").to(dtype), Linear(6, 3, step_mode="m").to(dtype), (5, 2, 6)


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("values", list(INPUTS))
@pytest.mark.parametrize("weight_grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_values_and_gradients_as_stock_layer(kind, values, weight_grad, dtype):
    stock, ours, shape = pair(kind, dtype)
    ours.load_state_dict(stock.state_dict())
    stock.requires_grad_(weight_grad), ours.requires_grad_(weight_grad)
    g = torch.Generator().manual_seed(1)
    x = INPUTS[values](g, shape).to(dtype).requires_grad_(True)
    results = []
    for module in (stock, ours):
        y = module(x)
        inputs = [x, *module.parameters()] if weight_grad else [x]
        grads = torch.autograd.grad(y, inputs, torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=dtype))
        results.append((y, grads))
    (y_stock, g_stock), (y_ours, g_ours) = results
    assert torch.equal(y_stock, y_ours)
    assert len(g_ours) == len(g_stock) and all(torch.equal(a, b) for a, b in zip(g_stock, g_ours))


def kept_input(y: torch.Tensor):
    """What the layer's autograd node kept of its input (found below the multistep reshapes)."""
    node = y.grad_fn
    while "SavingCompactInput" not in type(node).__name__:
        node = node.next_functions[0][0]
    return node.saved_tensors[1]


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_what_is_kept_for_the_backward(kind):
    _, ours, shape = pair(kind, torch.float32)
    spikes = (torch.rand(shape) < 0.3).float().requires_grad_(True)
    ours.requires_grad_(False)
    assert kept_input(ours(spikes)) is None  # input gradient only: no input kept
    ours.requires_grad_(True)
    kept = kept_input(ours(spikes))
    assert kept.dtype == torch.int8 and torch.equal(kept.float(), spikes.detach().reshape(kept.shape))
    currents = torch.randn(shape, requires_grad=True)
    assert kept_input(ours(currents)).dtype == torch.float32


def test_compact_spikes_is_exact_or_declines():
    x = torch.tensor([0.0, 1.0, -1.0, 3.0])
    assert compact_spikes(x).dtype == torch.int8 and torch.equal(compact_spikes(x).float(), x)
    for unfit in (torch.tensor([0.0, 0.5]), torch.tensor([0.0, 300.0]), torch.tensor([float("nan")])):
        assert compact_spikes(unfit) is unfit


def test_spiking_twin_uses_them():
    twin = spiking_twin(vgg5(in_channels=3, num_classes=10, input_size=32))
    kinds = {type(m) for m in twin.modules()}
    assert Conv2d in kinds and Linear in kinds
    assert layer.Conv2d not in kinds and layer.Linear not in kinds
