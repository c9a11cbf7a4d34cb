"""A profile's IRM runs: its data tokenised as it trains, the probe texts every run of an emotion
is measured on (the yardstick and the striation tracker, irmlib.health), training (or resuming,
or loading) every (emotion, seed), and `./reproduce.sh train`.

    runs/<profile>/irm/<emotion>-seed<seed>[-variant]/   (irmlib.runs)
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from typing import Callable

from accelerate import PartialState

from . import runs
from .data import DataError, as_datasets, profile_rows, rewrite_of
from .environment import release_freed_memory
from .health import Probe, flag_label, index_settled, make_probe, run_flags
from .host import Host, load_host
from .irm import IRM, load_irm
from .objective import make_paper_collate
from .profile import profile_and_gpus, with_overrides
from .prompts import make_collate, tokenize
from .train import TrainConfig, is_complete, read_done, read_history, read_tracking, train_irm


def profile_datasets(host: Host, profile, emotion: str, rows: list[dict]) -> tuple[dict, Callable]:
    """Tokenised train / validation / test rows of one emotion as the profile trains on them, and
    the collate function of its objective (the paper code's EOS padding, or right padding)."""
    objective, max_length = profile.train.objective_spec, profile.train.max_length
    # The paper's code keeps label_shift - 1 tokens beyond the inputs for the shifted labels.
    length = max_length + (objective.label_shift - 1 if objective.pad_in_loss else 0)
    splits = as_datasets(rows, emotion, limit=profile.data_limit)
    tokenised = {split: tokenize(host.tokenizer, part["question"], [rewrite_of(r) for r in part], length, profile.prompt_format,
                                 profile.loss_on) for split, part in splits.items()}
    if objective.pad_in_loss:
        collate = make_paper_collate(host.tokenizer.eos_token_id, max_length, objective.label_shift)
    else:
        collate = make_collate(host.tokenizer.pad_token_id)
    return tokenised, collate


def train_config(profile, seed: int, masked_indices: tuple[int, ...] = ()) -> TrainConfig:
    """The TrainConfig of a profile's run for one seed: its `train:` and `irm:` sections."""
    return replace(profile.train, seed=seed, masked_indices=tuple(masked_indices))


def run_probe(host: Host, profile, emotion: str, rows: list[dict]) -> Probe:
    """The probe every run of one emotion is measured on, whatever its arm: the first
    `analysis.probe_texts` validation rows of the emotion (irmlib.health), cut at the profile's
    max_length."""
    validation = as_datasets(rows, emotion, limit=profile.data_limit)["validation"]
    chosen = validation.select(range(min(profile.analysis.probe_texts, len(validation))))
    return make_probe(host, list(chosen["question"]), [rewrite_of(row) for row in chosen], profile.train.max_length)


def train_for_profile(host: Host, profile, emotion: str, seed: int, rows: list[dict], progress: bool = True,
                      masked_indices: tuple[int, ...] = (), variant: str = "", probe: Probe | None = None) -> dict:
    """Train (or resume, or skip if finished) the IRM of one (emotion, seed) of a profile.

    rows: alignment rows (all emotions); the profile's data_limit caps each split.
    masked_indices: hidden indices of the IRM output zeroed throughout training (with `variant`
    naming the run so it does not overwrite the plain one). probe: the emotion's (`run_probe`,
    built here when not given): its yardstick is measured at the start, every `track_every` steps
    with the striation tracker, and at the end.
    """
    tokenised, collate = profile_datasets(host, profile, emotion, rows)
    probe = probe or run_probe(host, profile, emotion, rows)
    metadata = {"profile": profile.name, "emotion": emotion, "seed": seed, "host": host.name,
                "prompt_format": profile.prompt_format, "loss_on": profile.loss_on}
    summary = train_irm(host, tokenised["train"], tokenised["validation"], collate, train_config(profile, seed, masked_indices),
                        runs.run_dir(profile, emotion, seed, variant), metadata=metadata, progress=progress,
                        tracker=probe.tracker(profile.analysis.top_k), yardstick=probe.batch)
    release_freed_memory()
    return summary


def run_health(run_dir, analysis) -> dict:
    """A finished run's health (irmlib.health), from its files: the yardstick of the host, at the
    start and at the end (nats), the run's own validation loss at the start, best and last (its
    objective's, not comparable across objectives), both flags and what decided them, the peak
    output RMS ratio, whether the dominant index settled, and `flag` ("ok", or the flags)."""
    summary, history, tracking = read_done(run_dir), read_history(run_dir), read_tracking(run_dir)
    flags = run_flags(summary, history, analysis)
    peak = float(tracking.output_rms_ratio.max()) if "output_rms_ratio" in tracking else None
    return {**{key: summary.get(key) for key in ("yardstick_host", "yardstick_start", "yardstick_end", "initial_val_loss",
                                                 "best_val_loss", "last_val_loss")},
            **flags, "peak_output_rms_ratio": peak, **index_settled(tracking, analysis.settled_window), "flag": flag_label(flags)}


def flags_of_runs(profile, models) -> dict[str, str]:
    """{run name: its flag label ("ok", "unstable", "host damaged", both: `run_health`)} of the
    runs among `models` (names that are not runs, such as "base" or "untrained", are left out),
    read from their run files: a flagged run is shown, never pooled as evidence."""
    return {model: run_health(runs.run_dir(profile, *runs.parse_run_name(model)), profile.analysis)["flag"]
            for model in dict.fromkeys(models) if runs.is_run_name(model)}


def arm_profiles(profile) -> dict:
    """Notebook 06's arms as profiles: the profile, then `mechanism.base`, then each arm's overrides.

    mechanism: {base: {...}, arms: {name: {...}}, replicated: [arm names run for every emotion and
    seed in `emotions` x `seeds`], emotions: [...], seeds: [...]}; the other arms run once, on the
    first emotion and seed.
    """
    spec = profile.mechanism or {}
    if not spec.get("arms"):
        raise ValueError(f"Profile '{profile.name}' has no mechanism.arms: notebook 06 needs them (see irmlib/profiles/cpu.yaml).")
    base = with_overrides(profile, spec.get("base", {}))
    return {name: with_overrides(base, overrides) for name, overrides in spec["arms"].items()}


def arm_variant(profile, arm_profile, arm: str) -> str:
    """The run name suffix of an arm: none when it trains exactly as the profile's own runs
    (notebook 02's), so the two notebooks share those runs."""
    same = (train_config(arm_profile, 0) == train_config(profile, 0)
            and (arm_profile.prompt_format, arm_profile.loss_on, arm_profile.data_limit)
            == (profile.prompt_format, profile.loss_on, profile.data_limit))
    return "" if same else f"arm{arm}"


# The part of run_health that notebooks 02 and 06 show beside each run.
HEALTH_COLUMNS = ("yardstick_host", "yardstick_start", "yardstick_end", "initial_val_loss", "last_val_loss", "unstable",
                  "host_damaged", "peak_output_rms_ratio", "final_index", "settled", "flag")


def train_profile_runs(host: Host, profile, rows: list[dict], progress: bool = False) -> dict[str, dict]:
    """Train (or resume, or skip if finished) every (emotion, seed) of a profile, as notebook 02
    does, each measured on its emotion's probe. Returns {run name: the run's done.json summary}."""
    summaries = {}
    for emotion in profile.emotions:
        probe = run_probe(host, profile, emotion, rows)
        for seed in profile.seeds:
            summaries[runs.run_name(emotion, seed)] = train_for_profile(host, profile, emotion, seed, rows, progress, probe=probe)
    return summaries


def trained_irms(host: Host, profile, rows: list[dict] | None = None) -> dict[str, IRM]:
    """The IRM every notebook reads (irmlib.runs.read_checkpoint) of every (emotion, seed) of a
    profile, named "<emotion>-seed<seed>".

    Runs that notebook 02 has not finished are trained here first by `train_profile_runs` (given
    the alignment `rows`), so a notebook that needs them also runs alone."""
    missing = [runs.run_name(e, s) for e in profile.emotions for s in profile.seeds if not is_complete(runs.run_dir(profile, e, s))]
    if missing and rows is None:
        raise FileNotFoundError(f"No finished IRM for {', '.join(missing)} in {runs.irm_dir(profile)}: run "
                                f"notebooks/02_train_irm.ipynb with profile '{profile.name}' first, or pass rows= to train them here.")
    if missing:
        steps = profile.train.max_steps or f"up to {profile.train.epochs} epochs of"
        print(f"Notebook 02's IRMs {', '.join(missing)} are not trained yet: training them here as 02 does "
              f"({steps} steps each; as long as notebook 02 takes for them).")
        started = time.perf_counter()
        train_profile_runs(host, profile, rows)
        print(f"Trained {len(missing)} IRM(s) in {time.perf_counter() - started:.0f} s.")
    return {runs.run_name(emotion, seed): load_irm(runs.read_checkpoint(profile, emotion, seed), host, device=host.device).eval()
            for emotion in profile.emotions for seed in profile.seeds}


def main(argv: list[str] | None = None) -> None:
    """`./reproduce.sh train [--profile P] [--gpus N]`: train every (emotion, seed) of a profile
    outside the notebooks, which then load the finished runs. With N > 1 it starts itself again
    under `accelerate launch` (DDP on N GPUs, as the paper trained: batch per GPU)."""
    profile, gpus = profile_and_gpus("./reproduce.sh train", "Train every IRM run of a profile.", argv,
                                     "GPUs for DDP under accelerate launch (default 1)")
    if gpus > 1 and "LOCAL_RANK" not in os.environ:
        # `accelerate launch` from this environment's Python, whatever is on PATH.
        os.execv(sys.executable, [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
                                  "-m", "irmlib.profile_runs", "--profile", profile.name])
    state = PartialState()
    try:
        rows = profile_rows(profile)
    except DataError as err:
        raise SystemExit(f"./reproduce.sh train: {err}") from None
    host = load_host(profile.host, device=state.device)
    summaries = train_profile_runs(host, profile, rows, progress=state.is_main_process)
    if state.is_main_process:
        for name, summary in summaries.items():
            print(f"{name}: validation loss {summary['initial_val_loss']:.3f} -> {summary['best_val_loss']:.3f} "
                  f"({summary['steps']} steps, {summary['precision']})")


if __name__ == "__main__":
    main()
