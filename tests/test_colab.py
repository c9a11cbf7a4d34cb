"""Colab badges and set-up cells come from one constant (scripts/sync_colab.py), and the set-up
cell stops with a clear message when the clone or the install fails."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import types
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "scripts" / "sync_colab.py"


def load_script():
    spec = importlib.util.spec_from_file_location("sync_colab", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync_colab = load_script()


def setup_source(name: str = "02_train_irm") -> str:
    return sync_colab.setup_cell_source(name, sync_colab.REPOSITORY, sync_colab.model_wheels(ROOT))


def run_cell(source: str) -> None:
    exec(compile(source, "colab-setup", "exec"), {"__name__": "__colab_setup__"})


@pytest.fixture
def in_colab(monkeypatch, tmp_path):
    """A fake Colab: `google.colab` imported, the working directory empty, a `git` stub first on PATH."""
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.chdir(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{sys.prefix}/bin:/usr/bin:/bin")
    monkeypatch.delenv("IRM_PROFILE", raising=False)
    return bin_dir


def fake_git(bin_dir: Path, script: str) -> None:
    git = bin_dir / "git"
    git.write_text(f"#!/bin/sh\n{script}\n")
    git.chmod(0o755)


def test_committed_notebooks_and_readme_agree_with_the_repository_constant(capsys):
    assert sync_colab.main(["--check"]) == 0, capsys.readouterr().out


def test_setup_cell_does_nothing_outside_colab(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("IRM_PROFILE", raising=False)
    monkeypatch.setattr("subprocess.run", lambda *a, **k: pytest.fail("the set-up cell ran a command outside Colab"))
    path = list(sys.path)
    run_cell(setup_source())
    assert sys.path == path and "IRM_PROFILE" not in os.environ


def test_setup_cell_stops_when_the_clone_fails(in_colab, capsys):
    fake_git(in_colab, "echo 'fatal: repository not found' >&2; exit 128")
    with pytest.raises(RuntimeError) as failure:
        run_cell(setup_source())
    message = str(failure.value)
    assert f"git clone https://github.com/{sync_colab.REPOSITORY}" in message and "exit code 128" in message
    assert "--repository you/your-fork" in message and "fatal: repository not found" in message
    # This machine has no GPU: the cell says so, how to get one and what the notebook costs without.
    printed = capsys.readouterr().out
    assert "no GPU" in printed and "Runtime > Change runtime type > T4 GPU" in printed
    assert sync_colab.CPU_COST["02_train_irm"] in printed


def test_setup_cell_stops_when_pip_fails(in_colab):
    # The clone "succeeds" with an empty directory, which pip cannot install (no network needed to fail).
    fake_git(in_colab, 'for last; do :; done; mkdir -p "$last/.git"')
    with pytest.raises(RuntimeError) as failure:
        run_cell(setup_source())
    message = str(failure.value)
    assert "pip install of the companion" in message and "Python project" in message, message


def copy_repository(tmp_path: Path, names: list[str]) -> Path:
    """The files sync_colab reads and writes, with the named notebooks, in a scratch repository."""
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    (root / "scripts").mkdir()
    (root / "requirements").mkdir()
    for name in ("README.md", "reproduce.sh", "scripts/sync_colab.py", "requirements/pins.txt"):
        shutil.copy(ROOT / name, root / name)
    for name in names:
        shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", root / "notebooks" / f"{name}.ipynb")
    return root


def test_sync_writes_a_missing_badge_and_set_up_cell_and_changes_nothing_else(tmp_path):
    root = copy_repository(tmp_path, ["01_data"])
    path = root / "notebooks" / "01_data.ipynb"
    notebook = nbformat.read(path, as_version=4)
    notebook.cells[0].source = sync_colab.BADGE_RE.sub("", notebook.cells[0].source)
    del notebook.cells[1]
    others = [cell.source for cell in notebook.cells[1:]]
    path.write_text(nbformat.writes(notebook) + "\n")

    assert sync_colab.main(["--check"], root=root) == 1
    assert sync_colab.main(["01_data"], root=root) == 0
    assert sync_colab.main(["--check"], root=root) == 0
    synced = nbformat.read(path, as_version=4)
    assert sync_colab.badge("notebooks/01_data.ipynb", sync_colab.REPOSITORY) in synced.cells[0].source
    assert synced.cells[1].metadata["tags"] == [sync_colab.SETUP_TAG] and synced.cells[1].source == setup_source("01_data")
    assert [cell.source for cell in synced.cells[2:]] == others


def test_repository_option_points_badges_clone_and_constant_at_a_fork(tmp_path):
    root = copy_repository(tmp_path, ["01_data", "02_train_irm"])
    assert sync_colab.main(["--repository", "you/your-fork"], root=root) == 0
    readme = (root / "README.md").read_text()
    assert sync_colab.REPOSITORY not in readme and "github/you/your-fork/blob/main/notebooks/01_data.ipynb" in readme
    for name in ("01_data", "02_train_irm"):
        text = (root / "notebooks" / f"{name}.ipynb").read_text()
        assert sync_colab.REPOSITORY not in text and 'https://github.com/you/your-fork\\"' in text
    assert 'REPOSITORY = "you/your-fork"' in (root / "scripts" / "sync_colab.py").read_text()
    assert sync_colab.main(["--check", "--repository", "you/your-fork"], root=root) == 0
