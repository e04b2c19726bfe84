"""The torchattacks adapter: stock SpikingJelly neurons stay differentiable under eval(), torchattacks' attacks
lower accuracy, and the model's modes come back."""
import copy

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, neuron

from attack_helpers import TIMESTEPS, accuracy, data, snn  # noqa: F401 (fixtures)
from snn_adv.attacks import FGSM, PGD, NoInputGradientError, adapt
from snn_adv.compat import SJ_VERSION, STOCK_EVAL_HAS_GRADIENT
from snn_adv.classifier import SpikingClassifier
from snn_adv.encoding import PoissonEncoder
from snn_adv.neurons import LeakyLIFNode, PiecewiseLinear

torchattacks = pytest.importorskip("torchattacks")

pytestmark = pytest.mark.spikingjelly_versions  # CI runs this file under each SpikingJelly version


def stock_network(snn, step_mode="m"):
    """``snn``'s body rebuilt with stock IFNodes (leak 1, soft reset): what a SpikingJelly user would have."""
    functional.reset_net(snn)  # the last forward's state may hold a graph, which deepcopy refuses
    body = copy.deepcopy(snn.body)
    for name, module in body.named_children():
        if isinstance(module, LeakyLIFNode):
            assert module.leak == 1.0
            setattr(body, name, neuron.IFNode(v_threshold=module.v_threshold, v_reset=None,
                                              surrogate_function=PiecewiseLinear()))
    functional.set_step_mode(body, step_mode)
    return body


@pytest.fixture
def model(snn):
    return adapt(stock_network(snn), PoissonEncoder(seed=0), timesteps=TIMESTEPS, mean=(0.5,), std=(0.5,)).eval()


def test_adapted_network_matches_our_snn_and_has_gradients_in_eval(snn, model, data):
    ours, (x, y) = snn, data
    ours.encoder.manual_seed(4), model.encoder.manual_seed(4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x), atol=1e-4, rtol=1e-4)
    # the trap the adapter exists for (SpikingJelly 0.0.0.0.14): a plain wrapper in eval() has a hard step and no
    # input gradient; under 2.x the plain wrapper has one too (compat.STOCK_EVAL_HAS_GRADIENT, checked here)
    plain = SpikingClassifier(model.body, PoissonEncoder(seed=0), timesteps=TIMESTEPS).eval()
    for net, expect_nonzero in ((plain, STOCK_EVAL_HAS_GRADIENT), (model, True)):
        images = x.clone().requires_grad_(True)
        nn.functional.cross_entropy(net(images), y).backward()
        nonzero = images.grad is not None and bool(images.grad.abs().sum() > 0)
        assert nonzero == expect_nonzero
    assert all(not n.training for n in model.neurons())


@pytest.mark.parametrize(
    "make, eps, drop",
    [
        (lambda m: torchattacks.PGD(m, eps=0.1, alpha=0.025, steps=7), 0.1, 0.2),
        (lambda m: torchattacks.APGD(m, eps=0.1, steps=10, seed=0), 0.1, 0.2),
        (lambda m: torchattacks.Square(m, eps=0.2, n_queries=300, seed=0), 0.2, 0.1),  # gradient-free: weaker
    ],
    ids=["PGD", "APGD", "Square"],
)
def test_torchattacks_lower_accuracy_and_modes_are_restored(make, eps, drop, model, data):
    x, y = data
    clean = accuracy(model.eval(), x, y)
    model.train()  # torchattacks puts the model in eval() for the attack and back in train() after
    adversarial = make(model)(x, y)
    assert all(m.training for m in model.modules())
    assert (adversarial - x).abs().max() <= eps + 1e-6
    assert accuracy(model.eval(), adversarial, y) < clean - drop
    assert not any(m.training for m in model.modules())


@pytest.mark.skipif(STOCK_EVAL_HAS_GRADIENT, reason=f"SpikingJelly {SJ_VERSION}'s stock neurons have gradients in eval()")
def test_attacks_on_stock_neurons_in_eval_fail_loudly_and_ours_name_the_fix(model, data):
    """The README's row: stock neurons in eval() give no input gradient; torchattacks stops with autograd's bare
    RuntimeError, ours with NoInputGradientError naming ``adapt``."""
    x, y = data[0][:8], data[1][:8]
    plain = SpikingClassifier(model.body, PoissonEncoder(seed=0), timesteps=TIMESTEPS).eval()
    for attack in (torchattacks.PGD(plain, eps=0.1), torchattacks.FGSM(plain, eps=0.1)):
        with pytest.raises(RuntimeError, match="grad|graph") as raised:  # autograd's own words, no cause, no fix
            attack(x, y)
        assert not isinstance(raised.value, NoInputGradientError) and "adapt" not in str(raised.value)
    with pytest.raises(NoInputGradientError, match="adapt"):
        PGD(plain, eps=0.1)(x, y)


def test_our_gradient_modes_on_stock_neurons(model, data):
    x, y = data[0][:16], data[1][:16]
    with pytest.raises(ValueError, match="LeakyLIFNode"):
        PGD(model, grad_mode="hart")(x, y)
    adv = PGD(model, eps=0.5, alpha=0.1, steps=8, seed=0)(x, y)  # bptt works on stock neurons
    assert accuracy(model, adv, y) <= 0.05


def test_adapter_bad_networks(snn):
    with pytest.raises(ValueError, match="single-step"):
        adapt(stock_network(snn, step_mode="s"), timesteps=4)
    with pytest.raises(ValueError, match="no spiking neuron"):
        adapt(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))
    with pytest.raises(TypeError, match="network"):
        adapt("not a network")
    with pytest.raises(ValueError, match="timesteps"):
        adapt(stock_network(snn), timesteps=0)


@pytest.mark.skipif(STOCK_EVAL_HAS_GRADIENT, reason=f"SpikingJelly {SJ_VERSION}'s stock neurons have gradients in eval()")
def test_attacks_on_stock_neurons_in_eval_raise_and_name_the_fix(snn, model, data):
    x, y = data[0][:8], data[1][:8]
    plain = SpikingClassifier(stock_network(snn), PoissonEncoder(seed=0), timesteps=TIMESTEPS).eval()
    for attack in (FGSM(plain, eps=0.1), PGD(plain, eps=0.1, alpha=0.05, steps=2)):
        with pytest.raises(NoInputGradientError, match=r"IFNode.*wrap the network with snn_adv.adapt"):
            attack(x, y)
    assert not torch.equal(FGSM(model, eps=0.1)(x, y), x)  # adapted: the same network is attacked
