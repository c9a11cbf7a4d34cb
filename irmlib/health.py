"""Whether a run trained: one yardstick for every objective, the IRM output's size against the
host's own residual, and the two flags every study reads before it pools a run.

- The yardstick is the host's next-token loss (label shift 1, padding ignored) on the real tokens
  of fixed probe texts: the first `analysis.probe_texts` validation rows of the run's emotion,
  question + answer as plain text, the same rows for every run of an emotion whatever its
  objective, prompt format or scored tokens. Each objective's own loss is not comparable across
  objectives; this one is, and the host without an IRM has a value of it too.
- The output ratio is the RMS of the IRM's output at each injected layer over the RMS of the
  host's residual after that layer, both on the probe texts without each text's first token
  (where the host keeps its massive activation, thousands of times the median, which would
  swamp the host's RMS).
- `unstable`: the run's own validation loss ended above its start, or a step's gradient norm
  exceeded `analysis.unstable_grad_multiple` times the median of the first
  `analysis.unstable_early_steps` steps. `host_damaged`: the yardstick of the IRM the notebooks
  read ended more than `analysis.host_damaged_margin` nats above the host's. An objective that
  scores the token after next may raise the yardstick in a run that trained well, so the flags
  are separate.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .host import Host
from .objective import lm_loss
from .precision import Precision, autocast
from .prompts import make_collate, tokenize
from .residual import host_hidden_states, irm_inputs
from .striation import StriationTracker


@dataclass(frozen=True)
class Probe:
    """The fixed texts a run is measured on while it trains.

    batch: `input_ids`, `attention_mask`, `labels` [texts, tokens] (right padding, labels -100 on
    it); irm_inputs: the IRM's input at every real token, [real tokens, hidden]; not_first:
    [real tokens] bool, False at each text's first token; host_rms: the RMS of the host's own
    residual after each decoder layer over the real tokens but the first, [layers]."""

    batch: dict
    irm_inputs: torch.Tensor
    not_first: torch.Tensor
    host_rms: np.ndarray

    def tracker(self, k: int = 5) -> StriationTracker:
        """The striation tracker on these texts, with the output's RMS against the host's."""
        return StriationTracker(self.irm_inputs, k, self.not_first, self.host_rms)


def not_first_tokens(attention_mask: torch.Tensor) -> torch.Tensor:
    """For every real token of a batch in order ([batch, tokens] mask -> [real tokens]), whether it
    is not its text's first real token."""
    mask = attention_mask.bool()
    first = torch.zeros_like(mask)
    first[torch.arange(len(mask)), mask.int().argmax(1)] = True
    return (~first)[mask]


def make_probe(host: Host, questions: list[str], answers: list[str], max_length: int, input_layer: int = 0) -> Probe:
    """The probe of `questions` and `answers` (plain question + answer + EOS, every token scored)."""
    rows = tokenize(host.tokenizer, questions, answers, max_length, "plain", "all")
    batch = make_collate(host.tokenizer.pad_token_id)([rows[i] for i in range(len(rows))])
    not_first = not_first_tokens(batch["attention_mask"])
    states = host_hidden_states(host, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    host_rms = states[not_first].double().pow(2).mean(dim=(0, 2)).sqrt().numpy()
    return Probe(batch, irm_inputs(host, batch["input_ids"], batch["attention_mask"], input_layer), not_first, host_rms)


@torch.inference_mode()
def yardstick_loss(host: Host, batch: dict, precision: Precision | None = None) -> float:
    """The host's mean next-token cross-entropy (nats) over the real tokens of `batch` (a probe's),
    with whatever IRM is injected into it at the time, or none."""
    device = host.device
    with autocast(precision) if precision is not None else nullcontext():
        loss = lm_loss(host, batch["input_ids"].to(device), batch["attention_mask"].to(device), batch["labels"].to(device), 1)
    return float(loss)


def run_flags(summary: dict, history: pd.DataFrame, analysis) -> dict:
    """The two flags of a finished run, with what decided them. summary: its done.json (with
    `initial_val_loss`, `last_val_loss`, `yardstick_host`, `yardstick_end`); history: its per-step
    rows (`grad_norm`). A run trained before these were recorded gets None for what it lacks."""
    last_val, start_val = summary.get("last_val_loss"), summary.get("initial_val_loss")
    rose = None if last_val is None or start_val is None else bool(last_val > start_val)
    norms = history["grad_norm"].dropna().to_numpy(dtype=float) if "grad_norm" in history else np.array([])
    early = float(np.median(norms[: analysis.unstable_early_steps])) if len(norms) else float("nan")
    peak_ratio = float(norms.max() / early) if len(norms) and early > 0 else float("nan")
    spiked = None if not len(norms) else bool(peak_ratio > analysis.unstable_grad_multiple)
    known = [flag for flag in (rose, spiked) if flag is not None]
    end, host_value = summary.get("yardstick_end"), summary.get("yardstick_host")
    damage = None if end is None or host_value is None else float(end - host_value)
    return {"unstable": any(known) if known else None, "val_loss_rose": rose, "grad_norm_early_median": early,
            "grad_norm_peak_ratio": peak_ratio,
            "host_damaged": None if damage is None else bool(damage > analysis.host_damaged_margin), "yardstick_rise": damage}


def flag_label(flags: dict) -> str:
    """"ok", or the flags a run carries ("unstable", "host damaged", both), or "not measured"."""
    if flags["unstable"] is None and flags["host_damaged"] is None:
        return "not measured"
    return ", ".join(key.replace("_", " ") for key in ("unstable", "host_damaged") if flags[key]) or "ok"


def is_evidence(flag: str) -> bool:
    """Whether a run with this `flag_label` counts as evidence: neither unstable nor host damaged
    (a run not measured does not count either)."""
    return flag == "ok"


def flagged_runs(flags: dict[str, str], names) -> str:
    """"ok", or "run: flag; ..." for the runs among `names` (in their order) whose flag (`flags`:
    {run name: flag_label}; a name it lacks, such as "base", is not a run) makes them no evidence."""
    return "; ".join(f"{name}: {flags[name]}" for name in dict.fromkeys(names)
                     if name in flags and not is_evidence(flags[name])) or "ok"


def index_settled(tracking: pd.DataFrame, window: float) -> dict:
    """Whether a run's dominant index held at the end: the tracker's dominant index is the same at
    every tracked step in the last `window` share of the run's steps (analysis.settled_window).
    tracking: one run's tracking.csv. Returns the final index, `settled` (None where fewer than two
    tracked steps fall in the window) and the step from which the final index held."""
    if tracking.empty or "dominant_index" not in tracking:
        return {"final_index": None, "settled": None, "held_since": None}
    steps, indices = tracking.step.to_numpy(), tracking.dominant_index.to_numpy()
    final = int(indices[-1])
    changed = np.flatnonzero(indices != final)
    held_since = int(steps[changed[-1] + 1]) if len(changed) else int(steps[0])
    start = steps[-1] - window * (steps[-1] - steps[0])
    in_window = steps >= start
    settled = None if in_window.sum() < 2 else bool(held_since <= steps[in_window][0])
    return {"final_index": final, "settled": settled, "held_since": held_since}
