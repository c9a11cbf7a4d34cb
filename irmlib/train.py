"""Training an IRM on a frozen host: only the IRM learns; LM cross-entropy on the styled text.

Paper defaults (arXiv 2407.03621): Adam lr 1e-4, StepLR gamma 0.85 per epoch, batch 8, max
length 128, up to 15 epochs with early stopping (patience 6) on validation loss, optional L1
on the IRM output with alpha = 1e-4 / injected layers. Unlike the paper's code, padding never
counts in the loss. Built on Accelerate: the same loop runs on CPU, one GPU, or under
`accelerate launch`. A run directory holds `last/` (IRM + optimizer state, for resuming),
`best/` (lowest validation loss), `history.csv` (one row per step) and `done.json`, written last.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from .files import atomic_path, write_json
from .host import Host
from .inject import Injection
from .irm import IRM, IRMConfig, load_irm, save_irm

HISTORY_FIELDS = ["step", "epoch", "train_loss", "lm_loss", "l1", "lr", "seconds", "val_loss"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Training knobs as plain data; defaults are the paper's."""

    epochs: int = 15
    batch_size: int = 8
    max_length: int = 128
    lr: float = 1e-4
    lr_gamma: float = 0.85  # StepLR, stepped once per epoch
    patience: int = 6  # epochs without a better validation loss before stopping
    l1: bool = False  # the paper's optional L1 on the IRM output
    l1_alpha: float | None = None  # None: 1e-4 / injected layers, as in the paper
    seed: int = 42
    max_steps: int | None = None  # stop after this many optimizer steps in total (smoke runs)
    checkpoint_every: int = 25  # steps between resumable checkpoints
    masked_indices: tuple[int, ...] = ()  # hidden indices of the IRM output zeroed during training
    irm: dict = field(default_factory=dict)  # IRMConfig overrides (injected_layers, site, init, ...)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "max_length", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive or None, got {self.max_steps!r}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}.")


def lm_loss(host: Host, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions ([batch, tokens] each; -100 = ignore).

    The LM head runs only on positions that have a label, so padding costs no logits.
    """
    hidden = host.model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = host.lm_head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep])


def l1_penalty(vectors: torch.Tensor, attention_mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha x (sum of |IRM output| over layers and hidden), averaged over real tokens.

    vectors: [batch, tokens, injected_layers, hidden]; attention_mask: [batch, tokens].
    """
    per_token = vectors.abs().sum(dim=(-2, -1))
    mask = attention_mask.to(per_token.dtype)
    return alpha * (per_token * mask).sum() / mask.sum()


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def _loader(dataset, order: list[int] | None, batch_size: int, collate):
    from torch.utils.data import DataLoader, Subset

    source = Subset(dataset, order) if order is not None else dataset
    return DataLoader(source, batch_size=batch_size, shuffle=False, collate_fn=collate)


@torch.inference_mode()
def evaluate_loss(host: Host, injection: Injection, loader, accelerator: Accelerator) -> float:
    """Token-weighted mean validation loss over `loader`."""
    total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    for batch in loader:
        n = (batch["labels"][:, 1:] != -100).sum()
        total += lm_loss(host, batch["input_ids"], batch["attention_mask"], batch["labels"]) * n
        count += n
    total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    return (total / count).item()


def _save_state(run_dir: Path, irm: IRM, optimizer, scheduler, state: dict, host: Host, meta: dict) -> None:
    last = run_dir / "last"
    save_irm(irm, last, host.shape, meta)
    with atomic_path(last / "trainer_state.pt") as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **state}, tmp)


def _write_history(run_dir: Path, history: list[dict]) -> None:
    with atomic_path(run_dir / "history.csv") as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
            writer.writeheader()
            writer.writerows(history)


def is_complete(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "done.json").exists()


