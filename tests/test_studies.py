"""Every study end to end on the tiny preset (one shared model cache), and the study layer's own pieces."""
import json
import math
import re

import numpy as np
import pytest
import torch

from snn_adv.attack_specs import at_eps
from snn_adv.config import load_config
from snn_adv.configs import config_path
from snn_adv.studies import STUDIES, run_study
from snn_adv.studies.layerwise import layer_activations, relative_change, relative_change_per_image
from snn_adv.zoo import LABELS, ModelZoo
from test_stats import hand_bootstrap_interval

pytestmark = pytest.mark.spikingjelly_versions  # CI runs this file under each SpikingJelly version

TINY = config_path("tiny")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("studies")
    # a data root that must not leak into results (the bundled subset ignores it)
    config = load_config(TINY, {"data": {"root": str(tmp_path_factory.mktemp("data-root-of-this-machine"))}})
    zoo = ModelZoo(config, out / "models", progress=False)
    # every study of the preset (the protocol study has its own tests: tests/test_protocol_study.py)
    tables = {name: run_study(name, config, out, zoo=zoo, progress=False) for name in STUDIES if name in config["studies"]}
    return out, config, zoo, tables


def _rows(out, name, stem="table"):
    return json.loads((out / name / f"{stem}.json").read_text())["rows"]


def test_every_study_writes_table_csv_json_plots_and_cells(tiny_run):
    out, config, _, tables = tiny_run
    assert set(tables) == set(STUDIES) - {"protocol"}
    for name in tables:
        folder = out / name
        table = (folder / "table.md").read_text()
        assert table.startswith("| ")
        sections = [(folder / f).read_text() for f in ("checks.md", "comparisons.md", "growth.md") if (folder / f).is_file()]
        assert all(s in tables[name] for s in [table, *sections]), name  # what run_study returns is what it wrote
        assert (folder / "table.csv").is_file() and list(folder.glob("*.png")), name
        for cell in (folder / "cells").glob("*.json"):
            record = json.loads(cell.read_text())
            assert record["settings"]["study"] == name and "git_commit" in record["provenance"]
    # (the timesteps and leak sweeps add SNN-BPs trained at their points: tests/test_sweep_methods.py)
    assert {p.name.split("-")[0] + "-" + p.name.split("-")[1] for p in (out / "models").glob("*.pt")} == {
        f"{k}-{r}" for k in ("ann", "snn_conv", "snn_bp") for r in ("main", "source")}
    assert not list((out / "models").glob("*.partial"))  # a finished model leaves no training state behind


def test_self_check_verdicts_come_from_their_paired_tests(tiny_run):
    out, *_ = tiny_run
    rows = {(r["target"], r["condition"]): r for r in _rows(out, "robustness")}
    seen = set()
    for name in ("robustness", "eps", "leak"):
        for check in json.loads((out / name / "checks.json").read_text()):
            values = check["values"]
            p_value = values.get("p_value_corrected", values.get("comparison", {}).get("p_value"))
            assert check["passed"] is (p_value >= 1 - values["level"]), check  # the verdict is the test's
            seen.add(check["name"].split("[")[0])
            if check["name"].startswith("whitebox_not_weaker_than_transfer") and name == "robustness":
                target, attack = check["detail"].split(":")[0].split(", ")
                source = check["name"].split("[")[1].rstrip("']")
                assert values["whitebox"] * 100 == pytest.approx(rows[(target, f"{attack} WB")]["accuracy"])
                assert values["transfer"] * 100 == pytest.approx(rows[(target, f"{attack} BB from {source}")]["accuracy"])
    assert seen == {"whitebox_not_weaker_than_transfer", "not_weaker_than_FGSM", "accuracy_falls_with_eps"}


