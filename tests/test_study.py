"""The cell runner, config loading, seeds, tables and plots (the studies themselves: tests/test_studies.py)."""
import csv
import json
import random

import numpy as np
import pytest
import torch

from snn_adv.config import load_config
from snn_adv.plots import plot_bars, plot_lines, series_from_rows
from snn_adv.study import (
    CellStore,
    cell_key,
    derive_seed,
    markdown_table,
    mean_std,
    run_cells,
    write_table,
)


def _draw(settings):
    return {"torch": torch.rand(1).item(), "numpy": float(np.random.rand()), "python": random.random(), **settings}


def test_cells_are_seeded_by_settings_not_by_order(tmp_path):
    cells = [{"x": i} for i in range(4)]
    forward = run_cells(cells, _draw, CellStore(tmp_path / "a"), seed=3, progress=False)
    backward = run_cells(cells[::-1], _draw, CellStore(tmp_path / "b"), seed=3, progress=False)
    assert [r["result"] for r in forward] == [r["result"] for r in backward[::-1]]
    other_seed = run_cells(cells, _draw, CellStore(tmp_path / "c"), seed=4, progress=False)
    assert forward[0]["result"]["torch"] != other_seed[0]["result"]["torch"]
    # the seed of a cell is derive_seed(config seed, cell key): reproduce cell 0 by hand
    torch.manual_seed(derive_seed(3, cell_key(cells[0])))
    assert forward[0]["result"]["torch"] == torch.rand(1).item()


def test_finished_cells_are_skipped_and_records_carry_provenance(tmp_path):
    calls = []
    store = CellStore(tmp_path)
    compute = lambda s: calls.append(s["x"]) or {"y": s["x"] ** 2}  # noqa: E731
    run_cells([{"x": 1}, {"x": 2}], compute, store, seed=0, progress=False)
    records = run_cells([{"x": 1}, {"x": 2}, {"x": 3}], compute, store, seed=0, progress=False)
    assert calls == [1, 2, 3]
    assert [r["result"]["y"] for r in records] == [1, 4, 9]
    prov = records[0]["provenance"]
    assert {"git_commit", "torch", "spikingjelly", "device", "seed"} <= set(prov)
    assert prov["seed"] == derive_seed(0, cell_key({"x": 1}))
    assert json.loads(store.path({"x": 2}).read_text())["settings"] == {"x": 2}
    with pytest.raises(ValueError, match="duplicate"):
        run_cells([{"x": 1}, {"x": 1}], compute, store, seed=0, progress=False)


def test_cell_key_ignores_key_order_and_sees_values():
    assert cell_key({"a": 1, "b": [1, 2]}) == cell_key({"b": [1, 2], "a": 1})
    assert cell_key({"a": 1}) != cell_key({"a": 1.5})
    assert derive_seed(0, "x") == derive_seed(0, "x") != derive_seed(1, "x")
    assert 0 <= derive_seed(123, {"k": 1}) < 2**31


def test_tables_round_trip_and_mean_std(tmp_path):
    rows = [{"model": "ann", "acc": 91.23456, "skip": 1}, {"model": "snn", "acc": 80.0}]
    md = write_table(rows, ["model", "acc"], tmp_path / "t")
    assert md == markdown_table(rows, ["model", "acc"]) == (tmp_path / "t.md").read_text()
    assert "| ann | 91.23 |" in md and "skip" not in md
    with open(tmp_path / "t.csv") as handle:
        assert list(csv.DictReader(handle)) == [{"model": "ann", "acc": "91.23456"}, {"model": "snn", "acc": "80.0"}]
    stats = mean_std([1.0, 2.0, 4.0])
    assert stats["mean"] == pytest.approx(7 / 3) and stats["n"] == 3
    assert stats["std"] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert mean_std([5.0])["std"] == 0.0


