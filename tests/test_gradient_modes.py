"""Gradient modes: each backward rule against a hand-written reference, spikes unchanged, EOT variance."""
import math

import pytest
import torch
from spikingjelly.activation_based import functional

from attack_helpers import ann, data, snn  # noqa: F401 (fixtures)
from snn_adv.attacks import ASSG, BPTT, HART, PDSG, PGD, CyclingGradient, RateGradient, gradient_mode
from snn_adv.neurons import BackwardRule, LeakyLIFNode, build_surrogate


def lif_membranes(x_seq, leak, v_th):
    """Independent loop: pre-reset membranes h[t] and spikes of a soft-reset LIF from rest."""
    v, hs, ss = torch.zeros_like(x_seq[0]), [], []
    for t in range(x_seq.shape[0]):
        h = leak * v + x_seq[t]
        s = (h >= v_th).float()
        v = h - v_th * s
        hs.append(h), ss.append(s)
    return torch.stack(hs), torch.stack(ss)


def node_gradient(node, x_seq, weights):
    """Spikes and d(sum weights*spikes)/dx_seq through ``node`` (fresh state)."""
    functional.reset_net(node)
    x = x_seq.clone().requires_grad_(True)
    spikes = node(x)
    (grad,) = torch.autograd.grad((spikes * weights).sum(), x)
    return spikes.detach(), grad


@pytest.fixture
def layer_input():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 5, 40, generator=g) * 1.6 - 0.2, torch.randn(6, 5, 40, generator=g)


@pytest.mark.parametrize("detach_reset", [False, True])
def test_backward_rule_of_the_own_surrogate_reproduces_native_bptt(layer_input, detach_reset):
    """A rule giving the node's own surrogate derivative runs the reference backward: it equals the default (on CPU
    the C++ kernel's closed form)."""
    x_seq, w = layer_input
    node = LeakyLIFNode(leak=0.9, v_threshold=0.8, detach_reset=detach_reset)
    spikes, native = node_gradient(node, x_seq, w)
    node.backward_rule = BackwardRule(lambda n, xs, h: n.surrogate_function.derivative(h - n.v_threshold))
    spikes_replaced, replaced = node_gradient(node, x_seq, w)
    assert torch.equal(spikes, spikes_replaced)
    torch.testing.assert_close(replaced, native)


def test_rate_mode_is_rga_rate_derivative(layer_input):
    x_seq, w = layer_input
    leak, v_th, beta, gamma = 0.9, 0.8, 2.0, 0.2
    node = LeakyLIFNode(leak=leak, v_threshold=v_th)
    mean = x_seq.mean(0)
    knee, top = (1 - leak) * v_th, beta * v_th
    slope = torch.where((mean >= 0) & (mean < knee), torch.tensor(gamma),
                        torch.where((mean >= knee) & (mean <= top), torch.tensor((1 - gamma * knee) / (top - knee)), torch.tensor(0.0)))
    expected = (slope * w.mean(0)).expand_as(x_seq)
    with gradient_mode(node, RateGradient(beta=beta, gamma=gamma)):
        _, grad = node_gradient(node, x_seq, w)
    torch.testing.assert_close(grad, expected)
    # the rate model integrates to 1 at beta*v_th: gamma*knee + slope*(top - knee) = 1
    assert math.isclose(gamma * knee + (1 - gamma * knee) / (top - knee) * (top - knee), 1.0)


def test_rules_apply_while_the_node_records_its_membrane(layer_input):
    """A node recording v[t] (layer-wise studies) still differentiates by the installed rule."""
    x_seq, w = layer_input
    node = LeakyLIFNode(leak=0.9, v_threshold=0.8)
    with gradient_mode(node, "rate"):
        _, expected = node_gradient(node, x_seq, w)
        node.store_v_seq = True
        _, grad = node_gradient(node, x_seq, w)
    torch.testing.assert_close(grad, expected)
    _, bptt = node_gradient(node, x_seq, w)
    assert not torch.allclose(bptt, expected)


@pytest.mark.parametrize("width", [0.5, 1.0, 2.0])
def test_hart_mode_is_time_averaged_triangle_surrogate(layer_input, width):
    x_seq, w = layer_input
    node = LeakyLIFNode(leak=0.95, v_threshold=1.0)
    h, s = lif_membranes(x_seq, 0.95, 1.0)
    triangle = (width - (h - 1.0).abs()).clamp(min=0) / width ** 2
    expected = (w * triangle).mean(0, keepdim=True).expand_as(x_seq)
    with gradient_mode(node, "hart" if width == 1.0 else HART(width=width)):
        spikes, grad = node_gradient(node, x_seq, w)
    assert torch.equal(spikes, s)
    torch.testing.assert_close(grad, expected)


