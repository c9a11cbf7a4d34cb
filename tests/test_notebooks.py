"""The committed notebooks: the layout every notebook follows, and outputs from a real default-profile run."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from irmlib.pipeline import NOTEBOOKS

ROOT = Path(__file__).parent.parent
PATHS = [ROOT / "notebooks" / f"{name}.ipynb" for name in NOTEBOOKS]


@pytest.mark.parametrize("path", PATHS, ids=NOTEBOOKS)
def test_notebook_layout(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    cells = notebook.cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert tagged and cells[tagged[0]].source.strip().startswith("profile = None"), "a papermill parameters cell near the top"
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in cells)
    assert any(c.cell_type == "markdown" and c.source.strip() == "## What we found" for c in cells)
    assert "environment_report()" in cells[-1].source


@pytest.mark.parametrize("path", PATHS, ids=NOTEBOOKS)
def test_committed_outputs_come_from_a_clean_default_profile_run(path):
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata.get("papermill", {}).get("parameters") == {"profile": "cpu"}, "publish a cpu-profile run"
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert outputs, "committed notebooks carry their outputs"
    assert not [o for o in outputs if o.output_type == "error"]
    assert "widgets" not in notebook.metadata
    assert path.stat().st_size < 4_000_000
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells), "every cell ran"


def test_metrics_of_the_default_run_are_committed():
    metrics = json.loads((ROOT / "figures" / "cpu" / "metrics.json").read_text())
    assert {"01_data", "02_train", "03_generations", "04_vertical_continuity", "05_lm_head_probing"} <= set(metrics)
    assert list((ROOT / "figures" / "cpu").glob("*.png"))