def train_irm(host: Host, train_set, val_set, collate, config: TrainConfig, run_dir: str | Path,
              metadata: dict | None = None, accelerator: Accelerator | None = None, progress: bool = True) -> dict:
    """Train an IRM for `host` on tokenised rows; resume from `run_dir/last` if present.

    train_set, val_set: indexable rows that `collate` turns into a batch dict of
    `input_ids`, `attention_mask`, `labels` ([batch, tokens], labels -100 where ignored).
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
    optimizer = torch.optim.Adam(irm.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.lr_gamma)
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_val": math.inf, "bad_epochs": 0, "history": [], "stopped": None,
             "initial_val": None}
    if (run_dir / "last" / "trainer_state.pt").exists():
        saved = torch.load(run_dir / "last" / "trainer_state.pt", weights_only=False)
        irm.load_state_dict(load_irm(run_dir / "last", host).state_dict())
        optimizer.load_state_dict(saved.pop("optimizer"))
        scheduler.load_state_dict(saved.pop("scheduler"))
        state.update(saved)
    meta = {"train": asdict(config), **(metadata or {})}
    l1_alpha = (config.l1_alpha if config.l1_alpha is not None else 1e-4 / irm.config.n_injected) if config.l1 else 0.0
    irm, optimizer = accelerator.prepare(irm, optimizer)
    injection = Injection(host, irm, masked_indices=config.masked_indices)
    val_loader = accelerator.prepare(_loader(val_set, None, config.batch_size, collate))
    bare_irm = accelerator.unwrap_model(irm)
    main = accelerator.is_main_process
    history = state["history"]
    steps_per_epoch = math.ceil(len(train_set) / (config.batch_size * accelerator.num_processes))
    if state["initial_val"] is None:
        # The validation loss before any step: with the zero-init IRM, the untouched host's.
        state["initial_val"] = evaluate_loss(host, injection, val_loader, accelerator)
    try:
        while state["epoch"] < config.epochs and state["stopped"] is None:
            epoch = state["epoch"]
            loader = accelerator.prepare(_loader(train_set, _epoch_order(len(train_set), config.seed, epoch), config.batch_size, collate))
            loader = accelerator.skip_first_batches(loader, state["step_in_epoch"])
            bar = tqdm(loader, total=steps_per_epoch, initial=state["step_in_epoch"], desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not (progress and main), leave=False)
            irm.train()
            for batch in bar:
                started = time.perf_counter()
                loss = lm_loss(host, batch["input_ids"], batch["attention_mask"], batch["labels"])
                penalty = l1_penalty(injection._vectors, batch["attention_mask"], l1_alpha) if l1_alpha else torch.zeros((), device=loss.device)
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
                if config.max_steps is not None and state["global_step"] >= config.max_steps:
                    state["stopped"] = "max_steps"
                    break
                if state["global_step"] % config.checkpoint_every == 0 and main:
                    _save_state(run_dir, bare_irm, optimizer, scheduler, state, host, meta)
                    _write_history(run_dir, history)
            bar.close()
            irm.eval()
            val_loss = evaluate_loss(host, injection, val_loader, accelerator)
            history[-1]["val_loss"] = val_loss
            if val_loss < state["best_val"]:
                state["best_val"], state["bad_epochs"] = val_loss, 0
                if main:
                    save_irm(bare_irm, run_dir / "best", host.shape, {**meta, "epoch": epoch + 1, "val_loss": val_loss})
            else:
                state["bad_epochs"] += 1
                if state["bad_epochs"] >= config.patience:
                    state["stopped"] = "early_stopping"
            scheduler.step()
            state["epoch"], state["step_in_epoch"] = epoch + 1, 0
            if main:
                _save_state(run_dir, bare_irm, optimizer, scheduler, state, host, meta)
                _write_history(run_dir, history)
            accelerator.wait_for_everyone()
    finally:
        injection.remove()
    summary = {"steps": state["global_step"], "epochs": state["epoch"], "initial_val_loss": state["initial_val"], "best_val_loss": state["best_val"],
               "stopped": state["stopped"] or "epochs", "first_train_loss": history[0]["lm_loss"],
               "last_train_loss": history[-1]["lm_loss"], "seconds_per_step": sum(r["seconds"] for r in history) / len(history)}
    if main:
        write_json(run_dir / "done.json", summary)
    accelerator.wait_for_everyone()
    return summary


def run_directory(profile, emotion: str, seed: int, variant: str = "") -> Path:
    """Where the IRM of one (emotion, seed) of a profile lives; `variant` names a retrained one
    (e.g. "mask507" for an IRM trained with index 507 masked)."""
    return profile.run_dir / "irm" / f"{emotion}-seed{seed}{'-' + variant if variant else ''}"


def train_for_profile(host: Host, profile, emotion: str, seed: int, rows: list[dict], progress: bool = True,
                      masked_indices: tuple[int, ...] = (), variant: str = "") -> dict:
    """Train (or resume, or skip if finished) the IRM of one (emotion, seed) of a profile.

    rows: alignment rows (all emotions); the profile's data_limit caps each split.
    masked_indices: hidden indices of the IRM output zeroed throughout training (with `variant`
    naming the run so it does not overwrite the plain one).
    """
    from .data import as_datasets, make_collate, rewrite_of, tokenize

    splits = as_datasets(rows, emotion, limit=profile.data_limit)

    def tokenised(split: str):
        part = splits[split]
        return tokenize(host.tokenizer, part["question"], [rewrite_of(r) for r in part], profile.max_length,
                        profile.prompt_format, profile.loss_on)

    config = TrainConfig(epochs=profile.epochs, batch_size=profile.batch_size, max_length=profile.max_length, lr=profile.lr,
                         lr_gamma=profile.lr_gamma, patience=profile.patience, l1=profile.l1, seed=seed,
                         max_steps=profile.max_steps, masked_indices=tuple(masked_indices), irm=profile.irm_overrides())
    metadata = {"profile": profile.name, "emotion": emotion, "seed": seed, "host": host.name,
                "prompt_format": profile.prompt_format, "loss_on": profile.loss_on}
    return train_irm(host, tokenised("train"), tokenised("validation"), make_collate(host.tokenizer.pad_token_id), config,
                     run_directory(profile, emotion, seed, variant), metadata=metadata, progress=progress)


def read_history(run_dir: str | Path):
    """history.csv of a run as a DataFrame (val_loss is NaN except at epoch ends)."""
    import pandas as pd

    return pd.read_csv(Path(run_dir) / "history.csv")


def trained_irms(host: Host, profile, seeds: tuple[int, ...] | None = None) -> dict[str, IRM]:
    """The best IRM of every (emotion, seed) of a profile, named "<emotion>-seed<seed>"."""
    irms = {}
    for emotion in profile.emotions:
        for seed in seeds if seeds is not None else profile.seeds:
            run_dir = run_directory(profile, emotion, seed)
            if not is_complete(run_dir):
                raise FileNotFoundError(f"No finished IRM in {run_dir}: run notebooks/02_train_irm.ipynb with profile '{profile.name}' first.")
            irms[f"{emotion}-seed{seed}"] = load_irm(run_dir / "best", host, device=host.device).eval()
    return irms
