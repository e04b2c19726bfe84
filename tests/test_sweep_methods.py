"""The timesteps and leak sweeps by the paper's method (a separate SNN-BP trained at each point from the same
converted network, evaluated at its own T) and by the second variant (the knob changed on one trained network)."""
import json

import pytest
import torch

from snn_adv import checkpoints
from snn_adv.config import load_config
from snn_adv.configs import config_path
from snn_adv.studies import run_study
from snn_adv.zoo import ModelZoo


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One model cache for the module (models are keyed by recipe, so the ANNs and conversions are trained once)."""
    return tmp_path_factory.mktemp("models")


def _run(tmp_path, models, name, section_changes=None):
    config = load_config(config_path("tiny"))
    config["studies"][name].update(section_changes or {})
    zoo = ModelZoo(config, models, progress=False)
    fetched = []  # (kind, role, overrides) of every model a cell evaluates
    get = zoo.get
    zoo.get = lambda kind, role="main", defence=None, **overrides: \
        fetched.append((kind, role, overrides)) or get(kind, role, defence, **overrides)
    run_study(name, config, tmp_path, zoo=zoo, progress=False)
    rows = json.loads((tmp_path / name / "table.json").read_text())["rows"]
    return config, zoo, rows, fetched


def _trained(zoo, overrides):
    """{(T, leak) recorded in the checkpoint: model} of the SNN-BPs trained with each of ``overrides``."""
    return {(m.arch["hybrid"]["timesteps"], m.arch["hybrid"]["leak"]): m
            for m in (checkpoints.load(zoo.path("snn_bp", **o)) for o in overrides)}


def test_timesteps_sweep_trains_an_snn_bp_at_each_t_from_one_conversion(tmp_path, models):
    config, zoo, rows, fetched = _run(tmp_path, models, "timesteps")
    recipe = config["models"]["snn_bp"]
    sweep_t = config["studies"]["timesteps"]["timesteps"]
    trained = _trained(zoo, [{"timesteps": t} for t in sweep_t])
    assert set(trained) == {(t, recipe["leak"]) for t in sweep_t}  # one SNN-BP per T, the recipe's among them
    assert {("snn_bp", "main", (("timesteps", t),)) for t in sweep_t} <= {(k, r, tuple(o.items())) for k, r, o in fetched}
    assert zoo.key("snn_bp", timesteps=recipe["timesteps"]) == zoo.key("snn_bp")  # the recipe's T: the main SNN-BP
    assert zoo.recipe("snn_bp", timesteps=2)["from"] == zoo.recipe("snn_bp")["from"]  # the same converted network
    a, b = (trained[(t, recipe["leak"])] for t in sweep_t)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # trained separately
    for row in rows:
        assert row["trained"] == "at this point" and row["model"] == "SNN-BP"
    assert {(r["timesteps"], r["levels"]) for r in rows} == {(t, q) for t in sweep_t
                                                             for q in config["studies"]["timesteps"]["levels"]}


def test_leak_sweep_trains_an_snn_bp_at_each_leak_at_fixed_t(tmp_path, models):
    config, zoo, rows, fetched = _run(tmp_path, models, "leak", {"timesteps": 3})
    leaks = config["studies"]["leak"]["leaks"]
    assert set(_trained(zoo, [{"leak": leak, "timesteps": 3} for leak in leaks])) == {(3, leak) for leak in leaks}
    assert {tuple(sorted(o.items())) for k, _, o in fetched if k == "snn_bp"} == {
        (("leak", leak), ("timesteps", 3)) for leak in leaks}
    assert {(r["leak"], r["timesteps"], r["mode"], r["trained"]) for r in rows} == {
        (leak, 3, mode, "at this point") for leak in leaks for mode in ("whitebox", "blackbox")}


def test_second_variant_changes_the_knob_on_one_trained_network(tmp_path, models):
    config, zoo, rows, fetched = _run(tmp_path, models, "leak", {"retrain": False})
    recipe = config["models"]["snn_bp"]
    assert {k for k, _, _ in fetched} == {"snn_bp", "ann"} and all(o == {} for _, _, o in fetched)
    assert set(_trained(zoo, [{}])) == {(recipe["timesteps"], recipe["leak"])}
    assert {r["trained"] for r in rows} == {"once"} and {r["leak"] for r in rows} == set(config["studies"]["leak"]["leaks"])
    with pytest.raises(ValueError, match="'retrain' = 'yes': must be true"):
        _run(tmp_path / "bad", models, "leak", {"retrain": "yes"})


def test_recipe_overrides_must_be_keys_of_the_section(tmp_path):
    zoo = ModelZoo(load_config(config_path("tiny")), tmp_path, progress=False)
    with pytest.raises(ValueError, match="'override of models.snn_bp' = 'timestep'"):
        zoo.key("snn_bp", timestep=2)
