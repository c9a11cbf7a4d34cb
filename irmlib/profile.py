"""Profiles: every knob of a run in one YAML file (irmlib/profiles/<name>.yaml).

smoke: CI and nbval, minutes; cpu (default): the embedded host on a laptop, offline;
colab: a hub SmolLM2 on a Colab GPU; paper: Llama-2-7b-chat on SQuAD-derived data.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from .data import EMOTIONS, DuplicateKey, unique_keys
from .environment import repo_root
from .errors import CompanionError
from .fieldtypes import PositiveInt, check_fields
from .gate import GateRules
from .index_effect import EffectRules
from .irm import IRM_FIELDS, IRMConfig
from .prompts import PROMPT_FORMATS
from .runs import run_name
from .train import TrainConfig

PROFILE_DIR = Path(__file__).parent / "profiles"
# The numbered notebooks the default pipeline runs (cpu, smoke, colab, paper), and the studies that
# run with a profile of their own (07: `./reproduce.sh --profile regime`).
NOTEBOOKS = ("01_data", "02_train_irm", "03_sample_generations", "04_vertical_continuity", "05_lm_head_probing", "06_mechanism")
STUDY_NOTEBOOKS = ("07_regime",)
DEFAULT_PROFILE = "cpu"


class ProfileError(CompanionError, ValueError):
    """An unknown profile or field; the message lists the valid ones."""


@dataclass(frozen=True)
class AnalysisConfig:
    """The `analysis:` section: what the notebooks measure and the thresholds their claims are
    judged by (irmlib.studies), so no notebook holds a number of its own."""

    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)  # 03: IRM output scales of the trade-off (0: the base host)
    capture_new_tokens: PositiveInt = 10  # 04-06: greedy tokens captured after each prompt (the paper averaged over the first ones)
    nudge_sizes: tuple[float, ...] = (1.0, 4.0, 16.0)  # 05: nudges along one index, in RMS of the final hidden state
    nudge_generation_size: float = 4.0  # 05: the nudge the generations are scored at
    random_controls: PositiveInt = 3  # 05: random indices probed beside the dominant one
    probe_texts: PositiveInt = 16  # 02, 06: validation texts the striation tracker and host-side probes read
    gradient_batches: PositiveInt = 4  # 06: batches of the gradient-sign prediction
    prediction_set_size: PositiveInt = 10  # 06: the indices each hypothesis names before training (chance k / hidden per run)
    top_k: PositiveInt = 5  # 04-06: top-k agreement and vertical continuity
    min_scored_texts: PositiveInt = 10  # 03, 05, 06: a tone verdict needs at least this many prompts whose texts are both scored
    # The fluency gate (irmlib.gate.GateRules: what each threshold means), set on the dev split of
    # data/judge_eval/gate.jsonl before notebook 01 measured it on the test split.
    gate_min_words: PositiveInt = GateRules.min_words
    gate_symbol_run_chars: PositiveInt = GateRules.symbol_run_chars
    gate_max_repeats: PositiveInt = GateRules.max_repeats
    gate_top_word_share: float = GateRules.top_word_share
    gate_top_word_min_words: PositiveInt = GateRules.top_word_min_words
    gate_salad_probability: float = GateRules.salad_probability
    gate_salad_min_words: PositiveInt = GateRules.salad_min_words
    gate_order_min_gain: float = GateRules.order_min_gain
    gate_order_min_words: PositiveInt = GateRules.order_min_words
    gate_order_shuffles: PositiveInt = GateRules.order_shuffles
    gate_max_degenerate_share: float = GateRules.max_degenerate_share
    length_check_texts: PositiveInt | None = None  # 01 claim 3: rewrites the judge scores (None: all)
    judge_min_accuracy: float = 0.85  # 01 claim 4: the judge's accuracy on held-out answers
    judge_min_recall: float = 0.75  # 01 claim 4: and each label's recall
    gate_min_precision: float = 0.95  # 01 claim 5: the gate's precision on held-out degenerate text
    gate_min_recall: float = 0.95  # 01 claim 5: and its recall
    tone_separability_over_chance: float = 2.0  # 01 claim 1: bag-of-words accuracy over this multiple of chance
    length_tolerance: float = 1.25  # 01 claim 2: the longest tone's mean length within this factor of the shortest's
    precision_tolerance: float = 0.01  # 02: float32 twin's best validation loss within this relative difference
    striated_share_ratio: float = 2.0  # 04-06: a run is striated when its index share is this multiple of its layer share
    shared_index_agreement: float = 0.5  # 06 claim 1: top-1 agreement an arm needs to share one index
    nearly_every_layer: float = 0.8  # 04 claim 2: vertical continuity that counts as "nearly every layer"
    # Run health (irmlib.health), fixed before the regime map ran: which runs count as evidence.
    unstable_grad_multiple: float = 10.0  # unstable: a step's gradient norm above this multiple of the early median
    unstable_early_steps: PositiveInt = 5  # the steps whose median gradient norm is "early"
    host_damaged_margin: float = 1.0  # host_damaged: the yardstick ends more than this many nats above the host's
    settled_window: float = 1 / 3  # settled: the dominant index held over this last share of the tracked steps
    # Does the dominant index do anything (irmlib.index_effect.EffectRules): fixed before it was measured.
    effect_min_kl: float = 0.05  # KL(irm || host) in nats below which an IRM has no effect to explain
    effect_much: float = 0.5  # a share of the IRM's effect that counts as much of it
    effect_little: float = 0.2  # and as hardly any

    def effect_rules(self) -> EffectRules:
        """The dominant-index effect's thresholds as irmlib.index_effect reads them."""
        return EffectRules(min_change=self.effect_min_kl, much=self.effect_much, little=self.effect_little)

    def gate_rules(self) -> GateRules:
        """The fluency gate's thresholds as irmlib.gate reads them."""
        return GateRules(**{f.name: getattr(self, f"gate_{f.name}") for f in fields(GateRules)})

    def __post_init__(self):
        check_fields(self, "analysis.")
        for key in ("alphas", "nudge_sizes"):
            value = getattr(self, key)
            if not value or any(v < 0 for v in value):
                raise ValueError(f"analysis.{key} must be a non-empty list of non-negative numbers, got {list(value)!r}.")
        if not self.unstable_grad_multiple > 1 or not self.host_damaged_margin > 0:
            raise ValueError(f"analysis.unstable_grad_multiple must be above 1 and analysis.host_damaged_margin above 0 (nats), "
                             f"got {self.unstable_grad_multiple!r} and {self.host_damaged_margin!r}.")
        for key in ("gate_top_word_share", "gate_salad_probability", "gate_max_degenerate_share", "settled_window", "effect_much",
                    "effect_little"):
            if not 0 < getattr(self, key) <= 1:
                raise ValueError(f"analysis.{key} is a share: give a number above 0 and at most 1, got {getattr(self, key)!r}.")


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
    data_limit: PositiveInt | None = None  # rows per split and emotion (None: all)
    prompt_format: str = "chat"  # chat: the host's chat template; plain: question + " " (the paper)
    loss_on: str = "answer"  # answer: answer tokens only; all: question and answer (the paper)
    train: TrainConfig = field(default_factory=TrainConfig)  # the `train:` and `irm:` sections
    max_new_tokens: PositiveInt = 48
    n_eval_prompts: PositiveInt = 24
    retrain_emotions: tuple[str, ...] | None = None  # notebook 05's masked retraining (None: all emotions)
    precision_check: tuple[str, ...] = ()  # runs `./reproduce.sh bench --precision-check` trains again in float32 (where bf16 applies)
    squad_rows: PositiveInt | None = None  # paper profile: questions taken from SQuAD (None: all)
    squad_source: str | None = None  # a local SQuAD-format JSON file; None: the hub's rajpurkar/squad_v2
    mechanism: dict | None = None  # notebook 06: step budget and arms (overrides of this profile per arm)
    tone_arm: str | None = None  # notebook 03: the mechanism arm whose runs (first seed, every emotion) it scores beside 02's
    regime: dict | None = None  # notebook 07: the regime map's arms, rates, schedules and step budget (irmlib.studies.regime)
    notebooks: tuple[str, ...] = NOTEBOOKS  # what ./reproduce.sh runs with this profile
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)  # the `analysis:` section

    def __post_init__(self):
        check_fields(self, "", skip=("train", "analysis"))
        for key in ("emotions", "retrain_emotions"):
            unknown = sorted(set(getattr(self, key) or ()) - set(EMOTIONS))
            if unknown:
                raise ValueError(f"{key}: {unknown} unknown; choose from {', '.join(EMOTIONS)}.")
        for key, allowed in (("data", DATA_SOURCES), ("prompt_format", PROMPT_FORMATS), ("loss_on", LOSS_ON)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}.")
        if not self.emotions or not self.seeds:
            raise ValueError("emotions and seeds must each name at least one.")
        unknown_notebooks = [name for name in self.notebooks if name not in NOTEBOOKS + STUDY_NOTEBOOKS]
        if unknown_notebooks or not self.notebooks:
            raise ValueError(f"notebooks: {unknown_notebooks or 'none'} given; choose from {', '.join(NOTEBOOKS + STUDY_NOTEBOOKS)}.")
        arms = (self.mechanism or {}).get("arms", {})
        if self.tone_arm is not None and self.tone_arm not in arms:
            raise ValueError(f"tone_arm: '{self.tone_arm}' is not an arm of mechanism.arms; choose from {', '.join(arms) or 'none (add arms)'}.")
        runs_of_profile = {run_name(e, seed) for e in self.emotions for seed in self.seeds}
        unknown_runs = [name for name in self.precision_check if name not in runs_of_profile]
        if unknown_runs:
            raise ValueError(f"precision_check names {unknown_runs}, not runs of this profile; choose from {sorted(runs_of_profile)}.")

    @property
    def irm(self) -> dict:
        """The `irm:` section: IRMConfig fields but the host's shape (IRMConfig.for_host(host, **profile.irm))."""
        return self.train.irm

    @property
    def figure_dir(self) -> Path:
        return repo_root() / "figures" / self.name

    def knobs(self) -> dict:
        """Every knob by its name, the IRM's defaults filled in: {"lr": 1e-4, "init": "zero", ...}."""
        irm_defaults = {f.name: f.default for f in fields(IRMConfig) if f.name in IRM_FIELDS}
        top = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("train", "analysis")}
        train = {f.name: getattr(self.train, f.name) for f in fields(self.train) if f.name != "irm"}
        return {**top, **train, **irm_defaults, **self.irm}

    def differences(self, reference: str = "paper") -> dict:
        """The knobs whose value differs from the `reference` profile's (the paper's setup), as
        {knob: (this, reference)}, notebook 06's arms left out: what a notebook shows of its profile."""
        # The reference as its files give it: IRM_PROFILE_OVERRIDES changes the profile shown, not the paper's setup.
        mine, other = self.knobs(), file_profile(reference).knobs()
        return {key: (value, other[key]) for key, value in mine.items() if key not in ("name", "mechanism") and value != other[key]}


