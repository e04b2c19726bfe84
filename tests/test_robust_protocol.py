"""The robustness protocol: the cascade attacks exactly the survivors, resumes byte for byte, certifies convergence,
and tells honest models from masked ones (each case a model whose behaviour is known).

A cheap battery ``test`` replaces ``snn-v1`` here (the same stage kinds, a few iterations each); the full battery
runs on these models in ``experiments/protocol_validation.py``.
"""
import copy
import inspect
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron

import snn_adv.protocol.run as protocol_run
from attack_helpers import Masked, _InputGradient, ann, data, snn  # noqa: F401 (fixtures)
from experiment_scripts import load_experiment
from snn_adv import checkpoints, evaluate
from snn_adv.attacks import APGD, FGSM, PGD, NoInputGradientError
from snn_adv.classifier import SpikingClassifier
from snn_adv.cli import build_parser
from snn_adv.compat import SJ_VERSION, STOCK_EVAL_HAS_GRADIENT
from snn_adv.encoding import PoissonEncoder, is_stochastic
from snn_adv.neurons import PiecewiseLinear, spiking_neurons
from snn_adv.protocol import (DEFAULT_VERSION, LARGE_EPS, VERSIONS, Stage, battery_digest, gradient_probe,
                              robust_accuracy, stages_of, vanishing_gradient_check)
from snn_adv.evaluation import compare
from snn_adv.studies.protocol import DEFAULTS

TEST_BATTERY = (
    Stage("apgd-ce", "apgd", {"steps": 5, "loss": "ce", "eot": 1}),
    Stage("apgd-rate", "apgd", {"steps": 3, "loss": "ce", "eot": 1}, {"name": "rate"}),
    Stage("apgd-atan", "apgd", {"steps": 3, "loss": "ce", "eot": 1}, {"name": "bptt", "surrogate": {"name": "ATan", "alpha": 2.0}}),
    Stage("apgd-cycle", "apgd", {"steps": 4, "loss": "ce", "eot": 1, "keep": "last"},
          {"name": "cycle", "members": [{"name": "hart"}, {"name": "bptt", "surrogate": {"name": "Sigmoid", "alpha": 4.0}}]}),
    Stage("transfer", "apgd", {"steps": 5, "loss": "ce", "eot": 1}, transfer=True),
    Stage("square", "square", {"queries": 100, "p_init": 0.8, "eot": 1}),
)


@pytest.fixture
def battery(monkeypatch):
    monkeypatch.setitem(VERSIONS, "test", TEST_BATTERY)
    monkeypatch.setitem(LARGE_EPS, "steps", 8)
    return "test"


@pytest.fixture
def calls(monkeypatch):
    """Every evaluate() call of the protocol: its keyword arguments and result."""
    recorded = []
    real = protocol_run.evaluate

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        recorded.append((kwargs, result))
        return result

    monkeypatch.setattr(protocol_run, "evaluate", spy)
    return recorded


def test_snn_v1_and_v2_are_pinned():
    # a change of the battery must come with a new version string: this digest is snn-v1's (de678190d0304d16
    # before the first release, when the vanishing-gradient check was a bound on the gradient's scale)
    assert battery_digest("snn-v1") == "1e1a352f5fb15a69"
    assert battery_digest("snn-v2") == "f93acd5b805a52c6"
    names = [s.name for s in stages_of("snn-v1", {"ann": nn.Identity()})]
    assert names[:3] == ["apgd-ce", "apgd-t", "sa-pgd-assg"] and names[-2:] == ["transfer[ann]", "square"]
    v2 = stages_of("snn-v2", {"ann": nn.Identity()})
    assert [s.name for s in v2] == ["apgd-ce", "apgd-t", "sa-pgd-assg", "apgd-cycle", "transfer[ann]", "square"]
    # snn-v2's cycle takes exactly snn-v1's seven alternative gradients; its APGD stages keep the last fooling point
    assert v2[3].grad_mode["members"] == [s.grad_mode for s in stages_of("snn-v1", {})[3:10]]
    assert all(s.arguments.get("keep") == "last" for s in v2 if s.attack != "square")
    # a call, the CLI and a study section without a version get snn-v2; the committed presets name snn-v1
    assert DEFAULT_VERSION == "snn-v2" == inspect.signature(robust_accuracy).parameters["version"].default
    assert build_parser().parse_args(["protocol", "model.pt"]).version == DEFAULT_VERSION == DEFAULTS["version"]
    with pytest.raises(ValueError, match="snn-v1"):
        stages_of("snn-v0", {})


