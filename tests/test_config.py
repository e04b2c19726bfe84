"""Configs: every preset fits the schema; each kind of mistake is refused at load with its full key path."""
import json
import os
from pathlib import Path

import pytest

from snn_adv.config import ConfigError, check_output_dir, load_config, merge, parse_overrides
from snn_adv.configs import config_path

CONFIGS = Path(__file__).resolve().parent.parent / "snn_adv" / "configs"
TINY = CONFIGS / "tiny.json"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.json")))
def test_every_preset_fits_the_schema(name):
    assert load_config(CONFIGS / name)["studies"]


def _write(tmp_path, config, name="c.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("override,match", [
    ({"seeed": 1}, r"'seeed' is unknown; did you mean 'seed'\?"),
    ({"models": {"ann": {"epochz": 2}}}, r"'models.ann.epochz' is unknown; did you mean 'models.ann.epochs'\?"),
    ({"studies": {"robustness": {"attacks": [{"name": "pgd", "stepz": 3}]}}},
     r"'studies.robustness.attacks\[0\].stepz' is unknown; did you mean 'studies.robustness.attacks\[0\].steps'\?"),
    ({"studies": {"robustnes": {}}}, r"'studies.robustnes' is unknown; did you mean 'studies.robustness'\?"),
    ({"studies": {"robustness": {"attacks": [{"name": "fgsm", "steps": 7}]}}},
     r"'studies.robustness.attacks\[0\].steps': not an argument of attack 'fgsm' \(it takes eot, eps, grad_mode, "
     r"surrogate, targeted\)"),
    ({"data": {"zzz": 1}}, r"'data.zzz' is unknown; allowed here: dataset, root"),
    ({"seed": "zero"}, r"'seed' = \"zero\": must be an integer"),
    ({"seed": True}, r"'seed' = true: must be an integer"),
    ({"eval_batch_size": "16"}, r"'eval_batch_size' = \"16\": must be an integer >= 1"),
    ({"eval_batch_size": 0}, r"'eval_batch_size' = 0: must be an integer >= 1"),
    ({"data": 5}, r"'data' = 5: must be an object"),
    ({"data": {"dataset": "mnist-typo"}}, r"'data.dataset' = \"mnist-typo\": must be one of .*\"fashion-mnist\""),
    ({"eval_seeds": [0, 0, 0]}, r"'eval_seeds' = \[0, 0, 0\]: must not repeat a value \(0 appears 3 times\)"),
    ({"eval_seeds": []}, r"'eval_seeds' = \[\]: must hold at least 1 entry"),
    ({"studies": {"eps": {"eps_255": [0, 300]}}}, r"'studies.eps.eps_255\[1\]' = 300: must be a number in \[0, 255\]"),
    ({"studies": {"leak": {"leaks": [1.0, 1.5]}}}, r"'studies.leak.leaks\[1\]' = 1.5"),
    ({"models": {"snn_bp": {"leak": None}}}, r"'models.snn_bp.leak' = null: must be .*, not null"),
    ({"models": {"seeds": {"main": 1.5}}}, r"'models.seeds.main' = 1.5: must be an integer"),
    ({"studies": {"strong": {"attacks": [{"name": "pgd", "label": "A"}, {"name": "worst_of", "of": ["A", "B"]}]}}},
     r"'studies.strong.attacks\[1\].of': 'B' is not the label of another entry \(labels: 'A'\)"),
    ({"studies": {"strong": {"attacks": [{"name": "pgd", "label": "A"}, {"name": "worst_of"}]}}},
     r"'studies.strong.attacks\[1\]': a 'worst_of' entry needs 'of'"),
    # arguments an entry does not use are refused, never ignored (a torchattacks entry's top-level eps once was)
    ({"studies": {"strong": {"attacks": [{"name": "torchattacks", "class": "PGD", "eps": 0.1}]}}},
     r"'studies.strong.attacks\[0\].eps': not used by a torchattacks entry \(its arguments go in 'kwargs'"),
    ({"studies": {"strong": {"attacks": [{"name": "torchattacks", "kwargs": {"eps": 0.1}}]}}},
     r"'studies.strong.attacks\[0\]': a 'torchattacks' entry needs 'class'"),
    ({"studies": {"strong": {"attacks": [{"name": "pgd", "alpha_over_eps": 0.25}]}}},
     r"'studies.strong.attacks\[0\].alpha_over_eps': a step relative to eps needs the entry's 'eps'"),
    ({"studies": {"strong": {"attacks": [{"name": "pgd", "eps": 0.1, "alpha": 0.01, "alpha_over_eps": 0.25}]}}},
     r"set 'alpha' or 'alpha_over_eps', not both"),
])
def test_mistakes_are_refused_at_load_with_their_path(tmp_path, override, match):
    path = _write(tmp_path, merge(json.loads(TINY.read_text()), override))
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_every_problem_is_reported_at_once_and_missing_keys_named(tmp_path):
    config = json.loads(TINY.read_text())
    del config["models"]["ann"]["lr"]
    config["seed"] = "x"
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, config))
    assert len(error.value.problems) == 2 and "'models.ann.lr' is missing" in str(error.value)


