"""FGSM and PGD: closed forms on linear models, mode restoration, and strength on a trained SNN."""
import warnings

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import surrogate

from attack_helpers import accuracy, data, snn  # noqa: F401 (fixtures)
from snn_adv.attacks import FGSM, PGD, NoInputGradientError, WorstCase
from snn_adv.classifier import AnnClassifier
from snn_adv.neurons import LeakyLIFNode

pytestmark = pytest.mark.spikingjelly_versions  # CI runs this file under each SpikingJelly version


def linear_model(classes=3, features=12, seed=0):
    torch.manual_seed(seed)
    return AnnClassifier(nn.Sequential(nn.Flatten(), nn.Linear(features, classes)), (0.0,), (1.0,))


def images(n=8, features=12, seed=1):
    return torch.rand(n, 1, 1, features, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_matches_closed_form_on_linear_softmax(targeted):
    model = linear_model()
    x, y = images(), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    W, b = model.body[1].weight.detach(), model.body[1].bias.detach()
    p = torch.softmax(x.flatten(1) @ W.T + b, 1)
    grad = (p - nn.functional.one_hot(y, 3).float()) @ W  # d CE / dx for logits W x + b
    direction = -grad.sign() if targeted else grad.sign()
    expected = (x.flatten(1) + 0.1 * direction).clamp(0, 1).view_as(x)
    adv = FGSM(model, eps=0.1, targeted=targeted)(x, y)
    torch.testing.assert_close(adv, expected)


def test_pgd_matches_closed_form_on_binary_linear():
    # Two classes: the gradient sign is sign(w_other - w_label) at every point, so PGD walks a fixed direction.
    model = linear_model(classes=2)
    x, y = images(), torch.tensor([0, 1] * 4)
    W = model.body[1].weight.detach()
    d = (W[1 - y] - W[y]).sign()
    for steps, alpha in [(3, 0.01), (7, 2 / 255), (10, 0.05)]:
        adv = PGD(model, eps=8 / 255, alpha=alpha, steps=steps, random_start=False)(x, y)
        expected = (x.flatten(1) + d * min(steps * alpha, 8 / 255)).clamp(0, 1).view_as(x)
        torch.testing.assert_close(adv, expected)
    # from any random start, enough steps reach the corner x + eps*d of the ball
    adv = PGD(model, eps=0.1, alpha=0.05, steps=5, random_start=True, seed=3)(x, y)
    torch.testing.assert_close(adv, (x.flatten(1) + 0.1 * d).clamp(0, 1).view_as(x))


def test_pgd_random_start_is_seeded():
    model = linear_model()
    x, y = images(), torch.zeros(8, dtype=torch.long)
    a = PGD(model, eps=0.1, alpha=1e-9, steps=1, seed=5)(x, y)
    b = PGD(model, eps=0.1, alpha=1e-9, steps=1, seed=5)(x, y)
    c = PGD(model, eps=0.1, alpha=1e-9, steps=1, seed=6)(x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_restarts_keep_the_highest_loss():
    # restart k continues the attack's stream: the same as calling a one-restart attack k times in a row
    model = linear_model()
    x, y = images(), torch.zeros(8, dtype=torch.long)
    single = PGD(model, eps=0.2, alpha=0.01, steps=1, seed=0)
    runs = [single(x, y), single(x, y)]
    both = PGD(model, eps=0.2, alpha=0.01, steps=1, restarts=2, seed=0)(x, y)
    with torch.no_grad():
        losses = torch.stack([nn.functional.cross_entropy(model(r), y, reduction="none") for r in runs])
    expected = torch.where((losses[1] > losses[0]).view(-1, 1, 1, 1), runs[1], runs[0])
    assert not torch.equal(runs[0], runs[1])
    torch.testing.assert_close(both, expected)


def test_model_modes_are_restored_and_attack_runs_in_eval():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(self.training)
            return x

    model = AnnClassifier(nn.Sequential(Probe(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(12, 3)), (0.0,), (1.0,))
    model.train()
    model.body[2].eval()  # a mixed state must come back exactly
    before = [m.training for m in model.modules()]
    PGD(model, eps=0.1, steps=2)(images(), torch.zeros(8, dtype=torch.long))
    assert seen and not any(seen)
    assert [m.training for m in model.modules()] == before


def weight_flag_probe(model: nn.Module, seen: list) -> None:
    """Record, at every forward of ``model``'s linear layer, whether its weight requires a gradient."""
    layer = model.body[-1]
    layer.register_forward_pre_hook(lambda module, args: seen.append(module.weight.requires_grad))


def test_attacks_and_the_engine_run_with_frozen_parameters_and_restore_their_flags():
    """An attack wants dL/dx only: no parameter requires a gradient while it runs (so custom autograd layers compute
    no weight gradient), and each parameter gets its own flag back, a mixed state included."""
    from snn_adv.evaluation import evaluate

    model = linear_model()
    model.body[1].bias.requires_grad_(False)
    before = [p.requires_grad for p in model.parameters()]
    x, y = images(), torch.zeros(8, dtype=torch.long)
    seen: list = []
    weight_flag_probe(model, seen)
    PGD(model, eps=0.1, steps=2)(x, y)
    assert seen and not any(seen)
    assert [p.requires_grad for p in model.parameters()] == before
    seen.clear()

    class Unfrozen:  # a foreign attack that does not freeze anything itself
        def __init__(self, model):
            self.model = model

        def __call__(self, images, labels):
            x = images.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), labels), x)
            return (images + 0.1 * grad.sign()).clamp(0, 1)

    evaluate(model, (x, y), attack=Unfrozen(model), progress=False)
    assert seen and not any(seen)
    assert [p.requires_grad for p in model.parameters()] == before


