"""LeakyLIFNode and PiecewiseLinear against independent references: a hand-written loop with a hand-written
straight-through surrogate, SpikingJelly's IFNode, closed forms and finite differences."""
import math

import pytest
import torch
from spikingjelly.activation_based import functional, neuron

from snn_adv import _lif_cpu
from snn_adv.neurons import HardResetLIFNode, LeakyLIFNode, PiecewiseLinear, set_leak, spiking_neurons, surrogate_derivative

pytestmark = pytest.mark.spikingjelly_versions  # CI runs this file under each SpikingJelly version


@pytest.fixture(autouse=True, params=["cpu_kernel", "torch_loop"])
def multistep_path(request):
    """Every test runs on both multistep paths: the compiled CPU kernel and the pure-torch loop."""
    if request.param == "torch_loop":
        _lif_cpu.kernel_enabled(False)
        yield request.param
        _lif_cpu.kernel_enabled(True)
    else:
        if not _lif_cpu.kernel_enabled(True):
            pytest.skip("the C++ LIF kernel cannot be built here (no compiler/ninja)")
        yield request.param


def _spike(x: torch.Tensor, gamma: float, width: float) -> torch.Tensor:
    """Heaviside forward, ``gamma/width*max(0, 1-|x|/width)`` backward, written without the library."""
    slope = (gamma / width * (1 - x.abs() / width).clamp(min=0)).detach()
    return (x >= 0).to(x).detach() + (x * slope - (x * slope).detach())  # the bracket is exactly 0


def reference_lif(x_seq, leak, v_th, detach_reset=False, gamma=0.3, width=1.0, v0=None):
    """The paper's dynamics as a plain autograd loop: returns (spikes [T,...], final membrane)."""
    v = torch.zeros_like(x_seq[0]) if v0 is None else v0
    spikes = []
    for t in range(x_seq.shape[0]):
        h = leak * v + x_seq[t]
        s = _spike(h - v_th, gamma, width)
        v = h - v_th * (s.detach() if detach_reset else s)
        spikes.append(s)
    return torch.stack(spikes), v


def _run(node: LeakyLIFNode, x_seq: torch.Tensor) -> torch.Tensor:
    functional.reset_net(node)
    if node.step_mode == "m":
        return node(x_seq)
    return torch.stack([node(x) for x in x_seq])


CASES = [(0.5, 1.0), (0.9, 0.5), (0.99, 1.0), (1.0, 1.0), (0.7, 2.0)]