def test_robustness_table_has_intervals_and_common_random_numbers(tiny_run):
    from scipy.stats import binomtest

    from snn_adv.studies.common import results_of

    out, config, _, _ = tiny_run
    rows = _rows(out, "robustness")
    n, seeds = config["data"]["test_count"], len(config["eval_seeds"])
    # 3 targets x (clean + 2 attacks x (whitebox + 3 blackbox sources) + the worst of them)
    assert len(rows) == 3 * (1 + 2 * 4 + 1) and all(r["n_images"] == n and r["n_seeds"] == seeds for r in rows)
    for r in rows:
        if r["accuracy"] is not None:
            assert 0 <= r["accuracy_low"] <= r["accuracy"] <= r["accuracy_high"] <= 100
            # an accuracy over n images and S seeds is a multiple of 100/(n*S)
            assert r["accuracy"] * n * seeds / 100 == pytest.approx(round(r["accuracy"] * n * seeds / 100))
    ann = {r["condition"]: r for r in rows if r["target"] == "ANN"}
    # a deterministic ANN: binary per-image outcomes, so the interval is the exact Clopper-Pearson one
    exact = binomtest(round(ann["clean"]["accuracy"] * n / 100), n).proportion_ci(0.95, "exact")
    assert (ann["clean"]["accuracy_low"], ann["clean"]["accuracy_high"]) == pytest.approx((100 * exact.low, 100 * exact.high))
    assert ann["PGD WB"]["accuracy"] <= ann["clean"]["accuracy"]
    # every cell scores a target on the same Poisson draws: its clean outcomes are identical in every cell
    clean = {}
    for cell in (out / "robustness" / "cells").glob("*.json"):
        for target, result in results_of(json.loads(cell.read_text())).items():
            clean.setdefault(target, []).append(result.clean_correct)
    assert clean.keys() == {"ann", "snn_conv", "snn_bp"}
    for outcomes in clean.values():
        assert len(outcomes) >= 4 and all((o == outcomes[0]).all() for o in outcomes)


def test_each_target_s_worst_of_all_attacks_is_the_and_of_its_cells(tiny_run):
    """An image counts under a Poisson seed only if no attack of the table (whitebox or transfer) fooled it there;
    the targets are compared under it."""
    from snn_adv.studies.common import results_of
    from snn_adv.studies.robustness import WORST

    out, *_ = tiny_run
    attacked = {}
    for path in (out / "robustness" / "cells").glob("*.json"):
        record = json.loads(path.read_text())
        if record["settings"]["attack"]["name"] != "clean":
            for target, result in results_of(record).items():
                attacked.setdefault(target, []).append(result.adversarial_correct)
    rows = {r["target"]: r for r in _rows(out, "robustness") if r["condition"] == WORST}
    for kind, outcomes in attacked.items():
        assert len(outcomes) == 2 * 4  # 2 attacks x (whitebox + 3 sources)
        by_hand = 100 * np.logical_and.reduce(outcomes).mean()
        row = rows[LABELS[kind]]
        assert row["accuracy"] == pytest.approx(by_hand) and row["mode"] == "every attack"
        assert row["accuracy"] <= min(r["accuracy"] for r in _rows(out, "robustness")
                                      if r["target"] == LABELS[kind] and r["condition"] != "clean")
    comparisons = {(r["comparison"], r["a"], r["b"]) for r in _rows(out, "robustness", "comparisons")}
    assert (WORST, "SNN-BP", "ANN") in comparisons


def test_a_worst_of_row_is_the_and_of_the_rows_it_names_and_crafts_nothing(tiny_run):
    """``worst_of``: the per-sample worst case of other entries' whitebox cells, not a cell of its own."""
    from snn_adv.studies.common import results_of

    out, config, *_ = tiny_run
    entry = next(a for a in config["studies"]["strong"]["attacks"] if a["name"] == "worst_of")
    cells = [json.loads(p.read_text()) for p in (out / "strong" / "cells").glob("*.json")]
    assert all(c["settings"]["attack"]["name"] != "worst_of" for c in cells)
    named = {c["settings"]["attack"].get("label"): results_of(c)["snn_bp"] for c in cells}
    by_hand = np.logical_and.reduce([named[label].adversarial_correct for label in entry["of"]])
    rows = {r["condition"]: r for r in _rows(out, "strong")}
    row = rows[f"{entry['label']} WB"]
    assert row["accuracy"] == pytest.approx(100 * by_hand.mean()) and row["mode"] == "whitebox"
    assert row["accuracy"] < min(rows[f"{label} WB"]["accuracy"] for label in entry["of"])  # the AND bites here


