"""Layers fed by spikes (Conv2d, Linear of the spiking twin) against SpikingJelly's stock layers: the same outputs and
gradients to the bit, with no input kept for the input gradient and 1-byte spikes kept for the weight gradient; with
``recompute_currents`` the neurons after them keep no float current either, with the same gradients."""
import copy

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import layer

from snn_adv.classifier import LEAN_ABOVE_TIMESTEPS, LEAN_TIME_CHUNK, SpikingClassifier
from snn_adv.encoding import PoissonEncoder
from snn_adv.models import recompute_currents, spiking_twin, vgg5
from snn_adv.models.spiking import Conv2d, Linear, compact_spikes, unpack_spikes
from snn_adv.neurons import LeakyLIFNode

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
    pooled = (torch.randint(0, 5, shape) / 4).requires_grad_(True)
    assert kept_input(ours(pooled)).dtype == torch.int8
    currents = torch.randn(shape, requires_grad=True)
    assert kept_input(ours(currents)).dtype == torch.float32


@pytest.mark.parametrize("values, scale", [([0.0, 1.0, -1.0, 3.0], 1.0), ([0.0, 0.25, 0.5, 1.0], 64.0),
                                           ([0.0, 1.25], 64.0), ([0.0, 1.0 / 64, 127.0 / 64], 64.0)])
def test_compact_spikes_packs_exactly(values, scale):
    x = torch.tensor(values)
    packed, got_scale = compact_spikes(x)
    assert packed.dtype == torch.int8 and got_scale == scale
    assert torch.equal(unpack_spikes(packed, got_scale, x.dtype), x)


@pytest.mark.parametrize("unfit", [[0.0, 0.3], [0.0, 300.0], [0.0, 1.0 / 128], [float("nan")]])
def test_compact_spikes_declines_what_it_cannot_pack(unfit):
    x = torch.tensor(unfit)
    packed, scale = compact_spikes(x)
    assert packed is x and scale == 1.0


def saved_by_neurons(output: torch.Tensor):
    """Every tensor the neurons' autograd nodes saved for the backward of ``output``."""
    saved, seen, stack = [], set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "MultiStepLIF" in type(node).__name__:
            saved += [t for t in node.saved_tensors if t is not None]
        stack += [n for n, _ in node.next_functions]
    return saved


@pytest.mark.parametrize("train", [False, True])
def test_recomputed_currents_give_the_same_gradients_and_keep_no_float_current(train):
    """Attack (weights frozen, eval) and training (weight gradients, dropout): bitwise the same logits and gradients
    as keeping the currents, with no float tensor of a current's size left in the neurons' saved tensors."""
    ann = vgg5(in_channels=3, num_classes=10, input_size=16)
    outcomes = []
    for recompute in (False, True):
        snn = SpikingClassifier(recompute_currents(spiking_twin(copy.deepcopy(ann), leak=0.99), recompute),
                                PoissonEncoder(seed=0), timesteps=5).train(train)
        snn.requires_grad_(train)
        torch.manual_seed(3)  # the same dropout masks
        x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        logits = snn(x)
        saved = saved_by_neurons(logits)
        float_saved = sum(t.numel() for t in saved if t.is_floating_point() and t.shape[:2] == (5, 4))  # [T, N, ...]
        inputs = [x] + [p for p in snn.parameters() if p.requires_grad]
        outcomes.append((logits, torch.autograd.grad(nn.functional.cross_entropy(logits, torch.arange(4)), inputs),
                         float_saved))
    (logits_kept, grads_kept, float_kept), (logits_re, grads_re, float_re) = outcomes
    assert torch.equal(logits_kept, logits_re)
    assert len(grads_kept) == (7 if train else 1) and all(torch.equal(a, b) for a, b in zip(grads_kept, grads_re))
    assert float_kept > 0 and float_re == 0


@pytest.mark.parametrize("timesteps,lean,expect_lean", [
    (LEAN_ABOVE_TIMESTEPS, None, False), (LEAN_ABOVE_TIMESTEPS + 1, None, True),
    (LEAN_ABOVE_TIMESTEPS + 1, False, False), (4, True, True)])
def test_long_t_runs_lean_by_default_with_the_same_gradients(monkeypatch, timesteps, lean, expect_lean):
    """Above LEAN_ABOVE_TIMESTEPS (``lean=None``) a forward recomputes currents (no float current saved by the
    neurons) and runs LEAN_TIME_CHUNK timesteps at a time; ``lean`` forces either way. Logits and the input gradient
    are those of the plain forward (up to the chunks' float rounding), and a layer's own setting comes back after."""
    ann = vgg5(in_channels=3, num_classes=10, input_size=8)
    body = spiking_twin(ann, leak=0.99)
    snn = SpikingClassifier(body, PoissonEncoder(seed=0), timesteps=timesteps, lean=lean).eval().requires_grad_(False)
    calls = []
    monkeypatch.setattr(body, "forward", lambda x, forward=body.forward: calls.append(len(x)) or forward(x))
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    results = []
    for forced in (lean, False):
        snn.lean, calls[:] = forced, []
        snn.encoder.manual_seed(3)
        logits = snn(x)
        float_saved = sum(t.numel() for t in saved_by_neurons(logits)  # currents [chunk, N, ...]
                          if t.is_floating_point() and t.ndim > 2 and t.shape[:2] in {(c, 2) for c in calls})
        results.append((logits.detach(), torch.autograd.grad(logits.logsumexp(1).sum(), x)[0], float_saved, list(calls)))
    (logits, grad, float_saved, chunks), (plain_logits, plain_grad, plain_saved, plain_chunks) = results
    assert snn.runs_lean is False and plain_chunks == [timesteps] and plain_saved > 0
    if expect_lean:
        full, rest = divmod(timesteps, LEAN_TIME_CHUNK)
        assert chunks == [LEAN_TIME_CHUNK] * full + [rest] * bool(rest)
        assert float_saved == 0
    else:
        assert chunks == [timesteps] and float_saved == plain_saved
    torch.testing.assert_close(logits, plain_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, plain_grad, atol=1e-6, rtol=1e-4)
    assert not any(getattr(m, "recompute_output", False) for m in body.modules())  # the layers' own setting is back


def test_a_current_changed_in_place_is_kept_not_recomputed():
    """A current edited after its layer (here ``+ 0.5`` in place) is no longer what the layer recomputes: the neuron
    keeps it, and the gradient is that of the edited current."""
    torch.manual_seed(0)
    conv = recompute_currents(Conv2d(2, 3, 3, padding=1, step_mode="m").requires_grad_(False))
    x = (torch.rand(4, 2, 2, 6, 6) < 0.5).float().requires_grad_(True)
    grads = []
    for recompute in (False, True):
        conv.recompute_output = recompute
        neuron = LeakyLIFNode(leak=0.9, v_threshold=0.5, step_mode="m")
        current = conv(x)
        current.add_(0.5)
        grads.append(torch.autograd.grad(neuron(current).sum(), x)[0])
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0


def test_spiking_twin_uses_them():
    twin = spiking_twin(vgg5(in_channels=3, num_classes=10, input_size=32))
    kinds = {type(m) for m in twin.modules()}
    assert Conv2d in kinds and Linear in kinds
    assert layer.Conv2d not in kinds and layer.Linear not in kinds
