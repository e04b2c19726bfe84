"""Self-checks: each fails on a deliberately masked model (its suspicious direction is significant) and passes on
the honest ANN; verdicts come from paired tests."""
import warnings

import pytest

from attack_helpers import Masked, ann, data  # noqa: F401 (fixtures)
from snn_adv.attacks import PGD, GradientScaled
from snn_adv.evaluation import (
    GradientMaskingWarning, check_gradient_free, check_large_eps, check_minimal_norm, check_monotone_in_eps,
    check_more_effort, check_not_weaker, check_whitebox_vs_transfer, evaluate, sanity_checks,
)
from snn_adv.evaluation.checks import _minimal_norm_attack

torchattacks = pytest.importorskip("torchattacks")
EPS = 0.1


@pytest.fixture
def images(trained_pair):
    return trained_pair.x[:64], trained_pair.y[:64]


def pgd(model, images, eps=EPS, steps=5, restarts=1, random_start=True, source=None):
    attack = PGD(source or model, eps=eps, alpha=2.5 * eps / steps, steps=steps, restarts=restarts,
                 random_start=random_start)
    return evaluate(model, images, attack, source=source, progress=False)


def test_accuracy_falls_with_eps(ann, images):
    honest = check_monotone_in_eps({e: pgd(ann, images, e) for e in (0.01, 0.1, 0.3)})
    masked = Masked(ann, "reversed")
    flagged = check_monotone_in_eps({e: pgd(masked, images, e) for e in (0.01, 0.3)})
    assert honest.passed is True and flagged.passed is False, (honest, flagged)
    assert flagged.values["p_value_corrected"] < 0.05 < honest.values["p_value_corrected"]


def test_large_eps_reaches_zero(ann, images):
    honest = check_large_eps(pgd(ann, images, 1.0, steps=20, random_start=False), 1.0)
    flagged = check_large_eps(pgd(Masked(ann, "reversed"), images, 1.0, steps=20, random_start=False), 1.0)
    assert honest.passed is True and flagged.passed is False, (honest, flagged)
    assert flagged.values["comparison"]["p_value"] < 0.05


@pytest.mark.parametrize("what", ["steps", "restarts"])
def test_more_effort_does_not_help(what, ann, trained_pair):
    images = trained_pair.x[:160], trained_pair.y[:160]  # restarts gain ~6 points on the noisy gradient: power

    def pair(model):  # at eps 0.3 the honest ANN is at 0 %; the noisy gradient needs many steps or restarts
        base = pgd(model, images, eps=0.3, steps=5)
        more = pgd(model, images, eps=0.3, steps=20) if what == "steps" else pgd(model, images, eps=0.3, steps=5, restarts=10)
        return check_more_effort(base, more, what)

    honest, flagged = pair(ann), pair(Masked(ann, "noisy"))
    assert honest.passed is True and flagged.passed is False, (honest, flagged)


def test_whitebox_not_weaker_than_transfer(ann, images):
    honest = check_whitebox_vs_transfer(pgd(ann, images), pgd(ann, images, source=Masked(ann, "reversed")), "masked")
    masked = Masked(ann, "reversed")
    flagged = check_whitebox_vs_transfer(pgd(masked, images), pgd(masked, images, source=ann), "ann")
    assert honest.passed is True and flagged.passed is False, (honest, flagged)
    assert flagged.name == "whitebox_not_weaker_than_transfer[ann]"


def test_stronger_attack_not_weaker_than_its_reference(ann, images):
    # PGD (5 steps, random start) against FGSM (one step of 2.5 eps from the clean image, clipped to eps)
    honest = check_not_weaker(pgd(ann, images), pgd(ann, images, steps=1, random_start=False), "not_weaker_than_FGSM[PGD]",
                              "PGD vs FGSM")
    # a masked model: its own PGD walks downhill, so even FGSM through the honest twin leaves less accuracy
    masked = Masked(ann, "reversed")
    fgsm = pgd(masked, images, steps=1, random_start=False, source=ann)
    flagged = check_not_weaker(pgd(masked, images), fgsm, "not_weaker_than_FGSM[PGD]", "PGD vs FGSM")
    assert honest.passed is True and flagged.passed is False, (honest, flagged)
    assert flagged.name == "not_weaker_than_FGSM[PGD]" and flagged.detail.startswith("PGD vs FGSM: ")
    assert flagged.values["reference"] == fgsm.adversarial_accuracy < flagged.values["attack"]
    assert flagged.values["comparison"]["p_value"] < 0.05 and flagged.values["comparison"]["alternative"] == "greater"


def test_gradient_free_not_stronger(ann, images):
    def check(model):
        square = torchattacks.Square(model, norm="Linf", eps=EPS, n_queries=200, n_restarts=1, seed=0)
        return check_gradient_free(pgd(model, images), evaluate(model, images, square, progress=False))

    honest, flagged = check(ann), check(Masked(ann, "reversed"))
    assert honest.passed is True and flagged.passed is False, (honest, flagged)


@pytest.mark.parametrize("name", ["FAB"])
def test_minimal_norm_not_more_robust(name, ann, images):
    def check(model):
        attack = _minimal_norm_attack(name, model, EPS, images[0][:1], seed=0)
        return check_minimal_norm(pgd(model, images), evaluate(model, images, attack, progress=False), name)

    tiny = Masked(ann, "tiny")
    honest, flagged, rescaled = check(ann), check(tiny), check(GradientScaled(tiny, 1e4))
    assert honest.passed is True and flagged.passed is False, (honest, flagged)
    assert rescaled.passed is True, rescaled  # the rescaling wrapper is the fix


@pytest.mark.slow  # the individual checks above cover each verdict; this runs the whole battery twice
def test_battery_passes_on_the_honest_ann_and_warns_on_a_masked_one(ann, images):
    small = dict(eps=EPS, steps=5, eps_factors=(0.5, 1.0), more=2, square_queries=100, minimal_norm=("FAB",))
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientMaskingWarning)
        checks = sanity_checks(ann, images, sources={"reversed": Masked(ann, "reversed")}, **small)
    assert [c.passed for c in checks[:-1]] == [True] * (len(checks) - 1) and checks[-1].passed is None
    with pytest.warns(GradientMaskingWarning, match="large_eps_reaches_zero"):
        checks = sanity_checks(Masked(ann, "reversed"), images, sources={"ann": ann}, **small)
    failed = {c.name for c in checks if c.passed is False}
    assert {"large_eps_reaches_zero", "whitebox_not_weaker_than_transfer[ann]", "gradient_free_not_stronger"} <= failed
