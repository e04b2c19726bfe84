"""The ``protocol`` study: the robustness protocol on each kind of the zoo, with its transfer sources, its prefix of
images, and paired SNN-vs-ANN comparisons (on the tiny preset, with the cheap test battery)."""
import json

import numpy as np
import pytest

from snn_adv import checkpoints
from snn_adv.config import ConfigError, load_config
from snn_adv.configs import config_path
from snn_adv.evaluation import EvaluationResult
from snn_adv.protocol import LARGE_EPS, VERSIONS, robust_accuracy
from snn_adv.evaluation import compare
from snn_adv.studies import run_study
from snn_adv.zoo import ModelZoo
from test_robust_protocol import TEST_BATTERY

FEW = 8  # SNN-conv on the first 8 of the 16 test images


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study run once for the module, with the cheap battery 'test' in place while the module runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(VERSIONS, "test", TEST_BATTERY)
        patch.setitem(LARGE_EPS, "steps", 8)
        out = tmp_path_factory.mktemp("protocol-study")
        config = load_config(config_path("tiny"), {"studies": {"protocol": {
            "version": "test", "eps": 0.02, "fresh_draws": 2, "test_counts": {"snn_conv": FEW}}}})
        zoo = ModelZoo(config, out / "models", progress=False)
        table = run_study("protocol", config, out, zoo=zoo, progress=False)
        yield out / "protocol", config, zoo, table


def _json(path):
    return json.loads(path.read_text())


def _cells(out):
    return {r["settings"]["kind"]: r for r in map(_json, sorted((out / "cells").glob("*.json")))}


def test_each_kind_meets_the_battery_with_its_parent_and_the_separate_sources(study):
    out, config, zoo, table = study
    cells = _cells(out)
    assert set(cells) == {"ann", "snn_conv", "snn_bp"}
    assert cells["ann"]["settings"]["sources"] == {"ann-source": zoo.key("ann", "source")}
    for kind in ("snn_conv", "snn_bp"):
        assert cells[kind]["settings"]["sources"] == {"ann-parent": zoo.key("ann", "main"),
                                                      "ann-source": zoo.key("ann", "source")}
        stages = [s["stage"] for s in cells[kind]["result"]["report"]["stages"]]
        assert "transfer[ann-parent]" in stages and "transfer[ann-source]" in stages
    assert "transfer[ann-parent]" not in [s["stage"] for s in cells["ann"]["result"]["report"]["stages"]]
    # each model's report and stage files stand in its own folder
    for kind in cells:
        assert (out / kind / "report.json").exists() and (out / kind / "cost.png").exists()
        assert any((out / kind / "stages").glob("01-*.json"))
    assert (out / "cascade.png").exists() and "robust accuracy" in table


def test_the_study_reports_what_the_protocol_gives_on_the_zoo_model(study):
    """Independent reference: robust_accuracy called directly on the zoo's SNN-BP with its sources."""
    out, config, zoo, _ = study
    from snn_adv.data import load_tensors

    images, labels = load_tensors(config["data"]["dataset"], "test", count=config["data"]["test_count"],
                                  seed=config["data"]["subset_seed"])
    direct = robust_accuracy(zoo.get("snn_bp"), (images, labels), 0.02, version="test",
                             sources={"ann-parent": zoo.get("ann", "main"), "ann-source": zoo.get("ann", "source")},
                             seed=config["seed"], scoring_seeds=config["eval_seeds"], fresh_draws=2,
                             batch_size=config["eval_batch_size"], progress=False)
    cell = _cells(out)["snn_bp"]["result"]
    np.testing.assert_array_equal(np.array(cell["report"]["robust"]), direct.result.adversarial_correct.astype(int))
    assert cell["report"]["headline"] == direct.headline()
    row = next(r for r in _json(out / "table.json")["rows"] if r["model"] == "SNN-BP")
    assert row["robust"] == pytest.approx(100 * direct.robust_accuracy) and direct.robust_accuracy > 0
    assert row["robust_every_draw"] == pytest.approx(100 * direct.every_draw.adversarial_accuracy)
    assert row["clean"] == pytest.approx(100 * direct.clean.clean_accuracy)
    assert row["verdict"] == direct.verdict and row["cost"] == pytest.approx(direct.total_cost())


