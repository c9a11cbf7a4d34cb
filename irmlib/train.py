"""Training an IRM on a frozen host: only the IRM learns; LM cross-entropy on the styled text.

Paper defaults (arXiv 2407.03621): Adam lr 1e-4, StepLR gamma 0.85 per epoch, batch 8, max
length 128, up to 15 epochs with early stopping on validation loss (the paper's code checked 4
times per epoch, patience 6 checks), optional L1 on the IRM output with alpha = 1e-4 / injected
layers. The objective (irmlib.objective) is either the corrected one or the paper code's (padding
scored, labels shifted twice). Built on Accelerate: the same loop runs on CPU, one GPU, or under
`accelerate launch`. A run directory holds `last/` (IRM + optimizer state, for resuming),
`best/` (lowest validation loss), `history.csv` (one row per step), `tracking.csv` (metrics of
the IRM every `track_every` steps, when a tracker is given) and `done.json`, written last.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from .files import atomic_path, release_freed_memory, write_json
from .host import Host
from .inject import Injection
from .irm import IRM, IRM_FIELDS, IRMConfig, load_irm, save_irm
from .objective import Objective, l1_penalty, lm_loss, resolve_objective, scored_positions
from .precision import Precision, autocast, choose_precision, precision_request
from . import runs

HISTORY_FIELDS = ["step", "epoch", "train_loss", "lm_loss", "l1", "lr", "seconds", "val_loss"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs as plain data, the `train:` section of a profile (plus `irm:`, the IRMConfig
    overrides); defaults are the paper's."""

    epochs: int = 15
    batch_size: int = 8
    max_length: int = 128
    lr: float = 1e-4
    lr_gamma: float = 0.85  # StepLR, stepped once per epoch
    patience: int = 6  # validation checks without a better validation loss before stopping
    val_checks_per_epoch: int = 1  # the paper's code: 4 (val_check_interval 0.25)
    objective: str = "fixed"  # irmlib.objective: fixed (next token, padding ignored) or paper_code
    label_shift: int | None = None  # overrides the objective's: position i scored against token i + label_shift
    pad_in_loss: bool | None = None  # overrides the objective's: EOS padding scored in the loss
    l1: bool = False  # the paper's optional L1 on the IRM output
    l1_alpha: float | None = None  # None: 1e-4 / injected layers, as in the paper
    track_every: int | None = None  # steps between calls of the tracker given to train_irm
    precision: str = "auto"  # irmlib.precision: auto (bf16 autocast on CPUs with native bf16), float32, bfloat16
    seed: int = 42
    max_steps: int | None = None  # stop after this many optimizer steps in total
    checkpoint_every: int = 25  # steps between resumable checkpoints
    activation_checkpointing: bool = False  # recompute the host's layers in the backward pass (less memory, ~1/3 more host compute)
    masked_indices: tuple[int, ...] = ()  # hidden indices of the IRM output zeroed during training
    irm: dict = field(default_factory=dict)  # IRMConfig fields but the host's shape (injected_layers, site, init, ...)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "max_length", "checkpoint_every", "val_checks_per_epoch", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("max_steps", "track_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer or null, got {value!r}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}.")
        irm = dict(self.irm)
        if isinstance(irm.get("injected_layers"), list):
            irm["injected_layers"] = tuple(irm["injected_layers"])
        object.__setattr__(self, "irm", irm)
        object.__setattr__(self, "masked_indices", tuple(self.masked_indices))
        unknown = sorted(set(irm) - set(IRM_FIELDS))
        if unknown:
            raise ValueError(f"unknown IRM field(s) {unknown}; valid: {', '.join(IRM_FIELDS)}.")
        self.objective_spec  # an unknown objective or a bad override fails here, not at the first step

    @property
    def objective_spec(self) -> Objective:
        """The resolved objective: label shift, padding in the loss, L1 mode."""
        return resolve_objective(self.objective, self.label_shift, self.pad_in_loss)


# Config fields under which transformers' model families keep their dropout rates.
DROPOUT_FIELDS = ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "attn_pdrop", "embd_pdrop")


