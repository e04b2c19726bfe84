"""The compiled CPU kernel against the reference dynamics (the neuron's torch path) on inputs of many blocks per
thread, in float32 and float64, with 1 and 2 threads: spikes, final membrane, input, initial-state and leak
gradients. Also how the kernel is built (cache folder, build key, lock, message)."""
import contextlib

import pytest
import torch
from hypothesis import given, settings, strategies as st

from snn_adv import _lif_cpu
from snn_adv.neurons import LeakyLIFNode

pytestmark = pytest.mark.skipif(not _lif_cpu.kernel_enabled(True), reason="the C++ LIF kernel cannot be built here")


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def kernel(enabled: bool):
    _lif_cpu.kernel_enabled(enabled)
    try:
        yield
    finally:
        _lif_cpu.kernel_enabled(True)


def run(x, v0, weights, leak, v_th, detach_reset, learnable, n_threads, use_kernel):
    """Spikes, v[T-1] and the gradients of a weighted sum of both w.r.t. input, initial membrane and leak."""
    node = LeakyLIFNode(leak, v_th, detach_reset=detach_reset, learnable_leak=learnable)
    x, v0 = x.clone().requires_grad_(True), v0.clone().requires_grad_(True)
    node.v = v0
    with kernel(use_kernel), threads(n_threads):
        spikes = node(x)
        loss = (spikes * weights).sum() + (node.v * weights[0]).sum()
        inputs = [x, v0] + ([node.leak_param] if learnable else [])
        grads = torch.autograd.grad(loss, inputs)
    return spikes.detach(), node.v.detach(), grads


