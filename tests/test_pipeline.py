"""The pipeline: finished stages are skipped, a failing notebook stops it and says where, a
half-finished stage is never taken for done, and publishing strips papermill's injected cell."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest

from irmlib import pipeline


def make_notebook(path, *bodies: str) -> None:
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("profile = None")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, *(nbformat.v4.new_code_cell(body) for body in bodies)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("IRM_ROOT", str(tmp_path))
    (tmp_path / "notebooks").mkdir()
    make_notebook(tmp_path / "notebooks" / "01_data.ipynb", "print('profile is', profile)")
    return tmp_path


@pytest.mark.slow
def test_rerun_skips_done_stages_and_force_reruns(root, capsys):
    pipeline.main(["--profile", "smoke"])
    out_dir = root / "runs" / "smoke" / "notebooks"
    assert json.loads((out_dir / "01_data.done").read_text())["profile"] == "smoke"
    executed = nbformat.read(out_dir / "01_data.ipynb", 4)
    assert "profile is smoke" in executed.cells[-1].outputs[0].text
    pipeline.main(["--profile", "smoke"])
    assert "already done" in capsys.readouterr().out
    (out_dir / "01_data.done").unlink()  # as if killed before the marker was written
    pipeline.main(["--profile", "smoke"])
    assert "[01_data] done in" in capsys.readouterr().out
    # A new run (--force) starts its metrics afresh: an earlier run's section does not survive it.
    metrics = root / "figures" / "smoke" / "metrics.json"
    earlier = json.loads(metrics.read_text())
    metrics.write_text(json.dumps(earlier | {"02_precision_check": {}}))
    pipeline.main(["--profile", "smoke", "--force"])
    assert "[01_data] done in" in capsys.readouterr().out
    fresh = json.loads(metrics.read_text())
    assert set(fresh) == {"run"}


@pytest.mark.slow
def test_failing_notebook_stops_and_names_the_cell_and_the_executed_notebook(root, capsys):
    make_notebook(root / "notebooks" / "02_train_irm.ipynb", "raise ValueError('bad data on line 3')")
    make_notebook(root / "notebooks" / "03_sample_generations.ipynb", "print('never')")
    with pytest.raises(SystemExit):
        pipeline.main(["--profile", "smoke"])
    err = capsys.readouterr().err
    out_dir = root / "runs" / "smoke" / "notebooks"
    assert "[02_train_irm] FAILED in cell" in err and "ValueError: bad data on line 3" in err
    assert str(out_dir / "02_train_irm.ipynb") in err
    assert not (out_dir / "02_train_irm.done").exists() and not (out_dir / "03_sample_generations.ipynb").exists()


@pytest.mark.slow
def test_publish_copies_executed_notebooks_without_the_injected_cell(root):
    pipeline.main(["--profile", "smoke", "--publish"])
    published = nbformat.read(root / "notebooks" / "01_data.ipynb", 4)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in published.cells)
    assert published.metadata["papermill"]["parameters"] == {"profile": "smoke"}
    assert published.metadata["papermill"]["output_path"] == "runs/smoke/notebooks/01_data.ipynb"
    assert "profile is smoke" in published.cells[-1].outputs[0].text


def test_unknown_profile_is_a_clear_error(root, capsys):
    with pytest.raises(SystemExit):
        pipeline.main(["--profile", "laptop"])
    assert "Unknown profile 'laptop'" in capsys.readouterr().err


ALLOCATE_MB = 300


PEAK_MARKER_SCRIPT = """
import sys
from pathlib import Path
from irmlib import pipeline
from test_pipeline import ALLOCATE_MB, make_notebook

root = Path(sys.argv[1])
(root / "notebooks").mkdir()
# Touch every page of a 300 MB buffer, free it, then idle: the peak must still be seen (the
# high-water mark), not just the memory in use at the end, and credited to its cell.
make_notebook(root / "notebooks" / "01_data.ipynb",
              "# a comment line, skipped when naming the cell\\nimport time",
              f"block = bytearray({ALLOCATE_MB} * 2**20)\\nblock[::4096] = b'x' * len(block[::4096])\\n"
              "del block\\ntime.sleep(0.5)",
              "time.sleep(1.0)\\nprint('ok')")
