"""The training objective: which token each position is scored against, whether padding counts,
and the L1 penalty on the IRM output.

Two presets. `fixed` is next-token cross-entropy on real tokens only. `paper_code` is what the
paper's code (DRAGNLabs/injectable-alignment-model, main branch) actually optimised:

- every sequence is padded with EOS to the maximum length; attention ignores the padding but
  the loss has no ignore index, so every pad position is scored, with target EOS;
- labels are shifted twice (the dataset returns `y = item[1:length+1]` and the model's forward
  shifts again), so position i is scored against token i + 2;
- the optional L1 is `alpha x sum(|IRM output|)` over every position, padding included.

`label_shift` and `pad_in_loss` can also be set one at a time (notebook 06 separates them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .host import Host

L1_MODES = ("mean", "sum")


@dataclass(frozen=True)
class Objective:
    """label_shift: position i is scored against token i + label_shift (1: next token).
    pad_in_loss: pad every row with EOS to the maximum length and score the padding.
    l1_mode: "mean" (per real token) or "sum" (over every position, as the paper's code)."""

    label_shift: int = 1
    pad_in_loss: bool = False
    l1_mode: str = "mean"

    def __post_init__(self):
        if self.label_shift not in (1, 2):
            raise ValueError(f"label_shift must be 1 (next token) or 2 (the paper code's double shift), got {self.label_shift!r}.")
        if self.l1_mode not in L1_MODES:
            raise ValueError(f"l1_mode must be one of {L1_MODES}, got {self.l1_mode!r}.")


OBJECTIVES = {
    "fixed": Objective(label_shift=1, pad_in_loss=False, l1_mode="mean"),
    "paper_code": Objective(label_shift=2, pad_in_loss=True, l1_mode="sum"),
}


def resolve_objective(name: str, label_shift: int | None = None, pad_in_loss: bool | None = None) -> Objective:
    """A preset by name, with `label_shift` / `pad_in_loss` overriding it where given."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective '{name}' unknown; choose one of {', '.join(OBJECTIVES)}.")
    preset = OBJECTIVES[name]
    return Objective(label_shift=preset.label_shift if label_shift is None else label_shift,
                     pad_in_loss=preset.pad_in_loss if pad_in_loss is None else pad_in_loss, l1_mode=preset.l1_mode)


def lm_loss(host: Host, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
            label_shift: int = 1) -> torch.Tensor:
    """Mean cross-entropy of position i against `labels[:, i + label_shift]` over labelled positions.

    input_ids, attention_mask: [batch, tokens]; labels: [batch, tokens + label_shift - 1] or
    [batch, tokens] (-100 = ignored). The LM head runs only on scored positions.
    """
    hidden = host.model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    n = min(hidden.shape[1], labels.shape[1] - label_shift)
    targets = labels[:, label_shift:label_shift + n]
    keep = targets != -100
    logits = host.lm_head(hidden[:, :n][keep])
    return F.cross_entropy(logits.float(), targets[keep])


def scored_positions(labels: torch.Tensor, tokens: int, label_shift: int) -> torch.Tensor:
    """How many loss terms a batch has (to weight a mean over batches): labels [batch, ...]."""
    n = min(tokens, labels.shape[1] - label_shift)
    return (labels[:, label_shift:label_shift + n] != -100).sum()


def l1_penalty(vectors: torch.Tensor, attention_mask: torch.Tensor, alpha: float, mode: str = "mean") -> torch.Tensor:
    """alpha x |IRM output|: "mean" sums over layers and hidden and averages over real tokens;
    "sum" sums over every position, padding included (the paper's code).

    vectors: [batch, tokens, injected_layers, hidden]; attention_mask: [batch, tokens].
    """
    if mode == "sum":
        return alpha * vectors.abs().sum()
    per_token = vectors.abs().sum(dim=(-2, -1))
    mask = attention_mask.to(per_token.dtype)
    return alpha * (per_token * mask).sum() / mask.sum()


def make_paper_collate(eos_id: int, max_length: int, label_shift: int):
    """Batches as the paper's code built them: each row of token ids (text + EOS) padded with EOS.

    input_ids: [batch, max_length], the text then EOS padding; attention_mask: 1 on the text only
    (the appended EOS is padding, as in the paper's dataset); labels: [batch, max_length +
    label_shift - 1], the same ids padded further, every position scored. Rows longer than the
    inputs are cut. Only `input_ids` of each row is read.
    """
    width = max_length + label_shift - 1

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        labels = torch.full((len(rows), width), eos_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), max_length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids = list(row["input_ids"])[:width]
            labels[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            text = len(ids) - 1 if ids and ids[-1] == eos_id else len(ids)
            attention_mask[i, :min(text, max_length)] = 1
        return {"input_ids": labels[:, :max_length].clone(), "attention_mask": attention_mask, "labels": labels}

    return collate