def test_a_target_on_fewer_images_is_compared_on_the_images_both_saw(tiny_run, tmp_path):
    """``test_counts`` (e.g. SNN-conv at a large T): that kind is evaluated on the first images only, in every cell
    (clean, whitebox, blackbox), the others on all; a paired comparison with it uses the images both saw."""
    from snn_adv.studies.common import results_of

    _, config, zoo, _ = tiny_run
    n = config["data"]["test_count"]
    few = n // 2
    fewer = load_config(TINY, {"data": config["data"], "studies": {"robustness": {"test_counts": {"snn_conv": few}}}})
    run_study("robustness", fewer, tmp_path, zoo=zoo, progress=False)
    clean = None
    for path in (tmp_path / "robustness" / "cells").glob("*.json"):
        record = json.loads(path.read_text())
        results = results_of(record)
        assert record["settings"].get("test_counts") == ({"snn_conv": few} if "snn_conv" in results else None)
        for target, result in results.items():
            assert result.index.tolist() == list(range(few if target == "snn_conv" else n)), target
        if record["settings"]["source"] is None:
            clean = results
    assert {r["target"]: r["n_images"] for r in _rows(tmp_path, "robustness")} == {"ANN": n, "SNN-conv": few, "SNN-BP": n}
    comparisons = {(r["comparison"], r["a"], r["b"]): r for r in _rows(tmp_path, "robustness", "comparisons")}
    for a, b in (("snn_conv", "ann"), ("snn_bp", "snn_conv")):
        row = comparisons[("clean", LABELS[a], LABELS[b])]
        by_hand = 100 * (clean[a].per_image("clean")[:few] - clean[b].per_image("clean")[:few]).mean()
        assert row["n_images"] == few and row["difference"] == pytest.approx(by_hand)
    assert comparisons[("clean", "SNN-BP", "ANN")]["n_images"] == n


def test_every_sweep_comparison_says_which_points_it_compares(tiny_run):
    """No two comparisons of a sweep read alike (e.g. a quantisation comparison names its T)."""
    out, *_ = tiny_run
    for name in ("timesteps", "leak", "eps"):
        rows = _rows(out, name, "comparisons")
        names = [(r["comparison"], r["a"], r["b"]) for r in rows]
        assert rows and len(set(names)) == len(names), name
    assert any(r["comparison"].endswith(" at T=2") and r["b"] == "no quantisation"
               for r in _rows(out, "timesteps", "comparisons"))


def test_a_comparison_row_shows_a_zero_difference_of_thirds_as_zero():
    from snn_adv.stats import paired_difference
    from snn_adv.studies.common import comparison_row

    x, y = np.array([2, 1, 3, 0, 2, 1]) / 3, np.array([1, 2, 2, 1, 1, 2]) / 3  # differences cancel exactly
    comparison = paired_difference(x, y)
    assert comparison.difference != 0  # float rounding of thirds
    row = comparison_row("what", "a", "b", comparison, "family")
    assert row["difference"] == 0 and row["difference_high"] == pytest.approx(100 * comparison.high)


def test_eps_zero_attack_equals_clean_and_eps_sweep_runs(tiny_run):
    out, *_ = tiny_run
    for r in _rows(out, "eps"):
        if r["eps"] == 0:
            assert (r["adversarial"], r["adversarial_low"], r["adversarial_high"]) == (r["clean"], r["clean_low"], r["clean_high"])
    kinds = {r["model"] for r in _rows(out, "eps")}
    assert kinds == {"ANN", "SNN-BP"}
    comparisons = json.loads((out / "eps" / "comparisons.json").read_text())["rows"]
    assert {c["b"] for c in comparisons} == {"eps 0/255"} and all(c["verdict"] for c in comparisons)


def test_layerwise_models_at_another_leak_are_the_snn_bps_trained_at_it(tiny_run):
    """The paper's method (``retrain`` by default): a layerwise entry's leak selects the SNN-BP trained at that leak,
    the very model of the leak study, not the leak changed on the one trained network."""
    out, _, zoo, _ = tiny_run
    leak_models = {}
    for path in (out / "leak" / "cells").glob("*.json"):
        settings = json.loads(path.read_text())["settings"]
        leak_models[settings["knobs"]["leak"]] = settings["model"]
    layerwise = [json.loads(p.read_text())["settings"] for p in (out / "layerwise" / "cells").glob("*.json")]
    at_leak = [s for s in layerwise if s["kind"] == "snn_bp" and s["knobs"].get("leak") == 0.9]
    assert at_leak and all(s["model"] == leak_models[0.9] == zoo.key("snn_bp", leak=0.9) != zoo.key("snn_bp")
                           for s in at_leak)
    labels = {r["model"] for r in _rows(out, "layerwise")}
    assert "SNN-BP (leak 0.9, trained at it)" in labels


def test_the_zoo_names_the_file_of_a_model_cached_by_another_version(tiny_run, tmp_path):
    from test_checkpoints import _rewrite

    from snn_adv.checkpoints import VersionMismatchError

    _, config, zoo, _ = tiny_run
    zoo.get("ann")
    stale = tmp_path / zoo.path("ann").name
    stale.write_bytes(zoo.path("ann").read_bytes())
    _rewrite(stale, package_version="0.0.1")
    with pytest.raises(VersionMismatchError, match=f"{stale.name}.*'0.0.1'.*delete the file to retrain"):
        ModelZoo(config, tmp_path, progress=False).get("ann")