def test_set_overrides_are_checked_like_the_file():
    with pytest.raises(ConfigError, match=r"with --set overrides: config key 'data' = 5: must be an object"):
        load_config(TINY, parse_overrides(["data=5"]))
    with pytest.raises(ConfigError, match="'models.ann.epochs' = \"two\""):
        load_config(TINY, parse_overrides(["models.ann.epochs=two"]))
    assert load_config(TINY, parse_overrides(["models.ann.epochs=3"]))["models"]["ann"]["epochs"] == 3
    for bad in ("novalue", "=1", "a..b=1"):
        with pytest.raises(ValueError, match="must look like KEY=VALUE"):
            parse_overrides([bad])


def test_a_set_that_study_sections_override_says_so(tmp_path):
    cpu = CONFIGS / "cpu.json"  # every study section sets its own test_count
    with pytest.raises(ValueError, match=r"--set data.test_count=500 is overridden by studies.robustness.test_count=\d+"
                                         r".*changes nothing"):
        load_config(cpu, parse_overrides(["data.test_count=500"]))
    assert load_config(cpu, parse_overrides(["studies.eps.test_count=50"]))["studies"]["eps"]["test_count"] == 50
    config = json.loads(TINY.read_text())  # tiny: no study sets test_count, so the global one is used
    assert load_config(TINY, parse_overrides(["data.test_count=8"]))["data"]["test_count"] == 8
    config["studies"]["eps"]["test_count"] = 4  # one study overrides: a warning that names it
    with pytest.warns(UserWarning, match="studies.eps.test_count=4"):
        load_config(_write(tmp_path, config), parse_overrides(["data.test_count=8"]))


def test_extends_merges_and_a_cycle_is_named(tmp_path):
    base = merge(json.loads(TINY.read_text()), {"seed": 1})
    _write(tmp_path, base, "base.json")
    child = _write(tmp_path, {"extends": "base.json", "eval_batch_size": 8}, "child.json")
    config = load_config(child, {"models": {"ann": {"epochs": 2}}})
    assert (config["seed"], config["eval_batch_size"], config["models"]["ann"]) == (1, 8, dict(base["models"]["ann"], epochs=2))
    _write(tmp_path, {"extends": "b.json"}, "a.json")
    _write(tmp_path, {"extends": "a.json"}, "b.json")
    with pytest.raises(ValueError, match=r"'extends' forms a cycle: .*a.json -> .*b.json -> .*a.json"):
        load_config(tmp_path / "a.json")
    _write(tmp_path, {"extends": "gone.json"}, "orphan.json")
    with pytest.raises(ValueError, match=r"'extends' of .*orphan.json' = .*gone.json': no such file"):
        load_config(tmp_path / "orphan.json")


def test_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_config(tmp_path / "missing.json")
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_config(path)


def test_output_folder_must_be_writable(tmp_path):
    assert check_output_dir(tmp_path / "new" / "deep").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="'--out' = .*file': is a file, not a folder"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(ValueError, match="'--out' = .*file/sub': cannot write there"):
        check_output_dir(tmp_path / "file" / "sub")
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="cannot write there"):
        check_output_dir(locked)


def test_a_timesteps_that_cannot_fit_in_memory_is_refused_at_load(tmp_path):
    config = merge(json.loads(TINY.read_text()), {"models": {"snn_conv": {"timesteps": 10**12}}})
    config["studies"]["timesteps"]["timesteps"] = [2, 10**13]
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, config))
    assert [p.split(":")[0] for p in error.value.problems] == [
        "config key 'models.snn_conv.timesteps' = 1000000000000", "config key 'studies.timesteps.timesteps[1]' = 10000000000000"]
    assert "alone needs" in error.value.problems[0]


