"""A profile's IRM runs: its data tokenised as it trains, the striation tracker on fixed probe
texts, training (or resuming, or loading) every (emotion, seed), and `./reproduce.sh train`.

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
from .host import Host, load_host
from .irm import IRM, load_irm
from .objective import make_paper_collate
from .profile import profile_and_gpus
from .prompts import make_collate, tokenize
from .residual import irm_inputs
from .striation import StriationTracker
from .train import TrainConfig, is_complete, train_irm


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


def train_for_profile(host: Host, profile, emotion: str, seed: int, rows: list[dict], progress: bool = True,
                      masked_indices: tuple[int, ...] = (), variant: str = "", tracker: Callable[[IRM], dict] | None = None) -> dict:
    """Train (or resume, or skip if finished) the IRM of one (emotion, seed) of a profile.

    rows: alignment rows (all emotions); the profile's data_limit caps each split.
    masked_indices: hidden indices of the IRM output zeroed throughout training (with `variant`
    naming the run so it does not overwrite the plain one). tracker: see `train_irm`.
    """
    tokenised, collate = profile_datasets(host, profile, emotion, rows)
    metadata = {"profile": profile.name, "emotion": emotion, "seed": seed, "host": host.name,
                "prompt_format": profile.prompt_format, "loss_on": profile.loss_on}
    summary = train_irm(host, tokenised["train"], tokenised["validation"], collate, train_config(profile, seed, masked_indices),
                        runs.run_dir(profile, emotion, seed, variant), metadata=metadata, progress=progress, tracker=tracker)
    release_freed_memory()
    return summary


def probe_tracker(host: Host, profile, rows: list[dict]) -> StriationTracker:
    """The tracker notebooks 02 and 06 both train with, so their curves are comparable: the first
    `analysis.probe_texts` validation texts of the first emotion of notebook 06 (else of the
    profile), tokenised as the profile trains."""
    emotion = (profile.mechanism or {}).get("emotions", profile.emotions)[0]
    tokenised, collate = profile_datasets(host, profile, emotion, rows)
    validation = tokenised["validation"]
    probe = collate([validation[i] for i in range(min(profile.analysis.probe_texts, len(validation)))])
    return StriationTracker(irm_inputs(host, probe["input_ids"], probe["attention_mask"]))


def train_profile_runs(host: Host, profile, rows: list[dict], progress: bool = False) -> dict[str, dict]:
    """Train (or resume, or skip if finished) every (emotion, seed) of a profile, as notebook 02 does:
    with probe_tracker's striation metrics when `train.track_every` is set (notebook
    06 reads them). Returns {run name: the run's done.json summary}."""
    tracker = probe_tracker(host, profile, rows) if profile.train.track_every else None
    return {runs.run_name(emotion, seed): train_for_profile(host, profile, emotion, seed, rows, progress, tracker=tracker)
            for emotion in profile.emotions for seed in profile.seeds}


def trained_irms(host: Host, profile, rows: list[dict] | None = None) -> dict[str, IRM]:
    """The best IRM of every (emotion, seed) of a profile, named "<emotion>-seed<seed>".

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
    return {runs.run_name(emotion, seed): load_irm(runs.run_dir(profile, emotion, seed) / "best", host, device=host.device).eval()
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
