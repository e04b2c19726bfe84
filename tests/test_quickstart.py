"""The main job, `snn-adv quickstart`, end to end on the bundled subset with a reduced budget."""
import json

import pytest

from snn_adv.cli import build_parser
from snn_adv.quickstart import quickstart

_EPS = 8 / 255
#: Overrides of the quickstart preset for a seconds-scale run: fewer images, epochs and steps.
TEST_BUDGET = {
    "eval_seeds": [0, 1],
    "eval_batch_size": 32,
    "data": {"train_count": 1000, "test_count": 32},
    "models": {"ann": {"epochs": 2}, "snn_conv": {"timesteps": 8, "calibration_count": 64},
               "snn_bp": {"timesteps": 4, "train_count": 64, "batch_size": 32}},
    "studies": {"robustness": {"attacks": [
        {"name": "fgsm", "eps": _EPS, "label": "FGSM"},
        {"name": "pgd", "eps": _EPS, "alpha": 2 / 255, "steps": 2, "random_start": True, "label": "PGD"},
    ]}},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "quickstart"
    return quickstart(out, overrides=TEST_BUDGET, progress=False)


def test_quickstart_writes_table_plot_and_all_pairs(run, capsys):
    folder = run / "robustness"
    for name in ("table.md", "table.csv", "table.json", "checks.md", "comparisons.md", "accuracy.png"):
        assert (folder / name).is_file(), name
    rows = json.loads((folder / "table.json").read_text())["rows"]
    pairs = {(r["target"], r["mode"], r["source"], r["attack"]) for r in rows}
    for target in ("ANN", "SNN-conv", "SNN-BP"):
        assert (target, "whitebox", "", "PGD") in pairs
        for source in ("ANN'", "SNN-conv'", "SNN-BP'"):  # blackbox incl. the cross pairs, separately seeded sources
            assert (target, "blackbox", source, "FGSM") in pairs
    clean = {r["target"]: r["accuracy"] for r in rows if r["condition"] == "clean"}
    assert clean["ANN"] > 30  # trained: well above the 10 % of chance even on the tiny budget
    provenance = json.loads((folder / "table.json").read_text())["provenance"]
    assert provenance["snn_adv"] and provenance["torch"]
    assert "| model | clean [low, high] |" in (folder / "table.md").read_text()


def test_quickstart_rerun_resumes_without_recomputing(run, capsys):
    before = {p.name: p.read_text() for p in (run / "robustness" / "cells").glob("*.json")}
    quickstart(run, overrides=TEST_BUDGET, progress=False)
    after = {p.name: p.read_text() for p in (run / "robustness" / "cells").glob("*.json")}
    assert before == after  # same files, untouched (a recomputed cell would record another duration)
    assert "SNN-BP" in capsys.readouterr().out


def test_cli_runs_quickstart_and_study_with_preset_and_overrides(monkeypatch, tmp_path):
    import importlib

    import snn_adv.studies
    from snn_adv.config import load_config
    from snn_adv.configs import config_path

    calls = {}
    monkeypatch.setattr(importlib.import_module("snn_adv.quickstart"), "quickstart",
                        lambda out, progress, recompute: calls.setdefault("quickstart", []).append((out, progress, recompute)))
    monkeypatch.setattr(snn_adv.studies, "run_studies",
                        lambda names, config, out, progress, recompute: calls.setdefault("study", (names, config, out, progress,
                                                                                           recompute)))
    for argv in (["quickstart", "--out", "x"], ["quickstart", "--out", "x", "--quiet", "--recompute"]):
        args = build_parser().parse_args(argv)
        assert args.func(args) == 0
    assert calls["quickstart"] == [("x", True, False), ("x", False, True)]

    argv = ["study", "all", "--config", "tiny", "--out", "o", "--set", "seed=3", "--set", "models.ann.epochs=5",
            "--data-root", str(tmp_path), "--quiet"]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    names, config, out, progress, recompute = calls["study"]
    # 'all': every study the config has a section for, in the registry's order
    assert names == [n for n in snn_adv.studies.STUDIES if n in config["studies"]] and "robustness" in names
    assert out == "o" and progress is False and recompute is False
    expected = load_config(config_path("tiny"))  # the shipped preset, with the overrides on top
    expected["seed"], expected["models"]["ann"]["epochs"], expected["data"]["root"] = 3, 5, str(tmp_path)
    assert config == expected