def test_plots_write_png(tmp_path):
    rows = [{"m": "a", "x": 1, "y": 2.0, "s": 0.5}, {"m": "a", "x": 2, "y": 1.0, "s": 0.1}, {"m": "b", "x": 1, "y": 3.0}]
    series = series_from_rows(rows, series="m", x="x", y="y", std="s")
    assert series == {"a": [(1.0, 2.0, 0.5), (2.0, 1.0, 0.1)], "b": [(1.0, 3.0, 0.0)]}
    for path in (
        plot_lines(series, tmp_path / "l.png", xlabel="x (units)", ylabel="y (%)", title="t"),
        plot_bars(["g1", "g2"], {"a": [(1, 0.1), (2, 0)], "b": [(3, 0), (4, 1)]}, tmp_path / "b.png", ylabel="%", title="t"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


# ---------------------------------------------------------------------------------------------------------------
# Every study end to end on the tiny config (one shared model cache)
# ---------------------------------------------------------------------------------------------------------------
from pathlib import Path  # noqa: E402

from snn_adv.studies import STUDIES, ModelZoo, layer_activations, relative_change, run_study  # noqa: E402

TINY = Path(__file__).resolve().parent.parent / "experiments" / "configs" / "tiny.json"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("studies")
    config = load_config(TINY)
    zoo = ModelZoo(config, out / "models", progress=False)
    tables = {name: run_study(name, config, out, zoo=zoo, progress=False) for name in STUDIES}
    return out, config, zoo, tables


def _rows(out, name, stem="table"):
    return json.loads((out / name / f"{stem}.json").read_text())["rows"]


def test_every_study_writes_table_csv_json_plots_and_cells(tiny_run):
    out, config, _, tables = tiny_run
    for name in STUDIES:
        folder = out / name
        table = (folder / "table.md").read_text()
        assert table.startswith("| ")
        if name in ("robustness", "eps"):  # self-checks: whitebox vs blackbox, accuracy vs eps
            checks = json.loads((folder / "checks.json").read_text())
            assert checks and all(c["passed"] in (True, False) for c in checks)
            assert tables[name] == table + "\n" + (folder / "checks.md").read_text()
        else:
            assert tables[name] == table
        assert (folder / "table.csv").is_file() and list(folder.glob("*.png")), name
        for cell in (folder / "cells").glob("*.json"):
            record = json.loads(cell.read_text())
            assert record["settings"]["study"] == name and "git_commit" in record["provenance"]
    assert sorted(p.name.split("-")[0] + "-" + p.name.split("-")[1] for p in (out / "models").glob("*.pt")) == sorted(
        f"{k}-{r}" for k in ("ann", "snn_conv", "snn_bp") for r in ("main", "source"))


def test_robustness_table_counts_are_consistent(tiny_run):
    out, config, _, _ = tiny_run
    rows = _rows(out, "robustness", "cells")
    n = config["data"]["test_count"]
    # 3 targets x (clean + 2 attacks x (whitebox + 3 blackbox sources))
    assert len(rows) == 3 * (1 + 2 * 4) and all(r["n_images"] == n for r in rows)
    for r in rows:
        assert 0 <= r["accuracy_mean"] <= 100 and r["n_seeds"] == len(config["eval_seeds"])
        # an accuracy over n images is a multiple of 100/n for each seed, so the mean is a multiple of 100/(n*seeds)
        assert (r["accuracy_mean"] * n * r["n_seeds"] / 100) == pytest.approx(round(r["accuracy_mean"] * n * r["n_seeds"] / 100))
    ann = {r["condition"]: r for r in rows if r["target"] == "ANN"}
    assert ann["clean"]["accuracy_std"] == 0.0  # a deterministic ANN has no Poisson spread
    assert ann["PGD WB"]["accuracy_mean"] <= ann["clean"]["accuracy_mean"]


def test_eps_zero_attack_equals_clean_and_eps_sweep_runs(tiny_run):
    out, *_ = tiny_run
    for r in _rows(out, "eps"):
        if r["eps"] == 0:
            assert r["adv_mean"] == r["clean_mean"]
    kinds = {r["model"] for r in _rows(out, "eps")}
    assert kinds == {"ANN", "SNN-BP"}


def test_layerwise_relative_change_against_hand_computation(tiny_run):
    out, config, zoo, _ = tiny_run
    rows = _rows(out, "layerwise")
    assert {r["quantity"] for r in rows} == {"activation", "spike_rate", "membrane"}
    assert all(r["relative_change_mean"] >= 0 for r in rows)
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
    from snn_adv.studies import _at_eps

    spec = {"name": "pgd", "alpha_over_eps": 0.25, "steps": 7}
    assert _at_eps(spec, 8 / 255) == {"name": "pgd", "eps": 8 / 255, "alpha": 2 / 255, "steps": 7}
    assert _at_eps(spec, 32 / 255)["alpha"] == 8 / 255
    assert _at_eps({"name": "fgsm"}, 0.1) == {"name": "fgsm", "eps": 0.1}
