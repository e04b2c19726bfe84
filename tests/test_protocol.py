"""Stochastic models: is_stochastic, fixed_noise (one Poisson draw for every forward), the
AutoAttack protocol check, and the gradient rescaler / budget wrapper for minimal-norm attacks."""
import copy

import pytest
import torch
import torch.nn as nn

from attack_helpers import ann, data, snn  # noqa: F401 (fixtures)
from snn_adv import fixed_noise
from snn_adv.encoding import is_stochastic
from snn_adv.evaluation import check_attack_protocol
from snn_adv.attacks import FGSM, GradientScaled, within_budget
from snn_adv.classifier import SpikingClassifier
from snn_adv.encoding import DirectEncoder


def test_is_stochastic_knows_poisson_encoders(snn, ann):
    assert is_stochastic(snn) and not is_stochastic(ann)
    direct = SpikingClassifier(snn.body, DirectEncoder(), timesteps=4)
    assert not is_stochastic(direct)
    from spikingjelly.activation_based import encoding

    stock = nn.Sequential(encoding.PoissonEncoder(), nn.Flatten())
    assert is_stochastic(stock)
    with pytest.raises(ValueError, match="PoissonEncoder from spikingjelly"):
        with fixed_noise(stock):
            pass


class BernoulliRate(nn.Module):
    """A rate encoder as snnTorch writes it (``spikegen.rate``: ``torch.bernoulli``), in no class snn-adv knows."""

    def forward(self, x):
        return torch.bernoulli(x)


def test_is_stochastic_tries_two_forwards_when_no_known_encoder_says_so(ann):
    """A model random by a foreign encoder is found by trying (on given images, or on a probe of its declared
    shape), and AutoAttack 'standard' is refused on it; deterministic models stay deterministic; the probe leaves
    torch's RNG and the modules' modes as they were."""
    from snn_adv.classifier import AnnClassifier

    foreign = AnnClassifier(nn.Sequential(BernoulliRate(), nn.Flatten(), nn.Linear(28 * 28, 10)), mean=(0.0,), std=(1.0,),
                            in_channels=1, input_size=(28, 28)).train()
    images = torch.rand(3, 1, 28, 28)
    rng = torch.get_rng_state()
    assert is_stochastic(foreign) and is_stochastic(foreign, images)
    assert torch.equal(torch.get_rng_state(), rng) and foreign.training
    autoattack = {"name": "torchattacks", "class": "AutoAttack", "kwargs": {"version": "standard"}}
    with pytest.raises(ValueError, match="version='rand'"):
        check_attack_protocol(autoattack, foreign)
    assert not is_stochastic(ann) and not is_stochastic(ann, torch.rand(3, 1, 28, 28))
    undeclared = nn.Sequential(BernoulliRate(), nn.Flatten())  # no declared shape and no images: not tried
    assert not is_stochastic(undeclared) and is_stochastic(undeclared, torch.rand(2, 1, 4, 4))


def test_fixed_noise_gives_one_draw_for_every_forward(snn, data):
    x = data[0][:8]
    with torch.no_grad():
        free = [snn(x), snn(x)]
        with fixed_noise(snn, seed=3) as model:
            assert model is snn and not is_stochastic(snn)
            fixed = [snn(x), snn(x), snn(x)]
        # the same draw as restarting the stream from the seed before the call
        twin = copy.deepcopy(snn)
        twin.encoder.manual_seed(3)
        replay = twin(x)
        with fixed_noise(snn, seed=4):
            other = snn(x)
    assert not torch.equal(free[0], free[1])
    assert torch.equal(fixed[0], fixed[1]) and torch.equal(fixed[0], fixed[2]) and torch.equal(fixed[0], replay)
    assert not torch.equal(fixed[0], other)
    assert is_stochastic(snn) and snn.encoder.fixed_seed is None and snn.encoder.seed == 0


