"""Profiles: every knob of a run in one YAML file (irmlib/profiles/<name>.yaml).

smoke: CI and nbval, minutes; cpu (default): the embedded host on a laptop, offline;
colab: a hub SmolLM2 on a Colab GPU; paper: Llama-2-7b-chat on SQuAD-derived data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from .files import repo_root
from .irm import IRM_FIELDS, IRMConfig
from .runs import run_name
from .train import TrainConfig

PROFILE_DIR = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "cpu"


class ProfileError(ValueError):
    """An unknown profile or field; the message lists the valid ones."""


@dataclass(frozen=True)
class Profile:
    """A run's knobs: what to train on and evaluate (here), how to train (`train`, a TrainConfig
    holding the `train:` and `irm:` sections). Build one with `load_profile`."""

    name: str
    host: str = "embedded"  # "embedded", a hub id, or a local path
    needs_network: bool = False
    data: str = "curated"  # curated: data/alignment; squad: built by the paper's generator
    emotions: tuple[str, ...] = ("anger", "sadness", "joy", "neutral")
    seeds: tuple[int, ...] = (0,)
    data_limit: int | None = None  # rows per split and emotion (None: all)
    prompt_format: str = "chat"  # chat: the host's chat template; plain: question + " " (the paper)
    loss_on: str = "answer"  # answer: answer tokens only; all: question and answer (the paper)
    train: TrainConfig = field(default_factory=TrainConfig)  # the `train:` and `irm:` sections
    max_new_tokens: int = 48
    n_eval_prompts: int = 24
    retrain_emotions: tuple[str, ...] | None = None  # notebook 05's masked retraining (None: all emotions)
    precision_check: tuple[str, ...] = ()  # runs notebook 02 trains again in float32 to compare (where bf16 applies)
    squad_rows: int | None = None  # paper profile: questions taken from SQuAD (None: all)
    squad_source: str | None = None  # a local SQuAD-format JSON file; None: the hub's rajpurkar/squad_v2
    mechanism: dict | None = None  # notebook 06: step budget and arms (overrides of this profile per arm)

    def __post_init__(self):
        for key in ("emotions", "seeds", "retrain_emotions", "precision_check"):
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        for key, allowed in (("data", DATA_SOURCES), ("prompt_format", PROMPT_FORMATS), ("loss_on", LOSS_ON)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}.")
        for key in ("max_new_tokens", "n_eval_prompts"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{key} must be a positive integer, got {value!r}.")
        if not self.emotions or not self.seeds:
            raise ValueError("emotions and seeds must each name at least one.")
        runs_of_profile = {run_name(e, seed) for e in self.emotions for seed in self.seeds}
        unknown_runs = [name for name in self.precision_check if name not in runs_of_profile]
        if unknown_runs:
            raise ValueError(f"precision_check names {unknown_runs}, not runs of this profile; choose from {sorted(runs_of_profile)}.")

    @property
    def irm(self) -> dict:
        """The `irm:` section: IRMConfig fields but the host's shape (IRMConfig.for_host(host, **profile.irm))."""
        return self.train.irm

    @property
    def run_dir(self) -> Path:
        return repo_root() / "runs" / self.name

    @property
    def figure_dir(self) -> Path:
        return repo_root() / "figures" / self.name

    def knobs(self) -> dict:
        """Every knob by its name, the IRM's defaults filled in: {"lr": 1e-4, "init": "zero", ...}."""
        irm_defaults = {f.name: f.default for f in fields(IRMConfig) if f.name in IRM_FIELDS}
        top = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "train"}
        train = {f.name: getattr(self.train, f.name) for f in fields(self.train) if f.name != "irm"}
        return {**top, **train, **irm_defaults, **self.irm}

    def differences(self, reference: str = "paper") -> dict:
        """The knobs whose value differs from the `reference` profile's (the paper's setup), as
        {knob: (this, reference)}, notebook 06's arms left out: what a notebook shows of its profile."""
        mine, other = self.knobs(), load_profile(reference).knobs()
        return {key: (value, other[key]) for key, value in mine.items() if key not in ("name", "mechanism") and value != other[key]}


