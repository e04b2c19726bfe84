"""APGD, APGD-T, SA-PGD and Square: the reference algorithms' pieces in closed form, torchattacks as a reference on a
deterministic ANN, and a linear model where the best L-inf attack is known."""
import math

import pytest
import torch
import torch.nn as nn

from attack_helpers import accuracy, ann, data  # noqa: F401 (fixtures)
from snn_adv.attacks import APGD, SAPGD, Square
from snn_adv.attacks.apgd import checkpoint_iterations, dlr_loss, margin, targeted_dlr_loss
from snn_adv.classifier import AnnClassifier


def reference_checkpoints(steps):
    """The iterations at which torchattacks' APGD checks its step size: its counter loop, written out."""
    k, minimum, decrease = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    counter, points = 0, []
    for i in range(steps):
        counter += 1
        if counter == k:
            points.append(i + 1)
            counter, k = 0, max(k - decrease, minimum)
    return points


@pytest.mark.parametrize("steps", [1, 5, 10, 25, 50, 100, 400])
def test_checkpoints_follow_the_reference_counter(steps):
    assert checkpoint_iterations(steps) == reference_checkpoints(steps)


def test_dlr_losses_in_closed_form():
    logits = torch.tensor([[4.0, 1.0, 3.0, 0.0], [0.0, 5.0, 2.0, 1.0]])
    labels = torch.tensor([0, 0])
    # sample 0 correct: -(4 - 3) / (4 - 1); sample 1 wrong: -(0 - 5) / (5 - 1)
    torch.testing.assert_close(dlr_loss(logits, labels), torch.tensor([-1 / 3, 5 / 4]))
    torch.testing.assert_close(margin(logits, labels), torch.tensor([1.0, -5.0]))
    targets = torch.tensor([3, 2])
    # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2): sample 0 -(4 - 0)/(4 - 0.5), sample 1 -(0 - 2)/(5 - 0.5)
    torch.testing.assert_close(targeted_dlr_loss(logits, labels, targets), torch.tensor([-4 / 3.5, 2 / 4.5]))


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_matches_torchattacks_on_a_deterministic_ann(ann, data, loss):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = data
    ours = APGD(ann, eps=0.1, steps=10, loss=loss, seed=0)(x, y)
    reference = torchattacks.APGD(ann, eps=0.1, steps=10, loss=loss, seed=0)(x, y)
    assert (ours - x).abs().max() <= 0.1 + 1e-6
    # different random starts (our seeded stream, torch's global one): the same robust accuracy within 2 images
    assert abs(accuracy(ann, ours, y) - accuracy(ann, reference, y)) <= 2 / len(y)
    assert accuracy(ann, ours, y) < accuracy(ann, x, y) - 0.2


def test_apgd_t_matches_torchattacks(ann, data):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = data
    ours = APGD(ann, eps=0.1, steps=10, loss="dlr", target_classes=3, seed=0)(x, y)
    reference = torchattacks.APGDT(ann, eps=0.1, steps=10, n_classes=4, seed=0)(x, y)  # n_classes - 1 targets
    assert abs(accuracy(ann, ours, y) - accuracy(ann, reference, y)) <= 2 / len(y)


def test_apgd_is_seeded_and_respects_the_ball(ann, data):
    x, y = data
    first = APGD(ann, eps=0.05, steps=5, seed=3)(x, y)
    again = APGD(ann, eps=0.05, steps=5, seed=3)(x, y)
    other = APGD(ann, eps=0.05, steps=5, seed=4)(x, y)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert (first - x).abs().max() <= 0.05 + 1e-6 and first.min() >= 0 and first.max() <= 1


def test_apgd_more_effort_is_never_weaker(ann, data):
    x, y = data
    weak = accuracy(ann, APGD(ann, eps=0.05, steps=5, seed=0)(x, y), y)
    strong = accuracy(ann, APGD(ann, eps=0.05, steps=40, restarts=2, seed=0)(x, y), y)
    assert strong <= weak