def test_cascade_attacks_exactly_the_survivors(battery, calls, snn, ann, data):
    snn.timesteps = 8
    x, y = data[0][:16], data[1][:16]
    report = robust_accuracy(snn, (x, y), eps=0.1, version=battery, sources={"ann": ann}, scoring_seeds=[0, 1],
                             batch_size=8, progress=False)
    names = [s.name for s in stages_of(battery, {"ann": ann})]
    assert [r.name for r in report.stages][: len(names)] == names and report.stages[-1].name == "certificate"
    by_key = {kwargs.get("crafting_key"): (kwargs, result) for kwargs, result in calls}
    clean = by_key["clean"][1].clean_correct
    robust = clean.copy()
    for name in [*names, f"certificate:{report.certificate['stage']}"]:
        kwargs, result = by_key[name if not name.startswith("transfer") else "transfer[ann]"]
        # each stage crafts only on images with a pair that every earlier stage left robust...
        np.testing.assert_array_equal(kwargs["active"], robust.any(1))
        # ...and scores on the same Poisson draws as the clean pass
        np.testing.assert_array_equal(result.clean_correct, clean)
        robust &= result.adversarial_correct
    np.testing.assert_array_equal(report.result.adversarial_correct, robust)
    assert report.robust_accuracy == robust.mean()
    # who broke what: every pair broken is credited to one stage, every robust pair to none
    assert ((report.broken_by == -1) == robust).all() and ((report.broken_by == -2) == ~clean).all()
    if report.every_draw is not None:
        assert (report.every_draw.adversarial_correct <= report.result.adversarial_correct).all()


def paired_not_above(report, result):
    """The protocol's robust outcome is not significantly above an attack's (one-sided paired test)."""
    return not compare(report.result, result, alternative="greater").significant()


def test_honest_ann_is_at_or_below_every_single_attack(battery, ann, data):
    x, y = data
    report = robust_accuracy(ann, (x, y), eps=0.1, version=battery, scoring_seeds=[0], progress=False)
    assert not report.random and report.every_draw is None
    assert report.verdict in ("converged", "not converged"), report.verdict
    for attack in (FGSM(ann, eps=0.1), PGD(ann, eps=0.1, alpha=0.025, steps=7), APGD(ann, eps=0.1, steps=10)):
        single = evaluate(ann, (x, y), attack, scoring_seeds=[0], progress=False)
        assert paired_not_above(report, single)
        assert report.robust_accuracy <= single.adversarial_accuracy + 1 / len(y)


