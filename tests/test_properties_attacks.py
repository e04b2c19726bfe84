"""Hypothesis properties of the attacks: outputs inside the eps-ball and [0, 1] for any input and settings, on an
ANN and on a spiking network, in every gradient mode."""
import torch
import torch.nn as nn
from hypothesis import assume, given, settings, strategies as st
from spikingjelly.activation_based import functional, layer

from snn_adv.attacks import FGSM, PGD, GRADIENT_MODES, NoInputGradientError
from snn_adv.classifier import AnnClassifier, SpikingClassifier
from snn_adv.encoding import PoissonEncoder
from snn_adv.neurons import LeakyLIFNode

torch.manual_seed(0)
ANN = AnnClassifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)), (0.5,), (0.5,))
_body = nn.Sequential(layer.Flatten(), layer.Linear(16, 8), LeakyLIFNode(leak=0.9, v_threshold=0.5), layer.Linear(8, 3))
functional.set_step_mode(_body, "m")
SNN = SpikingClassifier(_body, PoissonEncoder(seed=0), timesteps=3)

eps_values = st.floats(0.0, 1.0, allow_nan=False)
image_batches = st.builds(
    lambda n, seed, kind: (torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed)).round() if kind
                           else torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))),
    st.integers(1, 5), st.integers(0, 2**31 - 1), st.booleans(),  # kind: saturated {0,1} pixels or interior
)


def attacked(attack, x, labels):
    """The attack's output; inputs where the model is exactly flat (every ReLU dead, every neuron silent) are
    refused by the gradient guard, which is the documented behaviour, so hypothesis draws again."""
    try:
        return attack(x, labels)
    except NoInputGradientError:
        assume(False)


def assert_threat_model(adv, x, eps):
    assert adv.shape == x.shape and torch.isfinite(adv).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= eps + 1e-6


@settings(max_examples=30, deadline=None)
@given(x=image_batches, eps=eps_values, alpha=st.floats(1e-4, 1.0), steps=st.integers(1, 4),
       random_start=st.booleans(), targeted=st.booleans(), seed=st.integers(0, 1000))
def test_pgd_on_ann_stays_in_the_ball(x, eps, alpha, steps, random_start, targeted, seed):
    labels = torch.arange(x.shape[0]) % 3
    adv = attacked(PGD(ANN, eps=eps, alpha=alpha, steps=steps, random_start=random_start, targeted=targeted, seed=seed),
                   x, labels)
    assert_threat_model(adv, x, eps)


@settings(max_examples=30, deadline=None)
@given(x=image_batches, eps=eps_values, mode=st.sampled_from(sorted(GRADIENT_MODES)), eot=st.integers(1, 2),
       steps=st.integers(1, 3))
def test_pgd_and_fgsm_on_snn_stay_in_the_ball_in_every_mode(x, eps, mode, eot, steps):
    labels = torch.arange(x.shape[0]) % 3
    adv = attacked(PGD(SNN, eps=eps, alpha=eps / 2 + 1e-3, steps=steps, grad_mode=mode, eot=eot, seed=0), x, labels)
    assert_threat_model(adv, x, eps)
    assert_threat_model(attacked(FGSM(SNN, eps=eps, grad_mode=mode), x, labels), x, eps)
    assert all(n.backward_rule is None for n in SNN.neurons())
