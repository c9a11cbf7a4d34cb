"""Training an IRM on a frozen host: only the IRM learns; LM cross-entropy on the styled text.

Paper defaults (arXiv 2407.03621): Adam lr 1e-4, StepLR gamma 0.85 per epoch, batch 8, max
length 128, up to 15 epochs with early stopping on validation loss (the paper's code checked 4
times per epoch, patience 6 checks), optional L1 on the IRM output with alpha = 1e-4 / injected
layers. The objective (irmlib.objective) is either the corrected one or the paper code's (padding
scored, labels shifted twice). For stable training beyond the paper's recipe: a linear warmup, a
cosine or linear decay to a floor, and clipping of the gradient's global norm (all off by default). Built on Accelerate: the same loop runs on CPU, one GPU, or under
`accelerate launch`. A run directory holds `last/` (IRM + optimizer state, for resuming),
`best/` (lowest validation loss), `history.csv` (one row per step), `tracking.csv` (metrics of
the IRM every `track_every` steps, when a tracker is given) and `done.json`, written last.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
import typing
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from filelock import FileLock, Timeout
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .atomic import atomic_path, write_json
from .errors import CompanionError, RunFileError, RunLockedError
from .fieldtypes import PositiveInt, check_fields, check_mapping
from .health import yardstick_loss
from .host import Host
from .inject import Injection
from .irm import INITS, IRM, IRM_FIELDS, SITES, IRMConfig, load_irm, save_irm
from .objective import Objective, l1_penalty, lm_loss, resolve_objective, scored_positions
from .precision import Precision, autocast, choose_precision, normalise_request, precision_request

DECAYS = ("step", "cosine", "linear")
HISTORY_FIELDS = ["step", "epoch", "train_loss", "lm_loss", "l1", "grad_norm", "lr", "seconds", "val_loss"]


class TrainingDiverged(CompanionError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs as plain data, the `train:` section of a profile (plus `irm:`, the IRMConfig
    overrides); defaults are the paper's."""

    epochs: PositiveInt = 15
    batch_size: PositiveInt = 8
    max_length: PositiveInt = 128
    lr: float = 1e-4
    lr_gamma: float = 0.85  # decay "step": the rate times lr_gamma after each epoch (the paper's StepLR)
    warmup_steps: int = 0  # optimizer steps over which the rate rises linearly to lr (0: none, the paper's)
    decay: str = "step"  # step (lr_gamma per epoch), cosine or linear (to decay_floor x lr at the last step)
    decay_floor: float = 0.0  # cosine and linear: the rate at the last step, as a fraction of lr
    clip_grad_norm: float | None = None  # the gradient's global norm is clipped to this (None: no clipping, the paper's)
    patience: PositiveInt = 6  # validation checks without a better validation loss before stopping
    val_checks_per_epoch: PositiveInt = 1  # the paper's code: 4 (val_check_interval 0.25)
    objective: str = "fixed"  # irmlib.objective: fixed (next token, padding ignored) or paper_code
    label_shift: int | None = None  # overrides the objective's: position i scored against token i + label_shift
    pad_in_loss: bool | None = None  # overrides the objective's: EOS padding scored in the loss
    l1: bool = False  # the paper's optional L1 on the IRM output
    l1_alpha: float | None = None  # None: 1e-4 / injected layers, as in the paper
    track_every: PositiveInt | None = None  # steps between calls of the tracker given to train_irm
    precision: str = "auto"  # irmlib.precision: auto (bf16 autocast on CPUs with native bf16), float32, bfloat16
    seed: int = 42
    max_steps: PositiveInt | None = None  # stop after this many optimizer steps in total
    stop_yardstick_margin: float | None = None  # stop once the yardstick is this many nats above the host's at two tracked steps
    checkpoint_every: PositiveInt = 25  # steps between resumable checkpoints
    activation_checkpointing: bool = False  # recompute the host's layers in the backward pass (less memory, ~1/3 more host compute)
    masked_indices: tuple[int, ...] = ()  # hidden indices of the IRM output zeroed during training
    irm: dict = field(default_factory=dict)  # IRMConfig fields but the host's shape (injected_layers, site, init, ...)

    def __post_init__(self):
        check_fields(self, "train.", skip=("irm",))
        if not self.lr > 0 or not self.lr_gamma > 0:
            raise ValueError(f"train.lr and train.lr_gamma must be positive, got {self.lr!r} and {self.lr_gamma!r}.")
        if self.decay not in DECAYS:
            raise ValueError(f"train.decay: '{self.decay}' unknown; choose one of {', '.join(DECAYS)}.")
        if self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps: expected 0 or more steps, got {self.warmup_steps!r}.")
        if not 0 <= self.decay_floor <= 1:
            raise ValueError(f"train.decay_floor is a fraction of lr: give a number from 0 to 1, got {self.decay_floor!r}.")
        if self.stop_yardstick_margin is not None and not self.stop_yardstick_margin > 0:
            raise ValueError(f"train.stop_yardstick_margin: expected a positive number of nats or null, got {self.stop_yardstick_margin!r}.")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"train.clip_grad_norm: expected a positive norm or null, got {self.clip_grad_norm!r}.")
        if not isinstance(self.irm, dict):
            raise ValueError(f"irm: expected a mapping of IRM fields, got {self.irm!r}.")
        unknown = sorted(set(self.irm) - set(IRM_FIELDS))
        if unknown:
            raise ValueError(f"unknown IRM field(s) {unknown}; valid: {', '.join(IRM_FIELDS)}.")
        object.__setattr__(self, "irm", check_mapping(self.irm, typing.get_type_hints(IRMConfig), "irm."))
        for name, choices in (("site", SITES), ("init", INITS)):
            if name in self.irm and self.irm[name] not in choices:
                raise ValueError(f"irm.{name}: '{self.irm[name]}' unknown; choose one of {', '.join(choices)}.")
        normalise_request(self.precision)  # an unknown precision fails here, not when training starts
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


