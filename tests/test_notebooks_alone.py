"""Each notebook runs alone: in a clean copy of the repository (no runs/, no other notebook run
first), in the smoke profile, checked cell by cell by nbval. A notebook that needs what an earlier
one makes (trained IRMs, captures) makes it with the same irmlib functions."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from irmlib.pipeline import NOTEBOOKS


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_alone_from_a_clean_copy(name, clean_repository):
    copy = clean_repository
    # IRM_ROOT puts every artifact (runs/, figures/) in the copy; irmlib itself is the installed package,
    # the same working tree's code.
    env = {**os.environ, "IRM_ROOT": str(copy), "IRM_PROFILE": "smoke"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
                             f"notebooks/{name}.ipynb"], cwd=copy, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{name} failed when run alone:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    assert (copy / "figures" / "smoke" / "metrics.json").exists()