DATA_SOURCES, PROMPT_FORMATS, LOSS_ON = ("curated", "squad"), ("chat", "plain"), ("answer", "all")
PROFILE_FIELDS = tuple(f.name for f in fields(Profile) if f.name not in ("name", "train"))
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name != "irm")
SECTIONS = {"train": TRAIN_FIELDS, "irm": IRM_FIELDS}


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def profile_from_env(default: str = DEFAULT_PROFILE) -> str:
    """The profile name from `IRM_PROFILE` (set by the test command for nbval), else `default`."""
    return os.environ.get("IRM_PROFILE", default)


def _route(overrides: dict, name: str) -> tuple[dict, dict, dict]:
    """Split overrides into (profile, train, irm) fields: a section (`train: {...}`, `irm: {...}`)
    or a field named directly, which goes to the one section that has it."""
    parts: dict[str, dict] = {"profile": {}, "train": {}, "irm": {}}
    unknown = []
    for key, value in overrides.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ProfileError(f"Profile '{name}': section '{key}' must be a mapping of fields, got {value!r}.")
            unknown += [f"{key}.{k}" for k in value if k not in SECTIONS[key]]
            parts[key].update(value)
        elif key in PROFILE_FIELDS:
            parts["profile"][key] = value
        elif key in TRAIN_FIELDS or key in IRM_FIELDS:
            parts["train" if key in TRAIN_FIELDS else "irm"][key] = value
        else:
            unknown.append(key)
    if unknown:
        valid = sorted(PROFILE_FIELDS + TRAIN_FIELDS + IRM_FIELDS)
        raise ProfileError(f"Unknown profile field(s) {sorted(unknown)} in profile '{name}'. Valid fields: {', '.join(valid)} "
                           "(train and IRM fields may also be given in `train:` and `irm:` sections).")
    return parts["profile"], parts["train"], parts["irm"]


def with_overrides(profile: Profile, overrides: dict) -> Profile:
    """`profile` with `overrides` applied (a field by its name, or `train:` / `irm:` sections),
    checked by the one validator of each part: Profile, TrainConfig, IRM_FIELDS."""
    top, train, irm = _route(overrides, profile.name)
    try:
        config = replace(profile.train, **train, irm={**profile.train.irm, **irm})
        return replace(profile, **top, train=config)
    except (TypeError, ValueError) as err:
        raise ProfileError(f"Profile '{profile.name}': {err}") from err


OVERRIDES_ENV = "IRM_PROFILE_OVERRIDES"


def overrides_from_env() -> dict:
    """Field overrides from `IRM_PROFILE_OVERRIDES` (a JSON object), applied to every profile a
    process and its notebook kernels load: how a whole pipeline runs a profile on another host or
    data source (tests/test_paper_dry_run.py runs the paper profile on a tiny Llama this way)."""
    import json

    text = os.environ.get(OVERRIDES_ENV, "").strip()
    if not text:
        return {}
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProfileError(f"{OVERRIDES_ENV} is not valid JSON ({err}); give an object, e.g. '{{\"max_steps\": 2}}'.") from None
    if not isinstance(overrides, dict):
        raise ProfileError(f"{OVERRIDES_ENV} must be a JSON object of fields, got {type(overrides).__name__}.")
    return overrides


def load_profile(name: str | None = None, **overrides) -> Profile:
    """Read a profile by name, then apply the overrides of `IRM_PROFILE_OVERRIDES`, then these field
    overrides (e.g. papermill parameters; None: not given)."""
    name = name or profile_from_env()
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.exists():
        raise ProfileError(f"Unknown profile '{name}'. Available profiles: {', '.join(available_profiles())}.")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ProfileError(f"Profile file {path} must hold a mapping of fields, got {type(values).__name__}.")
    profile = with_overrides(with_overrides(Profile(name=name), values), overrides_from_env())
    return with_overrides(profile, {k: v for k, v in overrides.items() if v is not None})


def profile_and_gpus(prog: str, description: str, argv: list[str] | None = None, gpus_help: str = "GPUs under DDP") -> tuple[Profile, int]:
    """The `--profile P --gpus N` command line of `./reproduce.sh plan` and `./reproduce.sh train`:
    the loaded profile and N, with a usage error naming the problem for a bad profile or N < 1."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--profile", default=profile_from_env(), help=f"one of {', '.join(available_profiles())}")
    parser.add_argument("--gpus", type=int, default=1, help=gpus_help)
    args = parser.parse_args(argv)
    if args.gpus < 1:
        parser.error("--gpus must be at least 1")
    try:
        return load_profile(args.profile), args.gpus
    except ProfileError as err:
        parser.error(str(err))
