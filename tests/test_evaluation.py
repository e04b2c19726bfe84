"""evaluate(): the one engine against a hand-written loop (whitebox, blackbox, several targets and seeds), shards,
worst cases scored on common random numbers, the threat-model guard, results that store and print."""
import copy
import functools
import json

import numpy as np
import pytest
import torch

from attack_helpers import ann, data, snn  # noqa: F401 (fixtures)
from snn_adv.attacks import FGSM, PGD, WorstCase, gradient_mode_ensemble
from snn_adv.encoding import fixed_noise
from snn_adv.neurons import spiking_neurons
from snn_adv.evaluation import CleanMemo, EvaluationResult, Evaluator, evaluate, model_fingerprint
from snn_adv.evaluation import compare
from snn_adv.seeds import derive_seed


def reference_loop(targets, x, y, make_members, crafting, *, seed, scoring_seeds, batch_size):
    """The documented protocol written out by hand: per batch (first global index b) and member m, craft with the
    attack and torch seeded derive_seed(seed, 'craft', b, m) and the crafting encoder on
    derive_seed(seed, 'craft-noise', b); score every target on every seed s with its encoder (and torch) on
    derive_seed(seed, 'score', s, b) before each forward. Returns {name: (clean [N, S], adversarial [N, S])}."""
    out = {name: ([], []) for name in targets}
    members = make_members(crafting)
    for b in range(0, len(x), batch_size):
        xb, yb = x[b:b + batch_size], y[b:b + batch_size]
        adversarials = []
        for m, member in enumerate(members):
            torch.manual_seed(derive_seed(seed, "craft", b, m))
            member.manual_seed(derive_seed(seed, "craft", b, m))
            if hasattr(crafting, "encoder"):
                crafting.encoder.manual_seed(derive_seed(seed, "craft-noise", b))
            adversarials.append(member(xb, yb))
        for name, target in targets.items():
            clean, adversarial = [], []
            for s in scoring_seeds:
                def correct(z):
                    torch.manual_seed(derive_seed(seed, "score", s, b))
                    if hasattr(target, "encoder"):
                        target.encoder.manual_seed(derive_seed(seed, "score", s, b))
                    with torch.no_grad():
                        return (target(z).argmax(1) == yb).numpy()

                clean.append(correct(xb))
                adversarial.append(np.all([correct(a) for a in adversarials], 0))
            out[name][0].append(np.stack(clean, 1))
            out[name][1].append(np.stack(adversarial, 1))
    return {name: (np.concatenate(c), np.concatenate(a)) for name, (c, a) in out.items()}


def test_whitebox_matches_the_hand_written_loop_over_seeds(snn, trained_pair):
    x, y = trained_pair.x[:40], trained_pair.y[:40]
    make = lambda model: [PGD(model, eps=0.05, alpha=0.02, steps=2)]  # noqa: E731
    result = evaluate(snn, (x, y), functools.partial(PGD, eps=0.05, alpha=0.02, steps=2), seed=3,
                      scoring_seeds=(0, 5), batch_size=16, progress=False)
    twin = copy.deepcopy(snn)
    expected = reference_loop({"t": twin}, x, y, make, twin, seed=3, scoring_seeds=(0, 5), batch_size=16)["t"]
    np.testing.assert_array_equal(result.clean_correct, expected[0])
    np.testing.assert_array_equal(result.adversarial_correct, expected[1])
    np.testing.assert_array_equal(result.index, np.arange(40))
    np.testing.assert_array_equal(result.label, y.numpy())
    assert result.settings["setting"] == "whitebox" and result.settings["scoring_seeds"] == [0, 5]
    # the two scoring seeds are different Poisson draws (else the interval over seeds would be fake)
    assert not np.array_equal(result.clean_correct[:, 0], result.clean_correct[:, 1])
    assert result.adversarial_accuracy < result.clean_accuracy


def test_the_evaluator_crafts_and_scores_a_batch_like_the_hand_written_loop(snn, trained_pair):
    # the engine's parts on their own: one batch at global index 16, crafted then scored on two seeds
    x, y = trained_pair.x[16:32], trained_pair.y[16:32]
    evaluator = Evaluator(snn, functools.partial(PGD, eps=0.05, alpha=0.02, steps=2), seed=3, scoring_seeds=(0, 5))
    with evaluator.session():
        adversarials = evaluator.craft(x, y, first=16)
        clean, members = evaluator.score(x, y, 16, adversarials)["target"]
    twin = copy.deepcopy(snn)
    padded_x, padded_y = torch.cat([trained_pair.x[:16], x]), torch.cat([trained_pair.y[:16], y])
    make = lambda model: [PGD(model, eps=0.05, alpha=0.02, steps=2)]  # noqa: E731
    expected = reference_loop({"t": twin}, padded_x, padded_y, make, twin, seed=3, scoring_seeds=(0, 5), batch_size=16)["t"]
    np.testing.assert_array_equal(clean, expected[0][16:])
    np.testing.assert_array_equal(members.all(0), expected[1][16:])
    assert members.shape == (1, 16, 2)


