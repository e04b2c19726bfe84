"""Plots that read without the code: labels, attack and eps in the title, integer layer ticks, interval error bars."""
import pytest

from snn_adv import plots


@pytest.fixture
def figures(monkeypatch, tmp_path):
    """The figures the plot functions draw, captured instead of saved."""
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or path)
    return drawn


def error_bar_extents(container):
    """``(x, low, high)`` of each error bar of an errorbar container (its vertical line segments)."""
    (segments,) = container.lines[2]
    return sorted((s[0][0], min(s[0][1], s[1][1]), max(s[0][1], s[1][1])) for s in segments.get_segments() if len(s))


def test_layerwise_line_plot_has_labels_attack_eps_integer_ticks_and_interval_bars(figures, tmp_path):
    series = {"ANN": [(2, 0.3, 0.25, 0.4), (0, 0.1, 0.05, 0.12), (1, 0.2, 0.2, 0.2)]}
    plots.plot_lines(series, tmp_path / "l.png", xlabel="layer", ylabel="relative change", title="propagation",
                     attack="PGD", eps=8 / 255)
    (ax,) = figures[0].axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("layer", "relative change")
    assert "PGD" in ax.get_title() and "eps 8/255" in ax.get_title()
    assert list(ax.get_xticks()) == [0, 1, 2] and [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
    extents = [v for extent in error_bar_extents(ax.containers[0]) for v in extent]
    assert extents == pytest.approx([0, 0.05, 0.12, 1, 0.2, 0.2, 2, 0.25, 0.4])


def test_bar_plot_draws_intervals_and_labels_both_axes(figures, tmp_path):
    plots.plot_bars(["clean", "PGD WB"], {"ANN": [(90.0, 88.0, 93.0), (40.0, 35.0, 41.0)]}, tmp_path / "b.png",
                    ylabel="accuracy (%)", title="accuracy", eps=0.03)
    (ax,) = figures[0].axes
    assert ax.get_xlabel() and ax.get_ylabel() == "accuracy (%)" and "eps 0.03" in ax.get_title()
    from matplotlib.container import BarContainer

    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_height() for b in bars] == [90.0, 40.0]
    assert [(low, high) for _, low, high in error_bar_extents(bars.errorbar)] == [(88.0, 93.0), (35.0, 41.0)]


def test_series_from_rows_reads_interval_columns():
    rows = [{"m": "SNN", "layer": 1, "v": 0.2, "lo": 0.1, "hi": 0.3}, {"m": "SNN", "layer": 0, "v": 0.1, "lo": 0.0, "hi": 0.2}]
    assert plots.series_from_rows(rows, series="m", x="layer", y="v", low="lo", high="hi") == {
        "SNN": [(1.0, 0.2, 0.1, 0.3), (0.0, 0.1, 0.0, 0.2)]}
    with pytest.raises(ValueError, match="'low' = 'lo'"):
        plots.series_from_rows(rows, series="m", x="layer", y="v", low="lo")


@pytest.mark.parametrize("eps,text", [(8 / 255, "8/255"), (1 / 255, "1/255"), (0.0, "0"), (0.1, "0.1"), (0.5, "0.5")])
def test_eps_is_written_as_image_levels_where_it_is_one(eps, text):
    assert plots.format_eps(eps) == text


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="'xlabel' = ''"):
        plots.plot_lines({"a": [(0, 1.0)]}, tmp_path / "x.png", xlabel="", ylabel="y", title="t")
    with pytest.raises(ValueError, match=r"series 'a', x = 0: interval \[2.0, 3.0\] does not contain the value 1.0"):
        plots.plot_lines({"a": [(0, 1.0, 2.0, 3.0)]}, tmp_path / "x.png", xlabel="x", ylabel="y", title="t")


def test_robustness_bars_leave_an_empty_slot_where_a_model_was_not_attacked(figures, tmp_path):
    """An SNN-only attack has no ANN row: its slot is empty (NaN height, no error bar), not an error."""
    from snn_adv.studies.robustness import _bar

    rows = [{"target": "ANN", "condition": "clean", "accuracy": 90.0, "accuracy_low": 88.0, "accuracy_high": 93.0},
            {"target": "SNN-BP", "condition": "PGD+EOT WB", "accuracy": 20.0, "accuracy_low": 17.0, "accuracy_high": 24.0}]
    groups = ["clean", "PGD+EOT WB"]
    bars = {target: [_bar(rows, target, g) for g in groups] for target in ("ANN", "SNN-BP")}
    assert bars["ANN"][0] == (90.0, 88.0, 93.0) and len(bars["ANN"][1]) == 1
    plots.plot_bars(groups, bars, tmp_path / "b.png", ylabel="accuracy (%)", title="strong")
    from matplotlib.container import BarContainer

    ann, snn = [c for c in figures[0].axes[0].containers if isinstance(c, BarContainer)]
    assert ann[0].get_height() == 90.0 and ann[1].get_height() != ann[1].get_height()  # NaN: nothing drawn
    assert [(low, high) for _, low, high in error_bar_extents(snn.errorbar)] == [(17.0, 24.0)]
