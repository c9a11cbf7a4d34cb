"""Each notebook runs alone: in a clean copy of the repository (no runs/, no other notebook run
first), in the smoke profile, checked cell by cell by nbval. A notebook that needs what an earlier
one makes (trained IRMs, captures) makes it with the same irmlib functions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from irmlib.pipeline import NOTEBOOKS

ROOT = Path(__file__).parent.parent


def clean_copy(destination: Path) -> Path:
    """The working tree as a fresh clone would hold it with these changes: tracked and untracked
    files that git does not ignore (so no runs/, no .venv, no figures of other runs)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a file deleted in the working tree is listed but absent
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_alone_from_a_clean_copy(name, tmp_path):
    copy = clean_copy(tmp_path / "repository")
    assert not (copy / "runs").exists()
    # IRM_ROOT puts every artifact (runs/, figures/) in the copy; irmlib itself is the installed package,
    # the same working tree's code.
    env = {**os.environ, "IRM_ROOT": str(copy), "IRM_PROFILE": "smoke"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
                             f"notebooks/{name}.ipynb"], cwd=copy, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{name} failed when run alone:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    assert (copy / "figures" / "smoke" / "metrics.json").exists()
