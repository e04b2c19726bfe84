"""The cifar10_cpu preset builds the paper's VGG5 for 3x32x32 and its recipes are arguments our training takes."""
import inspect
import json

import torch.nn as nn

from snn_adv.configs import PRESETS_DIR
from snn_adv.models import build_classifier
from snn_adv.training import train

PRESET = PRESETS_DIR / "cifar10_cpu.json"


def test_preset_is_the_papers_vgg5_on_cifar10_jpeg():
    config = json.loads(PRESET.read_text())
    assert config["data"]["dataset"] == "cifar10-jpeg" and config["models"]["arch"] == "vgg5"
    body = build_classifier(config["models"]["arch"], config["data"]["dataset"], **config["models"]["arch_kwargs"]).body
    linear = [m for m in body if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linear] == [1024, 1024, 10] and linear[0].in_features == 128 * 8 * 8
    assert all(m.bias is None for m in body if isinstance(m, (nn.Linear, nn.Conv2d)))
    assert sum(isinstance(m, nn.AvgPool2d) for m in body) == 2 and not any(isinstance(m, nn.MaxPool2d) for m in body)
    assert sum(isinstance(m, nn.Dropout) for m in body) == 3


def test_preset_recipes_are_training_arguments():
    config = json.loads(PRESET.read_text())
    accepted = set(inspect.signature(train).parameters)
    recipe_only = {"batch_size", "train_count", "timesteps", "leak", "threshold_scale"}
    for kind in ("ann", "snn_bp"):
        assert set(config["models"][kind]) - recipe_only <= accepted, kind
    assert config["eval_seeds"] == [0, 1, 2] and config["studies"]["robustness"]["test_count"] >= 1000
    for study in ("robustness", "timesteps", "leak"):
        labels = {a["label"] for a in config["studies"][study]["attacks"]}
        assert {"FGSM", "PGD"} <= labels, study
    pgd = next(a for a in config["studies"]["robustness"]["attacks"] if a["name"] == "pgd")
    assert (pgd["eps"], pgd["alpha"], pgd["steps"], pgd["random_start"]) == (8 / 255, 2 / 255, 7, True)


def test_defences_preset_defends_the_protocols_plain_models():
    """cifar10_defences: its plain models are cifar10_cpu's own recipes (the same zoo keys, so a run of both presets
    in one folder trains them once); its AT twins are PGD-AT'd ANN and SNN-BP; every
    target meets the same battery and the defence papers' PGD-10 without EOT."""
    from snn_adv.config import load_config
    from snn_adv.configs import config_path

    defences = load_config(config_path("cifar10_defences"))
    plain = load_config(config_path("cifar10_cpu"))
    for key in ("arch", "arch_kwargs", "seeds", "ann", "snn_conv", "snn_bp"):
        assert defences["models"][key] == plain["models"][key], key
    assert defences["data"] == plain["data"] and defences["seed"] == plain["seed"]
    assert {kind: recipe["adversarial"]["method"] for kind, recipe in defences["models"]["defences"]["AT"].items()} \
        == {"ann": "pgd", "snn_bp": "pgd"}
    robust_conversion = defences["models"]["defences"]["RC"]
    assert robust_conversion["ann"] == defences["models"]["defences"]["AT"]["ann"]  # the same AT ANN, reused
    assert robust_conversion["snn_bp"]["learnable_thresholds"] and \
        robust_conversion["snn_bp"]["adversarial"]["method"] == "trades-rfgsm"
    section = defences["studies"]["protocol"]
    assert section["defences"] == [None, "AT"] and section["kinds"] == ["ann", "snn_bp"]
    assert section["reference"]["steps"] == 10 and "eot" not in section["reference"]
    assert section["version"] == plain["studies"]["protocol"]["version"]
