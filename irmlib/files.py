"""Atomic writes and the repository's places: nothing half-written is ever left behind."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def repo_root() -> Path:
    """The repository root (`IRM_ROOT` overrides), found from this file, not the working dir."""
    return Path(os.environ.get("IRM_ROOT", Path(__file__).resolve().parent.parent))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def update_metrics(path: str | Path, section: str, values: dict) -> None:
    """Merge `values` under `section` of a metrics JSON file, atomically."""
    path = Path(path)
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics[section] = values
    write_json(path, metrics)


def quiet_progress() -> None:
    """No progress bars or info logs from transformers and datasets: notebooks print results, not
    download and loading bars on stderr."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()


def git_state() -> dict:
    """The repository's commit and whether its tracked files are unchanged (figures/ and
    notebooks/ excepted: a run writes those)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo_root(), capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!figures", ":!notebooks")
    commit = git("rev-parse", "--short", "HEAD")
    return {"commit": commit or "unknown", "clean": bool(commit) and not changed}


def environment_report() -> dict:
    """Versions, commit and run, for the last cell of every notebook. Under the pipeline, the run
    id, commit and clean state are the ones it recorded when the run started (IRM_RUN_*)."""
    import platform

    import torch
    import transformers

    state = git_state()
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "device": "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
            "run": os.environ.get("IRM_RUN_ID", "interactive"), "commit": os.environ.get("IRM_RUN_COMMIT", state["commit"]),
            "clean": os.environ.get("IRM_RUN_CLEAN", str(state["clean"])) == "True"}