@contextmanager
def host_checkpointing(host: Host, enabled: bool) -> Iterator[None]:
    """Activation checkpointing of the host's decoder layers for the duration of the block
    (transformers' gradient checkpointing, non-reentrant): each layer's activations are recomputed
    in the backward pass instead of kept, for about a third more host compute (irmlib.plan counts
    both). transformers checkpoints a layer only in training mode, so the layers are in training
    mode meanwhile; a host with dropout is refused, since training mode would switch it on."""
    if not enabled:
        yield
        return
    config = host.model.config
    dropout = [name for name in DROPOUT_FIELDS if (getattr(config, name, 0) or 0) > 0]
    dropout += [name for name, module in host.layers.named_modules() if isinstance(module, torch.nn.Dropout) and module.p > 0]
    if dropout:
        raise ValueError(f"activation_checkpointing needs a host without dropout, and '{host.name}' has {dropout[:3]}: "
                         "checkpointed layers run in training mode. Set activation_checkpointing: false for this host.")
    host.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    host.layers.train()
    try:
        yield
    finally:
        host.layers.eval()
        host.model.activation_checkpointing_disable()


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def _loader(dataset, order: list[int] | None, batch_size: int, collate):
    from torch.utils.data import DataLoader, Subset

    source = Subset(dataset, order) if order is not None else dataset
    return DataLoader(source, batch_size=batch_size, shuffle=False, collate_fn=collate)


@torch.inference_mode()
def evaluate_loss(host: Host, loader, accelerator: Accelerator, label_shift: int = 1, precision: Precision | None = None) -> float:
    """Token-weighted mean validation loss over `loader`."""
    total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    for batch in loader:
        n = scored_positions(batch["labels"], batch["input_ids"].shape[1], label_shift)
        with autocast(precision) if precision is not None else nullcontext():
            total += lm_loss(host, batch["input_ids"], batch["attention_mask"], batch["labels"], label_shift) * n
        count += n
    total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    return (total / count).item()


def _save_state(run_dir: Path, irm: IRM, optimizer, scheduler, state: dict, host: Host, meta: dict) -> None:
    """Write `run_dir/last` (irm.safetensors, irm.json, trainer_state.pt) as one unit: stage the
    whole directory beside it, then rename the old one away, the new one in, and delete the old.
    A kill at any point leaves weights and trainer state of one step together (see _recover_last)."""
    last, staging, old = run_dir / "last", run_dir / "last.staging", run_dir / "last.old"
    _recover_last(run_dir)  # leftovers of an earlier kill must not be mixed into this checkpoint
    save_irm(irm, staging, host.shape, meta)
    # Written last and atomically: a staged directory holding trainer_state.pt is complete.
    with atomic_path(staging / "trainer_state.pt") as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **state}, tmp)
    if last.exists():
        last.rename(old)
    staging.rename(last)
    shutil.rmtree(old, ignore_errors=True)