@pytest.mark.parametrize("leak,v_th", CASES)
@pytest.mark.parametrize("step_mode", ["m", "s"])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_trajectory_and_gradient_match_reference_loop(leak, v_th, step_mode, detach_reset):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(12, 5, 7, generator=g, dtype=torch.float64) * 2.0 * v_th - 0.4 * v_th).requires_grad_(True)
    weights = torch.randn(12, 5, 7, generator=g, dtype=torch.float64)
    node = LeakyLIFNode(leak, v_th, PiecewiseLinear(0.3, 1.0), detach_reset=detach_reset, step_mode=step_mode)

    spikes = _run(node, x)
    (grad,) = torch.autograd.grad((spikes * weights).sum() + node.v.sum(), x)
    ref_spikes, ref_v = reference_lif(x, leak, v_th, detach_reset)
    (ref_grad,) = torch.autograd.grad((ref_spikes * weights).sum() + ref_v.sum(), x)

    assert 0 < spikes.sum() < spikes.numel()  # the case exercises both firing and silence
    assert torch.equal(spikes, ref_spikes.detach())
    torch.testing.assert_close(node.v, ref_v.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_initial_state_gradient_and_carry_over():
    """Two consecutive multistep calls without reset equal one call on the concatenated sequence."""
    x = torch.rand(10, 4, dtype=torch.float64) * 1.5
    node = LeakyLIFNode(0.8, 1.0)
    whole = node(x)
    functional.reset_net(node)
    halves = torch.cat([node(x[:4]), node(x[4:])])
    assert torch.equal(whole, halves)

    v0 = (torch.rand(4, dtype=torch.float64) * 0.5).requires_grad_(True)
    node = LeakyLIFNode(0.8, 1.0)
    node.v = v0
    out = node(x)
    (grad,) = torch.autograd.grad(out.sum() + node.v.sum(), v0)
    ref_out, ref_v = reference_lif(x, 0.8, 1.0, v0=v0)
    (ref_grad,) = torch.autograd.grad(ref_out.sum() + ref_v.sum(), v0)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("detach_reset", [False, True])
def test_learnable_leak_gradient(detach_reset):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(10, 6, generator=g, dtype=torch.float64) * 1.6
    weights = torch.randn(10, 6, generator=g, dtype=torch.float64)
    node = LeakyLIFNode(0.8, 1.0, detach_reset=detach_reset, learnable_leak=True).double()
    loss = (node(x) * weights).sum() + node.v.sum()
    loss.backward()
    leak = node.leak_param.detach().clone().requires_grad_(True)
    ref_s, ref_v = reference_lif(x, leak, 1.0, detach_reset)
    ((ref_s * weights).sum() + ref_v.sum()).backward()
    assert node.leak_param.grad.abs() > 0
    torch.testing.assert_close(node.leak_param.grad, leak.grad)


def test_learnable_leak_gradient_matches_finite_differences():
    """With a narrow surrogate and every membrane away from the threshold, the spikes do not change under a small
    leak perturbation, so the loss is locally smooth in the leak and its true derivative is the BPTT gradient."""
    width = 0.02
    x = torch.tensor([[0.7, 0.3, 1.3], [0.6, 0.5, 0.2], [0.4, 0.75, 0.5], [0.1, 0.2, 0.9]], dtype=torch.float64)
    weights = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.7, -1.1], [2.0, 0.1, 0.4], [-0.5, 1.5, 0.8]], dtype=torch.float64)

    def loss_at(leak: float, grad: bool):
        node = LeakyLIFNode(0.5, 1.0, PiecewiseLinear(0.3, width), learnable_leak=True).double()
        with torch.no_grad():
            node.leak_param.fill_(leak)  # in float64: the parameter is created in float32
        with torch.set_grad_enabled(grad):
            spikes = node(x)
            loss = (spikes * weights).sum() + (node.v * torch.arange(3.0, dtype=torch.float64)).sum()
        return node, spikes, loss

    node, spikes, loss = loss_at(0.9, True)
    h_margin = []
    ref_v = torch.zeros(3, dtype=torch.float64)
    for t in range(4):  # every pre-reset membrane stays outside the surrogate's support
        h = 0.9 * ref_v + x[t]
        h_margin.append((h - 1.0).abs().min())
        ref_v = h - (h >= 1.0).double()
    assert min(h_margin) > 2 * width and spikes.sum() > 0
    loss.backward()
    eps = 1e-6
    fd = (loss_at(0.9 + eps, False)[2] - loss_at(0.9 - eps, False)[2]) / (2 * eps)
    assert abs(fd) > 0.1
    torch.testing.assert_close(node.leak_param.grad, fd, rtol=1e-6, atol=1e-8)


def test_learnable_leak_stays_in_range():
    node = LeakyLIFNode(0.9, learnable_leak=True)
    with torch.no_grad():
        node.leak_param.fill_(1.7)
    assert float(node.leak) == 1.0
    with torch.no_grad():
        node.leak_param.fill_(-3.0)
    assert float(node.leak) == pytest.approx(LeakyLIFNode.min_leak)