def test_blackbox_scores_several_targets_on_one_crafted_batch_like_the_loop(snn, ann, trained_pair):
    x, y = trained_pair.x[:32], trained_pair.y[:32]
    targets = {"snn": snn, "snn_t8": copy.deepcopy(snn), "ann": ann}
    targets["snn_t8"].timesteps = 8
    results = evaluate(targets, (x, y), functools.partial(PGD, eps=0.08, alpha=0.03, steps=3), source=ann, seed=1,
                       scoring_seeds=(0, 1, 2), batch_size=16, progress=False)
    twins = {name: copy.deepcopy(model) for name, model in targets.items()}
    source = copy.deepcopy(ann)
    expected = reference_loop(twins, x, y, lambda m: [PGD(m, eps=0.08, alpha=0.03, steps=3)], source, seed=1,
                              scoring_seeds=(0, 1, 2), batch_size=16)
    assert set(results) == set(targets)
    for name, result in results.items():
        np.testing.assert_array_equal(result.clean_correct, expected[name][0], err_msg=name)
        np.testing.assert_array_equal(result.adversarial_correct, expected[name][1], err_msg=name)
        assert result.settings["setting"] == "blackbox" and result.settings["source"]["kind"] == "ann"
    # scoring one target alone gives the same numbers: the crafted batch does not depend on the other targets
    alone = evaluate(snn, (x, y), functools.partial(PGD, eps=0.08, alpha=0.03, steps=3), source=ann, seed=1,
                     scoring_seeds=(0, 1, 2), batch_size=16, progress=False)
    assert alone == results["snn"]


def test_blackbox_transfer_lowers_accuracy_and_whitebox_on_the_ann_is_stronger(snn, ann, trained_pair):
    x, y = trained_pair.x[:96], trained_pair.y[:96]
    attack = functools.partial(PGD, eps=0.1, alpha=0.025)
    transfer = evaluate(snn, (x, y), attack, source=ann, progress=False)
    assert compare(transfer, transfer, "clean", "adversarial", alternative="greater").significant()
    # on the ANN, its own gradient (whitebox) beats the SNN's surrogate gradient (transfer): a paired test says so
    whitebox = evaluate(ann, (x, y), attack, progress=False)
    from_snn = evaluate(ann, (x, y), attack, source=snn, progress=False)
    comparison = compare(whitebox, from_snn, alternative="less")
    assert comparison.significant(), comparison
    with pytest.raises(ValueError, match="source"):
        evaluate(snn, (x, y), PGD(snn), source=ann, progress=False)


def test_worst_case_of_identical_copies_equals_the_attack(snn, data):
    x, y = data
    deterministic = evaluate(snn, (x, y), PGD(snn, eps=0.05, alpha=0.02, steps=2, random_start=False),
                             scoring_seeds=(0, 1), progress=False)
    copies = evaluate(snn, (x, y), WorstCase([PGD(snn, eps=0.05, alpha=0.02, steps=2, random_start=False)
                                              for _ in range(3)]), scoring_seeds=(0, 1), progress=False)
    np.testing.assert_array_equal(copies.adversarial_correct, deterministic.adversarial_correct)
    assert (copies.member_correct == deterministic.adversarial_correct).all()
    # with random starts the members start apart (the worst case may only be stronger), member 0 is the lone
    # attack exactly, and every member is scored on the same draw
    lone = evaluate(snn, (x, y), PGD(snn, eps=0.05, alpha=0.02, steps=2), scoring_seeds=(0, 1), progress=False)
    starts = []

    class Recording(PGD):
        def forward(self, images, labels):
            starts.append(self.random_uniform(images, -self.eps, self.eps))
            self.manual_seed(self.seed)
            return super().forward(images, labels)

    random = evaluate(snn, (x, y), WorstCase([Recording(snn, eps=0.05, alpha=0.02, steps=2) for _ in range(3)]),
                      scoring_seeds=(0, 1), progress=False)
    assert not torch.equal(starts[0], starts[1]) and not torch.equal(starts[1], starts[2])
    np.testing.assert_array_equal(random.member_correct[0], lone.adversarial_correct)
    np.testing.assert_array_equal(random.adversarial_correct, random.member_correct.all(0))