DATA_SOURCES, LOSS_ON = ("curated", "squad"), ("answer", "all")
PROFILE_FIELDS = tuple(f.name for f in fields(Profile) if f.name not in ("name", "train", "analysis"))
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name != "irm")
ANALYSIS_FIELDS = tuple(f.name for f in fields(AnalysisConfig))
SECTIONS = {"train": TRAIN_FIELDS, "irm": IRM_FIELDS, "analysis": ANALYSIS_FIELDS}
# A profile file may name the profile it extends: its fields are read first, this file's on top.
EXTENDS = "extends"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def profile_from_env(default: str = DEFAULT_PROFILE) -> str:
    """The profile name from `IRM_PROFILE` (set by the test command for nbval), else `default`."""
    return os.environ.get("IRM_PROFILE", default)


def _route(overrides: dict, name: str) -> dict[str, dict]:
    """Split overrides into profile, train, irm and analysis fields: a section (`train: {...}`,
    `irm: {...}`, `analysis: {...}`) or a field named directly, which goes to the one section
    that has it."""
    parts: dict[str, dict] = {"profile": {}, "train": {}, "irm": {}, "analysis": {}}
    unknown = []
    for key, value in overrides.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ProfileError(f"Profile '{name}': section '{key}' must be a mapping of fields, got {value!r}.")
            unknown += [f"{key}.{k!r}" for k in value if k not in SECTIONS[key]]
            parts[key].update(value)
        elif key in PROFILE_FIELDS:
            parts["profile"][key] = value
        elif section := next((s for s, names in SECTIONS.items() if key in names), None):
            parts[section][key] = value
        else:
            unknown.append(repr(key))
    if unknown:
        valid = sorted(PROFILE_FIELDS + TRAIN_FIELDS + IRM_FIELDS + ANALYSIS_FIELDS)
        raise ProfileError(f"Unknown profile field(s) {', '.join(sorted(unknown))} in profile '{name}'. Valid fields: {', '.join(valid)} "
                           "(train, IRM and analysis fields may also be given in `train:`, `irm:` and `analysis:` sections).")
    return parts