def _save_state(run_dir: Path, irm: IRM, optimizer, scheduler, state: "TrainState", host: Host, meta: dict) -> None:
    """Write `run_dir/last` (irm.safetensors, irm.json, trainer_state.pt) as one unit: stage the
    whole directory beside it, then rename the old one away, the new one in, and delete the old.
    A kill at any point leaves weights and trainer state of one step together (see _recover_last)."""
    last, staging, old = run_dir / "last", run_dir / "last.staging", run_dir / "last.old"
    _recover_last(run_dir)  # leftovers of an earlier kill must not be mixed into this checkpoint
    save_irm(irm, staging, host.shape, meta)
    # Written last and atomically: a staged directory holding trainer_state.pt is complete.
    with atomic_path(staging / "trainer_state.pt") as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **asdict(state)}, tmp)
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


def read_done(run_dir: str | Path) -> dict:
    """A finished run's summary (done.json); RunFileError, naming the file, where it is damaged."""
    path = Path(run_dir) / "done.json"
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunFileError(f"{path}: not valid JSON ({err}). Delete it to train the run again from its last checkpoint, "
                           f"or delete {Path(run_dir)} to retrain it from the start.") from None
    if not isinstance(summary, dict) or not {"best_val_loss", "steps"} <= set(summary):
        raise RunFileError(f"{path}: not a run summary this project wrote. Delete it to train the run again from its last checkpoint.")
    return summary


@contextmanager
def writer_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run's writer lock (`run_dir/.writer.lock`, the `filelock` package) for the block:
    a second process that would train the same run stops at once with RunLockedError naming the
    holder's pid. The operating system releases the lock when its holder dies, so a killed run
    never blocks a rerun. Readers of finished runs take no lock."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock, holder = FileLock(run_dir / ".writer.lock", timeout=0), run_dir / ".writer.pid"
    try:
        lock.acquire()
    except Timeout:
        pid = holder.read_text().strip() if holder.exists() else "unknown"
        raise RunLockedError(f"Run {run_dir} is being trained by another process (pid {pid}); wait for it to finish, "
                             f"or stop it, then run again (the finished run is loaded, an interrupted one resumes).") from None
    try:
        holder.write_text(f"{os.getpid()}\n")
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


FUSED_ADAM_DEVICES = ("cpu", "cuda")


