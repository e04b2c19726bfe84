"""The cell runner, seeds, tables, plots and presets (the studies themselves: tests/test_studies.py)."""
import csv
import json
import random

import numpy as np
import pytest
import torch

from snn_adv.plots import plot_bars, plot_lines, series_from_rows
from snn_adv.cells import (
    CellStore,
    DamagedCellError,
    cell_key,
    record_digest,
    markdown_table,
    run_cells,
    write_table,
)
from snn_adv.seeds import derive_seed


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


def _outcomes(settings):
    return {"clean_correct": [[1, 0], [1, 1]], "accuracy": 0.75, "label": settings["x"]}


def _edit(part, change):
    """An edit of one part of a cell file that keeps its stored digest (and the file's JSON layout)."""
    def edit(text):
        record = json.loads(text)
        change(record[part]) if part != "seconds" else record.update(seconds=record["seconds"] + 1)
        return json.dumps(record, indent=2, sort_keys=True) + "\n"
    return edit


#: one edit per part of a cell file: an outcome, a number, the settings, the provenance, the time, the digest
#: itself, a missing digest, and damage that leaves no JSON
EDITS = {
    "outcome": _edit("result", lambda result: result["clean_correct"][0].__setitem__(0, 0)),
    "number": _edit("result", lambda result: result.update(accuracy=0.76)),
    "settings": _edit("settings", lambda settings: settings.update(study="t")),
    "provenance": _edit("provenance", lambda provenance: provenance.update(git_commit="0" * 40)),
    "seconds": _edit("seconds", None),
    "digest": lambda text: text.replace('"digest": "sha256:', '"digest": "sha256:0', 1),
    "no digest": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "digest"}),
    "truncated": lambda text: text[: len(text) // 2],
}


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_cell_is_refused_naming_its_file_and_recomputed_on_request(tmp_path, edit):
    cell = {"study": "s", "x": 1}
    calls = []
    compute = lambda s: calls.append(1) or _outcomes(s)  # noqa: E731
    fresh = run_cells([cell], compute, CellStore(tmp_path), seed=0, progress=False)[0]
    path = CellStore(tmp_path).path(cell)
    assert fresh["digest"] == record_digest(json.loads(path.read_text()))
    text = path.read_text()
    edited = EDITS[edit](text)
    assert edited != text
    path.write_text(edited)
    for reader in (lambda: run_cells([cell], compute, CellStore(tmp_path), seed=0, progress=False),
                   lambda: CellStore(tmp_path).records()):
        with pytest.raises(DamagedCellError, match=rf"{path.name}.*not used: delete it, or rerun with `--recompute`"):
            reader()
    assert calls == [1]  # nothing was used, nothing recomputed
    again = run_cells([cell], compute, CellStore(tmp_path, recompute=True), seed=0, progress=False)[0]
    assert calls == [1, 1]
    assert (again["settings"], again["result"]) == (fresh["settings"], fresh["result"])
    assert CellStore(tmp_path).records() == [again]  # the replaced file verifies


def test_every_flipped_bit_of_a_cell_file_is_refused_or_harmless(tmp_path):
    """Bit 0 flipped at every byte of a cell file: read back, the file is refused, or (a change of JSON layout
    only) it gives exactly the original record."""
    run_cells([{"study": "s", "x": 1}], _outcomes, CellStore(tmp_path), seed=0, progress=False)
    path = CellStore(tmp_path).path({"study": "s", "x": 1})
    data = path.read_bytes()
    original = json.loads(data)
    refused = 0
    for position in range(len(data)):
        path.write_bytes(data[:position] + bytes([data[position] ^ 1]) + data[position + 1:])
        try:
            assert CellStore.read(path) == original, position
        except DamagedCellError:
            refused += 1
    assert refused >= 0.95 * len(data) and len(data) > 500