def test_assg_sharpness_follows_membrane_statistics():
    x_seq = torch.rand(1, 3, 30, generator=torch.Generator().manual_seed(1)) * 2
    w = torch.ones_like(x_seq)
    node = LeakyLIFNode(leak=1.0)
    mode = ASSG(vanishing=0.4, relax=1.5)
    a = 2 * math.tan(0.4 * math.pi) / math.pi
    with gradient_mode(node, mode):
        node_gradient(node, x_seq, w)  # first iteration: M = 0.9 + 0.1|x|
        _, grad = node_gradient(node, x_seq, w)  # second: the EMA moves once more
    x = (x_seq - 1.0).abs()
    m1 = 0.9 + 0.1 * x
    d1 = 0.1 * (x - m1).abs()
    m2 = 0.9 * m1 + 0.1 * x
    d2 = 0.9 * d1 + 0.1 * (x - m2).abs()
    alpha = a / (m2 + 1.5 * d2 + 1e-4)
    torch.testing.assert_close(grad, (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2))


def test_pdsg_sigma_is_cumulative_std_per_channel():
    h = torch.randn(4, 3, 2, 5, 5, generator=torch.Generator().manual_seed(2)) * torch.tensor([0.5, 2.0]).view(1, 1, 2, 1, 1)
    sigma = PDSG.cumulative_std(h)
    for t in range(4):
        for c in range(2):
            torch.testing.assert_close(sigma[t, 0, c, 0, 0], h[: t + 1, :, c].std())
    flat = torch.randn(3, 4, 7)
    torch.testing.assert_close(PDSG.cumulative_std(flat)[2].flatten(), flat.std().reshape(1))


@pytest.mark.parametrize("mode", ["rate", "hart", "assg", "pdsg"])
def test_modes_keep_the_forward_and_are_restored(mode, snn, data):
    model, x = snn, data[0][:8]
    nodes = [m for m in model.modules() if isinstance(m, LeakyLIFNode)]
    before = [(n.surrogate_function, n.backward_rule) for n in nodes]
    model.encoder.manual_seed(3)
    with torch.no_grad():
        plain = model(x)
    model.encoder.manual_seed(3)
    with gradient_mode(model, mode), torch.enable_grad():
        patched = model(x.clone().requires_grad_(True))
    torch.testing.assert_close(patched.detach(), plain)
    assert [(n.surrogate_function, n.backward_rule) for n in nodes] == before
    with pytest.raises(RuntimeError), gradient_mode(model, mode):
        raise RuntimeError("inside")
    assert [(n.surrogate_function, n.backward_rule) for n in nodes] == before


def test_cycle_takes_its_members_in_turn_one_per_gradient(snn, data):
    """The k-th input gradient under a cycle is member k mod M's own gradient (same Poisson draw); neurons restored."""
    model, (x, y) = snn, (data[0][:6], data[1][:6])
    members = [RateGradient(), HART(width=0.5), BPTT(build_surrogate({"name": "ATan", "alpha": 2.0}))]
    nodes = [m for m in model.modules() if isinstance(m, LeakyLIFNode)]
    before = [(n.surrogate_function, n.backward_rule) for n in nodes]

    def gradient_under(mode, calls):
        attack = PGD(model, grad_mode=mode)
        grads = []
        with gradient_mode(model, mode):
            for _ in range(calls):
                model.encoder.manual_seed(5)
                grads.append(attack.input_gradient(x, y))
        return grads

    cycled = gradient_under(CyclingGradient(members), 5)
    own = [gradient_under(member, 1)[0] for member in members]
    for k, grad in enumerate(cycled):
        torch.testing.assert_close(grad, own[k % 3])
    assert not torch.allclose(own[0], own[1]) and not torch.allclose(own[1], own[2])
    assert [(n.surrogate_function, n.backward_rule) for n in nodes] == before
    with pytest.raises(ValueError, match="members"):
        CyclingGradient([RateGradient(), ASSG()])
    with pytest.raises(ValueError, match="members"):
        CyclingGradient([])


def test_bptt_input_gradient_is_sum_over_t_of_encoder_spike_gradients(snn, data):
    model, (x, y) = snn, data
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["spikes"] = output

    handle = model.encoder.register_forward_hook(keep)
    try:
        images = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(images), y, reduction="sum").backward()
    finally:
        handle.remove()
    spike_grad = captured["spikes"].grad  # [T, N, 1, 28, 28]
    assert captured["spikes"].shape[0] == model.timesteps
    assert spike_grad.abs().sum() > 0
    torch.testing.assert_close(images.grad, spike_grad.sum(0) / model.std)


def test_eot_reduces_gradient_variance(snn, data):
    model, (x, y) = snn, (data[0][:6], data[1][:6])

    def variance(k, repeats=6):
        attack = PGD(model, eot=k)
        model.encoder.manual_seed(11 * k)
        grads = torch.stack([attack.input_gradient(x, y) for _ in range(repeats)])
        return grads.var(0).mean().item()

    v1, v4 = variance(1), variance(4)
    assert v4 < v1 / 2  # 1/k in expectation


def test_mode_errors(ann):
    with pytest.raises(ValueError, match="grad_mode"):
        with gradient_mode(ann, "rate"):
            pass
    with pytest.raises(ValueError, match="grad_mode"):
        with gradient_mode(ann, "nope"):
            pass
    with pytest.raises(ValueError, match="beta"):
        RateGradient(beta=-1.0)
    with pytest.raises(ValueError, match="width"):
        HART(width=0.0)
    with pytest.raises(ValueError, match="vanishing"):
        ASSG(vanishing=0.7)