@pytest.mark.parametrize("mode", ["bptt", "rate", "hart", "assg", "pdsg"])
def test_pgd_large_eps_reaches_near_zero_in_every_mode(mode, snn, data):
    x, y = data
    assert accuracy(snn, x, y) > 0.6
    adv = PGD(snn, eps=0.5, alpha=0.1, steps=8, grad_mode=mode, seed=0)(x, y)
    assert accuracy(snn, adv, y) <= 0.05


def test_attacker_surrogate_attacks_and_is_restored(snn, data):
    node = next(m for m in snn.modules() if isinstance(m, LeakyLIFNode))
    own = node.surrogate_function
    x, y = data
    adv = PGD(snn, eps=0.5, alpha=0.1, steps=8, surrogate=surrogate.ATan(alpha=4.0), seed=0)(x, y)
    assert accuracy(snn, adv, y) <= 0.05
    assert node.surrogate_function is own and node.backward_rule is None


def test_fgsm_and_pgd_lower_snn_accuracy(snn, data):
    x, y = data
    clean = accuracy(snn, x, y)
    fgsm = accuracy(snn, FGSM(snn, eps=0.1)(x, y), y)
    pgd = accuracy(snn, PGD(snn, eps=0.1, alpha=0.025, steps=7, seed=0)(x, y), y)
    assert fgsm < clean - 0.1 and pgd < clean - 0.2


def test_worst_case_picks_the_highest_loss_member_per_sample():
    model = linear_model(classes=3)
    x, y = images(n=16), torch.tensor([0, 1, 2, 0] * 4)
    # random points of the ball (one tiny step from a random start): the best member varies by sample
    members = [PGD(model, eps=0.1, alpha=1e-3, steps=1, seed=s) for s in (1, 2, 3)]
    worst = WorstCase(members)(x, y)
    for member, seed in zip(members, (1, 2, 3)):
        member.manual_seed(seed)  # replay the members' random starts
    outputs = torch.stack([member(x, y) for member in members])  # [members, N, ...]
    with torch.no_grad():
        losses = torch.stack([nn.functional.cross_entropy(model(o), y, reduction="none") for o in outputs])
    pick = losses.argmax(0)
    torch.testing.assert_close(worst, outputs[pick, torch.arange(16)])
    assert len(set(pick.tolist())) > 1  # the choice is per sample, not one member for the whole batch