def test_layerwise_relative_change_against_hand_computation(tiny_run):
    out, config, zoo, _ = tiny_run
    rows = _rows(out, "layerwise")
    assert {r["quantity"] for r in rows} == {"activation", "spike_rate", "membrane"}
    assert all(r["relative_change"] >= 0 for r in rows)
    # layer_activations of the ANN: the ReLU outputs, checked against running the body by hand
    ann = zoo.get("ann")
    x = torch.rand(4, 1, 28, 28)
    acts = layer_activations(ann, x)["activation"]
    h, expected = ann.normalize(x), []
    for layer in ann.body:
        h = layer(h)
        if isinstance(layer, torch.nn.ReLU):
            expected.append(h.flatten(1))
    assert len(acts) == len(expected) and all(torch.allclose(a, b) for a, b in zip(acts, expected))
    a, b = torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.tensor([[3.0, 5.0], [1.0, 1.0]])
    assert relative_change(a, b).tolist() == [pytest.approx(0.2)]  # the all-zero row is skipped
    per_image = relative_change_per_image(a, b).tolist()  # ... or NaN in its place, keeping the image order
    assert per_image[0] == pytest.approx(0.2) and math.isnan(per_image[1])


def layerwise_cells_by_hand(out, config):
    """``{(model label, perturbation, quantity): [layer][image] mean over the seeds where defined, or None}`` from
    the layerwise cells, computed with plain loops; the model labels come from the table rows of each cell."""
    seeds = config["eval_seeds"]
    labels = {r["cell"]: r["model"] for r in _rows(out, "layerwise")}
    values = {}
    for path in (out / "layerwise" / "cells").glob("*.json"):
        record = json.loads(path.read_text())
        result = record["result"]
        for quantity in {k.split("/")[0] for k in result if "/" in k}:
            layers = []
            for layer in range(len(result[f"{quantity}/{seeds[0]}"])):
                per_image = []
                for i in range(len(result[f"{quantity}/{seeds[0]}"][layer])):
                    defined = [result[f"{quantity}/{e}"][layer][i] for e in seeds
                               if result[f"{quantity}/{e}"][layer][i] is not None]
                    per_image.append(sum(defined) / len(defined) if defined else None)
                layers.append(per_image)
            values[labels[path.stem], record["settings"]["perturbation"], quantity] = layers
    return values


def test_layerwise_rows_are_means_over_images_with_their_bootstrap_interval(tiny_run):
    out, config, _, _ = tiny_run
    n = config["studies"]["layerwise"].get("test_count", config["data"]["test_count"])
    rows = {(r["model"], r["perturbation"], r["quantity"], r["layer"]): r for r in _rows(out, "layerwise")}
    by_hand = layerwise_cells_by_hand(out, config)
    assert len(config["eval_seeds"]) > 1 and len(rows) == sum(len(layers) for layers in by_hand.values())
    bootstrapped = set()
    for (model, perturbation, quantity), layers in by_hand.items():
        for layer, per_image in enumerate(layers, 1):
            assert len(per_image) == n  # one value per image: paired across cells
            defined = np.array([v for v in per_image if v is not None])
            row = rows[model, perturbation, quantity, layer]
            assert row["n_images"] == len(defined) > 0
            assert row["relative_change"] == pytest.approx(defined.mean(), rel=1e-12)
            assert row["relative_change_low"] <= row["relative_change"] <= row["relative_change_high"]
            if quantity not in bootstrapped:  # the interval is the percentile bootstrap over images (seed 0)
                bootstrapped.add(quantity)
                assert (row["relative_change_low"], row["relative_change_high"]) == pytest.approx(
                    hand_bootstrap_interval(defined), abs=1e-12)
    assert bootstrapped == {"activation", "spike_rate", "membrane"}
    assert "relative_change [low, high]" in (out / "layerwise" / "table.md").read_text()