def test_noise_backward_is_flagged(battery, ann, data):
    class NoiseGradient(nn.Module):
        """The ANN's logits; an input gradient of pure noise (seeded by the engine's streams)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model(_InputGradient.apply(images, lambda g: torch.randn_like(g)))

    x, y = data
    masked = NoiseGradient(ann).eval()
    report = robust_accuracy(masked, (x, y), eps=0.1, version=battery, scoring_seeds=[0], progress=False)
    failed = {c.name for c in report.failed_checks}
    assert "gradient_free_not_stronger" in failed and report.verdict.startswith("unreliable")
    assert report.headline().startswith("robust accuracy") and "unreliable: " in report.headline()


@pytest.mark.skipif(STOCK_EVAL_HAS_GRADIENT, reason=f"SpikingJelly {SJ_VERSION}'s stock neurons have gradients in eval()")
def test_stock_neurons_in_eval_are_refused(battery, data):
    net = nn.Sequential(layer.Flatten(), layer.Linear(28 * 28, 10), neuron.LIFNode())
    functional.set_step_mode(net, "m")
    model = SpikingClassifier(net, PoissonEncoder(seed=0), timesteps=4).eval()
    with pytest.raises(NoInputGradientError, match="adapt"):
        robust_accuracy(model, (data[0][:8], data[1][:8]), eps=0.1, version=battery, progress=False)


def test_an_adapted_stock_network_gets_the_battery_its_neurons_allow(battery, snn, data):
    from snn_adv.attacks import adapt
    from test_adapter import stock_network

    x, y = data  # 32 images at T = 16: enough clean-correct ones for the vanishing-gradient sign test to decide
    model = adapt(stock_network(snn), PoissonEncoder(seed=0), timesteps=16, mean=(0.5,), std=(0.5,)).eval()
    report = robust_accuracy(model, (x, y), eps=0.1, version=battery, scoring_seeds=[0, 1], batch_size=16,
                             progress=False)
    status = {r.name: r.status for r in report.stages}
    # stock IFNodes: BPTT with any surrogate applies, a backward rule of snn_adv's own neurons (rate) does not
    assert status["apgd-ce"] == "ran" and status["apgd-atan"] in ("ran", "nothing left")
    assert status["apgd-rate"] == "not applicable" and status["apgd-cycle"] in ("ran", "nothing left") and report.random
    single = evaluate(model, (x, y), PGD(model, eps=0.1, alpha=0.025, steps=7), scoring_seeds=[0, 1], batch_size=16,
                      progress=False)
    assert paired_not_above(report, single)
    assert not report.failed_checks, [str(c) for c in report.checks]


def test_a_cycle_stage_keeps_the_members_the_neurons_allow(snn, ann):
    from snn_adv.attacks import BPTT, CyclingGradient, RateGradient, adapt
    from test_adapter import stock_network

    atan = {"name": "bptt", "surrogate": {"name": "ATan", "alpha": 2.0}}
    stage = Stage("apgd-cycle", "apgd", {"steps": 2, "loss": "ce"}, {"name": "cycle", "members": [{"name": "rate"}, atan]})
    own = stage.gradient_mode(snn)
    assert isinstance(own, CyclingGradient) and stage.not_applicable(snn) is None
    assert [type(m) for m in own.members] == [RateGradient, BPTT] and own.members[1].surrogate is not None
    stock = adapt(stock_network(snn), PoissonEncoder(seed=0), timesteps=4, mean=(0.5,), std=(0.5,)).eval()
    assert stage.not_applicable(stock) is None
    assert [m.settings()["name"] for m in stage.gradient_mode(stock).members] == ["bptt"]  # rate needs our neurons
    rate_only = Stage("apgd-cycle", "apgd", {"steps": 2, "loss": "ce"}, {"name": "cycle", "members": [{"name": "rate"}]})
    assert "LeakyLIFNode" in rate_only.not_applicable(stock)
    assert "no spiking neurons" in stage.not_applicable(ann)


def test_a_vanishing_surrogate_is_flagged(battery, snn, data):
    snn.timesteps = 8
    for node in spiking_neurons(snn):
        node.surrogate_function = PiecewiseLinear(gamma=1.0, width=1e-7)
    x, y = data[0][:16], data[1][:16]
    report = robust_accuracy(snn, (x, y), eps=0.1, version=battery, scoring_seeds=[0, 1], progress=False)
    failed = {c.name for c in report.failed_checks}
    assert failed & {"own_gradient", "vanishing_gradient"}, [str(c) for c in report.checks]
    assert report.verdict.startswith("unreliable")


def test_the_vanishing_gradient_probe_is_a_finite_difference_and_ignores_the_scale(snn, ann, data):
    x, y = data
    probe = gradient_probe(ann, x, y, 0.1, seed=0)
    # by hand: the margin one sign step down the input gradient of the margin, relative to the clean margin
    xr = x.clone().requires_grad_(True)
    logits = ann(xr)
    top_other = logits.clone().detach().scatter(1, y[:, None], -float("inf")).argmax(1)
    margin = logits.gather(1, y[:, None])[:, 0] - logits.gather(1, top_other[:, None])[:, 0]
    (grad,) = torch.autograd.grad(margin.sum(), xr)
    with torch.no_grad():
        moved = ann((x - 0.1 * grad.sign()).clamp(0, 1))
    after = moved.gather(1, y[:, None])[:, 0] - moved.scatter(1, y[:, None], -float("inf")).max(1).values
    correct = (margin > 0).detach()
    expected = ((margin - after) / margin)[correct].detach().numpy()
    np.testing.assert_allclose(probe["drop_gradient"], expected, rtol=1e-4, atol=1e-5)
    # an honest ANN and an honest SNN pass, and so does a gradient 10^4 times too small (signs intact): the check
    # asks whether the gradient tells the attack anything, not how large it is
    for model in (ann, snn, Masked(ann, "tiny")):
        check = vanishing_gradient_check(gradient_probe(model, x, y, 0.1, seed=0))
        assert check.passed is True, check
    # a reversed gradient steps up the margin and a silent surrogate gives no step at all: both fail
    silent = copy.deepcopy(snn)
    for node in spiking_neurons(silent):
        node.surrogate_function = PiecewiseLinear(gamma=1.0, width=1e-7)
    for model in (Masked(ann, "reversed"), silent):
        check = vanishing_gradient_check(gradient_probe(model, x, y, 0.1, seed=0))
        assert check.passed is False and check.values["comparison"]["p_value"] >= 0.05, check
    # on 4 images even a perfect gradient cannot be told from chance: no verdict, never a false failure
    few = {name: values[:4] for name, values in gradient_probe(ann, x, y, 0.1, seed=0).items()}
    assert vanishing_gradient_check(few).passed is None
    assert vanishing_gradient_check({name: values[:5] for name, values in
                                     gradient_probe(ann, x, y, 0.1, seed=0).items()}).passed is True


def test_converted_snn_at_low_t_is_at_or_below_single_attacks(battery, snn, ann, data):
    snn.timesteps = 8
    x, y = data[0][:16], data[1][:16]
    seeds = [0, 1]
    report = robust_accuracy(snn, (x, y), eps=0.1, version=battery, sources={"ann": ann}, scoring_seeds=seeds,
                             batch_size=8, progress=False)
    assert report.random and report.every_draw is not None
    for attack, source in ((PGD(snn, eps=0.1, alpha=0.025, steps=7), None), (PGD(ann, eps=0.1, alpha=0.025, steps=7), ann)):
        single = evaluate(snn, (x, y), attack, source=source, scoring_seeds=seeds, batch_size=8, progress=False)
        assert paired_not_above(report, single)


def test_a_noise_defence_is_detected_as_random(battery, ann, data):
    class NoisyInput(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model((images + 0.1 * torch.randn_like(images)).clamp(0, 1))

    x, y = data[0][:16], data[1][:16]
    defended = NoisyInput(ann).eval()
    assert is_stochastic(defended, x) and not is_stochastic(ann, x)
    report = robust_accuracy(defended, (x, y), eps=0.1, version=battery, scoring_seeds=[0, 1], progress=False)
    assert report.random and report.every_draw is not None
    single = evaluate(defended, (x, y), PGD(defended, eps=0.1, alpha=0.025, steps=7), scoring_seeds=[0, 1], progress=False)
    assert paired_not_above(report, single)


def test_certificate_verdict_follows_its_test(monkeypatch, ann, data):
    # a one-step first stage leaves images that 4x the iterations and 2 restarts still break: not converged
    monkeypatch.setitem(VERSIONS, "weak", (Stage("apgd-ce", "apgd", {"steps": 1, "loss": "ce", "eot": 1}),))
    x, y = data
    report = robust_accuracy(ann, (x, y), eps=0.05, version="weak", scoring_seeds=[0], progress=False)
    certificate = report.certificate
    assert certificate["stage"] == "apgd-ce"
    assert certificate["converged"] == (certificate["removed"] <= 0.005 and certificate["comparison"]["p_value"] >= 0.05)
    assert certificate["broken"] > 0 and not report.converged and "not converged" in report.headline()


def without_seconds(value):
    """A report's JSON without its wall times (which a recomputed stage measures anew)."""
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def test_resumes_byte_for_byte_and_refuses_damaged_stages(battery, calls, ann, data, tmp_path):
    x, y = data[0][:16], data[1][:16]
    kwargs = dict(eps=0.1, version=battery, scoring_seeds=[0], progress=False, out=tmp_path)
    robust_accuracy(ann, (x, y), **kwargs)
    report = (tmp_path / "report.json").read_bytes()
    first_calls = len(calls)
    # a rerun of a finished run computes nothing and writes the same bytes
    robust_accuracy(ann, (x, y), **kwargs)
    assert (tmp_path / "report.json").read_bytes() == report and len(calls) == first_calls
    # a run killed during the square stage: that stage and everything after it are missing
    for path in sorted((tmp_path / "stages").glob("*")):
        if path.name.split("-", 1)[0] >= "04":
            path.unlink()
    (tmp_path / "report.json").unlink()
    robust_accuracy(ann, (x, y), **kwargs)
    resumed = json.loads((tmp_path / "report.json").read_text())
    assert without_seconds(resumed) == without_seconds(json.loads(report))
    recomputed = [c[0].get("crafting_key") for c in calls[first_calls:]]
    assert "apgd-ce" not in recomputed and "square" in recomputed
    # a damaged stage file is refused, never used
    stage = tmp_path / "stages" / "01-apgd-ce.json"
    text = stage.read_text()
    at = text.index("1", text.index('"adversarial_correct"'))  # one per-image outcome flipped
    stage.write_text(text[:at] + "0" + text[at + 1:])
    with pytest.raises(ValueError, match="01-apgd-ce.json"):
        robust_accuracy(ann, (x, y), **kwargs)
    # other inputs in the same folder are refused too
    stage.unlink()
    with pytest.raises(ValueError, match="other inputs"):
        robust_accuracy(ann, (x, y), **{**kwargs, "eps": 0.2})