# ---------------------------------------------------------------- bad arguments, one each
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps=-0.1), "eps"),
        (dict(eps=1.5), "eps"),
        (dict(steps=0), "steps"),
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=-1.0), "alpha"),
        (dict(eot=0), "eot"),
        (dict(restarts=0), "restarts"),
        (dict(grad_mode="nope"), "grad_mode"),
        (dict(grad_mode="rate", surrogate=surrogate.ATan()), "surrogate"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_attack_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PGD(linear_model(), **kwargs)


def test_bad_inputs_raise():
    attack = FGSM(linear_model())
    x, y = images(), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match="images"):
        attack(x * 2, y)
    with pytest.raises(ValueError, match="labels"):
        attack(x, torch.full((8,), 3))
    with pytest.raises(ValueError, match="labels"):
        attack(x, torch.zeros(7, dtype=torch.long))
    with pytest.raises(TypeError, match="model"):
        FGSM(lambda x: x)
    with pytest.raises(ValueError, match="grad_mode"):
        PGD(linear_model(), grad_mode="hart")(x, y)  # an ANN has no spiking neurons to change


class _Quantise(nn.Module):
    """A non-differentiable quantiser (round to 4 levels): autograd gives an exactly zero input gradient."""

    def forward(self, x):
        return torch.round(x * 3) / 3


@pytest.mark.parametrize("attack", [FGSM, PGD])
def test_no_input_gradient_raises_instead_of_returning_clean_images(attack):
    x, y = images(), torch.zeros(8, dtype=torch.long)
    quantised = AnnClassifier(nn.Sequential(_Quantise(), nn.Flatten(), nn.Linear(12, 3)), (0.0,), (1.0,))
    with pytest.raises(NoInputGradientError, match="exactly zero.*non-differentiable"):
        attack(quantised, eps=0.1)(x, y)
    detached = AnnClassifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), (0.0,), (1.0,))
    detached.forward = lambda images: AnnClassifier.forward(detached, images.detach())
    with pytest.raises(NoInputGradientError, match="not connected"):
        attack(detached, eps=0.1)(x, y)


def _silent_deep_stock_net():
    """An untrained deep net of SpikingJelly's stock LIFNode (8 layers) under ``adapt``: its neurons barely fire,
    so its input gradient is ~1e-10, not zero (the exact-zero guard cannot see it)."""
    from spikingjelly.activation_based import functional, layer, neuron

    from snn_adv import PoissonEncoder, adapt

    torch.manual_seed(0)
    modules, width = [layer.Flatten()], 28 * 28
    for _ in range(8):
        modules += [layer.Linear(width, 128), neuron.LIFNode()]
        width = 128
    net = nn.Sequential(*modules, layer.Linear(width, 10))
    functional.set_step_mode(net, "m")
    return adapt(net, PoissonEncoder(seed=0), timesteps=8).eval()


def test_vanishing_gradient_warns_and_marks_the_result(snn, data):
    """A negligible input gradient (median eps*|grad loss|_1/|loss| below VANISHING_RATIO) makes the attack warn
    and the engine's result record it; an honest SNN's first gradient is far above the threshold."""
    from snn_adv import evaluate
    from snn_adv.attacks import VANISHING_RATIO, GradientMaskingWarning

    x, y = data
    silent = _silent_deep_stock_net()
    attack = PGD(silent, eps=8 / 255, alpha=2 / 255, steps=2, seed=0)
    with pytest.warns(GradientMaskingWarning, match="vanishing input gradient"):
        result = evaluate(silent, (x, y), attack, progress=False)
    assert attack.first_gradient_ratio < 1e-6 * VANISHING_RATIO
    marked = result.settings["vanishing_gradient"]
    assert marked["threshold"] == VANISHING_RATIO and marked["members"]["pgd"] == pytest.approx(attack.first_gradient_ratio)

    honest = PGD(snn, eps=8 / 255, alpha=2 / 255, steps=2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientMaskingWarning)
        result = evaluate(snn, (x, y), honest, progress=False)
    assert honest.first_gradient_ratio > 10 * VANISHING_RATIO and "vanishing_gradient" not in result.settings