def with_overrides(profile: Profile, overrides: dict) -> Profile:
    """`profile` with `overrides` applied (a field by its name, or `train:` / `irm:` / `analysis:`
    sections), checked by the one validator of each part: Profile, TrainConfig, IRM_FIELDS,
    AnalysisConfig."""
    parts = _route(overrides, profile.name)
    try:
        config = replace(profile.train, **parts["train"], irm={**profile.train.irm, **parts["irm"]})
        analysis = replace(profile.analysis, **parts["analysis"])
        return replace(profile, **parts["profile"], train=config, analysis=analysis)
    except (TypeError, ValueError) as err:
        raise ProfileError(f"Profile '{profile.name}': {err}") from err


OVERRIDES_ENV = "IRM_PROFILE_OVERRIDES"


def overrides_from_env() -> dict:
    """Field overrides from `IRM_PROFILE_OVERRIDES` (a JSON object), applied to every profile a
    process and its notebook kernels load: how a whole pipeline runs a profile on another host or
    data source (tests/test_paper_dry_run.py runs the paper profile on a tiny Llama this way)."""
    text = os.environ.get(OVERRIDES_ENV, "").strip()
    if not text:
        return {}
    try:
        overrides = json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as err:
        raise ProfileError(f"{OVERRIDES_ENV} is not valid JSON ({err}); give an object, e.g. '{{\"max_steps\": 2}}'.") from None
    except DuplicateKey as err:
        raise ProfileError(f"{OVERRIDES_ENV} gives the field '{err.args[0]}' twice; keep one.") from None
    if not isinstance(overrides, dict):
        raise ProfileError(f"{OVERRIDES_ENV} must be a JSON object of fields, got {type(overrides).__name__}.")
    return overrides


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path):
    """A profile file's contents (empty: {}); ProfileError naming the file and the line for
    invalid YAML, a key given twice, or bytes that are not UTF-8 (a leading BOM is allowed)."""
    try:
        return yaml.load(path.read_text(encoding="utf-8-sig"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as err:
        raise ProfileError(f"Profile file {path} is not UTF-8 text ({err}); save it as UTF-8.") from None
    except yaml.YAMLError as err:
        raise ProfileError(f"Profile file {path} is not valid YAML: {str(err).strip()}") from None


def profile_files(name: str) -> list[tuple[Path, dict]]:
    """Each profile file's path and field mapping, the file `name` and every file it extends, the
    furthest first."""
    chain: list[dict] = []
    while name is not None:
        path = PROFILE_DIR / f"{name}.yaml"
        if not path.exists():
            raise ProfileError(f"Unknown profile '{name}'. Available profiles: {', '.join(available_profiles())}.")
        values = read_yaml(path)
        if not isinstance(values, dict):
            raise ProfileError(f"Profile file {path} must hold a mapping of fields, got {type(values).__name__}.")
        values = dict(values)
        name = values.pop(EXTENDS, None)
        if name is not None and (not isinstance(name, str) or not (PROFILE_DIR / f"{name}.yaml").exists()
                                 or name in {c.get("_name") for c in chain} or name == path.stem):
            raise ProfileError(f"Profile file {path}: '{EXTENDS}: {name}' must name another profile, without a cycle; "
                               f"available profiles: {', '.join(available_profiles())}.")
        chain.insert(0, {**values, "_name": path.stem, "_path": path})
    return [(values["_path"], {k: v for k, v in values.items() if k not in ("_name", "_path")}) for values in chain]


def _named(function, source: str):
    """`function`, its ProfileError prefixed with where the fields came from (a file, a variable)."""
    def call(*args):
        try:
            return function(*args)
        except ProfileError as err:
            raise ProfileError(f"{source}: {err}") from None
    return call


def file_profile(name: str) -> Profile:
    """A profile as its files give it (the file `name` and every file it extends), without
    `IRM_PROFILE_OVERRIDES`."""
    profile = Profile(name=name)
    for path, values in profile_files(name):
        profile = _named(with_overrides, f"Profile file {path}")(profile, values)
    return profile


def load_profile(name: str | None = None, **overrides) -> Profile:
    """Read a profile by name (and the profiles it extends), then apply the overrides of
    `IRM_PROFILE_OVERRIDES`, then these field overrides (a notebook's `overrides` parameter). None
    is a value (`track_every=None` switches tracking off), not "not given"."""
    profile = _named(with_overrides, OVERRIDES_ENV)(file_profile(name or profile_from_env()), overrides_from_env())
    return with_overrides(profile, overrides)


def profile_and_gpus(prog: str, description: str, argv: list[str] | None = None, gpus_help: str = "GPUs under DDP") -> tuple[Profile, int]:
    """The `--profile P --gpus N` command line of `./reproduce.sh plan` and `./reproduce.sh train`:
    the loaded profile and N, with a usage error naming the problem for a bad profile or N < 1."""
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