def irm_optimizer(irm: IRM, lr: float) -> torch.optim.Adam:
    """The paper's optimizer, Adam, over the IRM's weights: fused (one kernel over all weights per
    step) on devices where torch has that kernel. Unfused, torch's CPU Adam walks each weight
    tensor several times per step, which made it a tenth of a bf16 step on the embedded host; the
    update rule is the same, so only rounding differs."""
    device = next(irm.parameters()).device.type
    return torch.optim.Adam(irm.parameters(), lr=lr, fused=device in FUSED_ADAM_DEVICES)


@dataclass
class TrainState:
    """Where a training run stands: what `last/trainer_state.pt` holds besides the optimizer's and
    scheduler's state, so a resumed run goes on exactly where it stopped."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_val: float = math.inf
    bad_checks: int = 0  # validation checks since the best one
    stopped: str | None = None  # why training ended early: "early_stopping", "max_steps" or "yardstick" (stop_yardstick_margin)
    initial_val: float | None = None  # the validation loss before the first step
    yardstick_host: float | None = None  # the yardstick (irmlib.health) of the host without an IRM
    yardstick_start: float | None = None  # and with the IRM before the first step
    precision_request: str | None = None  # what a resumed run asks choose_precision for
    history: list[dict] = field(default_factory=list)  # one row per step (HISTORY_FIELDS)
    tracking: list[dict] = field(default_factory=list)  # one row per tracked step


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """The optimizer steps a run takes if nothing stops it early: every epoch, or max_steps."""
    steps = config.epochs * steps_per_epoch
    return min(steps, config.max_steps) if config.max_steps is not None else steps


def lr_factor(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step `step` (0: the first) as a fraction of `config.lr`: a
    linear warmup over `warmup_steps` ((step + 1) / warmup_steps), times the decay: "step" is
    lr_gamma ** (finished epochs), the paper's StepLR; "cosine" and "linear" fall from 1 at the
    end of the warmup to `decay_floor` at the run's last step (`total_steps`)."""
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.decay == "step":
        return warm * config.lr_gamma ** (step // steps_per_epoch)
    span = max(total_steps(config, steps_per_epoch) - 1 - config.warmup_steps, 1)
    progress = min(max(step - config.warmup_steps, 0) / span, 1.0)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if config.decay == "cosine" else 1.0 - progress
    return warm * (config.decay_floor + (1.0 - config.decay_floor) * shape)


def train_step(host: Host, injection: Injection, optimizer: torch.optim.Optimizer, batch: dict, objective: Objective,
               precision: Precision, l1_alpha: float = 0.0, accelerator: Accelerator | None = None,
               clip_grad_norm: float | None = None) -> dict[str, float]:
    """One optimizer step of the IRM that `injection` runs inside `host`, on one collated batch
    (`input_ids`, `attention_mask` [batch, tokens], `labels`): the forward under `precision`'s
    autocast, the backward and Adam outside it, as torch advises; with `clip_grad_norm`, the
    gradient's global norm is clipped to it before Adam. Returns the LM loss, the L1 penalty,
    their sum and the gradient's global norm (before clipping); raises TrainingDiverged, before
    any update, if the sum is not finite.
    The benchmark times exactly this function."""
    with autocast(precision):
        loss = lm_loss(host, batch["input_ids"], batch["attention_mask"], batch["labels"], objective.label_shift)
        penalty = (l1_penalty(injection.vectors.float(), batch["attention_mask"], l1_alpha, objective.l1_mode) if l1_alpha
                   else torch.zeros((), device=loss.device))
    total = loss + penalty
    if not torch.isfinite(total):
        raise TrainingDiverged(f"Loss became {total.item()}")
    optimizer.zero_grad(set_to_none=True)
    if accelerator is not None:
        accelerator.backward(total)
    else:
        total.backward()
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    if clip_grad_norm is not None:
        clip = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
        grad_norm = clip(parameters, clip_grad_norm)
    else:
        # After the backward, DDP has averaged the gradients: every process sees the global norm.
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    optimizer.step()
    return {"lm_loss": loss.item(), "l1": penalty.item(), "train_loss": total.item(), "grad_norm": float(grad_norm)}


def _validation_loss(host: Host, irm, loader, accelerator: Accelerator, objective: Objective, precision: Precision) -> float:
    irm.eval()
    loss = evaluate_loss(host, loader, accelerator, objective.label_shift, precision)
    irm.train()
    return loss


def _measured(irm, measure: Callable[[], object]):
    """`measure()` with the IRM in eval mode and no autograd, then back to training."""
    irm.eval()
    with torch.inference_mode():
        value = measure()
    irm.train()
    return value


def _damaged(state: "TrainState", margin: float | None) -> bool:
    """Whether the yardstick has been more than `margin` nats above the host's at two tracked steps."""
    if margin is None or state.yardstick_host is None:
        return False
    return sum(row.get("yardstick", -math.inf) > state.yardstick_host + margin for row in state.tracking) >= 2


def _tracked(tracker: Callable[[IRM], dict] | None, yardstick: Callable[[], float] | None, irm, bare_irm: IRM, step: int) -> dict:
    """One row of tracking.csv: the step, the yardstick of the IRM as it stands, the tracker's metrics."""
    return _measured(irm, lambda: {"step": step, **({"yardstick": yardstick()} if yardstick is not None else {}),
                                   **(tracker(bare_irm) if tracker is not None else {})})


def _checkpoint(run_dir: Path, irm: IRM, optimizer, scheduler, state: TrainState, host: Host, meta: dict) -> None:
    """`last/` (resumable state), history.csv and tracking.csv, each written atomically."""
    _save_state(run_dir, irm, optimizer, scheduler, state, host, meta)
    _write_rows(run_dir / "history.csv", state.history, HISTORY_FIELDS)
    if state.tracking:
        _write_rows(run_dir / "tracking.csv", state.tracking, list(state.tracking[0]))


def _resume(run_dir: Path, irm: IRM, optimizer, scheduler, host: Host) -> TrainState:
    """The state saved in `run_dir/last`, loaded into `irm`, `optimizer` and `scheduler`; a fresh
    state where there is none."""
    path = run_dir / "last" / "trainer_state.pt"
    if not path.exists():
        return TrainState()
    advice = f"Delete {run_dir / 'last'} to train this run from its start (or the whole run directory), or restore the file."
    try:
        # weights_only: tensors, numbers, strings and containers only, so a crafted file runs no code.
        saved = torch.load(path, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError, depending on the damage
        raise RunFileError(f"{path}: refused or unreadable as a trainer state ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:200]}). {advice}") from None
    known = {f.name for f in fields(TrainState)}
    if not isinstance(saved, dict) or not {"optimizer", "scheduler"} <= set(saved) or not set(saved) - {"optimizer", "scheduler"} <= known:
        raise RunFileError(f"{path}: not a trainer state this project wrote (keys {sorted(saved) if isinstance(saved, dict) else type(saved).__name__}). {advice}")
    irm.load_state_dict(load_irm(run_dir / "last", host).state_dict())
    try:
        optimizer.load_state_dict(saved.pop("optimizer"))
        scheduler.load_state_dict(saved.pop("scheduler"))
    except (ValueError, KeyError, RuntimeError) as err:
        raise RunFileError(f"{path}: its optimizer or scheduler state does not fit this IRM ({err}). {advice}") from None
    return TrainState(**saved)


def train_irm(host: Host, train_set, val_set, collate, config: TrainConfig, run_dir: str | Path,
              metadata: dict | None = None, accelerator: Accelerator | None = None, progress: bool = True,
              tracker: Callable[[IRM], dict] | None = None, yardstick: dict | None = None) -> dict:
    """Train an IRM for `host` on tokenised rows; resume from `run_dir/last` if present.

    train_set, val_set: indexable rows that `collate` turns into a batch dict of `input_ids`,
    `attention_mask` ([batch, tokens]) and `labels` ([batch, tokens + label_shift - 1] or
    [batch, tokens], -100 where ignored). tracker: called with the IRM before the first step and
    every `config.track_every` steps; its dict goes to `tracking.csv` with the step. yardstick: a
    probe's batch (irmlib.health.Probe.batch): the host's next-token loss on it is measured without
    the IRM, before the first step, at every tracked step and at the end (done.json:
    yardstick_host, yardstick_start, yardstick_end).
    Returns the summary written to `run_dir/done.json`; a finished run is not retrained.
    """
    run_dir = Path(run_dir)
    if is_complete(run_dir):
        return read_done(run_dir)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"Empty data: {len(train_set)} training and {len(val_set)} validation rows. Check the data files and the profile's emotion.")
    accelerator = accelerator or Accelerator()
    main = accelerator.is_main_process
    with writer_lock(run_dir) if main else nullcontext():
        return _train_holding_the_lock(host, train_set, val_set, collate, config, run_dir, metadata, accelerator, progress, tracker,
                                       yardstick)


def _train_holding_the_lock(host: Host, train_set, val_set, collate, config: TrainConfig, run_dir: Path, metadata: dict | None,
                            accelerator: Accelerator, progress: bool, tracker: Callable[[IRM], dict] | None,
                            yardstick_batch: dict | None) -> dict:
    """train_irm's body, run by the one writer of `run_dir`."""
    main = accelerator.is_main_process
    if is_complete(run_dir):  # finished by another process between the first check and taking the lock
        return read_done(run_dir)
    set_seed(config.seed)
    host.model.to(accelerator.device)
    irm = IRM(IRMConfig.for_host(host, **config.irm)).to(accelerator.device)
    optimizer = irm_optimizer(irm, config.lr)
    steps_per_epoch = math.ceil(len(train_set) / (config.batch_size * accelerator.num_processes))
    # Stepped after every optimizer step; its position is saved with the optimizer's, so a resumed
    # run goes on at the rate it stopped at.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step, steps_per_epoch))
    if main:
        _recover_last(run_dir)
    accelerator.wait_for_everyone()
    state = _resume(run_dir, irm, optimizer, scheduler, host)

    # A resumed run keeps the precision it started with, whatever the start-up probe says now.
    precision = choose_precision(accelerator.device, state.precision_request or config.precision)
    state.precision_request = precision_request(precision)
    objective = config.objective_spec
    meta = {"train": asdict(config), "objective": asdict(objective), "precision": precision.as_dict(), **(metadata or {})}
    l1_alpha = (config.l1_alpha if config.l1_alpha is not None else 1e-4 / irm.config.n_injected) if config.l1 else 0.0
    irm, optimizer = accelerator.prepare(irm, optimizer)
    bare_irm = accelerator.unwrap_model(irm)
    injection = Injection(host, irm, masked_indices=config.masked_indices)
    val_loader = accelerator.prepare(_loader(val_set, None, config.batch_size, collate))
    checks = min(config.val_checks_per_epoch, steps_per_epoch)
    check_steps = {math.ceil(steps_per_epoch * k / checks) for k in range(1, checks + 1)}

    yardstick = (lambda: yardstick_loss(host, yardstick_batch, precision)) if yardstick_batch is not None else None
    if state.initial_val is None:
        # The validation loss before any step: with a zero-init IRM, the untouched host's.
        state.initial_val = _validation_loss(host, irm, val_loader, accelerator, objective, precision)
        if yardstick is not None:
            with injection.settings(active=False):
                state.yardstick_host = _measured(irm, yardstick)
            state.yardstick_start = _measured(irm, yardstick)
    tracking = (tracker is not None or yardstick is not None) and config.track_every
    if tracking and not state.tracking:
        state.tracking.append(_tracked(tracker, yardstick, irm, bare_irm, state.global_step))
    irm.train()
    try:
        with host_checkpointing(host, config.activation_checkpointing):
            while state.epoch < config.epochs and state.stopped is None:
                order = _epoch_order(len(train_set), config.seed, state.epoch)
                loader = accelerator.prepare(_loader(train_set, order, config.batch_size, collate))
                loader = accelerator.skip_first_batches(loader, state.step_in_epoch)
                bar = tqdm(loader, total=steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}/{config.epochs}",
                           disable=not (progress and main), leave=False)
                for batch in bar:
                    started = time.perf_counter()
                    try:
                        losses = train_step(host, injection, optimizer, batch, objective, precision, l1_alpha, accelerator,
                                            config.clip_grad_norm)
                    except TrainingDiverged as err:
                        raise TrainingDiverged(
                            f"{err} at step {state.global_step + 1} (epoch {state.epoch + 1}); training stopped and the last good "
                            f"checkpoint in {run_dir / 'last'} is kept. Lower the learning rate or switch on the L1 penalty, then "
                            f"rerun to resume from that checkpoint.") from None
                    state.step_in_epoch += 1
                    state.global_step += 1
                    state.history.append({"step": state.global_step, "epoch": state.epoch + 1, **losses,
                                          "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - started, 4),
                                          "val_loss": ""})
                    scheduler.step()
                    bar.set_postfix(loss=f"{losses['lm_loss']:.3f}")

                    if tracking and state.global_step % config.track_every == 0:
                        state.tracking.append(_tracked(tracker, yardstick, irm, bare_irm, state.global_step))
                    at_max = config.max_steps is not None and state.global_step >= config.max_steps
                    damaged = _damaged(state, config.stop_yardstick_margin)
                    if state.step_in_epoch in check_steps or at_max or damaged:
                        val_loss = _validation_loss(host, irm, val_loader, accelerator, objective, precision)
                        state.history[-1]["val_loss"] = val_loss
                        if val_loss < state.best_val:
                            state.best_val, state.bad_checks = val_loss, 0
                            if main:
                                save_irm(bare_irm, run_dir / "best", host.shape,
                                         {**meta, "epoch": state.epoch + 1, "step": state.global_step, "val_loss": val_loss})
                        else:
                            state.bad_checks += 1
                            if state.bad_checks >= config.patience:
                                state.stopped = "early_stopping"
                    if damaged and state.stopped is None:
                        state.stopped = "yardstick"
                    if at_max and state.stopped is None:
                        state.stopped = "max_steps"
                    if state.stopped is not None:
                        break
                    if state.global_step % config.checkpoint_every == 0 and main:
                        _checkpoint(run_dir, bare_irm, optimizer, scheduler, state, host, meta)
                bar.close()
                if state.step_in_epoch >= steps_per_epoch:
                    state.epoch, state.step_in_epoch = state.epoch + 1, 0
                if main:
                    _checkpoint(run_dir, bare_irm, optimizer, scheduler, state, host, meta)
                accelerator.wait_for_everyone()
        # The last step is often a tracked one: its yardstick is the end's, measured already.
        last = state.tracking[-1] if state.tracking else {}
        ended_tracked = last.get("step") == state.global_step and "yardstick" in last
        yardstick_end = last["yardstick"] if ended_tracked else _measured(irm, yardstick) if yardstick is not None else None
    finally:
        injection.remove()

    history = state.history
    val_losses = [r["val_loss"] for r in history if r["val_loss"] != ""]
    summary = {"precision": precision.name, "steps": state.global_step, "epochs": round(state.global_step / steps_per_epoch, 2),
               "initial_val_loss": state.initial_val, "best_val_loss": state.best_val, "last_val_loss": val_losses[-1] if val_losses else None,
               "stopped": state.stopped or "epochs", "first_train_loss": history[0]["lm_loss"], "last_train_loss": history[-1]["lm_loss"],
               "seconds_per_step": sum(r["seconds"] for r in history) / len(history)}
    if yardstick is not None:
        summary.update(yardstick_host=state.yardstick_host, yardstick_start=state.yardstick_start, yardstick_end=yardstick_end)
    if main:
        write_json(run_dir / "done.json", summary)
    accelerator.wait_for_everyone()
    return summary


def _read_table(run_dir: str | Path, name: str, columns: tuple[str, ...]) -> pd.DataFrame:
    path = Path(run_dir) / name
    try:
        history = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise RunFileError(f"{path}: not a readable table ({err}). Delete {Path(run_dir)} and retrain the run.") from None
    missing = [column for column in columns if column not in history.columns]
    if missing:
        raise RunFileError(f"{path}: lacks the column(s) {missing}. Delete {Path(run_dir)} and retrain the run.")
    return history


def read_history(run_dir: str | Path) -> pd.DataFrame:
    """history.csv of a run, one row per step (val_loss is NaN except at validation checks);
    RunFileError, naming the file, where it is damaged."""
    return _read_table(run_dir, "history.csv", ("step", "lm_loss", "val_loss"))


def read_tracking(run_dir: str | Path) -> pd.DataFrame:
    """tracking.csv of a run, the tracker's metrics by step; an empty table where the run was not
    tracked; RunFileError, naming the file, where it is damaged."""
    if not (Path(run_dir) / "tracking.csv").exists():
        return pd.DataFrame()
    return _read_table(run_dir, "tracking.csv", ("step",))