@pytest.mark.parametrize("step_mode", ["m", "s"])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("variant", ["default", "atan", "hard-reset"])
def test_learnable_threshold_gradient_matches_the_hand_loop(step_mode, detach_reset, variant):
    """dL/dv_th and dL/dx against a hand loop that differentiates a threshold tensor explicitly (through the
    spike's surrogate and the reset): 'default' is the fused node's closed form, 'atan' its reference backward,
    'hard-reset' a variant's autograd step loop."""
    from spikingjelly.activation_based import surrogate as sj_surrogate

    g = torch.Generator().manual_seed(2)
    x = (torch.rand(10, 3, 5, generator=g, dtype=torch.float64) * 1.6).requires_grad_(True)
    weights = torch.randn(10, 3, 5, generator=g, dtype=torch.float64)
    cls = HardResetLIFNode if variant == "hard-reset" else LeakyLIFNode
    node = cls(0.8, 0.9, sj_surrogate.ATan() if variant == "atan" else None, detach_reset=detach_reset,
               step_mode=step_mode, learnable_threshold=True).double()
    with torch.no_grad():
        node.threshold_param.fill_(0.9)  # in float64: the parameter is created in float32
    spikes = _run(node, x)
    grad_x, grad_threshold = torch.autograd.grad((spikes * weights).sum() + (0.7 * node.v).sum(),
                                                 [x, node.threshold_param])
    threshold = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    v, ref_spikes = torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        h = 0.8 * v + x[t]
        s = sj_surrogate.ATan()(h - threshold) if variant == "atan" else _spike(h - threshold, 0.3, 0.9)
        r = s.detach() if detach_reset else s
        v = h * (1 - r) if variant == "hard-reset" else h - threshold * r
        ref_spikes.append(s)
    ref_spikes = torch.stack(ref_spikes)
    ref_x, ref_threshold = torch.autograd.grad((ref_spikes * weights).sum() + (0.7 * v).sum(), [x, threshold])
    assert 0 < spikes.sum() < spikes.numel() and torch.equal(spikes, ref_spikes.detach())
    assert abs(float(ref_threshold)) > 0.1
    torch.testing.assert_close(grad_threshold, ref_threshold)
    torch.testing.assert_close(grad_x, ref_x)


def test_learnable_threshold_is_floored_followed_by_its_surrogate_and_frozen_under_attack_rules():
    from snn_adv.attacks.gradients import RateGradient, gradient_mode

    node = LeakyLIFNode(0.9, 2.0, learnable_threshold=True)
    assert node.v_threshold == 2.0 and node.surrogate_function.width == 2.0
    with torch.no_grad():
        node.threshold_param.fill_(1.5)  # what an optimiser step does
    _run(node, torch.rand(4, 3))
    assert node.surrogate_function.width == 1.5  # the paper's surrogate width follows the trained threshold
    node.v_threshold = 3.0
    assert float(node.threshold_param) == 3.0
    attacker = PiecewiseLinear(1.0, 0.5)
    with gradient_mode(torch.nn.Sequential(node), "bptt", attacker):
        _run(node, torch.rand(4, 3, requires_grad=True)).sum().backward()
    assert attacker.width == 0.5 and node.surrogate_function.width == 3.0  # an attacker's surrogate is its own
    with torch.no_grad():
        node.threshold_param.fill_(-1.0)  # below the floor: floored out of place, the parameter left as trained
    node.threshold_param.grad = None
    x = torch.rand(4, 3) * 0.002
    spikes = _run(node, x)
    assert node.v_threshold == LeakyLIFNode.min_threshold and float(node.threshold_param) == -1.0
    assert torch.equal(spikes, _run(LeakyLIFNode(0.9, LeakyLIFNode.min_threshold), x))
    spikes.sum().backward()
    assert float(node.threshold_param.grad.detach()) == 0.0
    node.backward_rule = RateGradient().rule_for(node)
    with pytest.raises(NotImplementedError, match="trainable threshold"):
        _run(node, torch.rand(4, 3, requires_grad=True))
    node.threshold_param.requires_grad_(False)  # an attack freezes the parameters: the rule then runs
    _run(node, torch.rand(4, 3, requires_grad=True)).sum().backward()