class _Recording(nn.Module):
    """The model, recording the input and logits of every forward that an attack differentiates (its iterates)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.iterates = model, []

    def forward(self, x):
        logits = self.model(x)
        if x.requires_grad:
            self.iterates.append((x.detach().clone(), logits.detach().clone()))
        return logits


@pytest.mark.parametrize("keep", ["first", "last"])
def test_apgd_returns_the_first_or_the_last_fooling_iterate(ann, data, keep):
    x, y = data
    recording = _Recording(ann)
    adversarial = APGD(recording, eps=0.1, steps=10, keep=keep, seed=0)(x, y)
    fooling = torch.stack([margin(logits, y) < 0 for _, logits in recording.iterates])  # [iterates, samples]
    assert len(recording.iterates) == 11 and fooling.any(0).sum() >= len(y) // 2
    first_is_not_last = []
    for n in fooling.any(0).nonzero()[:, 0].tolist():
        hits = fooling[:, n].nonzero()[:, 0]
        k = int(hits[0] if keep == "first" else hits[-1])
        torch.testing.assert_close(adversarial[n], recording.iterates[k][0][n])
        first_is_not_last.append(bool(hits[0] != hits[-1]))
    assert any(first_is_not_last)  # the two rules pick different points on some samples


def test_sapgd_update_is_the_clipped_normalised_momentum():
    model = AnnClassifier(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), (0.0,), (1.0,))
    attack = SAPGD(model, eps=0.5, steps=2)
    x = torch.full((1, 1, 1, 4), 0.5)
    state = attack.begin(x)
    grad = torch.tensor([[[[1.0, -3.0, 0.5, 0.0]]]])
    moved = attack.update(x, x, grad, 0, state)
    m = grad / grad.abs().mean()
    v = grad ** 2 / (grad ** 2).mean()
    step = 0.5  # initial step = eps
    expected = x + (step * m / (v.sqrt() + 1e-12)).clamp(-step, step)
    torch.testing.assert_close(moved, expected.clamp(0, 1))
    grad2 = torch.tensor([[[[-1.0, 1.0, 1.0, 2.0]]]])
    moved2 = attack.update(moved, x, grad2, 1, state)
    m2 = 0.5 * m + grad2 / grad2.abs().mean()
    v2 = 0.8 * v + grad2 ** 2 / (grad2 ** 2).mean()
    expected2 = (moved + (step * m2 / (v2.sqrt() + 1e-12)).clamp(-step, step)).clamp(0, 1)
    torch.testing.assert_close(moved2, torch.min(torch.max(expected2, x - 0.5), x + 0.5))


def test_sapgd_attacks_an_ann_with_its_exact_gradient(ann, data):
    x, y = data
    adversarial = SAPGD(ann, eps=0.1, steps=20, seed=0)(x, y)
    assert SAPGD(ann).grad_mode.name == "bptt"
    assert accuracy(ann, adversarial, y) < accuracy(ann, x, y) - 0.2


def linear_two_class(weights: torch.Tensor) -> AnnClassifier:
    """Logits ``(0, w.x)``: class 1 wins when ``w.x > 0``."""
    layer = nn.Linear(weights.numel(), 2, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[1] = weights
    return AnnClassifier(nn.Sequential(nn.Flatten(), layer), (0.0,), (1.0,)).eval()


def test_square_reaches_the_optimal_corner_of_a_linear_model():
    # w has one sign per channel, so Square's per-channel window signs can reach the optimal corner x - eps*sign(w)
    # of the class-1 score w.x; the best attack lowers it by exactly eps*|w|_1.
    side, eps = 6, 0.05
    w = torch.cat([torch.full((side * side,), 1.0), torch.full((side * side,), -0.5)])
    model = linear_two_class(w)
    generator = torch.Generator().manual_seed(0)
    x = 0.25 + 0.5 * torch.rand(40, 2, side, side, generator=generator)
    score = x.flatten(1) @ w
    best_drop = eps * w.abs().sum()
    # shift every image so that its score is a known multiple of the best possible drop
    fractions = torch.linspace(0.2, 1.6, 40)
    x = x - ((score - fractions * best_drop) / (w @ w))[:, None, None, None] * w.view(1, 2, side, side)
    assert x.min() >= 0 and x.max() <= 1
    labels = torch.ones(40, dtype=torch.long)
    adversarial = Square(model, eps=eps, queries=400, seed=0)(x, labels)
    fooled = model(adversarial).argmax(1) != labels
    assert (adversarial - x).abs().max() <= eps + 1e-6
    assert fooled[fractions < 0.7].all()  # reachable with margin to spare: found
    assert not fooled[fractions > 1.0].any()  # beyond the best possible drop: impossible


def test_square_window_schedule_halves_p_like_the_reference():
    model = linear_two_class(torch.ones(4))
    attack = Square(model, queries=10000, p_init=0.8)
    assert [attack.window_fraction(i) for i in (1, 10, 11, 51, 201, 501, 1001, 2001, 4001, 6001, 8001)] == \
        pytest.approx([0.8, 0.8, 0.4, 0.2, 0.1, 0.05, 0.025, 0.0125, 0.8 / 128, 0.8 / 256, 0.8 / 512])
    short = Square(model, queries=1000)
    assert short.window_fraction(100) == pytest.approx(0.8 / 16)  # 100 of 1000 queries is 1000 of 10,000
    assert math.isclose(short.window_fraction(1), 0.8)