def test_cli_runs_the_protocol_on_a_checkpoint(battery, ann, tmp_path, capsys):
    from snn_adv.cli import main

    path = tmp_path / "ann.pt"
    checkpoints.save(ann, path)
    out = tmp_path / "protocol"
    assert main(["protocol", str(path), "--version", battery, "--test-count", "20", "--eval-seeds", "0",
                 "--eps", "8/255", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "robust accuracy" in printed and "(test, Linf 8/255, 20 images x 1 draws" in printed
    saved = json.loads((out / "report.json").read_text())
    assert saved["version"] == "test" and len(saved["robust"]) == 20 and (out / "cost.png").exists()


def test_report_table_shows_each_stage_with_its_cumulative_interval(monkeypatch, ann, data):
    # the markdown comes from the one table writer: a row per stage, accuracy [low, high] in % as rows() has them
    monkeypatch.setitem(VERSIONS, "weak", (Stage("apgd-ce", "apgd", {"steps": 1, "loss": "ce", "eot": 1}),))
    report = robust_accuracy(ann, data, eps=0.05, version="weak", scoring_seeds=[0], progress=False)
    lines = report.table_markdown().splitlines()
    assert report.headline() in lines and "robust accuracy % [low, high]" in lines[4]
    body = [line.split(" | ") for line in lines[6:6 + len(report.rows())]]
    for row, cells in zip(report.rows(), body):
        shown = f"{round(100 * row['accuracy'], 1):.4g} [{round(100 * row['low'], 1):.4g}, {round(100 * row['high'], 1):.4g}]"
        assert cells[0] == f"| {row['stage']}" and cells[4] == shown
    assert sum(line.startswith("- PASS") or line.startswith("- FAIL") for line in lines) == len(
        [c for c in report.checks if c.passed is not None])


def test_a_silent_deep_stock_network_is_unreliable(battery, trained_pair):
    """Issue 26's case: an untrained deep net of stock LIF neurons under ``adapt`` has an input gradient of ~1e-10,
    not zero (the exact-zero guard passes it). The protocol's vanishing-gradient probe finds that a step down that
    gradient lowers the margin no more often than a random step, and the headline says the figure is unreliable."""
    from test_attacks import _silent_deep_stock_net

    x, y = trained_pair.x[:100], trained_pair.y[:100]
    model = _silent_deep_stock_net()
    report = robust_accuracy(model, (x, y), eps=0.1, version=battery, scoring_seeds=[0], fresh_draws=1,
                             progress=False)
    vanishing = next(c for c in report.checks if c.name == "vanishing_gradient")
    assert vanishing.passed is False, vanishing
    assert report.verdict.startswith("unreliable") and "vanishing_gradient" in report.verdict


def test_version_comparison_reads_each_stages_survivors_from_the_report(battery, snn, data):
    """experiments/compare_protocol_versions.py: the pairs robust after the first k stages, read back from a report's
    ``broken_by``, are the cascade's own cumulative outcomes; a report compared with itself differs by nothing."""
    script = load_experiment("compare_protocol_versions")
    snn.timesteps = 8
    x, y = data[0][:12], data[1][:12]
    report = robust_accuracy(snn, (x, y), eps=0.1, version=battery, scoring_seeds=[0, 1], batch_size=12, progress=False)
    saved = json.loads(json.dumps(report.to_dict()))
    for k, stage in enumerate(report.stages, 1):
        np.testing.assert_array_equal(script.robust_after(saved, k), stage.cumulative.adversarial_correct)
    same = script.compare_reports(saved, saved)
    assert [row["difference"]["difference"] for row in same["rows"]] == [0.0, 0.0, 0.0]
    assert same["rows"][-1]["a"] == report.robust_accuracy
    other = {**saved, "index": saved["index"][::-1]}
    with pytest.raises(ValueError, match="same images"):
        script.compare_reports(saved, other)


def test_stages_resumed_from_other_code_are_named_in_the_report(battery, ann, data, tmp_path, monkeypatch):
    """A stage file written by other code is used (its key holds) but the report says which and at what commit."""
    x, y = data[0][:16], data[1][:16]
    kwargs = dict(eps=0.1, version=battery, scoring_seeds=[0], progress=False, out=tmp_path)
    first = robust_accuracy(ann, (x, y), **kwargs)
    assert "stages_from_other_code" not in first.provenance
    written = first.clean.settings["provenance"]["git_commit"]
    real = protocol_run.provenance
    monkeypatch.setattr(protocol_run, "provenance", lambda **extra: {**real(**extra), "git_commit": "f" * 40,
                                                                   "source_digest": "sha256:other"})
    with pytest.warns(UserWarning, match="written by other code"):
        resumed = robust_accuracy(ann, (x, y), **kwargs)
    on_disk = [path.stem.split("-", 1)[1] for path in sorted((tmp_path / "stages").glob("*.json"))]
    assert len(on_disk) >= 4 and resumed.provenance["stages_from_other_code"] == dict.fromkeys(on_disk, written)
    assert json.loads((tmp_path / "report.json").read_text())["provenance"]["stages_from_other_code"] == \
        resumed.provenance["stages_from_other_code"]