@pytest.mark.parametrize("detach_reset", [False, True])
def test_leak_one_is_spikingjelly_if_node(detach_reset):
    x = (torch.rand(16, 3, 8) * 1.4 - 0.2).requires_grad_(True)
    weights = torch.randn(16, 3, 8)
    ours = LeakyLIFNode(1.0, 1.0, PiecewiseLinear(), detach_reset=detach_reset)
    theirs = neuron.IFNode(v_reset=None, surrogate_function=PiecewiseLinear(), detach_reset=detach_reset, step_mode="m")
    s_ours, s_theirs = ours(x), theirs(x)
    assert torch.equal(s_ours, s_theirs) and torch.equal(ours.v, theirs.v)
    g_ours, = torch.autograd.grad((s_ours * weights).sum(), x)
    g_theirs, = torch.autograd.grad((s_theirs * weights).sum(), x)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-6)


def test_leak_settable_and_set_leak_helper():
    net = torch.nn.Sequential(LeakyLIFNode(0.9), torch.nn.Identity(), LeakyLIFNode(0.5))
    assert len(spiking_neurons(net)) == 2
    set_leak(net, 0.7)
    assert all(n.leak == 0.7 for n in spiking_neurons(net))
    x = torch.rand(6, 4) * 1.5
    functional.reset_net(net)
    torch.testing.assert_close(net[0](x), reference_lif(x, 0.7, 1.0)[0])
    with pytest.raises(ValueError, match="leak"):
        set_leak(net, 1.5)