def test_snn_conv_runs_on_a_prefix_and_is_compared_on_the_images_both_saw(study):
    out, config, _, _ = study
    cells = _cells(out)
    results = {k: EvaluationResult.from_dict(c["result"]["results"]["robust"]) for k, c in cells.items()}
    assert results["snn_conv"].index.tolist() == list(range(FEW))
    assert results["ann"].index.tolist() == list(range(config["data"]["test_count"]))
    rows = {(r["comparison"], r["a"]): r for r in _json(out / "comparisons.json")["rows"]}
    by_hand = 100 * (results["snn_conv"].per_image("adversarial") - results["ann"].per_image("adversarial")[:FEW]).mean()
    row = rows[("robust accuracy", "SNN-conv")]
    assert row["n_images"] == FEW and row["difference"] == pytest.approx(by_hand)
    expected = compare(results["snn_bp"], results["ann"])
    assert rows[("robust accuracy", "SNN-BP")]["p_value"] == pytest.approx(expected.p_value)
    # the verdict of each family follows its Holm-adjusted p-value
    for r in rows.values():
        assert (r["verdict"] == "inconclusive") == (r["p_holm"] >= 0.05)


def test_a_rerun_computes_nothing_and_writes_the_same_table(study, monkeypatch):
    out, config, zoo, table = study
    before = (out / "table.md").read_text()
    import snn_adv.studies.protocol as protocol_study

    monkeypatch.setattr(protocol_study, "robust_accuracy", lambda *a, **k: pytest.fail("recomputed a finished cell"))
    assert run_study("protocol", config, out.parent, zoo=zoo, progress=False) == table
    assert (out / "table.md").read_text() == before


def test_the_section_is_checked_at_load():
    with pytest.raises(ConfigError, match="studies.protocol.version"):
        load_config(config_path("tiny"), {"studies": {"protocol": {"version": "snn-v0"}}})
    with pytest.raises(ConfigError, match="studies.protocol.eps"):
        load_config(config_path("tiny"), {"studies": {"protocol": {"eps": 0}}})
    reference = {"name": "pgd", "eps": 0.1, "alpha": 0.025, "steps": 10}
    with pytest.raises(ConfigError, match="studies.protocol.reference.eps.*one radius"):  # the default eps is 8/255
        load_config(config_path("tiny"), {"studies": {"protocol": {"reference": reference}}})
    load_config(config_path("tiny"), {"studies": {"protocol": {"eps": 0.1, "reference": reference}}})


