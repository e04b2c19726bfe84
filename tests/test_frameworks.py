"""snnTorch and Norse networks through ``adapt``: the same logits as the framework's own time loop, the paper's
straight-through input gradient, state reset every forward, ``fixed_noise``, every attack and the protocol.

The snnTorch reference is an independent one: the converted SNN of the test fixtures rebuilt with snnTorch's IF
neurons (``Leaky(beta=1)``, reset by subtraction), which must give our SNN's logits on the same spikes."""
import copy

import pytest
import torch
import torch.nn as nn

from attack_helpers import TIMESTEPS, accuracy, ann, data, snn  # noqa: F401 (fixtures)
from snn_adv import evaluate, fixed_noise
from snn_adv.attacks import APGD, PGD, Square, adapt
from snn_adv.encoding import DirectEncoder, PoissonEncoder, is_stochastic
from snn_adv.frameworks import NorseBody, SnnTorchBody, foreign_neurons_note, framework_of
from snn_adv.module_state import reset_states
from snn_adv.neurons import LeakyLIFNode
from snn_adv.protocol import LARGE_EPS, VERSIONS, Stage, robust_accuracy

snntorch = pytest.importorskip("snntorch")
snntorch_utils = pytest.importorskip("snntorch.utils")
norse = pytest.importorskip("norse.torch")

pytestmark = pytest.mark.spikingjelly_versions  # CI runs this file under each SpikingJelly version


def snntorch_twin(ann, snn) -> nn.Sequential:
    """The ANN that ``snn`` was converted from, each ReLU replaced by snnTorch's IF neuron (``Leaky(beta=1)``,
    reset by subtraction) at the threshold our conversion gave it: what a snnTorch user converting the same ANN
    would have."""
    thresholds = iter(float(n.v_threshold) for n in snn.neurons())
    layers = [snntorch.Leaky(beta=1.0, threshold=next(thresholds), init_hidden=True, reset_mechanism="subtract")
              if isinstance(module, nn.ReLU) else module for module in copy.deepcopy(ann.body)]
    assert next(thresholds, None) is None and all(n.leak == 1.0 and n.v_reset is None for n in snn.neurons())
    return nn.Sequential(*layers)


def snntorch_loop(twin: nn.Sequential, spikes: torch.Tensor) -> torch.Tensor:
    """snnTorch's own way: ``utils.reset``, one call per timestep, mean of the output layer over time."""
    snntorch_utils.reset(twin)
    return torch.stack([twin(step) for step in spikes]).mean(0)


def norse_network(stepwise: bool) -> nn.Module:
    """A small Norse convolutional SNN (LIF, leaky-integrator readout), cells or sequence modules, seeded."""
    torch.manual_seed(0)
    conv, linear = nn.Conv2d(1, 6, 5, stride=3), nn.Linear(6 * 8 * 8, 10)
    nn.init.uniform_(conv.weight, 0.0, 4.0)  # strong enough to spike within a few steps (Norse's dt = 1 ms)
    if stepwise:
        return norse.SequentialState(conv, norse.LIFCell(), nn.Flatten(), linear, norse.LICell())
    return norse.SequentialState(norse.Lift(conv), norse.LIF(), norse.Lift(nn.Flatten()), norse.Lift(linear),
                                 norse.LI())


@pytest.fixture
def twin(ann, snn):
    return snntorch_twin(ann, snn)


