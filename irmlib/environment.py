"""The process and its place: the repository root, git state, the environment report, quiet
progress bars, and freed memory handed back to the system."""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import subprocess
from pathlib import Path

import torch


def repo_root() -> Path:
    """The repository root (`IRM_ROOT` overrides), found from this file, not the working dir."""
    return Path(os.environ.get("IRM_ROOT", Path(__file__).resolve().parent.parent))


def quiet_progress() -> None:
    """No progress bars or info logs from transformers and datasets: notebooks print results, not
    download and loading bars on stderr."""
    # Lazy: transformers and datasets take seconds to import, and most users of this module (the
    # run layout, the pipeline's command line) never need them.
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()


def git_state() -> dict:
    """The repository's commit and whether its tracked files are unchanged (figures/ and
    notebooks/ excepted: a run writes those)."""
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
    import transformers  # lazy: see quiet_progress

    state = git_state()
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "device": "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
            "run": os.environ.get("IRM_RUN_ID", "interactive"), "commit": os.environ.get("IRM_RUN_COMMIT", state["commit"]),
            "clean": os.environ.get("IRM_RUN_CLEAN", str(state["clean"])) == "True"}


def release_freed_memory() -> bool:
    """Return the memory freed since the last call to the operating system; True where that was
    possible (glibc's `malloc_trim`). glibc keeps freed heap memory for reuse, and the activations
    of training and the key-value caches of generation, of ever-changing shapes, leave it
    fragmented: a kernel that trains IRM after IRM (notebook 06 trains twelve) otherwise carries
    about a gigabyte of freed memory from one training into the next. Called after each training
    and each model's generations."""
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):  # not glibc: macOS, Windows, musl
        return False
    trim(0)
    return True