def test_ensemble_counts_robust_only_if_all_members_fail(snn, data):
    x, y = data
    kwargs = dict(eps=0.05, alpha=0.02, steps=2, random_start=False)
    ensemble = gradient_mode_ensemble(snn, modes=("bptt", "rate", "hart"), **kwargs)
    result = evaluate(snn, (x, y), ensemble, scoring_seeds=(0, 1), progress=False)
    # each member evaluated alone (deterministic: the same crafted batch, the same scoring draws)
    alone = [evaluate(snn, (x, y), PGD(snn, grad_mode=mode, **kwargs), scoring_seeds=(0, 1), progress=False)
             for mode in ("bptt", "rate", "hart")]
    for member, single in zip(result.member_correct, alone):
        np.testing.assert_array_equal(member, single.adversarial_correct)
    expected = np.logical_and.reduce([single.adversarial_correct for single in alone])
    np.testing.assert_array_equal(result.adversarial_correct, expected)
    assert not all(np.array_equal(alone[0].adversarial_correct, s.adversarial_correct) for s in alone[1:])
    assert result.member_accuracies() == [s.adversarial_accuracy for s in alone]


def test_clean_evaluation_and_targets_share_the_scoring_draw(snn, data):
    x, y = data
    results = evaluate({"a": snn, "b": copy.deepcopy(snn)}, (x, y), None, source=snn, scoring_seeds=(0, 1, 2),
                       progress=False)
    np.testing.assert_array_equal(results["a"].clean_correct, results["b"].clean_correct)
    np.testing.assert_array_equal(results["a"].adversarial_correct, results["a"].clean_correct)
    assert results["a"].settings["setting"] == "clean" and results["a"].settings["attack"] is None
    clean = evaluate(snn, (x, y), scoring_seeds=(0, 1, 2), progress=False)
    np.testing.assert_array_equal(clean.clean_correct, results["a"].clean_correct)