def test_layerwise_growth_is_the_paired_difference_of_the_cells_per_image_values(tiny_run):
    out, config, _, tables = tiny_run
    by_hand = layerwise_cells_by_hand(out, config)
    growth = _rows(out, "layerwise", "growth")
    within = {(r["model"], r["perturbation"], r["quantity"]): r for r in growth if " vs " not in r["model"]}
    between = {(r["model"], r["perturbation"]): r for r in growth if " vs " in r["model"]}
    assert within.keys() == by_hand.keys() and len(within) + len(between) == len(growth)

    def check(row, differences, grows, shrinks):
        assert row["n_images"] == len(differences) > 0
        assert row["difference"] == pytest.approx(sum(differences) / len(differences), rel=1e-9, abs=1e-15)
        assert row["difference_low"] <= row["difference"] <= row["difference_high"]
        # the verdict follows the Holm-adjusted p-value within the row's family (by hand: m - rank + 1 times p)
        family = sorted(r["p_value"] for r in growth if r["family"] == row["family"] and r["p_value"] is not None)
        steps = [min(1.0, (len(family) - i) * p) for i, p in enumerate(family)]
        assert row["p_holm"] == pytest.approx(max(steps[:family.index(row["p_value"]) + 1]))
        expected = "inconclusive" if row["p_holm"] >= 0.05 else grows if row["difference"] > 0 else shrinks
        assert row["verdict"] == expected

    for key, row in within.items():  # last hidden layer minus the first, over the images where both are defined
        first, last = by_hand[key][0], by_hand[key][-1]
        assert row["comparison"] == f"layer {len(by_hand[key])} - layer 1"
        check(row, [b - a for a, b in zip(first, last) if a is not None and b is not None], "grows", "shrinks")

    def log_growth(layers):
        return [math.log(b / a) if a and b else None for a, b in zip(layers[0], layers[-1])]

    models = {m for m, _, q in by_hand if q == "spike_rate"}
    assert between.keys() == {(f"{snn} vs ANN", p) for snn in models for p in config["studies"]["layerwise"]["perturbations"]}
    for (pair, perturbation), row in between.items():
        snn = pair.split(" vs ")[0]
        ann = log_growth(by_hand["ANN", perturbation, "activation"])
        spiking = log_growth(by_hand[snn, perturbation, "spike_rate"])
        check(row, [s - a for s, a in zip(spiking, ann) if s is not None and a is not None],
              f"{snn} grows more", f"{snn} grows less")
    assert "Growth of the perturbation" in tables["layerwise"]


def test_layerwise_per_image_means_skip_undefined_seeds_and_growth_reports_no_pairs():
    from snn_adv.studies.layerwise import growth_rows, per_image_changes

    # 2 seeds x 2 layers x 3 images; None = the clean activation of that image was all zero under that seed
    result = {"spike_rate/0": [[0.1, None, None], [0.2, 0.3, None]], "spike_rate/1": [[0.3, 0.5, None], [0.4, None, None]]}
    changes = per_image_changes(result, "spike_rate", [0, 1])
    assert changes.shape == (2, 3) and np.isnan(changes[:, 2]).all()
    assert changes[:, :2].flatten().tolist() == pytest.approx([0.2, 0.5, 0.3, 0.3])
    silent = {("snn", "whitebox", "spike_rate"): np.array([[np.nan, np.nan], [0.1, 0.2]]),
              ("ann", "whitebox", "activation"): np.array([[0.1, 0.2], [0.3, 0.5]])}
    rows = growth_rows(silent, {"snn": "SNN", "ann": "ANN"})
    assert [(r["model"], r["n_images"], r["verdict"], r["difference"]) for r in rows] == [
        ("SNN", 0, "no image with both values", None), ("ANN", 2, "inconclusive", pytest.approx(0.25)),
        ("SNN vs ANN", 0, "no image with both values", None)]


def test_snn_layer_activations_are_rates_and_membranes(tiny_run):
    _, _, zoo, _ = tiny_run
    snn = zoo.variant("snn_bp", timesteps=3)
    acts = layer_activations(snn, torch.rand(2, 1, 28, 28))
    assert len(acts["spike_rate"]) == len(acts["membrane"]) == len(snn.neurons())
    for rate in acts["spike_rate"]:
        assert ((rate * 3).round() == rate * 3).all() and rate.min() >= 0 and rate.max() <= 1  # k/T for k spikes
    assert acts["membrane"][0].shape[1] == 3 * acts["spike_rate"][0].shape[1]
    assert not any(n.store_v_seq for n in snn.neurons())


def test_zoo_cache_reloads_identical_models(tiny_run):
    out, config, zoo, _ = tiny_run
    fresh = ModelZoo(config, out / "models", progress=False)
    x = torch.rand(3, 1, 28, 28)
    for kind in ("ann", "snn_conv", "snn_bp"):
        a, b = zoo.variant(kind), fresh.get(kind)
        for model in (a, b):
            if hasattr(model, "encoder"):
                model.encoder.manual_seed(5)
        with torch.no_grad():
            assert torch.equal(a(x), b(x)), kind


def test_unknown_study_and_missing_section_are_clear_errors(tiny_run):
    out, config, *_ = tiny_run
    with pytest.raises(ValueError, match="study"):
        run_study("nope", config, out)
    with pytest.raises(ValueError, match="no section"):
        run_study("leak", {**config, "studies": {}}, out)


