"""The paper-scale presets, checked where a CPU can check them: their settings against the paper's, and each run end
to end at tiny scale (the recipes shrunk by overrides, the code path the same)."""
import json

import pytest
import torch

from snn_adv import checkpoints
from snn_adv.config import load_config
from snn_adv.configs import config_path
from snn_adv.data import CIFAR100_CLASSES
from snn_adv.studies import run_study
from test_data_folders import write_tree

#: a preset shrunk to seconds on a CPU: every model and study the preset names, at a few images and timesteps
TINY_RECIPES = {
    "device": "cpu", "eval_batch_size": 50,
    "models": {"ann": {"epochs": 1, "batch_size": 50, "train_count": 100},
               "snn_conv": {"timesteps": 4, "calibration_count": 20},
               "snn_bp": {"timesteps": 3, "epochs": 1, "batch_size": 25, "train_count": 25, "micro_batch": 25}},
}


def test_paper_cifar100_vgg11_runs_at_tiny_scale_on_a_generated_100_class_folder(tmp_path):
    """``paper_cifar100_vgg11`` on an ImageFolder copy of CIFAR-100 (the offline route): VGG11 with 100 outputs,
    the three models and their blackbox sources trained, and the robustness table written."""
    write_tree(tmp_path / "cifar100", CIFAR100_CLASSES, {"train": 2, "test": 1}, fmt="PNG")
    config = load_config(config_path("paper_cifar100_vgg11"), {
        **TINY_RECIPES, "data": {"root": str(tmp_path)},
        "studies": {"robustness": {"test_count": 10, "attacks": [{"name": "fgsm", "eps": 8 / 255, "label": "FGSM"}]}}})
    assert (config["models"]["arch"], config["models"]["snn_bp"]["leak"]) == ("vgg11", 0.99)
    run_study("robustness", config, tmp_path / "out", progress=False)
    rows = json.loads((tmp_path / "out" / "robustness" / "table.json").read_text())["rows"]
    assert {r["target"] for r in rows} == {"ANN", "SNN-conv", "SNN-BP"}
    # a one-epoch model may be silent (SNN-conv here): its whitebox cell then says so instead of giving a number
    assert all(0 <= r["accuracy"] <= 100 if r["accuracy"] is not None else r["note"] == "no input gradient" for r in rows)
    models = {p.name.split("-")[0] + "-" + p.name.split("-")[1]: p for p in (tmp_path / "out" / "models").glob("*.pt")}
    assert set(models) == {f"{k}-{r}" for k in ("ann", "snn_conv", "snn_bp") for r in ("main", "source")}
    ann = checkpoints.load(models["ann-main"])
    assert ann.arch["name"] == "vgg11" and ann(torch.rand(2, 3, 32, 32)).shape == (2, 100)