def test_reproducible_and_leaves_rng_and_seeds_as_they_were(snn, data):
    x, y = data
    state, encoder_seed = torch.random.get_rng_state(), snn.encoder.seed
    attack = PGD(snn, eps=0.05, alpha=0.02, steps=2, seed=11)
    first = evaluate(snn, (x, y), attack, seed=4, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert snn.encoder.seed == encoder_seed and attack.seed == 11
    assert evaluate(snn, (x, y), attack, seed=4, progress=False) == first
    assert evaluate(snn, (x, y), attack, seed=5, progress=False) != first


def test_shards_merge_to_the_unsharded_result_and_results_round_trip(tmp_path, snn, trained_pair):
    x, y = trained_pair.x[:48], trained_pair.y[:48]
    attack = functools.partial(PGD, eps=0.05, alpha=0.02, steps=2)
    full = evaluate(snn, (x, y), attack, scoring_seeds=(0, 1), batch_size=16, progress=False)
    shards = [evaluate(snn, (x[i:i + 16], y[i:i + 16]), attack, start_index=i, scoring_seeds=(0, 1), batch_size=16,
                       progress=False) for i in (32, 0, 16)]
    merged = EvaluationResult.merge(shards)
    for name in ("index", "label", "clean_correct", "adversarial_correct"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(full, name))
    full.save(tmp_path / "r.json")
    assert EvaluationResult.load(tmp_path / "r.json") == full
    stored = json.loads((tmp_path / "r.json").read_text())
    assert stored["summary"]["adversarial"]["accuracy"] == full.adversarial_accuracy
    assert stored["summary"]["adversarial"]["low"] == full.confidence_interval("adversarial")[0]
    with pytest.raises(ValueError, match="two shards"):
        EvaluationResult.merge([shards[0], shards[0]])
    other = evaluate(snn, (x[:16], y[:16]), attack, seed=9, scoring_seeds=(0, 1), batch_size=16, progress=False)
    with pytest.raises(ValueError, match="settings differ"):
        EvaluationResult.merge([shards[0], other])


def test_a_result_restricted_to_some_images_is_their_own_evaluation(snn, trained_pair):
    x, y = trained_pair.x[:48], trained_pair.y[:48]
    attack = functools.partial(PGD, eps=0.05, alpha=0.02, steps=2)
    full = evaluate(snn, (x, y), attack, scoring_seeds=(0, 1), batch_size=16, progress=False)
    shard = evaluate(snn, (x[16:32], y[16:32]), attack, start_index=16, scoring_seeds=(0, 1), batch_size=16,
                     progress=False)
    part = full.restricted(shard.index)
    for name in ("index", "label", "clean_correct", "adversarial_correct"):
        np.testing.assert_array_equal(getattr(part, name), getattr(shard, name))
    members = np.arange(2 * 4 * 2).reshape(2, 4, 2) % 3 == 0  # [M, N, S], made up
    worst = EvaluationResult([10, 11, 12, 13], [0, 1, 2, 3], members.any(0), members.all(0), members, (0, 1))
    picked = worst.restricted([13, 11])
    np.testing.assert_array_equal(picked.label, [3, 1])
    np.testing.assert_array_equal(picked.member_correct, members[:, [3, 1]])
    np.testing.assert_array_equal(picked.adversarial_correct, members.all(0)[[3, 1]])
    with pytest.raises(ValueError, match=r"image\(s\) \[14\] not in this result"):
        worst.restricted([13, 14])


def test_the_worst_case_of_evaluations_is_their_per_sample_and_on_the_same_draws():
    clean = np.array([[1, 1], [1, 0], [0, 1]], dtype=bool)  # [N, S]
    a = EvaluationResult([0, 1, 2], [3, 4, 5], clean, [[1, 0], [1, 0], [0, 1]], scoring_seeds=(0, 1))
    b = EvaluationResult([0, 1, 2], [3, 4, 5], clean, [[0, 1], [1, 0], [0, 1]], scoring_seeds=(0, 1))
    worst = EvaluationResult.worst_case([a, b], ["A", "B"])
    np.testing.assert_array_equal(worst.adversarial_correct, [[0, 0], [1, 0], [0, 1]])
    np.testing.assert_array_equal(worst.member_correct, [a.adversarial_correct, b.adversarial_correct])
    np.testing.assert_array_equal(worst.clean_correct, clean)
    assert worst.settings["attack"]["members"] == ["A", "B"]
    other_draws = EvaluationResult([0, 1, 2], [3, 4, 5], ~clean, b.adversarial_correct, scoring_seeds=(0, 1))
    with pytest.raises(ValueError, match="other clean outcomes"):
        EvaluationResult.worst_case([a, other_draws])
    with pytest.raises(ValueError, match="other images"):
        EvaluationResult.worst_case([a, a.restricted([0, 1])])
    with pytest.raises(ValueError, match="at least two"):
        EvaluationResult.worst_case([a])


def count_scoring_forwards(model) -> list:
    """A one-item list counting the images of ``model``'s forwards without gradient (the scoring forwards)."""
    scored = [0]
    model.register_forward_hook(lambda module, inputs, output: scored.__setitem__(
        0, scored[0] + (0 if torch.is_grad_enabled() else len(inputs[0]))))
    return scored


def test_a_clean_memo_pays_each_targets_clean_forwards_once_with_identical_numbers(snn, ann, trained_pair):
    x, y = trained_pair.x[:40], trained_pair.y[:40]
    kwargs = dict(seed=3, scoring_seeds=(0, 5), batch_size=16, progress=False)
    attacks = [functools.partial(FGSM, eps=0.1), functools.partial(PGD, eps=0.05, alpha=0.02, steps=2)]
    memo = CleanMemo()
    evaluate(snn, (x, y), clean_memo=memo, **kwargs)  # pays the clean forwards: 3 batches x 2 seeds
    assert len(memo) == 3 * 2
    for attack in attacks:
        alone, shared = copy.deepcopy(snn), copy.deepcopy(snn)
        paid_alone, paid_shared = count_scoring_forwards(alone), count_scoring_forwards(shared)
        a = evaluate(alone, (x, y), attack, **kwargs)
        b = evaluate(shared, (x, y), attack, clean_memo=memo, **kwargs)
        assert paid_alone[0] - paid_shared[0] == 2 * len(x)  # the clean forwards of both seeds, no more
        np.testing.assert_array_equal(a.clean_correct, b.clean_correct)
        np.testing.assert_array_equal(a.adversarial_correct, b.adversarial_correct)
        # a blackbox evaluation of the same target reuses them too
        paid_shared[0] = 0
        evaluate({"t": shared}, (x, y), attack, source=ann, clean_memo=memo, **kwargs)
        assert paid_shared[0] == 2 * len(x)  # the adversarial forwards only
    assert len(memo) == 3 * 2


def test_a_clean_memo_never_serves_a_changed_target_or_batch(snn, trained_pair):
    x, y = trained_pair.x[:32], trained_pair.y[:32]
    kwargs = dict(seed=0, scoring_seeds=(0, 1), batch_size=16, progress=False)
    memo = CleanMemo()
    evaluate(snn, (x, y), clean_memo=memo, **kwargs)
    fingerprint = model_fingerprint(snn)
    assert model_fingerprint(copy.deepcopy(snn)) == fingerprint  # a copy is the same function
    changed = [copy.deepcopy(snn) for _ in range(4)]
    changed[0].timesteps += 4
    with torch.no_grad():
        next(changed[1].parameters()).mul_(-1)
    changed[2].set_leak(0.5)
    for neuron in spiking_neurons(changed[3]):  # a threshold is a setting of the module, not a tensor
        neuron.v_threshold *= 3
    for model in changed:
        assert model_fingerprint(model) != fingerprint
        expected = evaluate(copy.deepcopy(model), (x, y), **kwargs)
        np.testing.assert_array_equal(evaluate(model, (x, y), clean_memo=memo, **kwargs).clean_correct,
                                      expected.clean_correct)
    for images, labels in [(x.flip(0), y.flip(0)), (x.roll(1, -1), y)]:  # other images, with or without other labels
        served = evaluate(snn, (images, labels), clean_memo=memo, **kwargs).clean_correct
        np.testing.assert_array_equal(served, evaluate(snn, (images, labels), **kwargs).clean_correct)


def test_an_attack_of_eps_0_is_not_run_and_scores_as_the_clean_image(snn, data):
    class Refusing(FGSM):
        def __call__(self, images, labels):
            raise AssertionError("an eps = 0 attack was run")

    scored = count_scoring_forwards(snn)
    result = evaluate(snn, data, functools.partial(Refusing, eps=0.0), scoring_seeds=(0, 1), progress=False)
    np.testing.assert_array_equal(result.adversarial_correct, result.clean_correct)
    assert scored[0] == 2 * len(data[0])  # the image's outcome is the clean one, not scored again
    assert result.settings["setting"] == "whitebox"


def test_result_prints_one_line_with_intervals(snn, data):
    result = evaluate(snn, data, FGSM(snn, eps=0.1), scoring_seeds=(0, 1), progress=False)
    text = repr(result)
    assert "\n" not in text and len(text) < 200
    low, high = result.confidence_interval("adversarial")
    assert f"adversarial={100 * result.adversarial_accuracy:.1f}% [{100 * low:.1f}, {100 * high:.1f}]" in text
    assert "whitebox fgsm" in text


def test_fixed_noise_results_say_so_and_refuse_several_seeds(snn, data):
    with fixed_noise(snn, seed=3):
        result = evaluate(snn, data, progress=False)
        with pytest.raises(ValueError, match="fixed_noise"):
            evaluate(snn, data, scoring_seeds=(0, 1), progress=False)
    assert result.settings["noise"] == "fixed draw (seed 3)" and "fixed draw" in repr(result)
    assert evaluate(snn, data, progress=False).settings["noise"] is None


def test_threat_model_violations_are_caught(snn, data):
    x, y = data[0][:8], data[1][:8]

    class Cheat(FGSM):
        def __call__(self, images, labels):
            return (images + 0.5).clamp(0, 1)

    class OutOfRange(FGSM):
        def __call__(self, images, labels):
            return images + 1e-3

    with pytest.raises(RuntimeError, match="eps-ball"):
        evaluate(snn, (x, y), Cheat(snn, eps=0.01), progress=False)
    with pytest.raises(RuntimeError, match=r"outside \[0, 1\]"):
        evaluate(snn, (x, y), OutOfRange(snn, eps=0.01), progress=False)


def test_evaluate_bad_arguments(snn, ann, data):
    x, y = data[0][:8], data[1][:8]
    with pytest.raises(ValueError, match="start_index"):
        evaluate(snn, (x, y), FGSM(snn), start_index=-1, progress=False)
    with pytest.raises(ValueError, match="data"):
        evaluate(snn, [], FGSM(snn), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(snn, (x, y), FGSM(snn), batch_size=0, progress=False)
    with pytest.raises(ValueError, match="scoring_seeds.*repeats"):
        evaluate(snn, (x, y), scoring_seeds=(0, 0), progress=False)
    with pytest.raises(ValueError, match="scoring_seeds"):
        evaluate(snn, (x, y), scoring_seeds=(), progress=False)
    with pytest.raises(ValueError, match="2 targets without a 'source'"):
        evaluate({"a": snn, "b": ann}, (x, y), FGSM(snn), progress=False)
    with pytest.raises(TypeError, match="attack"):
        evaluate(snn, (x, y), 3, progress=False)
    with pytest.raises(TypeError, match="targets"):
        evaluate({}, (x, y), progress=False)
