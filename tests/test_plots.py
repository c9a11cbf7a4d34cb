"""Heatmaps: one colour scale for all runs, or one per run so a run with small outputs stays visible."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from irmlib.plots import striation_heatmaps


@pytest.mark.parametrize("shared_scale", [True, False])
def test_heatmap_colour_scales(shared_scale):
    rng = np.random.default_rng(0)
    matrices = {"large": rng.normal(size=(4, 32)) * 100.0, "small": rng.normal(size=(4, 32)) * 0.01}
    fig = striation_heatmaps(matrices, {"large": 3, "small": 5}, signed=True, shared_scale=shared_scale)
    whole_panels = fig.axes[0:4:2]
    limits = [panel.images[0].get_clim() for panel in whole_panels]
    assert all(low == -high for low, high in limits)  # diverging, centred at 0
    if shared_scale:
        assert limits[0] == limits[1] and len(fig.axes) == 5  # one colour bar
    else:
        assert limits[1][1] < limits[0][1] / 1000 and len(fig.axes) == 6  # a colour bar per run
        assert limits[1][1] == pytest.approx(np.percentile(np.abs(matrices["small"]), 99.9))
    matplotlib.pyplot.close(fig)


def test_flagged_runs_are_drawn_apart():
    import pandas as pd

    from irmlib.plots import metric_curves

    def curve(run, arm, flag, yardstick):
        return pd.DataFrame({"step": [0, 10, 20], "run": run, "arm": arm, "flag": flag, "index_share": [0.1, 0.3, 0.5],
                             "layer_share": 0.05, "vertical_continuity": 0.5, "yardstick": yardstick, "output_rms_ratio": [1e-3, 0.1, 1.0]})

    tracking = pd.concat([curve("A:anger-seed0", "A", "ok", 3.5), curve("B:anger-seed0", "B", "host damaged", 9.0)])
    fig = metric_curves(tracking, host_yardstick=3.3)
    assert len(fig.axes) == 10  # two rows of five panels: the runs that count, then the flagged ones
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["runs that count", "flagged runs, not pooled"]
    yardstick_panels = [ax for ax in fig.axes if ax.get_ylabel().startswith("yardstick")]
    assert [len(ax.lines) for ax in yardstick_panels] == [2, 2]  # each row: its run and the host's line
    assert max(yardstick_panels[0].lines[0].get_ydata()) == 3.5 and max(yardstick_panels[1].lines[0].get_ydata()) == 9.0
    assert {ax.get_yscale() for ax in fig.axes if "RMS" in ax.get_ylabel()} == {"log"}
    matplotlib.pyplot.close(fig)
    assert len(metric_curves(tracking[tracking.flag == "ok"].drop(columns=["yardstick", "output_rms_ratio"])).axes) == 3
