"""The pipeline records each notebook's kernel peak resident memory in its `.done` marker."""

from __future__ import annotations

import json

import nbformat
import pytest

from irmlib import pipeline

ALLOCATE_MB = 300


def make_notebook(path, body: str) -> None:
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("profile = None")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell(body)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)


@pytest.mark.slow
def test_done_marker_records_the_kernels_peak_rss(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IRM_ROOT", str(tmp_path))
    (tmp_path / "notebooks").mkdir()
    # Touch every page of a 300 MB buffer, free it, then idle: the peak must still be seen
    # (the high-water mark), not just the memory in use at the end.
    make_notebook(tmp_path / "notebooks" / "01_data.ipynb",
                  f"import time\nblock = bytearray({ALLOCATE_MB} * 2**20)\nblock[::4096] = b'x' * len(block[::4096])\n"
                  "del block\ntime.sleep(0.5)\nprint('ok')")
    out_dir = tmp_path / "runs" / "smoke" / "notebooks"
    assert pipeline.run_notebook("01_data", "smoke", out_dir) > 0
    marker = json.loads((out_dir / "01_data.done").read_text())
    peak = marker["peak_rss_mb"]
    # The kernel itself (python + ipykernel) takes some tens of MB; the buffer adds 300 MB.
    assert ALLOCATE_MB + 20 < peak < ALLOCATE_MB + 1500
    assert f"kernel peak memory (RSS) {peak:.0f} MB" in capsys.readouterr().out


def test_child_peak_rss_ignores_children_started_before_the_block():
    import subprocess
    import sys

    before = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    try:
        with pipeline.child_peak_rss(interval_s=0.05) as memory:
            subprocess.run([sys.executable, "-c", "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
                            "import time; time.sleep(0.5)"], check=True)
        assert 200 < memory["peak_rss_mb"] < 1000
        with pipeline.child_peak_rss(interval_s=0.05) as idle:
            pass
        assert idle["peak_rss_mb"] is None  # the sleeping child from before the block does not count
    finally:
        before.kill()
        before.wait()