def _recover_last(run_dir: Path) -> None:
    """Finish or undo a checkpoint swap that a kill interrupted, so `last/` is one step's state.

    With `last/` present, a staged or old directory is a leftover: removed. Without it (killed
    between the two renames, or before the first checkpoint's rename), a staged directory holding
    trainer_state.pt is complete and newest, so it becomes `last/`; else the old one does.
    """
    last, staging, old = run_dir / "last", run_dir / "last.staging", run_dir / "last.old"
    if not last.exists():
        complete = [d for d in (staging, old) if (d / "trainer_state.pt").exists()]
        if complete:
            complete[0].rename(last)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def _write_rows(path: Path, rows: list[dict], fields: list[str]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


def is_complete(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "done.json").exists()


FUSED_ADAM_DEVICES = ("cpu", "cuda")


def irm_optimizer(irm: IRM, lr: float) -> torch.optim.Adam:
    """The paper's optimizer, Adam, over the IRM's weights: fused (one kernel over all weights per
    step) on devices where torch has that kernel. Unfused, torch's CPU Adam walks each weight
    tensor several times per step, which made it a tenth of a bf16 step on the embedded host; the
    update rule is the same, so only rounding differs."""
    device = next(irm.parameters()).device.type
    return torch.optim.Adam(irm.parameters(), lr=lr, fused=device in FUSED_ADAM_DEVICES)


def train_irm(host: Host, train_set, val_set, collate, config: TrainConfig, run_dir: str | Path,
              metadata: dict | None = None, accelerator: Accelerator | None = None, progress: bool = True,
              tracker: Callable[[IRM], dict] | None = None) -> dict:
    """Train an IRM for `host` on tokenised rows; resume from `run_dir/last` if present.

    train_set, val_set: indexable rows that `collate` turns into a batch dict of `input_ids`,
    `attention_mask` ([batch, tokens]) and `labels` ([batch, tokens + label_shift - 1] or
    [batch, tokens], -100 where ignored). tracker: called with the IRM before the first step and
    every `config.track_every` steps; its dict goes to `tracking.csv` with the step.
    Returns the summary written to `run_dir/done.json`; a finished run is not retrained.
    """
    run_dir = Path(run_dir)
    if is_complete(run_dir):
        return json.loads((run_dir / "done.json").read_text())
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"Empty data: {len(train_set)} training and {len(val_set)} validation rows. Check the data files and the profile's emotion.")
    accelerator = accelerator or Accelerator()
    set_seed(config.seed)
    host.model.to(accelerator.device)
    irm = IRM(IRMConfig.for_host(host, **config.irm)).to(accelerator.device)
    optimizer = irm_optimizer(irm, config.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.lr_gamma)
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_val": math.inf, "bad_checks": 0, "history": [], "stopped": None,
             "initial_val": None, "tracking": []}
    if accelerator.is_main_process:
        _recover_last(run_dir)
    accelerator.wait_for_everyone()
    if (run_dir / "last" / "trainer_state.pt").exists():
        saved = torch.load(run_dir / "last" / "trainer_state.pt", weights_only=False)
        irm.load_state_dict(load_irm(run_dir / "last", host).state_dict())
        optimizer.load_state_dict(saved.pop("optimizer"))
        scheduler.load_state_dict(saved.pop("scheduler"))
        state.update(saved)
    # A resumed run keeps the precision it started with, whatever the start-up probe says now.
    precision = choose_precision(accelerator.device, state.get("precision_request") or config.precision)
    state["precision_request"] = precision_request(precision)
    objective = config.objective_spec
    meta = {"train": asdict(config), "objective": asdict(objective), "precision": precision.as_dict(), **(metadata or {})}
    l1_alpha = (config.l1_alpha if config.l1_alpha is not None else 1e-4 / irm.config.n_injected) if config.l1 else 0.0
    irm, optimizer = accelerator.prepare(irm, optimizer)
    injection = Injection(host, irm, masked_indices=config.masked_indices)
    val_loader = accelerator.prepare(_loader(val_set, None, config.batch_size, collate))
    bare_irm = accelerator.unwrap_model(irm)
    main = accelerator.is_main_process
    history, tracking = state["history"], state["tracking"]
    steps_per_epoch = math.ceil(len(train_set) / (config.batch_size * accelerator.num_processes))
    checks = min(config.val_checks_per_epoch, steps_per_epoch)
    check_steps = {math.ceil(steps_per_epoch * k / checks) for k in range(1, checks + 1)}

    def track() -> None:
        irm.eval()
        with torch.inference_mode():
            tracking.append({"step": state["global_step"], **tracker(bare_irm)})
        irm.train()

    def validate() -> None:
        irm.eval()
        val_loss = evaluate_loss(host, val_loader, accelerator, objective.label_shift, precision)
        irm.train()
        history[-1]["val_loss"] = val_loss
        if val_loss < state["best_val"]:
            state["best_val"], state["bad_checks"] = val_loss, 0
            if main:
                save_irm(bare_irm, run_dir / "best", host.shape,
                         {**meta, "epoch": state["epoch"] + 1, "step": state["global_step"], "val_loss": val_loss})
        else:
            state["bad_checks"] += 1
            if state["bad_checks"] >= config.patience:
                state["stopped"] = "early_stopping"

    def checkpoint() -> None:
        if main:
            _save_state(run_dir, bare_irm, optimizer, scheduler, state, host, meta)
            _write_rows(run_dir / "history.csv", history, HISTORY_FIELDS)
            if tracking:
                _write_rows(run_dir / "tracking.csv", tracking, list(tracking[0]))

    if state["initial_val"] is None:
        # The validation loss before any step: with the zero-init IRM, the untouched host's.
        irm.eval()
        state["initial_val"] = evaluate_loss(host, val_loader, accelerator, objective.label_shift, precision)
    if tracker is not None and not tracking:
        track()
    irm.train()
    try:
        with host_checkpointing(host, config.activation_checkpointing):
            while state["epoch"] < config.epochs and state["stopped"] is None:
                epoch = state["epoch"]
                loader = accelerator.prepare(_loader(train_set, _epoch_order(len(train_set), config.seed, epoch), config.batch_size, collate))
                loader = accelerator.skip_first_batches(loader, state["step_in_epoch"])
                bar = tqdm(loader, total=steps_per_epoch, initial=state["step_in_epoch"], desc=f"epoch {epoch + 1}/{config.epochs}",
                           disable=not (progress and main), leave=False)
                for batch in bar:
                    started = time.perf_counter()
                    with autocast(precision):  # the backward runs outside, as torch advises
                        loss = lm_loss(host, batch["input_ids"], batch["attention_mask"], batch["labels"], objective.label_shift)
                        penalty = (l1_penalty(injection._vectors.float(), batch["attention_mask"], l1_alpha, objective.l1_mode) if l1_alpha
                                   else torch.zeros((), device=loss.device))
                    total = loss + penalty
                    if not torch.isfinite(total):
                        raise TrainingDiverged(
                            f"Loss became {total.item()} at step {state['global_step'] + 1} (epoch {epoch + 1}); training "
                            f"stopped and the last good checkpoint in {run_dir / 'last'} is kept. Lower the learning rate "
                            f"or switch on the L1 penalty, then rerun to resume from that checkpoint."
                        )
                    optimizer.zero_grad(set_to_none=True)
                    accelerator.backward(total)
                    optimizer.step()
                    state["step_in_epoch"] += 1
                    state["global_step"] += 1
                    history.append({"step": state["global_step"], "epoch": epoch + 1, "train_loss": total.item(), "lm_loss": loss.item(),
                                    "l1": penalty.item(), "lr": optimizer.param_groups[0]["lr"],
                                    "seconds": round(time.perf_counter() - started, 4), "val_loss": ""})
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                    if tracker is not None and config.track_every and state["global_step"] % config.track_every == 0:
                        track()
                    at_max = config.max_steps is not None and state["global_step"] >= config.max_steps
                    if state["step_in_epoch"] in check_steps or at_max:
                        validate()
                    if at_max and state["stopped"] is None:
                        state["stopped"] = "max_steps"
                    if state["stopped"] is not None:
                        break
                    if state["global_step"] % config.checkpoint_every == 0:
                        checkpoint()
                bar.close()
                if state["step_in_epoch"] >= steps_per_epoch:
                    scheduler.step()
                    state["epoch"], state["step_in_epoch"] = epoch + 1, 0
                checkpoint()
                accelerator.wait_for_everyone()
    finally:
        injection.remove()
    summary = {"precision": precision.name, "steps": state["global_step"], "epochs": state["epoch"], "initial_val_loss": state["initial_val"], "best_val_loss": state["best_val"],
               "stopped": state["stopped"] or "epochs", "first_train_loss": history[0]["lm_loss"],
               "last_train_loss": history[-1]["lm_loss"], "seconds_per_step": sum(r["seconds"] for r in history) / len(history)}
    if main:
        write_json(run_dir / "done.json", summary)
    accelerator.wait_for_everyone()
    return summary


