"""Profiles: every knob of a run in one YAML file (irmlib/profiles/<name>.yaml).

smoke: CI and nbval, minutes; cpu (default): the embedded host on a laptop, offline;
colab: a hub SmolLM2 on a Colab GPU; paper: Llama-2-7b-chat on SQuAD-derived data.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .files import repo_root

PROFILE_DIR = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "cpu"


class ProfileError(ValueError):
    """An unknown profile or field; the message lists the valid ones."""


@dataclass(frozen=True)
class Profile:
    name: str
    host: str = "embedded"  # "embedded", a hub id, or a local path
    needs_network: bool = False
    data: str = "curated"  # curated: data/alignment; squad: built by the paper's generator
    emotions: tuple[str, ...] = ("anger", "sadness", "joy", "neutral")
    seeds: tuple[int, ...] = (0,)
    data_limit: int | None = None  # rows per split and emotion (None: all)
    prompt_format: str = "chat"  # chat: the host's chat template; plain: question + " " (the paper)
    loss_on: str = "answer"  # answer: answer tokens only; all: question and answer (the paper)
    injected_layers: tuple[int, ...] | None = None  # None: every host layer (the paper)
    width_factor: int = 3
    site: str = "post_attn"
    init: str = "zero"  # zero: last layer zeroed; paper: N(0, 0.02) weights, zero biases (the paper's code); torch
    output_rotation_seed: int | None = None  # Adam in a fixed random rotation of the IRM output's basis (06, arm E)
    objective: str = "fixed"  # fixed: next token, padding ignored; paper_code: labels shifted twice, EOS padding scored
    label_shift: int | None = None  # overrides the objective's (1 or 2)
    pad_in_loss: bool | None = None  # overrides the objective's
    max_length: int = 128
    batch_size: int = 8
    epochs: int = 15
    max_steps: int | None = None
    lr: float = 1e-4
    lr_gamma: float = 0.85
    precision: str = "auto"  # irmlib.precision: auto (bf16 autocast on CPUs with native bf16 that prove faster), float32, bfloat16
    patience: int = 6  # validation checks without improvement before stopping
    val_checks_per_epoch: int = 1  # the paper's code: 4
    l1: bool = False
    track_every: int | None = None  # steps between striation metrics on probe texts during training
    mechanism: dict | None = None  # notebook 06: step budget and arms (profile overrides per arm)
    max_new_tokens: int = 48
    n_eval_prompts: int = 24
    retrain_emotions: tuple[str, ...] | None = None  # notebook 05's masked retraining (None: all emotions)
    squad_rows: int | None = None  # paper profile: questions taken from SQuAD (None: all)

    @property
    def run_dir(self) -> Path:
        return repo_root() / "runs" / self.name

    @property
    def figure_dir(self) -> Path:
        return repo_root() / "figures" / self.name

    def irm_overrides(self) -> dict:
        return {"injected_layers": self.injected_layers, "width_factor": self.width_factor, "site": self.site, "init": self.init,
                "output_rotation_seed": self.output_rotation_seed}

    def objective_spec(self):
        """The resolved training objective (irmlib.objective.Objective)."""
        from .objective import resolve_objective

        return resolve_objective(self.objective, self.label_shift, self.pad_in_loss)

    def as_dict(self) -> dict:
        return asdict(self)

    def differences(self, reference: str = "paper") -> dict:
        """The fields whose value differs from the `reference` profile's (the paper's setup), as
        {field: (this, reference)}, notebook 06's arms left out: what a notebook shows of its profile."""
        other = load_profile(reference)
        return {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
                if f.name not in ("name", "mechanism") and getattr(self, f.name) != getattr(other, f.name)}


FIELDS = {f.name for f in fields(Profile)}


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def profile_from_env(default: str = DEFAULT_PROFILE) -> str:
    """The profile name from `IRM_PROFILE` (set by the test command for nbval), else `default`."""
    return os.environ.get("IRM_PROFILE", default)


def load_profile(name: str | None = None, **overrides) -> Profile:
    """Read a profile by name and apply field overrides (e.g. from papermill parameters)."""
    name = name or profile_from_env()
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.exists():
        raise ProfileError(f"Unknown profile '{name}'. Available profiles: {', '.join(available_profiles())}.")
    values = yaml.safe_load(path.read_text()) or {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise ProfileError(f"Unknown profile field(s) {unknown} in profile '{name}'. Valid fields: {', '.join(sorted(FIELDS))}.")
    for key in ("emotions", "seeds", "injected_layers", "retrain_emotions"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    values["name"] = name
    profile = Profile(**values)
    for key in ("max_length", "batch_size", "epochs", "max_new_tokens", "n_eval_prompts"):
        value = getattr(profile, key)
        if not isinstance(value, int) or value <= 0:
            raise ProfileError(f"Profile field '{key}' must be a positive integer, got {value!r}.")
    return profile