def test_the_digest_covers_every_value_but_not_the_json_layout():
    record = {"settings": {"x": 1}, "result": {"r": [1, 0]}, "seconds": 1.5, "provenance": {"seed": 3}}
    digest = record_digest(record)
    assert digest.startswith("sha256:") and len(digest) == 7 + 64
    assert record_digest(json.loads(json.dumps(record, indent=4))) == digest == record_digest({**record, "digest": "x"})
    for part, value in [("result", {"r": [0, 0]}), ("settings", {"x": 2}), ("seconds", 1.25), ("provenance", {})]:
        assert record_digest({**record, part: value}) != digest, part


def test_a_cell_moved_to_another_name_is_refused(tmp_path):
    store = CellStore(tmp_path)
    run_cells([{"x": 1}], _outcomes, store, seed=0, progress=False)
    store.path({"x": 1}).rename(store.path({"x": 2}))
    with pytest.raises(DamagedCellError, match="other settings than its name says"):
        run_cells([{"x": 2}], _outcomes, store, seed=0, progress=False)
    assert run_cells([{"x": 2}], _outcomes, CellStore(tmp_path, recompute=True), seed=0,
                     progress=False)[0]["result"]["label"] == 2


def test_cell_key_ignores_key_order_and_sees_values():
    assert cell_key({"a": 1, "b": [1, 2]}) == cell_key({"b": [1, 2], "a": 1})
    assert cell_key({"a": 1}) != cell_key({"a": 1.5})
    assert derive_seed(0, "x") == derive_seed(0, "x") != derive_seed(1, "x")
    assert 0 <= derive_seed(123, {"k": 1}) < 2**31


def test_tables_round_trip(tmp_path):
    rows = [{"model": "ann", "acc": 91.23456, "skip": 1}, {"model": "snn", "acc": 80.0}]
    md = write_table(rows, ["model", "acc"], tmp_path / "t")
    assert md == markdown_table(rows, ["model", "acc"]) == (tmp_path / "t.md").read_text()
    assert "| ann | 91.23 |" in md and "skip" not in md
    with open(tmp_path / "t.csv") as handle:
        assert list(csv.DictReader(handle)) == [{"model": "ann", "acc": "91.23456"}, {"model": "snn", "acc": "80.0"}]


def test_plots_write_png(tmp_path):
    rows = [{"m": "a", "x": 1, "y": 2.0, "s": 0.5}, {"m": "a", "x": 2, "y": 1.0, "s": 0.1}, {"m": "b", "x": 1, "y": 3.0}]
    series = series_from_rows(rows, series="m", x="x", y="y", std="s")
    assert series == {"a": [(1.0, 2.0, 0.5), (2.0, 1.0, 0.1)], "b": [(1.0, 3.0, 0.0)]}
    for path in (
        plot_lines(series, tmp_path / "l.png", xlabel="x (units)", ylabel="y (%)", title="t"),
        plot_bars(["g1", "g2"], {"a": [(1, 0.1), (2, 0)], "b": [(3, 0), (4, 1)]}, tmp_path / "b.png", ylabel="%", title="t"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_presets_are_package_data_and_resolve_by_name_or_path(tmp_path):
    import configparser
    import fnmatch
    from pathlib import Path

    import snn_adv
    from snn_adv.configs import config_path, presets

    package = Path(snn_adv.__file__).parent
    assert {"cpu", "tiny", "quickstart", "paper_cifar10_vgg5"} <= set(presets())
    setup = configparser.ConfigParser()
    setup.read(package.parent / "setup.cfg")
    patterns = [p.strip() for p in setup["options.package_data"]["snn_adv"].split(",")]
    for name in presets():  # every preset ships in the wheel
        path = config_path(name)
        assert path.parent == package / "configs"
        assert any(fnmatch.fnmatch(str(path.relative_to(package)), p) for p in patterns), name
    own = tmp_path / "cpu"  # a path wins over a preset of the same name
    own.write_text("{}")
    assert config_path(own) == own and config_path(str(own)) == own
    with pytest.raises(ValueError, match="not a preset name.*cpu"):
        config_path("no-such-preset")
