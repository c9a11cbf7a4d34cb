"""Atomic writes and the repository's places (nothing half-written is ever left behind), and the
process's housekeeping: progress bars, git state, the environment report, freed memory."""

from __future__ import annotations

import ctypes
import gc
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


# The sections of figures/<profile>/metrics.json, one per notebook part (and the run record), with
# the keys that the pipeline's end-of-run summary (irmlib.pipeline.summary_lines) and README's
# findings read: for a section, the keys it must hold; for "each run" sections ({run name: values}),
# the keys every run's values must hold; for row lists, the keys of every row.
METRICS_SCHEMA: dict[str, dict] = {
    "run": {"keys": ("run", "commit", "clean", "precision")},
    "01_data": {"keys": ("questions", "mean_words", "tone_classifier_accuracy", "judge_length_check")},
    "02_train": {"each run": ("initial_val_loss", "best_val_loss", "steps")},
    "02_precision_check": {"each run": ("relative_difference", "dominant_index", "dominant_index float32")},
    "03_generations": {"keys": ("judge_cv_accuracy", "prompts", "per_emotion", "alpha_sweep"),
                       "rows": {"per_emotion": ("emotion", "mode", "p_target_base", "p_target_irm", "p_target_change",
                                                "p_target_change_low", "p_target_change_high", "verdict", "perplexity_ratio")}},
    "04_vertical_continuity": {"keys": ("runs", "shared_dominant_index", "host_massive_index", "index_share_mean",
                                        "layer_share_mean", "vertical_continuity_mean", "steering")},
    "05_lm_head_probing": {"keys": ("overall_dominant", "inference_ablation", "training_ablation", "nudge_kl", "logit_spread_ranks")},
    "06_mechanism": {"keys": ("arms", "runs", "tone", "predictions", "host_side")},
}


class MetricsSchemaError(ValueError):
    """A metrics section or key that METRICS_SCHEMA does not have, or a key it requires missing."""


def check_metrics(section: str, values: dict) -> None:
    """Raise MetricsSchemaError unless `values` holds what METRICS_SCHEMA requires of `section`."""
    schema = METRICS_SCHEMA.get(section)
    if schema is None:
        raise MetricsSchemaError(f"Unknown metrics section '{section}'; known: {', '.join(METRICS_SCHEMA)}. "
                                 f"Add it to irmlib.files.METRICS_SCHEMA with the keys readers rely on.")
    problems = [f"'{key}'" for key in schema.get("keys", ()) if key not in values]
    problems += [f"'{key}' of run '{run}'" for run, run_values in values.items() for key in schema.get("each run", ())
                 if key not in run_values]
    problems += [f"'{key}' of a '{rows}' row" for rows, keys in schema.get("rows", {}).items() for row in values.get(rows, [])
                 for key in keys if key not in row]
    if problems:
        raise MetricsSchemaError(f"Metrics section '{section}' lacks {', '.join(dict.fromkeys(problems))} "
                                 f"(irmlib.files.METRICS_SCHEMA); compute them before writing the section.")


def update_metrics(path: str | Path, section: str, values: dict) -> None:
    """Merge `values` under `section` of a metrics JSON file, atomically, after checking them
    against METRICS_SCHEMA."""
    check_metrics(section, values)
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