def test_eps_sweep_scales_the_pgd_step_with_eps():
    spec = {"name": "pgd", "alpha_over_eps": 0.25, "steps": 7}
    assert at_eps(spec, 8 / 255) == {"name": "pgd", "eps": 8 / 255, "alpha": 2 / 255, "steps": 7}
    assert at_eps(spec, 32 / 255)["alpha"] == 8 / 255
    assert at_eps({"name": "fgsm"}, 0.1) == {"name": "fgsm", "eps": 0.1}


# ---------------------------------------------------------------------------------------------------------------
# Keys and staleness: every input that can change a number is in the key of what it changes
# ---------------------------------------------------------------------------------------------------------------
def test_every_output_file_is_free_of_machine_paths(tiny_run):
    out, config, *_ = tiny_run
    machine_paths = [config["data"]["root"], str(out), str(out.resolve())]
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".csv"):
            text = path.read_text()
            assert not [p for p in machine_paths if p in text], path


def test_model_recipes_and_cells_are_keyed_by_seed_and_data(tiny_run, tmp_path, monkeypatch):
    from snn_adv.studies.common import StudyContext

    _, config, zoo, _ = tiny_run
    variants = {
        "seed": {"seed": 7},
        "subset_seed": {"data": {"subset_seed": 1}},
        "train_count": {"data": {"train_count": 100}},
    }
    for name, override in variants.items():
        changed = load_config(TINY, {**override, "data": {**config["data"], **override.get("data", {})}})
        other = ModelZoo(changed, tmp_path, progress=False)
        for kind in ("ann", "snn_conv", "snn_bp"):
            assert other.key(kind) != zoo.key(kind), (name, kind)
        if name != "train_count":  # the test subset does not depend on the training subset
            assert StudyContext("eps", changed, tmp_path).cell(x=1) != StudyContext("eps", config, tmp_path).cell(x=1)
    # the data enters as a fingerprint of its content: other bytes, other keys
    import snn_adv.zoo as zoo_module

    monkeypatch.setattr(zoo_module, "dataset_fingerprint", lambda name, root=None: "0123456789abcdef")
    assert ModelZoo(config, tmp_path).key("snn_bp") != zoo.key("snn_bp")


def _write_idx_folder(folder, test_label=0):
    """A tiny Fashion-MNIST-layout idx folder (4 gzipped files: 3 images of 28x28 per split)."""
    import gzip
    import struct

    folder.mkdir()
    for split, (images, labels) in {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                                    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}.items():
        pixels = struct.pack(">BBBBIII", 0, 0, 8, 3, 3, 28, 28) + bytes(range(256)) * 9 + bytes(3 * 784 - 2304)
        label_bytes = struct.pack(">BBBBI", 0, 0, 8, 1, 3) + bytes([1, 2, test_label if split == "t10k" else 3])
        (folder / f"{images}.gz").write_bytes(gzip.compress(pixels))
        (folder / f"{labels}.gz").write_bytes(gzip.compress(label_bytes))
    return folder


def test_fingerprint_follows_the_content_not_the_path(tmp_path):
    from snn_adv.data import load_tensors
    from snn_adv.data.fingerprint import dataset_fingerprint

    a, b = _write_idx_folder(tmp_path / "a"), _write_idx_folder(tmp_path / "b")
    assert load_tensors("fashion-mnist", "test", root=a)[1].tolist() == [1, 2, 0]  # a folder the loader reads
    assert dataset_fingerprint("fashion-mnist", a) == dataset_fingerprint("fashion-mnist", b)  # another path, same data
    first = dataset_fingerprint("fashion-mnist", b)
    (b / "t10k-labels-idx1-ubyte.gz").unlink()
    _write_idx_folder(tmp_path / "c", test_label=4)
    (tmp_path / "c" / "t10k-labels-idx1-ubyte.gz").rename(b / "t10k-labels-idx1-ubyte.gz")  # one test label changed
    assert dataset_fingerprint("fashion-mnist", b) != first == dataset_fingerprint("fashion-mnist", a)