# float32 values on a grid where leak*v + I is exact (dyadic leak, inputs in 1/64): both paths must fire on the
# same steps to the bit, so the comparison needs no tolerance on spikes. float64: any leak.
@settings(max_examples=12, deadline=None)
@given(
    dtype=st.sampled_from([torch.float32, torch.float64]),
    steps=st.sampled_from([1, 2, 3, 8, 33]),
    blocks_per_thread=st.floats(2.1, 3.9),
    n_threads=st.sampled_from([1, 2]),
    leak_grid=st.sampled_from([1.0, 0.5, 0.75]),
    leak_any=st.floats(0.3, 1.0),
    detach_reset=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_kernel_matches_reference_over_many_blocks(dtype, steps, blocks_per_thread, n_threads, leak_grid, leak_any,
                                                   detach_reset, seed):
    exact_grid = dtype == torch.float32
    leak = leak_grid if exact_grid else leak_any
    if exact_grid and leak == 0.75 and steps > 8:
        steps = 8  # 2 more mantissa bits per step: stays exact within float32 for these T
    block = _lif_cpu.lif_kernel().lif_backward_block(steps)
    membranes = int(blocks_per_thread * 2 * block) + 7  # never a multiple of the block
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(steps, membranes, generator=g, dtype=torch.float64) * 1.6 - 0.3
    v0 = torch.rand(membranes, generator=g, dtype=torch.float64) - 0.2
    if exact_grid:
        x, v0 = (x * 64).round() / 64, (v0 * 64).round() / 64
    x, v0 = x.to(dtype), v0.to(dtype)
    weights = torch.randn(steps, membranes, generator=g, dtype=dtype)

    args = (x, v0, weights, leak, 1.0, detach_reset, True, n_threads)
    s_k, v_k, (gx_k, gv_k, gl_k) = run(*args, use_kernel=True)
    s_r, v_r, (gx_r, gv_r, gl_r) = run(*args, use_kernel=False)

    assert 0 < s_r.sum() < s_r.numel()
    assert torch.equal(s_k, s_r)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(v_k, v_r, **tol)
    torch.testing.assert_close(gx_k, gx_r, **tol)
    torch.testing.assert_close(gv_k, gv_r, **tol)
    # the leak gradient sums T*M terms: relative to the sum of their magnitudes
    scale = (gx_r.abs().sum() * 2).item()
    assert abs(gl_k.item() - gl_r.item()) <= (1e-6 if dtype == torch.float32 else 1e-12) * scale, (gl_k, gl_r)


def test_leak_gradient_does_not_depend_on_thread_count():
    """The reported race: T=2, float64, 30,000 membranes, chunks of ATen's parallel_for not multiples of a block."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 30000, generator=g, dtype=torch.float64) * 1.6 - 0.3
    v0, weights = torch.zeros(30000, dtype=torch.float64), torch.randn(2, 30000, generator=g, dtype=torch.float64)
    leak_grads = [run(x, v0, weights, 0.9, 1.0, False, True, n, use_kernel=True)[2][2] for n in (1, 2)]
    reference = run(x, v0, weights, 0.9, 1.0, False, True, 1, use_kernel=False)[2][2]
    torch.testing.assert_close(leak_grads[0], reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(leak_grads[1], reference, rtol=1e-12, atol=1e-12)


def test_build_key_names_source_flags_and_torch(monkeypatch, tmp_path):
    monkeypatch.setenv("SNN_ADV_KERNEL_CACHE", str(tmp_path))
    assert _lif_cpu.kernel_cache_dir() == tmp_path
    key = _lif_cpu.kernel_build_key()
    monkeypatch.setattr(_lif_cpu, "_SOURCE", _lif_cpu._SOURCE + "\n// changed")
    assert _lif_cpu.kernel_build_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert _lif_cpu.kernel_build_key() != key
    monkeypatch.undo()
    monkeypatch.delenv("SNN_ADV_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _lif_cpu.kernel_cache_dir() == tmp_path / "snn-adv" / "kernels"


class _GradientPointer(torch.autograd.Function):
    """Identity whose backward records the address of the gradient it receives and passes the same tensor on."""

    pointers: list = []

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        _GradientPointer.pointers.append(grad.data_ptr())
        return grad


def _neuron_between_recorders(x):
    """x -> recorder -> LIF -> recorder -> spikes: the recorders see the neuron's outgoing and incoming gradients."""
    _GradientPointer.pointers = []
    node = LeakyLIFNode(0.9, 1.0)
    return _GradientPointer.apply(node(_GradientPointer.apply(x)))


def test_outgoing_gradient_is_written_over_the_incoming_one_held_by_autograd_alone():
    x = torch.randn(6, 4, 500, requires_grad=True)
    weights = torch.randn(500)
    reference = torch.autograd.grad((LeakyLIFNode(0.9, 1.0)(x) * weights).sum(), x)[0]
    with kernel(False):
        expected = torch.autograd.grad((LeakyLIFNode(0.9, 1.0)(x) * weights).sum(), x)[0]
    spikes = _neuron_between_recorders(x)
    (grad,) = torch.autograd.grad((spikes * weights).sum(), x)
    incoming, outgoing = _GradientPointer.pointers
    assert incoming == outgoing  # one buffer: no second [T, ...] gradient allocated
    assert torch.equal(grad, reference) and torch.allclose(grad, expected, atol=1e-6)
    # a gradient that is a view of the next layer's (the multistep layers flatten T into the batch): same buffer
    spikes = _neuron_between_recorders(x)
    (grad,) = torch.autograd.grad((spikes.flatten(0, 1) * weights).sum(), x)
    assert len(set(_GradientPointer.pointers)) == 1 and torch.equal(grad, reference)


def test_a_gradient_someone_else_holds_is_never_overwritten():
    x = torch.randn(6, 4, 500, requires_grad=True)
    weights = torch.randn(6, 4, 500)
    # a hook that keeps the spikes' gradient, and a gradient the caller passes in and keeps
    spikes = _neuron_between_recorders(x)
    kept = []
    spikes.register_hook(lambda g: kept.append(g))
    (spikes * weights).sum().backward()
    assert torch.equal(kept[0], weights) and len(set(_GradientPointer.pointers)) == 2
    given = weights.clone()
    spikes = _neuron_between_recorders(x)
    torch.autograd.grad(spikes, x, grad_outputs=given)
    assert torch.equal(given, weights) and len(set(_GradientPointer.pointers)) == 2
    # a hook that keeps the gradient of the flattened spikes, which the neuron's incoming gradient views
    spikes = _neuron_between_recorders(x)
    flat, kept = spikes.flatten(0, 1), []
    flat.register_hook(lambda g: kept.append(g))
    (flat * weights.flatten(0, 1)).sum().backward()
    assert torch.equal(kept[0], weights.flatten(0, 1)) and len(set(_GradientPointer.pointers)) == 2
    # a graph of the backward (create_graph): the incoming gradient may be needed again
    spikes = _neuron_between_recorders(x)
    torch.autograd.grad((spikes * weights).sum(), x, create_graph=True)
    assert len(set(_GradientPointer.pointers)) == 2