def profile_datasets(host: Host, profile, emotion: str, rows: list[dict]) -> tuple[dict, Callable]:
    """Tokenised train / validation / test rows of one emotion as the profile trains on them, and
    the collate function of its objective (the paper code's EOS padding, or right padding)."""
    from .data import as_datasets, rewrite_of
    from .objective import make_paper_collate
    from .prompts import make_collate, tokenize

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


def read_history(run_dir: str | Path):
    """history.csv of a run as a DataFrame (val_loss is NaN except at epoch ends)."""
    import pandas as pd

    return pd.read_csv(Path(run_dir) / "history.csv")


def train_profile_runs(host: Host, profile, rows: list[dict], progress: bool = False) -> dict[str, dict]:
    """Train (or resume, or skip if finished) every (emotion, seed) of a profile, as notebook 02 does:
    with irmlib.mechanism.probe_tracker's striation metrics when `train.track_every` is set (notebook
    06 reads them). Returns {run name: the run's done.json summary}."""
    from .mechanism import probe_tracker

    tracker = probe_tracker(host, profile, rows) if profile.train.track_every else None
    return {runs.run_name(emotion, seed): train_for_profile(host, profile, emotion, seed, rows, progress, tracker=tracker)
            for emotion in profile.emotions for seed in profile.seeds}