def test_device_and_backend_resolve_to_what_runs_here_or_are_refused(monkeypatch):
    """``device`` / ``models.backend``: ``auto`` follows the machine; a request it cannot meet is refused up front."""
    import torch

    import snn_adv.zoo as zoo

    config = load_config(config_path("tiny"), {"device": "cpu", "models": {"backend": "auto"}})
    assert (config["device"], config["models"]["backend"]) == ("cpu", "auto")
    with pytest.raises(ConfigError, match="models.backend"):
        load_config(config_path("tiny"), {"models": {"backend": "triton"}})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert zoo.resolve_device("auto", "auto") == (torch.device("cpu"), "torch")
    with pytest.raises(ValueError, match="'device' = 'cuda': no CUDA device here"):
        zoo.resolve_device("cuda")
    with pytest.raises(ValueError, match="'models.backend' = 'cupy': needs CuPy and the CUDA device"):
        zoo.resolve_device("auto", "cupy")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, with and without CuPy
    for cupy, backend in ((True, "cupy"), (False, "torch")):
        monkeypatch.setattr(zoo, "cupy_available", lambda cupy=cupy: cupy)
        assert zoo.resolve_device("auto", "auto") == (torch.device("cuda"), backend)
        assert zoo.resolve_device("cpu", "auto") == (torch.device("cpu"), "torch")
    assert zoo.ModelZoo(config, "unused").backend == "torch"  # device cpu: backend auto is the torch one


def test_load_attacks_checks_entries_with_the_config_schema(tmp_path):
    """``snn-adv evaluate --attacks FILE`` reads entries with the schema a config's attack lists get: every attack
    the registry knows is accepted, an argument the attack does not take is refused with its path."""
    from snn_adv.attack_specs import ENTRIES
    from snn_adv.config import load_attacks

    good = [{"name": name} for name, entry in ENTRIES.items() if not entry.required and name != "clean"]
    good += [{"name": "pgd", "eps": 0.1, "alpha_over_eps": 0.25}, {"name": "torchattacks", "class": "PGD"}]
    assert load_attacks(str(_write(tmp_path, good, "good.json"))) == good
    with pytest.raises(ConfigError, match=r"'attacks\[1\].steps': not an argument of attack 'fgsm'"):
        load_attacks(str(_write(tmp_path, [{"name": "pgd"}, {"name": "fgsm", "steps": 3}], "bad.json")))
    with pytest.raises(ConfigError, match=r"'attacks\[0\].name' = \"pgdd\": must be one of"):
        load_attacks(str(_write(tmp_path, {"attacks": [{"name": "pgdd"}]}, "typo.json")))


def test_alpha_over_eps_sets_the_step_wherever_the_entry_has_eps():
    from snn_adv.attack_specs import build_attack
    from snn_adv.models import build_classifier

    model = build_classifier("vgg-tiny", "fashion-mnist-bundled")
    attack = build_attack({"name": "pgd", "eps": 0.2, "alpha_over_eps": 0.25, "steps": 3}, model)
    assert (attack.eps, attack.alpha) == (0.2, 0.05)
    with pytest.raises(ValueError, match="'alpha_over_eps' sets the step relative to eps and needs 'eps'"):
        build_attack({"name": "pgd", "alpha_over_eps": 0.25}, model)


def test_recipe_keys_are_their_owners_arguments():
    """config composes what its owners declare: every key of a model recipe is an argument of the function that
    uses it (train, convert, hybrid_init) or one of the zoo's data keys, and every argument a recipe may set is
    declared (a new argument of train is one line in training.CONFIG_FIELDS, not a copy in config.py)."""
    import inspect

    from snn_adv.conversion import CONVERT_FIELDS as CONVERSION, HYBRID_FIELDS, convert, hybrid_init
    from snn_adv.training import TRAIN_FIELDS as TRAINING, train
    from snn_adv.zoo import MODEL_FIELDS

    def arguments(function, *skip):
        return set(inspect.signature(function).parameters) - set(skip)

    assert set(TRAINING) == arguments(train, "model", "train_loader", "test_loader", "seed", "progress", "on_epoch_end",
                                      "on_epoch_start", "checkpoint")
    assert set(CONVERSION) <= arguments(convert) and set(HYBRID_FIELDS) == arguments(hybrid_init, "snn")
    data_keys = {"batch_size", "train_count", "calibration_count", "calibration_batch_size"}
    assert set(MODEL_FIELDS["ann"]) == set(TRAINING) | {"batch_size", "train_count"}
    assert set(MODEL_FIELDS["snn_bp"]) == set(TRAINING) | set(HYBRID_FIELDS) | {"batch_size", "train_count"}
    assert set(MODEL_FIELDS["snn_conv"]) - set(CONVERSION) <= data_keys