def test_bad_evaluation_data_is_refused_before_any_cell(tiny_run, tmp_path, monkeypatch):
    import snn_adv.data
    from snn_adv.studies.common import check_evaluation_data

    _, config, zoo, _ = tiny_run
    images, labels = snn_adv.data.load_tensors("fashion-mnist-bundled", "test", count=16)
    bad_labels = labels.clone()
    bad_labels[3] = 200
    monkeypatch.setattr(snn_adv.data, "load_tensors", lambda *a, **k: (images, bad_labels))
    with pytest.raises(ValueError, match=r"label\(s\) outside \[0, 10\).*200"):
        run_study("eps", config, tmp_path, zoo=zoo, progress=False)
    assert not (tmp_path / "eps" / "cells").exists()  # nothing computed, nothing stored
    for bad, match in [((images * 2, labels), r"\[0, 1\]"), ((images[:, :, :20], labels), "shape"),
                       ((images, labels.float()), "integers"), ((images, labels[:5]), "integers")]:
        with pytest.raises(ValueError, match=match):
            check_evaluation_data(*bad, "fashion-mnist-bundled")
    check_evaluation_data(images, labels, "fashion-mnist-bundled")


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resumed_run_rewrites_every_output_file_byte_identically(tiny_run):
    """A rerun of a finished study, and one after deleting some cells (so some are recomputed, some read back),
    write the bytes of the fresh run."""
    out, config, zoo, _ = tiny_run
    folder = out / "timesteps"
    before = _snapshot(folder)
    run_study("timesteps", config, out, zoo=zoo, progress=False)
    assert _snapshot(folder) == before
    cells = sorted((folder / "cells").glob("*.json"))
    for cell in cells[::2]:
        cell.unlink()
    run_study("timesteps", config, out, zoo=zoo, progress=False)
    after = _snapshot(folder)
    recomputed = {k for k in after if k.parts[0] == "cells"}
    assert after.keys() == before.keys()
    # recomputed cells differ only in their timing; every table, plot and check file is byte-identical
    assert {k: v for k, v in after.items() if k not in recomputed} == {k: v for k, v in before.items() if k not in recomputed}
    for key in recomputed:
        a, b = json.loads(after[key]), json.loads(before[key])
        assert (a["settings"], a["result"]) == (b["settings"], b["result"])


def test_an_edited_result_cell_is_refused_and_recomputed_by_the_cli_flag(tiny_run, tmp_path, capsys):
    """One outcome flipped in a finished cell (its digest kept): the rerun refuses it, naming the file, instead of
    changing the table; ``snn-adv study --recompute`` computes that cell again and the table comes back."""
    from snn_adv.cells import DamagedCellError
    from snn_adv.cli import main

    out, config, zoo, _ = tiny_run
    folder = out / "eps"
    before = (folder / "table.md").read_bytes()
    cell = sorted((folder / "cells").glob("*.json"))[1]
    original, record = json.loads(cell.read_text()), json.loads(cell.read_text())
    outcomes = next(iter(record["result"]["results"].values()))["clean_correct"]
    outcomes[0][0] = 1 - outcomes[0][0]
    cell.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    with pytest.raises(DamagedCellError, match=rf"{cell.name}.*does not match its digest"):
        run_study("eps", config, out, zoo=zoo, progress=False)
    assert (folder / "table.md").read_bytes() == before
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps(config))
    argv = ["study", "eps", "--config", str(preset), "--out", str(out), "--quiet"]
    assert main(argv) == 2 and cell.name in capsys.readouterr().err
    assert main(argv + ["--recompute"]) == 0
    assert (folder / "table.md").read_bytes() == before
    assert json.loads(cell.read_text())["result"] == original["result"]  # recomputed, the same numbers


def test_orphan_temporary_files_are_removed_unless_another_run_is_live(tiny_run):
    import fcntl

    out, config, zoo, _ = tiny_run
    orphan = out / "eps" / "cells" / ".0123.json.abcd.tmp"
    orphan.write_text("{half a cell")
    with open(out / ".lock", "a") as live_run:  # another run holds the folder: its temporary files are not orphans
        fcntl.flock(live_run, fcntl.LOCK_SH)
        run_study("eps", config, out, zoo=zoo, progress=False)
        assert orphan.is_file()
    run_study("eps", config, out, zoo=zoo, progress=False)
    assert not orphan.exists()


# ---------------------------------------------------------------------------------------------------------------
# The stochastic-model protocol and `snn-adv evaluate`
# ---------------------------------------------------------------------------------------------------------------
def test_autoattack_standard_on_a_stochastic_target_is_refused_before_training(tmp_path):
    from snn_adv.studies import run_studies

    config = load_config(TINY)
    autoattack = {"name": "torchattacks", "class": "AutoAttack", "kwargs": {"norm": "Linf", "eps": 0.1}}
    config["studies"]["strong"]["attacks"].append(autoattack)  # version 'standard' by default
    with pytest.raises(ValueError, match=r"studies\.strong\.attacks\[5\].*SNN-BP.*version='rand'"):
        run_studies(["eps", "strong"], config, tmp_path, progress=False)
    assert not (tmp_path / "models").exists()  # refused before any model was trained
    autoattack["kwargs"]["version"] = "rand"
    from snn_adv.studies import check_study_protocols

    check_study_protocols("strong", config)  # the randomised-model protocol is accepted