assert pipeline.run_notebook("01_data", "smoke", root / "runs" / "smoke" / "notebooks") > 0
"""


@pytest.mark.slow
def test_done_marker_records_the_kernels_peak_rss(tmp_path):
    """Run in a process of its own: the test session's background jobs are children of this one,
    and one started while the notebook runs would count as the kernel's memory."""
    import subprocess
    import sys

    env = {**os.environ, "IRM_ROOT": str(tmp_path), "PYTHONPATH": str(Path(__file__).parent)}
    printed = subprocess.run([sys.executable, "-c", PEAK_MARKER_SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                             check=True).stdout
    marker = json.loads((tmp_path / "runs" / "smoke" / "notebooks" / "01_data.done").read_text())
    peak = marker["peak_rss_mb"]
    # The kernel itself (python + ipykernel) takes some tens of MB; the buffer adds 300 MB.
    assert ALLOCATE_MB + 20 < peak < ALLOCATE_MB + 1500
    # Cells of the executed notebook: parameters, papermill's injected parameters, then ours.
    assert marker["peak_rss_cell"] == {"cell": 3, "line": f"block = bytearray({ALLOCATE_MB} * 2**20)"}
    assert f"kernel peak memory (RSS) {peak:.0f} MB (reached in cell 3: block = bytearray" in printed


CHILD_PEAK_SCRIPT = """
import json, subprocess, sys
from irmlib import pipeline

before = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
try:
    with pipeline.child_peak_rss(interval_s=0.05) as memory:
        subprocess.run([sys.executable, "-c", "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
                        "import time; time.sleep(0.5)"], check=True)
    with pipeline.child_peak_rss(interval_s=0.05) as idle:
        pass
finally:
    before.kill()
    before.wait()
print(json.dumps([memory["peak_rss_mb"], idle["peak_rss_mb"]]))
"""


def test_child_peak_rss_ignores_children_started_before_the_block():
    """Run in a process of its own: the test session's background jobs are children of this one,
    and one started during the block would count."""
    import subprocess
    import sys

    printed = subprocess.run([sys.executable, "-c", CHILD_PEAK_SCRIPT], capture_output=True, text=True, check=True).stdout
    peak, idle = json.loads(printed.strip().splitlines()[-1])
    assert 200 < peak < 1000
    assert idle is None  # the sleeping child from before the block does not count


def test_metrics_sections_are_checked_against_the_schema(tmp_path):
    from irmlib.metrics import MetricsSchemaError, update_metrics

    path = tmp_path / "metrics.json"
    with pytest.raises(MetricsSchemaError, match="Unknown metrics section '07_extra'.*METRICS_SCHEMA"):
        update_metrics(path, "07_extra", {})
    with pytest.raises(MetricsSchemaError, match="'best_val_loss' of run 'anger-seed0'"):
        update_metrics(path, "02_train", {"anger-seed0": {"initial_val_loss": 5.0, "steps": 3}})
    row = {"recipe": "profile", "emotion": "anger", "mode": "greedy", "p_target_base": 0.1, "p_target_irm": 0.2, "p_target_change": 0.1,
           "p_target_change_low": 0.0, "p_target_change_high": 0.2, "verdict": "raised"}
    with pytest.raises(MetricsSchemaError, match="'perplexity_ratio' of a 'per_emotion' row"):
        update_metrics(path, "03_generations", {"judge_cv_accuracy": 0.8, "prompts": 4, "per_emotion": [row], "alpha_sweep": []})
    assert not path.exists()  # nothing written by a refused section
    update_metrics(path, "03_generations", {"judge_cv_accuracy": 0.8, "prompts": 4, "alpha_sweep": [],
                                            "per_emotion": [row | {"perplexity_ratio": 1.5, "flagged_runs": "ok"}]})
    assert "Summary:" in pipeline.summary_lines(json.loads(path.read_text()))
