"""The run layout: where a profile's artifacts live, what a trained IRM is called, what is evaluated.

    runs/<profile>/irm/<emotion>-seed<seed>[-variant]/   one IRM's training run (best/, last/, history.csv, done.json)
    runs/<profile>/captures/<run name>.safetensors       IRM outputs captured for the analysis notebooks
    runs/<profile>/data/squad_alignment.jsonl            the SQuAD-derived alignment set (paper profile)
    runs/<profile>/notebooks/<notebook>.ipynb, .done     the pipeline's executed notebooks and markers

Path functions take a profile or a profile's name: only the name decides the place.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from .environment import repo_root

# An emotion has no "-" (it separates the parts); a variant is any further suffix, e.g. "mask507".
_RUN_NAME = re.compile(r"(?P<emotion>[^-\s/]+)-seed(?P<seed>\d+)(?:-(?P<variant>[^\s/]+))?")


class RunName(NamedTuple):
    emotion: str
    seed: int
    variant: str = ""


def _name(profile) -> str:
    return profile if isinstance(profile, str) else profile.name


def run_root(profile) -> Path:
    """runs/<profile>/ under the repository root (`IRM_ROOT` overrides the root)."""
    return repo_root() / "runs" / _name(profile)


def irm_dir(profile) -> Path:
    return run_root(profile) / "irm"


def captures_dir(profile) -> Path:
    return run_root(profile) / "captures"


def data_dir(profile) -> Path:
    return run_root(profile) / "data"


def notebooks_dir(profile) -> Path:
    return run_root(profile) / "notebooks"


def run_name(emotion: str, seed: int, variant: str = "") -> str:
    """"<emotion>-seed<seed>", or "<emotion>-seed<seed>-<variant>" for a retrained variant."""
    name = f"{emotion}-seed{seed}" + (f"-{variant}" if variant else "")
    if not is_run_name(name) or parse_run_name(name) != (emotion, seed, variant):
        raise ValueError(f"Cannot name a run from emotion {emotion!r}, seed {seed!r}, variant {variant!r}: the emotion must "
                         "have no '-', the seed must be a non-negative integer, neither may hold spaces or '/'.")
    return name


def parse_run_name(name: str) -> RunName:
    """The (emotion, seed, variant) of a run name; ValueError for anything else (e.g. "base")."""
    match = _RUN_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"'{name}' is not a run name; expected <emotion>-seed<seed>[-variant], e.g. anger-seed0.")
    return RunName(match["emotion"], int(match["seed"]), match["variant"] or "")


def is_run_name(name: str) -> bool:
    """Whether `name` names a trained run; False for labels such as "base", "untrained" or
    "anger-seed0 (shuffled)"."""
    return _RUN_NAME.fullmatch(name) is not None


def is_run_of(name: str, emotion: str) -> bool:
    """Whether `name` names a run (any seed or variant) of `emotion`."""
    return is_run_name(name) and parse_run_name(name).emotion == emotion


def run_dir(profile, emotion: str, seed: int, variant: str = "") -> Path:
    """Where the IRM of one (emotion, seed[, variant]) of a profile trains and is kept."""
    return irm_dir(profile) / run_name(emotion, seed, variant)


# Which saved IRM of a run every notebook reads: the last, the one the tracker's final row, the
# yardstick at the end and the flags describe (best/, the lowest validation loss of the run's own
# objective, is kept beside it).
READ_CHECKPOINT = "last"


def read_checkpoint(profile, emotion: str, seed: int, variant: str = "") -> Path:
    """The saved IRM of a run that every notebook reads (READ_CHECKPOINT)."""
    return run_dir(profile, emotion, seed, variant) / READ_CHECKPOINT


def capture_path(profile, name: str) -> Path:
    """The captured IRM outputs of the run (or control, e.g. "untrained") called `name`."""
    return captures_dir(profile) / f"{name}.safetensors"


def squad_alignment_path(profile) -> Path:
    """The alignment rows the paper profile's SQuAD builder writes (notebook 01 builds them)."""
    return data_dir(profile) / "squad_alignment.jsonl"


def eval_rows(profile, rows: list[dict]) -> list[dict]:
    """The held-out rows every notebook evaluates on: the test rows of the profile's first emotion,
    in file order, at most `profile.n_eval_prompts`. A question has one row per emotion, so taking
    one emotion gives each test question once."""
    emotion = profile.emotions[0]
    return [row for row in rows if row["emotion"] == emotion and row["split"] == "test"][: profile.n_eval_prompts]


def eval_questions(profile, rows: list[dict]) -> list[str]:
    """The questions of `eval_rows`: the prompts generations are scored on."""
    return [row["question"] for row in eval_rows(profile, rows)]