def test_cli_evaluate_prints_the_engine_numbers_with_intervals_and_verdicts(tiny_run, tmp_path, capsys):
    from functools import partial

    from snn_adv import checkpoints
    from snn_adv.attacks import FGSM
    from snn_adv.cli import main
    from snn_adv.data import load_tensors
    from snn_adv.evaluation import evaluate

    out, _, zoo, _ = tiny_run
    ann, snn, source = zoo.path("ann"), zoo.path("snn_bp"), zoo.path("ann", "source")
    argv = ["evaluate", str(ann), str(snn), "--source", str(source), "--attacks", "tiny", "--test-count", "20",
            "--eval-seeds", "0", "1", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Self-checks" in printed and "whitebox_not_weaker_than_transfer" in printed and "PASS" in printed
    rows = {(r["target"], r["condition"]): r for r in json.loads((tmp_path / "table.json").read_text())["rows"]}
    assert len(rows) == 2 * (1 + 2 * 2 + 1)  # 2 targets x (clean + 2 attacks x (whitebox + 1 source) + their worst)
    # the whitebox FGSM cell of the SNN is what the engine gives by hand
    images, labels = load_tensors("fashion-mnist-bundled", "test", count=20)
    by_hand = evaluate(checkpoints.load(snn), (images, labels), partial(FGSM, eps=0.1), seed=0, scoring_seeds=[0, 1],
                       batch_size=100, progress=False)
    row = rows[(snn.stem, "FGSM WB")]
    assert row["accuracy"] == pytest.approx(100 * by_hand.adversarial_accuracy)
    assert (row["accuracy_low"], row["accuracy_high"]) == pytest.approx(
        tuple(100 * v for v in by_hand.confidence_interval("adversarial")))
    assert f"| {snn.stem} |" in (tmp_path / "table.md").read_text()
    autoattack = tmp_path / "aa.json"
    autoattack.write_text(json.dumps([{"name": "torchattacks", "class": "AutoAttack", "kwargs": {"eps": 0.1}}]))
    capsys.readouterr()
    assert main(["evaluate", str(snn), "--attacks", str(autoattack), "--test-count", "10", "--quiet"]) == 2
    assert re.search(f"snn-adv: error: .*on target {snn.stem}.*version='rand'", capsys.readouterr().err)


class _ShiftAttack:
    """A contributor's toy attack: ``eps`` added to every pixel (clipped to [0, 1]); enough to see it run everywhere."""

    def __init__(self, model, eps: float = 0.1, seed=None):
        self.model, self.eps, self.seed = model, eps, seed

    def __call__(self, images, labels):
        return (images + self.eps).clamp(0, 1)


def test_a_registered_attack_runs_in_build_attack_the_schema_the_cli_and_a_study(tiny_run, tmp_path, monkeypatch, capsys):
    """Adding an attack is its class plus one registry line; an argument it does not take is refused at load."""
    from snn_adv import attack_specs, checkpoints
    from snn_adv.cli import main
    from snn_adv.config import ConfigError, load_attacks, merge, validate_config

    monkeypatch.setitem(attack_specs.ENTRIES, "shift", attack_specs.class_entry(_ShiftAttack))  # the one line
    out, config, zoo, _ = tiny_run
    entry = {"name": "shift", "eps": 0.2, "label": "SHIFT"}
    attack = attack_specs.build_attack(entry, checkpoints.load(zoo.path("ann")), seed=3)
    assert isinstance(attack, _ShiftAttack) and (attack.eps, attack.seed) == (0.2, 3)
    with pytest.raises(ConfigError, match=r"'attacks\[0\].steps': not an argument of attack 'shift' \(it takes eps\)"):
        load_attacks(str(_write_json(tmp_path / "bad.json", [{"name": "shift", "steps": 3}])))
    attacks = _write_json(tmp_path / "shift.json", [entry])
    assert load_attacks(str(attacks)) == [entry]
    assert main(["evaluate", str(zoo.path("ann")), "--attacks", str(attacks), "--test-count", "10", "--quiet"]) == 0
    assert "SHIFT WB" in capsys.readouterr().out
    study = validate_config(merge(config, {"studies": {"robustness": {"attacks": [entry], "kinds": ["ann"]}}}))
    table = run_study("robustness", study, tmp_path / "study", zoo=zoo, progress=False)
    assert "SHIFT" in table


def _write_json(path, value):
    path.write_text(json.dumps(value))
    return path