def trained_irms(host: Host, profile, seeds: tuple[int, ...] | None = None, rows: list[dict] | None = None) -> dict[str, IRM]:
    """The best IRM of every (emotion, seed) of a profile, named "<emotion>-seed<seed>".

    Runs that notebook 02 has not finished are trained here first by `train_profile_runs` (given
    the alignment `rows`), so a notebook that needs them also runs alone."""
    seeds = profile.seeds if seeds is None else seeds
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
            for emotion in profile.emotions for seed in seeds}


def precision_check(host: Host, profile, rows: list[dict], run_names: tuple[str, ...], precision: str = "float32"):
    """Notebook 02's check that the dtype does not change the findings: each named run of the
    profile ("<emotion>-seed<seed>") trained again with `precision` (run variant named after it),
    beside the profile's own run, which is trained first if missing. Returns a DataFrame, one row
    per run: both precisions, both best validation losses and their relative difference, and the
    dominant index on the tracker's probe texts at the last tracked step (None without tracking).
    Empty where the profile's own runs already train in `precision` (nothing to compare)."""
    import pandas as pd

    from .profile import with_overrides

    device = host.device
    other = with_overrides(profile, {"precision": precision})
    if choose_precision(device, profile.train.precision).name == choose_precision(device, precision).name:
        return pd.DataFrame()
    from .mechanism import probe_tracker

    tracker = probe_tracker(host, profile, rows) if profile.train.track_every else None

    def last_dominant(directory: Path) -> int | None:
        tracking = directory / "tracking.csv"
        return int(pd.read_csv(tracking).dominant_index.iloc[-1]) if tracking.exists() else None

    table = {}
    for name in run_names:
        emotion, seed, _ = runs.parse_run_name(name)
        own = train_for_profile(host, profile, emotion, seed, rows, progress=False, tracker=tracker)
        twin = train_for_profile(host, other, emotion, seed, rows, progress=False, variant=precision, tracker=tracker)
        table[name] = {"precision": own["precision"], f"{precision} precision": twin["precision"],
                       "best_val_loss": own["best_val_loss"], f"best_val_loss {precision}": twin["best_val_loss"],
                       "relative_difference": abs(own["best_val_loss"] - twin["best_val_loss"]) / twin["best_val_loss"],
                       "dominant_index": last_dominant(runs.run_dir(profile, emotion, seed)),
                       f"dominant_index {precision}": last_dominant(runs.run_dir(profile, emotion, seed, precision))}
    return pd.DataFrame(table).T


def main(argv: list[str] | None = None) -> None:
    """`./reproduce.sh train [--profile P] [--gpus N]`: train every (emotion, seed) of a profile
    outside the notebooks, which then load the finished runs. With N > 1 it starts itself again
    under `accelerate launch` (DDP on N GPUs, as the paper trained: batch per GPU)."""
    import os
    import sys

    from accelerate import PartialState

    from .data import DataError, profile_rows
    from .host import load_host
    from .profile import profile_and_gpus

    profile, gpus = profile_and_gpus("./reproduce.sh train", "Train every IRM run of a profile.", argv,
                                     "GPUs for DDP under accelerate launch (default 1)")
    if gpus > 1 and "LOCAL_RANK" not in os.environ:
        # `accelerate launch` from this environment's Python, whatever is on PATH.
        os.execv(sys.executable, [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
                                  "-m", "irmlib.train", "--profile", profile.name])
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
