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
