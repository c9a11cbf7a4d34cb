"""The committed notebooks: the layout every notebook follows, and outputs from a real default-profile run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from irmlib.profile import NOTEBOOKS, STUDY_NOTEBOOKS, available_profiles, load_profile

ROOT = Path(__file__).parent.parent
PATHS = [ROOT / "notebooks" / f"{name}.ipynb" for name in NOTEBOOKS]
# A study outside the default run is published from a run of the profile that lists it.
STUDY_PROFILES = {name: profile for profile in available_profiles() if profile not in ("cpu", "smoke", "colab")
                  for name in load_profile(profile).notebooks if name in STUDY_NOTEBOOKS}


@pytest.mark.parametrize("path", PATHS + [ROOT / "notebooks" / f"{name}.ipynb" for name in STUDY_NOTEBOOKS],
                         ids=NOTEBOOKS + STUDY_NOTEBOOKS)
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


def test_committed_notebooks_read_cleanly_and_come_from_one_run_at_one_clean_commit():
    runs = set()
    for path in PATHS:
        notebook = nbformat.read(path, as_version=4)
        outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
        text = json.dumps(outputs)
        assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"], f"{path.name}: stderr output"
        assert not re.search(r"/(work|home|root|tmp|content|Users)/", text), f"{path.name}: a machine path in the outputs"
        assert "PosixPath(" not in text, f"{path.name}: a path repr in the outputs"
        report = notebook.cells[-1].outputs[0]["data"]["text/plain"]
        runs.add((re.search(r"'run': '([^']+)'", report).group(1), re.search(r"'commit': '([^']+)'", report).group(1)))
        assert "'clean': True" in report, f"{path.name}: published from a run with uncommitted changes"
    assert len(runs) == 1, f"the committed notebooks come from several runs: {sorted(runs)}"
    metrics = json.loads((ROOT / "figures" / "cpu" / "metrics.json").read_text())
    assert (metrics["run"]["run"], metrics["run"]["commit"]) in runs


def test_metrics_of_the_default_run_are_committed_whole():
    from irmlib.metrics import METRICS_SCHEMA, check_metrics

    metrics = json.loads((ROOT / "figures" / "cpu" / "metrics.json").read_text())
    assert set(metrics) == {section for section, schema in METRICS_SCHEMA.items() if "profile" not in schema}
    for section, values in metrics.items():
        check_metrics(section, values)
    assert list((ROOT / "figures" / "cpu").glob("*.png"))


def test_every_study_notebook_has_a_profile_of_its_own():
    assert set(STUDY_PROFILES) == set(STUDY_NOTEBOOKS)


@pytest.mark.parametrize("name", STUDY_NOTEBOOKS)
def test_a_study_notebook_comes_from_one_clean_run_of_its_profile(name):
    from irmlib.metrics import METRICS_SCHEMA, check_metrics

    profile = STUDY_PROFILES[name]
    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    assert notebook.metadata.get("papermill", {}).get("parameters") == {"profile": profile}, f"publish a {profile}-profile run"
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells), "every cell ran"
    outputs = [o for c in code_cells for o in c.outputs]
    text = json.dumps(outputs)
    assert outputs and not [o for o in outputs if o.output_type == "error"]
    assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not re.search(r"/(work|home|root|tmp|content|Users)/", text) and "PosixPath(" not in text
    report = notebook.cells[-1].outputs[0]["data"]["text/plain"]
    assert "'clean': True" in report, "published from a run with uncommitted changes"
    run = (re.search(r"'run': '([^']+)'", report).group(1), re.search(r"'commit': '([^']+)'", report).group(1))
    metrics = json.loads((ROOT / "figures" / profile / "metrics.json").read_text())
    assert (metrics["run"]["run"], metrics["run"]["commit"]) == run
    sections = {section for section, schema in METRICS_SCHEMA.items() if schema.get("profile") == profile}
    assert sections and sections <= set(metrics)
    for section in sections:
        check_metrics(section, metrics[section])
    assert list((ROOT / "figures" / profile).glob("*.png"))