def test_snntorch_twin_gives_our_snns_logits_and_the_straight_through_gradient(snn, twin, data):
    x, y = data[0][:16], data[1][:16]
    model = adapt(twin, PoissonEncoder(seed=4), timesteps=TIMESTEPS, mean=(0.5,), std=(0.5,)).eval()
    assert framework_of(twin) == "snntorch" and isinstance(model.body, SnnTorchBody)
    snn.encoder.manual_seed(4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), snn(x), atol=1e-4, rtol=1e-4)
    # the input gradient is the sum over t of the gradient at the spikes (the encoder as identity), through
    # snnTorch's own surrogate: the hand-written loop on the same spikes, made differentiable by hand
    images = x.clone().requires_grad_(True)
    model.encoder.manual_seed(5)
    nn.functional.cross_entropy(model(images), y).backward()
    spikes = PoissonEncoder(seed=5)(2 * x - 1, TIMESTEPS).requires_grad_(True)
    nn.functional.cross_entropy(snntorch_loop(twin, spikes), y).backward()
    assert images.grad.abs().sum() > 0
    torch.testing.assert_close(images.grad, 2 * spikes.grad.sum(0))  # d(2x - 1)/dx = 2


def test_snntorch_state_is_reset_every_forward(twin, data):
    x = data[0][:8]
    model = adapt(twin, DirectEncoder(), timesteps=TIMESTEPS, mean=(0.5,), std=(0.5,)).eval()
    with torch.no_grad():
        first, second = model(x), model(x)
        torch.testing.assert_close(first, second, atol=0, rtol=0)
        # without the reset the second call starts from the first's membranes: other logits
        model.body.reset = lambda: None
        assert not torch.equal(model(x), first)


def test_snntorch_readout_choice_and_refusals(twin, data):
    x = data[0][:4]
    leaky = snntorch.Leaky(beta=0.9, init_hidden=True, output=True)
    network = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), leaky)
    spikes = adapt(network, DirectEncoder(), timesteps=4).eval()
    membrane = adapt(network, DirectEncoder(), timesteps=4, output="membrane").eval()
    with torch.no_grad():
        rates, potentials = spikes(x), membrane(x)
    snntorch_utils.reset(network)
    with torch.no_grad():
        steps = [network(x) for _ in range(4)]
    torch.testing.assert_close(rates, torch.stack([s for s, _ in steps]).mean(0))
    torch.testing.assert_close(potentials, torch.stack([m for _, m in steps]).mean(0))
    with pytest.raises(ValueError, match="init_hidden=False"):
        adapt(nn.Sequential(nn.Flatten(), nn.Linear(784, 10), snntorch.Leaky(beta=0.9)))
    with pytest.raises(ValueError, match="mixes neurons of spikingjelly and snntorch"):
        adapt(nn.Sequential(twin, LeakyLIFNode()))
    with pytest.raises(ValueError, match="no spiking neuron"):
        adapt(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))


@pytest.mark.parametrize("stepwise", [True, False], ids=["cells", "sequence"])
def test_norse_network_gives_its_own_time_loop(stepwise, data):
    x = data[0][:8]
    network = norse_network(stepwise)
    model = adapt(network, PoissonEncoder(seed=2), timesteps=12).eval()
    assert framework_of(network) == "norse" and isinstance(model.body, NorseBody)
    spikes = PoissonEncoder(seed=2)(x, 12)
    state, outputs = None, []
    with torch.no_grad():
        if stepwise:
            for step in spikes:
                out, state = network(step, state)
                outputs.append(out)
            reference = torch.stack(outputs).mean(0)
        else:
            reference = network(spikes)[0].mean(0)
        torch.testing.assert_close(model(x), reference)
        model.time_chunk = 5  # state carried between chunks of one forward
        model.encoder.manual_seed(2)
        torch.testing.assert_close(model(x), reference)
    assert reference.abs().sum() > 0 and model.body.stepwise == stepwise