@pytest.mark.parametrize("gamma,width", [(0.3, 1.0), (1.0, 0.5), (0.7, 2.0)])
def test_piecewise_linear_gradient_closed_form(gamma, width):
    x = torch.linspace(-3, 3, 601, dtype=torch.float64, requires_grad=True)
    sg = PiecewiseLinear(gamma, width)
    out = sg(x)
    assert torch.equal(out, (x >= 0).to(x))
    (grad,) = torch.autograd.grad(out.sum(), x)
    closed = torch.tensor([gamma / width * max(0.0, 1 - abs(v) / width) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(grad, closed)
    torch.testing.assert_close(surrogate_derivative(sg, x.detach()), closed)
    # the primitive (non-spiking mode) integrates to the derivative: central differences
    xs = x.detach()[1:-1]
    h = 1e-6
    fd = (sg.primitive(xs + h) - sg.primitive(xs - h)) / (2 * h)
    torch.testing.assert_close(fd, closed[1:-1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sg.primitive(torch.tensor([-10.0, 10.0], dtype=torch.float64)),
                               torch.tensor([0.0, gamma], dtype=torch.float64))


def test_piecewise_linear_is_the_papers_formula():
    """With width = v_th: ds/du = gamma*max(0, 1-|u/v_th - 1|)/v_th (Sharmin et al.'s code)."""
    v_th, gamma = 1.7, 0.3
    u = torch.linspace(-1, 4, 301, dtype=torch.float64)
    ours = surrogate_derivative(PiecewiseLinear(gamma, width=v_th), u - v_th)
    paper = gamma * (1 - (u / v_th - 1).abs()).clamp(min=0) / v_th
    torch.testing.assert_close(ours, paper)


def test_default_surrogate_follows_the_threshold():
    """A node's default surrogate is the paper's at its threshold, also after the threshold is changed (conversion,
    SNN-BP scaling); a user-given surrogate is left alone."""
    gamma = 0.3
    node = LeakyLIFNode(leak=1.0, v_threshold=2.5)
    for v_th in (2.5, 0.7 * 2.5):
        node.v_threshold = v_th
        functional.reset_net(node)
        u = torch.linspace(-1, 6, 71, dtype=torch.float64).unsqueeze(0).requires_grad_()
        node.double()(u).sum().backward()  # one step from rest: h = u
        paper = gamma * (1 - (u.detach() / v_th - 1).abs()).clamp(min=0) / v_th
        torch.testing.assert_close(u.grad, paper)
    fixed = LeakyLIFNode(v_threshold=2.0, surrogate_function=PiecewiseLinear(gamma, width=1.0))
    fixed.v_threshold = 3.0
    assert fixed.surrogate_function.width == 1.0


def test_generic_surrogate_matches_its_autograd():
    """A SpikingJelly surrogate without a closed form in our code: the fused neuron uses its autograd."""
    from spikingjelly.activation_based import surrogate

    x = (torch.rand(8, 5, dtype=torch.float64) * 2).requires_grad_(True)
    sig = surrogate.Sigmoid(alpha=4.0)
    node = LeakyLIFNode(0.9, 1.0, sig)
    (grad,) = torch.autograd.grad(node(x).sum(), x)
    v, ref = torch.zeros(5, dtype=torch.float64), []
    for t in range(8):  # same loop, SpikingJelly's own surrogate autograd
        h = 0.9 * v + x[t]
        s = sig(h - 1.0)
        v = h - s
        ref.append(s)
    (ref_grad,) = torch.autograd.grad(torch.stack(ref).sum(), x)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_eval_mode_gives_the_train_mode_input_gradient(step_mode):
    x = (torch.rand(8, 4, 6) * 1.5).requires_grad_(True)
    grads = []
    for train in (True, False):
        node = LeakyLIFNode(0.9, step_mode=step_mode).train(train)
        (g,) = torch.autograd.grad(_run(node, x).sum(), x)
        grads.append(g)
    assert grads[1].abs().sum() > 0
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_no_graph_under_no_grad(step_mode):
    x = (torch.rand(8, 4) * 1.5).requires_grad_(True)
    node = LeakyLIFNode(0.9, step_mode=step_mode)
    with torch.no_grad():
        out = _run(node, x)
    assert out.grad_fn is None and not out.requires_grad and node.v.grad_fn is None
    torch.testing.assert_close(out, reference_lif(x.detach(), 0.9, 1.0)[0])


@pytest.mark.parametrize("leak", [0.0, -0.1, 1.0001, 2, math.nan, math.inf, "0.5", None])
def test_invalid_leak_raises(leak):
    with pytest.raises(ValueError, match="leak"):
        LeakyLIFNode(leak)
    node = LeakyLIFNode(0.5)
    with pytest.raises(ValueError, match="leak"):
        node.leak = leak
    assert node.leak == 0.5


@pytest.mark.parametrize("v_th", [0.0, -1.0, math.nan, math.inf])
def test_invalid_threshold_raises(v_th):
    with pytest.raises(ValueError, match="v_threshold"):
        LeakyLIFNode(0.9, v_th)


@pytest.mark.parametrize("kwargs", [{"gamma": 0.0}, {"gamma": -1.0}, {"width": 0.0}, {"width": math.nan}])
def test_invalid_surrogate_raises(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        PiecewiseLinear(**kwargs)


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="'nonsense': must be one of 'torch'"):
        LeakyLIFNode(0.9, backend="nonsense")


@pytest.mark.parametrize("step_mode", ["m", "s"])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_hard_reset_variant_matches_its_hand_written_loop(step_mode, detach_reset):
    """A variant overrides one method (reset_after_spike); spikes, membrane and BPTT follow in every path."""
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(9, 4, 6, generator=g, dtype=torch.float64) * 1.6 - 0.2).requires_grad_(True)
    weights = torch.randn(9, 4, 6, generator=g, dtype=torch.float64)
    node = HardResetLIFNode(0.8, 1.0, PiecewiseLinear(0.3, 1.0), detach_reset=detach_reset, step_mode=step_mode,
                            v_reset=0.2)

    def hard_reset(h, s):
        r = s.detach() if detach_reset else s
        return h * (1 - r) + 0.2 * r

    _check_against_hand_loop(node, x, weights, charge=lambda v, x_t: 0.8 * v + x_t, reset=hard_reset,
                             plain=LeakyLIFNode(0.8, 1.0, step_mode=step_mode))  # differs from the soft reset it replaces


def _check_against_hand_loop(node, x, weights, charge, reset, plain):
    """``node``'s spikes, final membrane and BPTT gradient equal a hand-written loop of ``charge(v, x_t)``, the
    straight-through spike (threshold 1, PiecewiseLinear(0.3, 1)) and ``reset(h, s)``; and differ from ``plain``'s."""
    spikes = _run(node, x)
    (grad,) = torch.autograd.grad((spikes * weights).sum() + node.v.sum(), x)
    v, ref_spikes = torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        h = charge(v, x[t])
        s = _spike(h - 1.0, 0.3, 1.0)
        v = reset(h, s)
        ref_spikes.append(s)
    ref_spikes = torch.stack(ref_spikes)
    (ref_grad,) = torch.autograd.grad((ref_spikes * weights).sum() + v.sum(), x)
    assert 0 < spikes.sum() < spikes.numel()
    assert torch.equal(spikes, ref_spikes.detach())
    torch.testing.assert_close(node.v, v.detach())
    torch.testing.assert_close(grad, ref_grad)
    assert not torch.equal(spikes, _run(plain, x.detach()))


class _DecayInputLIF(LeakyLIFNode):
    """A user's variant in SpikingJelly's terms: it overrides the step hook ``neuronal_charge`` (input-decaying
    charge ``v += (x - v) / tau``, tau = 2), not our ``charge``."""

    def neuronal_charge(self, x: torch.Tensor) -> None:
        self.v = self.v + (x - self.v) * 0.5


@pytest.mark.parametrize("step_mode,store_v_seq", [("s", False), ("m", False), ("m", True)])
def test_subclass_overriding_spikingjelly_step_hook_is_one_neuron_on_every_path(step_mode, store_v_seq):
    """SpikingJelly's contract: a subclass overriding ``neuronal_charge`` gets it single-step, multistep and with
    ``store_v_seq`` (multistep once ran the class's own charge instead: other spikes)."""
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(10, 4, 6, generator=g, dtype=torch.float64) * 2.4 - 0.2).requires_grad_(True)
    weights = torch.randn(10, 4, 6, generator=g, dtype=torch.float64)
    node = _DecayInputLIF(0.9, 1.0, PiecewiseLinear(0.3, 1.0), step_mode=step_mode, store_v_seq=store_v_seq)
    _check_against_hand_loop(node, x, weights, charge=lambda v, x_t: v + (x_t - v) * 0.5, reset=lambda h, s: h - s,
                             plain=LeakyLIFNode(0.9, 1.0, step_mode=step_mode))


def test_fast_paths_and_backward_rules_are_decided_per_class():
    """The fused kernels and the gradient modes' backward rules are for classes whose dynamics are charge/reset:
    a class overriding a SpikingJelly step hook is refused a rule with a reason, never given other dynamics."""
    from snn_adv.attacks import gradient_mode
    from snn_adv.neurons import supports_backward_rules

    assert LeakyLIFNode.has_default_dynamics() and supports_backward_rules(LeakyLIFNode())
    assert not HardResetLIFNode.has_default_dynamics() and supports_backward_rules(HardResetLIFNode())
    assert not _DecayInputLIF.has_default_dynamics() and not supports_backward_rules(_DecayInputLIF())
    net = torch.nn.Sequential(_DecayInputLIF(0.9, 1.0))
    with pytest.raises(ValueError, match="step hooks"):
        with gradient_mode(net, "rate"):
            pass
    with gradient_mode(net, "bptt"):  # surrogate BPTT through the hooks is fine
        x = torch.rand(4, 2, 3, requires_grad=True)
        functional.reset_net(net)
        assert torch.autograd.grad(net(x * 3).sum(), x)[0].abs().sum() > 0

