"""CuPy backend (SpikingJelly's CUDA kernels) against the reference dynamics (the torch backend, which on CUDA is the
neuron's own charge/fire/reset differentiated by autograd): outputs and gradients. GPU only."""
import pytest
import torch
from spikingjelly.activation_based import surrogate

from snn_adv.neurons import BackwardRule, HardResetLIFNode, LeakyLIFNode, PiecewiseLinear, cupy_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cupy_available(), reason="needs CUDA and CuPy"),
]

SURROGATES = [PiecewiseLinear(), PiecewiseLinear(gamma=0.5, width=0.7), surrogate.Sigmoid(), surrogate.ATan()]


@pytest.mark.parametrize("sg", SURROGATES, ids=lambda s: repr(s))
@pytest.mark.parametrize("leak", [1.0, 0.99, 0.7])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_cupy_equals_torch_backend(sg, leak, detach_reset):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(16, 8, 3, 5, 5, device="cuda", generator=g) * 1.2 - 0.1
    weights = torch.randn(x.shape, device="cuda", generator=g)
    results = []
    for backend in ("torch", "cupy"):
        node = LeakyLIFNode(leak, 0.8, sg, detach_reset=detach_reset, backend=backend).eval()  # eval: gradient too
        xi = x.clone().requires_grad_(True)
        spikes = node(xi)
        (grad,) = torch.autograd.grad((spikes * weights).sum(), xi)
        results.append((spikes, node.v, grad))
    (s_t, v_t, g_t), (s_c, v_c, g_c) = results
    assert 0 < s_t.sum() < s_t.numel()
    assert torch.equal(s_t, s_c)
    torch.testing.assert_close(v_t, v_c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_t, g_c, rtol=1e-4, atol=1e-5)


def test_cupy_half_precision_runs_piecewise_linear():
    """The half2 branch of PiecewiseLinear.cuda_codes compiles and gives the float gradient within fp16 error."""
    x = (torch.rand(8, 4, 64, device="cuda") * 1.2).requires_grad_(True)
    grads = []
    for dtype in (torch.float, torch.half):
        node = LeakyLIFNode(0.9, 1.0, backend="cupy")
        xi = x.detach().to(dtype).requires_grad_(True)
        (g,) = torch.autograd.grad(node(xi).float().sum(), xi)
        grads.append(g.float())
    torch.testing.assert_close(grads[0], grads[1], rtol=2e-2, atol=2e-2)


def test_cupy_rejects_cpu_tensors_and_learnable_leak():
    with pytest.raises(ValueError, match="CUDA"):
        LeakyLIFNode(0.9, backend="cupy")(torch.rand(3, 4))
    with pytest.raises(NotImplementedError, match="learnable_leak"):
        LeakyLIFNode(0.9, backend="cupy", learnable_leak=True).cuda()(torch.rand(3, 4, device="cuda"))


def test_cupy_node_under_a_backward_rule_runs_the_reference():
    """A gradient mode's rule on a CuPy node: same spikes as the CuPy forward, the rule's gradient."""
    x = torch.rand(6, 4, 32, device="cuda") * 1.5
    node = LeakyLIFNode(0.9, backend="cupy")
    spikes_cupy = node(x)
    node.reset()
    node.backward_rule = BackwardRule(lambda n, xs, h: torch.ones_like(h), temporal=False)
    xi = x.clone().requires_grad_(True)
    spikes = node(xi)
    (grad,) = torch.autograd.grad(spikes.sum(), xi)
    assert torch.equal(spikes, spikes_cupy)
    torch.testing.assert_close(grad, torch.ones_like(grad))


def test_cupy_refuses_other_dynamics():
    with pytest.raises(NotImplementedError, match="HardResetLIFNode"):
        HardResetLIFNode(0.9, backend="cupy").cuda()(torch.rand(3, 4, device="cuda"))