def test_norse_cells_and_sequence_modules_agree(data):
    x = data[0][:8]
    cells, sequence = norse_network(True), norse_network(False)  # the same seeded weights
    with torch.no_grad():
        a = adapt(cells, PoissonEncoder(seed=1), timesteps=10).eval()(x)
        b = adapt(sequence, PoissonEncoder(seed=1), timesteps=10).eval()(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("framework", ["snntorch", "norse"])
def test_foreign_models_are_stochastic_reproducible_under_fixed_noise_and_attackable(framework, twin, data):
    x, y = data[0][:8], data[1][:8]
    if framework == "snntorch":
        model = adapt(twin, PoissonEncoder(), timesteps=8, mean=(0.5,), std=(0.5,)).eval()
    else:
        model = adapt(norse_network(True), PoissonEncoder(), timesteps=12).eval()
    assert is_stochastic(model)
    with torch.no_grad():
        with fixed_noise(model, seed=3):
            first, second = model(x), model(x)
        torch.testing.assert_close(first, second, atol=0, rtol=0)
        assert any(not torch.equal(model(x), first) for _ in range(3))  # a fresh draw each call outside
    images = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(images), y).backward()
    assert images.grad.abs().sum() > 0  # snnTorch's spikegen.rate / Norse's PoissonEncoder would give exactly 0
    for attack in (PGD(model, eps=0.1, alpha=0.025, steps=3, eot=2, seed=0), APGD(model, eps=0.1, steps=3, seed=0),
                   Square(model, eps=0.1, queries=20, seed=0)):
        adversarial = attack(x, y)
        assert (adversarial - x).abs().max() <= 0.1 + 1e-6
    with pytest.raises(ValueError, match="no SpikingJelly surrogate"):
        PGD(model, grad_mode="rate")(x, y)


def test_the_protocol_takes_an_snntorch_network_and_says_what_it_cannot_reach(monkeypatch, twin, snn, data):
    monkeypatch.setitem(VERSIONS, "test", (
        Stage("apgd-ce", "apgd", {"steps": 5, "loss": "ce", "eot": 1}),
        Stage("apgd-atan", "apgd", {"steps": 3, "loss": "ce", "eot": 1},
              {"name": "bptt", "surrogate": {"name": "ATan", "alpha": 2.0}}),
        Stage("square", "square", {"queries": 50, "p_init": 0.8, "eot": 1}),
    ))
    monkeypatch.setitem(LARGE_EPS, "steps", 8)
    x, y = data[0][:16], data[1][:16]
    model = adapt(twin, PoissonEncoder(seed=0), timesteps=8, mean=(0.5,), std=(0.5,)).eval()
    report = robust_accuracy(model, (x, y), eps=0.1, version="test", scoring_seeds=[0, 1], fresh_draws=2,
                             batch_size=16, progress=False)
    status = {r.name: r for r in report.stages}
    assert status["apgd-ce"].status == "ran" and report.random
    assert status["apgd-atan"].status == "not applicable"
    assert "snntorch.Leaky" in status["apgd-atan"].reason and status["apgd-atan"].reason in foreign_neurons_note(twin)
    single = evaluate(model, (x, y), PGD(model, eps=0.1, alpha=0.025, steps=7), scoring_seeds=[0, 1],
                      batch_size=16, progress=False)
    assert report.robust_accuracy <= single.adversarial_accuracy + 2 / len(y)
    assert report.robust_accuracy < accuracy(model, x, y)


def test_reset_states_resets_a_neuron_swapped_in_after_a_forward(snn, data):
    """SpikingJelly 2.x's ``functional.reset_net`` caches the modules it resets per network: a neuron swapped in
    later would keep its state. Ours walks the modules every time."""
    x = data[0][:4]
    with torch.no_grad():
        snn.encoder.manual_seed(0)
        reference = snn(x)
        fresh = LeakyLIFNode(leak=1.0, v_threshold=float(snn.body[1].v_threshold), step_mode="m",
                             surrogate_function=copy.deepcopy(snn.body[1].surrogate_function))
        fresh.v = torch.full((1,), 5.0)  # stale state: fires at once if it is not reset
        replaced, snn.body[1] = snn.body[1], fresh  # the old neuron still referenced (2.x's cache keeps it)
        snn.encoder.manual_seed(0)
        reset_states(snn)
        assert float(fresh.v) == 0.0
        snn.encoder.manual_seed(0)
        torch.testing.assert_close(snn(x), reference)
    assert replaced is not fresh
