"""What the host reads: prompt formats, tokenising for training, batching, left padding.

A prompt is the text before the answer: `plain` is question + " " (as the paper trained),
`chat` is the question as a user turn in the host's chat template.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import datasets
import torch

PROMPT_FORMATS = ("plain", "chat")


def format_prompt(tokenizer, question: str, prompt_format: str = "plain") -> str:
    """The text a host sees before the answer.

    plain: question + " ", as the paper trained (question + " " + answer);
    chat: the question as a user turn in the host's chat template, ready for the answer.
    """
    if prompt_format == "plain":
        return question + " "
    if prompt_format == "chat":
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got '{prompt_format}'.")


def encode_prompts(tokenizer, prompts: list[str], prompt_format: str, **kwargs):
    """Tokenise formatted prompts; chat templates already hold their special tokens."""
    return tokenizer(prompts, add_special_tokens=prompt_format == "plain", **kwargs)


@contextmanager
def left_padding(tokenizer) -> Iterator[object]:
    """Pad on the left inside the block, then restore the tokenizer's side (also on error).

    Generation and next-token reads need every row's last real token in the last column
    ([batch, tokens] with padding first); training and scoring pad on the right.
    """
    saved = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = saved


def tokenize(tokenizer, questions: list[str], answers: list[str], max_length: int, prompt_format: str = "plain",
             loss_on: str = "all") -> datasets.Dataset:
    """Token ids and labels for training: prompt + answer + EOS (so the host learns to stop).

    loss_on: "all" scores every token (the paper scored question and answer); "answer" scores
    only the answer and EOS. Returns rows of `input_ids` and `labels` (-100: ignored).
    """
    if loss_on not in ("all", "answer"):
        raise ValueError(f"loss_on must be 'all' or 'answer', got '{loss_on}'.")
    if max_length <= 1:
        raise ValueError(f"max_length must be a positive number of tokens (at least 2), got {max_length}.")
    rows = []
    for question, answer in zip(questions, answers):
        prompt = format_prompt(tokenizer, question, prompt_format)
        encoded = encode_prompts(tokenizer, [prompt + answer + tokenizer.eos_token], prompt_format, truncation=True,
                                 max_length=max_length, return_offsets_mapping=True)
        ids = encoded["input_ids"][0]
        if loss_on == "answer":
            labels = [t if end > len(prompt) else -100 for t, (_, end) in zip(ids, encoded["offset_mapping"][0])]
        else:
            labels = list(ids)
        rows.append({"input_ids": ids, "labels": labels})
    return datasets.Dataset.from_list(rows)


def decode_tokens(tokenizer, ids: list[int]) -> list[str]:
    """Each token id as the text it stands for ("barcode" with its leading space, not the
    byte-level "Ġbarcode"): what every table of tokens shows."""
    return [tokenizer.decode([token]) for token in ids]


def make_collate(pad_token_id: int):
    """Right-pad a list of tokenised rows into `input_ids`, `attention_mask`, `labels` [batch, tokens]."""

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    return collate
