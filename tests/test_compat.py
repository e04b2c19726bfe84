"""snn_adv.compat against the SpikingJelly installed: each claim it makes about the version is measured here, so
the suite checks it under whichever version runs it."""
from importlib import metadata

import pytest
import torch
from spikingjelly.activation_based import neuron

from snn_adv import compat
from snn_adv.neurons import LeakyLIFNode, PiecewiseLinear

pytestmark = pytest.mark.spikingjelly_versions  # CI runs this file under each SpikingJelly version


def test_the_version_is_the_installed_one():
    assert compat.SJ_VERSION == metadata.version("spikingjelly")
    assert compat.SJ2 == (int(compat.SJ_VERSION.split(".")[0]) >= 2)


def test_stock_neurons_in_eval_have_a_gradient_exactly_when_compat_says_so():
    stock = neuron.IFNode(v_reset=None, surrogate_function=PiecewiseLinear(), step_mode="m").eval()
    x = torch.rand(4, 2, 3, requires_grad=True)
    assert stock(x * 2).requires_grad == compat.STOCK_EVAL_HAS_GRADIENT


def test_backends_and_the_neuron_constructor():
    assert compat.check_backend("torch") == "torch"
    assert compat.node_backend_kwargs("torch") == ({} if compat.SJ2 else {"backend": "torch"})
    if compat.SJ2:
        with pytest.raises(ValueError, match="no CuPy kernels.*cuda12"):
            compat.check_backend("cupy")
        assert compat.cupy_module() is None
    else:
        assert compat.check_backend("cupy") == "cupy"
    assert LeakyLIFNode(0.9).backend == "torch"  # kept by our neuron whether SpikingJelly takes it or not


def test_voltage_hooks_record_the_activation_scale():
    from spikingjelly.activation_based.ann2snn.modules import VoltageHook

    body = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2), torch.nn.ReLU())
    traced = compat.insert_voltage_hooks(torch.fx.symbolic_trace(body).eval(), "max")
    x = torch.randn(16, 3)
    with torch.no_grad():
        traced(x)
        first = torch.relu(body[0](x)).max()
    hooks = [m for m in traced.modules() if isinstance(m, VoltageHook)]
    assert len(hooks) == 2 and float(hooks[0].scale) == pytest.approx(float(first))