def test_defended_targets_meet_the_same_battery_and_the_reference_gap_is_paired(tmp_path):
    """models.defences and the section's defences / reference: each target under the protocol and under the
    defence paper's attack alone; the gap, the SNN-vs-ANN and defended-vs-plain comparisons by hand."""
    reference = {"name": "pgd", "eps": 0.02, "alpha": 0.005, "steps": 10, "random_start": True, "label": "PGD-10"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(VERSIONS, "test", TEST_BATTERY)
        patch.setitem(LARGE_EPS, "steps", 8)
        config = load_config(config_path("tiny"), {
            "models": {"defences": {"AT": {"ann": {"adversarial": {"method": "fast", "eps": 0.02}},
                                           "snn_bp": {"adversarial": {"method": "pgd", "eps": 0.02, "steps": 2}}}}},
            "studies": {"protocol": {"version": "test", "eps": 0.02, "fresh_draws": 2, "kinds": ["ann", "snn_bp"],
                                     "defences": [None, "AT"], "reference": reference}}})
        zoo = ModelZoo(config, tmp_path / "models", progress=False)
        run_study("protocol", config, tmp_path, zoo=zoo, progress=False)
    out = tmp_path / "protocol"
    cells = [_json(p) for p in sorted((out / "cells").glob("*.json"))]
    protocol = {(c["settings"]["kind"], c["settings"].get("defence")): c for c in cells if "battery" in c["settings"]}
    attacked = {(c["settings"]["kind"], c["settings"].get("defence")): c for c in cells if "attack" in c["settings"]}
    assert set(protocol) == set(attacked) == {("ann", None), ("snn_bp", None), ("ann", "AT"), ("snn_bp", "AT")}
    assert protocol[("snn_bp", "AT")]["settings"]["sources"]["ann-parent"] == zoo.key("ann", "main", "AT")
    assert protocol[("snn_bp", "AT")]["settings"]["model"] == zoo.key("snn_bp", defence="AT") != zoo.key("snn_bp")
    assert (out / "snn_bp-AT" / "report.json").exists()
    rows = {r["model"]: r for r in _json(out / "table.json")["rows"]}
    assert set(rows) == {"ANN", "SNN-BP", "ANN (AT)", "SNN-BP (AT)"}
    # each row's training time is its whole chain's, as the checkpoints recorded it (a tiny model's step may round
    # to 0.0 s on a fast CPU, so the test sums the headers instead of asking for a positive time)
    chains = {"ANN": ["ann"], "SNN-BP": ["ann", "snn_conv", "snn_bp"]}
    for label, row in rows.items():
        defence = "AT" if label.endswith("(AT)") else None
        recorded = [checkpoints.read_header(zoo.path(kind, "main", defence))["metadata"]["training_seconds"]
                    for kind in chains[label.split(" (")[0]]]
        assert row["training_seconds"] == round(sum(recorded), 1)
    outcome = lambda cell, name: EvaluationResult.from_dict(cell["result"]["results"][name])  # noqa: E731
    comparisons = {(r["comparison"], r["a"], r["b"]): r for r in _json(out / "comparisons.json")["rows"]}
    for target in protocol:
        label = rows[next(m for m in rows if m == ("ANN" if target[0] == "ann" else "SNN-BP")
                          + ("" if target[1] is None else " (AT)"))]["model"]
        gap = comparisons[(label, "PGD-10", "protocol")]
        by_hand = (outcome(attacked[target], "target").per_image("adversarial")
                   - outcome(protocol[target], "robust").per_image("adversarial")).mean()
        assert gap["difference"] == pytest.approx(100 * by_hand) and gap["family"] == "gap: reference attack - protocol"
        assert rows[label]["reference"] == pytest.approx(100 * outcome(attacked[target], "target").adversarial_accuracy)
    assert ("robust accuracy", "SNN-BP (AT)", "ANN (AT)") in comparisons
    assert ("robust accuracy", "ANN (AT)", "ANN") in comparisons
    assert ("robust accuracy", "SNN-BP (AT)", "SNN-BP") in comparisons


def test_a_cached_snn_without_its_parents_checkpoints_is_evaluated_with_no_training_time(tmp_path):
    """A model cache may hold an SNN-BP without the SNN-conv it came from (copied alone, or the parent deleted):
    the zoo loads it, and the study's cell reports its training time as unknown instead of failing after the
    attacks."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(VERSIONS, "test", TEST_BATTERY)
        patch.setitem(LARGE_EPS, "steps", 8)
        config = load_config(config_path("tiny"), {"studies": {"protocol": {
            "version": "test", "eps": 0.02, "fresh_draws": 2, "kinds": ["snn_bp"], "sources": [], "test_count": 4}}})
        zoo = ModelZoo(config, tmp_path / "models", progress=False)
        zoo.get("snn_bp")
        zoo.path("snn_conv").unlink()
        run_study("protocol", config, tmp_path, zoo=ModelZoo(config, tmp_path / "models", progress=False),
                  progress=False)
    [row] = _json(tmp_path / "protocol" / "table.json")["rows"]
    assert row["model"] == "SNN-BP" and row["training_seconds"] is None and row["n_images"] == 4