@pytest.mark.parametrize("version, allowed", [("standard", False), ("plus", False), ("rand", True)])
def test_autoattack_protocol_on_stochastic_models(version, allowed, snn, ann):
    torchattacks = pytest.importorskip("torchattacks")
    spec = {"name": "torchattacks", "class": "AutoAttack", "kwargs": {"version": version}}
    attack = torchattacks.AutoAttack(snn, version=version, n_classes=10)
    for candidate in (spec, attack):
        if allowed:
            check_attack_protocol(candidate, snn)
        else:
            with pytest.raises(ValueError, match="version='rand'"):
                check_attack_protocol(candidate, snn)
        check_attack_protocol(candidate, ann)  # deterministic: every version is fine
        with fixed_noise(snn):
            check_attack_protocol(candidate, snn)  # one fixed draw is a deterministic model
    with pytest.raises(ValueError, match="version='rand'"):  # the default version is 'standard'
        check_attack_protocol({"name": "torchattacks", "class": "AutoAttack"}, snn)
    if not allowed:
        from snn_adv.evaluation import evaluate

        with pytest.raises(ValueError, match="AutoAttack"):
            evaluate(snn, (torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long)), attack, progress=False)


def test_gradient_scaled_changes_neither_logits_nor_signs_only_the_scale(snn, data):
    x, y = data[0][:8], data[1][:8]
    scaled = GradientScaled(snn, 50.0)

    def logits_and_gradient(model):
        snn.encoder.manual_seed(1)
        images = x.clone().requires_grad_(True)
        logits = model(images)
        nn.functional.cross_entropy(logits, y, reduction="sum").backward()
        return logits.detach(), images.grad

    logits, grad = logits_and_gradient(snn)
    logits_scaled, grad_scaled = logits_and_gradient(scaled)
    assert torch.equal(logits, logits_scaled)
    # cross-entropy's gradient w.r.t. the logits is unchanged, so the input gradient is exactly 50x
    torch.testing.assert_close(grad_scaled, 50.0 * grad)
    assert torch.equal(grad_scaled.sign(), grad.sign())
    with pytest.raises(ValueError, match="scale"):
        GradientScaled(snn, 0.0)


def test_within_budget_keeps_only_outputs_inside_the_ball(ann, data):
    x, y = data[0][:8], data[1][:8]

    class Fixed(FGSM):  # perturbs sample i by (i + 1) / 100 in L-inf
        def __call__(self, images, labels):
            step = torch.arange(1, len(images) + 1).view(-1, 1, 1, 1) / 100
            return (images + step).clamp(0, 1)

    raw = Fixed(ann, eps=1.0)(x, y)
    kept = within_budget(Fixed(ann, eps=1.0), 0.045)(x, y)
    linf = (raw - x).flatten(1).abs().amax(1)
    inside = linf <= 0.045
    assert inside.any() and not inside.all()
    assert torch.equal(kept[inside], raw[inside]) and torch.equal(kept[~inside], x[~inside])
    l2 = within_budget(Fixed(ann, eps=1.0), 0.05 * 28, "L2")(x, y)
    inside2 = (raw - x).flatten(1).norm(dim=1) <= 0.05 * 28
    assert torch.equal(l2[inside2], raw[inside2]) and torch.equal(l2[~inside2], x[~inside2])
    with pytest.raises(ValueError, match="norm"):
        within_budget(Fixed(ann), 0.1, "L1")


def test_foolbox_boundary_attack_needs_and_works_under_fixed_noise(snn, data):
    """A decision-based attack assumes a deterministic model: on the Poisson SNN its starting points found under one
    draw are clean under the next, so it cannot start; under fixed_noise it runs and every result it calls
    adversarial is misclassified on that draw."""
    foolbox = pytest.importorskip("foolbox")
    x, y = data[0][:16], data[1][:16]
    with torch.no_grad(), fixed_noise(snn, seed=0):
        correct = snn(x).argmax(1) == y
    x, y = x[correct][:4], y[correct][:4]
    attack = foolbox.attacks.BoundaryAttack(steps=50)
    torch.manual_seed(0)  # foolbox draws its noise from torch's global generator
    with fixed_noise(snn, seed=0):
        _, adversarial, success = attack(foolbox.PyTorchModel(snn, bounds=(0, 1)), x, y, epsilons=None)
        with torch.no_grad():
            fooled = snn(adversarial).argmax(1) != y
    assert success.all() and torch.equal(fooled, success)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    with pytest.raises(ValueError, match="init_attack failed"):
        attack(foolbox.PyTorchModel(snn, bounds=(0, 1)), x, y, epsilons=None)
